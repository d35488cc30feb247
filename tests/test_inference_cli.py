"""``deeplab-tf predict`` and ``deeplab-tf evaluate`` end to end on a tiny model."""

import json
import os
import struct
import zlib

import keras
import numpy as np
import pytest
from PIL import Image

from deeplab_tf.cli import main
from deeplab_tf.data.palettes import voc_palette
from deeplab_tf.models import DeepLabV2


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    keras.utils.set_random_seed(11)
    path = str(tmp_path_factory.mktemp("model") / "tiny.keras")
    DeepLabV2("vgg16", "largefov", num_classes=3).save(path)
    return path


def _png_with_size(path, width, height):
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")
    path.write_bytes(data)


def _photo(rng, h, w):
    return rng.integers(0, 256, size=(h, w, 3)).astype(np.uint8)


def test_predict_batch_with_bad_files(model_file, tmp_path, rng, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(_photo(rng, 40, 45)).save(src / "good.jpg")
    Image.fromarray(_photo(rng, 33, 30)[..., 0], "L").save(src / "grey.png")
    Image.fromarray(
        np.dstack([_photo(rng, 30, 41), np.full((30, 41), 128, np.uint8)]), "RGBA"
    ).save(src / "rgba.png")
    Image.fromarray(_photo(rng, 25, 26)).save(src / "sub" / "a.png")
    Image.fromarray(_photo(rng, 21, 19)).save(src / "sub" / "b.bmp")
    (src / "sub" / "readme.txt").write_text("not an image")
    Image.fromarray(_photo(rng, 20, 20)).save(src / "glob_1.png")
    Image.fromarray(_photo(rng, 60, 60)).save(src / "big.png")  # 3600 px > --max-pixels
    (src / "text.jpg").write_text("this is not a JPEG")
    (src / "empty.png").write_bytes(b"")
    _png_with_size(src / "zero.png", 0, 5)
    out = tmp_path / "out"
    argv = [
        "predict", str(src / "good.jpg"), str(src / "grey.png"), str(src / "rgba.png"),
        str(src / "sub"), str(src / "glob_*.png"), str(src / "big.png"), str(src / "text.jpg"),
        str(src / "empty.png"), str(src / "zero.png"), str(src / "missing.jpg"),
        "--out", str(out), "--model", model_file, "--probs", "--max-pixels", "2000",
        "--flip", "--tile-size", "32", "--no-progress",
    ]  # fmt: skip
    rc = main(argv)
    captured = capsys.readouterr()
    err = captured.err
    assert rc == 1, captured
    assert "wrote 6 of 10 image(s)" in captured.out and "5 failed" in captured.out
    assert "big.png: image is 60x60 = 3,600 pixels, above the limit of 2,000" in err
    assert "text.jpg: not an image file" in err
    assert "empty.png: file is empty (0 bytes)" in err
    assert "zero.png: image is empty (0x5 pixels)" in err
    assert "missing.jpg: no such file or directory" in err
    assert "grey.png: L image converted to RGB" in err
    assert "rgba.png: RGBA image: alpha channel dropped" in err
    sizes = {"good": (40, 45), "grey": (33, 30), "rgba": (30, 41), "a": (25, 26), "b": (21, 19)}
    sizes["glob_1"] = (20, 20)
    names = sorted(os.listdir(out))
    assert names == sorted(f"{s}{x}" for s in sizes for x in (".png", "_overlay.png", "_probs.npy"))
    for stem, (h, w) in sizes.items():
        label = Image.open(out / f"{stem}.png")
        assert label.mode == "P" and label.size == (w, h)
        assert np.asarray(label).max() < 3
        pal = np.asarray(label.getpalette(), np.uint8).reshape(-1, 3)[:3]
        np.testing.assert_array_equal(pal, voc_palette()[:3])
        over = Image.open(out / f"{stem}_overlay.png")
        assert over.mode == "RGB" and over.size == (w, h)
        probs = np.load(out / f"{stem}_probs.npy")
        assert probs.shape == (h, w, 3) and probs.dtype == np.float16
        np.testing.assert_allclose(probs.astype(np.float32).sum(-1), 1.0, atol=5e-3)
        np.testing.assert_array_equal(np.asarray(label), probs.astype(np.float32).argmax(-1))


def test_predict_matches_library_and_user_errors(model_file, tmp_path, rng, capsys):
    from deeplab_tf.inference import MultiScaleInference

    image = _photo(rng, 37, 43)
    Image.fromarray(image).save(tmp_path / "x.png")
    out = tmp_path / "out"
    args = ["predict", str(tmp_path / "x.png"), "--out", str(out), "--model", model_file]
    assert main([*args, "--scales", "1", "0.5"]) == 0
    msc = MultiScaleInference(keras.saving.load_model(model_file), scales=(1.0, 0.5))
    want = np.argmax(msc(image[None]).numpy()[0], -1)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "x.png")), want)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:  # refused by the parser, before any work
        main([*args, "--scales", "1", "-1"])
    assert stop.value.code == 2
    assert "--scales: expected a positive number, got -1" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "nope*.png"), "--out", str(out), "--model", "x"]) == 2
    err = capsys.readouterr().err
    assert "pattern matched no files" in err and "no input images found" in err
    assert main([*args[:-1], "not_a_model"]) == 2
    assert "must be a .keras file or one of" in capsys.readouterr().err


