"""Named dense-CRF parameter sets, for :meth:`DenseCRF.from_preset`.

The parameters are the models' (each registered model's ``"crf"`` entry in
:mod:`deeplab_tf.models.registry`, and the per-backbone sets there). The CRF package does not
import the model registry: a catalogue, a function ``name -> dict or None``, is passed in with
:func:`register_catalogue`. ``import deeplab_tf`` (and the ``deeplab-tf`` command, before it runs
a verb) registers the model registry's one (:func:`deeplab_tf._registration.register_all`).
"""

from __future__ import annotations

_catalogues: list = []


def register_catalogue(lookup) -> None:
    """Adds ``lookup(name) -> dict | None`` to the catalogues :func:`preset` asks, newest first
    (registering the same function twice is a no-op)."""
    if lookup not in _catalogues:
        _catalogues.append(lookup)


def preset(name: str) -> dict:
    """A copy of the CRF parameters named ``name`` (keys of :class:`DenseCRF`, and ``source``).

    Raises:
        ValueError: no catalogue knows ``name``.
    """
    for lookup in reversed(_catalogues):
        params = lookup(name)
        if params is not None:
            return dict(params)
    hint = "" if _catalogues else " (no preset catalogue registered: import deeplab_tf first)"
    raise ValueError(
        "Unknown CRF preset: expected 'resnet101', 'vgg16' (or another backbone) or a "
        f"registered model name{hint}. Received: name={name!r}"
    )
