"""Data-parallel training with ``tf.distribute``: one GPU, several GPUs, several hosts, TPUs.

:func:`make_strategy` builds TensorFlow's own strategies by name:

=================  ===========================================================================
``default``        the current (default) strategy: one device, no replication.
``mirrored``       ``tf.distribute.MirroredStrategy``: every local GPU (or ``devices``) of one
                   host, gradients all-reduced each step.
``multi_worker``   ``tf.distribute.MultiWorkerMirroredStrategy``: the hosts listed in the
                   ``TF_CONFIG`` environment variable, each with its local devices.
``tpu``            ``tf.distribute.TPUStrategy`` on a Cloud TPU / Colab TPU (``tpu="local"`` on
                   a TPU VM, or a TPU name / ``grpc://`` address).
=================  ===========================================================================

Conventions used by :func:`deeplab_tf.training.train` under a strategy:

- ``train.batch_size`` is the *global* batch of one micro-batch; each replica gets
  ``batch_size / num_replicas_in_sync`` (:func:`per_replica_batch_size` refuses a remainder).
  The paper's batch 10 is ``batch_size * accumulation_steps`` summed over all replicas.
- The optimizer's step counter is a mirrored variable incremented once per *global* update, so
  the poly schedule and gradient accumulation count global steps.
- Only the chief writes into the run directory; the other workers write the same files into a
  hidden per-worker temporary directory (:func:`worker_dir`) that is deleted right after, so
  every worker runs the same collective reads and nobody overwrites the chief's files.

Paper: Sec. 4.1.2, Table 2 (batch 10, 20k updates; 321x321 crops in the release).
"""

from __future__ import annotations

import json
import os
import shutil

#: Strategy names accepted by :func:`make_strategy` and ``deeplab-tf train --strategy``.
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
COMMUNICATIONS = ("auto", "ring", "nccl")


def make_strategy(
    name: str = "default",
    devices=None,
    tpu: str | None = None,
    communication: str = "auto",
):
    """Builds a ``tf.distribute.Strategy`` by name.

    Create it before anything else touches TensorFlow (datasets, tensors, models): multi-worker
    collectives and TPU systems must be configured when the runtime starts.

    Args:
        name: one of :data:`STRATEGIES`.
        devices: ``mirrored`` only: device names (default: all local GPUs, else the CPU).
        tpu: ``tpu`` only: ``"local"`` (TPU VM, Colab TPU runtime), a TPU name or a
            ``grpc://host:8470`` address; ``None`` reads the ``TPU_NAME`` environment variable.
        communication: ``multi_worker`` only: collective implementation, ``"auto"``, ``"ring"``
            (gRPC, works on CPUs) or ``"nccl"`` (GPUs).

    Returns:
        The strategy.

    Raises:
        ValueError: an unknown name or communication, or no TPU found, saying what was received.
        RuntimeError: ``multi_worker``/``tpu`` requested after TensorFlow was initialised.

    Example:
        >>> strategy = make_strategy("mirrored")          # all local GPUs
        >>> model, history = train(config, strategy=strategy)
    """
    import tensorflow as tf

    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}. Received: strategy={name!r}")
    if devices is not None and name != "mirrored":
        raise ValueError(
            f"devices is only used by strategy='mirrored'. Received: strategy={name!r}, "
            f"devices={devices!r}"
        )
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=list(devices) if devices else None)
    if name == "multi_worker":
        if communication not in COMMUNICATIONS:
            raise ValueError(
                f"communication must be one of {COMMUNICATIONS}. "
                f"Received: communication={communication!r}"
            )
        impl = {
            "auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
            "ring": tf.distribute.experimental.CommunicationImplementation.RING,
            "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL,
        }[communication]
        tf_config = os.environ.get("TF_CONFIG")
        if tf_config:
            try:
                json.loads(tf_config)
            except ValueError as err:
                raise ValueError(
                    f"TF_CONFIG must be JSON ({err}). Received: TF_CONFIG={tf_config!r}"
                ) from None
        try:
            return tf.distribute.MultiWorkerMirroredStrategy(
                communication_options=tf.distribute.experimental.CommunicationOptions(
                    implementation=impl
                )
            )
        except RuntimeError as err:
            raise RuntimeError(
                "strategy='multi_worker' must be created before TensorFlow runs anything "
                "(datasets, tensors, models): create it first, then pass it to "
                f"train(config, strategy=...). TensorFlow said: {err}"
            ) from None
    return _make_tpu_strategy(tpu)


