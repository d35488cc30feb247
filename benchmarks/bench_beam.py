"""Images/s of MSC + CRF inference: single-process ``predict`` vs the DirectRunner (1, 2 workers).

Every configuration runs ``deeplab-tf predict`` as a user does (a subprocess, wall clock from
start to exit, so Beam's start-up and each worker's model load count), on the same N copies of
the 500x375 test photo (alternately mirrored) with scales 1, 0.75, 0.5 and the dense CRF. The
Beam runs also report per-image model and CRF milliseconds from the pipeline's metrics: the
per-worker cost from which a cluster's throughput is projected (docs/scale-out.md).

Needs apache_beam (the ``[beam]`` extra). ``python -m benchmarks.bench_beam --n 4``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks._common import PHOTO, REPO, machine_info


def _run(args) -> tuple[float, str]:
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "deeplab_tf", *args], env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"deeplab-tf {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="images (64 in the issue; 4 here)")
    parser.add_argument("--model", default="vgg16", choices=("vgg16", "resnet101"))
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args(argv)

    import keras
    import numpy as np
    from PIL import Image

    from deeplab_tf.models import DeepLabV2

    work = tempfile.mkdtemp(prefix="bench_beam_")
    try:
        head = "largefov" if args.model == "vgg16" else "aspp_l"
        keras.utils.set_random_seed(0)
        model = os.path.join(work, "model.keras")
        DeepLabV2(args.model, head, num_classes=21).save(model)
        photo = np.asarray(Image.open(PHOTO).convert("RGB"))
        os.makedirs(os.path.join(work, "in"))
        for i in range(args.n):
            img = photo[:, ::-1] if i % 2 else photo
            Image.fromarray(np.ascontiguousarray(img)).save(
                os.path.join(work, "in", f"{i:03d}.png")
            )
        common = ["--model", model, "--scales", "1", "0.75", "0.5", "--crf", "--no-progress"]
        rows = []
        configs = [("single-process predict", [])] + [
            (
                f"DirectRunner, {w} worker(s)",
                [
                    "--runner",
                    "DirectRunner",
                    "--",
                    f"--direct_num_workers={w}",
                    "--direct_running_mode=multi_processing",
                ],
            )  # fmt: skip
            for w in (1, 2)
        ]
        for name, extra in configs:
            out = os.path.join(work, f"out{len(rows)}")
            wall, stdout = _run(
                ["predict", os.path.join(work, "in"), "--out", out, *common, *extra]
            )
            row = {
                "config": name,
                "seconds": round(wall, 1),
                "images_per_s": round(args.n / wall, 4),
            }
            m = re.search(r"beam metrics: (.*)", stdout)
            if m:
                for k, v in re.findall(r"(\w+)=([\d.]+)", m.group(1)):
                    if k in ("crf_ms_mean", "model_ms_mean", "attempts"):
                        row[k] = float(v)
            rows.append(row)
        one, two = rows[1]["images_per_s"], rows[2]["images_per_s"]
        report = {
            "benchmark": "bench_beam",
            "images": args.n,
            "image_size": "500x375",
            "model": f"{args.model} {head}, 21 classes, scales 1 0.75 0.5 + dense CRF",
            "rows": rows,
            "speedup_2_vs_1_workers": round(two / one, 3),
            "scaling_efficiency_2_workers": round(two / one / 2, 3),
            "beam_1_worker_vs_single_process": round(one / rows[0]["images_per_s"], 3),
            "machine": machine_info(),
        }
        print(json.dumps(report, indent=2))
        if args.json:
            from deeplab_tf.atomic import write_json

            write_json(args.json, report)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
