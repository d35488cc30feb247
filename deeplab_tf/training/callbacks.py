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
    loss)``; ``self.failure_ids``: the example ids of that batch, when a ``batch_ids``
    recorder is given and the pipeline has ids) so the trainer can report it and save nothing;
    the checkpoint and backup callbacks here also refuse to write non-finite weights.

    Args:
        batch_ids: the :class:`~deeplab_tf.training.pipeline.BatchIdRecorder` given to the
            training pipeline (``train_pipeline(batch_ids=...)``), or ``None``.
    """

    def __init__(self, batch_ids=None):
        super().__init__()
        self.failure = None
        self.failure_ids = None
        self.batch_ids = batch_ids
        self._seen = 0  # batches of this fit's stream so far (the recorder's index)

    def on_train_begin(self, logs=None):
        self._seen = 0

    def on_train_batch_end(self, batch, logs=None):
        index, self._seen = self._seen, self._seen + 1
        loss = (logs or {}).get("loss")
        if loss is None or self.failure is not None:
            return
        loss = float(keras.ops.convert_to_numpy(loss))
        if not math.isfinite(loss):
            step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            self.failure = (step, loss)
            if self.batch_ids is not None:
                self.failure_ids = self.batch_ids.get(index)
            self.model.stop_training = True


class ZeroIoUMonitor(keras.callbacks.Callback):
    """Warns when a class keeps an IoU of 0 for ``patience`` validations in a row.

    The classic failure with rare classes: the network predicts only the background (or never
    a given class), and the mean IoU hides it. After each epoch with validation it reads the
    confusion matrix of the model's :class:`~deeplab_tf.training.metrics.MeanIoU` (which then
    holds the validation counts) and, for each class present in the validation labels whose
    intersection is 0, counts the evaluations in a row; at ``patience`` it logs one warning
    (``deeplab_tf.training``) naming the classes, and again only if a class recovers and
    drops back. Classes absent from the validation labels are not judged.

    Attributes:
        streaks: ``{class id: evaluations in a row with IoU 0}``.
        warned: class ids currently warned about.
        evaluations: validations seen.

    Args:
        patience: validations in a row with IoU 0 before the warning (>= 1).
        class_names: names for the message (default: the ids).
        metric: the :class:`MeanIoU` to read (default: the model's compiled one).
    """

    def __init__(self, patience: int = 3, class_names=None, metric=None):
        super().__init__()
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be a positive int. Received: patience={patience!r}")
        self.patience = patience
        self.class_names = None if class_names is None else tuple(class_names)
        self.metric = metric
        self.streaks: dict[int, int] = {}
        self.warned: set[int] = set()
        self.evaluations = 0

    def _find_metric(self):
        from deeplab_tf.training.metrics import MeanIoU

        if self.metric is not None:
            return self.metric
        stack = list(self.model.metrics)
        while stack:
            m = stack.pop(0)
            if isinstance(m, MeanIoU):
                return m
            stack.extend(getattr(m, "metrics", []) or [])
        return None

    def on_epoch_end(self, epoch, logs=None):
        import numpy as np

        from deeplab_tf.evaluation.metrics import intersection_and_union

        if not any(k.startswith("val_") for k in (logs or {})):
            return  # no validation this epoch: the metric holds training counts
        metric = self._find_metric()
        if metric is None:
            return
        cm = np.asarray(keras.ops.convert_to_numpy(metric.confusion), np.float64)
        inter, _ = intersection_and_union(cm, np)
        self.evaluations += 1
        present = cm.sum(axis=1) > 0
        for c in range(cm.shape[0]):
            if present[c] and inter[c] == 0:
                self.streaks[c] = self.streaks.get(c, 0) + 1
            else:
                self.streaks.pop(c, None)
                self.warned.discard(c)
        new = sorted(
            c for c, n in self.streaks.items() if n >= self.patience and c not in self.warned
        )
        if not new:
            return
        self.warned.update(new)
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        names = [self.class_names[c] if self.class_names else str(c) for c in new]
        logging.getLogger("deeplab_tf.training").warning(
            "Class%s %s (id%s %s) %s IoU 0 on the validation data for %d evaluations in a row "
            "(step %d): the model never predicts %s correctly. With rare classes try class "
            "weights (train.class_weighting: median_frequency, or train.class_weights) or OHEM "
            "(train.ohem).",
            "es" if len(new) > 1 else "",
            ", ".join(names),
            "s" if len(new) > 1 else "",
            new,
            "have" if len(new) > 1 else "has",
            min(self.streaks[c] for c in new),
            step,
            "them" if len(new) > 1 else "it",
        )


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
    batch_ids=None,
) -> list:
    """The standard callbacks of a run in ``workdir``.

    The first is a :class:`StopOnNonFiniteLoss` (naming the failing batch's example ids when
    ``batch_ids`` is the training pipeline's recorder); checkpoints and backups are never
    written from non-finite weights.

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
        batch_ids: a :class:`~deeplab_tf.training.pipeline.BatchIdRecorder`, or ``None``.

    Returns:
        A list of callbacks.
    """
    workdir = str(workdir)
    cbs = [StopOnNonFiniteLoss(batch_ids)]
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
