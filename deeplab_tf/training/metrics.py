"""Mean intersection-over-union from a running confusion matrix (the paper's VOC metric)."""

from __future__ import annotations

import keras
import tensorflow as tf

from deeplab_tf.evaluation.metrics import intersection_and_union
from deeplab_tf.training.losses import LABEL_MODES, align_labels_and_logits

PACKAGE = "deeplab_tf"


@keras.saving.register_keras_serializable(package=PACKAGE)
class MeanIoU(keras.metrics.Metric):
    """Mean IoU over classes, accumulated in a ``(C, C)`` confusion matrix, ignoring 255.

    Takes logits ``(N, h, w, C)`` and labels ``(N, H, W)`` at any resolution; by default the
    labels are shrunk to the logits' size like the loss (cheap, shown during ``fit``); use
    ``label_mode="upsample_logits"`` for full-resolution numbers. Classes absent from both the
    labels and the predictions are left out of the mean. Labels outside ``0..C-1`` other than
    the ignore label are counted nowhere (the input pipeline rejects them beforehand). The
    counts are made in-graph; the IoU terms are
    :func:`deeplab_tf.evaluation.metrics.intersection_and_union`, the evaluator's definition.

    Args:
        num_classes: C.
        ignore_label: label value that is skipped (255).
        label_mode: ``"nearest"``, ``"nearest_floor"`` or ``"upsample_logits"``.
        stride: output stride, for ``"upsample_logits"``.
        name: metric name shown in logs (``mean_iou``).
    """

    def __init__(
        self,
        num_classes: int,
        ignore_label: int = 255,
        label_mode: str = "nearest",
        stride: int = 8,
        name: str = "mean_iou",
        dtype=None,
    ):
        super().__init__(name=name, dtype=dtype)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(
                f"num_classes must be a positive int. Received: num_classes={num_classes!r}"
            )
        if label_mode not in LABEL_MODES:
            raise ValueError(
                f"label_mode must be one of {LABEL_MODES}. Received: label_mode={label_mode!r}"
            )
        self.num_classes = num_classes
        self.ignore_label = int(ignore_label)
        self.label_mode = label_mode
        self.stride = int(stride)
        self.confusion = self.add_variable(
            shape=(num_classes, num_classes), initializer="zeros", dtype="float64", name="confusion"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels, logits = align_labels_and_logits(y_true, y_pred, self.label_mode, self.stride)
        pred = tf.argmax(logits, axis=-1, output_type=tf.int32)
        c = self.num_classes
        valid = tf.logical_and(tf.not_equal(labels, self.ignore_label), labels >= 0)
        valid = tf.logical_and(valid, labels < c)
        idx = tf.boolean_mask(labels * c + pred, valid)
        counts = tf.math.bincount(idx, minlength=c * c, maxlength=c * c, dtype=tf.float64)
        self.confusion.assign_add(tf.reshape(counts, (c, c)))

    def result(self):
        cm = tf.convert_to_tensor(self.confusion)
        inter, union = intersection_and_union(cm, keras.ops)
        present = union > 0
        iou = tf.math.divide_no_nan(inter, union)
        n = tf.reduce_sum(tf.cast(present, tf.float64))
        return tf.cast(tf.math.divide_no_nan(tf.reduce_sum(iou), n), tf.float32)

    def reset_state(self):
        self.confusion.assign(tf.zeros_like(self.confusion))

    def get_config(self):
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "ignore_label": self.ignore_label,
            "label_mode": self.label_mode,
            "stride": self.stride,
        }
