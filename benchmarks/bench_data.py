"""Decoding throughput of ``load_dataset`` on a generated VOC-sized tree; prints JSON.

Compares, in the same run and on the same files (500x375 JPEGs + palette PNGs, VOC's size):

- ``files``: ``load_dataset("voc2012")``: Pillow decoding inside ``tf.numpy_function``, with
  label validation (the default path, nothing prepared);
- ``tf_native_images_only``: reference lower bound, ``tf.io.decode_jpeg`` on the images alone
  (TensorFlow cannot read palette PNGs as indices, so it has no labels);
- ``tfds``: the ``deeplab_voc2012`` builder's records after a one-off preparation (timed apart).

Usage: ``python -m benchmarks.bench_data [--num-images 64] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np


def build_tree(root, n, rng):
    from tests import _data_utils as u

    ids = [f"2007_{i:06d}" for i in range(n)]
    voc = os.path.join(root, "VOCdevkit", "VOC2012")
    from deeplab_tf.data.palettes import voc_palette

    for i in ids:
        image = rng.integers(0, 256, size=(375, 500, 3), dtype=np.uint8)
        image = (image // 64 * 64).astype(np.uint8)
        u.write_jpeg(os.path.join(voc, "JPEGImages", f"{i}.jpg"), image)
        label = np.zeros((375, 500), np.uint8)
        label[100:250, 150:350] = rng.integers(1, 21)
        label[98:100, 150:350] = 255
        u.write_png(os.path.join(voc, "SegmentationClass", f"{i}.png"), label, voc_palette())
    sets = os.path.join(voc, "ImageSets", "Segmentation")
    u.write_lines(os.path.join(sets, "train.txt"), ids)
    u.write_lines(os.path.join(sets, "val.txt"), ids[:1])
    u.write_lines(os.path.join(sets, "trainval.txt"), ids)
    return voc, ids


def rate(make_ds, n, repeats):
    best = 0.0
    for _ in range(repeats):
        ds = make_ds()
        t0 = time.perf_counter()
        count = sum(1 for _ in ds)
        dt = time.perf_counter() - t0
        if count != n:
            raise RuntimeError(f"expected {n} elements, got {count}")
        best = max(best, n / dt)
    return best


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import tensorflow as tf

    from deeplab_tf.data import load_dataset

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "manual")
        voc, ids = build_tree(root, args.num_images, rng)
        n = len(ids)
        files = rate(lambda: load_dataset("voc2012", "train", root=root)[0], n, args.repeats)
        paths = [os.path.join(voc, "JPEGImages", f"{i}.jpg") for i in ids]

        def tf_native():
            ds = tf.data.Dataset.from_tensor_slices(paths)
            return ds.map(
                lambda p: tf.io.decode_jpeg(tf.io.read_file(p), dct_method="INTEGER_ACCURATE"),
                num_parallel_calls=tf.data.AUTOTUNE,
            )

        native = rate(tf_native, n, args.repeats)
        t0 = time.perf_counter()
        load_dataset("voc2012", "train", root=root, source="tfds", data_dir=os.path.join(tmp, "t"))
        prepare_s = time.perf_counter() - t0
        tfds_rate = rate(
            lambda: load_dataset(
                "voc2012", "train", root=root, source="tfds", data_dir=os.path.join(tmp, "t")
            )[0],
            n,
            args.repeats,
        )
    print(
        json.dumps(
            {
                "benchmark": "voc2012 decoding throughput (500x375 JPEG + palette PNG)",
                "num_images": n,
                "cpu_count": os.cpu_count(),
                "files_images_per_s": round(files, 1),
                "tfds_images_per_s": round(tfds_rate, 1),
                "tfds_prepare_s": round(prepare_s, 2),
                "reference_tf_native_jpeg_only_images_per_s": round(native, 1),
                "files_vs_reference": round(files / native, 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
