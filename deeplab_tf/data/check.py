"""Dataset sanity check: counts, class histograms and every problem, without stopping early.

Used by ``deeplab-tf data check PATH --dataset NAME``. Every example is decoded exactly as
:func:`deeplab_tf.data.load_dataset` decodes it (same readers, same label mapping), so an
example that passes the check loads, and one that fails is reported with its file and reason:
missing files, corrupt images or masks, image/mask size mismatches, label values outside the
dataset's classes, masks without images, and (folders of ``.npy`` / multi-channel TIFF images)
images whose channel count or dtype differs from the split's or is not supported.
"""

from __future__ import annotations

import concurrent.futures

import numpy as np

from deeplab_tf.data.catalog import DATASETS
from deeplab_tf.data.readers import DatasetError, decode_example

#: Splits checked by default.
DEFAULT_SPLITS = {n: d["check_splits"] for n, d in DATASETS.items() if d["lister"]}


def _check_one(example, label_map, rgb_palette, num_classes, image_format=None):
    try:
        image, label = decode_example(example, label_map, rgb_palette, image_format)
    except DatasetError as err:
        problem = err.as_problem()
        problem["id"] = problem["id"] or example.id
        return None, problem
    except Exception as err:  # noqa: BLE001 - a check reports, it never crashes
        return None, {
            "id": example.id,
            "path": example.label_path or example.image_path,
            "kind": "error",
            "error": f"{type(err).__name__}: {err}",
        }
    counts = np.bincount(label.ravel(), minlength=256)
    return {
        "pixels": counts[:num_classes],
        "present": counts[:num_classes] > 0,
        "ignore": int(counts[label_map.ignore_label]),
        "size": image.shape[:2],
    }, None


def check_split(listing, limit: int | None = None, workers: int = 2) -> dict:
    """Decodes every example of a listing and summarises it.

    Args:
        listing: a DatasetListing (from :func:`deeplab_tf.data.catalog.list_dataset`).
        limit: check only the first ``limit`` examples (None = all).
        workers: decoding threads.

    Returns:
        dict with ``num_listed``, ``num_checked``, ``num_ok``, ``class_pixels`` (class name ->
        pixels), ``class_images`` (class name -> images containing it), ``ignore_pixels``,
        ``min_size``/``max_size`` ``[H, W]``, ``problems`` and ``warnings`` (lists of
        ``{"id", "path", "kind", "error"}``).
    """
    info = listing.info
    c = info.num_classes
    examples = listing.examples if limit is None else listing.examples[: max(0, int(limit))]
    pixels = np.zeros((c,), np.int64)
    images = np.zeros((c,), np.int64)
    ignore = 0
    sizes = []
    problems = list(listing.problems)
    with concurrent.futures.ThreadPoolExecutor(max(1, int(workers))) as pool:
        fmt = info.image_format
        expect = None if fmt.path is None else fmt  # None: RGB files, as the loader does
        results = pool.map(
            lambda ex: _check_one(ex, listing.label_map, listing.rgb_palette, c, expect), examples
        )
        for stats, problem in results:
            if problem is not None:
                problems.append(problem)
                continue
            pixels += stats["pixels"]
            images += stats["present"]
            ignore += stats["ignore"]
            sizes.append(stats["size"])
    sizes = np.asarray(sizes, np.int64).reshape(-1, 2)
    return {
        "num_listed": len(listing.examples) + len(listing.problems),
        "num_checked": len(examples),
        "num_ok": int(len(sizes)),
        "class_pixels": {n: int(v) for n, v in zip(info.class_names, pixels)},
        "class_images": {n: int(v) for n, v in zip(info.class_names, images)},
        "ignore_pixels": int(ignore),
        "min_size": sizes.min(0).tolist() if len(sizes) else None,
        "max_size": sizes.max(0).tolist() if len(sizes) else None,
        "image_format": {
            "channels": info.image_format.channels,
            "dtype": info.image_format.dtype,
            "stored_dtype": info.image_format.stored_dtype,
            "from": info.image_format.path,
        },
        "problems": problems,
        "warnings": list(listing.warnings),
    }


