"""The README's main job, ``deeplab-tf quickstart``, end to end with a reduced step count."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import deeplab_tf.quickstart as qs
from deeplab_tf.cli import main as cli_main


@pytest.mark.large
def test_quickstart_end_to_end(tmp_path, capsys):
    out = tmp_path / "qs"
    argv = ["quickstart", "--out", str(out), "--steps", "6", "--num-train", "24"]
    argv += ["--num-val", "3", "--num-samples", "2", "--crf-iterations", "3", "--quiet"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert f"Outputs in {out}" in printed and "mean IoU" in printed
    assert sorted(os.listdir(tmp_path)) == ["qs"]  # no partial folder left behind

    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6
    assert len(summary["training_curve"]["step_loss"]) == 6
    assert 0.0 <= summary["heldout"]["mean_iou"] <= 1.0
    assert summary["tflite_label_agreement"] > 0.99
    for rel in ["model.keras", "metrics.json", "summary.png", *summary["files"]["samples"]]:
        assert (out / rel).is_file(), rel
    figure = Image.open(out / "summary.png")
    assert figure.size[0] >= 1000 and figure.mode in ("RGB", "RGBA")
    assert len(summary["files"]["samples"]) == 4  # two samples, before and after the CRF

    # The SavedModel is a TF Serving version folder and answers on its signatures.
    serving = out / summary["files"]["saved_model"]
    assert serving.name == "1" and (serving / "saved_model.pb").is_file()
    assert (serving / "assets.extra" / "tf_serving_warmup_requests").is_file()
    loaded = tf.saved_model.load(str(serving))
    assert {"serving_default", "serving_bytes", "serving_crf"} <= set(loaded.signatures)
    labels = loaded.signatures["serving_uint8"](images=tf.zeros((1, 40, 40, 3), tf.uint8))
    assert labels["labels"].shape == (1, 40, 40)
    assert (out / summary["files"]["tflite"]).stat().st_size > 100_000

    # A second run into the same folder is refused before any work.
    assert cli_main(["quickstart", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_quickstart_interrupt_leaves_nothing_half_written(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(qs, "_run", interrupted)
    out = tmp_path / "qs"
    assert cli_main(["quickstart", "--out", str(out), "--steps", "2"]) == 130
    assert "interrupted; the partial output folder was removed" in capsys.readouterr().out
    assert os.listdir(tmp_path) == []


@pytest.mark.multiprocess
def test_quickstart_removes_a_killed_runs_partial_folder(tmp_path, monkeypatch, capsys):
    import subprocess
    import sys

    from deeplab_tf import atomic

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".tmp-{atomic._host()}~{dead.pid}.~0badf00d-qs"
    (stale / "train").mkdir(parents=True)
    legacy = tmp_path / f"qs.partial-{dead.pid}"
    legacy.mkdir()
    atomic._cleaned.discard(str(tmp_path))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(qs, "_run", interrupted)
    assert cli_main(["quickstart", "--out", str(tmp_path / "qs"), "--steps", "2"]) == 130
    assert os.listdir(tmp_path) == []


def test_quickstart_rejects_bad_arguments(tmp_path, capsys):
    afile = tmp_path / "f"
    afile.write_text("x")
    assert cli_main(["quickstart", "--out", str(afile)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert cli_main(["quickstart", "--out", str(tmp_path / "x"), "--steps", "0"]) == 2
    assert "--steps must be >= 1. Received: 0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_summary_figure_draws_from_curves(tmp_path):
    from deeplab_tf.data.info import DatasetInfo

    info = DatasetInfo("synthetic", ("background", "disk", "square"))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    before = rng.integers(0, 3, (40, 40))
    curve = {"step_loss": [2.0, 1.5, 1.0, 0.8], "val_loss": [1.2, 0.9], "step_mean_iou": [0.1] * 4}
    scores = {"per_class_iou": [0.9, float("nan"), 0.4], "mean_iou": 0.65}
    path = tmp_path / "s.png"
    qs.draw_summary(str(path), curve, scores, info.class_names, image, before, before, info)
    assert Image.open(path).size == (1200, 750)
