"""Grid search of the dense CRF's appearance kernel (w1, s_a, s_b) on a validation subset.

The DeepLab release chose ``bi_w``, ``bi_xy_std`` and ``bi_rgb_std`` by a grid search on a
subset of VOC val, keeping ``pos_w`` and ``pos_xy_std`` fixed (paper Sec. 4.1.1). The core,
:func:`grid_search`, takes any iterable of ``(image, probs, label)`` samples, so it does not
depend on how the data or the probabilities were produced.

Example:
    >>> result = grid_search(samples, num_classes=21, bi_w=[3, 4, 5], bi_xy_std=[50, 67],
    ...                      bi_rgb_std=[3, 5])
    >>> result["best"]
    {'bi_w': 4.0, 'bi_xy_std': 67.0, 'bi_rgb_std': 3.0, 'miou': ...}
"""

from __future__ import annotations

import itertools

import numpy as np

from deeplab_tf.crf.densecrf import DenseCRF
from deeplab_tf.evaluation.metrics import confusion_matrix
from deeplab_tf.evaluation.metrics import mean_iou as _mean_iou


def confusion(pred, label, num_classes: int, ignore_label: int = 255) -> np.ndarray:
    """Confusion matrix (rows: ground truth, columns: prediction) over valid pixels: labels
    that are ``ignore_label`` or outside ``0..C-1`` are skipped
    (:func:`deeplab_tf.evaluation.metrics.confusion_matrix` with ``strict=False``).

    Args:
        pred: int (H, W) predicted labels.
        label: int (H, W) ground truth, ``ignore_label`` pixels skipped.
        num_classes: number of classes C.
        ignore_label: label value to skip.

    Returns:
        int64 (C, C) matrix.
    """
    return confusion_matrix(label, pred, num_classes, ignore_label, strict=False)


def mean_iou(conf: np.ndarray) -> float:
    """Mean intersection over union (in %) over classes present in prediction or truth
    (:func:`deeplab_tf.evaluation.metrics.mean_iou` times 100)."""
    return 100.0 * _mean_iou(conf)


def _as_list(name, values):
    values = [float(v) for v in np.atleast_1d(values)]
    if not values:
        raise ValueError(f"{name} needs at least one value. Received: {name}={values}")
    return values


def grid_search(
    samples,
    num_classes: int,
    bi_w=(3.0, 4.0, 5.0),
    bi_xy_std=(49.0, 67.0, 80.0),
    bi_rgb_std=(3.0, 4.0, 5.0),
    preset: str = "resnet101",
    ignore_label: int = 255,
    progress=None,
    **crf_kwargs,
) -> dict:
    """Evaluates the CRF on every (bi_w, bi_xy_std, bi_rgb_std) combination.

    Args:
        samples: iterable of ``(image uint8 (H, W, 3), probs float (H, W, C), label (H, W))``.
            It is materialised once (keep the subset small: the release used 100 images).
        num_classes: number of classes C.
        bi_w: candidate appearance weights w1.
        bi_xy_std: candidate appearance position standard deviations s_a.
        bi_rgb_std: candidate appearance colour standard deviations s_b.
        preset: :meth:`DenseCRF.from_preset` name giving the fixed parameters
            (iterations, pos_w, pos_xy_std).
        ignore_label: label value excluded from the scores.
        progress: optional callable ``progress(done, total, setting_dict)``.
        **crf_kwargs: other :class:`DenseCRF` arguments (e.g. ``normalization``).

    Returns:
        ``{"num_images", "baseline_miou", "settings": [{"bi_w", "bi_xy_std", "bi_rgb_std",
        "miou"}...], "best": {...}}`` with mIoU in %.

    Raises:
        ValueError: for no samples, empty grids or mismatched sample shapes.
    """
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1. Received: num_classes={num_classes!r}")
    grid = list(
        itertools.product(
            _as_list("bi_w", bi_w), _as_list("bi_xy_std", bi_xy_std),
            _as_list("bi_rgb_std", bi_rgb_std),
        )
    )  # fmt: skip
    data = []
    for k, sample in enumerate(samples):
        image, probs, label = (np.asarray(x) for x in sample)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"sample {k}: image must be (H, W, 3). Received: {image.shape}")
        if probs.shape != image.shape[:2] + (num_classes,):
            raise ValueError(
                f"sample {k}: probs must be (H, W, num_classes={num_classes}) matching the "
                f"image. Received: image {image.shape}, probs {probs.shape}"
            )
        if label.shape != image.shape[:2]:
            raise ValueError(
                f"sample {k}: label must be (H, W) like the image. "
                f"Received: image {image.shape}, label {label.shape}"
            )
        data.append((image.astype(np.uint8), probs.astype(np.float32), label))
    if not data:
        raise ValueError("grid_search needs at least one sample. Received: 0 samples")

    base = np.zeros((num_classes, num_classes), np.int64)
    for _, probs, label in data:
        base += confusion(probs.argmax(-1), label, num_classes, ignore_label)
    settings = []
    for done, (w, xy, rgb) in enumerate(grid):
        crf = DenseCRF.from_preset(preset, bi_w=w, bi_xy_std=xy, bi_rgb_std=rgb, **crf_kwargs)
        conf = np.zeros((num_classes, num_classes), np.int64)
        for image, probs, label in data:
            pred = crf.labels(image, probs).numpy()
            conf += confusion(pred, label, num_classes, ignore_label)
        entry = {"bi_w": w, "bi_xy_std": xy, "bi_rgb_std": rgb, "miou": mean_iou(conf)}
        settings.append(entry)
        if progress is not None:
            progress(done + 1, len(grid), entry)
    best = max(settings, key=lambda s: (s["miou"], -s["bi_w"]))
    return {
        "num_images": len(data),
        "baseline_miou": mean_iou(base),
        "settings": settings,
        "best": dict(best),
    }


def format_table(result: dict) -> str:
    """A plain-text table of :func:`grid_search`'s result, best setting marked with ``*``."""
    lines = [f"{'bi_w':>6s} {'bi_xy_std':>10s} {'bi_rgb_std':>11s} {'mIoU':>8s}"]
    best = result["best"]
    for s in result["settings"]:
        mark = " *" if all(s[k] == best[k] for k in ("bi_w", "bi_xy_std", "bi_rgb_std")) else ""
        lines.append(
            f"{s['bi_w']:6g} {s['bi_xy_std']:10g} {s['bi_rgb_std']:11g} {s['miou']:8.2f}{mark}"
        )
    lines.append(f"no CRF: {result['baseline_miou']:.2f} mIoU on {result['num_images']} images")
    return "\n".join(lines)
