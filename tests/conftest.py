"""Shared test set-up: quiet TensorFlow, deterministic seeds, small inputs."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(1234)
    yield
    keras.backend.clear_session()
    _release_memory()


#: Resident size (MB) above which a test's teardown collects garbage and trims the heap.
RELEASE_ABOVE_MB = 3000


def _resident_mb():
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return None


def _release_memory():
    """Frees what the test left and hands glibc's free heap back to the OS once the worker has
    grown past RELEASE_ABOVE_MB: an xdist worker runs hundreds of tests in one process, and
    without this its RSS grew to 11 GB (two workers filled the 24 GB machine and starved the
    CLI tests' subprocesses). Below that it is skipped: at ~0.2 s a test, collecting after
    each of the fast loop's tests (whose workers stay under 2.3 GB) cost it 50 s."""
    import ctypes
    import gc

    rss = _resident_mb()
    if rss is not None and rss < RELEASE_ABOVE_MB:
        return
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def pytest_runtest_logreport(report):
    """With DEEPLAB_TF_TEST_RSS_LOG=FILE, appends "worker test seconds resident-MB" after each
    test's call: how the suite's time and memory are found when a full run grows (see
    ``_release_memory``)."""
    path = os.environ.get("DEEPLAB_TF_TEST_RSS_LOG")
    if not path or report.when != "call" or hasattr(report, "node"):
        return  # (xdist's controller sees the workers' reports again, with .node set)
    rss = _resident_mb()
    if rss is None:
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(path, "a") as f:
        f.write(f"{worker} {report.nodeid} {report.duration:.1f} {rss}\n")
