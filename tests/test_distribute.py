"""tf.distribute training on CPU: MirroredStrategy on two logical CPUs and two
MultiWorkerMirroredStrategy worker processes on 127.0.0.1 equal single-device training; a killed
worker's job resumes from the chief's backup and finishes at the right step.

The trainings run in subprocesses (tests/_distribute_worker.py): collectives and logical devices
must be configured before TensorFlow starts. Every child runs in its own process group and is
killed in ``finally`` blocks; each wait has a timeout.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_distribute_worker.py"
REPO = HERE.parent
TIMEOUT = 480  # seconds per phase: generous, the cores are shared


# === Child processes ===


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tf_config(ports, index):
    return json.dumps(
        {
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
            "task": {"type": "worker", "index": index},
        }
    )


def _start(args, log, tf_config=None, extra_env=None):
    env = dict(os.environ, **(extra_env or {}))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = tf_config
    out = open(log, "w")
    try:
        return subprocess.Popen(
            [sys.executable, str(WORKER), *map(str, args)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(REPO),
            start_new_session=True,  # its own process group: killpg takes everything it spawned
        )
    finally:
        out.close()


def _kill(proc):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def _tail(log, n=3000):
    try:
        return Path(log).read_text()[-n:]
    except OSError:
        return "<no log>"


def _wait(procs_logs, timeout=TIMEOUT):
    """Waits for all; returns exit codes. Kills everything and fails on timeout."""
    deadline = time.monotonic() + timeout
    codes = []
    for proc, log in procs_logs:
        try:
            codes.append(proc.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for p, _ in procs_logs:
                _kill(p)
            pytest.fail(f"worker timed out after {timeout}s; log tail:\n{_tail(log)}")
    return codes


def _start_workers(procs, tmp_path, tag, workdir, weights, extra=None):
    """Starts two ``multi_worker`` processes on free local ports (TF_CONFIG), appending
    ``(process, log)`` to ``procs`` as they start (so a caller's ``finally`` kills every one);
    worker ``i`` logs to ``{tag}{i}.log`` and writes ``{tag}{i}.npz``. ``extra``: ``{i: args}``."""
    ports = _free_ports(2)
    for i in range(2):
        log = tmp_path / f"{tag}{i}.log"
        args = ["--mode", "multi_worker", "--workdir", workdir, "--out", tmp_path / f"{tag}{i}.npz"]
        args += ["--weights", weights, *(extra or {}).get(i, [])]
        procs.append((_start(args, log, _tf_config(ports, i)), log))


def _run_workers(tmp_path, tag, workdir, weights):
    """Runs two workers to completion; returns their loaded ``.npz`` results."""
    procs = []
    try:
        _start_workers(procs, tmp_path, tag, workdir, weights)
        codes = _wait(procs)
    finally:
        for p, _ in procs:
            _kill(p)
    assert codes == [0, 0], "\n".join(_tail(log) for _, log in procs)
    return [np.load(tmp_path / f"{tag}{i}.npz") for i in range(2)]


def _weights(npz, prefix):
    keys = sorted(
        (k for k in npz.files if k.startswith(prefix + "w")),
        key=lambda k: int(k[len(prefix) + 1 :]),
    )
    return [npz[k] for k in keys]


def _assert_same_weights(a, b, atol=1e-5):
    assert len(a) == len(b) and len(a) > 100
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=atol)


def _hidden_entries(*dirs):
    return [os.path.join(d, f) for d in dirs for f in os.listdir(d) if f.startswith(".")]


# === The single-device reference (started once, in the background) ===


def _write_start_weights(path):
    import keras

    from deeplab_tf.models.registry import create_model

    keras.utils.set_random_seed(0)
    net = create_model("deeplabv2_mobilenetv2_aspp_l", head="aspp", rates=[1, 2], num_classes=3)
    net.save_weights(str(path))
    keras.backend.clear_session()


class _Background:
    """A worker process started now and awaited (once) when its result is needed."""

    def __init__(self, tmp, mode, *extra, extra_env=None):
        self.out = tmp / f"{mode}.npz"
        self.log = tmp / f"{mode}.log"
        args = ["--mode", mode, "--workdir", tmp / "runs", "--out", self.out, *extra]
        self.proc = _start(args, self.log, extra_env=extra_env)
        self._result = None

    def result(self):
        if self._result is None:
            (code,) = _wait([(self.proc, self.log)])
            assert code == 0, _tail(self.log)
            self._result = np.load(self.out)
        return self._result


@pytest.fixture(scope="module")
def drift(tmp_path_factory):
    """The worker's ``drift`` mode (3 updates), started in the background."""
    # TensorFlow's own CPU kernels: where oneDNN is on (AVX-512 machines), it picks its
    # convolution algorithm by batch shape, so a replica's half batch runs different kernels than
    # the whole batch on one device. That is more than a change of summation order: measured on
    # an AVX-512/AMX machine, mirrored drifted 16-42x the swapped-halves drift with oneDNN on and
    # within 5x with it off (the run this test compares against).
    bg = _Background(
        tmp_path_factory.mktemp("drift"),
        "drift",
        "--steps",
        3,
        extra_env={"TF_ENABLE_ONEDNN_OPTS": "0"},
    )
    try:
        yield bg
    finally:
        _kill(bg.proc)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, drift):
    """Default strategy and MirroredStrategy (2 logical CPUs) runs of the same config.

    All runs start from the same random weights file. Started when the module's first test asks
    for it and left running in the background (with the ``drift`` runs), so the multi-worker
    tests' workers train at the same time.

    With this random MobileNetV2 and its frozen identity BatchNorm the backbone's gradients are
    ~1e-12, so these runs compare mostly the classifier, and they match to ~1e-7: the exact
    checks of batches, step counts and files. The whole backbone learns in the ``drift`` runs.
    """
    tmp = tmp_path_factory.mktemp("mirrored")
    weights = tmp / "start.weights.h5"
    _write_start_weights(weights)
    bg = _Background(tmp, "mirrored", "--weights", weights)
    bg.weights = weights
    try:
        yield bg
    finally:
        _kill(bg.proc)


