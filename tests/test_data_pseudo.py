"""Pseudo-labels: a folder of PNGs replacing a dataset's ground truth (the weakly-supervised
workflow), compared against the image set by ``data check``; the config and CLI keys."""

import json
import os

import numpy as np
import pytest

from deeplab_tf.cli import main
from deeplab_tf.data import load_dataset
from deeplab_tf.data.catalog import list_dataset
from deeplab_tf.data.check import check_dataset
from deeplab_tf.data.palettes import voc_palette
from deeplab_tf.data.readers import DatasetError, decode_example
from deeplab_tf.training.schema import validate
from tests import _data_utils as u

IDS = ["2007_000032", "2007_000039", "2007_000042", "2007_000061", "2007_000063"]


@pytest.fixture
def voc_pseudo(tmp_path, rng):
    """VOC without ground truth for train (its SegmentationClass masks removed) and a
    pseudo-label folder with one label missing, one extra, one of the wrong size and one with
    an unknown value."""
    root = str(tmp_path / "data")
    voc, written = u.make_voc(root, IDS, ["2007_000033"], rng)
    for i in IDS:
        os.remove(os.path.join(voc, "SegmentationClass", f"{i}.png"))
    pseudo = str(tmp_path / "pseudo")
    labels = {}
    for i in IDS[:4]:
        labels[i] = u.random_label(rng, 20, 24, range(21))
        u.write_png(os.path.join(pseudo, f"{i}.png"), labels[i], voc_palette())
    u.write_png(os.path.join(pseudo, "2007_000042.png"), np.zeros((20, 23)))  # wrong size
    bad = labels["2007_000061"].copy()
    bad[3, 4] = 21
    u.write_png(os.path.join(pseudo, "2007_000061.png"), bad)  # value outside the 21 classes
    u.write_png(os.path.join(pseudo, "2009_999999.png"), np.zeros((20, 24)))  # no such image
    with open(os.path.join(pseudo, "notes.txt"), "w") as f:
        f.write("not a label")
    return root, voc, pseudo, labels


def test_pseudo_labels_replace_ground_truth(voc_pseudo):
    root, voc, pseudo, labels = voc_pseudo
    listing = list_dataset("voc2012", "train", root, pseudo_labels=pseudo)
    assert [e.id for e in listing.examples] == IDS[:4]
    assert all(e.label_path == os.path.join(pseudo, f"{e.id}.png") for e in listing.examples)
    assert listing.info.num_examples == 4 and listing.info.name == "voc2012"
    (missing,) = listing.problems
    assert missing["id"] == "2007_000063" and missing["kind"] == "missing"
    assert "pseudo-label not found" in missing["error"] and "2007_000063.jpg" in missing["error"]
    (extra,) = listing.warnings
    assert extra["kind"] == "extra_label" and extra["path"].endswith("2009_999999.png")
    image, label = decode_example(listing.examples[0], listing.label_map)
    np.testing.assert_array_equal(label, labels["2007_000032"])

    # Training stops before it starts on the missing label, naming it; skip drops it.
    with pytest.raises(DatasetError, match="2007_000063.png: pseudo-label not found"):
        load_dataset("voc2012", "train", root=root, pseudo_labels=pseudo)
    skipped = []
    ds, info = load_dataset(
        "voc2012", "train", root=root, pseudo_labels=pseudo, on_error="skip", skipped=skipped
    )
    got = {e["id"].decode(): e["label"] for e in ds.as_numpy_iterator()}
    assert sorted(got) == ["2007_000032", "2007_000039"]
    np.testing.assert_array_equal(got["2007_000039"], labels["2007_000039"])
    assert sorted(p["kind"] for p in skipped) == ["missing", "size_mismatch", "unknown_values"]

    with pytest.raises(DatasetError, match="is not a directory"):
        list_dataset("voc2012", "train", root, pseudo_labels=os.path.join(pseudo, "nope"))


