"""Loading weights from any supported file: Keras, the authors' Caffe release, the PyTorch port.

Keras files go through :func:`deeplab_tf.weights.load_keras_weights` (manifest check, all or
nothing); ``.caffemodel`` and ``.pth`` files through the strict converters of this package.
"""

from __future__ import annotations

import os

from deeplab_tf.weights import load_keras_weights, verify_weights


def load_weights(model, path, manifest="auto", name: str | None = None, include_classifier=True):
    """Loads weights into a DeepLab model from any supported file, verifying checksums.

    * ``.caffemodel``: the authors' Caffe release, converted on the fly and checked layer by
      layer (:func:`convert_caffemodel`).
    * ``.pth`` / ``.pt``: the PyTorch port's state dict (read without torch, by a restricted
      unpickler: :func:`deeplab_tf.weights.read_pth`).
    * anything else (``.weights.h5``, ``.keras``): :func:`deeplab_tf.weights.load_keras_weights`.

    Args:
        model: the Keras model.
        path: the weights file.
        manifest: manifest path or dict, ``"auto"`` (``manifest.json`` beside the file, if any)
            or ``None`` (no check).
        name: manifest entry name (default: matched by file name).
        include_classifier: for Caffe/PyTorch files, whether to load the classifier.

    Returns:
        The model.

    Raises:
        ChecksumError: the file does not match its manifest entry.
        ConversionError: a Caffe/PyTorch file does not fit the model.
        ValueError: a ``.weights.h5`` file that cannot be read or does not match the model
            (see :func:`deeplab_tf.weights.load_h5_weights`); the model is then unchanged.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such weights file. Received: path={path!r}")
    lower = path.lower()
    if not lower.endswith((".caffemodel", ".pth", ".pt")):
        return load_keras_weights(model, path, manifest=manifest, name=name)
    verify_weights(path, manifest=manifest, name=name)
    load_source_weights(model, path, include_classifier)
    return model


def load_source_weights(model, path, include_classifier: bool = True):
    """Converts a ``.caffemodel`` or ``.pth`` file into ``model`` with the strict converters
    (every layer, shape, kernel, stride, pad and dilation checked; all or nothing).

    This is the converter that ``import deeplab_tf`` hands to the weights cache
    (:func:`deeplab_tf.weights.cache.register_converter`) and to ``DeepLabV2(weights=PATH)``.

    Returns:
        The :class:`ConversionReport`.

    Raises:
        ValueError: a file of another kind.
        ConversionError: the file does not fit the model.
    """
    path = os.fspath(path)
    lower = path.lower()
    if lower.endswith(".caffemodel"):
        from deeplab_tf.convert.caffe_to_keras import convert_caffemodel

        return convert_caffemodel(path, model=model, include_classifier=include_classifier)[1]
    if lower.endswith((".pth", ".pt")):
        from deeplab_tf.convert.torch_port import load_torch_state_dict

        return load_torch_state_dict(model, path, include_classifier=include_classifier)
    raise ValueError(
        f"Not a Caffe or PyTorch weights file. Received: path={path!r}; expected a "
        ".caffemodel or a .pth/.pt file."
    )
