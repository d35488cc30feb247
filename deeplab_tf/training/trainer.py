"""End-to-end training from a config dict (what ``deeplab-tf train --config X.yaml`` runs).

A config has four sections; anything left out comes from the model's registry recipe::

    model:  {name: deeplabv2_resnet101_aspp_l, num_classes: 21, weights: imagenet,
             freeze_batchnorm: true}            # other keys go to DeepLabV2 (rates, dropout...)
    data:   {name: voc2012, root: /data/VOCdevkit,   # common loader keyword arguments
             train: {split: train_aug}, val: {split: val}}
    train:  {steps: 20000, batch_size: 10, accumulation_steps: 1, crop_size: 321,
             scales: [0.5, 0.75, 1, 1.25, 1.5], msc: true, msc_scales: [1, 0.75, 0.5],
             optimizer: caffe_sgd, base_lr: 2.5e-4, label_mode: nearest, seed: null}
    output: {workdir: runs/x, checkpoint_every: 1000, tensorboard: true, resume: true}
    distribute: {strategy: default, tpu: null, devices: null, communication: auto}

Under a ``tf.distribute`` strategy (``distribute.strategy`` or ``train(strategy=...)``, see
:mod:`deeplab_tf.training.distribute`) ``train.batch_size`` is the global batch of a
micro-batch, split evenly over the replicas.

A run's state lives in its workdir: ``run.json`` (``"status": "running"`` from the start,
``"finished"`` at the end), ``backup/`` (resume point, rewritten atomically every epoch),
``checkpoints/`` and, at the end, ``model.keras``. The end of a run is ordered so that every
instant has a complete state on disk: the last epoch's backup stays until ``model.keras`` is
in place and ``run.json`` says finished; only then is the backup deleted. A rerun resumes from
the backup (after the last epoch it only writes ``model.keras`` again), and a rerun of a
finished run changes nothing (:class:`RunFinished`) unless ``restart=True``.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import math
import os

from deeplab_tf.training.schema import SCHEMA, defaults, validate

#: The run record in a workdir.
RUN_FILE = "run.json"
MODEL_FILE = "model.keras"


class RunFinished(Exception):
    """The workdir holds a finished run; nothing was changed. ``str()`` says how to start anew."""


#: Section -> allowed keys (``data`` also takes its dataset's own options); see
#: :mod:`deeplab_tf.training.schema` for types, ranges and defaults.
SECTIONS = {section: set(fields) for section, fields in SCHEMA.items()}
OPTIMIZERS = SCHEMA["train"]["optimizer"].choices


def resolve_config(config: dict) -> dict:
    """Checks every value against the schema, then fills defaults from the registry recipe.

    The steps, all declared in :mod:`deeplab_tf.training.schema`: :func:`~.schema.validate`
    (every section, ``data`` with its dataset's own keys; all problems reported at once), the
    model name resolved and its recipe looked up, each section merged over its
    :func:`~.schema.defaults`, the result validated again (the recipe's values too), then the
    cross-key rules of :data:`CONFIG_RULES`. Reads no data and writes nothing.

    Raises:
        ValueError: unknown sections or keys, or invalid values, naming each key, what it
            must be and the value received.
    """
    from deeplab_tf.training.recipes import get_recipe, resolve_model_name

    validate(config)
    cfg = {section: dict(config.get(section) or {}) for section in SCHEMA}
    cfg["model"]["name"] = resolve_model_name(cfg["model"]["name"])
    recipe = get_recipe(cfg["model"]["name"])
    cfg = {section: {**defaults(section, recipe), **values} for section, values in cfg.items()}
    validate(cfg)
    for rule in CONFIG_RULES:
        rule(cfg)
    return cfg


def _checkpoint_interval(cfg: dict) -> None:
    """``output.checkpoint_every`` (capped at ``train.steps``) divides ``train.steps``."""
    train, out = cfg["train"], cfg["output"]
    every = min(out["checkpoint_every"], train["steps"])
    if train["steps"] % every:
        raise ValueError(
            "train.steps must be a multiple of output.checkpoint_every (epochs are checkpoint "
            f"intervals, so a resumed run ends exactly at train.steps). Received: "
            f"steps={train['steps']}, checkpoint_every={every}"
        )
    out["checkpoint_every"] = every


def _loss_keys(cfg: dict) -> None:
    """The class-imbalance keys of ``train`` that only make sense together."""
    train = cfg["train"]
    if train["class_weights"] is not None and train["class_weighting"] is not None:
        raise ValueError(
            "Set train.class_weights (explicit weights) or train.class_weighting (weights "
            "computed from the training labels), not both. Received: "
            f"class_weights={train['class_weights']!r}, "
            f"class_weighting={train['class_weighting']!r}"
        )
    if train["class_weight_examples"] is not None and train["class_weighting"] is None:
        raise ValueError(
            "train.class_weight_examples (examples counted for the label histogram) needs "
            "train.class_weighting. Received: "
            f"class_weight_examples={train['class_weight_examples']!r}, class_weighting=None"
        )
    if train["ohem"] == "threshold" and train["ohem_threshold"] is None:
        raise ValueError(
            "train.ohem: threshold needs train.ohem_threshold, a probability in (0, 1) (e.g. "
            "0.7). Received: ohem_threshold=None"
        )
    if train["ohem"] != "threshold" and train["ohem_threshold"] is not None:
        raise ValueError(
            "train.ohem_threshold is only used with train.ohem: threshold. Received: "
            f"ohem_threshold={train['ohem_threshold']!r}, ohem={train['ohem']!r}"
        )


#: Rules over the whole resolved config, run in order after the schema: each raises
#: ``ValueError`` or normalises its keys in place.
CONFIG_RULES = (_checkpoint_interval, _loss_keys)


def set_batchnorm_momentum(model, momentum: float) -> int:
    """Sets the moving-average momentum of the model's *trainable* BatchNorm layers.

    Keras's default 0.99 needs thousands of steps for the moving statistics to forget their
    initial values; short from-scratch runs (``freeze_batchnorm=False``) evaluate better with
    0.9. Frozen BatchNorm (the paper) is untouched.

    Returns:
        The number of layers changed.
    """
    import keras

    if not 0.0 <= float(momentum) < 1.0:
        raise ValueError(f"bn_momentum must be in [0, 1). Received: bn_momentum={momentum!r}")
    changed = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            layer.momentum = float(momentum)
            changed += 1
    return changed


def _check_labels(dataset, which, num_classes, ignore, max_examples):
    """The eager pre-check of the first ``max_examples`` examples; an empty dataset is an error
    (every example is also checked in the pipeline, see ``train_pipeline(num_classes=...)``)."""
    import tensorflow as tf

    from deeplab_tf.data.readers import DatasetError
    from deeplab_tf.training.pipeline import check_label_values

    try:
        check_label_values(dataset, num_classes, ignore, max_examples)
    except tf.errors.InvalidArgumentError as err:
        line = _dataset_error_line(err)
        if line is None:
            raise
        raise DatasetError(f"The {which} dataset: {line}") from None
    for _ in dataset.take(1):
        return
    raise ValueError(
        f"The {which} dataset is empty. Received: 0 examples; expected at least one (check "
        "data.root, the split and the list file)."
    )


def _dataset_error_line(err) -> str | None:
    """The message of a :class:`~deeplab_tf.data.readers.DatasetError` raised while decoding an
    example inside ``tf.data`` (it names the file), from the ``InvalidArgumentError`` that
    carries it; None for other errors."""
    marker = "DatasetError: "
    for line in err.message.splitlines():
        if marker in line:
            return line[line.index(marker) + len(marker) :].strip()
    return None


def load_split(data: dict, which: str):
    """``(dataset, info)`` for ``data[which]`` (``"train"``/``"val"``), ``None`` if absent."""
    if which not in data or data[which] is None:
        return None
    common = {k: v for k, v in data.items() if k not in ("name", "train", "val")}
    kwargs = {**common, **dict(data[which])}
    name = data["name"]
    if name == "synthetic":
        from deeplab_tf.data.synthetic import synthetic_dataset

        kwargs.setdefault("split", which)
        try:
            return synthetic_dataset(**kwargs)
        except TypeError as err:
            raise ValueError(
                f"Bad options for the synthetic dataset: {err}. Received: {kwargs!r}"
            ) from None
    from deeplab_tf.data import load_dataset

    result = load_dataset(name, **kwargs)
    if isinstance(result, tuple):
        return result
    return result, None


def run_status(workdir: str) -> dict | None:
    """The run record of a workdir (``{"status": "running" | "finished", ...}``), or None.

    A workdir from before run records that holds ``model.keras`` and no backup counts as
    finished (that is how such runs ended).
    """
    from deeplab_tf.training.callbacks import latest_backup

    path = os.path.join(workdir, RUN_FILE)
    if os.path.isfile(path):
        try:
            with open(path) as f:
                record = json.load(f)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"Cannot read the run record {path}: {err}. Expected the JSON that training "
                "writes; move it away (or pass restart) to train in this workdir."
            ) from None
        if isinstance(record, dict) and record.get("status") in ("running", "finished"):
            return record
        raise ValueError(
            f"{path} is not a run record (expected status 'running' or 'finished'). "
            f"Received: {str(record)[:80]}"
        )
    if os.path.isfile(os.path.join(workdir, MODEL_FILE)) and not latest_backup(
        os.path.join(workdir, "backup")
    ):
        return {"status": "finished", "legacy": True}
    return None


def _finished_message(workdir, record):
    steps = f"{record['steps']} steps, " if record.get("steps") else ""
    return (
        f"{workdir} holds a finished run ({steps}{os.path.join(workdir, MODEL_FILE)}); nothing "
        "was changed. To train again, pass another --workdir, or --restart to replace this run."
    )


def _write_run_record(workdir, status, cfg, **extra):
    from deeplab_tf import atomic

    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    record = {"status": status, "steps": cfg["train"]["steps"], "model": MODEL_FILE}
    record.update(extra)
    record[f"{status}_at"] = now
    record["config"] = cfg
    atomic.write_json(os.path.join(workdir, RUN_FILE), record, default=str)


def _restart(workdir):
    """Removes a previous run's resume state and checkpoints (``restart=True``)."""
    import glob

    from deeplab_tf.training.callbacks import discard_backup

    discard_backup(os.path.join(workdir, "backup"))
    for path in glob.glob(os.path.join(workdir, "checkpoints", "ckpt-*.weights.h5")):
        os.remove(path)


def train(config: dict, callbacks=None, dataset_overrides=None, strategy=None, restart=False):
    """Trains as the config says; returns ``(model, history)``.

    Validation happens before any training step: the config (unknown keys, bad values), the
    datasets' element spec (dtypes, ranks), that they are not empty and the label values of
    the first ``train.validate_examples`` examples (all when null); every later example is
    checked in the input pipeline, and a bad one stops the run with a ``ValueError`` naming it.
    A loss that becomes NaN or inf stops the run with a ``RuntimeError``; non-finite weights
    are never saved (not as ``model.keras``, a checkpoint or the resume backup).

    Under a ``tf.distribute`` strategy the model is built and compiled in ``strategy.scope()``,
    ``train.batch_size`` is the global batch (each replica gets ``batch_size / replicas``; a
    remainder is an error), the schedule and accumulation count global updates, and only the
    chief writes checkpoints, backups, logs and ``model.keras``. Multi-worker runs need
    ``train.seed`` (every worker computes the same global batches and keeps its slice). A
    restarted run resumes from the last backup and skips the input stream to the same batch.

    The stages, in order (nothing is written to the workdir before the model is compiled):
    :func:`resolve_run`, :func:`make_run_strategy`, :func:`load_data`,
    :func:`resolve_class_weights`, :func:`build_model` and :func:`compile_model` (in the
    strategy's scope), :func:`prepare_workdir`,
    :func:`input_pipelines`, :func:`fit_model` and :func:`finish_run`.

    Args:
        config: a config dict (see the module docstring); defaults from the registry recipe.
        callbacks: extra Keras callbacks.
        dataset_overrides: ``{"train": (ds, info), "val": (ds, info)}`` to use instead of
            loading ``data`` (for programmatic use and tests).
        strategy: a ``tf.distribute.Strategy`` or a name (``default``, ``mirrored``,
            ``multi_worker``, ``tpu``); ``None`` uses ``distribute.strategy`` of the config.
            Multi-worker and TPU strategies must be created before TensorFlow runs anything, so
            with ``dataset_overrides`` create the strategy first and pass the object.
        restart: train from scratch even if the workdir holds a finished or interrupted run
            (its backup and checkpoints are deleted; ``model.keras`` is replaced at the end).

    Returns:
        ``(trained keras.Model, keras.callbacks.History)``; the trained network (the wrapped one
        for MSC) is also saved to ``{workdir}/model.keras``.

    Raises:
        RunFinished: the workdir holds a finished run and ``restart`` is False; nothing was
            changed.

    Example:
        >>> strategy = make_strategy("mirrored")   # deeplab_tf.training.distribute
        >>> model, history = train(load_config("voc12_vgg16_largefov"), strategy=strategy)
    """
    from deeplab_tf.training.pipeline import BatchIdRecorder

    cfg, record = resolve_run(config, restart)
    strategy = make_run_strategy(cfg, strategy)
    data = load_data(cfg, dataset_overrides)
    class_weights = resolve_class_weights(cfg, data)
    with strategy.scope():
        net, model = build_model(cfg, data.num_classes)
        compile_model(model, cfg, data.num_classes, data.ignore, class_weights)
    prepare_workdir(cfg, record, restart, strategy)
    batch_ids = BatchIdRecorder()
    train_batches, val_batches = input_pipelines(cfg, data, net, strategy, batch_ids)
    history = fit_model(
        model,
        net,
        cfg,
        strategy,
        train_batches,
        val_batches,
        callbacks,
        batch_ids=batch_ids,
        class_names=data.class_names,
    )
    finish_run(cfg["output"]["workdir"], net, cfg, strategy)
    return model, history


def resolve_run(config: dict, restart: bool = False):
    """Stage 1: the resolved config and the workdir's run record (``None`` if there is none).

    Reads nothing but the config and ``run.json``, writes nothing. With ``restart`` the record
    is not read (the run is replaced).

    Raises:
        ValueError: a bad config (see :func:`resolve_config`) or an unreadable run record.
        RunFinished: the workdir holds a finished run and ``restart`` is False.
    """
    cfg = resolve_config(copy.deepcopy(config))
    workdir = cfg["output"]["workdir"]
    record = run_status(workdir) if os.path.isdir(workdir) and not restart else None
    if record is not None and record["status"] == "finished" and not restart:
        raise RunFinished(_finished_message(workdir, record))
    return cfg, record


def make_run_strategy(cfg: dict, strategy=None):
    """Stage 2: the ``tf.distribute`` strategy, checked against the training config.

    First of all: multi-worker and TPU strategies must exist before TensorFlow runs anything.

    Raises:
        ValueError: ``train.batch_size`` does not split over the replicas, a multi-worker run
            without ``train.seed``, or accumulation over several replicas without ``caffe_sgd``.
    """
    from deeplab_tf.training import distribute

    tcfg, dcfg = cfg["train"], cfg["distribute"]
    if strategy is None:
        strategy = distribute.make_strategy(
            dcfg["strategy"], dcfg["devices"], dcfg["tpu"], dcfg["communication"]
        )
    else:
        strategy = distribute.resolve_strategy(strategy)
    replicas = strategy.num_replicas_in_sync
    distribute.per_replica_batch_size(tcfg["batch_size"], replicas)
    workers = distribute.num_workers(strategy)
    if workers > 1 and tcfg["seed"] is None:
        raise ValueError(
            f"Multi-worker training ({workers} workers) needs train.seed: every worker computes "
            "the same shuffled global batches and keeps its replicas' slices. Received: seed=None"
        )
    if replicas > 1 and tcfg["accumulation_steps"] > 1 and tcfg["optimizer"] != "caffe_sgd":
        raise ValueError(
            "train.accumulation_steps > 1 with several replicas needs optimizer caffe_sgd "
            "(Keras's generic accumulation fails under tf.distribute). Received: "
            f"optimizer={tcfg['optimizer']!r}, accumulation_steps={tcfg['accumulation_steps']}, "
            f"replicas={replicas}"
        )
    return strategy


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """The checked datasets of a run (:func:`load_data`)."""

    train: object  #: the training ``tf.data.Dataset``
    val: object  #: the validation ``tf.data.Dataset`` or ``None``
    num_classes: int
    ignore: int  #: the label value that is ignored (255)
    class_names: tuple | None = None  #: from the dataset's info, when it has one


def _check_image_format(split, mcfg: dict, what: str) -> None:
    """The split's images have the model's ``input_channels``, and images that are not uint8
    go with a ``normalize`` model (``channel_mean`` / ``channel_std``); else a ValueError
    naming the file the split's format was read from."""
    ds, info = split
    fmt = getattr(info, "image_format", None)
    channels = ds.element_spec["image"].shape[-1]
    dtype = ds.element_spec["image"].dtype.name
    where = f" (read from {fmt.path})" if fmt is not None and fmt.path else ""
    expected = mcfg.get("input_channels") or 3
    if channels is not None and channels != expected:
        raise ValueError(
            f"{what}: the images have {channels} channel(s){where} but the model takes "
            f"{expected} (model.input_channels). Set model.input_channels: {channels} with "
            f"{channels} values each in model.channel_mean and model.channel_std."
        )
    normalize = mcfg.get("channel_mean") is not None or expected != 3
    if dtype != "uint8" and not normalize:
        raise ValueError(
            f"{what}: the images are {dtype}"
            + (f" (stored as {fmt.stored_dtype})" if fmt is not None and fmt.path else "")
            + f"{where}, not uint8 0..255: set model.channel_mean and model.channel_std (one "
            "value per channel, in the images' units) so that the model normalises them."
        )


def load_data(cfg: dict, dataset_overrides=None) -> TrainingData:
    """Stage 3: loads ``data.train`` and ``data.val`` (or takes ``dataset_overrides``), checked.

    The number of classes comes from ``model.num_classes`` or the dataset and must agree; the
    element spec, non-emptiness and the first ``train.validate_examples`` label maps of each
    split are checked here, before the model is built.

    Raises:
        ValueError: no training split, unknown or disagreeing number of classes, a bad element
            spec, an empty split or bad label values (naming the example).
    """
    from deeplab_tf.training.pipeline import check_element_spec

    mcfg, tcfg = cfg["model"], cfg["train"]
    overrides = dataset_overrides or {}
    train_split = overrides.get("train") or load_split(cfg["data"], "train")
    if train_split is None:
        raise ValueError("Config needs data.train (the training split). Received none.")
    val_split = overrides.get("val") or load_split(cfg["data"], "val")
    train_ds, info = train_split
    num_classes = mcfg.get("num_classes") or (info.num_classes if info is not None else None)
    if num_classes is None:
        raise ValueError("Set model.num_classes: the dataset does not say how many classes it has.")
    if info is not None and info.num_classes != num_classes:
        raise ValueError(
            f"model.num_classes={num_classes} but dataset {info.name!r} has "
            f"{info.num_classes} classes."
        )
    ignore = info.ignore_label if info is not None else 255
    check_element_spec(train_ds)
    _check_image_format(train_split, mcfg, "data.train")
    if val_split is not None:
        _check_image_format(val_split, mcfg, "data.val")
    _check_labels(train_ds, "training", num_classes, ignore, tcfg["validate_examples"])
    val_ds = None
    if val_split is not None:
        val_ds = val_split[0]
        check_element_spec(val_ds)
        _check_labels(val_ds, "validation", num_classes, ignore, tcfg["validate_examples"])
    names = info.class_names if info is not None else None
    return TrainingData(train_ds, val_ds, num_classes, ignore, names)


def resolve_class_weights(cfg: dict, data: TrainingData):
    """Stage 3b: the loss's per-class weights, or ``None`` (every class weighs 1).

    ``train.class_weights`` is checked against the number of classes;
    ``train.class_weighting`` computes them from the training split's label histogram
    (:func:`deeplab_tf.training.class_weights.compute_class_weights`, the first
    ``train.class_weight_examples`` examples, absent classes as ``train.class_weight_absent``
    says). The weights are logged.

    Raises:
        ValueError: weights of the wrong length, or classes without pixels under
            ``class_weight_absent: error`` (named).
    """
    import logging

    from deeplab_tf.training.class_weights import compute_class_weights
    from deeplab_tf.training.losses import check_class_weights

    tcfg = cfg["train"]
    if tcfg["class_weights"] is not None:
        try:
            return list(check_class_weights(tcfg["class_weights"], data.num_classes))
        except ValueError as err:
            raise ValueError(f"train.class_weights: {err}") from None
    if tcfg["class_weighting"] is None:
        return None
    try:
        weights = compute_class_weights(
            data.train,
            data.num_classes,
            tcfg["class_weighting"],
            data.ignore,
            tcfg["class_weight_examples"],
            tcfg["class_weight_absent"],
        )
    except ValueError as err:
        raise ValueError(
            f"train.class_weighting={tcfg['class_weighting']!r} on the training split: {err}"
        ) from None
    logging.getLogger("deeplab_tf.training").info(
        "class weights (%s): %s", tcfg["class_weighting"], [round(w, 4) for w in weights]
    )
    return weights


def build_model(cfg: dict, num_classes: int):
    """Stage 4 (in the strategy's scope): ``(net, model)``: the registry network and what is fit.

    ``model`` is ``net`` itself, or ``net`` wrapped in :class:`MultiScaleTraining` when
    ``train.msc``; ``train.bn_momentum`` is applied to the trainable BatchNorm layers.
    ``train.mixed_precision`` (``bfloat16`` / ``float16``) builds ``net`` with the
    ``mixed_*`` dtype policy (float32 variables); under ``float16`` Keras's ``compile`` wraps
    the optimizer in a ``LossScaleOptimizer`` (dynamic loss scaling).
    """
    from deeplab_tf.models.registry import create_model
    from deeplab_tf.training.msc import MultiScaleTraining

    mcfg, tcfg = cfg["model"], cfg["train"]
    build_kwargs = {k: v for k, v in mcfg.items() if k != "name"}
    build_kwargs["num_classes"] = num_classes
    if any(mcfg.get(k) is not None for k in ("channel_mean", "channel_std")) or (
        mcfg.get("input_channels") not in (None, 3)
    ):
        build_kwargs["preprocessing"] = "normalize"  # per-channel mean/std (input_channels)
    if tcfg["mixed_precision"] != "none":
        build_kwargs["dtype"] = f"mixed_{tcfg['mixed_precision']}"
    net = create_model(mcfg["name"], **build_kwargs)
    if tcfg["bn_momentum"] is not None:
        set_batchnorm_momentum(net, tcfg["bn_momentum"])
    model = MultiScaleTraining(net, tcfg["msc_scales"]) if tcfg["msc"] else net
    return net, model


def make_optimizer(tcfg: dict):
    """The optimizer of ``train.optimizer`` on the poly schedule.

    ``caffe_sgd``: :class:`CaffeSGD`, whose schedule counts applied updates. ``adam``: Keras
    schedules see micro-batches, so the curve is stretched by the accumulation factor.
    """
    import keras

    from deeplab_tf.training.optimizer import CaffeSGD, PolyDecay

    accum = tcfg["accumulation_steps"]
    if tcfg["optimizer"] == "caffe_sgd":
        return CaffeSGD(
            PolyDecay(tcfg["base_lr"], tcfg["steps"], tcfg["power"]),
            momentum=tcfg["momentum"],
            weight_decay=tcfg["weight_decay"],
            lr_mult=tcfg["lr_mult"],
            gradient_accumulation_steps=accum if accum > 1 else None,
        )
    return keras.optimizers.Adam(
        PolyDecay(tcfg["base_lr"], tcfg["steps"] * accum, tcfg["power"]),
        gradient_accumulation_steps=accum if accum > 1 else None,
    )


def make_loss(tcfg: dict, ignore: int, class_weights=None, stride: int = 8):
    """The :class:`DeepLabLoss` of the ``train`` section: label mode, class weights, OHEM;
    ``stride`` is the model's output stride (16 for an ``output_stride=16`` model:
    ``upsample_logits`` needs it)."""
    from deeplab_tf.training.losses import DeepLabLoss

    return DeepLabLoss(
        ignore_label=ignore,
        label_mode=tcfg["label_mode"],
        stride=stride,
        class_weights=class_weights,
        ohem=tcfg["ohem"],
        ohem_threshold=tcfg["ohem_threshold"],
        ohem_min_kept=tcfg["ohem_min_kept"],
    )


def compile_model(model, cfg: dict, num_classes: int, ignore: int, class_weights=None) -> None:
    """Stage 5 (in the strategy's scope): optimizer (:func:`make_optimizer`), loss
    (:func:`make_loss`, with the weights of :func:`resolve_class_weights`) and metric."""
    from deeplab_tf.models.deeplab import output_stride_of
    from deeplab_tf.training.metrics import MeanIoU

    tcfg = cfg["train"]
    model.compile(
        optimizer=make_optimizer(tcfg),
        loss=make_loss(tcfg, ignore, class_weights, stride=output_stride_of(model)),
        metrics=[MeanIoU(num_classes, ignore_label=ignore)],
    )


def prepare_workdir(cfg: dict, record, restart: bool, strategy) -> None:
    """Stage 6 (chief only): creates the workdir and starts the run record.

    Removes stale temporary files of killed runs; with ``restart`` deletes the previous run's
    backup and checkpoints; writes ``run.json`` as running unless an interrupted run's record
    is already there (that run is resumed).
    """
    from deeplab_tf import atomic
    from deeplab_tf.training import distribute

    if not distribute.is_chief(strategy):
        return
    workdir = cfg["output"]["workdir"]
    os.makedirs(workdir, exist_ok=True)
    atomic.remove_stale_temps(workdir)
    if restart:
        _restart(workdir)
    if restart or record is None:
        _write_run_record(workdir, "running", cfg)


def input_pipelines(cfg: dict, data: TrainingData, net, strategy, batch_ids=None):
    """Stage 7: ``(train_batches, val_batches)`` (``val_batches`` ``None`` without ``data.val``).

    The image mean follows the network's preprocessing. With ``batch_ids`` (a
    :class:`~deeplab_tf.training.pipeline.BatchIdRecorder`) the training pipeline records each
    batch's example ids, so a non-finite loss can name them. A resumed run with ``train.seed``
    starts the (seeded) training stream at the first batch of the epoch to redo; multi-worker
    runs keep each worker's slice of the global batches.
    """
    from deeplab_tf.models.deeplab import deeplab_config
    from deeplab_tf.training import distribute
    from deeplab_tf.training.callbacks import backup_epoch
    from deeplab_tf.training.pipeline import CAFFE_RGB_MEAN, eval_pipeline, train_pipeline

    tcfg, vcfg, ocfg = cfg["train"], cfg["val"], cfg["output"]
    ignore, num_classes = data.ignore, data.num_classes
    workers = distribute.num_workers(strategy)
    net_config = deeplab_config(net)  # the model's own description
    if net_config["preprocessing"] == "normalize":
        mean = tuple(net_config["channel_mean"])  # padding becomes 0 after normalisation
    elif net_config["preprocessing"] == "caffe":
        mean = CAFFE_RGB_MEAN
    else:
        mean = (127.5, 127.5, 127.5)
    start_batch = 0
    if ocfg["resume"] and tcfg["seed"] is not None:
        backup = os.path.join(ocfg["workdir"], "backup")
        start_batch = backup_epoch(backup) * ocfg["checkpoint_every"] * tcfg["accumulation_steps"]
    train_batches = train_pipeline(
        data.train,
        tcfg["crop_size"],
        tcfg["batch_size"],
        tcfg["scales"],
        mean,
        ignore,
        tcfg["flip"],
        tcfg["shuffle_buffer"],
        repeat=True,
        seed=tcfg["seed"],
        num_classes=num_classes,
        start_batch=start_batch,
        batch_ids=batch_ids,
    )
    if workers > 1:
        train_batches = distribute.shard_by_data(train_batches)
    val_batches = None
    if data.val is not None:
        vds = data.val if vcfg["max_examples"] is None else data.val.take(vcfg["max_examples"])
        val_batches = eval_pipeline(
            vds,
            vcfg["crop_size"],
            vcfg["batch_size"],
            mean,
            ignore,
            num_classes,
            drop_remainder=distribute.strategy_name(strategy) == "tpu",
        )
        if workers > 1:
            val_batches = distribute.shard_by_data(val_batches)
    return train_batches, val_batches


def fit_model(
    model,
    net,
    cfg: dict,
    strategy,
    train_batches,
    val_batches,
    callbacks=None,
    batch_ids=None,
    class_names=None,
):
    """Stage 8: ``model.fit`` (through :func:`distribute.fit`) with the run's callbacks.

    One epoch is ``output.checkpoint_every`` updates (checkpoint, resume backup); a resumed
    run restores its backup in the callbacks and runs only the epochs left. With validation
    data and ``val.zero_iou_patience`` a :class:`~deeplab_tf.training.callbacks.ZeroIoUMonitor`
    warns about classes whose IoU stays 0.

    Args:
        batch_ids: the training pipeline's :class:`~deeplab_tf.training.pipeline.
            BatchIdRecorder` (names the batch of a non-finite loss), or ``None``.
        class_names: class names for the zero-IoU warning.

    Returns:
        The ``keras.callbacks.History``.

    Raises:
        ValueError: a training example failed the in-pipeline check (named, with the step).
        RuntimeError: the loss or the weights became non-finite (naming the step, the batch's
            example ids when recorded, and the last good checkpoint); nothing diverged was
            saved.
    """
    import keras
    import tensorflow as tf

    from deeplab_tf.training import distribute
    from deeplab_tf.training.callbacks import (
        StopOnNonFiniteLoss,
        ZeroIoUMonitor,
        list_checkpoints,
        training_callbacks,
        weights_finite,
    )
    from deeplab_tf.training.pipeline import BAD_EXAMPLE

    tcfg, ocfg = cfg["train"], cfg["output"]
    workdir, every = ocfg["workdir"], ocfg["checkpoint_every"]
    os.makedirs(workdir, exist_ok=True)
    cbs = training_callbacks(
        workdir,
        ocfg["tensorboard"],
        True,
        ocfg["resume"],
        ocfg["max_to_keep"],
        net,
        strategy,
        keep_backup=True,
        batch_ids=batch_ids,
    )
    if val_batches is not None and cfg["val"]["zero_iou_patience"] is not None:
        cbs.append(ZeroIoUMonitor(cfg["val"]["zero_iou_patience"], class_names))
    try:
        history = distribute.fit(
            model,
            strategy,
            train_batches,
            epochs=math.ceil(tcfg["steps"] / every),
            steps_per_epoch=every * tcfg["accumulation_steps"],
            validation_data=val_batches,
            callbacks=cbs + list(callbacks or []),
            verbose=tcfg["verbose"],
            shuffle=False,
        )
    except tf.errors.InvalidArgumentError as err:
        decoding = _dataset_error_line(err)
        if decoding is not None:  # a file that cannot be used, met after the pre-check
            raise ValueError(
                f"{decoding} Training stopped at step "
                f"{int(keras.ops.convert_to_numpy(model.optimizer.iterations))}; nothing was "
                "saved over the last checkpoint (deeplab-tf data check lists every bad file)."
            ) from None
        if BAD_EXAMPLE not in err.message:
            raise
        line = next(x for x in err.message.splitlines() if BAD_EXAMPLE in x)
        line = line[line.index(BAD_EXAMPLE) :].split(" [[")[0].replace('\\"', '"')
        line = line[:-1] if line.endswith("]") else line  # tf.debugging.Assert's bracket
        raise ValueError(
            f"{line}. Training stopped at step "
            f"{int(keras.ops.convert_to_numpy(model.optimizer.iterations))}; nothing was saved "
            "over the last checkpoint. Fix or remove that example (deeplab-tf data check lists "
            "every bad one)."
        ) from None
    guard = next(cb for cb in cbs if isinstance(cb, StopOnNonFiniteLoss))
    if guard.failure is not None or not weights_finite(net):
        step, loss = guard.failure or ("?", float("nan"))
        if guard.failure_ids:
            batch = f"; the batch's examples: {guard.failure_ids}"
        elif guard.failure is not None:
            batch = "; the batch's example ids are unknown (the dataset has no 'id')"
        else:
            batch = ""
        good = list_checkpoints(os.path.join(workdir, "checkpoints"))
        last = (
            f"the last good checkpoint is {good[-1]}"
            if good
            else "no checkpoint was written before (the first interval did not finish)"
        )
        raise RuntimeError(
            f"Training stopped: the loss became non-finite (loss={loss}) at step {step}{batch}. "
            f"Received: train.base_lr={tcfg['base_lr']!r}, optimizer={tcfg['optimizer']!r}; "
            f"expected a finite loss. Nothing was saved from the diverged weights: {last} "
            "(model.keras and the resume backup keep their last finite state too); lower "
            "train.base_lr or check the data."
        )
    return history


def finish_run(workdir, net, cfg, strategy=None):
    """Stage 9: ends a run in an order that leaves a complete state on disk at every instant.

    1. ``model.keras`` is written to a temporary file and renamed into place (a kill leaves
       the last epoch's backup, and the rerun writes it again);
    2. ``run.json`` is rewritten as finished (a kill before leaves a resumable run whose
       rerun only re-saves the model);
    3. the backup is deleted (a kill during the deletion leaves a finished run).

    Every worker saves the model (saving may read variables with collectives); only the
    chief's file is kept.
    """
    from deeplab_tf import atomic
    from deeplab_tf.training import distribute
    from deeplab_tf.training.callbacks import discard_backup

    if not distribute.is_chief(strategy):
        target = distribute.worker_dir(workdir, strategy)
        os.makedirs(target, exist_ok=True)
        net.save(os.path.join(target, MODEL_FILE))
        distribute.remove_worker_dir(workdir, strategy)
        return
    atomic.atomic_write(os.path.join(workdir, MODEL_FILE), net.save)
    _write_run_record(workdir, "finished", cfg)
    discard_backup(os.path.join(workdir, "backup"))
