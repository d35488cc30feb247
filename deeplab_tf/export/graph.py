"""The fused inference graph as one TensorFlow function, for converters to other runtimes.

ONNX (:mod:`deeplab_tf.export.onnx`) and OpenVINO (:mod:`deeplab_tf.export.openvino`) convert
a concrete ``tf.function`` rather than a SavedModel (OpenVINO's TensorFlow frontend cannot read
a SavedModel's resource variables: ``VarHandleOp ... Cannot find requested variable``; a
concrete function's variables are frozen into constants by the converters). The function
computes what the SavedModel's ``serving_default`` (float images) or ``serving_uint8``
signature computes (docs/architecture.md#savedmodel-tf-serving), on the inference form of the
network (:func:`~deeplab_tf.export.optimize.fuse_for_inference`: BatchNorm folded, padding
merged into direct dilated convolutions), with the preprocessing inside:

``images`` ``(N, H, W, 3)`` RGB 0..255 (float32 or uint8) -> ``labels`` int32 ``(N, H, W)``,
``probabilities`` float32 ``(N, H, W, C)`` and, with ``logits=True``, ``logits`` float32
``(N, ceil(H/8), ceil(W/8), C)``: the (fused) scores at the network's output stride before
the upsampling to the image (Chen et al., TPAMI 2017, section 3.1), for callers that upsample
themselves.
"""

from __future__ import annotations

import importlib
import os

import keras
import tensorflow as tf

from deeplab_tf.atomic import exists_error
from deeplab_tf.export.optimize import fuse_for_inference, with_input_shape
from deeplab_tf.inference.multiscale import MultiScaleInference
from deeplab_tf.layers import resize_logits
from deeplab_tf.models.multiscale import fuse_on_logit_grid

INPUT_DTYPES = ("float32", "uint8")
OUTPUT_NAMES = ("labels", "probabilities", "logits")


def check_input_size(input_size):
    """``None`` or ``(H, W)`` of positive ints; returns it as a tuple (or None)."""
    if input_size is None:
        return None
    try:
        h, w = (int(v) for v in input_size)
        exact = all(int(v) == v for v in input_size) and not isinstance(input_size, str)
    except (TypeError, ValueError):
        exact = False
    if not exact or h < 1 or w < 1:
        raise ValueError(
            f"input_size must be None (any size) or (H, W) of positive integers. "
            f"Received: input_size={input_size!r}"
        )
    return h, w


def require(module: str, what: str, extra: str):
    """Imports an optional dependency, or raises ImportError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f'{what} needs the {module} package: pip install "deeplab_tf[{extra}]"'
        ) from err


def check_output_file(path, suffix: str, overwrite: bool) -> str:
    """Validates an export's output file before any work; returns it as a string.

    Raises:
        ValueError: ``path`` is a folder or does not end with ``suffix``.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"The output path is a folder, expected a {suffix} file: {path!r}")
    if not path.endswith(suffix):
        raise ValueError(f"The output file must end with {suffix}. Received: {path!r}")
    if not overwrite and os.path.lexists(path):
        raise exists_error(path, "overwrite=True (--overwrite)")
    return path


def export_facts(model, input_size, input_dtype: str, logits: bool) -> dict:
    """What an exported file records about the model (ONNX metadata, OpenVINO rt_info)."""
    import deeplab_tf

    base = model.model if isinstance(model, MultiScaleInference) else model
    outputs = ["labels", "probabilities"] + (["logits"] if logits else [])
    h, w = check_input_size(input_size) or ("H", "W")
    return {
        "version": deeplab_tf.__version__,
        "model": model.name,
        "num_classes": int(base.output_shape[-1]),
        "input": f"images {input_dtype} (N, {h}, {w}, 3) RGB 0..255, preprocessing inside",
        "outputs": ",".join(outputs),
    }


def inference_net(
    model,
    input_size=None,
    *,
    scales=(1.0,),
    flip: bool = False,
    fusion: str = "max",
    upsample: str = "caffe",
    fuse: bool = True,
) -> MultiScaleInference:
    """The inference network of an export: the model fused for inference (``fuse``), at a fixed
    ``input_size`` when given (any batch size), inside a :class:`MultiScaleInference`.

    ``model`` is a DeepLab ``keras.Model`` (logits) or a :class:`MultiScaleInference`, whose own
    scales, flip, fusion and upsampling then win over the arguments.
    """
    if isinstance(model, MultiScaleInference):
        base, settings = (
            model.model,
            {
                "scales": model.scales,
                "flip": model.flip,
                "fusion": model.fusion,
                "upsample": model.upsample,
                "fuse_at": model.fuse_at,
            },
        )
    elif isinstance(model, keras.Model):
        base = model
        settings = {"scales": scales, "flip": flip, "fusion": fusion, "upsample": upsample}
    else:
        raise ValueError(f"model must be a keras.Model. Received: {type(model).__name__}")
    if fuse:
        base = fuse_for_inference(base)
    size = check_input_size(input_size)
    if size is not None:
        base = with_input_shape(base, *size, batch=None)
    return MultiScaleInference(base, **settings)


