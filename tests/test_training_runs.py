"""The lifecycle of a ``deeplab-tf train`` run in its workdir: a real ``kill -9`` during the final
save, the rerun that finishes it, a rerun of a finished run that changes nothing, ``--restart``,
and a crash at every step of the end-of-training sequence."""

import json
import os
import signal
import textwrap

import pytest

from deeplab_tf.training import RunFinished, train
from tests._fresh_process import fresh_env, run_python
from tests.test_training_fit import CountBatches, _synthetic_config

# Two one-step epochs of MobileNetV2-ASPP on four 32 px synthetic images: seconds.
TINY = [
    "--set", "train.steps=2", "--set", "output.checkpoint_every=1", "--set", "train.batch_size=2",
    "--set", "data.size=32", "--set", "train.crop_size=32", "--set", "data.train.num_images=4",
    "--set", "data.val=null", "--set", "train.validate_examples=2", "--set", "train.seed=0",
    "--set", "train.shuffle_buffer=4", "--set", "train.verbose=0",
    "--set", "output.tensorboard=false",
]  # fmt: skip

# Runs the CLI; with KILL_AT_SAVE set, SIGKILLs itself right after the final model file is
# written to its temporary name (before it is renamed into place).
DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    import keras
    if os.environ.get("KILL_AT_SAVE"):
        real = keras.Model.save
        def save(self, filepath, *args, **kwargs):
            real(self, filepath, *args, **kwargs)
            if str(filepath).endswith("model.keras"):
                os.kill(os.getpid(), signal.SIGKILL)
        keras.Model.save = save
    from deeplab_tf.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _train_cli(workdir, *extra, kill=False):
    env = fresh_env()
    env.pop("KILL_AT_SAVE", None)
    if kill:
        env["KILL_AT_SAVE"] = "1"
    argv = ["train", "--config", "synthetic_tiny", "--workdir", str(workdir), *TINY, *extra]
    return run_python(DRIVER, *argv, check=False, env=env)


def _snapshot(root):
    out = {}
    for folder, _, files in os.walk(root):
        for f in files:
            path = os.path.join(folder, f)
            st = os.stat(path)
            out[os.path.relpath(path, root)] = (st.st_mtime_ns, st.st_size)
    return out


def _ckpts(workdir):
    return sorted(os.listdir(workdir / "checkpoints"))


@pytest.mark.large
@pytest.mark.multiprocess
def test_kill_during_final_save_then_rerun_finishes_and_finished_run_is_left_alone(tmp_path):
    workdir = tmp_path / "run"
    killed = _train_cli(workdir, kill=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (workdir / "model.keras").exists()
    assert os.path.isfile(workdir / "backup" / "training_metadata.json")  # still resumable
    assert _ckpts(workdir) == ["ckpt-000001.weights.h5", "ckpt-000002.weights.h5"]
    assert any(n.startswith(".tmp-") for n in os.listdir(workdir))  # the killed save's file
    trained = {n: os.stat(workdir / "checkpoints" / n).st_mtime_ns for n in _ckpts(workdir)}

    rerun = _train_cli(workdir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert os.path.isfile(workdir / "model.keras")
    # Resumed after the last epoch: no epoch was trained again, no checkpoint rewritten.
    assert {n: os.stat(workdir / "checkpoints" / n).st_mtime_ns for n in _ckpts(workdir)} == (
        trained
    )
    record = json.loads((workdir / "run.json").read_text())
    assert record["status"] == "finished" and record["steps"] == 2
    assert not (workdir / "backup").exists()
    assert not [n for n in os.listdir(workdir) if n.startswith(".")]  # stale temp removed

    before = _snapshot(workdir)
    again = _train_cli(workdir)
    assert again.returncode == 0, again.stderr[-3000:]
    lines = [line for line in again.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and "finished run" in lines[0] and "--restart" in lines[0], lines
    assert "--workdir" in lines[0]
    assert _snapshot(workdir) == before  # nothing touched

    restarted = _train_cli(workdir, "--restart")
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert json.loads((workdir / "run.json").read_text())["status"] == "finished"
    after = _snapshot(workdir)
    assert after["model.keras"] != before["model.keras"]
    assert all(after[f"checkpoints/{n}"] != before[f"checkpoints/{n}"] for n in trained)


def _config(workdir):
    cfg = _synthetic_config(
        str(workdir), steps=2, batch_size=2, crop_size=32, scales=[1.0], validate_examples=2
    )
    cfg["train"]["shuffle_buffer"] = 4
    cfg["data"].update(size=32, train={"num_images": 4})
    del cfg["data"]["val"]
    cfg["output"]["checkpoint_every"] = 1
    return cfg


class Crash(BaseException):
    """Stands in for a kill: not an Exception, so no ``except Exception`` handler runs."""


@pytest.mark.large
@pytest.mark.parametrize("step", ["model", "record", "discard"])
def test_crash_at_each_step_of_the_end_of_training_leaves_a_resumable_state(
    tmp_path, monkeypatch, step
):
    """model: while model.keras is renamed into place; record: while run.json is marked
    finished; discard: while the backup is deleted. The rerun finishes without training again
    (or, once finished, changes nothing)."""
    from deeplab_tf import atomic
    from deeplab_tf.training import callbacks, trainer

    workdir = tmp_path / "run"
    if step == "model":
        real = atomic.publish

        def publish(tmp, path, *args, **kwargs):
            if str(path).endswith("model.keras"):
                raise Crash
            return real(tmp, path, *args, **kwargs)

        monkeypatch.setattr(atomic, "publish", publish)
    elif step == "record":
        real_record = trainer._write_run_record

        def record(workdir, status, *args, **kwargs):
            if status == "finished":
                raise Crash
            return real_record(workdir, status, *args, **kwargs)

        monkeypatch.setattr(trainer, "_write_run_record", record)
    else:

        def discard(backup_dir):
            raise Crash

        monkeypatch.setattr(callbacks, "discard_backup", discard)
    with pytest.raises(Crash):
        train(_config(workdir))
    monkeypatch.undo()
    assert os.path.isfile(workdir / "backup" / "latest.weights.h5")
    counter = CountBatches()
    if step == "discard":  # run.json already says finished: nothing to redo
        with pytest.raises(RunFinished, match="finished run"):
            train(_config(workdir), callbacks=[counter])
        return
    assert json.loads((workdir / "run.json").read_text())["status"] == "running"
    train(_config(workdir), callbacks=[counter])
    assert counter.n == 0  # resumed after the last epoch
    assert os.path.isfile(workdir / "model.keras")
    assert json.loads((workdir / "run.json").read_text())["status"] == "finished"
    assert not (workdir / "backup").exists()
