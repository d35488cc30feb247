"""Inference speed of the DeepLab zoo against the machine's limit and a PyTorch reference.

Two parts, both measured in this one process:

1. Target model (ResNet-101 ASPP-L, 513x513, batch 1 by default): TensorFlow variants (eager,
   ``tf.function`` graph, XLA ``jit_compile``, BatchNorm folded, folded + fused padding/direct
   dilated convs, bfloat16 compute) against the same network in PyTorch
   (``benchmarks/torch_deeplab.py``) with identical weights. Variants run round-robin, so
   load from other processes hits all of them alike. Also reported: label agreement of every
   variant with the float32 graph (pixel labels after upsampling to the input size), and the
   PyTorch/Keras logit difference.
2. Zoo: every ``deeplab_tf.list_models()`` model at each size and batch size with one variant
   (``fused`` by default): latency, images/s, achieved GFLOP/s and its fraction of the measured
   conv limit.

FLOPs are counted analytically from layer shapes (2 x multiply-adds of every convolution; BN,
ReLU, pooling and resizing left out). The limit is one large dense 3x3 convolution
(1x128x128x256 -> 256) timed in the same process.

Weights are random (He/Glorot init, classifier N(0, 0.01)); BatchNorm statistics are calibrated
on the photo so activations have trained-like scale, and the last BN of each residual branch
(ResNet ``bn*_branch2c``, MobileNetV2 ``*_project_BN``) gets gamma 0.2 (trained networks have
small ones; with gamma 1 a random 101-layer ResNet is chaotic and any rounding changes most
labels). Labels of a random classifier have small margins,
so the agreement figure is a pessimistic estimate of that of trained weights.

Prints JSON on stdout and a table on stderr. Usage::

    python -m benchmarks.bench_inference                 # full run (about 10 min on 2 cores)
    python -m benchmarks.bench_inference --quick         # seconds: tiny sizes, CI smoke run
    python -m benchmarks.bench_inference --zoo-models deeplabv2_vgg16_largefov --sizes 321
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time

from benchmarks import _common, _runtimes

TARGET_VARIANTS = ("eager", "graph", "xla", "folded", "fused", "bf16", "fused_bf16")
TARGETS = {"fp32_vs_torch": 0.75, "bf16_vs_torch": 0.45, "bf16_label_agreement": 0.995}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Prints JSON (stdout) and a table (stderr).",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes and models (CI smoke run)")
    p.add_argument("--target-model", default="deeplabv2_resnet101_aspp_l")
    p.add_argument("--target-size", type=int, default=513)
    p.add_argument("--target-batch", type=int, default=1)
    p.add_argument("--variants", nargs="+", default=list(TARGET_VARIANTS), choices=TARGET_VARIANTS)
    p.add_argument("--repeats", type=int, default=3, help="timed rounds for the target part")
    p.add_argument("--zoo-models", nargs="*", default=None, help="default: every zoo model")
    p.add_argument("--sizes", type=int, nargs="+", default=[321, 513])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--zoo-variant", default="fused", choices=("graph", "folded", "fused"))
    p.add_argument("--zoo-repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    p.add_argument(
        "--runtimes",
        action="store_true",
        help="add the runtime comparison (TF fused fp32/bf16, frozen and with variables; "
        "OpenVINO fp32/bf16, ONNX Runtime, LiteRT fp32/int8, PyTorch) for each --runtime-cases",
    )
    p.add_argument("--runtimes-only", action="store_true", help="only the runtime comparison")
    p.add_argument(
        "--runtime-cases",
        nargs="+",
        default=None,
        help=f"MODEL:SIZE (default: {' '.join(_runtimes.CASES)})",
    )
    p.add_argument("--json-out", default=None, help="also write the JSON report here")
    args = p.parse_args(argv)
    args.runtimes = args.runtimes or args.runtimes_only
    if args.runtime_cases is None:
        args.runtime_cases = list(_runtimes.QUICK_CASES if args.quick else _runtimes.CASES)
    try:
        for case in args.runtime_cases:
            _runtimes.parse_case(case)
    except ValueError as err:
        p.error(str(err))
    if args.quick:
        args.target_model = "deeplabv2_resnet50_aspp_l"
        args.target_size, args.target_batch, args.repeats = 49, 1, 1
        args.variants = ["graph", "fused", "fused_bf16"]
        args.zoo_models = args.zoo_models or ["deeplabv2_mobilenetv2_aspp_l"]
        args.sizes, args.batches, args.zoo_repeats = [33], [1, 2], 1
    for name in ("target_size", "target_batch", "repeats", "zoo_repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1. Received: {getattr(args, name)}")
    if min(args.sizes) < 17 or min(args.batches) < 1:
        p.error(f"sizes must be >= 17 and batches >= 1. Received: {args.sizes}, {args.batches}")
    return args


def build_variant(name, model, size, batch):
    """A callable ``images -> logits (numpy)`` for one variant."""
    import tensorflow as tf

    from deeplab_tf.export import fold_batchnorm, fuse_for_inference, to_bfloat16

    spec = [tf.TensorSpec((batch, size, size, 3), tf.uint8, name="images")]
    if name == "eager":
        return lambda x: model(x, training=False).numpy()
    net = {
        "graph": lambda: model,
        "xla": lambda: model,
        "folded": lambda: fold_batchnorm(model),
        "fused": lambda: fuse_for_inference(model),
        "bf16": lambda: to_bfloat16(model),
        "fused_bf16": lambda: to_bfloat16(fuse_for_inference(model)),
    }[name]()
    fn = tf.function(
        lambda x: tf.cast(net(x, training=False), tf.float32),
        input_signature=spec,
        jit_compile=name == "xla",
    )
    return lambda x: fn(x).numpy()


def target_part(args, torch, limit, threads):
    import numpy as np
    import tensorflow as tf

    import deeplab_tf
    from deeplab_tf.export import with_input_shape

    tf.get_logger().setLevel("ERROR")
    size, batch = args.target_size, args.target_batch
    model = with_input_shape(deeplab_tf.create_model(args.target_model), size, size, batch)
    images = _common.photo(size, size, batch)
    calib = _common.photo(min(size, 161), min(size, 161))
    _common.calibrate_batchnorm(model, calib)
    is_resnet = "resnet" in args.target_model
    damped = _common.dampen_residual_branches(model)
    gflop = _common.conv_flops(model) / 1e9
    runners, notes = {}, []
    for name in args.variants:
        start = time.perf_counter()
        runners[name] = build_variant(name, model, size, batch)
        notes.append((name, time.perf_counter() - start))
    torch_note = None
    if not torch:
        torch_note = "torch is not installed (pip install torch): PyTorch comparison skipped"
    elif not is_resnet:
        torch_note = "the PyTorch reference implements the ResNet models only"
    elif args.no_torch:
        torch_note = "--no-torch given"
    workdir = tempfile.mkdtemp(prefix="deeplab-bench-")
    torch_runs = []

    def run_torch():
        tag = str(len(torch_runs))
        torch_runs.append(
            _runtimes.torch_infer(model, args.target_model, images, args.repeats, threads,
                                  workdir, tag)
        )  # fmt: skip

    if torch_note is None:
        run_torch()  # before the TensorFlow variants ...
    # First calls (tracing / compilation) and outputs, then round-robin timing.
    outputs, first = {}, {}
    for name, fn in runners.items():
        start = time.perf_counter()
        outputs[name] = fn(images)
        first[name] = time.perf_counter() - start
    times = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, fn in runners.items():
            start = time.perf_counter()
            fn(images)
            times[name].append(time.perf_counter() - start)
    if torch_runs:
        run_torch()  # ... and after them, so drifting load from other processes hits both
        outputs["torch_fp32"] = torch_runs[0]["logits"]
        first["torch_fp32"] = torch_runs[0]["first_call_s"]
        times["torch_fp32"] = [t for r in torch_runs for t in r["times_s"]]
        runners["torch_fp32"] = None
    shutil.rmtree(workdir, ignore_errors=True)
    ref = outputs.get("graph", next(iter(outputs.values())))
    built = dict(notes)
    rows = {}
    for name in runners:
        t = _common.summarize(times[name], first[name])
        sec = t["median_s"]
        row = {
            **t,
            "build_s": round(built.get(name, 0.0), 2),
            "images_per_s": round(batch / sec, 3),
            "gflops_per_s": round(gflop * batch / sec, 1),
            "fraction_of_conv_limit": round(gflop * batch / sec / limit, 3),
            "label_agreement_vs_fp32_graph": round(
                _common.label_agreement(ref, outputs[name], (size, size)), 5
            ),
            "max_abs_logit_diff_vs_fp32_graph": float(np.abs(outputs[name] - ref).max()),
            "mean_rel_logit_diff_vs_fp32_graph": float(
                np.abs(outputs[name] - ref).mean() / max(np.abs(ref).mean(), 1e-12)
            ),
        }
        rows[name] = row
    torch_s = rows.get("torch_fp32", {}).get("median_s")
    for row in rows.values():
        row["time_vs_torch_fp32"] = _common.ratio(row["median_s"], torch_s)
    fp32_names = [n for n in ("graph", "xla", "folded", "fused", "eager") if n in rows]
    bf16_names = [n for n in ("bf16", "fused_bf16") if n in rows]
    best_fp32 = min(fp32_names, key=lambda n: rows[n]["median_s"]) if fp32_names else None
    best_bf16 = min(bf16_names, key=lambda n: rows[n]["median_s"]) if bf16_names else None
    verdict = {}
    if torch_s is not None:
        if best_fp32:
            r = rows[best_fp32]["time_vs_torch_fp32"]
            verdict["fp32"] = {
                "variant": best_fp32,
                "time_vs_torch": r,
                "target": TARGETS["fp32_vs_torch"],
                "met": r <= TARGETS["fp32_vs_torch"],
            }
        if best_bf16:
            r = rows[best_bf16]["time_vs_torch_fp32"]
            agree = rows[best_bf16]["label_agreement_vs_fp32_graph"]
            verdict["bf16"] = {
                "variant": best_bf16,
                "time_vs_torch": r,
                "target": TARGETS["bf16_vs_torch"],
                "label_agreement": agree,
                "agreement_target": TARGETS["bf16_label_agreement"],
                "met": r <= TARGETS["bf16_vs_torch"] and agree >= TARGETS["bf16_label_agreement"],
            }
    return {
        "model": args.target_model,
        "size": size,
        "batch": batch,
        "gflop_per_image": round(gflop, 2),
        "weights": "random; BN calibrated on the photo"
        + (f"; residual-branch BN gamma 0.2 ({damped} layers)" if damped else ""),
        "input": "tests/fixtures/coffee_500x375.jpg resized (CC0 photo)",
        "variants": rows,
        "torch": torch_note
        or "same network, identical weights (benchmarks/torch_deeplab.py), own process, "
        "timed before and after the TensorFlow variants",
        "torch_conv_limit": torch_runs[0]["conv_limit"] if torch_runs else None,
        "verdict": verdict,
    }


def zoo_part(args, limit):
    import tensorflow as tf

    import deeplab_tf
    from deeplab_tf.export import fold_batchnorm, fuse_for_inference, with_input_shape

    rows = []
    for name in args.zoo_models or deeplab_tf.list_models():
        base = deeplab_tf.create_model(name)
        for size in args.sizes:
            fixed = with_input_shape(base, size, size, None)
            gflop = _common.conv_flops(with_input_shape(base, size, size, 1)) / 1e9
            net = {"graph": lambda m: m, "folded": fold_batchnorm, "fused": fuse_for_inference}[
                args.zoo_variant
            ](fixed)
            fn = tf.function(
                lambda x, net=net: net(x, training=False),
                input_signature=[tf.TensorSpec((None, size, size, 3), tf.uint8)],
            )
            start = time.perf_counter()
            fn(_common.photo(size, size, 1)).numpy()
            first = time.perf_counter() - start
            for batch in args.batches:
                x = _common.photo(size, size, batch)
                t = _common.timed(lambda fn=fn, x=x: fn(x).numpy(), args.zoo_repeats, warmup=0)
                sec = t["median_s"]
                rows.append(
                    {
                        "model": name,
                        "size": size,
                        "batch": batch,
                        "variant": args.zoo_variant,
                        **t,
                        "first_call_s": round(first, 2),
                        "images_per_s": round(batch / sec, 3),
                        "gflop_per_image": round(gflop, 2),
                        "gflops_per_s": round(gflop * batch / sec, 1),
                        "fraction_of_conv_limit": round(gflop * batch / sec / limit, 3),
                    }
                )
                _common.print_table(rows[-1:], ["model", "size", "batch", "median_s"])
    return rows


def main(argv=None):
    args = parse_args(argv)
    threads = _common.configure_threads(args.threads)
    torch = importlib.util.find_spec("torch") is not None
    info = _common.machine_info()
    info["threads"] = threads
    start = time.perf_counter()
    limit = _common.conv_throughput("float32", repeats=1 if args.quick else 3)
    limit_bf16 = _common.conv_throughput("bfloat16", repeats=1 if args.quick else 3)
    report = {
        "benchmark": "inference",
        "machine": info,
        "bfloat16_note": _common.bf16_note(info),
        "flops": "analytic: 2 x multiply-adds of every convolution, from layer shapes",
        "conv_limit_fp32": limit,
        "conv_limit_bf16": limit_bf16,
    }
    if not args.runtimes_only:
        report["target"] = target_part(args, torch, limit["gflops_per_s"], threads)
        _common.print_table(
            [{"variant": k, **v} for k, v in report["target"]["variants"].items()],
            ["variant", "median_s", "images_per_s", "gflops_per_s", "fraction_of_conv_limit",
             "time_vs_torch_fp32", "label_agreement_vs_fp32_graph"],
        )  # fmt: skip
        report["zoo"] = zoo_part(args, limit["gflops_per_s"])
        _common.print_table(
            report["zoo"],
            ["model", "size", "batch", "median_s", "images_per_s", "gflops_per_s",
             "fraction_of_conv_limit"],
        )  # fmt: skip
    if args.runtimes:
        report["runtimes"] = {
            "about": " ".join(_runtimes.__doc__.split("\n\n")[1].split()),
            "targets": _runtimes.TARGETS,
            "cases": _runtimes.runtimes_part(
                args.runtime_cases, args.repeats, threads, torch, args.no_torch
            ),
        }
    report["wall_s"] = round(time.perf_counter() - start, 1)
    report["machine"]["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    report["command"] = "python -m benchmarks.bench_inference " + " ".join(sys.argv[1:])
    _common.emit(report, args.json_out)


if __name__ == "__main__":
    main()
