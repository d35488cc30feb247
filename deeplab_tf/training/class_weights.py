"""Per-class loss weights from the training split's label histogram (for rare classes).

The histogram counts the pixels of each class over a split's label maps, leaving out the
ignore label; three rules turn it into weights for :class:`~deeplab_tf.training.losses.
DeepLabLoss`:

- ``"inverse_frequency"``: ``w_c = P / (K * n_c)`` with ``n_c`` the pixels of class ``c``,
  ``P`` all counted pixels and ``K`` the number of classes present (scikit-learn's
  ``compute_class_weight("balanced")``): every present class then carries the same total weight.
- ``"inverse_sqrt_frequency"``: the square root of those, ``w_c = sqrt(P / (K * n_c))``, a
  milder re-balancing.
- ``"median_frequency"``: median-frequency balancing (Eigen & Fergus, ICCV 2015, Sec. 4.1;
  SegNet): ``w_c = median(f) / f_c`` with ``f_c = n_c / P_c`` and ``P_c`` the counted pixels of
  the images in which class ``c`` appears; the median is over the present classes.

A class absent from the histogram has no frequency; ``absent`` says what it gets: ``"error"``
(the default: a ``ValueError`` naming the classes), ``"zero"`` (weight 0: its pixels would not
count) or ``"max"`` (the largest weight of the present classes).
"""

from __future__ import annotations

import dataclasses

import numpy as np

#: The rules of :func:`class_weights_from_histogram`.
WEIGHTING_METHODS = ("inverse_frequency", "inverse_sqrt_frequency", "median_frequency")
#: What an absent class gets (see the module docstring).
ABSENT_RULES = ("error", "zero", "max")


@dataclasses.dataclass(frozen=True)
class LabelHistogram:
    """Pixel counts of a split's labels, the ignore label excluded.

    Attributes:
        pixels: ``(C,)`` int64, pixels of each class.
        image_pixels: ``(C,)`` int64, counted pixels of the images in which each class appears
            (the denominator of median-frequency balancing).
        images: ``(C,)`` int64, images in which each class appears.
        num_examples: label maps counted.
        ignored: pixels with the ignore label.
    """

    pixels: np.ndarray
    image_pixels: np.ndarray
    images: np.ndarray
    num_examples: int = 0
    ignored: int = 0

    @property
    def num_classes(self) -> int:
        return int(len(self.pixels))


