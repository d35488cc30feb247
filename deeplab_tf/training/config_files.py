"""Training configs as files: the shipped YAML configs, reading one, ``--set`` overrides.

Library code (the quickstart, examples, a user's script) and ``deeplab-tf train`` read configs
through this module; the command line module only parses arguments. Errors a user can fix are
:class:`~deeplab_tf.errors.CLIError` (printed by the command as ``deeplab-tf: error: ...``).
"""

from __future__ import annotations

import os

from deeplab_tf.errors import CLIError

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def shipped_configs() -> list[str]:
    """Names of the YAML configs shipped in ``deeplab_tf/configs``."""
    if not os.path.isdir(CONFIG_DIR):
        return []
    return sorted(f[: -len(".yaml")] for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml"))


def _yaml_loader():
    """PyYAML's safe loader, reading floats as YAML 1.2 does: ``1e-3`` is a number (PyYAML's
    YAML 1.1 rules need ``1.0e-3`` and would hand the schema the string ``'1e-3'``)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(
            r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
            |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
            |\.[0-9_]+(?:[eE][-+][0-9]+)?
            |[-+]?\.(?:inf|Inf|INF)
            |\.(?:nan|NaN|NAN))$""",
            re.X,
        ),
        list("-+0123456789."),
    )
    return Loader


def load_yaml(text_or_stream):
    """Parses YAML config text (a whole config or one ``--set`` value)."""
    import yaml

    return yaml.load(text_or_stream, Loader=_yaml_loader())


def load_config(path_or_name: str) -> dict:
    """Reads a YAML config from a path or a shipped config name (``voc12_resnet101_aspp_l``)."""
    import yaml

    path = path_or_name
    if not os.path.isfile(path):
        name = os.path.basename(path_or_name)
        name = name[: -len(".yaml")] if name.endswith(".yaml") else name
        candidate = os.path.join(CONFIG_DIR, name + ".yaml")
        if not os.path.isfile(candidate):
            raise CLIError(
                f"config {path_or_name!r} is neither a file nor a shipped config "
                f"({', '.join(shipped_configs())})"
            )
        path = candidate
    with open(path) as f:
        try:
            config = load_yaml(f)
        except yaml.YAMLError as err:
            raise CLIError(f"cannot parse {path}: {err}") from None
    if not isinstance(config, dict):
        raise CLIError(f"{path} must hold a mapping of sections. Received: {type(config).__name__}")
    return config


def apply_override(config: dict, assignment: str) -> None:
    """Applies ``section.key=value`` (value parsed as YAML) to ``config`` in place."""

    if "=" not in assignment or "." not in assignment.split("=", 1)[0]:
        raise CLIError(
            f"--set takes SECTION.KEY=VALUE (e.g. train.steps=100). Received: {assignment!r}"
        )
    key, value = assignment.split("=", 1)
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise CLIError(f"cannot set {key}: {p!r} is not a section. Received: {assignment!r}")
    node[leaf] = load_yaml(value)
