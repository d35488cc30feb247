"""TFLite export (fp32 / fp16 / int8) for a fixed input size, checked with LiteRT.

With a dynamic spatial shape TensorFlow lowers dilated convolutions to SPACE_TO_BATCH_ND +
CONV_2D + BATCH_TO_SPACE_ND, which the TFLite GPU delegate rejects; a fixed input size keeps
them plain dilated CONV_2D ops (docs/architecture.md#tflite): the model is rebuilt at that size.

The TFLite model takes ``images`` uint8 ``(1, H, W, 3)`` RGB (preprocessing inside) and returns
``labels`` int32 ``(1, H, W)`` and ``probabilities`` float32 ``(1, H, W, C)``.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from deeplab_tf.atomic import exists_error, scratch, write_bytes
from deeplab_tf.export.optimize import with_input_shape
from deeplab_tf.inference.multiscale import MultiScaleInference

QUANTIZATIONS = ("fp32", "fp16", "int8")


def _representative(data, size, limit):
    """Yields ``[uint8 (1, H, W, 3)]`` calibration inputs from arrays or a dataset of dicts."""
    h, w = size
    count = 0
    for item in data:
        image = item["image"] if isinstance(item, dict) else item
        image = np.asarray(image.numpy() if hasattr(image, "numpy") else image)
        if image.ndim == 4:
            image = image[0]
        image = tf.image.resize(image[None].astype(np.float32), (h, w)).numpy()
        yield [np.clip(np.round(image), 0, 255).astype(np.uint8)]
        count += 1
        if count >= limit:
            return


def export_tflite(
    model,
    path,
    input_size,
    quantization: str = "fp32",
    representative_data=None,
    num_calibration: int = 16,
    scales=(1.0,),
    upsample: str = "caffe",
    overwrite: bool = True,
) -> str:
    """Converts a DeepLab model to a ``.tflite`` file with builtin ops only.

    Args:
        model: a DeepLab ``keras.Model`` (logits) or a :class:`MultiScaleInference` wrapper.
        path: output file (written atomically).
        input_size: ``(H, W)`` of the fixed input.
        quantization: ``"fp32"``, ``"fp16"`` (fp16 weights) or ``"int8"`` (post-training
            dynamic-range-free full integer quantisation of the network's ops; float I/O kept).
        representative_data: for int8: an iterable of images (``(H, W, 3)`` uint8 arrays) or a
            ``tf.data.Dataset`` of ``{"image": ...}`` dicts (any dataset this project reads).
        num_calibration: how many representative images to use.
        scales, upsample: multi-scale settings when ``model`` is a base model.
        overwrite: replace an existing ``path`` (atomically); if False an existing ``path``
            raises :class:`FileExistsError` before any work.

    Returns:
        ``path``.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"quantization must be one of {QUANTIZATIONS}. Received: quantization={quantization!r}"
        )
    if quantization == "int8" and representative_data is None:
        raise ValueError("int8 quantization needs representative_data (calibration images).")
    try:
        h, w = (int(v) for v in input_size)
    except (TypeError, ValueError):
        raise ValueError(f"input_size must be (H, W). Received: {input_size!r}") from None
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"The TFLite output path is a folder. Received: {path!r}")
    if not overwrite and os.path.lexists(path):
        raise exists_error(path)
    if isinstance(model, MultiScaleInference):
        base = with_input_shape(model.model, h, w)
        net = MultiScaleInference(
            base, model.scales, model.fusion, model.flip, model.upsample, fuse_at=model.fuse_at
        )
    else:
        net = MultiScaleInference(with_input_shape(model, h, w), scales=scales, upsample=upsample)

    def serve(images):
        probs = tf.cast(net(tf.cast(images, tf.float32)), tf.float32)
        return {"labels": tf.argmax(probs, axis=-1, output_type=tf.int32), "probabilities": probs}

    net.build((1, h, w, 3))
    archive = keras.export.ExportArchive()
    archive.track(net)
    archive.add_endpoint(
        "serving_default", serve, [tf.TensorSpec([1, h, w, 3], tf.uint8, name="images")]
    )
    with scratch(path, "sm") as workdir:  # owned: removed by the next run here if this one dies
        archive.write_out(os.path.join(workdir, "sm"), verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(os.path.join(workdir, "sm"))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantization == "fp16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif quantization == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            data = representative_data
            converter.representative_dataset = lambda: _representative(
                data, (h, w), num_calibration
            )
        blob = converter.convert()
    write_bytes(path, blob, overwrite)
    return path


def litert_interpreter(path, num_threads: int | None = None, delegates: bool = True):
    """A LiteRT interpreter for a ``.tflite`` file (``pip install ai-edge-litert``).

    ``delegates=False`` keeps the plain builtin kernels (no XNNPACK), so the op list shows the
    model's own ops.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError as err:
        raise ImportError(
            "Running TFLite files needs LiteRT, installed with deeplab_tf where it has wheels "
            "(Linux, macOS): pip install ai-edge-litert"
        ) from err
    resolver = (
        OpResolverType.AUTO if delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    interpreter = Interpreter(
        model_path=os.fspath(path),
        num_threads=num_threads,
        experimental_op_resolver_type=resolver,
    )
    interpreter.allocate_tensors()
    return interpreter


def run_tflite(interpreter_or_path, image) -> dict[str, np.ndarray]:
    """Runs one ``(H, W, 3)`` or ``(1, H, W, 3)`` uint8 image through a TFLite file.

    Other dtypes are taken only when every value is a whole number in 0..255 (a float copy
    of a uint8 image); anything else raises ``ValueError`` rather than being wrapped or
    clipped into uint8.

    Returns:
        ``{"labels": (1, H, W) int32, "probabilities": (1, H, W, C) float32}``.
    """
    interpreter = interpreter_or_path
    if isinstance(interpreter, (str, os.PathLike)):
        interpreter = litert_interpreter(interpreter)
    runner = interpreter.get_signature_runner("serving_default")
    image = _as_uint8_image(image)
    if image.ndim == 3:
        image = image[None]
    (spec,) = runner.get_input_details().values()
    expected = tuple(int(d) for d in spec["shape"])
    if tuple(image.shape) != expected:
        raise ValueError(
            f"This TFLite model takes images of shape {expected}. Received: {tuple(image.shape)}"
        )
    return runner(images=image.astype(np.uint8))


def _as_uint8_image(image):
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    expected = "expected uint8 RGB 0..255 (or whole numbers 0..255 in another numeric dtype)"
    if image.dtype.kind not in "iuf" or image.dtype == np.uint16:
        raise ValueError(
            f"run_tflite got an image of dtype {image.dtype}. Received: dtype={image.dtype}; "
            f"{expected}"
            + ("; scale 16-bit images to 0..255 first" if image.dtype == np.uint16 else "")
        )
    if image.size and not (
        np.isfinite(image).all()
        and image.min() >= 0
        and image.max() <= 255
        and (np.round(image) == image).all()
    ):
        raise ValueError(
            f"run_tflite got an image of dtype {image.dtype} with values outside whole numbers "
            f"0..255 (min {image.min()}, max {image.max()}). Received: dtype={image.dtype}; "
            f"{expected}"
        )
    return image.astype(np.uint8)


def tflite_ops(path) -> list[str]:
    """Names of the builtin ops of a ``.tflite`` file, in order, before any delegation (e.g. to
    check that dilated convolutions stayed CONV_2D, with no SPACE_TO_BATCH_ND)."""
    interpreter = litert_interpreter(path, delegates=False)
    return [op["op_name"] for op in interpreter._get_ops_details()]
