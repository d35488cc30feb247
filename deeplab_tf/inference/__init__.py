"""Inference: the multi-scale wrapper model, sliding windows, image I/O and prediction.

Names are imported lazily (PEP 562) so that the ``predict`` / ``evaluate`` command modules,
which live in this package, can be registered without importing TensorFlow.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ImageReadError": "deeplab_tf.inference.io",
    "atomic_write": "deeplab_tf.atomic",
    "expand_inputs": "deeplab_tf.inference.io",
    "read_image": "deeplab_tf.inference.io",
    "MultiScaleInference": "deeplab_tf.inference.multiscale",
    "MultiScale": "deeplab_tf.inference.multiscale",  # former name, an alias (compatibility)
    "Predictor": "deeplab_tf.inference.predict",
    "load_inference_model": "deeplab_tf.inference.predict",
    "sliding_window": "deeplab_tf.inference.tiling",
    "tile_cores": "deeplab_tf.inference.tiling",
    "tile_starts": "deeplab_tf.inference.tiling",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'deeplab_tf.inference' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
