"""Evaluation: streaming confusion matrix, VOC-style scores and the ``evaluate`` loop."""

from deeplab_tf.evaluation.evaluate import evaluate, write_json
from deeplab_tf.evaluation.metrics import ConfusionMatrix, format_table, scores_from_confusion

__all__ = ["ConfusionMatrix", "evaluate", "format_table", "scores_from_confusion", "write_json"]
