"""Callbacks for long runs: step-numbered checkpoints, TensorBoard, resume after interruption."""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import re
import shutil

import keras

from deeplab_tf import atomic
from deeplab_tf.training.distribute import is_chief, worker_dir

BACKUP_WEIGHTS = "latest.weights.h5"
BACKUP_METADATA = "training_metadata.json"


def weights_finite(model) -> bool:
    """True when every weight of ``model`` is finite (no NaN or inf): safe to save."""
    import numpy as np

    for v in model.weights:
        value = keras.ops.convert_to_numpy(v)
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            return False
    return True


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training at the first batch whose loss is NaN or inf.

    Unlike ``keras.callbacks.TerminateOnNaN`` it records where (``self.failure``: ``(step,
    loss)``) so the trainer can report it and save nothing; the checkpoint and backup
    callbacks here also refuse to write non-finite weights.
    """

    def __init__(self):
        super().__init__()
        self.failure = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        loss = float(keras.ops.convert_to_numpy(loss))
        if not math.isfinite(loss):
            step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            self.failure = (step, loss)
            self.model.stop_training = True


class StepCheckpoint(keras.callbacks.Callback):
    """Saves ``ckpt-{step:06d}.weights.h5`` at each epoch end (use ``steps_per_epoch = N``).

    The step is the optimizer's update count. Files are written to a temporary name and moved
    into place, so a killed run never leaves a half-written checkpoint. Under a multi-worker
    ``tf.distribute`` strategy only the chief writes into ``directory``; the other workers save
    into a temporary directory that is deleted at once (the save itself must run everywhere).

    Args:
        directory: where checkpoints go (created if missing).
        max_to_keep: keep the newest this many (``None`` keeps all).
        model_to_save: save this model's weights instead of the trained one (e.g. the wrapped
            network of a :class:`~deeplab_tf.training.msc.MultiScaleTraining`).
    """

    def __init__(self, directory: str, max_to_keep: int | None = 5, model_to_save=None):
        super().__init__()
        self.directory = str(directory)
        self.max_to_keep = max_to_keep
        self.model_to_save = model_to_save

    def on_epoch_end(self, epoch, logs=None):
        if not weights_finite(self.model_to_save or self.model):
            logging.getLogger("deeplab_tf.training").error(
                "Not writing a checkpoint: the weights are no longer finite (NaN or inf)."
            )
            return
        strategy = self.model.distribute_strategy
        directory = worker_dir(self.directory, strategy)
        chief = is_chief(strategy)
        os.makedirs(directory, exist_ok=True)
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        final = os.path.join(directory, f"ckpt-{step:06d}.weights.h5")
        save = (self.model_to_save or self.model).save_weights
        if not chief:  # takes part in the save, keeps nothing
            with atomic.scratch(final, mkdir=False) as tmp:
                save(tmp, overwrite=True)
            shutil.rmtree(directory, ignore_errors=True)
            return
        # A resumed run redoes the interrupted epoch and rewrites its own step's file.
        atomic.atomic_write(final, lambda tmp: save(tmp, overwrite=True))
        if self.max_to_keep:
            for old in list_checkpoints(self.directory)[: -self.max_to_keep]:
                os.remove(old)


def list_checkpoints(directory: str) -> list[str]:
    """Checkpoint files written by :class:`StepCheckpoint`, oldest first."""
    files = glob.glob(os.path.join(str(directory), "ckpt-*.weights.h5"))
    return sorted(files, key=lambda f: int(re.search(r"ckpt-(\d+)", os.path.basename(f)).group(1)))


def latest_backup(backup_dir: str) -> str | None:
    """The directory holding the newest complete :class:`AtomicBackupAndRestore` state, or None.

    A save swaps ``backup_dir`` with a fully written sibling in one atomic exchange; where the
    file system cannot exchange, the old state goes to ``backup_dir + ".old"`` first, and if a
    kill fell between the two renames that previous state is still complete there.
    """
    for candidate in (str(backup_dir), str(backup_dir) + ".old"):
        if os.path.isfile(os.path.join(candidate, BACKUP_METADATA)) and os.path.isfile(
            os.path.join(candidate, BACKUP_WEIGHTS)
        ):
            return candidate
    return None


def backup_epoch(backup_dir: str) -> int:
    """The number of completed epochs recorded in a backup (0 when there is none)."""
    src = latest_backup(backup_dir)
    if src is None:
        return 0
    with open(os.path.join(src, BACKUP_METADATA)) as f:
        return int(json.load(f)["epoch"])


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``keras.callbacks.BackupAndRestore`` with atomic, chief-only writes (epoch granularity).

    Each epoch end writes ``latest.weights.h5`` (weights and optimizer state, including the step
    counter) and ``training_metadata.json`` into a fresh temporary sibling directory, then swaps
    it in with renames, so a kill at any moment leaves a complete backup (the new or the
    previous one). Under a multi-worker strategy every worker runs the save (it reads variables
    with collectives), but only the chief's copy is kept; the others delete theirs. A restarted
    run restores from the chief's backup on every worker (the run directory must be on a file
    system all workers see) and continues at the next epoch; the trainer also skips the input
    pipeline to that epoch's first batch so the resumed run sees the same data as an
    uninterrupted one.

    Args:
        backup_dir: backup directory.
        delete_on_end: delete the backup (chief) when ``fit`` completes. The trainer passes
            False and deletes it itself (:func:`discard_backup`) only after ``model.keras`` and
            the run's completion record are on disk, so that a kill at any moment leaves a
            resumable state.
    """

    def __init__(self, backup_dir: str, delete_on_end: bool = True):
        super().__init__(str(backup_dir), save_freq="epoch", delete_checkpoint=delete_on_end)
        self.delete_on_end = delete_on_end

    def on_train_begin(self, logs=None):
        self._load_model()

    def _load_model(self):
        src = latest_backup(self.backup_dir)
        if src is None:
            return
        if not self.model.built:
            raise ValueError(
                f"To resume from {src}, the model must be built before fit(). "
                f"Received an unbuilt model: {self.model.name!r}"
            )
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(os.path.join(src, BACKUP_WEIGHTS))
        with open(os.path.join(src, BACKUP_METADATA)) as f:
            self.model._initial_epoch = int(json.load(f)["epoch"])

    def _save_model(self):
        if not weights_finite(self.model):  # keep the last good backup to resume from
            return
        strategy = self.model.distribute_strategy
        chief = is_chief(strategy)
        target = os.path.normpath(worker_dir(self.backup_dir, strategy))
        # Every worker takes part in the (collective) save; only the chief publishes its copy.
        with atomic.scratch(target) as tmp:
            self.model.save_weights(os.path.join(tmp, BACKUP_WEIGHTS), overwrite=True)
            step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            with open(os.path.join(tmp, BACKUP_METADATA), "w") as f:
                json.dump({"epoch": self._current_epoch, "batch": 0, "step": step}, f)
            if chief:
                atomic.publish(tmp, target, overwrite=True, aside=target + ".old")
                shutil.rmtree(target + ".old", ignore_errors=True)

    def on_train_end(self, logs=None):
        if not weights_finite(self.model):  # stopped on NaN: the backup is the last good state
            return
        if self.delete_on_end and is_chief(self.model.distribute_strategy):
            discard_backup(self.backup_dir)


