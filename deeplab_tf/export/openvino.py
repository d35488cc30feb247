"""OpenVINO IR export (``pip install "deeplab_tf[openvino]"``), for OpenVINO's CPU runtime.

``openvino.convert_model`` converts the concrete function of the fused inference graph
(:func:`deeplab_tf.export.graph.inference_function`; the converter freezes its variables).
A SavedModel does not convert: its resource variables fail with ``VarHandleOp ... Cannot find
requested variable``. Inputs and outputs are those of the ONNX export
(:mod:`deeplab_tf.export.onnx`): ``images`` float32 or uint8 ``(N, H, W, 3)`` RGB 0..255 ->
``labels``, ``probabilities`` (and ``logits`` at the output stride on request).

Inference precision. On a CPU with AVX512-BF16 or AMX, OpenVINO's CPU plugin defaults to
``INFERENCE_PRECISION_HINT=bf16`` (measured here: ``Core().get_property("CPU",
"INFERENCE_PRECISION_HINT")`` is ``bfloat16``), so a plain ``compile_model(xml, "CPU")`` runs
the float32 model in bfloat16 and changes about 1% of the labels. The plugin takes the hint
only from the compile configuration (an IR cannot carry it: the CPU plugin applies a few
``runtime_options`` from the model's ``rt_info``, not this one). So the export records the
intended precision in the IR's ``rt_info`` (``deeplab_tf/inference_precision``, default
``f32``), and :func:`openvino_model` compiles with it; other callers pass
``{"INFERENCE_PRECISION_HINT": "f32"}`` themselves (docs/runtimes.md).

Files. The ``.xml`` (graph) and ``.bin`` (weights) are written together into an owned
temporary folder and moved into place ``.bin`` first, ``.xml`` last: the ``.xml`` is the
completion marker (OpenVINO opens a model by its ``.xml``). Replacing an existing pair
(``overwrite``) removes the old ``.xml`` first, so no reader ever pairs an ``.xml`` with the
other export's ``.bin``.
"""

from __future__ import annotations

import os

import numpy as np

from deeplab_tf import atomic
from deeplab_tf.export.graph import (
    check_input_size,
    check_output_file,
    export_facts,
    inference_function,
    require,
)

#: Inference precisions an export can record (OpenVINO element type names).
PRECISIONS = ("f32", "bf16", "f16")
_RT_KEY = "deeplab_tf"


def _openvino(what: str):
    return require("openvino", what, "openvino")


def _bin_path(xml: str) -> str:
    return xml[: -len(".xml")] + ".bin"


def export_openvino(
    model,
    path,
    input_size=None,
    *,
    input_dtype: str = "float32",
    logits: bool = False,
    compress_to_fp16: bool = False,
    precision: str = "f32",
    scales=(1.0,),
    flip: bool = False,
    fusion: str = "max",
    upsample: str = "caffe",
    fuse: bool = True,
    overwrite: bool = False,
) -> str:
    """Converts a DeepLab model to OpenVINO IR (``path`` ``.xml`` + the ``.bin`` beside it).

    Args:
        model: a DeepLab ``keras.Model`` (logits) or a :class:`MultiScaleInference` wrapper.
        path: the ``.xml`` file to write; the weights go to the same name with ``.bin``.
        input_size: ``(H, W)`` for a fixed input size; None (default) keeps N, H and W
            dynamic.
        input_dtype: ``"float32"`` or ``"uint8"`` images, RGB 0..255.
        logits: also output the scores at the output stride.
        compress_to_fp16: store the weights as float16 (half the ``.bin``; OpenVINO
            decompresses them, the inference precision is unchanged).
        precision: the inference precision recorded for :func:`openvino_model`: ``"f32"``
            (default; exact to float tolerance), ``"bf16"`` (about 2x faster on CPUs with
            AVX512-BF16 or AMX, about 1% of labels change) or ``"f16"``.
        scales, flip, fusion, upsample: multi-scale settings when ``model`` is a base model.
        fuse: convert the inference form (:func:`~deeplab_tf.export.fuse_for_inference`).
        overwrite: replace an existing pair; without it an existing ``.xml`` or ``.bin`` is
            refused before any work.

    Returns:
        ``path`` (the ``.xml``).

    Raises:
        ImportError: openvino is not installed (``pip install "deeplab_tf[openvino]"``).
    """
    xml = check_output_file(path, ".xml", overwrite)
    weights = check_output_file(_bin_path(xml), ".bin", overwrite)
    check_input_size(input_size)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}. Received: {precision!r}")
    ov = _openvino("OpenVINO export")
    fn, _ = inference_function(
        model, input_size, input_dtype=input_dtype, logits=logits, scales=scales, flip=flip,
        fusion=fusion, upsample=upsample, fuse=fuse,
    )  # fmt: skip
    converted = ov.convert_model(fn.get_concrete_function())
    facts = export_facts(model, input_size, input_dtype, logits)
    facts["inference_precision"] = precision
    facts["weights"] = "f16" if compress_to_fp16 else "f32"
    for key, value in facts.items():
        converted.set_rt_info(str(value), [_RT_KEY, key])
    with atomic.scratch(xml, "openvino") as tmp:
        ov.save_model(converted, os.path.join(tmp, "model.xml"), compress_to_fp16=compress_to_fp16)
        if overwrite:
            atomic.discard(xml)  # the old .xml goes first: it is the old pair's marker
        atomic.publish(os.path.join(tmp, "model.bin"), weights, overwrite)
        atomic.publish(os.path.join(tmp, "model.xml"), xml, overwrite)
    return xml


