"""Runs code the way users do: in a new Python process that has imported nothing yet."""

from __future__ import annotations

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


def run_python(code: str, *args: str, timeout: float = 600, check: bool = True):
    """Runs ``python -c code args...`` in a new process; returns the CompletedProcess.

    With ``check``, a non-zero exit fails the calling test with the child's output.
    """
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=fresh_env(),
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
