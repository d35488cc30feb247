"""Times the PyTorch reference (``torch_deeplab``) in its own process, without TensorFlow.

Run by the benchmarks, not by hand. A separate process keeps TensorFlow's and PyTorch's thread
pools from competing for the same cores (in one process their spinning threads slow each other
down) and gives each framework its own peak RSS.

Modes::

    _torch_worker.py infer --weights W.npz --images X.npy --repeats R --out OUT.npz
    _torch_worker.py train --depth 101 --size 321 --micro-batch 5 --accumulation 2 [--msc]
        [--precision fp32|bf16|fp16]   (bf16/fp16: torch.autocast on CPU; fp16 with GradScaler)
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("infer", "train"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--depth", type=int, default=101)
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--weights", help="npz written by torch_deeplab.save_npz (infer)")
    p.add_argument("--images", help="uint8 (N, H, W, 3) .npy (infer)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", help="infer: .npz for the logits")
    p.add_argument("--size", type=int, default=321)
    p.add_argument("--micro-batch", type=int, default=5)
    p.add_argument("--accumulation", type=int, default=2)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--msc", action="store_true")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from benchmarks import _common
    from benchmarks import torch_deeplab as td

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    result = {"torch": torch.__version__, "threads": threads}
    model = td.DeepLabV2ResNet(args.depth, args.num_classes)
    if args.mode == "infer":
        td.load_arrays(model, td.read_npz(args.weights))
        model.eval()
        images = np.load(args.images)
        x = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32))
        result["conv_limit"] = _common.torch_conv_throughput(torch)
        with torch.inference_mode():
            start = time.perf_counter()
            logits = model(x).numpy().transpose(0, 2, 3, 1)
            first = time.perf_counter() - start
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - start)
        np.save(args.out, logits)
        result.update({"times_s": times, "first_call_s": first})
    else:
        model.train().freeze_batchnorm()
        optimizer = td.sgd(model)
        rng = np.random.default_rng(0)
        batches = []
        for _ in range(args.accumulation):
            images = rng.integers(0, 256, (args.micro_batch, 3, args.size, args.size))
            labels = rng.integers(0, args.num_classes, (args.micro_batch, args.size, args.size))
            batches.append((torch.from_numpy(images.astype(np.float32)), torch.from_numpy(labels)))
        autocast = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
        scaler = torch.amp.GradScaler("cpu") if args.precision == "fp16" else None
        step = {"msc": args.msc, "autocast": autocast, "scaler": scaler}
        start = time.perf_counter()
        td.train_step(model, optimizer, batches[:1], **step)  # warm-up micro-batch
        first = time.perf_counter() - start
        times, losses = [], []
        for _ in range(args.steps):
            start = time.perf_counter()
            losses.append(td.train_step(model, optimizer, batches, **step))
            times.append(time.perf_counter() - start)
        result["precision"] = args.precision
        result.update({"times_s": times, "first_call_s": first, "losses": losses})
    result["peak_rss_mb"] = _common.peak_rss_mb()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
