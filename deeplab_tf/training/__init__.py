"""Training with ``model.fit``: the paper's solver, loss, metric, input pipeline, MSC, recipes.

Names are imported lazily (PEP 562), so that the ``train`` command module, which lives in this
package, is registered with the command line without importing TensorFlow.

Example:
    >>> import deeplab_tf
    >>> model = deeplab_tf.DeepLabV2(backbone="resnet101", head="aspp_l", num_classes=21)
    >>> model.compile(**deeplab_tf.recipes.paper("resnet101", steps=20000))
"""

from deeplab_tf._lazy import lazy_exports

_CALLBACKS = "deeplab_tf.training.callbacks"
_DISTRIBUTE = "deeplab_tf.training.distribute"
_LOSSES = "deeplab_tf.training.losses"
_OPTIMIZER = "deeplab_tf.training.optimizer"
_PIPELINE = "deeplab_tf.training.pipeline"
_TRAINER = "deeplab_tf.training.trainer"
_EXPORTS = {
    "AtomicBackupAndRestore": _CALLBACKS,
    "StepCheckpoint": _CALLBACKS,
    "StopOnNonFiniteLoss": _CALLBACKS,
    "ZeroIoUMonitor": _CALLBACKS,
    "compute_class_weights": "deeplab_tf.training.class_weights",
    "BatchIdRecorder": _PIPELINE,
    "list_checkpoints": _CALLBACKS,
    "training_callbacks": _CALLBACKS,
    "make_strategy": _DISTRIBUTE,
    "per_replica_batch_size": _DISTRIBUTE,
    "DeepLabLoss": _LOSSES,
    "shrink_labels": _LOSSES,
    "MeanIoU": "deeplab_tf.training.metrics",
    "MultiScaleTraining": "deeplab_tf.training.msc",
    "MultiScaleModel": "deeplab_tf.training.msc",  # former name, an alias (compatibility)
    "CaffeSGD": _OPTIMIZER,
    "PolyDecay": _OPTIMIZER,
    "poly_schedule": _OPTIMIZER,
    "variable_multipliers": _OPTIMIZER,
    "check_element_spec": _PIPELINE,
    "check_label_values": _PIPELINE,
    "eval_pipeline": _PIPELINE,
    "train_pipeline": _PIPELINE,
    "paper": "deeplab_tf.training.recipes",
    "RunFinished": _TRAINER,
    "resolve_config": _TRAINER,
    "run_status": _TRAINER,
    "train": _TRAINER,
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