def recorded_precision(ov_model) -> str | None:
    """The inference precision an export recorded in a model's ``rt_info`` (None: none)."""
    if ov_model.has_rt_info([_RT_KEY, "inference_precision"]):
        return str(ov_model.get_rt_info([_RT_KEY, "inference_precision"]).astype(str))
    return None


def openvino_model(
    path, precision: str | None = None, num_threads: int | None = None, device: str = "CPU"
):
    """Compiles an exported ``.xml`` with its recorded inference precision enforced.

    Args:
        path: the ``.xml`` file.
        precision: ``"f32"``, ``"bf16"`` or ``"f16"`` to override what the export recorded;
            None: the recorded one (``f32`` for files that record none).
        num_threads: inference threads (``INFERENCE_NUM_THREADS``); None: OpenVINO's default.
        device: the OpenVINO device.

    Returns:
        An ``openvino.CompiledModel``; its ``get_property("INFERENCE_PRECISION_HINT")`` is
        the precision it runs at.
    """
    ov = _openvino("Running OpenVINO files")
    core = ov.Core()
    ov_model = core.read_model(os.fspath(path))
    precision = precision or recorded_precision(ov_model) or "f32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}. Received: {precision!r}")
    _check_precision_supported(core, device, precision)
    config = {"INFERENCE_PRECISION_HINT": precision}
    if num_threads:
        config["INFERENCE_NUM_THREADS"] = int(num_threads)
    return core.compile_model(ov_model, device, config)


#: OpenVINO's ``OPTIMIZATION_CAPABILITIES`` entry each reduced precision needs.
_CAPABILITY = {"bf16": "BF16", "f16": "FP16"}


def _check_precision_supported(core, device: str, precision: str) -> None:
    """Refuses a reduced precision the device cannot run, before compiling.

    The CPU plugin lists what the processor supports in ``OPTIMIZATION_CAPABILITIES`` (bf16
    needs AVX-512, natively AVX512-BF16 or AMX; f16 needs AVX512-FP16 or AVX2-VNNI-2). oneDNN's
    ``ONEDNN_MAX_CPU_ISA`` below AVX-512 also rules bf16 out: OpenVINO 2026.4 still lists BF16
    then, and inference with the bf16 hint crashed the process (segmentation fault, measured
    with ``ONEDNN_MAX_CPU_ISA=AVX2`` on an AVX512-BF16 CPU).
    """
    needed = _CAPABILITY.get(precision)
    if needed is None or not device.upper().startswith("CPU"):
        return
    capabilities = [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
    isa_cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    capped = precision == "bf16" and isa_cap and not isa_cap.startswith(("AVX512", "AVX10", "ALL"))
    if needed not in capabilities or capped:
        if needed in capabilities:
            why = f"ONEDNN_MAX_CPU_ISA={isa_cap} rules out the AVX-512 it needs"
        else:
            why = f"the CPU's OPTIMIZATION_CAPABILITIES {capabilities} lack {needed}"
        raise ValueError(
            f"OpenVINO cannot run {precision} inference here: {why}. "
            f"Use precision='f32'. Received: precision={precision!r}"
        )


def run_openvino(compiled_or_path, images) -> dict[str, np.ndarray]:
    """Runs ``(N, H, W, 3)`` (or one ``(H, W, 3)``) RGB images through an exported model
    (a path is compiled with :func:`openvino_model`); returns ``{output name: array}``."""
    compiled = compiled_or_path
    if isinstance(compiled, (str, os.PathLike)):
        compiled = openvino_model(compiled)
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"run_openvino expected RGB images (N, H, W, 3) or (H, W, 3). "
            f"Received: shape={images.shape}"
        )
    dtype = np.uint8 if compiled.input(0).get_element_type().get_type_name() == "u8" else None
    result = compiled(images.astype(dtype or np.float32))
    return {out.get_any_name(): np.asarray(result[out]) for out in compiled.outputs}
