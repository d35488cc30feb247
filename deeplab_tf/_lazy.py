"""PEP 562 lazy exports, so that importing a sub-package (e.g. for its CLI) stays cheap."""

from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """Returns ``(__getattr__, __dir__)`` for a package whose names live in ``exports``.

    Args:
        package: the package's ``__name__``.
        exports: public name -> dotted module defining it.
    """
    names = sorted(exports)

    def __getattr__(name):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        importlib.import_module(package).__dict__[name] = value
        return value

    def __dir__():
        return names

    return __getattr__, __dir__
