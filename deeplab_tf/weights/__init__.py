"""Weights that belong to models: Keras weight files, their SHA-256 manifest, strict loading.

This package sits below the converters (``deeplab_tf.convert`` reads Caffe and PyTorch files and
uses it) and beside the model builders, which load Keras weight files through it.
"""

from deeplab_tf.weights.manifest import (
    MANIFEST_NAME,
    ChecksumError,
    find_entry,
    load_h5_weights,
    load_keras_weights,
    manifest_entry_exists,
    read_manifest,
    record_in_manifest,
    sha256_of,
    verify_weights,
)

__all__ = [
    "MANIFEST_NAME",
    "ChecksumError",
    "find_entry",
    "load_h5_weights",
    "load_keras_weights",
    "manifest_entry_exists",
    "read_manifest",
    "record_in_manifest",
    "sha256_of",
    "verify_weights",
]