def check_dataset(
    name: str,
    root,
    splits=None,
    limit: int | None = None,
    workers: int = 2,
    **kwargs,
) -> dict:
    """Checks every requested split of a dataset; a split that cannot be listed is a problem.

    Args:
        name: dataset name (see :func:`deeplab_tf.data.list_datasets`; not ``synthetic``).
        root: dataset folder.
        splits: split names (default: the dataset's standard splits, ``DEFAULT_SPLITS``).
        limit: check at most this many examples per split.
        workers: decoding threads.
        **kwargs: dataset options, as for ``load_dataset``.

    Returns:
        ``{"dataset", "root", "splits": {split: report}, "num_problems"}``; a split whose
        listing failed holds ``{"error": message}`` and counts as one problem, and so does a
        split with no examples (kind ``"empty"``).
    """
    from deeplab_tf.data.catalog import list_dataset

    if name not in DEFAULT_SPLITS:
        raise ValueError(
            f"dataset must be one of {sorted(DEFAULT_SPLITS)}. Received: dataset={name!r}"
        )
    splits = list(splits or DEFAULT_SPLITS[name])
    report = {"dataset": name, "root": str(root), "splits": {}, "num_problems": 0}
    for split in splits:
        try:
            listing = list_dataset(name, split, root, **kwargs)
        except DatasetError as err:
            report["splits"][split] = {"error": str(err)}
            report["num_problems"] += 1
            continue
        result = check_split(listing, limit=limit, workers=workers)
        if not result["num_listed"]:  # an empty split cannot train or evaluate anything
            result["problems"].append(
                {
                    "id": None,
                    "path": str(root),
                    "kind": "empty",
                    "error": f"split {split!r} of {name} has no examples under {str(root)!r} "
                    "(expected at least one image with its label: check the folder layout, "
                    "the split name and the list file)",
                }
            )
        report["splits"][split] = result
        report["num_problems"] += len(result["problems"])
    return report


def format_report(report: dict, max_problems: int = 20) -> str:
    """Human-readable text for a :func:`check_dataset` report."""
    lines = [f"dataset {report['dataset']} at {report['root']}"]
    for split, r in report["splits"].items():
        if "error" in r:
            lines.append(f"[{split}] cannot list: {r['error']}")
            continue
        lines.append(
            f"[{split}] {r['num_listed']} listed, {r['num_checked']} checked, {r['num_ok']} ok, "
            f"{len(r['problems'])} problem(s); sizes {r['min_size']} .. {r['max_size']} (HxW)"
        )
        fmt = r.get("image_format")
        if fmt and fmt["from"]:
            stored = (
                "" if fmt["stored_dtype"] == fmt["dtype"] else f" (stored {fmt['stored_dtype']})"
            )
            lines.append(
                f"  images: {fmt['channels']} channel(s), {fmt['dtype']}{stored}, as {fmt['from']}"
            )
        total = sum(r["class_pixels"].values()) + r["ignore_pixels"]
        lines.append(f"  {'class':20s} {'images':>8s} {'pixels':>14s} {'share':>7s}")
        for name, px in r["class_pixels"].items():
            share = 100.0 * px / total if total else 0.0
            lines.append(f"  {name:20s} {r['class_images'][name]:8d} {px:14d} {share:6.2f}%")
        share = 100.0 * r["ignore_pixels"] / total if total else 0.0
        lines.append(f"  {'(ignore)':20s} {'':8s} {r['ignore_pixels']:14d} {share:6.2f}%")
        for p in r["problems"][:max_problems]:
            lines.append(f"  PROBLEM [{p['kind']}] {p['error']}")
        if len(r["problems"]) > max_problems:
            lines.append(f"  ... and {len(r['problems']) - max_problems} more problem(s)")
        for w in r["warnings"][:max_problems]:
            lines.append(f"  WARNING [{w['kind']}] {w['error']}")
    lines.append(f"{report['num_problems']} problem(s) in total")
    return "\n".join(lines)
