"""Softmax cross-entropy over valid pixels, at logit resolution (paper Sec. 4).

The authors' Caffe nets shrink the label map to the score map's size (``Interp`` with a shrink
factor of 8, i.e. sampling label pixels at the logit positions) and apply ``SoftmaxWithLoss``
with ``ignore_label: 255`` normalised by the number of valid pixels.

For rare classes the same loss takes per-class weights (given, or computed from the training
split's label histogram by :mod:`deeplab_tf.training.class_weights`) and online hard example
mining (OHEM: only the hardest pixels of a batch count); both act on the pixels that remain
after the ignore label and the label shrinking, at the loss's resolution.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from deeplab_tf.layers import resize_logits
from deeplab_tf.training.schema import OHEM_MODES  # noqa: F401  (re-exported)

PACKAGE = "deeplab_tf"
LABEL_MODES = ("nearest", "nearest_floor", "upsample_logits")


def shrink_labels(labels, size, mode: str = "nearest"):
    """Nearest-neighbour resampling of a label batch to a logit map's size.

    ``"nearest"`` maps corners onto corners (Caffe's ``Interp``, the rule the model's
    :func:`~deeplab_tf.layers.resize_logits` inverts): output pixel ``i`` takes label pixel
    ``round(i * (H - 1) / (h - 1))``; for a 321 crop and 41 logits that is exactly ``8 * i``.
    ``"nearest_floor"`` is PyTorch's ``F.interpolate(mode="nearest")``: ``floor(i * H / h)``.

    Args:
        labels: ``(N, H, W)`` integer tensor.
        size: target ``(h, w)``.
        mode: ``"nearest"`` or ``"nearest_floor"``.

    Returns:
        ``(N, h, w)`` tensor with ``labels``' dtype.
    """
    size = tf.cast(tf.convert_to_tensor(size), tf.int32)
    in_hw = tf.shape(labels)[1:3]

    def index(out_len, in_len):
        o = tf.cast(out_len, tf.float64)
        i = tf.cast(in_len, tf.float64)
        r = tf.range(o, dtype=tf.float64)
        if mode == "nearest":
            idx = tf.round(r * (i - 1.0) / tf.maximum(o - 1.0, 1.0))
        elif mode == "nearest_floor":
            idx = tf.floor(r * i / o)
        else:
            raise ValueError(f"mode must be 'nearest' or 'nearest_floor'. Received: mode={mode!r}")
        return tf.clip_by_value(tf.cast(idx, tf.int32), 0, in_len - 1)

    out = tf.gather(labels, index(size[0], in_hw[0]), axis=1)
    return tf.gather(out, index(size[1], in_hw[1]), axis=2)


def align_labels_and_logits(y_true, y_pred, label_mode: str = "nearest", stride: int = 8):
    """Brings labels ``(N, H, W)`` and logits ``(N, h, w, C)`` to a common resolution.

    Returns:
        ``(labels int32 (N, h', w'), logits float32 (N, h', w', C))``.
    """
    y_true = tf.convert_to_tensor(y_true)
    if y_true.shape.rank == 4:
        y_true = tf.squeeze(y_true, -1)
    y_true = tf.cast(y_true, tf.int32)
    y_pred = tf.cast(y_pred, tf.float32)
    if label_mode == "upsample_logits":
        y_pred = resize_logits(y_pred, tf.shape(y_true)[1:3], mode="caffe", stride=stride)
    else:
        y_true = shrink_labels(y_true, tf.shape(y_pred)[1:3], mode=label_mode)
    return y_true, y_pred


def check_class_weights(class_weights, num_classes: int | None = None):
    """Validates per-class loss weights; returns them as a tuple of floats.

    Args:
        class_weights: a sequence of finite numbers ``>= 0``, at least one ``> 0``.
        num_classes: when given, the number of weights it must have.

    Returns:
        ``tuple[float, ...]``.

    Raises:
        ValueError: not a non-empty sequence of finite numbers ``>= 0``, all zero, or the wrong
            length; the message names what was received.
    """
    import math

    if isinstance(class_weights, (str, bytes)) or not hasattr(class_weights, "__len__"):
        raise ValueError(
            "class_weights must be a sequence of numbers, one per class. "
            f"Received: class_weights={class_weights!r}"
        )
    try:
        weights = tuple(float(w) for w in class_weights)
    except (TypeError, ValueError):
        raise ValueError(
            f"class_weights must be numbers. Received: class_weights={list(class_weights)!r}"
        ) from None
    if not weights or any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError(
            "class_weights must be a non-empty list of finite numbers >= 0. "
            f"Received: class_weights={list(weights)!r}"
        )
    if not any(weights):
        raise ValueError(
            f"class_weights are all zero: no pixel would count. Received: {list(weights)!r}"
        )
    if num_classes is not None and len(weights) != num_classes:
        raise ValueError(
            f"class_weights needs one weight per class: {num_classes} for this model. "
            f"Received {len(weights)}: {list(weights)!r}"
        )
    return weights


def ohem_mask(labels, logits, valid, mode: str, min_kept, threshold=None):
    """Which valid pixels online hard example mining keeps (a boolean map like ``labels``).

    Pixels are ranked by their unweighted cross-entropy, i.e. by the softmax probability of
    their true class ``p`` (lowest first). ``"loss"``: exactly the ``k`` hardest, ``k = min(
    min_kept * N, valid pixels)`` for a batch of ``N``. ``"threshold"``: every pixel with ``p <
    threshold``, and at least the ``k`` hardest when fewer pass the threshold (the rule of
    PSPNet's and mmsegmentation's ``OhemCrossEntropy``). Ties at the ``k``-th place are broken
    by position, so exactly ``k`` are kept. The selection carries no gradient.

    Args:
        labels: ``(N, h, w)`` int32 class ids (any value where ``valid`` is false).
        logits: ``(N, h, w, C)`` float32.
        valid: ``(N, h, w)`` bool, the non-ignored pixels.
        mode: ``"loss"`` or ``"threshold"``.
        min_kept: pixels kept per image at least (per image of the batch, at the loss's
            resolution).
        threshold: the probability threshold of ``"threshold"``.

    Returns:
        ``(N, h, w)`` bool tensor, false wherever ``valid`` is.
    """
    prob = tf.stop_gradient(
        tf.reduce_sum(
            tf.nn.softmax(logits, axis=-1) * tf.one_hot(labels, tf.shape(logits)[-1]), axis=-1
        )
    )
    flat_p = tf.reshape(prob, [-1])
    flat_valid = tf.reshape(valid, [-1])
    n_valid = tf.reduce_sum(tf.cast(flat_valid, tf.int32))
    k = tf.minimum(tf.cast(min_kept, tf.int32) * tf.shape(labels)[0], n_valid)
    # Hardest = lowest probability of the true class; invalid pixels rank last.
    hardness = tf.where(flat_valid, -flat_p, tf.fill(tf.shape(flat_p), -float("inf")))
    _, hardest = tf.math.top_k(hardness, k=k, sorted=False)
    kept = tf.scatter_nd(hardest[:, None], tf.ones_like(hardest, tf.bool), tf.shape(flat_p))
    if mode == "threshold":
        kept = tf.logical_or(kept, tf.logical_and(flat_valid, flat_p < threshold))
    return tf.reshape(tf.logical_and(kept, flat_valid), tf.shape(labels))


@keras.saving.register_keras_serializable(package=PACKAGE)
class DeepLabLoss(keras.losses.Loss):
    """Softmax cross-entropy averaged over the valid (non-ignored) pixels of the batch.

    Labels come at image size; by default they are shrunk to the logits' size (the paper);
    ``label_mode="upsample_logits"`` instead upsamples the logits to the label size (Caffe
    ``Interp`` rule) and computes the loss at full resolution. The result is a scalar: the sum
    of per-pixel losses over valid pixels divided by their number (Caffe's ``VALID``
    normalisation). Under ``tf.distribute`` each replica divides its sum by the valid-pixel count
    of the whole global batch (an all-reduce), so the gradients that the strategy sums over
    replicas equal those of one device processing the global batch.

    With ``class_weights`` each valid pixel of class ``c`` counts ``w[c]`` times and the sum is
    divided by the sum of the weights of the pixels counted (PyTorch's
    ``CrossEntropyLoss(weight=w, ignore_index=255)``): the loss stays on the scale of plain
    cross-entropy whatever the weights' scale, and with all weights 1 it is the plain loss.
    With ``ohem`` only the pixels :func:`ohem_mask` keeps count (in the sum and in the
    normaliser); with both, OHEM selects by the unweighted loss and the kept pixels are
    weighted. Under ``tf.distribute`` OHEM selects within each replica's batch.

    Args:
        ignore_label: label value excluded from the loss (255).
        label_mode: ``"nearest"`` (default, corner-aligned like Caffe), ``"nearest_floor"``
            (PyTorch port) or ``"upsample_logits"``.
        stride: output stride, used by ``"upsample_logits"``.
        class_weights: ``None`` (every class 1) or one number ``>= 0`` per class (see
            :func:`deeplab_tf.training.class_weights.compute_class_weights`).
        ohem: ``None``, ``"loss"`` (keep the ``ohem_min_kept`` hardest pixels per image) or
            ``"threshold"`` (keep the pixels whose true-class probability is below
            ``ohem_threshold``, at least ``ohem_min_kept`` per image).
        ohem_threshold: the probability threshold of ``ohem="threshold"``, in ``(0, 1)``.
        ohem_min_kept: pixels per image kept at least, at the loss's resolution (``41 x 41 =
            1681`` logit positions for a 321 crop with label shrinking).
        name: loss name.

    Raises:
        ValueError: an unknown ``label_mode`` or ``ohem``, bad weights, a threshold outside
            ``(0, 1)`` or given without ``ohem="threshold"``, or ``ohem_min_kept < 1``.

    Example:
        >>> model.compile(optimizer="sgd", loss=DeepLabLoss())
        >>> DeepLabLoss(class_weights=[0.5, 12.0], ohem="threshold", ohem_threshold=0.7)
    """

    def __init__(
        self,
        ignore_label: int = 255,
        label_mode: str = "nearest",
        stride: int = 8,
        class_weights=None,
        ohem: str | None = None,
        ohem_threshold: float | None = None,
        ohem_min_kept: int = 256,
        name: str = "deeplab_loss",
        **kwargs,
    ):
        kwargs.pop("reduction", None)
        super().__init__(name=name, reduction="sum_over_batch_size", **kwargs)
        if label_mode not in LABEL_MODES:
            raise ValueError(
                f"label_mode must be one of {LABEL_MODES}. Received: label_mode={label_mode!r}"
            )
        if ohem is not None and ohem not in OHEM_MODES:
            raise ValueError(f"ohem must be None or one of {OHEM_MODES}. Received: ohem={ohem!r}")
        if ohem == "threshold":
            if (
                isinstance(ohem_threshold, bool)
                or not isinstance(ohem_threshold, (int, float))
                or not 0.0 < ohem_threshold < 1.0
            ):
                raise ValueError(
                    "ohem='threshold' needs ohem_threshold, a probability in (0, 1). "
                    f"Received: ohem_threshold={ohem_threshold!r}"
                )
        elif ohem_threshold is not None:
            raise ValueError(
                "ohem_threshold is only used with ohem='threshold'. "
                f"Received: ohem_threshold={ohem_threshold!r}, ohem={ohem!r}"
            )
        if (
            isinstance(ohem_min_kept, bool)
            or not isinstance(ohem_min_kept, int)
            or ohem_min_kept < 1
        ):
            raise ValueError(
                f"ohem_min_kept must be a positive int. Received: ohem_min_kept={ohem_min_kept!r}"
            )
        self.ignore_label = int(ignore_label)
        self.label_mode = label_mode
        self.stride = int(stride)
        self.class_weights = None if class_weights is None else check_class_weights(class_weights)
        self.ohem = ohem
        self.ohem_threshold = None if ohem_threshold is None else float(ohem_threshold)
        self.ohem_min_kept = int(ohem_min_kept)

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError(
                "DeepLabLoss normalises over valid pixels and does not take sample_weight; "
                "mark pixels to skip with the ignore label instead (or use class_weights). "
                "Received a sample_weight."
            )
        return super().__call__(y_true, y_pred)

    def pixel_weights(self, labels, logits):
        """``(ce, weights)``: per-pixel cross-entropy and the weight each pixel counts with.

        ``weights`` is 0 on ignored pixels and on those OHEM drops, ``class_weights[label]``
        (or 1) elsewhere; :meth:`call` returns ``sum(ce * weights) / sum(weights)``.

        Args:
            labels: ``(N, h, w)`` int32, already aligned with ``logits``.
            logits: ``(N, h, w, C)`` float32.

        Returns:
            Two ``(N, h, w)`` float32 tensors.
        """
        valid = tf.not_equal(labels, self.ignore_label)
        safe = tf.where(valid, labels, tf.zeros_like(labels))
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=logits)
        if self.class_weights is not None:
            num_classes = logits.shape[-1]
            if num_classes is not None and num_classes != len(self.class_weights):
                raise ValueError(
                    f"class_weights has {len(self.class_weights)} weights but the logits have "
                    f"{num_classes} classes. Received: class_weights={list(self.class_weights)}"
                )
            table = tf.constant(self.class_weights, tf.float32)
            weights = tf.where(valid, tf.gather(table, safe), 0.0)
        else:
            weights = tf.cast(valid, tf.float32)
        if self.ohem is not None:
            kept = ohem_mask(
                safe, logits, valid, self.ohem, self.ohem_min_kept, self.ohem_threshold
            )
            weights = tf.where(kept, weights, 0.0)
        return ce, tf.stop_gradient(weights)

    def call(self, y_true, y_pred):
        labels, logits = align_labels_and_logits(y_true, y_pred, self.label_mode, self.stride)
        ce, weights = self.pixel_weights(labels, logits)
        count = tf.reduce_sum(weights)
        replica = tf.distribute.get_replica_context()
        if replica is not None and replica.num_replicas_in_sync > 1:
            # Normalise by the valid pixels of the *global* batch: the replicas' losses then sum
            # (tf.distribute sums gradients) to exactly the single-device loss of that batch.
            count = tf.stop_gradient(
                replica.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(count))
            )
        return tf.math.divide_no_nan(tf.reduce_sum(ce * weights), count)

    def get_config(self):
        return {
            "name": self.name,
            "ignore_label": self.ignore_label,
            "label_mode": self.label_mode,
            "stride": self.stride,
            "class_weights": None if self.class_weights is None else list(self.class_weights),
            "ohem": self.ohem,
            "ohem_threshold": self.ohem_threshold,
            "ohem_min_kept": self.ohem_min_kept,
        }
