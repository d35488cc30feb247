"""Inference, CRF and evaluation on Apache Beam (docs/scale-out.md), on tiny models.

Runs where ``apache_beam`` imports (the ``[beam]`` extra; .ci/run builds a venv for it);
elsewhere the module is skipped. The pipelines run as users run them: ``deeplab-tf`` in a
subprocess, DirectRunner with 2 worker processes in ``multi_processing`` mode.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip(
    "apache_beam",
    reason='apache_beam is not installed (pip install "deeplab_tf[beam]"; it needs protobuf<7)',
)

from PIL import Image  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEAM_OPTIONS = ["--", "--direct_num_workers=2", "--direct_running_mode=multi_processing"]


def _cli(*args, wait=True):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "deeplab_tf", *args]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny VGG-16 LargeFOV .keras file and 6 photos (two sizes) plus a corrupt file."""
    import keras

    from deeplab_tf.models import DeepLabV2

    root = tmp_path_factory.mktemp("beam")
    keras.utils.set_random_seed(11)
    DeepLabV2("vgg16", "largefov", num_classes=3).save(root / "tiny.keras")
    rng = np.random.default_rng(3)
    (root / "in").mkdir()
    for i in range(6):
        photo = rng.integers(0, 256, size=(40 + 3 * (i % 2), 45, 3)).astype(np.uint8)
        Image.fromarray(photo).save(root / "in" / f"im{i}.png")
    return root


@pytest.fixture(scope="module")
def reference(tiny):
    """Single-process `deeplab-tf predict` with MSC and the CRF (the outputs to match)."""
    out = tiny / "single"
    r = _cli("predict", str(tiny / "in"), "--out", str(out), *_predict_options(tiny))
    assert r.returncode == 0, r.stderr
    return out


def _predict_options(tiny):
    return ["--model", str(tiny / "tiny.keras"), "--scales", "1", "0.75", "--crf", "--no-progress"]


def _files(folder):
    return sorted(f for f in os.listdir(folder) if f != "dead_letter.json")


@pytest.mark.large
@pytest.mark.multiprocess
def test_beam_predict_is_byte_identical_and_routes_a_corrupt_image_to_the_dead_letter(
    tiny, reference, tmp_path
):
    src = tmp_path / "in"
    src.mkdir()
    for f in os.listdir(tiny / "in"):
        (src / f).write_bytes((tiny / "in" / f).read_bytes())
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    out = tmp_path / "beam"
    r = _cli(
        "predict", str(src), "--out", str(out), *_predict_options(tiny), "--runner",
        "DirectRunner", *BEAM_OPTIONS,
    )  # fmt: skip
    assert r.returncode == 1, r.stderr  # one image failed, the others were written
    assert "wrote 6 of 7 image(s)" in r.stdout and "1 failed" in r.stdout
    assert re.search(r"beam metrics: images_done=6, failures=1, crf_ms_sum=\d+", r.stdout)
    dead = json.loads((out / "dead_letter.json").read_text())
    assert [d["input"] for d in dead] == [str(src / "broken.jpg")]
    assert "broken.jpg" in dead[0]["error"] and "Pillow" in dead[0]["error"]
    assert _files(out) == _files(reference)  # no temporaries, nothing else
    for f in _files(reference):
        assert (out / f).read_bytes() == (reference / f).read_bytes(), f


@pytest.mark.large
@pytest.mark.multiprocess
def test_beam_predict_survives_a_killed_worker(tiny, reference, tmp_path):
    from deeplab_tf.beam.pipeline import worker_pids

    out = tmp_path / "beam"
    proc = _cli(
        "predict", str(tiny / "in"), "--out", str(out), *_predict_options(tiny), "--runner",
        "DirectRunner", *BEAM_OPTIONS, wait=False,
    )  # fmt: skip
    killed = None
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.3)
        done = [f for f in os.listdir(out) if f.endswith("_overlay.png")] if out.exists() else []
        workers = worker_pids(proc.pid)
        if done and len(workers) == 2:  # mid-job: some images written, both workers busy
            killed = workers[0]
            os.kill(killed, signal.SIGKILL)
            break
    assert killed is not None, "the job ended before a worker could be killed"
    stdout, stderr = proc.communicate(timeout=900)
    stdout, stderr = stdout.decode(), stderr.decode()
    assert proc.returncode == 0, stderr[-3000:]
    assert "attempts=2" in stdout and "wrote 6 of 6 image(s)" in stdout, stdout
    assert "retrying" in stderr
    assert _files(out) == _files(reference)  # complete, no duplicates, no temporaries
    for f in _files(reference):
        assert (out / f).read_bytes() == (reference / f).read_bytes(), f
    assert json.loads((out / "dead_letter.json").read_text()) == []


