"""``deeplab-tf data check``: counts, class histograms and every problem, on fake trees."""

import json
import os

import numpy as np
import pytest

from deeplab_tf.cli import main
from deeplab_tf.data.check import check_dataset
from deeplab_tf.data.palettes import VOC_CLASSES, voc_palette
from tests import _data_utils as u

IDS = ["2007_000032", "2007_000039", "2007_000042", "2007_000061", "2007_000063"]


@pytest.fixture
def broken_voc(tmp_path, rng):
    root = str(tmp_path / "data")
    voc, written = u.make_voc(root, IDS, ["2007_000033"], rng)
    seg = os.path.join(voc, "SegmentationClass")
    os.remove(os.path.join(seg, "2007_000039.png"))  # missing mask
    with open(os.path.join(voc, "JPEGImages", "2007_000042.jpg"), "wb") as f:
        f.write(b"GIF89a not a jpeg")  # corrupt image
    u.write_png(os.path.join(seg, "2007_000061.png"), np.zeros((4, 4), np.uint8), voc_palette())
    bad = written["2007_000063"][1].copy()
    bad[0, :2] = [30, 31]
    u.write_png(os.path.join(seg, "2007_000063.png"), bad, voc_palette())  # unknown values
    return root, voc, written


def test_check_reports_every_problem_and_exact_histogram(broken_voc):
    root, voc, written = broken_voc
    report = check_dataset("voc2012", root, splits=["train", "val"])
    train = report["splits"]["train"]
    assert train["num_listed"] == 5 and train["num_ok"] == 1
    kinds = sorted((p["id"], p["kind"]) for p in train["problems"])
    assert kinds == [
        ("2007_000039", "missing"),
        ("2007_000042", "corrupt"),
        ("2007_000061", "size_mismatch"),
        ("2007_000063", "unknown_values"),
    ]
    assert any("[30, 31]" in p["error"] for p in train["problems"])
    # Histogram of the one good example, computed independently.
    label = written["2007_000032"][1]
    for c, name in enumerate(VOC_CLASSES):
        assert train["class_pixels"][name] == int((label == c).sum())
        assert train["class_images"][name] == int((label == c).any())
    assert train["ignore_pixels"] == int((label == 255).sum())
    assert train["min_size"] == [20, 24]
    assert report["splits"]["val"]["problems"] == []
    assert report["num_problems"] == 4


