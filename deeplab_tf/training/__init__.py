"""Training with ``model.fit``: the paper's solver, loss, metric, input pipeline, MSC, recipes.

Example:
    >>> import deeplab_tf
    >>> model = deeplab_tf.DeepLabV2(backbone="resnet101", head="aspp_l", num_classes=21)
    >>> model.compile(**deeplab_tf.recipes.paper("resnet101", steps=20000))
"""

from deeplab_tf.training.callbacks import (
    AtomicBackupAndRestore,
    StepCheckpoint,
    list_checkpoints,
    training_callbacks,
)
from deeplab_tf.training.distribute import make_strategy, per_replica_batch_size
from deeplab_tf.training.losses import DeepLabLoss, shrink_labels
from deeplab_tf.training.metrics import MeanIoU
from deeplab_tf.training.msc import MultiScaleModel
from deeplab_tf.training.optimizer import CaffeSGD, PolyDecay, poly_schedule, variable_multipliers
from deeplab_tf.training.pipeline import (
    check_element_spec,
    check_label_values,
    eval_pipeline,
    train_pipeline,
)
from deeplab_tf.training.recipes import paper
from deeplab_tf.training.trainer import RunFinished, resolve_config, run_status, train

__all__ = [
    "AtomicBackupAndRestore",
    "CaffeSGD",
    "DeepLabLoss",
    "MeanIoU",
    "MultiScaleModel",
    "PolyDecay",
    "RunFinished",
    "StepCheckpoint",
    "check_element_spec",
    "check_label_values",
    "eval_pipeline",
    "list_checkpoints",
    "make_strategy",
    "paper",
    "per_replica_batch_size",
    "poly_schedule",
    "resolve_config",
    "run_status",
    "shrink_labels",
    "train",
    "train_pipeline",
    "training_callbacks",
    "variable_multipliers",
]
