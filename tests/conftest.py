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
    """With DEEPLAB_TF_TEST_RSS_LOG=FILE, appends "worker test phase seconds resident-MB" after
    each test's setup, call and teardown (setup holds the module fixtures' training and exports):
    how the suite's time and memory are found when a full run grows (see ``_release_memory``)."""
    path = os.environ.get("DEEPLAB_TF_TEST_RSS_LOG")
    if not path or hasattr(report, "node"):
        return  # (xdist's controller sees the workers' reports again, with .node set)
    rss = _resident_mb()
    if rss is None:
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(path, "a") as f:
        f.write(f"{worker} {report.nodeid} {report.when} {report.duration:.1f} {rss}\n")


#: The ten slowest test modules, slowest first (summed setup + call + teardown seconds of a
#: full run with oneDNN capped at AVX2, `--durations=0`: 650, 320, 240, 205, 190, 190, 170, 170,
#: 165 and 150 s), collected first so that xdist hands them out while the rest of the suite can
#: still balance the two workers, instead of ending the run with one worker on the zoo's LiteRT
#: conversions. Each module's tests stay together (its module fixtures are built once per worker).
HEAVY_MODULES = (
    "test_tflite_int8.py", "test_distribute.py", "test_models.py", "test_export.py",
    "test_benchmarks.py", "test_serving_export.py", "test_training_config.py",
    "test_registry_models.py", "test_training_runs.py", "test_training_fit.py",
)  # fmt: skip


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(HEAVY_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept within
