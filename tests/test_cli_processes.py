"""Every ``deeplab-tf`` verb as users run it: a new process, on files a previous process saved.

``deeplab-tf train`` writes ``model.keras`` (compiled with CaffeSGD, the loss and the metric);
each verb that takes a model (predict, evaluate, crf-search, export) then runs on that file as
its own process, and so does a plain ``keras.saving.load_model`` after ``import deeplab_tf``.
The command line's ``--help`` answers with TensorFlow and Keras blocked.
"""

import json
import os

import numpy as np
import pytest
from PIL import Image

from tests._data_utils import make_folder_dataset
from tests._fresh_process import REPO, run_cli, run_python

pytestmark = [pytest.mark.xdist_group("cli_processes"), pytest.mark.multiprocess, pytest.mark.large]


def _ok(proc):
    assert proc.returncode == 0, f"rc {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run of ``deeplab-tf train`` (tiny synthetic config, CaffeSGD): its workdir."""
    workdir = str(tmp_path_factory.mktemp("run") / "w")
    _ok(
        run_cli(
            "train",
            "--config",
            "synthetic_tiny",
            "--workdir",
            workdir,
            "--set",
            "train.steps=2",
            "--set",
            "train.batch_size=2",
            "--set",
            "train.optimizer=caffe_sgd",
            "--set",
            "train.base_lr=1e-3",
            "--set",
            "data.train.num_images=4",
            "--set",
            "data.val.num_images=2",
            "--set",
            "output.checkpoint_every=1",
        )  # fmt: skip
    )
    assert os.path.isfile(os.path.join(workdir, "model.keras")), os.listdir(workdir)
    return workdir


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory):
    """A 3-image ``folder`` dataset: images/*.png + masks/*.png (labels 0..4)."""
    return make_folder_dataset(tmp_path_factory.mktemp("data"), 3, (40, 44), 5)


def test_train_output_loads_after_import_deeplab_tf_alone(trained):
    code = (
        "import sys, deeplab_tf, keras\n"
        "m = keras.saving.load_model(sys.argv[1])\n"
        "print(type(m.optimizer).__name__, type(m.loss).__name__, m.output_shape[-1])\n"
    )
    proc = run_python(code, os.path.join(trained, "model.keras"))
    assert proc.stdout.split() == ["CaffeSGD", "DeepLabLoss", "5"]


def test_predict_on_a_saved_model(trained, folder_data, tmp_path):
    out = tmp_path / "preds"
    _ok(
        run_cli(
            "predict",
            str(folder_data / "images"),
            "--out",
            str(out),
            "--model",
            os.path.join(trained, "model.keras"),
            "--no-progress",
        )  # fmt: skip
    )
    labels = sorted(p for p in os.listdir(out) if p.endswith(".png"))
    assert len(labels) >= 3, labels
    mask = np.asarray(Image.open(out / labels[0]))
    assert mask.ndim == 2 and mask.max() < 5


def test_evaluate_on_a_saved_model(trained, folder_data, tmp_path):
    report = tmp_path / "val.json"
    _ok(
        run_cli(
            "evaluate",
            "--dataset",
            "folder",
            "--root",
            str(folder_data),
            "--split",
            "all",
            "--model",
            os.path.join(trained, "model.keras"),
            "--report",
            str(report),
            "--dataset-arg",
            "num_classes=5",
            "--no-progress",
        )  # fmt: skip
    )
    scores = json.loads(report.read_text())["scores"]
    assert scores["num_images"] == 3 and 0.0 <= scores["mean_iou"] <= 1.0, scores


def test_crf_search_on_a_saved_model(trained, folder_data, tmp_path):
    result = tmp_path / "crf.json"
    _ok(
        run_cli(
            "crf-search",
            "--model",
            os.path.join(trained, "model.keras"),
            "--images",
            str(folder_data / "images"),
            "--masks",
            str(folder_data / "masks"),
            "--num-images",
            "2",
            "--bi-w",
            "4",
            "--bi-xy-std",
            "10,20",
            "--bi-rgb-std",
            "3",
            "--output",
            str(result),
        )  # fmt: skip
    )
    assert len(json.loads(result.read_text())["settings"]) == 2


def test_export_defaults_on_a_saved_model(trained, tmp_path):
    out = tmp_path / "served"
    proc = _ok(run_cli("export", os.path.join(trained, "model.keras"), "--out", str(out)))
    version = out / "1"
    assert (version / "saved_model.pb").is_file(), proc.stdout
    assert (version / "assets.extra" / "tf_serving_warmup_requests").is_file()


def test_help_answers_without_tensorflow():
    """``deeplab-tf --help`` and every verb's ``--help`` with tensorflow and keras blocked."""
    code = r"""
import runpy, sys
sys.modules["tensorflow"] = None  # any import of them now raises ImportError
sys.modules["keras"] = None
sys.argv = ["deeplab-tf"]  # the console script's name, as when a user types deeplab-tf --help
from deeplab_tf.cli import build_parser
verbs = list(build_parser()._subparsers._group_actions[0].choices)
for argv in [["--help"], *[[verb, "--help"] for verb in verbs]]:
    sys.argv = ["deeplab-tf", *argv]
    try:
        runpy.run_module("deeplab_tf", run_name="__main__")
    except SystemExit as stop:
        assert stop.code == 0, (argv, stop.code)
print("verbs:", " ".join(verbs))
"""
    proc = run_python(code)
    verbs = proc.stdout.strip().splitlines()[-1].split()[1:]
    assert {"train", "predict", "evaluate", "export", "crf-search", "quickstart"} <= set(verbs)
    assert "usage: deeplab-tf export" in proc.stdout


def test_console_script_help_imports_no_tensorflow():
    """The installed ``deeplab-tf`` script itself (``-X importtime`` lists every import)."""
    import shutil
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(sys.executable), "deeplab-tf")
    script = script if os.path.isfile(script) else shutil.which("deeplab-tf") or script
    if not os.path.isfile(script):
        pytest.fail(f"the deeplab-tf console script is not installed next to {sys.executable}")
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", script, "--help"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "deeplab_tf.cli" in imported
    assert not {"tensorflow", "keras"} & imported
