"""Importing the authors' released weights without Caffe (docs/architecture.md#released-weights).

* :func:`read_caffemodel` parses a ``.caffemodel`` (V1 ``layers`` or V2 ``layer``, either blob
  shape encoding) with the ``protobuf`` runtime and a minimal ``caffe.proto``;
* :func:`convert_caffemodel` maps it onto :func:`deeplab_tf.DeepLabV2`, checking every
  convolution's kernel, stride, pad and dilation and refusing layers left unmapped on either
  side;
* :func:`load_weights` loads ``.weights.h5`` / ``.caffemodel`` / the PyTorch port's ``.pth``
  into a model, refusing a file whose SHA-256 differs from its manifest entry;
* :func:`write_caffemodel` writes caffemodels.

Example:
    >>> from deeplab_tf.convert import convert_caffemodel
    >>> model, report = convert_caffemodel(
    ...     "train_iter_20000.caffemodel", arch="resnet101-aspp-l")  # doctest: +SKIP
    >>> model.save_weights("weights/deeplabv2_resnet101_voc12.weights.h5")  # doctest: +SKIP

Command line: ``deeplab-tf convert-caffe MODEL.caffemodel --arch resnet101-aspp-l
--out weights/NAME.weights.h5``.
"""

from deeplab_tf.convert.architectures import (
    ARCHITECTURES,
    build_model,
    guess_architecture,
    parse_arch,
)
from deeplab_tf.convert.caffe_to_keras import (
    ConversionError,
    ConversionReport,
    convert_caffemodel,
    map_caffe_to_keras,
)
from deeplab_tf.convert.caffemodel import (
    CaffeLayer,
    CaffeNet,
    ConvSpec,
    parse_caffemodel,
    read_caffemodel,
    write_caffemodel,
)
from deeplab_tf.convert.weights import load_weights
from deeplab_tf.weights import (
    ChecksumError,
    read_manifest,
    record_in_manifest,
    sha256_of,
    verify_weights,
)

__all__ = [
    "ARCHITECTURES",
    "CaffeLayer",
    "CaffeNet",
    "ChecksumError",
    "ConversionError",
    "ConversionReport",
    "ConvSpec",
    "build_model",
    "convert_caffemodel",
    "guess_architecture",
    "load_weights",
    "map_caffe_to_keras",
    "parse_arch",
    "parse_caffemodel",
    "read_caffemodel",
    "read_manifest",
    "record_in_manifest",
    "sha256_of",
    "verify_weights",
    "write_caffemodel",
]
