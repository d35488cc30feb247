"""deeplab_tf: DeepLab v2 (atrous convolution, ASPP, dense CRF) for Keras 3 / TensorFlow 2.

Chen, Papandreou, Kokkinos, Murphy, Yuille, "DeepLab: Semantic Image Segmentation with Deep
Convolutional Nets, Atrous Convolution, and Fully Connected CRFs", TPAMI 2017.

``import deeplab_tf`` imports Keras and TensorFlow and registers every class the library saves
(layers, models, wrappers, optimizer, loss, metric), so that a new process loads any ``.keras``
file written by this library with ``keras.saving.load_model(path)`` in safe mode. It also checks
that the installed Keras and TensorFlow are in the supported range (``deeplab_tf._registration``).
Public names are then imported lazily (PEP 562). The ``deeplab-tf`` command defers the
registration until it has parsed a verb, so ``deeplab-tf --help`` answers without TensorFlow.

Example:
    >>> from deeplab_tf import DeepLabV2
    >>> model = DeepLabV2(backbone="resnet101", head="aspp_l", num_classes=21)
"""

from __future__ import annotations

import importlib

from deeplab_tf import _registration

__version__ = "0.2.0"

#: public name -> module that defines it
_EXPORTS = {
    "DeepLabV2": "deeplab_tf.models",
    "create_model": "deeplab_tf.models",
    "get_model_config": "deeplab_tf.models",
    "list_models": "deeplab_tf.models",
    "output_stride_of": "deeplab_tf.models",
    "MultiScaleInference": "deeplab_tf.inference",
    "MultiScale": "deeplab_tf.inference",  # former name of MultiScaleInference, an alias
    "Predictor": "deeplab_tf.inference",
    "load_inference_model": "deeplab_tf.inference",
    "sliding_window": "deeplab_tf.inference",
    "DenseCRF": "deeplab_tf.crf",
    "DatasetInfo": "deeplab_tf.data",
    "load_dataset": "deeplab_tf.data",
    "export_saved_model": "deeplab_tf.export",
    "export_tflite": "deeplab_tf.export",
    "fold_batchnorm": "deeplab_tf.export",
    "list_presets": "deeplab_tf.weights",
    "save_to_preset": "deeplab_tf.weights",
}
_SUBMODULES = (
    "cli",
    "convert",
    "crf",
    "data",
    "evaluation",
    "export",
    "inference",
    "layers",
    "models",
    "recipes",
    "training",
    "visualize",
    "weights",
)

__all__ = sorted([*_EXPORTS, *_SUBMODULES, "__version__"])


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"deeplab_tf.{name}")
    else:
        raise AttributeError(f"module 'deeplab_tf' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return __all__


if not _registration.launched_as_command():
    _registration.register_all()