# === Tests ===


@pytest.mark.large
@pytest.mark.multiprocess
def test_multi_worker_matches_single_device(reference, tmp_path):
    """Two workers (1 CPU replica each), global batch 4 x 2 accumulated, 4 updates, seed 3."""
    workdir = tmp_path / "run"
    w0, w1 = _run_workers(tmp_path, "w", workdir, reference.weights)
    ref = reference.result()
    assert int(w0["replicas"]) == 2
    assert int(w0["step"]) == int(w1["step"]) == int(ref["ref_step"]) == 4
    assert int(w0["batches"]) == 8  # 4 updates x 2 accumulated micro-batches
    # Both workers hold the very same weights...
    for a, b in zip(_weights(w0, ""), _weights(w1, "")):
        np.testing.assert_array_equal(a, b)
    # ... which equal one device training on the same global batches.
    _assert_same_weights(_weights(w0, ""), _weights(ref, "ref_"))
    np.testing.assert_allclose(w0["loss"], ref["ref_loss"], rtol=1e-5)
    assert float(ref["ref_moved"]) > 1e-2  # training really changed the weights
    assert not np.allclose(w0["loss"][0], w0["loss"][1])
    # Only the chief wrote files: checkpoints, final model; no worker scratch left anywhere.
    ckpts = sorted(os.listdir(workdir / "checkpoints"))
    assert ckpts == ["ckpt-000002.weights.h5", "ckpt-000004.weights.h5"]
    assert (workdir / "model.keras").is_file()
    assert not (workdir / "backup").exists()
    assert _hidden_entries(workdir, tmp_path, workdir / "checkpoints") == []


@pytest.mark.large
@pytest.mark.multiprocess
def test_mirrored_two_logical_cpus_matches_single_device(reference):
    ref = reference.result()
    assert int(ref["dist_replicas"]) == 2
    assert int(ref["dist_step"]) == int(ref["ref_step"]) == 4
    assert int(ref["dist_batches"]) == int(ref["ref_batches"]) == 8
    _assert_same_weights(_weights(ref, "dist_"), _weights(ref, "ref_"))
    np.testing.assert_allclose(ref["dist_loss"], ref["ref_loss"], rtol=1e-5)
    assert float(ref["dist_moved"]) > 1e-2
    err = str(ref["batch_error"])
    assert "must be divisible by the number of replicas (2)" in err
    assert "Received: batch_size=3" in err


