"""Streaming confusion matrix and the segmentation scores computed from it.

The scores are the columns the PyTorch port reports (docs/architecture.md): pixel accuracy, mean
(class) accuracy, mean IoU, frequency-weighted IoU and per-class IoU. Pixels whose ground truth
is the ignore label (255 for VOC boundaries and padding) are left out. A class that occurs in
neither the ground truth nor the prediction has no IoU (``nan``) and is excluded from the mean;
a class that is predicted but absent from the ground truth has IoU 0 and counts.
"""

from __future__ import annotations

import numpy as np

from deeplab_tf.data.palettes import IGNORE_LABEL


def _as_numpy(x):
    if hasattr(x, "numpy"):
        x = x.numpy()
    return np.asarray(x)


class ConfusionMatrix:
    """Accumulates a ``(C, C)`` confusion matrix (rows: ground truth, columns: prediction).

    Args:
        num_classes: number of classes C.
        ignore_label: ground-truth value to skip (255).

    Example:
        >>> cm = ConfusionMatrix(21)
        >>> cm.update(labels, predictions)     # any matching shapes, any number of times
        >>> cm.result()["mean_iou"]
    """

    def __init__(self, num_classes: int, ignore_label: int = IGNORE_LABEL):
        if not isinstance(num_classes, int | np.integer) or num_classes < 1:
            raise ValueError(
                f"num_classes must be a positive int. Received: num_classes={num_classes!r}"
            )
        self.num_classes = int(num_classes)
        self.ignore_label = None if ignore_label is None else int(ignore_label)
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def reset(self):
        """Clears the counts."""
        self.matrix[...] = 0

    def update(self, labels, predictions):
        """Adds a batch (or one image) of ground truth and predicted class ids.

        Args:
            labels: integer array of ground-truth ids ``0..C-1`` or the ignore label.
            predictions: integer array of predicted ids ``0..C-1``, the same shape.

        Returns:
            The ``(C, C)`` confusion matrix of this batch alone.

        Raises:
            ValueError: on shape mismatch or ids outside the valid range.
        """
        batch = confusion_matrix(labels, predictions, self.num_classes, self.ignore_label)
        self.matrix += batch
        return batch

    def merge(self, other: ConfusionMatrix):
        """Adds another matrix's counts (e.g. from a parallel worker)."""
        if other.num_classes != self.num_classes:
            raise ValueError(
                f"Cannot merge a {other.num_classes}-class matrix into a {self.num_classes}-class "
                "one."
            )
        self.matrix += other.matrix

    def result(self) -> dict:
        """The scores of everything accumulated so far (see :func:`scores_from_confusion`)."""
        return scores_from_confusion(self.matrix)


def confusion_matrix(
    labels, predictions, num_classes: int, ignore_label=IGNORE_LABEL, strict: bool = True
) -> np.ndarray:
    """The ``(C, C)`` int64 confusion matrix (rows: ground truth, columns: prediction) of one
    batch or image: the one counting rule of every mIoU in the package.

    Args:
        labels: integer array of ground-truth ids ``0..C-1`` or the ignore label.
        predictions: integer array of predicted ids ``0..C-1``, the same shape.
        num_classes: C.
        ignore_label: ground-truth value to skip (None: none).
        strict: refuse non-integer arrays and labels outside ``0..C-1`` (other than the ignore
            label); ``False`` skips such labels like the ignore label (the CRF grid search).

    Raises:
        ValueError: on shape mismatch, predictions outside the valid range, or (``strict``)
            non-integer arrays or labels outside the valid range.
    """
    labels = _as_numpy(labels)
    predictions = _as_numpy(predictions)
    if labels.shape != predictions.shape:
        raise ValueError(
            "labels and predictions must have the same shape. Received: "
            f"labels {labels.shape}, predictions {predictions.shape}"
        )
    if strict:
        for name, a in (("labels", labels), ("predictions", predictions)):
            if not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
                raise ValueError(f"{name} must hold integer class ids. Received dtype {a.dtype}")
    labels = labels.reshape(-1).astype(np.int64)
    predictions = predictions.reshape(-1).astype(np.int64)
    c = int(num_classes)
    keep = None if ignore_label is None else labels != ignore_label
    if not strict:
        in_range = (labels >= 0) & (labels < c)
        keep = in_range if keep is None else keep & in_range
    if keep is not None:
        labels, predictions = labels[keep], predictions[keep]
    if labels.size:
        if labels.min() < 0 or labels.max() >= c:
            raise ValueError(
                f"labels must be class ids in [0, {c - 1}] or {ignore_label} (ignore). "
                f"Received values in [{labels.min()}, {labels.max()}]"
            )
        if predictions.min() < 0 or predictions.max() >= c:
            raise ValueError(
                f"predictions must be class ids in [0, {c - 1}]. "
                f"Received values in [{predictions.min()}, {predictions.max()}]"
            )
    return np.bincount(labels * c + predictions, minlength=c * c).reshape(c, c)


