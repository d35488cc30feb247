"""In-graph ``tf.data`` input pipelines for training and validation (paper Sec. 4.1.2).

The authors' ``ImageSegData`` layer: random scale (image bilinear, label nearest), pad the
bottom/right to at least the crop size (image with the mean colour, label with 255), random
crop, random horizontal flip; at test time a centre crop / pad. Everything runs in the graph
(``Dataset.map`` with ``num_parallel_calls``) and the batches are prefetched.

Input elements follow the shared contract ``{"image": uint8 (H, W, 3) RGB, "label": uint8
(H, W), "id": string}``; outputs are ``(image float32 (N, S, S, 3) RGB 0..255, label uint8
(N, S, S))`` batches ready for ``model.fit`` (the model preprocesses in-graph).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from deeplab_tf.layers import CAFFE_BGR_MEAN

#: Caffe's mean in RGB order: what padded image pixels are filled with, so that they become 0
#: after the model's mean subtraction.
CAFFE_RGB_MEAN = tuple(reversed(CAFFE_BGR_MEAN))
#: The PyTorch port's scale set.
PAPER_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)


def check_element_spec(dataset: tf.data.Dataset) -> None:
    """Checks a dataset against the shared contract; raises ``ValueError`` saying what differs.

    Args:
        dataset: a ``tf.data.Dataset`` of dicts ``{"image", "label", "id"}``.

    Raises:
        ValueError: missing keys, wrong dtypes or wrong ranks.
    """
    spec = dataset.element_spec
    if not isinstance(spec, dict) or "image" not in spec or "label" not in spec:
        raise ValueError(
            "The dataset must yield dicts with keys 'image' (uint8 (H, W, 3)) and 'label' "
            f"(uint8 (H, W)). Received element_spec: {spec!r}"
        )
    image, label = spec["image"], spec["label"]
    if image.dtype not in (tf.uint8, tf.float32) or image.shape.rank != 3:
        raise ValueError(
            "'image' must be uint8 with shape (H, W, 3) (unbatched RGB), or (H, W, C) uint8 or "
            "float32 for images with C channels (folders of .npy / multi-channel TIFF images). "
            f"Received: dtype={image.dtype.name}, shape={tuple(image.shape)}"
        )
    if label.dtype != tf.uint8 or label.shape.rank != 2:
        raise ValueError(
            "'label' must be uint8 with shape (H, W): class ids 0..C-1 and 255 = ignore. "
            f"Received: dtype={label.dtype.name}, shape={tuple(label.shape)}"
        )


def check_label_values(
    dataset: tf.data.Dataset,
    num_classes: int,
    ignore_label: int = 255,
    max_examples: int | None = 64,
) -> None:
    """Scans labels of the first ``max_examples`` examples (all when ``None``) eagerly.

    Raises:
        ValueError: a label value ``>= num_classes`` that is not the ignore label, naming the
            example id and the values found, or image/label sizes that differ.
    """
    ds = dataset if max_examples is None else dataset.take(max_examples)
    for element in ds:
        label = element["label"].numpy()
        ih, iw = element["image"].shape[:2]
        ex_id = element.get("id")
        ex_id = ex_id.numpy().decode("utf-8", "replace") if ex_id is not None else "?"
        if label.shape != (ih, iw):
            raise ValueError(
                f"Example {ex_id!r}: image is {ih}x{iw} but label is "
                f"{label.shape[0]}x{label.shape[1]}; "
                "they must have the same height and width."
            )
        values = np.unique(label)
        bad = values[(values >= num_classes) & (values != ignore_label)]
        if bad.size:
            raise ValueError(
                f"Example {ex_id!r} has label values {bad.tolist()} but num_classes={num_classes} "
                f"(valid: 0..{num_classes - 1} and {ignore_label} = ignore). Received label values "
                f"{values.tolist()}."
            )


def _validate_common(crop_size, batch_size, mean):
    crop = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
    if len(crop) != 2 or any(not isinstance(c, (int, np.integer)) or c < 1 for c in crop):
        raise ValueError(
            f"crop_size must be a positive int or (h, w). Received: crop_size={crop_size!r}"
        )
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int. Received: batch_size={batch_size!r}")
    mean = tuple(float(m) for m in mean)
    if not mean:
        raise ValueError(f"mean must have one value per image channel. Received: mean={mean!r}")
    return (int(crop[0]), int(crop[1])), mean


def _check_mean_channels(dataset, mean):
    """The padding value has one entry per image channel (3 for RGB)."""
    channels = dataset.element_spec["image"].shape[-1]
    expected = channels if channels is not None else 3
    if len(mean) != expected:
        raise ValueError(
            f"mean must have one value per image channel: the images have {expected}. "
            f"Received: mean={mean!r}"
        )


def random_scale(image, label, scales, seed=None):
    """Rescales by a factor drawn uniformly from ``scales``: image bilinear, label nearest.

    New size is ``round(H * s), round(W * s)`` (OpenCV's ``fx``/``fy`` rule in the PyTorch port).
    """
    scales_t = tf.constant(scales, tf.float32)
    i = (
        tf.random.stateless_uniform([], seed=seed, maxval=len(scales), dtype=tf.int32)
        if seed is not None
        else tf.random.uniform([], maxval=len(scales), dtype=tf.int32)
    )
    s = scales_t[i]
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    size = tf.maximum(tf.cast(tf.round(hw * s), tf.int32), 1)
    img = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear")
    lab = tf.image.resize(label[..., None], size, method="nearest")[..., 0]
    return img, tf.cast(lab, label.dtype)


def pad_to_size(image, label, size, mean=CAFFE_RGB_MEAN, ignore_label: int = 255):
    """Pads bottom/right to at least ``size``: image with ``mean``, label with ``ignore_label``."""
    hw = tf.shape(image)[:2]
    ph = tf.maximum(size[0] - hw[0], 0)
    pw = tf.maximum(size[1] - hw[1], 0)
    paddings = [[0, ph], [0, pw]]
    mean_t = tf.constant(mean, tf.float32)
    img = tf.cast(image, tf.float32) - mean_t
    img = tf.pad(img, paddings + [[0, 0]]) + mean_t
    lab = tf.pad(label, paddings, constant_values=tf.cast(ignore_label, label.dtype))
    return img, lab


def random_crop(image, label, size, seed=None):
    """A random ``size`` window of an image/label pair at least that large."""
    hw = tf.shape(image)[:2]
    if seed is None:
        y = tf.random.uniform([], maxval=hw[0] - size[0] + 1, dtype=tf.int32)
        x = tf.random.uniform([], maxval=hw[1] - size[1] + 1, dtype=tf.int32)
    else:
        seeds = tf.random.experimental.stateless_split(seed, 2)
        y = tf.random.stateless_uniform([], seeds[0], maxval=hw[0] - size[0] + 1, dtype=tf.int32)
        x = tf.random.stateless_uniform([], seeds[1], maxval=hw[1] - size[1] + 1, dtype=tf.int32)
    return image[y : y + size[0], x : x + size[1]], label[y : y + size[0], x : x + size[1]]


def center_crop(image, label, size):
    """The centre ``size`` window (after padding when smaller)."""
    hw = tf.shape(image)[:2]
    y = (hw[0] - size[0]) // 2
    x = (hw[1] - size[1]) // 2
    return image[y : y + size[0], x : x + size[1]], label[y : y + size[0], x : x + size[1]]


def random_flip(image, label, seed=None):
    """Horizontal flip of both with probability 1/2."""
    u = tf.random.uniform([]) if seed is None else tf.random.stateless_uniform([], seed)
    flip = u < 0.5
    image = tf.cond(flip, lambda: image[:, ::-1], lambda: image)
    label = tf.cond(flip, lambda: label[:, ::-1], lambda: label)
    return image, label


def train_transform(
    element,
    crop_size,
    scales=PAPER_SCALES,
    mean=CAFFE_RGB_MEAN,
    ignore_label: int = 255,
    flip: bool = True,
    seed=None,
):
    """One training example: scale, pad, crop, flip. Returns ``(image float32, label uint8)``.

    Args:
        element: dict with ``image`` and ``label``.
        crop_size: ``(h, w)``.
        scales: scale factors to draw from (``None`` or ``[1]`` = no scaling).
        mean: RGB fill value for padded image pixels.
        ignore_label: fill value for padded label pixels.
        flip: random horizontal flip.
        seed: optional stateless seed (shape ``(2,)`` int) for reproducible augmentation.
    """
    image, label = element["image"], element["label"]
    seeds = (
        [None] * 3 if seed is None else tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    )
    if scales and tuple(scales) != (1.0,):
        image, label = random_scale(image, label, tuple(float(s) for s in scales), seeds[0])
    image, label = pad_to_size(image, label, crop_size, mean, ignore_label)
    image, label = random_crop(image, label, crop_size, seeds[1])
    if flip:
        image, label = random_flip(image, label, seeds[2])
    image = tf.ensure_shape(image, (crop_size[0], crop_size[1], len(mean)))
    label = tf.ensure_shape(label, crop_size)
    return image, label


def eval_transform(element, crop_size, mean=CAFFE_RGB_MEAN, ignore_label: int = 255):
    """One validation example: pad bottom/right then centre crop to ``crop_size``."""
    image, label = pad_to_size(element["image"], element["label"], crop_size, mean, ignore_label)
    image, label = center_crop(image, label, crop_size)
    return tf.ensure_shape(image, (crop_size[0], crop_size[1], len(mean))), tf.ensure_shape(
        label, crop_size
    )


#: Start of the in-pipeline label check's message (the trainer turns it into a clean error).
BAD_EXAMPLE = "Bad training example"


class BatchIdRecorder:
    """Remembers the example ids of the latest batches a training pipeline produced.

    :func:`train_pipeline` (``batch_ids=recorder``) stores each batch's ids under the batch's
    position in the pipeline's stream (0 for the first batch of an iterator, whatever
    ``start_batch`` skipped), a little ahead of training because of prefetching; a callback
    that counts the batches it has seen looks them up (:class:`~deeplab_tf.training.callbacks.
    StopOnNonFiniteLoss` names the batch whose loss became NaN). Only the newest ``keep``
    batches are kept. The ids are stored from the input pipeline's thread, on the host: use
    one recorder per iterator (``fit`` iterates its training data once).

    Args:
        keep: batches remembered.
    """

    def __init__(self, keep: int = 1024):
        import collections
        import threading

        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be a positive int. Received: keep={keep!r}")
        self.keep = keep
        self._ids = collections.OrderedDict()
        self._lock = threading.Lock()

    def record(self, index: int, ids) -> None:
        """Stores the ids (strings) of batch ``index``."""
        with self._lock:
            self._ids[int(index)] = list(ids)
            while len(self._ids) > self.keep:
                self._ids.popitem(last=False)

    def get(self, index: int):
        """The ids of batch ``index`` (a list of strings), or ``None`` if not (or no longer)
        recorded."""
        with self._lock:
            ids = self._ids.get(int(index))
        return None if ids is None else list(ids)

    def _record_batch(self, index, ids):
        def store(i, names):
            self.record(
                int(i.numpy()), [n.decode("utf-8", "replace") for n in names.numpy().tolist()]
            )
            return i

        return tf.py_function(store, [index, ids], Tout=tf.int64)


def _example_guard(num_classes, ignore_label):
    """Checks each raw example in-graph: label values and image/label sizes, naming its id."""

    def guard(element):
        image, label = element["image"], element["label"]
        ex_id = element.get("id", tf.constant("?"))
        bad = tf.logical_and(tf.cast(label, tf.int32) >= num_classes, label != ignore_label)
        values = tf.boolean_mask(label, bad)
        same_size = tf.reduce_all(tf.equal(tf.shape(image)[:2], tf.shape(label)[:2]))
        size_msg = tf.strings.format(
            BAD_EXAMPLE + " {}: image is {} (H, W) but its label is {}; they must match",
            (ex_id, tf.shape(image)[:2], tf.shape(label)),
        )
        value_msg = tf.strings.format(
            BAD_EXAMPLE + " {}: label values must be < num_classes=" + str(num_classes)
            + f" or {ignore_label} (ignore); found {{}}",
            (ex_id, tf.unique(values)[0]),
            summarize=20,
        )  # fmt: skip
        checks = [
            tf.debugging.Assert(same_size, [size_msg]),
            tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)), [value_msg]),
        ]
        with tf.control_dependencies(checks):
            return {k: tf.identity(v) for k, v in element.items()}

    return guard


def train_pipeline(
    dataset: tf.data.Dataset,
    crop_size=321,
    batch_size: int = 10,
    scales=PAPER_SCALES,
    mean=CAFFE_RGB_MEAN,
    ignore_label: int = 255,
    flip: bool = True,
    shuffle_buffer: int = 1000,
    repeat: bool = True,
    seed: int | None = None,
    num_classes: int | None = None,
    start_batch: int = 0,
    batch_ids: BatchIdRecorder | None = None,
) -> tf.data.Dataset:
    """Training batches ``(image float32 (N, h, w, 3), label uint8 (N, h, w))``.

    Shuffles, repeats (by default forever: drive ``fit`` with ``steps_per_epoch``), augments in
    parallel, batches with ``drop_remainder=True`` and prefetches.

    Args:
        dataset: elements ``{"image", "label", "id"}`` (see :func:`check_element_spec`).
        crop_size: int or ``(h, w)``; 321 in the paper.
        batch_size: examples per batch (per micro-batch with gradient accumulation).
        scales: random scale factors (``None`` to disable).
        mean: RGB padding colour (the Caffe mean, so padding is 0 after preprocessing); one
            value per channel for images with C channels (the model's ``channel_mean``).
        ignore_label: label padding value.
        flip: random horizontal flips.
        shuffle_buffer: shuffle buffer size (0 disables shuffling).
        repeat: repeat the dataset forever.
        seed: makes shuffling and augmentation deterministic (the first iterator's stream
            depends on the seed alone; each further iterator of the same dataset object draws a
            new shuffle order, so iterate once, as ``fit`` does).
        num_classes: when given, every example is checked in-graph before augmentation: an
            ``InvalidArgumentError`` starting with :data:`BAD_EXAMPLE` and naming the example
            id if a label value is ``>= num_classes`` and not the ignore label, or the image
            and label sizes differ.
        start_batch: begin at this batch of the (seeded) stream, e.g. when resuming: examples
            are skipped before augmentation, and augmentation seeds follow the example's position
            in the stream, so batch ``k`` is identical to batch ``k`` of a run from the start.
            Needs ``seed`` (an unseeded stream has no fixed order to resume).
        batch_ids: a :class:`BatchIdRecorder` that stores each batch's example ids (the
            ``"id"`` of the elements; ignored when the dataset has none). The batches are the
            same with or without it.

    Returns:
        A batched, prefetched ``tf.data.Dataset``.

    Example:
        >>> train = train_pipeline(ds, crop_size=321, batch_size=10)
    """
    check_element_spec(dataset)
    crop, mean = _validate_common(crop_size, batch_size, mean)
    _check_mean_channels(dataset, mean)
    if scales is not None:
        scales = tuple(float(s) for s in scales)
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"scales must be positive numbers. Received: scales={scales!r}")
    if not isinstance(start_batch, (int, np.integer)) or start_batch < 0:
        raise ValueError(f"start_batch must be an int >= 0. Received: start_batch={start_batch!r}")
    if start_batch and seed is None:
        raise ValueError(
            "start_batch needs a seed (an unseeded stream cannot be resumed in the same order). "
            f"Received: start_batch={start_batch}, seed=None"
        )
    if batch_ids is not None and not isinstance(batch_ids, BatchIdRecorder):
        raise ValueError(
            f"batch_ids must be a BatchIdRecorder or None. Received: {type(batch_ids).__name__}"
        )
    with_ids = batch_ids is not None and "id" in dataset.element_spec
    ds = dataset
    if num_classes is not None:  # every example, named, before augmentation can hide it
        ds = ds.map(_example_guard(num_classes, ignore_label), num_parallel_calls=tf.data.AUTOTUNE)
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if seed is not None:
        counter = tf.data.Dataset.counter()
        ds = tf.data.Dataset.zip((ds, counter))
        if start_batch:
            ds = ds.skip(int(start_batch) * int(batch_size))

        def transform(element, i):
            return train_transform(
                element,
                crop,
                scales,
                mean,
                ignore_label,
                flip,
                seed=tf.stack([tf.constant(seed, tf.int64), i]),
            )
    else:

        def transform(element):
            return train_transform(element, crop, scales, mean, ignore_label, flip)

    def fn(element, *index):
        image, label = transform(element, *index)
        return (image, label, element["id"]) if with_ids else (image, label)

    ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=seed is not None)
    ds = ds.batch(batch_size, drop_remainder=True)
    if with_ids:

        def record(batch, index):
            image, label, ids = batch
            with tf.control_dependencies([batch_ids._record_batch(index, ids)]):
                return tf.identity(image), tf.identity(label)

        ds = tf.data.Dataset.zip((ds, tf.data.Dataset.counter())).map(record)
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_pipeline(
    dataset: tf.data.Dataset,
    crop_size=513,
    batch_size: int = 1,
    mean=CAFFE_RGB_MEAN,
    ignore_label: int = 255,
    num_classes: int | None = None,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Validation batches: pad bottom/right and centre crop to ``crop_size`` (no randomness).

    Args:
        dataset: elements ``{"image", "label", "id"}``.
        crop_size: int or ``(h, w)``; 513 covers every VOC image.
        batch_size: examples per batch (the last batch may be smaller).
        mean: RGB padding colour.
        ignore_label: label padding value.
        num_classes: when given, every example is checked in-graph (as in
            :func:`train_pipeline`).
        drop_remainder: drop a last partial batch (static shapes, for TPUs).

    Returns:
        A batched, prefetched ``tf.data.Dataset`` of ``(image float32, label uint8)``.
    """
    check_element_spec(dataset)
    crop, mean = _validate_common(crop_size, batch_size, mean)
    _check_mean_channels(dataset, mean)
    ds = dataset
    if num_classes is not None:
        ds = ds.map(_example_guard(num_classes, ignore_label), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(
        lambda e: eval_transform(e, crop, mean, ignore_label), num_parallel_calls=tf.data.AUTOTUNE
    )
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