def _make_tpu_strategy(tpu):
    import tensorflow as tf

    where = tpu if tpu is not None else os.environ.get("TPU_NAME")
    hint = (
        "On a Cloud TPU VM or a Colab TPU runtime pass tpu='local' (--tpu local); for a TPU node "
        "pass its name or grpc://IP:8470."
    )
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        if resolver.master() not in ("", "local"):
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as err:
        raise ValueError(
            f"strategy='tpu' found no usable TPU ({type(err).__name__}: {err}). {hint} "
            f"Received: tpu={where!r}"
        ) from None
    if not tf.config.list_logical_devices("TPU"):
        raise ValueError(f"strategy='tpu' found no TPU devices. {hint} Received: tpu={where!r}")
    return tf.distribute.TPUStrategy(resolver)


def resolve_strategy(strategy=None, **kwargs):
    """A strategy object from ``None`` (the current one), a name or a strategy (returned as is)."""
    import tensorflow as tf

    if strategy is None:
        return tf.distribute.get_strategy()
    if isinstance(strategy, str):
        return make_strategy(strategy, **kwargs)
    if isinstance(strategy, tf.distribute.Strategy):
        return strategy
    raise ValueError(
        f"strategy must be a name in {STRATEGIES} or a tf.distribute.Strategy. "
        f"Received: {type(strategy).__name__}"
    )


def strategy_name(strategy) -> str:
    """``default``, ``mirrored``, ``multi_worker``, ``tpu`` or the class name."""
    import tensorflow as tf

    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "multi_worker"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return "mirrored"
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "tpu"
    if strategy is tf.distribute.get_strategy() and not tf.distribute.has_strategy():
        return "default"
    return type(strategy).__name__


def per_replica_batch_size(global_batch_size: int, num_replicas: int) -> int:
    """``global_batch_size / num_replicas``, refusing a remainder.

    Args:
        global_batch_size: examples per (micro-)batch summed over all replicas.
        num_replicas: ``strategy.num_replicas_in_sync``.

    Returns:
        Examples per replica.

    Raises:
        ValueError: not divisible, with the nearest workable settings.

    Example:
        >>> per_replica_batch_size(10, 2)
        5
    """
    if not isinstance(num_replicas, int) or num_replicas < 1:
        raise ValueError(f"num_replicas must be a positive int. Received: {num_replicas!r}")
    if global_batch_size % num_replicas:
        raise ValueError(
            f"train.batch_size (the global batch) must be divisible by the number of replicas "
            f"({num_replicas}) so that every replica gets the same number of examples. "
            f"Received: batch_size={global_batch_size}. Use a multiple of {num_replicas} (e.g. "
            f"{num_replicas * max(1, global_batch_size // num_replicas)}), or keep the effective "
            "batch with train.accumulation_steps (batch_size * accumulation_steps = effective)."
        )
    return global_batch_size // num_replicas


def task_info(strategy=None) -> tuple[str | None, int | None]:
    """``(task_type, task_id)`` of this process in a multi-worker cluster, ``(None, None)`` else."""
    strategy = resolve_strategy(strategy)
    resolver = getattr(strategy, "cluster_resolver", None)
    extended = getattr(strategy, "extended", None)
    multi = getattr(extended, "_in_multi_worker_mode", None)
    if resolver is None or multi is None or not multi():
        return None, None
    return resolver.task_type, resolver.task_id


def num_workers(strategy=None) -> int:
    """How many worker processes take part (1 unless multi-worker)."""
    strategy = resolve_strategy(strategy)
    task_type, _ = task_info(strategy)
    if task_type is None:
        return 1
    spec = strategy.cluster_resolver.cluster_spec().as_dict()
    return len(spec.get("worker", [])) + len(spec.get("chief", []))