def intersection_and_union(matrix, ops=np):
    """Per-class intersection (the diagonal) and union (ground truth + predicted - intersection)
    of a confusion matrix: the one definition of IoU's terms.

    Args:
        matrix: ``(C, C)`` counts, rows ground truth.
        ops: ``numpy`` or ``keras.ops`` (the Keras ``MeanIoU`` metric computes in-graph).
    """
    inter = ops.diagonal(matrix)
    union = ops.sum(matrix, axis=1) + ops.sum(matrix, axis=0) - inter
    return inter, union


def mean_iou(matrix) -> float:
    """Mean IoU (a fraction) of a confusion matrix over the classes in ground truth or
    prediction; ``nan`` when nothing was counted (:func:`scores_from_confusion`)."""
    return scores_from_confusion(matrix)["mean_iou"]


def scores_from_confusion(matrix) -> dict:
    """Segmentation scores from a ``(C, C)`` confusion matrix (rows ground truth).

    Args:
        matrix: square integer matrix of pixel counts.

    Returns:
        A dict with ``pixel_accuracy``, ``mean_accuracy``, ``mean_iou``,
        ``frequency_weighted_iou`` (floats, ``nan`` when nothing was counted),
        ``per_class_iou`` and ``per_class_accuracy`` (lists with ``nan`` for classes without
        a defined value), ``valid_classes`` (ids counted in the mean IoU) and ``pixels``.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"matrix must be square (C, C). Received shape {m.shape}")
    tp, union = intersection_and_union(m)
    gt = m.sum(axis=1)
    total = m.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)
        acc = np.where(gt > 0, tp / np.where(gt > 0, gt, 1), np.nan)
    valid = union > 0
    freq = gt / total if total > 0 else np.zeros_like(gt)
    nanmean = lambda a: float(np.mean(a[~np.isnan(a)])) if np.any(~np.isnan(a)) else float("nan")
    return {
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
        "mean_accuracy": nanmean(acc),
        "mean_iou": nanmean(iou),
        "frequency_weighted_iou": float(np.sum(freq[gt > 0] * iou[gt > 0]))
        if total > 0
        else float("nan"),
        "per_class_iou": [float(v) for v in iou],
        "per_class_accuracy": [float(v) for v in acc],
        "valid_classes": [int(i) for i in np.flatnonzero(valid)],
        "pixels": int(total),
    }


def format_table(scores: dict, class_names=None) -> str:
    """A plain-text table of per-class IoU / accuracy followed by the summary scores.

    Args:
        scores: the dict from :func:`scores_from_confusion`.
        class_names: optional names, one per class.

    Returns:
        The table as a string (percentages, ``-`` for undefined values).
    """
    ious = scores["per_class_iou"]
    accs = scores["per_class_accuracy"]
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(ious))]
    if len(names) != len(ious):
        raise ValueError(
            f"class_names has {len(names)} entries for {len(ious)} classes. Received: {names!r}"
        )
    fmt = lambda v: "     -" if v != v else f"{100 * v:6.2f}"
    width = max(13, max(len(n) for n in names))  # 13 + 5 fits "freq. weighted IoU"
    lines = [f"{'id':>3s}  {'class':<{width}s}  {'IoU':>6s}  {'acc':>6s}"]
    for i, (name, iou, acc) in enumerate(zip(names, ious, accs)):
        lines.append(f"{i:3d}  {name:<{width}s}  {fmt(iou)}  {fmt(acc)}")
    lines.append("-" * len(lines[0]))
    summary = (
        ("mean_iou", "mean IoU"),
        ("pixel_accuracy", "pixel accuracy"),
        ("mean_accuracy", "mean accuracy"),
        ("frequency_weighted_iou", "freq. weighted IoU"),
    )
    for key, label in summary:
        lines.append(f"{label:<{width + 5}s}  {fmt(scores[key])}")
    return "\n".join(lines)
