"""Callbacks for long runs: step-numbered checkpoints, TensorBoard, resume after interruption."""

from __future__ import annotations

import glob
import os
import re

import keras


class StepCheckpoint(keras.callbacks.Callback):
    """Saves ``ckpt-{step:06d}.weights.h5`` at each epoch end (use ``steps_per_epoch = N``).

    The step is the optimizer's update count. Files are written to a temporary name and moved
    into place, so a killed run never leaves a half-written checkpoint.

    Args:
        directory: where checkpoints go (created if missing).
        max_to_keep: keep the newest this many (``None`` keeps all).
        model_to_save: save this model's weights instead of the trained one (e.g. the wrapped
            network of a :class:`~deeplab_tf.training.msc.MultiScaleModel`).
    """

    def __init__(self, directory: str, max_to_keep: int | None = 5, model_to_save=None):
        super().__init__()
        self.directory = str(directory)
        self.max_to_keep = max_to_keep
        self.model_to_save = model_to_save

    def on_epoch_end(self, epoch, logs=None):
        os.makedirs(self.directory, exist_ok=True)
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        final = os.path.join(self.directory, f"ckpt-{step:06d}.weights.h5")
        tmp = os.path.join(self.directory, f".tmp-{os.getpid()}-ckpt-{step:06d}.weights.h5")
        (self.model_to_save or self.model).save_weights(tmp, overwrite=True)
        os.replace(tmp, final)
        if self.max_to_keep:
            for old in list_checkpoints(self.directory)[: -self.max_to_keep]:
                os.remove(old)


def list_checkpoints(directory: str) -> list[str]:
    """Checkpoint files written by :class:`StepCheckpoint`, oldest first."""
    files = glob.glob(os.path.join(str(directory), "ckpt-*.weights.h5"))
    return sorted(files, key=lambda f: int(re.search(r"ckpt-(\d+)", os.path.basename(f)).group(1)))


def training_callbacks(
    workdir: str,
    tensorboard: bool = True,
    checkpoints: bool = True,
    resume: bool = True,
    max_to_keep: int | None = 5,
    model_to_save=None,
) -> list:
    """The standard callbacks of a run in ``workdir``.

    Drive ``fit`` with ``steps_per_epoch = checkpoint interval``: every epoch end then writes
    ``workdir/checkpoints/ckpt-{step}.weights.h5``, TensorBoard scalars in ``workdir/logs`` and a
    ``keras.callbacks.BackupAndRestore`` backup in ``workdir/backup`` (weights, optimizer state
    and the epoch). A run killed mid-way and started again with the same arguments resumes from
    the last backup and ends with the same step count and schedule position as an
    uninterrupted run (the partial epoch is redone).

    Args:
        workdir: run directory.
        tensorboard: add ``keras.callbacks.TensorBoard``.
        checkpoints: add :class:`StepCheckpoint`.
        resume: add ``BackupAndRestore`` (deleted when training completes).
        max_to_keep: checkpoints kept.
        model_to_save: see :class:`StepCheckpoint`.

    Returns:
        A list of callbacks.
    """
    workdir = str(workdir)
    cbs = []
    if resume:
        cbs.append(
            keras.callbacks.BackupAndRestore(os.path.join(workdir, "backup"), save_freq="epoch")
        )
    if checkpoints:
        cbs.append(StepCheckpoint(os.path.join(workdir, "checkpoints"), max_to_keep, model_to_save))
    if tensorboard:
        try:
            import tensorboard as _  # noqa: F401  (keras.callbacks.TensorBoard needs it)
        except ImportError:
            raise ImportError(
                "TensorBoard logging needs the tensorboard package: pip install tensorboard "
                "(or deeplab_tf[train]), or turn it off (output.tensorboard: false)."
            ) from None
        cbs.append(keras.callbacks.TensorBoard(os.path.join(workdir, "logs"), update_freq="epoch"))
    return cbs
