"""Weights that belong to models: presets, the download cache, Keras weight files, their
SHA-256 manifest, strict loading, and preset folders.

This package sits below the converters (``deeplab_tf.convert`` reads Caffe and PyTorch files and
uses it; ``import deeplab_tf`` hands the converter to :mod:`deeplab_tf.weights.cache`) and below
the model builders, which load weights through it.
"""

from deeplab_tf.weights.folder import read_preset_folder, save_to_preset
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
from deeplab_tf.weights.presets import get_preset, list_presets, preset_names
from deeplab_tf.weights.pth import UnsafePickleError, read_pth

__all__ = [
    "MANIFEST_NAME",
    "UnsafePickleError",
    "read_pth",
    "get_preset",
    "list_presets",
    "preset_names",
    "read_preset_folder",
    "save_to_preset",
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