def inference_function(
    model,
    input_size=None,
    *,
    input_dtype: str = "float32",
    batch: int | None = None,
    logits: bool = False,
    scales=(1.0,),
    flip: bool = False,
    fusion: str = "max",
    upsample: str = "caffe",
    fuse: bool = True,
    freeze: bool = False,
):
    """The export's inference graph as a ``tf.function`` (see the module docstring).

    Args:
        model: a DeepLab ``keras.Model`` (logits) or a :class:`MultiScaleInference` wrapper.
        input_size: ``(H, W)`` for a fixed input size, or None for any size.
        input_dtype: ``"float32"`` (as ``serving_default``) or ``"uint8"`` (as
            ``serving_uint8``); both RGB 0..255.
        batch: a fixed batch size, or None for any.
        logits: also return ``logits`` at the output stride (needs ``fuse_at="logits"``).
        scales, flip, fusion, upsample: multi-scale settings when ``model`` is a base model.
        fuse: convert the network with :func:`fuse_for_inference` first.
        freeze: bake the weights into the graph as constants, so that the function captures
            no variable (changes to the weights of the network it ran do not reach it). For
            running the graph in TensorFlow itself: with oneDNN (on by default on CPUs with
            AVX-512), a convolution whose filter is a constant keeps it in oneDNN's layout
            between calls, while one that reads a variable reorders it on every call. ResNet-101
            ASPP-L at 513x513, one image, 2 threads, Xeon with AMX: bfloat16 0.274 s -> 0.225
            s, float32 1.288 s -> 1.249 s (``docs/runtimes.md``). The ONNX, OpenVINO and TFLite
            converters freeze the graph themselves.

    Returns:
        ``(function, input_signature)``: a ``tf.function`` with that input signature (its
        ``get_concrete_function()`` is the graph) mapping ``images`` to a dict of
        :data:`OUTPUT_NAMES` (``logits`` only when asked).
    """
    if input_dtype not in INPUT_DTYPES:
        raise ValueError(
            f"input_dtype must be one of {INPUT_DTYPES}. Received: input_dtype={input_dtype!r}"
        )
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch must be None or a positive integer. Received: batch={batch!r}")
    net = inference_net(
        model, input_size, scales=scales, flip=flip, fusion=fusion, upsample=upsample, fuse=fuse
    )
    if logits and net.fuse_at != "logits":
        raise ValueError(
            "logits=True returns the fused scores at the output stride, which exist only with "
            f"fuse_at='logits'. Received: fuse_at={net.fuse_at!r}"
        )
    size = check_input_size(input_size) or (None, None)
    spec = tf.TensorSpec([batch, *size, net.channels], input_dtype, name="images")
    net.build(spec.shape)

    def serve(images):
        if logits:  # MultiScaleInference.call, keeping the fused scores before upsampling
            x = tf.cast(images, tf.float32)
            branches = net.run_branches(x, flip=net.flip, training=False, dtype=tf.float32)
            grid = fuse_on_logit_grid(branches, net.fusion, net.upsample)
            full = resize_logits(grid, tf.shape(x)[1:3], net.upsample, net.stride)
            probs = tf.nn.softmax(full, axis=-1)
        else:
            probs = tf.cast(net(images, training=False), tf.float32)
        out = {"labels": tf.argmax(probs, axis=-1, output_type=tf.int32), "probabilities": probs}
        if logits:
            out["logits"] = grid
        return out

    function = tf.function(serve, input_signature=[spec], autograph=False)
    if freeze:
        # No public TF 2 API freezes a concrete function; this is the one tf2onnx, OpenVINO and
        # the TFLite converter use. The frozen function returns the flat list of outputs.
        from tensorflow.python.framework.convert_to_constants import (
            convert_variables_to_constants_v2,
        )

        concrete = function.get_concrete_function()
        frozen = convert_variables_to_constants_v2(concrete)
        structure = concrete.structured_outputs

        def serve_frozen(images):
            return tf.nest.pack_sequence_as(structure, frozen(images))

        function = tf.function(serve_frozen, input_signature=[spec], autograph=False)
    return function, [spec]