def is_chief(strategy=None) -> bool:
    """Whether this process writes the run's files: the ``chief`` task, else worker 0."""
    strategy = resolve_strategy(strategy)
    task_type, task_id = task_info(strategy)
    if task_type is None:
        return True
    spec = strategy.cluster_resolver.cluster_spec().as_dict()
    if task_type == "chief":
        return True
    return task_type == "worker" and task_id == 0 and "chief" not in spec


def worker_dir(path: str, strategy=None) -> str:
    """Where this worker writes ``path``: ``path`` itself on the chief, else a temporary sibling.

    Non-chief workers must still *run* every save (saving reads variables with collectives), so
    they write to ``{parent}/.{name}-{task}{id}-tmp`` and delete it (:func:`remove_worker_dir`).
    """
    strategy = resolve_strategy(strategy)
    if is_chief(strategy):
        return str(path)
    task_type, task_id = task_info(strategy)
    path = os.path.normpath(str(path))
    return os.path.join(
        os.path.dirname(path), f".{os.path.basename(path)}-{task_type}{task_id}-tmp"
    )


def remove_worker_dir(path: str, strategy=None) -> None:
    """Deletes a non-chief worker's temporary directory (no-op on the chief)."""
    strategy = resolve_strategy(strategy)
    if not is_chief(strategy):
        shutil.rmtree(worker_dir(path, strategy), ignore_errors=True)


def shard_by_data(dataset):
    """Sets ``AutoShardPolicy.DATA``: each worker computes the same global batches and keeps its
    replicas' slices, so the examples of global batch ``k`` do not depend on the number of
    workers (the input pipeline must be deterministic: set ``train.seed``)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def fit(model, strategy, data, **kwargs):
    """``model.fit(data, **kwargs)`` under ``strategy``, working around Keras 3 issues.

    Before the first step Keras 3.x's TensorFlow trainer builds a distributed model from a batch
    of a *new* iterator over ``data``. That costs a batch of input work, shifts a seeded
    pipeline's shuffle order (``reshuffle_each_iteration`` draws a new order per iterator, so a
    strategy run would not see the batches a single-device run sees), and with
    ``MultiWorkerMirroredStrategy`` it fails outright ("Attempt to convert a value
    (PerReplica...)", keras-team/keras#20585). Here the model, loss, metrics and optimizer are
    built in the strategy's scope from ``data.element_spec`` instead, and ``fit`` runs inside
    ``strategy.scope()``, where Keras picks the strategy up. Multi-worker runs also fail when
    Keras averages each step's scalar logs across workers with ``axis=0`` ("Invalid reduction
    dimension 0 for input with 0 dimensions"), so their train/test steps return those logs with
    shape ``(1,)``. Under the default strategy this is plain ``model.fit``.

    Args:
        model: a compiled ``keras.Model`` created under ``strategy.scope()``.
        strategy: the strategy.
        data: a batched ``tf.data.Dataset`` of ``(x, y)``.
        **kwargs: passed to ``model.fit``.

    Returns:
        The ``History``.
    """
    import tensorflow as tf

    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    if (
        not tf.distribute.has_strategy()
        and strategy is tf.distribute.get_strategy()
        or not hasattr(model, "_symbolic_build")
    ):
        return model.fit(data, **kwargs)

    def vector_logs(step):
        def wrapped(batch):
            logs = step(batch)
            if not isinstance(logs, dict):
                return logs
            return {
                k: tf.reshape(v, [1])
                if getattr(v, "shape", None) is not None and v.shape.rank == 0
                else v
                for k, v in logs.items()
            }

        return wrapped

    with strategy.scope():
        model._symbolic_build(data_batch=data.element_spec)
        saved = model._distribute_strategy
        model._distribute_strategy = None
        if multi_worker:
            model.train_step = vector_logs(model.train_step)
            model.test_step = vector_logs(model.test_step)
        try:
            return model.fit(data, **kwargs)
        finally:
            model._distribute_strategy = saved
            if multi_worker:
                del model.train_step, model.test_step
                model.train_function = model.test_function = None