@pytest.mark.large
@pytest.mark.multiprocess
def test_beam_evaluate_report_equals_evaluate(tiny, tmp_path):
    rng = np.random.default_rng(5)
    for sub in ("images", "masks"):
        (tmp_path / "data" / "val" / sub).mkdir(parents=True)
    for i in range(4):
        h = 33 + (i % 2)
        image = rng.integers(0, 256, size=(h, 40, 3)).astype(np.uint8)
        Image.fromarray(image).save(tmp_path / "data" / "val" / "images" / f"e{i}.png")
        mask = rng.integers(0, 3, size=(h, 40)).astype(np.uint8)
        mask[0] = 255
        Image.fromarray(mask, "L").save(tmp_path / "data" / "val" / "masks" / f"e{i}.png")
    common = [
        "evaluate", "--dataset", "folder", "--root", str(tmp_path / "data"), "--split", "val",
        "--dataset-arg", "num_classes=3", "--model", str(tiny / "tiny.keras"), "--scales", "1",
        "0.75", "--no-progress",
    ]  # fmt: skip
    single = _cli(*common, "--report", str(tmp_path / "single.json"))
    assert single.returncode == 0, single.stderr
    beam = _cli(
        *common, "--report", str(tmp_path / "beam.json"), "--runner", "DirectRunner",
        *BEAM_OPTIONS,
    )  # fmt: skip
    assert beam.returncode == 0, beam.stderr
    assert "images_done=4, failures=0" in beam.stdout
    want = json.loads((tmp_path / "single.json").read_text())
    got = json.loads((tmp_path / "beam.json").read_text())
    assert got["scores"]["confusion_matrix"] == want["scores"]["confusion_matrix"]
    assert got["scores"]["num_images"] == want["scores"]["num_images"] == 4
    for key in ("mean_iou", "pixel_accuracy", "mean_accuracy", "frequency_weighted_iou"):
        assert got["scores"][key] == want["scores"][key], key
    assert got["scores"]["per_class_iou"] == want["scores"]["per_class_iou"]
    assert got["scores"]["failed"] == []
    # The table printed is evaluate's table.
    table = lambda text: text[text.index(" id  class") :].split("report written")[0]
    assert table(beam.stdout) == table(single.stdout)


