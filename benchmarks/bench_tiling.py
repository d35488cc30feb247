"""Memory and time of whole-image vs sliding-window inference, and of multi-scale inference.

Each configuration runs in its own subprocess so that its peak resident memory (``ru_maxrss``)
is its own; the whole-image run is the reference measured in the same invocation. Prints JSON.

Usage: ``python -m benchmarks.bench_tiling [--backbone mobilenetv2] [--height 1024]
[--width 2048] [--tile 513] [--scales 1 0.75 0.5]`` (Cityscapes size by default).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks._common import REPO


def worker(args):
    import resource

    import numpy as np

    from deeplab_tf.inference import MultiScaleInference, Predictor
    from deeplab_tf.models import DeepLabV2

    model = DeepLabV2(args.backbone, "aspp_l", num_classes=19)
    msc = MultiScaleInference(model, scales=tuple(args.scales) if args.mode == "msc" else (1.0,))
    tile = args.tile if args.mode == "tiled" else None
    predictor = Predictor(msc, tile_size=tile, overlap=1 / 3)
    image = np.random.default_rng(0).integers(0, 256, (args.height, args.width, 3), np.uint8)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    probs = predictor(image)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "mode": args.mode,
                "seconds": round(seconds, 2),
                "peak_rss_mb": round(peak / 1024, 1),
                "rss_growth_mb": round((peak - base) / 1024, 1),
                "output_shape": list(probs.shape),
            }
        )
    )


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--backbone", default="mobilenetv2")
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--tile", type=int, default=513)
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.75, 0.5])
    p.add_argument("--modes", nargs="+", default=["whole", "tiled", "msc"])
    p.add_argument("--mode", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        return worker(args)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    results = {}
    for mode in args.modes:
        cmd = [sys.executable, "-m", "benchmarks.bench_tiling", "--mode", mode,
               "--backbone", args.backbone, "--height", str(args.height),
               "--width", str(args.width), "--tile", str(args.tile),
               "--scales", *map(str, args.scales)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
        if out.returncode != 0:
            results[mode] = {"error": out.stderr.strip().splitlines()[-1:]}
            continue
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    report = {
        "backbone": args.backbone,
        "image": [args.height, args.width],
        "tile": args.tile,
        "scales": args.scales,
        "results": results,
    }
    whole = results.get("whole", {})
    for mode in ("tiled", "msc"):
        r = results.get(mode, {})
        if "seconds" in r and "seconds" in whole:
            r["time_vs_whole"] = round(r["seconds"] / whole["seconds"], 2)
            r["rss_growth_vs_whole"] = round(r["rss_growth_mb"] / max(whole["rss_growth_mb"], 1), 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
