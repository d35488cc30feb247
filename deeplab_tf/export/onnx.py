"""ONNX export (``pip install "deeplab_tf[onnx]"``), for ONNX Runtime and what reads ONNX.

The file is converted by tf2onnx from the fused inference graph of
:func:`deeplab_tf.export.graph.inference_function`, preprocessing inside, so a caller feeds
the image as it is:

* input ``images``: float32 (default, as the SavedModel's ``serving_default``) or uint8
  (``input_dtype="uint8"``, as ``serving_uint8``) ``(N, H, W, 3)`` RGB 0..255; N, H and W
  are dynamic unless ``input_size`` fixes H and W;
* outputs ``labels`` int32 ``(N, H, W)``, ``probabilities`` float32 ``(N, H, W, C)`` and,
  with ``logits=True``, ``logits`` float32 at the output stride (8; see
  :mod:`deeplab_tf.export.graph`).

The model's facts (classes, input, outputs, how it was made) are in the file's
``metadata_props``. Deploying: docs/runtimes.md.
"""

from __future__ import annotations

import os

import numpy as np

from deeplab_tf.atomic import write_bytes
from deeplab_tf.export.graph import (
    check_input_size,
    check_output_file,
    export_facts,
    inference_function,
    require,
)

#: The opset the tests run with (ONNX Runtime 1.32 supports up to 23).
DEFAULT_OPSET = 17


def _require(module: str, what: str):
    return require(module, what, "onnx")


def export_onnx(
    model,
    path,
    input_size=None,
    *,
    input_dtype: str = "float32",
    logits: bool = False,
    opset: int = DEFAULT_OPSET,
    scales=(1.0,),
    flip: bool = False,
    fusion: str = "max",
    upsample: str = "caffe",
    fuse: bool = True,
    overwrite: bool = False,
) -> str:
    """Converts a DeepLab model to an ``.onnx`` file with tf2onnx, atomically.

    Args:
        model: a DeepLab ``keras.Model`` (logits) or a :class:`MultiScaleInference` wrapper.
        path: the ``.onnx`` file to write.
        input_size: ``(H, W)`` for a fixed input size; None (default) keeps H and W dynamic
            (tf2onnx converts every op of the graph with unknown sizes; the batch size is
            dynamic in both cases).
        input_dtype: ``"float32"`` or ``"uint8"`` images, RGB 0..255.
        logits: also output the scores at the output stride (upsample them yourself).
        opset: the ONNX opset.
        scales, flip, fusion, upsample: multi-scale settings when ``model`` is a base model.
        fuse: convert the inference form (:func:`~deeplab_tf.export.fuse_for_inference`).
        overwrite: replace an existing ``path``; without it an existing file is refused
            before any work.

    Returns:
        ``path``.

    Raises:
        ImportError: tf2onnx / onnx are not installed (``pip install "deeplab_tf[onnx]"``).
    """
    path = check_output_file(path, ".onnx", overwrite)
    check_input_size(input_size)
    if isinstance(opset, bool) or not isinstance(opset, int) or not 13 <= opset <= 23:
        raise ValueError(f"opset must be an integer in 13..23. Received: opset={opset!r}")
    tf2onnx = _require("tf2onnx", "ONNX export")
    onnx = _require("onnx", "ONNX export")
    fn, signature = inference_function(
        model, input_size, input_dtype=input_dtype, logits=logits, scales=scales, flip=flip,
        fusion=fusion, upsample=upsample, fuse=fuse,
    )  # fmt: skip
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=signature, opset=opset)
    facts = export_facts(model, input_size, input_dtype, logits)
    onnx.helper.set_model_props(proto, {f"deeplab_tf.{k}": str(v) for k, v in facts.items()})
    onnx.checker.check_model(proto)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_bytes(path, proto.SerializeToString(), overwrite)
    return path


def onnx_session(path, num_threads: int | None = None):
    """An ONNX Runtime CPU session for a file (``pip install "deeplab_tf[onnx]"``)."""
    ort = _require("onnxruntime", "Running ONNX files")
    options = ort.SessionOptions()
    if num_threads:
        options.intra_op_num_threads = int(num_threads)
    return ort.InferenceSession(
        os.fspath(path), sess_options=options, providers=["CPUExecutionProvider"]
    )


def run_onnx(session_or_path, images) -> dict[str, np.ndarray]:
    """Runs ``(N, H, W, 3)`` (or one ``(H, W, 3)``) RGB images through an exported file.

    The images are cast to the file's input dtype (float32 or uint8; uint8 files take whole
    numbers 0..255 only). Returns ``{output name: array}``.
    """
    session = session_or_path
    if isinstance(session, (str, os.PathLike)):
        session = onnx_session(session)
    (spec,) = session.get_inputs()
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    dtype = np.uint8 if spec.type == "tensor(uint8)" else np.float32
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"run_onnx expected RGB images (N, H, W, 3) or (H, W, 3). "
            f"Received: shape={images.shape}"
        )
    if dtype is np.uint8 and images.dtype != np.uint8:
        if images.size and not (
            np.isfinite(images).all()
            and images.min() >= 0
            and images.max() <= 255
            and (np.round(images) == images).all()
        ):
            raise ValueError(
                "This ONNX file takes uint8 images; received values that are not whole numbers "
                f"in 0..255 (dtype {images.dtype})"
            )
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {spec.name: images.astype(dtype)})))
