"""``deeplab-tf predict --dataset``: the images of a dataset split, listed as ``evaluate`` lists
them, one output per example named by its id (docs/scale-out.md)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from deeplab_tf.cli import main
from tests._data_utils import make_cityscapes, make_voc
from tests._fresh_process import run_cli

# Two cities; the third image's file name exists in both (only its folder differs).
NAMES = ["aachen_000000_000019", "aachen_000001_000019", "bochum_000000_000313"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    import keras

    from deeplab_tf.models import DeepLabV2

    keras.utils.set_random_seed(11)
    path = str(tmp_path_factory.mktemp("model") / "tiny.keras")
    DeepLabV2("vgg16", "largefov", num_classes=3).save(path)
    return path


def _cityscapes(root, rng):
    labels = [rng.integers(0, 34, size=(30 + i, 41)).astype(np.uint8) for i in range(3)]
    return make_cityscapes(str(root), "val", NAMES, labels, rng)


@pytest.mark.large
def test_predict_dataset_writes_one_label_png_per_example(model_file, tmp_path):
    from deeplab_tf.inference import MultiScaleInference, Predictor
    from deeplab_tf.inference.predict import load_inference_model

    rng = np.random.default_rng(0)
    images = _cityscapes(tmp_path / "cs", rng)
    # predict needs the images only: a split without its label files still lists.
    os.remove(tmp_path / "cs" / "gtFine" / "val" / "bochum" / f"{NAMES[2]}_gtFine_labelIds.png")
    out = tmp_path / "out"
    r = run_cli(
        "predict", "--dataset", "cityscapes", "--root", str(tmp_path / "cs"), "--out", str(out),
        "--model", model_file, "--scales", "1", "0.75", "--no-progress",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "wrote 3 of 3 image(s)" in r.stdout
    want = sorted(f"{n}{s}" for n in NAMES for s in (".png", "_overlay.png"))
    assert sorted(os.listdir(out)) == want
    predictor = Predictor(MultiScaleInference(load_inference_model(model_file), scales=(1.0, 0.75)))
    for name in NAMES:
        label = np.asarray(Image.open(out / f"{name}.png"))
        np.testing.assert_array_equal(label, predictor(images[name]).argmax(-1))

    # --limit: the first N examples of the listing, in its order.
    r = run_cli(
        "predict", "--dataset", "cityscapes", "--root", str(tmp_path / "cs"), "--limit", "1",
        "--out", str(tmp_path / "one"), "--model", model_file, "--no-progress",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path / "one")) == [f"{NAMES[0]}.png", f"{NAMES[0]}_overlay.png"]


@pytest.mark.large
def test_predict_dataset_voc_names_outputs_by_example_id(model_file, tmp_path, capsys):
    rng = np.random.default_rng(1)
    voc, _ = make_voc(str(tmp_path), ["2007_000001"], ["2007_000032", "2008_000002"], rng)
    out = tmp_path / "out"
    argv = ["predict", "--dataset", "voc2012", "--root", str(tmp_path), "--out", str(out)]
    assert main([*argv, "--model", model_file, "--no-progress"]) == 0, capsys.readouterr().err
    assert sorted(f for f in os.listdir(out) if not f.endswith("_overlay.png")) == [
        "2007_000032.png",
        "2008_000002.png",
    ]


def test_predict_dataset_refuses_bad_input_before_loading_the_model(tmp_path, capsys):
    """The model file does not exist: each error below comes before it is looked at."""
    model = str(tmp_path / "absent.keras")
    out = tmp_path / "out"
    base = ["--out", str(out), "--model", model, "--no-progress"]
    (tmp_path / "a.png").write_bytes(b"")

    def refused(*argv):
        assert main(["predict", *argv, *base]) == 2
        err = capsys.readouterr().err
        assert "absent.keras" not in err, err
        return err

    err = refused("--dataset", "nope", "--root", str(tmp_path))
    assert "Unknown dataset 'nope'" in err and "cityscapes" in err
    err = refused("--dataset", "cityscapes", "--root", str(tmp_path / "missing"))
    assert "missing" in err and "not a directory" in err
    err = refused("--dataset", "cityscapes")
    assert "pass root=<folder>" in err
    err = refused(str(tmp_path / "a.png"), "--dataset", "cityscapes", "--root", str(tmp_path))
    assert "not both or neither" in err and "a.png" in err and "'cityscapes'" in err
    err = refused()
    assert "not both or neither" in err and "IMAGE []" in err
    err = refused(str(tmp_path / "a.png"), "--root", str(tmp_path))
    assert "--root need(s) --dataset" in err
    err = refused("--dataset", "cityscapes", "--root", str(tmp_path))  # no leftImg8bit folder
    assert "leftImg8bit" in err
    assert not out.exists()


def test_predict_dataset_refuses_examples_that_would_share_an_output(model_file, tmp_path):
    """Two examples of one id (the same file name in two city folders) never overwrite."""
    from deeplab_tf.inference.io import dataset_inputs
    from deeplab_tf.inference.outputs import plan_outputs

    rng = np.random.default_rng(2)
    _cityscapes(tmp_path / "cs", rng)
    src = tmp_path / "cs" / "leftImg8bit" / "val" / "aachen" / f"{NAMES[0]}_leftImg8bit.png"
    (src.parent.parent / "zurich").mkdir()
    (src.parent.parent / "zurich" / src.name).write_bytes(src.read_bytes())
    paths, names = dataset_inputs(
        "cityscapes", "val", str(tmp_path / "cs"), {"label_type": "labelIds"}
    )
    assert names.count(NAMES[0]) == 2
    with pytest.raises(ValueError, match="would both write") as err:
        plan_outputs(paths, str(tmp_path / "out"), names=names)
    assert "aachen" in str(err.value) and "zurich" in str(err.value)
    assert not (tmp_path / "out").exists()