def discard_backup(backup_dir: str) -> None:
    """Deletes a backup (and its ``.old`` sibling): first renamed to a temporary name, so a kill
    during the deletion leaves no half-deleted backup that looks resumable."""
    for path in (str(backup_dir), str(backup_dir) + ".old"):
        atomic.discard(path)


class RemoveWorkerDirs(keras.callbacks.Callback):
    """Deletes the given directories when training ends (non-chief workers' scratch copies)."""

    def __init__(self, paths):
        super().__init__()
        self.paths = [str(p) for p in paths]

    def on_train_end(self, logs=None):
        for path in self.paths:
            shutil.rmtree(path, ignore_errors=True)


def training_callbacks(
    workdir: str,
    tensorboard: bool = True,
    checkpoints: bool = True,
    resume: bool = True,
    max_to_keep: int | None = 5,
    model_to_save=None,
    strategy=None,
    keep_backup: bool = False,
) -> list:
    """The standard callbacks of a run in ``workdir``.

    The first is a :class:`StopOnNonFiniteLoss`; checkpoints and backups are never written
    from non-finite weights.

    Drive ``fit`` with ``steps_per_epoch = checkpoint interval``: every epoch end then writes
    ``workdir/checkpoints/ckpt-{step}.weights.h5``, TensorBoard scalars in ``workdir/logs`` and a
    :class:`AtomicBackupAndRestore` backup in ``workdir/backup`` (weights, optimizer state and
    the epoch). A run killed mid-way and started again with the same arguments resumes from
    the last backup and ends with the same step count and schedule position as an
    uninterrupted run (the partial epoch is redone). At each epoch end the checkpoint is
    written before the backup, so the backup never records an epoch whose checkpoint is
    missing. Under a multi-worker strategy only the chief writes into ``workdir``.

    Args:
        workdir: run directory.
        tensorboard: add ``keras.callbacks.TensorBoard``.
        checkpoints: add :class:`StepCheckpoint`.
        resume: add ``BackupAndRestore`` (deleted when training completes, unless
            ``keep_backup``).
        max_to_keep: checkpoints kept.
        model_to_save: see :class:`StepCheckpoint`.
        strategy: the ``tf.distribute`` strategy of the run (default: the current one); decides
            where non-chief workers' TensorBoard logs go (a scratch directory deleted at the end).
        keep_backup: leave the backup in place when ``fit`` completes (the caller deletes it
            with :func:`discard_backup` once the run's outputs are safely on disk).

    Returns:
        A list of callbacks.
    """
    workdir = str(workdir)
    cbs = [StopOnNonFiniteLoss()]
    if checkpoints:
        cbs.append(StepCheckpoint(os.path.join(workdir, "checkpoints"), max_to_keep, model_to_save))
    if resume:
        cbs.append(AtomicBackupAndRestore(os.path.join(workdir, "backup"), not keep_backup))
    if tensorboard:
        try:
            import tensorboard as _  # noqa: F401  (keras.callbacks.TensorBoard needs it)
        except ImportError:
            raise ImportError(
                "TensorBoard logging needs the tensorboard package (a dependency of deeplab_tf): "
                "pip install tensorboard, or turn it off (output.tensorboard: false)."
            ) from None
        logs = worker_dir(os.path.join(workdir, "logs"), strategy)
        cbs.append(keras.callbacks.TensorBoard(logs, update_freq="epoch"))
        if not is_chief(strategy):
            cbs.append(RemoveWorkerDirs([logs]))
    return cbs