@pytest.mark.large
@pytest.mark.multiprocess
def test_mirrored_drift_is_rounding_amplified_by_training(drift):
    """With the whole backbone learning (BatchNorm statistics fitted to the data), MirroredStrategy
    drifts from one device over a few updates exactly as much as one device does when only the
    float summation order changes (the two halves of every batch swapped): the training of this
    chaotic random network amplifies rounding differences ~300x at the second update. A
    distribution bug (loss normalisation, accumulation, momentum, step counter, data order) would
    show at update 1 or make the mirrored drift far larger than the reordered one from update 2
    on (docs/distributed.md)."""
    d = drift.result()
    moved, swap, dist = d["moved"], d["swap"], d["dist"]
    assert len(moved) == len(swap) == len(dist) == 3
    assert np.all(d["stem_moved"] > 1e-2)  # the first convolution learns too
    # Update 1: float rounding only (relative to how far the update moved the weights).
    assert 0 < swap[0] < 1e-5 and 0 < dist[0] < 1e-5
    # The training amplifies it: by update 3 the reordered run is >= 1000x further away.
    assert swap[2] > 1e3 * swap[0] and dist[2] > 1e3 * dist[0]
    # The mirrored run drifts like the reordered single-device run, update by update.
    np.testing.assert_array_less(dist[1:], 5 * swap[1:])
    np.testing.assert_array_less(swap[1:], 5 * dist[1:])


@pytest.mark.large
@pytest.mark.multiprocess
def test_killed_worker_resumes_from_chief_backup(reference, tmp_path):
    """Worker 1 dies (os._exit) in the second epoch; the job is restarted and finishes."""
    workdir = tmp_path / "run"
    procs = []
    try:
        dies = {1: ["--exit-after-batches", 6]}  # epoch 1 = 4 micro-batches; dies in epoch 2
        _start_workers(procs, tmp_path, "k", workdir, reference.weights, dies)
        (code1,) = _wait([procs[1]])
        assert code1 == 3, _tail(procs[1][1])
        # The chief now waits in a collective for its dead peer (or fails): like a cluster
        # manager, stop it and restart the whole job.
        assert procs[0][0].poll() in (None, 1), _tail(procs[0][1])
    finally:
        for p, _ in procs:
            _kill(p)
    assert not (tmp_path / "k0.npz").exists() and not (tmp_path / "k1.npz").exists()
    meta = json.loads((workdir / "backup" / "training_metadata.json").read_text())
    assert meta["epoch"] == 1 and meta["step"] == 2
    assert os.listdir(workdir / "checkpoints") == ["ckpt-000002.weights.h5"]

    r0, r1 = _run_workers(tmp_path, "r", workdir, reference.weights)
    for r in (r0, r1):
        assert int(r["step"]) == 4  # the right final step count...
        assert int(r["batches"]) == 4  # ...after redoing only epoch 2 (2 updates x 2)
    for a, b in zip(_weights(r0, ""), _weights(r1, "")):
        np.testing.assert_array_equal(a, b)
    # The input stream resumed at epoch 2's first batch: same result as never being killed.
    _assert_same_weights(_weights(r0, ""), _weights(reference.result(), "ref_"))
    assert sorted(os.listdir(workdir / "checkpoints")) == [
        "ckpt-000002.weights.h5",
        "ckpt-000004.weights.h5",
    ]
    assert not (workdir / "backup").exists()
    assert _hidden_entries(workdir, tmp_path, workdir / "checkpoints") == []


# === In-process checks (no strategy needed) ===


def test_per_replica_batch_size():
    from deeplab_tf.training import per_replica_batch_size

    assert per_replica_batch_size(10, 2) == 5  # the paper's batch on 2 GPUs
    assert per_replica_batch_size(10, 1) == 10
    assert per_replica_batch_size(8, 4) == 2
    with pytest.raises(
        ValueError,
        match=r"divisible by the number of replicas \(4\).*"
        r"Received: batch_size=10",
    ):
        per_replica_batch_size(10, 4)
    with pytest.raises(ValueError, match="num_replicas must be a positive int"):
        per_replica_batch_size(10, 0)