def histogram_from_labels(labels, num_classes: int, ignore_label: int = 255) -> LabelHistogram:
    """The :class:`LabelHistogram` of an iterable of label maps.

    Args:
        labels: iterable of integer arrays (any shape), class ids ``0..num_classes-1`` and the
            ignore label.
        num_classes: C.
        ignore_label: the value left out (255).

    Returns:
        A :class:`LabelHistogram`.

    Raises:
        ValueError: ``num_classes`` is not a positive int, or a label map holds a value that is
            neither a class id nor the ignore label (naming the map's position and the values).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            f"num_classes must be a positive int. Received: num_classes={num_classes!r}"
        )
    pixels = np.zeros((num_classes,), np.int64)
    image_pixels = np.zeros((num_classes,), np.int64)
    images = np.zeros((num_classes,), np.int64)
    n = ignored = 0
    for i, label in enumerate(labels):
        label = np.asarray(label).ravel()
        if label.size and (label.min() < 0):
            raise ValueError(f"Label map {i} has negative values. Received: min={int(label.min())}")
        counts = np.bincount(label.astype(np.int64), minlength=max(num_classes, ignore_label + 1))
        bad = [int(v) for v in np.flatnonzero(counts) if v >= num_classes and v != ignore_label]
        if bad:
            raise ValueError(
                f"Label map {i} has values {bad} but num_classes={num_classes} (valid: 0.."
                f"{num_classes - 1} and {ignore_label} = ignore)."
            )
        own = counts[:num_classes]
        pixels += own
        present = own > 0
        images += present
        image_pixels += np.where(present, own.sum(), 0)
        ignored += int(counts[ignore_label])
        n += 1
    return LabelHistogram(pixels, image_pixels, images, n, ignored)


def label_histogram(
    dataset, num_classes: int, ignore_label: int = 255, max_examples: int | None = None
) -> LabelHistogram:
    """The :class:`LabelHistogram` of a dataset's labels.

    Args:
        dataset: a ``tf.data.Dataset`` of the shared contract (``{"image", "label", "id"}``, as
            :func:`deeplab_tf.data.load_dataset` returns it), or any iterable of label maps.
        num_classes: C.
        ignore_label: the value left out (255).
        max_examples: count only the first this many examples (``None``: all).

    Returns:
        A :class:`LabelHistogram`.

    Raises:
        ValueError: see :func:`histogram_from_labels`; also an empty dataset.
    """
    if max_examples is not None and (
        isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1
    ):
        raise ValueError(
            f"max_examples must be a positive int or None. Received: max_examples={max_examples!r}"
        )
    try:
        import tensorflow as tf
    except ImportError:  # pragma: no cover - tensorflow is a dependency
        tf = None
    if tf is not None and isinstance(dataset, tf.data.Dataset):
        ds = dataset if max_examples is None else dataset.take(max_examples)
        labels = (
            x.numpy() for x in ds.map(lambda e: e["label"], num_parallel_calls=tf.data.AUTOTUNE)
        )
    else:
        import itertools

        labels = dataset if max_examples is None else itertools.islice(dataset, max_examples)
    hist = histogram_from_labels(labels, num_classes, ignore_label)
    if not hist.num_examples:
        raise ValueError("Cannot compute class weights from an empty dataset. Received 0 examples.")
    return hist


def class_weights_from_histogram(
    histogram: LabelHistogram, method: str, absent: str = "error", class_names=None
) -> list[float]:
    """Per-class weights from a histogram by one of :data:`WEIGHTING_METHODS`.

    Args:
        histogram: a :class:`LabelHistogram`.
        method: ``"inverse_frequency"``, ``"inverse_sqrt_frequency"`` or ``"median_frequency"``.
        absent: what a class without pixels gets: ``"error"``, ``"zero"`` or ``"max"``.
        class_names: names for the error message (default: the ids).

    Returns:
        ``num_classes`` floats.

    Raises:
        ValueError: an unknown method or absent rule, a histogram without any pixel, or (with
            ``absent="error"``) classes without pixels, named.
    """
    if method not in WEIGHTING_METHODS:
        raise ValueError(f"method must be one of {WEIGHTING_METHODS}. Received: method={method!r}")
    if absent not in ABSENT_RULES:
        raise ValueError(f"absent must be one of {ABSENT_RULES}. Received: absent={absent!r}")
    pixels = np.asarray(histogram.pixels, np.float64)
    present = pixels > 0
    if not present.any():
        raise ValueError(
            "The label histogram has no labelled pixel (all ignored or empty); no class weight "
            f"can be computed. Received pixels={pixels.astype(np.int64).tolist()}"
        )
    missing = np.flatnonzero(~present)
    if missing.size and absent == "error":
        names = [class_names[i] if class_names is not None else i for i in missing]
        raise ValueError(
            f"Classes {names} (ids {missing.tolist()}) have no pixel in the labels counted, so "
            "their frequency-based weight is undefined. Count more examples, give the weights "
            "explicitly, or choose what absent classes get: absent='zero' (their pixels do not "
            "count) or absent='max' (the largest present weight)."
        )
    weights = np.zeros_like(pixels)
    if method == "median_frequency":
        freq = pixels[present] / np.asarray(histogram.image_pixels, np.float64)[present]
        weights[present] = np.median(freq) / freq
    else:
        weights[present] = pixels.sum() / (present.sum() * pixels[present])
        if method == "inverse_sqrt_frequency":
            weights = np.sqrt(weights)
    if absent == "max":
        weights[~present] = weights[present].max()
    return [float(w) for w in weights]


def compute_class_weights(
    dataset,
    num_classes: int,
    method: str = "median_frequency",
    ignore_label: int = 255,
    max_examples: int | None = None,
    absent: str = "error",
    class_names=None,
) -> list[float]:
    """Class weights for :class:`~deeplab_tf.training.losses.DeepLabLoss` from a dataset.

    :func:`label_histogram` then :func:`class_weights_from_histogram`.

    Args:
        dataset: the training split (a ``tf.data.Dataset`` of the shared contract or an
            iterable of label maps).
        num_classes: C.
        method: one of :data:`WEIGHTING_METHODS`.
        ignore_label: the value left out (255).
        max_examples: count only the first this many examples (``None``: all).
        absent: what a class without pixels gets (:data:`ABSENT_RULES`).
        class_names: names for error messages.

    Returns:
        ``num_classes`` floats.

    Raises:
        ValueError: bad arguments, bad label values, an empty dataset or absent classes (see
            :func:`class_weights_from_histogram`).

    Example:
        >>> ds, info = load_dataset("voc2012", root, split="train")
        >>> w = compute_class_weights(ds, info.num_classes, "median_frequency")
        >>> loss = DeepLabLoss(class_weights=w)
    """
    if method not in WEIGHTING_METHODS:
        raise ValueError(f"method must be one of {WEIGHTING_METHODS}. Received: method={method!r}")
    if absent not in ABSENT_RULES:
        raise ValueError(f"absent must be one of {ABSENT_RULES}. Received: absent={absent!r}")
    hist = label_histogram(dataset, num_classes, ignore_label, max_examples)
    return class_weights_from_histogram(hist, method, absent, class_names)
