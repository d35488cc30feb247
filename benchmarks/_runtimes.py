"""``bench_inference.py --runtimes``: one network in every runtime it exports to.

For each ``model:size`` case (batch 1): our fused TensorFlow graph in float32 and bfloat16
(:func:`deeplab_tf.export.graph.inference_function`, the graph the exports convert, frozen as
the converters freeze it, and again reading its weights from variables, as in a SavedModel), the
OpenVINO IR (:func:`~deeplab_tf.export.export_openvino`) at f32 and bf16 inference precision,
the ONNX file (:func:`~deeplab_tf.export.export_onnx`) in ONNX Runtime, the fp32 and the
full-integer int8 ``.tflite`` (:func:`~deeplab_tf.export.export_tflite_files`, int8 calibrated
on flips/shifts of the benchmark photo; both files come from one trace, so ``litert_fp32``'s
``convert_s`` holds both conversions) in LiteRT with its default delegate (XNNPACK), and the
same network in PyTorch (``benchmarks/torch_deeplab.py``, ResNet models, own process, timed
before and after the others). Every runtime maps the uint8/float image to full-resolution labels
(PyTorch: stride-8 logits, upsampled and arg-maxed outside the timing); the others run
round-robin so load from other processes hits all alike. Label agreement is against TF fused
fp32, pixel by pixel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks import _common

CASES = ("deeplabv2_resnet101_aspp_l:513", "deeplabv2_mobilenetv2_aspp_l:321")
QUICK_CASES = ("deeplabv2_resnet50_aspp_l:49", "deeplabv2_mobilenetv2_aspp_l:33")
#: The TF rows (not exported files): the frozen graph, and the same graph reading variables.
TF_ROWS = ("tf_fp32", "tf_bf16", "tf_fp32_variables", "tf_bf16_variables")
RUNTIMES = (*TF_ROWS, "openvino_fp32", "openvino_bf16", "onnxruntime_fp32", "litert_fp32",
            "litert_int8", "torch_fp32")  # fmt: skip
#: Representative images for the int8 file's calibration.
INT8_CALIBRATION = 8
#: Issue 18's targets (on a CPU with AVX512-BF16).
TARGETS = {
    "tf_fp32_vs_openvino_fp32": 1.0,
    "tf_bf16_vs_openvino_bf16": 1.0,
    "tf_bf16_label_agreement": 0.995,
    "fastest_export_vs_torch_fp32": 0.35,
    "fastest_export_label_agreement": 0.99,
}


def parse_case(text: str):
    name, _, size = text.partition(":")
    if not name or not size.isdigit() or int(size) < 17:
        raise ValueError(f"expected MODEL:SIZE such as {CASES[1]}, got {text!r}")
    return name, int(size)


def torch_infer(model, model_name, images, repeats, threads, workdir, tag=""):
    """Runs the PyTorch port of a ResNet DeepLab (same weights) in its own process.

    Returns the worker's JSON (``times_s``, ``first_call_s``, ``conv_limit``) plus ``logits``.
    """
    import keras
    import numpy as np

    names = [
        layer.name
        for layer in model.layers
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.BatchNormalization))
    ]
    weights = os.path.join(workdir, "weights.npz")
    if not os.path.exists(weights):
        _common.save_npz(_common.keras_arrays(model, names), weights)
    images_path = os.path.join(workdir, "images.npy")
    np.save(images_path, images)
    depth = int(model_name.split("resnet")[1].split("_")[0])
    out = os.path.join(workdir, f"torch_logits{tag}.npy")
    cmd = [sys.executable, "-m", "benchmarks._torch_worker", "infer",
           "--depth", str(depth), "--num-classes", str(model.output_shape[-1]),
           "--weights", weights, "--images", images_path, "--repeats", str(repeats),
           "--threads", str(threads), "--out", out]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=_common.REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"The PyTorch worker failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["logits"] = np.load(out)
    return result


def _runners(model, size, threads, workdir, skipped, hints):
    """``{runtime: (build_s, images -> labels)}`` for the in-process runtimes."""
    import importlib.util

    import numpy as np

    from deeplab_tf.export import fuse_for_inference, to_bfloat16
    from deeplab_tf.export.graph import inference_function

    runners = {}

    def add(name, build):
        start = time.perf_counter()
        try:
            fn = build()
        except Exception as err:  # a runtime that fails to convert is reported, not fatal
            skipped[name] = f"{type(err).__name__}: {str(err)[:300]}"
            return
        runners[name] = (round(time.perf_counter() - start, 1), fn)

    fused = fuse_for_inference(model)

    def tf_graph(net, freeze=True):
        fn, _ = inference_function(net, (size, size), batch=1, input_dtype="uint8", fuse=False,
                                   freeze=freeze)  # fmt: skip
        return lambda x: fn(x)["labels"].numpy()

    bf16 = to_bfloat16(fused)
    add("tf_fp32", lambda: tf_graph(fused))
    add("tf_bf16", lambda: tf_graph(bf16))
    # As a SavedModel holds the graph: with oneDNN, a filter read from a variable is reordered
    # into oneDNN's layout on every call; a constant one once.
    add("tf_fp32_variables", lambda: tf_graph(fused, freeze=False))
    add("tf_bf16_variables", lambda: tf_graph(bf16, freeze=False))
    if importlib.util.find_spec("openvino"):
        from deeplab_tf.export import export_openvino, openvino_model

        def openvino(precision):
            xml = os.path.join(workdir, "model.xml")
            if not os.path.exists(xml):
                export_openvino(fused, xml, (size, size), input_dtype="uint8", fuse=False)
            compiled = openvino_model(xml, precision, num_threads=threads)
            hints[f"openvino_{precision.replace('f32', 'fp32')}"] = str(
                compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
            )
            labels = compiled.output("labels")
            return lambda x: np.asarray(compiled(x)[labels])

        add("openvino_fp32", lambda: openvino("f32"))
        add("openvino_bf16", lambda: openvino("bf16"))
    else:
        skipped["openvino_fp32"] = skipped["openvino_bf16"] = 'pip install "deeplab_tf[openvino]"'
    if importlib.util.find_spec("tf2onnx") and importlib.util.find_spec("onnxruntime"):
        from deeplab_tf.export import export_onnx, onnx_session

        def onnxruntime():
            path = export_onnx(fused, os.path.join(workdir, "model.onnx"), (size, size),
                               input_dtype="uint8", fuse=False)  # fmt: skip
            session = onnx_session(path, num_threads=threads)
            return lambda x: session.run(["labels"], {"images": x})[0]

        add("onnxruntime_fp32", onnxruntime)
    else:
        skipped["onnxruntime_fp32"] = 'pip install "deeplab_tf[onnx]"'
    if importlib.util.find_spec("ai_edge_litert"):
        from deeplab_tf.export import litert_interpreter, run_tflite
        from deeplab_tf.export.tflite import export_tflite_files

        paths = {q: os.path.join(workdir, f"model_{q}.tflite") for q in ("fp32", "int8")}

        def litert(quantization):
            if not all(os.path.exists(p) for p in paths.values()):  # one trace for both files
                calibration = list(_common.photo(size, size, INT8_CALIBRATION, seed=1))
                export_tflite_files(fused, paths, (size, size), representative_data=calibration,
                                    num_calibration=INT8_CALIBRATION)  # fmt: skip
            interpreter = litert_interpreter(paths[quantization], num_threads=threads)
            return lambda x: run_tflite(interpreter, x)["labels"]

        add("litert_fp32", lambda: litert("fp32"))
        add("litert_int8", lambda: litert("int8"))
    else:
        skipped["litert_fp32"] = skipped["litert_int8"] = "pip install ai-edge-litert"
    return runners


def run_case(model_name, size, repeats, threads, torch_available, no_torch=False):
    import keras
    import numpy as np
    import tensorflow as tf

    import deeplab_tf
    from deeplab_tf.export import with_input_shape
    from deeplab_tf.layers import resize_logits

    keras.utils.set_random_seed(0)  # the same random weights in every run of a case
    model = with_input_shape(deeplab_tf.create_model(model_name), size, size, 1)
    _common.calibrate_batchnorm(model, _common.photo(min(size, 161), min(size, 161)))
    damped = _common.dampen_residual_branches(model)
    images = _common.photo(size, size, 1)
    workdir = tempfile.mkdtemp(prefix="deeplab-bench-runtimes-")
    skipped, torch_runs, hints = {}, [], {}
    if not torch_available:
        skipped["torch_fp32"] = "torch is not installed (pip install torch)"
    elif "resnet" not in model_name:
        skipped["torch_fp32"] = "the PyTorch reference implements the ResNet models only"
    elif no_torch:
        skipped["torch_fp32"] = "--no-torch given"
    try:
        runners = _runners(model, size, threads, workdir, skipped, hints)
        if "torch_fp32" not in skipped:
            torch_runs.append(torch_infer(model, model_name, images, repeats, threads, workdir))
        labels, first = {}, {}
        for name, (_, fn) in runners.items():
            start = time.perf_counter()
            labels[name] = np.asarray(fn(images)).reshape(size, size)
            first[name] = time.perf_counter() - start
        times = {name: [] for name in runners}
        for _ in range(repeats):
            for name, (_, fn) in runners.items():
                start = time.perf_counter()
                fn(images)
                times[name].append(time.perf_counter() - start)
        if torch_runs:
            again = torch_infer(model, model_name, images, repeats, threads, workdir, "2")
            torch_runs.append(again)
            up = resize_logits(tf.constant(torch_runs[0]["logits"]), (size, size), "caffe")
            labels["torch_fp32"] = np.argmax(up.numpy(), axis=-1).reshape(size, size)
            first["torch_fp32"] = torch_runs[0]["first_call_s"]
            times["torch_fp32"] = [t for r in torch_runs for t in r["times_s"]]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    ref = labels.get("tf_fp32")
    rows = {}
    for name in [n for n in RUNTIMES if n in times]:
        rows[name] = {
            **_common.summarize(times[name], first[name]),
            "convert_s": runners[name][0] if name in runners else None,
            **({"openvino_precision": hints[name]} if name in hints else {}),
            "label_agreement_vs_tf_fp32": None
            if ref is None
            else round(float(np.mean(labels[name] == ref)), 5),
        }
    return {
        "model": model_name,
        "size": size,
        "batch": 1,
        "weights": "random; BN calibrated on the photo"
        + (f"; residual-branch BN gamma 0.2 ({damped} layers)" if damped else ""),
        "runtimes": rows,
        "skipped": skipped,
        "verdict": verdict(rows),
    }


def verdict(rows):
    def sec(name):
        return rows.get(name, {}).get("median_s")

    def agree(name):
        return rows.get(name, {}).get("label_agreement_vs_tf_fp32")

    out = {}
    for key, (a, b) in {
        "tf_fp32_vs_openvino_fp32": ("tf_fp32", "openvino_fp32"),
        "tf_bf16_vs_openvino_bf16": ("tf_bf16", "openvino_bf16"),
    }.items():
        r = _common.ratio(sec(a), sec(b))
        out[key] = {"ratio": r, "target": TARGETS[key], "met": r is not None and r <= TARGETS[key]}
    a = agree("tf_bf16")
    out["tf_bf16_label_agreement"] = {
        "value": a,
        "target": TARGETS["tf_bf16_label_agreement"],
        "met": a is not None and a >= TARGETS["tf_bf16_label_agreement"],
    }
    exported = [n for n in rows if n not in (*TF_ROWS, "torch_fp32")]
    good = [n for n in exported if (agree(n) or 0) >= TARGETS["fastest_export_label_agreement"]]
    if good and sec("torch_fp32"):
        best = min(good, key=sec)
        r = _common.ratio(sec(best), sec("torch_fp32"))
        out["fastest_export_vs_torch_fp32"] = {
            "runtime": best,
            "ratio": r,
            "label_agreement": agree(best),
            "target": TARGETS["fastest_export_vs_torch_fp32"],
            "met": r <= TARGETS["fastest_export_vs_torch_fp32"],
        }
    return out


def runtimes_part(cases, repeats, threads, torch_available, no_torch=False):
    results = []
    for text in cases:
        name, size = parse_case(text)
        results.append(run_case(name, size, repeats, threads, torch_available, no_torch))
        _common.print_table(
            [{"runtime": k, **v} for k, v in results[-1]["runtimes"].items()],
            ["runtime", "median_s", "min_s", "convert_s", "label_agreement_vs_tf_fp32"],
        )
    return results
