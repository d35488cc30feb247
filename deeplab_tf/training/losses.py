"""Softmax cross-entropy over valid pixels, at logit resolution (paper Sec. 4).

The authors' Caffe nets shrink the label map to the score map's size (``Interp`` with a shrink
factor of 8, i.e. sampling label pixels at the logit positions) and apply ``SoftmaxWithLoss``
with ``ignore_label: 255`` normalised by the number of valid pixels.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from deeplab_tf.layers import resize_logits

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

    Args:
        ignore_label: label value excluded from the loss (255).
        label_mode: ``"nearest"`` (default, corner-aligned like Caffe), ``"nearest_floor"``
            (PyTorch port) or ``"upsample_logits"``.
        stride: output stride, used by ``"upsample_logits"``.
        name: loss name.

    Example:
        >>> model.compile(optimizer="sgd", loss=DeepLabLoss())
    """

    def __init__(
        self,
        ignore_label: int = 255,
        label_mode: str = "nearest",
        stride: int = 8,
        name: str = "deeplab_loss",
        **kwargs,
    ):
        kwargs.pop("reduction", None)
        super().__init__(name=name, reduction="sum_over_batch_size", **kwargs)
        if label_mode not in LABEL_MODES:
            raise ValueError(
                f"label_mode must be one of {LABEL_MODES}. Received: label_mode={label_mode!r}"
            )
        self.ignore_label = int(ignore_label)
        self.label_mode = label_mode
        self.stride = int(stride)

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError(
                "DeepLabLoss normalises over valid pixels and does not take sample_weight; "
                "mark pixels to skip with the ignore label instead. Received a sample_weight."
            )
        return super().__call__(y_true, y_pred)

    def call(self, y_true, y_pred):
        labels, logits = align_labels_and_logits(y_true, y_pred, self.label_mode, self.stride)
        valid = tf.not_equal(labels, self.ignore_label)
        safe = tf.where(valid, labels, tf.zeros_like(labels))
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=logits)
        validf = tf.cast(valid, tf.float32)
        count = tf.reduce_sum(validf)
        replica = tf.distribute.get_replica_context()
        if replica is not None and replica.num_replicas_in_sync > 1:
            # Normalise by the valid pixels of the *global* batch: the replicas' losses then sum
            # (tf.distribute sums gradients) to exactly the single-device loss of that batch.
            count = tf.stop_gradient(
                replica.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(count))
            )
        return tf.math.divide_no_nan(tf.reduce_sum(ce * validf), count)

    def get_config(self):
        return {
            "name": self.name,
            "ignore_label": self.ignore_label,
            "label_mode": self.label_mode,
            "stride": self.stride,
        }
