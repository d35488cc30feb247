"""Training-step speed and peak memory against the same network's PyTorch step.

One optimizer update of DeepLab v2 ResNet-101 ASPP-L at 321x321 with frozen BatchNorm and the
paper's solver (``deeplab_tf.recipes.paper``: CaffeSGD, momentum 0.9, L2 5e-4, lr multipliers;
DeepLabLoss), batch 10 as 5 micro-batches accumulated twice (``gradient_accumulation_steps=2``),
with multi-scale (MSC, scales 1/0.75/0.5, four losses) off and on; against the PyTorch
reference (``benchmarks/torch_deeplab.py``: SGD momentum 0.9, weight decay 5e-4, 10x lr on the
classifier, the same loss and MSC), measured in the same run.

Each configuration runs in its own process (peak RSS is then its own, and the two frameworks'
thread pools do not compete). The Keras step runs as ``deeplab-tf train`` runs it: TensorFlow's
default inter-op pool (one thread per core) and ``TF_CPU_ALLOCATOR_USE_BFC=true``
(``--inter-op 1`` and ``--no-bfc`` measure without them); PyTorch runs with its defaults.
A warm-up micro-batch (tracing) precedes the timed steps; its time is reported as
``first_call_s``. Images and labels are random (timing only).

``--precision fp32,bf16,fp16`` also measures Keras mixed precision (``DeepLabV2(dtype=
"mixed_bfloat16" | "mixed_float16")``; float16 with Keras's dynamic loss scaling) against
PyTorch's ``torch.autocast("cpu")`` step at the same precision (float16 with ``GradScaler``),
each in its own process; ``vs_fp32`` is a precision's Keras step time over the Keras fp32 step
of the same run, and on a CPU with AVX512-BF16 or AMX the bf16 step's target is at most
``BF16_TARGET`` of it.

Prints JSON on stdout and a table on stderr. Usage::

    python -m benchmarks.bench_train                 # full run (about 10 min on 2 cores)
    python -m benchmarks.bench_train --quick         # CI smoke run (ResNet-50, 65 px)
    python -m benchmarks.bench_train --micro-batch 1 --accumulation 2 --msc off
    python -m benchmarks.bench_train --precision fp32,bf16,fp16 --msc off
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

from benchmarks import _common

TARGET = 0.8
#: bf16 step time over the fp32 step on a CPU with native bfloat16 dot products.
BF16_TARGET = 0.6
PRECISIONS = ("fp32", "bf16", "fp16")
#: The DeepLabV2 dtype policy of each precision.
POLICY = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


def _precisions(text):
    values = [v.strip() for v in str(text).split(",") if v.strip()]
    bad = [v for v in values if v not in PRECISIONS]
    if not values or bad or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(
            f"--precision takes distinct values among {', '.join(PRECISIONS)}, comma-separated. "
            f"Received: {text!r}"
        )
    return sorted(values, key=PRECISIONS.index)  # fp32 first: the others are compared to it


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Prints JSON (stdout) and a table (stderr).",
    )
    p.add_argument("--quick", action="store_true", help="ResNet-50 at 65 px (CI smoke run)")
    p.add_argument("--depth", type=int, default=101, choices=(50, 101, 152))
    p.add_argument("--size", type=int, default=321)
    p.add_argument("--micro-batch", type=int, default=5)
    p.add_argument("--accumulation", type=int, default=2)
    p.add_argument("--steps", type=int, default=1, help="timed optimizer updates")
    p.add_argument("--msc", nargs="+", default=["off", "on"], choices=("off", "on"))
    p.add_argument("--jit-compile", action="store_true", help="compile the Keras step with XLA")
    p.add_argument(
        "--precision",
        type=_precisions,
        default=["fp32"],
        help="comma-separated precisions to measure: fp32, bf16 (mixed_bfloat16 / torch "
        "autocast bfloat16), fp16 (mixed_float16 with loss scaling / autocast float16 with "
        "GradScaler); default fp32",
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--no-bfc",
        action="store_true",
        help="run the Keras step with TensorFlow's default host allocator instead of "
        "TF_CPU_ALLOCATOR_USE_BFC=true (which `deeplab-tf` commands set)",
    )
    p.add_argument(
        "--inter-op",
        type=int,
        default=0,
        help="TensorFlow inter-op threads (0: TensorFlow's default, one per core; a training "
        "step's independent gradient ops then overlap)",
    )
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--json-out", default=None)
    p.add_argument("--worker", choices=("tf", "torch"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.depth, args.size, args.micro_batch, args.accumulation, args.steps = 50, 65, 1, 2, 1
    for name in ("size", "micro_batch", "accumulation", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1. Received: {getattr(args, name)}")
    if args.size < 33:
        p.error(f"--size must be >= 33. Received: {args.size}")
    return args


def tf_worker(args, msc: bool, precision: str = "fp32") -> dict:
    threads = _common.configure_threads(args.threads, args.inter_op or None)
    import numpy as np

    import deeplab_tf
    from deeplab_tf.training import MultiScaleTraining, paper

    name = f"deeplabv2_resnet{args.depth}_aspp_l"
    model = deeplab_tf.create_model(name, freeze_batchnorm=True, dtype=POLICY[precision])
    if msc:
        model = MultiScaleTraining(model)
    compile_args = paper(name, accumulation_steps=args.accumulation)
    compile_args.pop("metrics", None)  # the loss step only, like the PyTorch step
    model.compile(**compile_args, jit_compile=bool(args.jit_compile))
    rng = np.random.default_rng(0)
    batches = [
        (
            rng.integers(0, 256, (args.micro_batch, args.size, args.size, 3)).astype(np.uint8),
            rng.integers(0, 21, (args.micro_batch, args.size, args.size)).astype(np.uint8),
        )
        for _ in range(args.accumulation)
    ]
    start = time.perf_counter()
    model.train_on_batch(*batches[0])  # warm-up micro-batch: tracing
    first = time.perf_counter() - start
    # Finish the warm-up's accumulation cycle so timed steps start on an update boundary.
    for x, y in batches[1:]:
        model.train_on_batch(x, y)
    times, losses = [], []
    for _ in range(args.steps):
        start = time.perf_counter()
        for x, y in batches:
            loss = model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
        losses.append(float(np.asarray(loss).reshape(-1)[0]))
    return {
        "times_s": times,
        "first_call_s": first,
        "losses": losses,
        "peak_rss_mb": _common.peak_rss_mb(),
        "threads": threads,
        "inter_op": args.inter_op or "tf default",
        "bfc_allocator": os.environ.get("TF_CPU_ALLOCATOR_USE_BFC", "unset"),
        "precision": precision,
        "optimizer": type(model.optimizer).__name__,
    }


def run_worker(args, framework: str, msc: bool, precision: str = "fp32") -> dict:
    if framework == "torch":
        cmd = [
            sys.executable,
            "-m",
            "benchmarks._torch_worker",
            "train",
            "--depth",
            str(args.depth),
            "--size",
            str(args.size),
            "--micro-batch",
            str(args.micro_batch),
            "--accumulation",
            str(args.accumulation),
            "--steps",
            str(args.steps),
            "--precision",
            precision,
        ]
        cmd += ["--msc"] if msc else []  # fmt: skip
    else:
        cmd = [sys.executable, "-m", "benchmarks.bench_train", "--worker", "tf",
               "--depth", str(args.depth), "--size", str(args.size),
               "--micro-batch", str(args.micro_batch), "--accumulation", str(args.accumulation),
               "--steps", str(args.steps), "--msc", "on" if msc else "off",
               "--precision", precision]  # fmt: skip
        if args.jit_compile:
            cmd.append("--jit-compile")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if framework == "tf":
        cmd += ["--inter-op", str(args.inter_op)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    if framework == "tf":
        env["TF_CPU_ALLOCATOR_USE_BFC"] = "false" if args.no_bfc else "true"
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=_common.REPO)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        return {"error": f"{framework} worker exited with {proc.returncode}:\n{tail}"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = round(time.perf_counter() - start, 1)
    t = _common.summarize(result.pop("times_s"), result.pop("first_call_s"))
    result.update(t)
    result["seconds_per_step"] = t["median_s"]
    result["images_per_s"] = round(args.micro_batch * args.accumulation / t["median_s"], 3)
    return result


def main(argv=None):
    args = parse_args(argv)
    if args.worker == "tf":
        print(json.dumps(tf_worker(args, args.msc == ["on"], args.precision[0])))
        return
    threads = _common.configure_threads(args.threads)
    has_torch = importlib.util.find_spec("torch") is not None and not args.no_torch
    info = _common.machine_info()
    info["threads"] = threads
    start = time.perf_counter()
    native_bf16 = bool(info["cpu_flags"].get("avx512_bf16") or info["cpu_flags"].get("amx_bf16"))
    rows = []
    for msc in args.msc:
        on = msc == "on"
        fp32_step = None
        for precision in args.precision:
            row = {"msc": msc, "precision": precision}
            if has_torch:
                row["torch"] = run_worker(args, "torch", on, precision)
            row["keras"] = run_worker(args, "tf", on, precision)
            k = row["keras"].get("seconds_per_step")
            t = row.get("torch", {}).get("seconds_per_step")
            row["time_vs_torch"] = _common.ratio(k, t)
            if precision == "fp32":
                fp32_step = k
                row["target"] = TARGET
                row["met"] = (
                    None if row["time_vs_torch"] is None else row["time_vs_torch"] <= TARGET
                )
            else:
                row["vs_fp32"] = _common.ratio(k, fp32_step)
                if precision == "bf16":
                    row["target_vs_fp32"] = BF16_TARGET if native_bf16 else None
                    row["met"] = (
                        None if row["vs_fp32"] is None or not native_bf16
                        else row["vs_fp32"] <= BF16_TARGET
                    )  # fmt: skip
            if has_torch and "peak_rss_mb" in row["keras"] and "peak_rss_mb" in row["torch"]:
                row["rss_vs_torch"] = _common.ratio(
                    row["keras"]["peak_rss_mb"], row["torch"]["peak_rss_mb"]
                )
            rows.append(row)
            _common.print_table(
                [
                    {"msc": msc, "precision": precision, "framework": f, **row[f]}
                    for f in ("torch", "keras")
                    if f in row and "error" not in row[f]
                ],
                ["msc", "precision", "framework", "seconds_per_step", "images_per_s",
                 "first_call_s", "peak_rss_mb"],
            )  # fmt: skip
            for f in ("torch", "keras"):
                if "error" in row.get(f, {}):
                    print(row[f]["error"], file=sys.stderr)
    info["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    report = {
        "benchmark": "train",
        "machine": info,
        "model": f"deeplabv2_resnet{args.depth}_aspp_l",
        "size": args.size,
        "batch": args.micro_batch * args.accumulation,
        "micro_batch": args.micro_batch,
        "accumulation": args.accumulation,
        "frozen_batchnorm": True,
        "jit_compile": bool(args.jit_compile),
        "precisions": list(args.precision),
        "bf16_note": _common.bf16_note(info),
        "torch": "same network and loss in PyTorch (benchmarks/torch_deeplab.py)"
        if has_torch
        else "torch not installed (pip install torch) or --no-torch: comparison skipped",
        "results": rows,
        "wall_s": round(time.perf_counter() - start, 1),
        "command": "python -m benchmarks.bench_train " + " ".join(sys.argv[1:]),
    }
    _common.emit(report, args.json_out)
    if any("error" in r.get(f, {}) for r in rows for f in ("torch", "keras")):
        sys.exit(1)


if __name__ == "__main__":
    main()