def test_cli_json_output_and_exit_status(broken_voc, tmp_path, capsys):
    root, voc, written = broken_voc
    out = str(tmp_path / "reports" / "check.json")
    rc = main(["data", "check", root, "--dataset", "voc2012", "--json", "--output", out])
    assert rc == 1
    printed = json.loads(capsys.readouterr().out)
    with open(out) as f:
        saved = json.load(f)
    assert printed == saved
    assert printed["num_problems"] == 4
    assert printed["splits"]["val"]["num_ok"] == 1
    assert not [n for n in os.listdir(tmp_path / "reports") if n.startswith(".tmp")]

    # An existing report is replaced only with --overwrite; a list file is never an output.
    with open(out, "w") as f:
        f.write("mine")
    assert main(["data", "check", root, "--dataset", "voc2012", "--output", out]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert open(out).read() == "mine"
    assert main(["data", "check", root, "--dataset", "voc2012", "--output", out, "--overwrite"])
    assert json.load(open(out)) == saved
    capsys.readouterr()
    listing = os.path.join(tmp_path, "val.txt")
    with open(listing, "w") as f:
        f.write("2007_000032\n")
    argv = ["data", "check", root, "--dataset", "voc2012", "--list-file", listing]
    assert main([*argv, "--output", listing, "--overwrite"]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert open(listing).read() == "2007_000032\n"

    rc = main(["data", "check", root, "--dataset", "voc2012", "--split", "val"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "[val] 1 listed, 1 checked, 1 ok, 0 problem(s)" in text
    assert "0 problem(s) in total" in text

    main(["data", "check", root, "--dataset", "voc2012", "--split", "train"])
    text = capsys.readouterr().out
    assert "PROBLEM [missing]" in text and "2007_000039.png" in text
    assert "PROBLEM [corrupt]" in text and "2007_000042.jpg" in text


def test_cli_folder_and_user_errors(tmp_path, rng, capsys):
    root = str(tmp_path)
    u.write_jpeg(os.path.join(root, "images", "a.jpg"), u.smooth_image(rng, 6, 6))
    u.write_png(os.path.join(root, "masks", "a.png"), np.array([[0, 1, 1, 255, 0, 0]] * 6))
    u.write_png(os.path.join(root, "masks", "orphan.png"), np.zeros((6, 6)))
    rc = main(["data", "check", root, "--dataset", "folder", "--class-names", "bg,fg", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0
    split = report["splits"]["train"]
    assert split["class_pixels"] == {"bg": 18, "fg": 12} and split["ignore_pixels"] == 6
    assert split["warnings"][0]["kind"] == "orphan_mask"

    assert main(["data", "check", root, "--dataset", "folder"]) == 2
    assert "--num-classes or --class-names" in capsys.readouterr().err
    assert main(["data", "check", str(tmp_path / "nope"), "--dataset", "voc2012"]) == 2
    assert "not a directory" in capsys.readouterr().err
    # A split that cannot be listed is reported, not a crash.
    rc = main(["data", "check", root, "--dataset", "cityscapes", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 1 and "leftImg8bit" in report["splits"]["train"]["error"]


def test_empty_folder_dataset_is_a_problem(tmp_path, capsys):
    root = tmp_path / "empty"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rc = main(["data", "check", str(root), "--dataset", "folder", "--num-classes", "3"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "PROBLEM [empty] split 'train' of folder has no examples" in out
    assert "1 problem(s) in total" in out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["data", "check", ".", "--dataset", "folder", "--limit", "-5"],
         "argument --limit: expected a positive integer, got -5"),
        (["data", "check", ".", "--dataset", "folder", "--workers", "0"],
         "argument --workers: expected a positive integer, got 0"),
        (["data", "check", ".", "--dataset", "folder", "--num-classes", "x"],
         "argument --num-classes: expected a positive integer, got 'x'"),
        (["predict", "a.png", "--out", "o", "--model", "m", "--max-pixels", "-5"],
         "argument --max-pixels: expected a positive integer, got -5"),
        (["predict", "a.png", "--out", "o", "--model", "m", "--overlap", "1.5"],
         "argument --overlap: expected a number in [0, 1), got 1.5"),
        (["predict", "a.png", "--out", "o", "--model", "m", "--alpha", "nan"],
         "argument --alpha: expected a number in [0, 1], got 'nan'"),
        (["predict", "a.png", "--out", "o", "--model", "m", "--scales", "1", "-0.5"],
         "argument --scales: expected a positive number, got -0.5"),
        (["predict", "a.png", "--out", "o", "--model", "m", "--tile-size", "-1"],
         "argument --tile-size: expected an integer >= 0, got -1"),
        (["evaluate", "--model", "m", "--dataset", "synthetic", "--limit", "0"],
         "argument --limit: expected a positive integer, got 0"),
        (["export", "m", "--out", "o", "--num-classes", "-2"],
         "argument --num-classes: expected a positive integer, got -2"),
        (["export", "m", "--out", "o", "--scales", "inf"],
         "argument --scales: expected a positive number, got 'inf'"),
        (["train", "--config", "synthetic_tiny", "--steps", "-1"],
         "argument --steps: expected a positive integer, got -1"),
        (["crf-search", "--model", "m", "--num-images", "0"],
         "argument --num-images: expected a positive integer, got 0"),
        (["crf-search", "--model", "m", "--bi-w", "3,-4"],
         "argument --bi-w: expected comma-separated positive numbers, got '3,-4'"),
        (["convert-caffe", "x.caffemodel", "--arch", "auto", "--out", "o.weights.h5",
          "--num-classes", "0"],
         "argument --num-classes: expected a positive integer, got 0"),
    ],
)  # fmt: skip
def test_numeric_options_are_validated_by_the_parser(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
