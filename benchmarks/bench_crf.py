"""Dense CRF speed: the TF backend against pydensecrf, same photo, same run.

500x375 photo (tests/fixtures/coffee_500x375.jpg), 21 classes, 10 mean-field iterations,
ResNet-101 preset (docs/architecture.md). Prints JSON with the median wall time of each backend,
the ratio tf / pydensecrf (target <= 0.75) and the label agreement. The two backends run
interleaved so that they share the machine's load; the JSON also records each backend's
median process CPU time (their ratio is less sensitive to other users of a shared machine,
though TensorFlow's thread pools count some spinning) and the 1-minute load average before
and after.

With ``--litert`` it also exports the CRF alone as a builtin-ops ``.tflite`` at the photo's
size (what ``deeplab-tf export --crf`` writes for phones) and times it in LiteRT, interleaved
with the others, reporting its median, its ratio to the TF backend and its label agreement.

Usage:
    python -m benchmarks.bench_crf [--repeats 5] [--preset resnet101] [--impl sparse]
        [--iterations 10] [--litert]
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

PHOTO = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "coffee_500x375.jpg")


def coarse_probs(image, classes=21, block=8, confidence=0.15, seed=0):
    """Blocky colour-quantised label map at 1/8 resolution as soft probabilities."""
    rng = np.random.default_rng(seed)
    h, w, _ = image.shape
    small = image[block // 2 :: block, block // 2 :: block].astype(np.float32)
    proj = small @ rng.normal(size=(3,)).astype(np.float32)
    labels = np.digitize(proj, np.quantile(proj, np.linspace(0, 1, classes + 1)[1:-1]))
    labels = np.kron(labels, np.ones((block, block), int))[:h, :w]
    labels = np.pad(labels, ((0, h - labels.shape[0]), (0, w - labels.shape[1])), mode="edge")
    noise = rng.uniform(size=(h, w, classes)).astype(np.float32)
    probs = (1 - confidence) * noise / noise.sum(-1, keepdims=True)
    probs += confidence * np.eye(classes, dtype=np.float32)[labels]
    return (probs / probs.sum(-1, keepdims=True)).astype(np.float32)


def timed(fn):
    """Runs fn once; returns (wall seconds, process CPU seconds, output)."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - start, time.process_time() - cpu, out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--preset", default="resnet101")
    parser.add_argument("--impl", default="sparse", choices=["sparse", "builtin"])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--litert", action="store_true", help="also time the exported .tflite")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.iterations < 1:
        parser.error(
            f"--repeats and --iterations must be >= 1. Received: repeats={args.repeats}, "
            f"iterations={args.iterations}"
        )

    import tensorflow as tf

    from deeplab_tf.crf import DenseCRF

    image = np.array(Image.open(PHOTO).convert("RGB"))
    probs = coarse_probs(image)
    tf_crf = DenseCRF.from_preset(args.preset, impl=args.impl, iterations=args.iterations)
    ref_crf = DenseCRF.from_preset(args.preset, backend="pydensecrf", iterations=args.iterations)
    img_t, probs_t = tf.constant(image), tf.constant(probs)

    # Warm-up: traces the compiled graph and caches the positional kernel for this size (the
    # timed runs then build the bilateral lattice and run all iterations, as pydensecrf does).
    tf_crf(img_t, probs_t)
    ref_crf(image, probs)
    litert = None
    if args.litert:
        import tempfile

        from ai_edge_litert.interpreter import Interpreter

        from deeplab_tf.export.crf import export_crf_tflite

        h, w = image.shape[:2]
        with tempfile.TemporaryDirectory() as tmp:
            path = export_crf_tflite(tf_crf, os.path.join(tmp, f"crf_{h}x{w}.tflite"), (h, w),
                                     probs.shape[-1])  # fmt: skip
            runner = Interpreter(model_path=path).get_signature_runner()
        litert = lambda: runner(image=image[None], probs=probs[None])["labels"][0]  # noqa: E731
        litert()
    t_lite, out_lite = [], None
    load_before = os.getloadavg()[0]
    # Interleave to share the machine's load fairly between the two.
    t_tf, t_ref, c_tf, c_ref, out_tf, out_ref = [], [], [], [], None, None
    for _ in range(args.repeats):
        wall, cpu, out_tf = timed(lambda: tf_crf(img_t, probs_t).numpy())
        t_tf.append(wall)
        c_tf.append(cpu)
        wall, cpu, out_ref = timed(lambda: ref_crf(image, probs).numpy())
        t_ref.append(wall)
        c_ref.append(cpu)
        if litert is not None:
            wall, _, out_lite = timed(litert)
            t_lite.append(wall)
    med_tf, med_ref = statistics.median(t_tf), statistics.median(t_ref)
    cpu_tf, cpu_ref = statistics.median(c_tf), statistics.median(c_ref)
    result = {
        "image": f"{image.shape[1]}x{image.shape[0]}",
        "classes": probs.shape[-1],
        "iterations": tf_crf.iterations,
        "preset": args.preset,
        "impl": args.impl,
        "tf_s": round(med_tf, 4),
        "pydensecrf_s": round(med_ref, 4),
        "ratio_tf_over_pydensecrf": round(med_tf / med_ref, 3),
        "target_ratio": 0.75,
        "tf_runs_s": [round(t, 4) for t in t_tf],
        "pydensecrf_runs_s": [round(t, 4) for t in t_ref],
        "tf_cpu_s": round(cpu_tf, 4),
        "pydensecrf_cpu_s": round(cpu_ref, 4),
        "cpu_ratio_tf_over_pydensecrf": round(cpu_tf / cpu_ref, 3),
        "label_agreement": float(np.mean(out_tf.argmax(-1) == out_ref.argmax(-1))),
        "max_abs_dq": float(np.abs(out_tf - out_ref).max()),
        "cpu_count": os.cpu_count(),
        "load_avg_1min_before": round(load_before, 2),
        "load_avg_1min_after": round(os.getloadavg()[0], 2),
    }
    if litert is not None:
        med_lite = statistics.median(t_lite)
        result.update({
            "litert_s": round(med_lite, 4),
            "ratio_litert_over_tf": round(med_lite / med_tf, 3),
            "litert_runs_s": [round(t, 4) for t in t_lite],
            "litert_label_agreement_vs_tf": float(np.mean(out_lite == out_tf.argmax(-1))),
        })  # fmt: skip
    print(json.dumps(result, indent=2))
    print(
        f"TF backend {med_tf:.3f} s vs pydensecrf {med_ref:.3f} s: "
        f"ratio {med_tf / med_ref:.2f} (target <= 0.75)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