def test_make_strategy_errors(monkeypatch):
    from deeplab_tf.training import make_strategy

    with pytest.raises(ValueError, match=r"strategy must be one of .*Received: strategy='gpu'"):
        make_strategy("gpu")
    with pytest.raises(ValueError, match="devices is only used by strategy='mirrored'"):
        make_strategy("default", devices=["/cpu:0"])
    with pytest.raises(ValueError, match="communication must be one of"):
        make_strategy("multi_worker", communication="mpi")
    monkeypatch.delenv("TPU_NAME", raising=False)
    with pytest.raises(
        ValueError,
        match=r"strategy='tpu' found no usable TPU.*tpu='local'.*"
        r"Received: tpu=None",
    ):
        make_strategy("tpu")
    import tensorflow as tf

    assert make_strategy("default") is tf.distribute.get_strategy()


def test_cli_strategy_option(tmp_path, capsys):
    from deeplab_tf.cli import main

    base = ["train", "--config", "synthetic_tiny", "--workdir", str(tmp_path / "w")]
    assert main(base + ["--strategy", "mirrored", "--print-config"]) == 0
    assert "strategy: mirrored" in capsys.readouterr().out
    assert main(base + ["--strategy", "tpu"]) == 2
    assert "strategy='tpu' found no usable TPU" in capsys.readouterr().err
    assert main(base + ["--set", "distribute.strategy=horovod", "--print-config"]) == 2
    assert "distribute.strategy must be one of" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_train_pipeline_start_batch_resumes_the_stream():
    import tensorflow as tf

    from deeplab_tf.data.synthetic import synthetic_dataset
    from deeplab_tf.training.pipeline import train_pipeline

    ds, _ = synthetic_dataset("train", num_images=6, size=24, num_classes=3)
    kwargs = dict(crop_size=16, batch_size=2, scales=(0.75, 1.0), shuffle_buffer=6, seed=5)
    full = [b for b in train_pipeline(ds, **kwargs).take(5)]
    resumed = [b for b in train_pipeline(ds, start_batch=3, **kwargs).take(2)]
    for (xa, ya), (xb, yb) in zip(full[3:], resumed):
        np.testing.assert_array_equal(xa.numpy(), xb.numpy())
        np.testing.assert_array_equal(ya.numpy(), yb.numpy())
    assert not np.array_equal(full[0][0].numpy(), resumed[0][0].numpy())
    with pytest.raises(ValueError, match="start_batch needs a seed"):
        train_pipeline(ds, crop_size=16, batch_size=2, start_batch=1)
    del tf


def test_backup_swap_is_atomic(tmp_path):
    """A kill between the two renames of a backup swap leaves the previous state usable."""
    import keras

    from deeplab_tf.training import CaffeSGD, DeepLabLoss
    from deeplab_tf.training.callbacks import AtomicBackupAndRestore, backup_epoch, latest_backup

    x = inp = keras.Input((None, None, 3))
    model = keras.Model(inp, keras.layers.Conv2D(3, 1, name="fc8_voc12")(x))
    model.compile(optimizer=CaffeSGD(0.01), loss=DeepLabLoss())
    model.optimizer.build(model.trainable_variables)
    cb = AtomicBackupAndRestore(str(tmp_path / "backup"))
    cb.set_model(model)
    cb.on_epoch_end(0)
    cb.on_epoch_end(1)
    assert backup_epoch(str(tmp_path / "backup")) == 2
    assert sorted(os.listdir(tmp_path)) == ["backup"]  # no temporary directory left
    os.replace(tmp_path / "backup", tmp_path / "backup.old")  # killed after the first rename
    assert latest_backup(str(tmp_path / "backup")) == str(tmp_path / "backup.old")
    model._initial_epoch = None
    cb.on_train_begin()
    assert model._initial_epoch == 2
    cb.on_train_end()
    assert os.listdir(tmp_path) == []
