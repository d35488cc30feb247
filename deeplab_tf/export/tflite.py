"""TFLite export for a fixed input size, checked with LiteRT: float, fp16, dynamic-range and
full-integer int8 files, with outputs at image size or at the network's output stride.

With a dynamic spatial shape TensorFlow lowers dilated convolutions to SPACE_TO_BATCH_ND +
CONV_2D + BATCH_TO_SPACE_ND, which the TFLite GPU delegate rejects; a fixed input size keeps
them plain dilated CONV_2D ops (docs/architecture.md#tflite): the model is rebuilt at that size,
with every classifier as one dilated convolution (``with_input_shape(..., plain_convs=True)``),
so that int8 files are quantised end to end and run in LiteRT's default XNNPACK delegate.

The TFLite model takes ``images`` ``(1, H, W, 3)`` RGB (uint8; preprocessing inside) and returns,
by ``output``: ``labels`` int32 ``(1, H, W)`` and/or ``probabilities`` float32 ``(1, H, W, C)``,
or ``logits`` / ``probabilities`` at the output stride ``(1, h, w, C)`` for the caller to
upsample (phone GPU delegates reject or spend most of their time on the full-resolution
ARG_MAX and RESIZE_BILINEAR). ``quantization="int8_full"`` files take and return uint8 (and
int32 labels), for Edge TPU / NNAPI style accelerators.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from deeplab_tf.atomic import exists_error, scratch, write_bytes
from deeplab_tf.export.optimize import with_input_shape
from deeplab_tf.export.tflite_options import CALIBRATED, OUTPUTS, QUANTIZATIONS
from deeplab_tf.inference.multiscale import MultiScaleInference
from deeplab_tf.models.deeplab import output_stride_of
from deeplab_tf.models.multiscale import fuse_on_logit_grid

#: The builtin ops the TFLite GPU delegate accepts: the cases of LiteRT's own compatibility
#: check (``CheckGpuDelegateCompatibility`` in tensorflow/lite/tools/versioning/
#: gpu_compatibility.cc, which the delegate's model builder runs). Not in it, and so run on the
#: CPU: ARG_MAX, SPACE_TO_BATCH_ND / BATCH_TO_SPACE_ND, REVERSE_V2, among others.
GPU_DELEGATE_OPS = frozenset(
    """
    ABS ADD ADD_N ATAN2 AVERAGE_POOL_2D BATCH_MATMUL CAST CEIL CONCATENATION CONV_2D COS
    CUMSUM DENSIFY DEPTH_TO_SPACE DEPTHWISE_CONV_2D DEQUANTIZE DIV DYNAMIC_UPDATE_SLICE ELU
    EMBEDDING_LOOKUP EQUAL EXP FLOOR FLOOR_DIV FLOOR_MOD FULLY_CONNECTED GATHER GELU GREATER
    GREATER_EQUAL HARD_SWISH LEAKY_RELU LESS LESS_EQUAL LOG LOGICAL_AND LOGISTIC LSTM
    MAX_POOL_2D MAXIMUM MEAN MINIMUM MIRROR_PAD MUL NEG NOT_EQUAL ONE_HOT PACK PAD PADV2 POW
    PRELU QUANTIZE REDUCE_MAX REDUCE_MIN REDUCE_PROD RELU RELU_N1_TO_1 RELU6 RESHAPE
    RESIZE_BILINEAR RESIZE_NEAREST_NEIGHBOR RSQRT SELECT SELECT_V2 SIGN SIN SLICE SOFTMAX
    SPACE_TO_DEPTH SPLIT SPLIT_V SQRT SQUARE SQUARED_DIFFERENCE STRIDED_SLICE SUB SUM TANH TILE
    TRANSPOSE TRANSPOSE_CONV
    """.split()
)

#: The CAST type pairs that check accepts (bool <-> float, float32 / int32 among themselves);
#: the uint8 -> float32 cast of a uint8-input file is not one of them.
_GPU_CASTS = frozenset(
    [(np.bool_, np.float16), (np.bool_, np.float32), (np.float16, np.bool_)]
    + [(np.float32, np.bool_)]
    + [(a, b) for a in (np.float32, np.int32) for b in (np.float32, np.int32)]
)


def gpu_incompatible_ops(path) -> list[str]:
    """The ops of a ``.tflite`` file that the TFLite GPU delegate leaves to the CPU (empty: the
    whole graph can be delegated), sorted, each named once.

    Checks each op against :data:`GPU_DELEGATE_OPS` and, where that check has a type or arity
    rule this project's graphs can meet, the rule too (CAST's type pairs, ADD_N's two inputs).
    Its shape rules (broadcasting, slice masks, padding ranks) are not re-implemented, so an
    empty list means "no op the delegate rejects by kind", the same promise the delegate's
    own pre-check makes.

    ``tf.lite.experimental.Analyzer.analyze(..., gpu_compatibility=True)`` would be the
    natural tool, but in TensorFlow 2.21 it reports every graph compatible, one with ARG_MAX
    and a uint8 CAST included (``tests/test_tflite_int8.py`` keeps a check on that).
    """
    interpreter = litert_interpreter(path, delegates=False)
    dtypes = {t["index"]: np.dtype(t["dtype"]).type for t in interpreter.get_tensor_details()}
    rejected = set()
    for op in interpreter._get_ops_details():
        name = op["op_name"]
        inputs = [i for i in op["inputs"] if i >= 0]
        if name not in GPU_DELEGATE_OPS:
            rejected.add(name)
        elif name == "CAST" and (dtypes[inputs[0]], dtypes[op["outputs"][0]]) not in _GPU_CASTS:
            rejected.add(name)
        elif name == "ADD_N" and len(inputs) != 2:
            rejected.add(name)
    return sorted(rejected)


def _grid_output(output: str, stride: int):
    """``"logits"`` / ``"probabilities"`` for a score-grid output, None for image size."""
    for kind in ("logits", "probabilities"):
        if output.startswith(f"{kind}_stride"):
            if output != f"{kind}_stride{stride}":
                raise ValueError(
                    f"This model's scores are at stride {stride}, so its score-grid output is "
                    f"{kind}_stride{stride!r}. Received: output={output!r}"
                )
            return kind
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}. Received: output={output!r}")
    return None


def calibration_images(data, size, limit: int) -> list[np.ndarray]:
    """Up to ``limit`` calibration images, uint8 ``(1, H, W, 3)`` resized to ``size``.

    ``data``: an iterable of images (``(H, W, 3)`` or ``(1, H, W, 3)`` arrays or tensors) or of
    ``{"image": ...}`` dicts, such as a ``tf.data.Dataset`` from
    :func:`deeplab_tf.data.load_dataset` (any dataset this project reads).

    Raises:
        ValueError: an item that is not an RGB image, or no images at all.
    """
    h, w = size
    images = []
    for item in data:
        image = item["image"] if isinstance(item, dict) else item
        image = np.asarray(image.numpy() if hasattr(image, "numpy") else image)
        if image.ndim == 4 and image.shape[0] == 1:
            image = image[0]
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(
                "representative_data must hold RGB images (H, W, 3) or {'image': ...} dicts. "
                f"Received an item of shape {image.shape}"
            )
        image = tf.image.resize(image[None].astype(np.float32), (h, w)).numpy()
        images.append(np.clip(np.round(image), 0, 255).astype(np.uint8))
        if len(images) >= limit:
            break
    if not images:
        raise ValueError("representative_data gave no images; int8 calibration needs some.")
    return images


def _check_arguments(quantizations, output, representative_data, num_calibration, input_size):
    for quantization in quantizations:
        if quantization not in QUANTIZATIONS:
            raise ValueError(
                f"quantization must be one of {QUANTIZATIONS}. Received: "
                f"quantization={quantization!r}"
            )
    if not isinstance(output, str) or (
        output not in OUTPUTS and not output.startswith(("logits_stride", "probabilities_stride"))
    ):
        raise ValueError(f"output must be one of {OUTPUTS}. Received: output={output!r}")
    calibrated = [q for q in quantizations if q in CALIBRATED]
    if calibrated and representative_data is None:
        raise ValueError(
            f"{calibrated[0]} quantization needs representative_data (calibration images: "
            "arrays or a dataset of {'image': ...}). Received: representative_data=None"
        )
    if not calibrated and "dynamic" in quantizations and representative_data is not None:
        # Dynamic range sets activation ranges at run time: the data would go unused while
        # looking like a calibration. (fp32 / fp16 ignore it: callers may pass one dataset for
        # every file.)
        raise ValueError(
            "representative_data calibrates int8 / int8_full files only; dynamic-range "
            "quantization takes none (use quantization='int8' for a calibrated file). "
            "Received: quantization='dynamic' with representative_data"
        )
    if not isinstance(num_calibration, (int, np.integer)) or num_calibration < 1:
        raise ValueError(f"num_calibration must be >= 1. Received: {num_calibration!r}")
    try:
        h, w = (int(v) for v in input_size)
    except (TypeError, ValueError):
        raise ValueError(f"input_size must be (H, W). Received: {input_size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"input_size must be positive. Received: {input_size!r}")
    return h, w


def export_tflite(
    model,
    path,
    input_size,
    quantization: str = "fp32",
    representative_data=None,
    num_calibration: int = 16,
    scales=(1.0,),
    upsample: str = "caffe",
    output: str = "labels_and_probabilities",
    overwrite: bool = True,
) -> str:
    """Converts a DeepLab model to a ``.tflite`` file with builtin ops only.

    Args:
        model: a DeepLab ``keras.Model`` (logits) or a :class:`MultiScaleInference` wrapper.
        path: output file (written atomically).
        input_size: ``(H, W)`` of the fixed input.
        quantization: one of :data:`QUANTIZATIONS`: ``"fp32"``; ``"fp16"`` (fp16 weights,
            float math where the runtime chooses); ``"dynamic"`` (dynamic-range: int8
            weights, float activations); ``"int8"`` (post-training full-integer quantisation
            of every op, calibrated on ``representative_data``; uint8 image in, float outputs);
            ``"int8_full"`` (the same with a float-free interface: uint8 image in with scale 1
            and zero point 0, so raw pixels go straight in, and uint8 probabilities / logits
            out; for Edge TPU / NNAPI / Hexagon style accelerators).
        representative_data: for ``int8`` / ``int8_full`` (required there; refused for
            ``dynamic``, which would not use it; ignored by ``fp32`` / ``fp16``): images
            (``(H, W, 3)`` arrays) or a dataset of ``{"image": ...}`` dicts (any dataset this
            project reads, e.g. ``load_dataset(...)[0]``); each image is resized to
            ``input_size``.
        num_calibration: how many representative images to use.
        scales, upsample: multi-scale settings when ``model`` is a base model.
        output: one of :data:`OUTPUTS`: ``"labels_and_probabilities"`` (default), ``"labels"``,
            ``"probabilities"`` (at image size), ``"logits_stride8"`` or
            ``"probabilities_stride8"`` (at the score grid, ``stride`` = the model's output
            stride; no ARG_MAX and no full-resolution RESIZE_BILINEAR: the caller upsamples,
            e.g. with :func:`deeplab_tf.layers.resize_logits`; multi-scale only with
            ``fuse_at="logits"``).
        overwrite: replace an existing ``path`` (atomically); if False an existing ``path``
            raises :class:`FileExistsError` before any work.

    Returns:
        ``path``.

    Raises:
        ValueError: a bad combination (int8 without representative data, representative data
            for a dynamic-range file, an unknown output or quantization), before any work.
    """
    if not isinstance(quantization, str):
        raise ValueError(f"quantization must be a string. Received: {quantization!r}")
    return export_tflite_files(
        model, {quantization: path}, input_size, representative_data, num_calibration,
        scales, upsample, output, overwrite,
    )[quantization]  # fmt: skip


def export_tflite_files(
    model,
    paths,
    input_size,
    representative_data=None,
    num_calibration: int = 16,
    scales=(1.0,),
    upsample: str = "caffe",
    output: str = "labels_and_probabilities",
    overwrite: bool = True,
) -> dict[str, str]:
    """:func:`export_tflite` for several quantizations of one model: ``paths`` maps each
    quantization to its file. The model is rebuilt and traced once and converted once per
    file (the deep models' trace costs as much as a conversion). ``representative_data`` is
    required when any of them is ``int8`` / ``int8_full`` and used for those only.

    Returns:
        ``{quantization: path}``.
    """
    quantizations = tuple(paths)
    if not quantizations:
        raise ValueError("paths must name at least one quantization. Received: {}")
    h, w = _check_arguments(quantizations, output, representative_data, num_calibration,
                            input_size)  # fmt: skip
    paths = {q: os.fspath(p) for q, p in paths.items()}
    for path in paths.values():
        if os.path.isdir(path):
            raise ValueError(f"The TFLite output path is a folder. Received: {path!r}")
        if not overwrite and os.path.lexists(path):
            raise exists_error(path)
    if isinstance(model, MultiScaleInference):
        base, fusion, flip = model.model, model.fusion, model.flip
        scales, upsample, fuse_at = model.scales, model.upsample, model.fuse_at
    else:
        base, fusion, flip, fuse_at = model, "max", False, "logits"
    grid = _grid_output(output, int(output_stride_of(base)))
    if grid is not None and fuse_at != "logits":
        raise ValueError(
            f"output={output!r} returns the fused score grid, which needs fuse_at='logits'. "
            f"Received: fuse_at={fuse_at!r}"
        )
    calibration = None
    if any(q in CALIBRATED for q in quantizations):  # read and checked before any work
        calibration = calibration_images(representative_data, (h, w), int(num_calibration))
    net = MultiScaleInference(
        with_input_shape(base, h, w, plain_convs=True), scales, fusion, flip, upsample,
        output="logits", fuse_at=fuse_at,
    )  # fmt: skip

    def serve(images):
        x = tf.cast(images, tf.float32)
        if grid is not None:
            branches = net.run_branches(x, flip=net.flip, training=False, dtype=tf.float32)
            logits = fuse_on_logit_grid(branches, net.fusion, net.upsample)
            key = "logits" if grid == "logits" else "probabilities"
            return {key: logits if grid == "logits" else tf.nn.softmax(logits, axis=-1)}
        logits = tf.cast(net(x), tf.float32)
        result = {}
        if output in ("labels_and_probabilities", "labels"):
            # From the logits, not the probabilities: equal in float, and in int8 the
            # softmax's 1/256 steps would tie.
            result["labels"] = tf.argmax(logits, axis=-1, output_type=tf.int32)
        if output in ("labels_and_probabilities", "probabilities"):
            result["probabilities"] = tf.nn.softmax(logits, axis=-1)
        return result

    net.build((1, h, w, 3))
    first = next(iter(paths.values()))
    with scratch(first, "sm") as workdir:  # owned: removed by the next run here if this one dies
        saved = {}

        # Float images for int8_full (the converter makes the input uint8) and for the score
        # grid outputs (GPU delegates take float inputs; a uint8 CAST would run on the CPU).
        def input_dtype(q):
            return tf.float32 if q == "int8_full" or grid is not None else tf.uint8

        for dtype in {input_dtype(q) for q in quantizations}:
            archive = keras.export.ExportArchive()
            archive.track(net)
            spec = tf.TensorSpec([1, h, w, 3], dtype, name="images")
            archive.add_endpoint("serving_default", serve, [spec])
            saved[dtype] = os.path.join(workdir, f"sm_{dtype.name}")
            archive.write_out(saved[dtype], verbose=False)
        for q, path in paths.items():
            full_int = q == "int8_full"
            converter = tf.lite.TFLiteConverter.from_saved_model(saved[input_dtype(q)])
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
            if q != "fp32":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
            if q == "fp16":
                converter.target_spec.supported_types = [tf.float16]
            elif q in CALIBRATED:
                float_input = input_dtype(q) == tf.float32
                converter.representative_dataset = lambda float_input=float_input: _representative(
                    calibration, float_input
                )
            if full_int:
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                converter.inference_input_type = tf.uint8
                converter.inference_output_type = tf.uint8
            write_bytes(path, converter.convert(), overwrite)
    return paths


def _representative(images, float_input: bool):
    """Calibration samples. A float input (``int8_full``, score-grid outputs) gets values
    0..255 with one pixel set to 0 and one to 255 in each image, so that the calibrated input
    range is exactly [0, 255]: a uint8 input then has scale 1 and zero point 0 (raw pixels)."""
    for image in images:
        if float_input:
            image = image.astype(np.float32)
            image[0, 0, 0, 0], image[0, -1, -1, -1] = 0.0, 255.0
        yield [image]


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


def run_tflite(interpreter_or_path, image, dequantize: bool = True) -> dict[str, np.ndarray]:
    """Runs one ``(H, W, 3)`` or ``(1, H, W, 3)`` uint8 image through a TFLite file.

    Other dtypes are taken only when every value is a whole number in 0..255 (a float copy
    of a uint8 image); anything else raises ``ValueError`` rather than being wrapped or
    clipped into uint8. A quantised input (``int8_full`` files) is fed through its scale and
    zero point (scale 1, zero point 0 for files from :func:`export_tflite`: the raw pixels).

    Args:
        interpreter_or_path: a ``.tflite`` path or a :func:`litert_interpreter`.
        image: the image.
        dequantize: return quantised outputs (``int8_full`` probabilities / logits) as float32
            (``(q - zero_point) * scale``); False returns them as stored.

    Returns:
        The file's outputs by name, e.g. ``{"labels": (1, H, W) int32, "probabilities":
        (1, H, W, C) float32}`` (see :data:`OUTPUTS`).
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
    scale, zero = spec.get("quantization", (0.0, 0))
    if spec["dtype"] == np.float32:
        feed = image.astype(np.float32)
    elif scale and (scale, zero) != (1.0, 0):
        info = np.iinfo(spec["dtype"])
        q = np.round(image.astype(np.float32) / scale + zero)
        feed = np.clip(q, info.min, info.max).astype(spec["dtype"])
    else:
        feed = image.astype(spec["dtype"])
    outputs = runner(images=feed)
    if not dequantize:
        return outputs
    details = runner.get_output_details()
    for name, value in outputs.items():
        scale, zero = details[name].get("quantization", (0.0, 0))
        if scale and value.dtype in (np.uint8, np.int8, np.int16):
            outputs[name] = ((value.astype(np.float32) - zero) * scale).astype(np.float32)
    return outputs


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