@pytest.mark.large
@pytest.mark.multiprocess
def test_beam_predict_dataset_is_byte_identical_to_predict(tiny, tmp_path):
    """`predict --dataset` on a Cityscapes tree (two cities): one listing, the same names."""
    from tests._data_utils import make_cityscapes

    rng = np.random.default_rng(7)
    names = ["aachen_000000_000019", "aachen_000001_000019", "bochum_000000_000313"]
    labels = [rng.integers(0, 34, size=(30 + i % 2, 41)).astype(np.uint8) for i in range(3)]
    make_cityscapes(str(tmp_path / "cs"), "val", names, labels, rng)
    common = [
        "predict", "--dataset", "cityscapes", "--root", str(tmp_path / "cs"), "--split", "val",
        "--model", str(tiny / "tiny.keras"), "--scales", "1", "0.75", "--no-progress",
    ]  # fmt: skip
    single = _cli(*common, "--out", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr
    beam = _cli(*common, "--out", str(tmp_path / "beam"), "--runner", "DirectRunner", *BEAM_OPTIONS)
    assert beam.returncode == 0, beam.stderr
    assert "images_done=3, failures=0" in beam.stdout and "wrote 3 of 3" in beam.stdout
    want = sorted(f"{n}{s}" for n in names for s in (".png", "_overlay.png"))
    assert _files(tmp_path / "single") == _files(tmp_path / "beam") == want
    for f in want:
        assert (tmp_path / "beam" / f).read_bytes() == (tmp_path / "single" / f).read_bytes(), f


def test_predict_pipeline_refuses_bad_dataset_input_before_work(tmp_path):
    from deeplab_tf.beam import predict_pipeline

    out = str(tmp_path / "o")
    with pytest.raises(ValueError, match="Unknown dataset 'nope'"):
        predict_pipeline(out=out, model="absent.keras", dataset="nope", root=str(tmp_path))
    with pytest.raises(ValueError, match="not a directory"):
        predict_pipeline(out=out, model="absent.keras", dataset="voc2012", root=out + "x")
    with pytest.raises(ValueError, match="inputs=.*a.png.*dataset='voc2012'"):
        predict_pipeline("a.png", out, "absent.keras", dataset="voc2012", root=str(tmp_path))
    with pytest.raises(ValueError, match="inputs=None, dataset=None"):
        predict_pipeline(out=out, model="absent.keras")
    assert not (tmp_path / "o").exists()


def test_confusion_combine_fn_sums_exactly():
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from deeplab_tf.beam.transforms import ConfusionMatrixCombineFn
    from deeplab_tf.evaluation.metrics import confusion_matrix

    rng = np.random.default_rng(0)
    pairs = [(rng.integers(0, 4, (9, 7)), rng.integers(0, 4, (9, 7))) for _ in range(11)]
    mats = [confusion_matrix(a, b, 4) for a, b in pairs]
    want = {"confusion_matrix": np.sum(mats, axis=0).tolist(), "num_images": 11}
    with TestPipeline() as p:
        got = p | beam.Create(mats) | beam.CombineGlobally(ConfusionMatrixCombineFn(4))
        assert_that(got, equal_to([want]))


def test_cli_splits_beam_options_only_after_runner():
    from deeplab_tf.cli import _split_pipeline_args

    argv = ["predict", "a.jpg", "--runner", "DirectRunner", "--", "--direct_num_workers=2"]
    assert _split_pipeline_args(argv) == (argv[:4], ["--direct_num_workers=2"])
    plain = ["predict", "--out", "o", "--", "-odd-name.jpg"]
    assert _split_pipeline_args(plain) == (plain, [])


def test_predict_pipeline_refuses_bad_input_before_work(tmp_path):
    from deeplab_tf.beam import predict_pipeline

    with pytest.raises(ValueError, match="no such file or directory"):
        predict_pipeline([str(tmp_path / "missing.jpg")], str(tmp_path / "o"), model="x.keras")
    assert not (tmp_path / "o").exists()


@pytest.mark.large
def test_predict_pipeline_runs_an_exported_saved_model(tiny, tmp_path):
    """The handler also loads `deeplab-tf export`'s SavedModel (MSC built in at export)."""
    import keras

    from deeplab_tf.beam import predict_pipeline
    from deeplab_tf.export import export_saved_model
    from deeplab_tf.inference import MultiScaleInference, Predictor

    net = keras.saving.load_model(tiny / "tiny.keras")
    version = export_saved_model(net, str(tmp_path / "served"), 1, warmup=False)
    with pytest.raises(ValueError, match="built in at export"):
        predict_pipeline(str(tiny / "in"), str(tmp_path / "x"), version, scales=(1.0, 0.5))
    out = predict_pipeline(str(tiny / "in"), str(tmp_path / "o"), version, probs=True)
    assert out["done"] == out["images"] == 6 and out["failed"] == []
    predictor = Predictor(MultiScaleInference(net, scales=(1.0,)))
    for i in range(6):
        image = np.asarray(Image.open(tiny / "in" / f"im{i}.png"))
        want = predictor(image)
        got = np.load(tmp_path / "o" / f"im{i}_probs.npy").astype(np.float32)
        np.testing.assert_allclose(got, want, atol=2e-3)
        label = np.asarray(Image.open(tmp_path / "o" / f"im{i}.png"))
        assert (label == want.argmax(-1)).mean() > 0.99
