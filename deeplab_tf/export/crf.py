"""The dense CRF as its own exported post-processing step (paper, section 3.3).

Two artifacts, written next to the model's:

* a SavedModel version folder for servers (:func:`export_crf_saved_model`):
  ``serving_default(images uint8 (N, H, W, 3), probabilities float32 (N, H, W, C))`` ->
  ``labels`` int32 ``(N, H, W)`` and the refined ``probabilities``; any image size. The CRF's
  parameters are baked in and recorded in ``assets.extra/deeplab_crf.json``. It loads with
  plain TensorFlow (no deeplab_tf), so a server can run the network and the CRF as two models;
* a ``crf_<H>x<W>.tflite`` file with builtin ops only for phones (:func:`export_crf_tflite`):
  inputs ``image`` uint8 ``(1, H, W, 3)`` and ``probs`` float32 ``(1, H, W, C)``, output
  ``labels`` int32 ``(1, H, W)``. An app runs ``model.tflite`` (its ``probabilities`` output),
  then this file on the same image.

For models with ``input_channels=N`` other than 3, both take float32 ``(..., N)`` images (values
in 0..255), as the model's own signatures do, and the CRF needs one ``bi_feature_std`` per
channel (``deeplab-tf export --crf --crf-feature-std``).

The TFLite file uses the CRF's ``builtin`` lattice implementation (gathers and dense scatters
that LiteRT has as builtin kernels), which computes the same filter as the default sparse one
(tests/test_crf.py checks the two against each other).
"""

from __future__ import annotations

import json
import os
import sys

import tensorflow as tf

from deeplab_tf import atomic

METADATA_FILE = "deeplab_crf.json"


class _CRFModule(tf.Module):
    """``(images, probabilities) -> {labels, probabilities}`` with fixed CRF parameters."""

    def __init__(self, crf, num_classes, shape, names=("images", "probabilities"), channels=3):
        super().__init__(name="dense_crf")
        self.crf = crf
        self.serve = tf.function(
            self._refine,
            input_signature=[
                tf.TensorSpec([*shape, channels], _image_dtype(channels), name=names[0]),
                tf.TensorSpec([*shape, num_classes], tf.float32, name=names[1]),
            ],
        )

    def _refine(self, images, probabilities):
        refined = tf.cast(self.crf(images, probabilities), tf.float32)
        return {
            "labels": tf.argmax(refined, axis=-1, output_type=tf.int32),
            "probabilities": refined,
        }


def _image_dtype(channels: int):
    """uint8 RGB images; float32 (values in 0..255) for other channel counts, as the model's
    own N-channel signatures take."""
    return tf.uint8 if channels == 3 else tf.float32


def _check(crf, num_classes, channels=3):
    from deeplab_tf.crf import DenseCRF

    if not isinstance(crf, DenseCRF):
        raise ValueError(f"crf must be a deeplab_tf.crf.DenseCRF. Received: {type(crf).__name__}")
    if crf.backend != "tf":
        raise ValueError(
            "Only the TensorFlow CRF can be exported (pydensecrf runs in Python). "
            f"Received: backend={crf.backend!r}"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2. Received: {num_classes!r}")
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be an integer >= 1. Received: {channels!r}")
    crf.feature_stds(channels)  # one bilateral std per channel, before any work


def crf_metadata(crf, num_classes: int, preset: str | None = None, channels: int = 3) -> dict:
    """What the exported CRF records about itself (parameters, classes, versions)."""
    return {
        "format_version": 1,
        "crf": crf.get_config(),
        "preset": preset,
        "num_classes": int(num_classes),
        "inputs": {
            "images": "uint8 (N, H, W, 3) RGB, the image the model segmented"
            if channels == 3
            else f"float32 (N, H, W, {channels}) 0..255, the image the model segmented",
            "probabilities": f"float32 (N, H, W, {num_classes}) the model's softmax at image size",
        },
        "outputs": {"labels": "int32 (N, H, W)", "probabilities": "float32, refined"},
        "deeplab_tf_version": sys.modules["deeplab_tf"].__version__,
        "tensorflow_version": tf.__version__,
    }


def export_crf_saved_model(crf, base_dir, num_classes: int, version=None, preset=None,
                           overwrite: bool = False, channels: int = 3) -> str:  # fmt: skip
    """Writes the CRF as a SavedModel version folder ``base_dir/<version>`` (atomically).

    Args:
        crf: a :class:`~deeplab_tf.crf.DenseCRF` (TensorFlow backend).
        base_dir: the CRF's model base path (``<model out>/crf`` from ``deeplab-tf export``).
        num_classes: classes of the probabilities it refines.
        version: version number (default: the next free one, as TF Serving numbers them).
        preset: name of the CRF parameter preset, recorded in the metadata.
        overwrite: replace an existing version.
        channels: image channels (3: uint8 RGB; others: float32, for ``input_channels=N``
            models, with one ``bi_feature_std`` per channel).

    Returns:
        The published version folder.

    Raises:
        ValueError: a bad CRF or class count, or the version exists and ``overwrite`` is False.
    """
    from deeplab_tf.export.savedmodel import check_export_target, publish_version

    _check(crf, num_classes, channels)
    checked = check_export_target(base_dir, version, overwrite)
    version = None if version is None else checked
    os.makedirs(base_dir, exist_ok=True)
    module = _CRFModule(crf, num_classes, [None, None, None], channels=channels)
    with atomic.scratch(os.path.join(os.fspath(base_dir), "export"), mkdir=False) as tmp:
        tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve})
        extra = os.path.join(tmp, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        with open(os.path.join(extra, METADATA_FILE), "w", encoding="utf-8") as f:
            json.dump(crf_metadata(crf, num_classes, preset, channels), f, indent=2)
        return publish_version(tmp, base_dir, version, overwrite)


def export_crf_tflite(crf, path, input_size, num_classes: int, overwrite: bool = False,
                      channels: int = 3) -> str:  # fmt: skip
    """Writes the CRF for a fixed ``(H, W)`` as a ``.tflite`` file with builtin ops only.

    Args:
        crf: a :class:`~deeplab_tf.crf.DenseCRF`; its parameters are kept and its lattice
            implementation switched to ``builtin``.
        path: the output file (conventionally ``crf_<H>x<W>.tflite``).
        input_size: ``(H, W)``, the size the model's TFLite file runs at.
        num_classes: classes of the probabilities.
        overwrite: replace an existing file.
        channels: image channels (3: uint8 RGB; others: float32), as for
            :func:`export_crf_saved_model`.

    Returns:
        ``path``.
    """
    from deeplab_tf.crf import DenseCRF

    _check(crf, num_classes, channels)
    h, w = (int(v) for v in input_size)
    if h < 1 or w < 1:
        raise ValueError(f"input_size must be positive. Received: input_size={input_size!r}")
    path = os.fspath(path)
    if not overwrite and os.path.lexists(path):
        raise atomic.exists_error(path)
    config = {**crf.get_config(), "impl": "builtin", "overflow": "error"}
    builtin = DenseCRF.from_config(config)
    module = _CRFModule(builtin, num_classes, [1, h, w], ("image", "probs"), channels)
    fn = module.serve.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    flatbuffer = converter.convert()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return atomic.write_bytes(path, flatbuffer, overwrite=overwrite)