def test_training_config_takes_pseudo_labels_for_train_only(voc_pseudo):
    from deeplab_tf.training.trainer import load_split

    root, voc, pseudo, labels = voc_pseudo
    data = {
        "name": "voc2012",
        "root": root,
        "train": {"split": "train", "pseudo_labels": pseudo, "on_error": "skip"},
        "val": {"split": "val"},
    }
    ds, info = load_split(data, "train")
    got = {e["id"].decode(): e["label"] for e in ds.as_numpy_iterator()}
    np.testing.assert_array_equal(got["2007_000032"], labels["2007_000032"])
    ds, info = load_split(data, "val")  # the ground truth
    (element,) = list(ds.as_numpy_iterator())
    assert element["id"].decode() == "2007_000033"


def test_data_check_compares_pseudo_labels_with_the_images(voc_pseudo, capsys):
    root, voc, pseudo, labels = voc_pseudo
    report = check_dataset("voc2012", root, splits=["train"], pseudo_labels=pseudo)
    train = report["splits"]["train"]
    kinds = sorted((p["id"], p["kind"]) for p in train["problems"])
    assert kinds == [
        ("2007_000042", "size_mismatch"),
        ("2007_000061", "unknown_values"),
        ("2007_000063", "missing"),
    ]
    assert [w["kind"] for w in train["warnings"]] == ["extra_label"]
    assert train["num_ok"] == 2
    assert train["class_pixels"]["aeroplane"] == sum(
        int((labels[i] == 1).sum()) for i in ("2007_000032", "2007_000039")
    )
    rc = main(["data", "check", root, "--dataset", "voc2012", "--split", "train",
               "--pseudo-labels", pseudo])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 1
    assert "PROBLEM [missing]" in text and "PROBLEM [size_mismatch]" in text
    assert "WARNING [extra_label]" in text and "2009_999999.png" in text
    assert main(["data", "check", root, "--dataset", "voc2012", "--pseudo-labels", "/no/such"]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_pseudo_labels_by_example_id_and_other_datasets(tmp_path, rng):
    """Cityscapes image stems end in _leftImg8bit: labels named by the example id match too;
    they hold train ids (0..18), not the 34 label ids the dataset's own files hold."""
    root = str(tmp_path / "cs")
    names = ["aachen_000000_000019", "bochum_000000_000313"]
    u.make_cityscapes(root, "train", names, [np.zeros((8, 8), np.uint8)] * 2, rng)
    pseudo = str(tmp_path / "pl")
    train_ids = np.full((8, 8), 18, np.uint8)
    train_ids[0, 0] = 255
    u.write_png(os.path.join(pseudo, f"{names[0]}.png"), train_ids)
    u.write_png(os.path.join(pseudo, f"{names[1]}_leftImg8bit.png"), train_ids)
    listing = list_dataset("cityscapes", "train", root, pseudo_labels=pseudo)
    assert not listing.problems and not listing.warnings
    for ex in listing.examples:
        np.testing.assert_array_equal(decode_example(ex, listing.label_map)[1], train_ids)

    # COCO-Stuff 10k without its .mat files: the labels are 0..181 PNGs.
    stuff = str(tmp_path / "stuff")
    u.make_cocostuff10k(stuff, ["a", "b"], ["c"], rng)
    for name in os.listdir(os.path.join(stuff, "annotations")):
        os.remove(os.path.join(stuff, "annotations", name))
    pl = str(tmp_path / "stuff_pl")
    u.write_png(os.path.join(pl, "a.png"), np.full((12, 16), 181))
    u.write_png(os.path.join(pl, "b.png"), np.full((12, 16), 0))
    report = check_dataset("cocostuff10k", stuff, splits=["train"], pseudo_labels=pl)
    assert report["num_problems"] == 0
    assert report["splits"]["train"]["class_pixels"]["wood"] == 12 * 16


def test_config_keys_for_the_new_datasets_and_pseudo_labels():
    def config(data):
        return {
            "model": {"name": "deeplabv2_mobilenetv2_aspp_l"},
            "data": data,
            "output": {"workdir": "unused"},
        }

    validate(config({"name": "voc2012", "root": "r", "train": {"pseudo_labels": "pl"}}))
    validate(config({"name": "coco2014", "root": "r", "crowd": "class", "cache_dir": "c"}))
    validate(config({"name": "cocostuff10k", "root": "r", "list_file": "l.txt"}))
    validate(config({"name": "cocostuff164k", "root": "r", "val": {"split": "val2017"}}))
    with pytest.raises(ValueError) as err:
        validate(config({"name": "coco2014", "crowd": "drop", "pseudo_labels": 3}))
    assert "data.crowd must be one of ['ignore', 'class']" in str(err.value)
    assert "data.pseudo_labels must be a non-empty string. Received: 3" in str(err.value)
    with pytest.raises(ValueError, match="'crowd' is a key of 'coco2014'"):
        validate(config({"name": "cocostuff164k", "crowd": "ignore"}))
    with pytest.raises(ValueError, match="pseudo_labels is not a key of dataset 'synthetic'"):
        validate(config({"name": "synthetic", "pseudo_labels": "pl"}))
    with pytest.raises(ValueError, match="pseudo_labels replaces the labels of files"):
        validate(config({"name": "voc2012", "source": "tfds", "pseudo_labels": "pl"}))


def test_check_cli_options_apply_only_where_they_belong(tmp_path, rng, capsys):
    root = str(tmp_path)
    u.make_cocostuff164k(root, "val2017", ["000000000139"], rng)
    argv = ["data", "check", root, "--dataset", "cocostuff164k", "--split", "val", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["splits"]["val"]["num_ok"] == 1
    assert main([*argv, "--crowd", "class"]) == 2
    assert "--crowd does not apply to cocostuff164k" in capsys.readouterr().err
    assert main([*argv, "--list-file", "x.txt"]) == 2
    assert "--list-file does not apply to cocostuff164k" in capsys.readouterr().err


@pytest.mark.large
def test_training_runs_on_cocostuff_with_pseudo_labels(tmp_path, rng):
    """A training config on COCO-Stuff 164k (182 classes) with pseudo-labels for train and the
    ground truth for val runs to its end."""
    from deeplab_tf.training.trainer import train

    root, pl = str(tmp_path / "cs"), str(tmp_path / "pl")
    stems = [f"{i:012d}" for i in range(4)]
    u.make_cocostuff164k(root, "train2017", stems, rng, size=(40, 48))
    u.make_cocostuff164k(root, "val2017", ["000000000139"], rng, size=(40, 48))
    for stem in stems:
        u.write_png(os.path.join(pl, f"{stem}.png"), rng.integers(0, 182, (40, 48)))
    workdir = str(tmp_path / "run")
    config = {
        "model": {"name": "deeplabv2_mobilenetv2_aspp_l", "weights": None, "num_classes": 182},
        "data": {
            "name": "cocostuff164k",
            "root": root,
            "train": {"split": "train", "pseudo_labels": pl},
            "val": {"split": "val"},
        },
        "train": {"steps": 2, "batch_size": 2, "crop_size": 32, "verbose": 0},
        "output": {"workdir": workdir, "checkpoint_every": 1, "tensorboard": False},
    }
    train(config)
    assert os.path.isfile(os.path.join(workdir, "model.keras"))
    # A pseudo-label folder missing one image stops the run before it starts, naming it.
    os.remove(os.path.join(pl, f"{stems[2]}.png"))
    config["output"]["workdir"] = str(tmp_path / "run2")
    with pytest.raises(DatasetError, match=rf"{stems[2]}.png: pseudo-label not found"):
        train(config)
    assert not os.path.exists(os.path.join(tmp_path, "run2", "model.keras"))