def _folder_dataset(root, rng, n=3):
    (root / "val" / "images").mkdir(parents=True)
    (root / "val" / "masks").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(_photo(rng, 33 + i, 40)).save(root / "val" / "images" / f"im{i}.png")
        mask = rng.integers(0, 3, size=(33 + i, 40)).astype(np.uint8)
        mask[0] = 255
        Image.fromarray(mask, "L").save(root / "val" / "masks" / f"im{i}.png")


@pytest.mark.large
def test_evaluate_folder_dataset_report(model_file, tmp_path, rng, capsys):
    _folder_dataset(tmp_path / "data", rng)
    report = tmp_path / "report.json"
    vis = tmp_path / "vis"
    argv = [
        "evaluate", "--dataset", "folder", "--root", str(tmp_path / "data"), "--split", "val",
        "--dataset-arg", "num_classes=3", "--model", model_file, "--scales", "1", "0.75",
        "--report", str(report), "--save-visuals", str(vis), "--num-visuals", "2",
        "--no-progress",
    ]  # fmt: skip
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "3 images" in captured.out and "mean IoU" in captured.out
    data = json.loads(report.read_text())
    assert data["settings"]["scales"] == [1.0, 0.75] and data["settings"]["upsample"] == "caffe"
    scores = data["scores"]
    assert scores["num_images"] == 3 and len(scores["per_class_iou"]) == 3
    cm = np.array(scores["confusion_matrix"])
    # The first row of every mask is ignore (255).
    assert cm.shape == (3, 3) and cm.sum() == scores["pixels"] == sum(
        40 * (32 + i) for i in range(3)
    )
    assert sorted(os.listdir(vis)) == ["0000_im0.png", "0001_im1.png"]
    assert main([*argv[:-1], "--overwrite", "--num-classes", "5"]) == 2
    assert "disagrees" in capsys.readouterr().err


@pytest.mark.large
def test_crf_flag(model_file, tmp_path, rng, capsys):
    """--crf refines with the model's preset (vgg16 here); without a CRF backend: clear error."""
    image = _photo(rng, 21, 26)
    Image.fromarray(image).save(tmp_path / "x.png")
    out = tmp_path / "o"
    args = ["predict", str(tmp_path / "x.png"), "--out", str(out), "--model", model_file]
    rc = main([*args, "--crf", "--probs"])
    try:
        from deeplab_tf.crf import DenseCRF
    except ImportError:
        assert rc == 2 and "CRF backend not available" in capsys.readouterr().err
        return
    from deeplab_tf.inference import MultiScaleInference

    assert rc == 0, capsys.readouterr().err
    probs = MultiScaleInference(keras.saving.load_model(model_file), scales=(1.0,))(image[None])
    want = DenseCRF.from_preset("vgg16")(image[None], probs).numpy()[0]
    got = np.load(out / "x_probs.npy").astype(np.float32)
    np.testing.assert_allclose(got, want, atol=2e-3)


