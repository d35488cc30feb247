"""Runs code the way users do: in a new Python process that has imported nothing yet.

Also the fresh-process save/load check of the test harness (:func:`load_in_new_process`): save
in this process, load in a child that imports ``deeplab_tf`` and ``keras`` and nothing else.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fresh_env(**extra) -> dict:
    """The test's environment for a child process: quiet TensorFlow, no GPU, this checkout."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.update(extra)
    return env


def run_python(
    code: str, *args: str, timeout: float = 600, check: bool = True, env: dict | None = None
):
    """Runs ``python -c code args...`` in a new process; returns the CompletedProcess.

    With ``check``, a non-zero exit fails the calling test with the child's output. ``env``
    replaces the environment (default: :func:`fresh_env`).
    """
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env or fresh_env(),
        timeout=timeout,
        cwd=REPO,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"child exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


def run_cli(*argv: str, timeout: float = 600, cwd: str | None = None, env: dict | None = None):
    """Runs ``python -m deeplab_tf ARGV`` (the ``deeplab-tf`` command) in a new process."""
    return subprocess.run(
        [sys.executable, "-m", "deeplab_tf", *argv],
        capture_output=True,
        text=True,
        env=env or fresh_env(),
        timeout=timeout,
        cwd=cwd or REPO,
        stdin=subprocess.DEVNULL,
    )


# The child of load_in_new_process: load every file, run it on its input, save the output; for
# compiled models also check the optimizer / loss / metric classes and train one more step.
LOADER = r"""
import json, sys
import numpy as np
import deeplab_tf  # the only library import
import keras

loaded = [m for m in sys.modules if m.startswith("deeplab_tf.") and m != "deeplab_tf._registration"]
report = {}
for job in json.load(open(sys.argv[1])):
    model = keras.saving.load_model(job["path"])  # safe_mode=True is the default
    x = np.load(job["x"])
    np.save(job["out"], keras.ops.convert_to_numpy(model(x, training=False)))
    info = {"class": type(model).__name__}
    if job.get("compiled"):
        info["optimizer"] = type(model.optimizer).__name__
        info["iterations"] = int(model.optimizer.iterations.numpy())
        info["loss"] = type(model.loss).__name__
        y = np.load(job["y"])
        hist = model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
        info["metrics"] = sorted(hist.history)
        info["loss_after"] = float(hist.history["loss"][-1])
        info["iterations_after"] = int(model.optimizer.iterations.numpy())
    report[job["path"]] = info
json.dump(report, open(sys.argv[2], "w"))
"""


def load_in_new_process(tmp_path, objects: dict) -> dict:
    """Saves ``{name: (model, x, y_or_None)}`` to ``.keras`` files and loads them all in one new
    process (safe mode) that imports only ``deeplab_tf`` and ``keras``.

    The child's outputs on ``x`` must equal this process's (rtol = atol = 1e-5); a ``y`` marks
    a compiled model, which the child also trains for one step. Returns ``{name: report}``
    (the loaded class name and, for compiled models, optimizer / loss / metric facts).
    """
    import keras
    import numpy as np

    jobs, expected = [], {}
    for name, (model, x, y) in objects.items():
        expected[name] = keras.ops.convert_to_numpy(model(x, training=False))
        path = str(tmp_path / f"{name}.keras")
        model.save(path)
        np.save(tmp_path / f"{name}_x.npy", x)
        job = {"path": path, "x": str(tmp_path / f"{name}_x.npy")}
        job["out"] = str(tmp_path / f"{name}_out.npy")
        if y is not None:
            np.save(tmp_path / f"{name}_y.npy", y)
            job.update(compiled=True, y=str(tmp_path / f"{name}_y.npy"))
        jobs.append(job)
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    run_python(LOADER, str(tmp_path / "jobs.json"), str(tmp_path / "report.json"))
    report = json.loads((tmp_path / "report.json").read_text())
    results = {}
    for name, job in zip(objects, jobs):
        got = np.load(job["out"])
        np.testing.assert_allclose(got, expected[name], rtol=1e-5, atol=1e-5, err_msg=name)
        results[name] = report[job["path"]]
    return results
