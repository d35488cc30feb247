"""Dense CRF speed: the TF backend against pydensecrf, same photo, same run.

500x375 photo (tests/fixtures/coffee_500x375.jpg), 21 classes, 10 mean-field iterations,
ResNet-101 preset (SPEC section 6). Prints JSON with the median wall time of each backend,
the ratio tf / pydensecrf (target <= 0.75) and the label agreement.

Usage:
    python benchmarks/bench_crf.py [--repeats 5] [--preset resnet101] [--impl sparse]
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


def timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--preset", default="resnet101")
    parser.add_argument("--impl", default="sparse", choices=["sparse", "builtin"])
    args = parser.parse_args(argv)

    import tensorflow as tf

    from deeplab_tf.crf import DenseCRF

    image = np.array(Image.open(PHOTO).convert("RGB"))
    probs = coarse_probs(image)
    tf_crf = DenseCRF.from_preset(args.preset, impl=args.impl)
    ref_crf = DenseCRF.from_preset(args.preset, backend="pydensecrf")
    img_t, probs_t = tf.constant(image), tf.constant(probs)

    tf_crf(img_t, probs_t)  # warm-up (op kernels, cached positional lattice)
    ref_crf(image, probs)
    # Interleave to share the machine's load fairly between the two.
    t_tf, t_ref, out_tf, out_ref = [], [], None, None
    for _ in range(args.repeats):
        _, tt, out_tf = timed(lambda: tf_crf(img_t, probs_t).numpy(), 1)
        _, tr, out_ref = timed(lambda: ref_crf(image, probs).numpy(), 1)
        t_tf += tt
        t_ref += tr
    med_tf, med_ref = statistics.median(t_tf), statistics.median(t_ref)
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
        "label_agreement": float(np.mean(out_tf.argmax(-1) == out_ref.argmax(-1))),
        "max_abs_dq": float(np.abs(out_tf - out_ref).max()),
        "cpu_count": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0],
    }
    print(json.dumps(result, indent=2))
    print(
        f"TF backend {med_tf:.3f} s vs pydensecrf {med_ref:.3f} s: "
        f"ratio {med_tf / med_ref:.2f} (target <= 0.75)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