@pytest.mark.large
def test_predict_never_overwrites_inputs_or_its_own_outputs(model_file, tmp_path, rng, capsys):
    """Refused before any inference, naming the paths; --overwrite replaces old outputs only."""
    folder = tmp_path / "inplace"
    folder.mkdir()
    Image.fromarray(_photo(rng, 20, 22)).save(folder / "photo.png")
    photo = (folder / "photo.png").read_bytes()
    base = ["--model", model_file, "--no-progress"]
    assert main(["predict", str(folder), "--out", str(folder), *base]) == 2
    err = capsys.readouterr().err
    assert "photo.png" in err and "would overwrite the input" in err and "Traceback" not in err
    assert (folder / "photo.png").read_bytes() == photo and os.listdir(folder) == ["photo.png"]
    # Two inputs whose outputs collide (a.jpg and a.png -> a.png), and an input that is the
    # overlay output of another one.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.jpg", "a.png"):
        Image.fromarray(_photo(rng, 20, 22)).save(src / name)
    out = tmp_path / "out"
    assert main(["predict", str(src), "--out", str(out), *base]) == 2
    err = capsys.readouterr().err
    assert "a.jpg" in err and "a.png" in err and "would both write" in err
    assert not out.exists()
    os.remove(src / "a.png")
    Image.fromarray(_photo(rng, 20, 22)).save(src / "a_overlay.png")
    assert main(["predict", str(src), "--out", str(out), *base]) == 2
    assert "would both write" in capsys.readouterr().err
    os.remove(src / "a_overlay.png")
    # A second run into the same folder refuses the existing outputs unless --overwrite.
    assert main(["predict", str(src), "--out", str(out), *base]) == 0
    first = (out / "a.png").read_bytes()
    capsys.readouterr()
    assert main(["predict", str(src), "--out", str(out), *base]) == 2
    err = capsys.readouterr().err
    assert "a.png' already exists" in err and "--overwrite" in err
    assert main(["predict", str(src), "--out", str(out), "--overwrite", *base]) == 0
    assert (out / "a.png").read_bytes() == first
    assert sorted(os.listdir(out)) == ["a.png", "a_overlay.png"]  # no temporaries left


def test_evaluate_refuses_existing_report_and_model_as_report(model_file, tmp_path, rng, capsys):
    _folder_dataset(tmp_path / "data", rng, n=1)
    report = tmp_path / "report.json"
    report.write_text("{}")
    argv = [
        "evaluate", "--dataset", "folder", "--root", str(tmp_path / "data"),
        "--dataset-arg", "num_classes=3", "--model", model_file, "--no-progress",
    ]  # fmt: skip
    assert main([*argv, "--report", str(report)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert report.read_text() == "{}"
    before = open(model_file, "rb").read()
    assert main([*argv, "--report", model_file, "--overwrite"]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert open(model_file, "rb").read() == before


@pytest.mark.large
def test_predict_crf_on_images_over_the_lattice_cap(model_file, tmp_path, capsys):
    """1333x1000 detailed photos exceed the CRF's vertex cap: each falls back to a downsampled
    CRF with a warning, and every image of the batch is written (before: the first failed with
    "Graph execution error:" and every later one with AlreadyExistsError)."""
    rng = np.random.default_rng(3)
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        Image.fromarray(_photo(rng, 1000, 1333)).save(src / f"p{i}.png")
    out = tmp_path / "out"
    argv = ["predict", str(src), "--out", str(out), "--model", model_file, "--crf"]
    with pytest.warns(UserWarning, match="downsampled 2x"):
        assert main([*argv, "--no-progress"]) == 0
    assert "wrote 2 of 2" in capsys.readouterr().out
    assert sorted(p for p in os.listdir(out) if p.endswith(".png") and "_" not in p) == [
        "p0.png",
        "p1.png",
    ]
