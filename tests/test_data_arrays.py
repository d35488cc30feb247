"""Folder datasets of images with any number of channels: ``.npy`` and multi-channel TIFF images
(tifffile) with PNG or ``.npy`` masks, trained with ``DeepLabV2(input_channels=N)``."""

import os
import sys

import numpy as np
import pytest
from PIL import Image

from deeplab_tf.data import load_dataset
from deeplab_tf.data.check import check_dataset, format_report
from deeplab_tf.data.readers import DatasetError

tifffile = pytest.importorskip("tifffile")  # the [tiff] extra, part of the [test] extra

C = 4


def write_folder(root, n=4, size=(20, 24), channels=C, dtype=np.uint16, seed=0):
    """``n`` examples cycling over .npy (H, W, C), planar TIFF (C, H, W) and contiguous TIFF
    (H, W, C) images, with PNG and .npy masks; returns ``{stem: (image, mask)}``."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "masks"), exist_ok=True)
    out = {}
    for i in range(n):
        stem = f"tile_{i:02d}"
        image = rng.integers(0, 4000, (*size, channels)).astype(dtype)
        mask = rng.integers(0, 3, size).astype(np.uint8)
        mask[0, :3] = 255
        kind = i % 3
        if kind == 0:
            np.save(os.path.join(root, "images", stem + ".npy"), image)
        elif kind == 1:
            tifffile.imwrite(
                os.path.join(root, "images", stem + ".tif"),
                np.moveaxis(image, -1, 0),
                planarconfig="separate",
            )
        else:
            tifffile.imwrite(os.path.join(root, "images", stem + ".tiff"), image)
        if i % 2:
            np.save(os.path.join(root, "masks", stem + ".npy"), mask.astype(np.int64))
        else:
            Image.fromarray(mask).save(os.path.join(root, "masks", stem + ".png"))
        out[stem] = (image, mask)
    return out


def test_npy_and_tiff_images_with_png_and_npy_masks_load_as_stored(tmp_path):
    written = write_folder(str(tmp_path), n=6)
    ds, info = load_dataset("folder", "train", str(tmp_path), num_classes=3)
    assert info.image_format.channels == C and info.image_format.dtype == "float32"
    assert info.image_format.stored_dtype == "uint16"
    assert ds.element_spec["image"].shape.as_list() == [None, None, C]
    assert ds.element_spec["image"].dtype.name == "float32"
    seen = set()
    for element in ds:
        stem = element["id"].numpy().decode()
        image, mask = written[stem]
        np.testing.assert_array_equal(element["image"].numpy(), image.astype(np.float32))
        np.testing.assert_array_equal(element["label"].numpy(), mask)
        seen.add(stem)
    assert seen == set(written)
    # uint8 arrays stay uint8; a 2-D array is one channel.
    grey = tmp_path / "grey"
    os.makedirs(grey / "images")
    os.makedirs(grey / "masks")
    np.save(grey / "images" / "a.npy", np.arange(20 * 24, dtype=np.uint8).reshape(20, 24))
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(grey / "masks" / "a.png")
    ds, info = load_dataset("folder", "train", str(grey), num_classes=2)
    (element,) = list(ds)
    assert element["image"].dtype.name == "uint8" and element["image"].shape == (20, 24, 1)
    assert info.image_format.channels == 1


def _bad_folder(root):
    write_folder(root, n=3)
    images, masks = os.path.join(root, "images"), os.path.join(root, "masks")
    good_mask = np.zeros((20, 24), np.uint8)
    # three channels instead of four
    np.save(os.path.join(images, "z_three.npy"), np.zeros((20, 24, 3), np.uint16))
    Image.fromarray(good_mask).save(os.path.join(masks, "z_three.png"))
    # an unsupported dtype
    np.save(os.path.join(images, "z_complex.npy"), np.zeros((20, 24, C), np.complex64))
    Image.fromarray(good_mask).save(os.path.join(masks, "z_complex.png"))
    # a mask of another size
    np.save(os.path.join(images, "z_size.npy"), np.zeros((20, 24, C), np.uint16))
    np.save(os.path.join(masks, "z_size.npy"), np.zeros((21, 24), np.uint8))
    # a float mask
    np.save(os.path.join(images, "z_float.npy"), np.zeros((20, 24, C), np.uint16))
    np.save(os.path.join(masks, "z_float.npy"), np.zeros((20, 24), np.float32))


def test_data_check_names_each_file_with_other_channels_dtype_or_size(tmp_path, capsys):
    from deeplab_tf.cli import main

    root = str(tmp_path)
    _bad_folder(root)
    report = check_dataset("folder", root, num_classes=3)
    problems = {os.path.basename(p["path"]): p for p in report["splits"]["train"]["problems"]}
    assert set(problems) == {"z_three.npy", "z_complex.npy", "z_size.npy", "z_float.npy"}
    assert problems["z_three.npy"]["kind"] == "channels"
    assert "image has 3 channel(s)" in problems["z_three.npy"]["error"]
    assert "4 channel(s) of float32, stored as uint16" in problems["z_three.npy"]["error"]
    assert "tile_00.npy" in problems["z_three.npy"]["error"]  # where the format was read
    assert "dtype complex64 is not supported" in problems["z_complex.npy"]["error"]
    assert problems["z_size.npy"]["kind"] == "size_mismatch"
    assert "2-D integer array" in problems["z_float.npy"]["error"]
    assert report["splits"]["train"]["num_ok"] == 3
    assert main(["data", "check", root, "--dataset", "folder", "--num-classes", "3"]) == 1
    out = capsys.readouterr().out
    assert "images: 4 channel(s), float32 (stored uint16), as " in out
    assert "z_three.npy: image has 3 channel(s)" in out
    assert format_report(report).count("PROBLEM") == 4
    # Loading stops before decoding anything, naming the files it cannot use.
    with pytest.raises(DatasetError, match=r"z_complex\.npy.*\n.*z_three\.npy"):
        load_dataset("folder", "train", root, num_classes=3)


def test_tiff_without_tifffile_asks_for_the_extra(tmp_path, monkeypatch):
    from deeplab_tf.data.readers import read_image

    path = str(tmp_path / "a.tif")
    tifffile.imwrite(path, np.zeros((4, 8, 8), np.uint16), planarconfig="separate")
    monkeypatch.setitem(sys.modules, "tifffile", None)  # import tifffile -> ImportError
    with pytest.raises(ImportError, match=r'a\.tif.*pip install "deeplab_tf\[tiff\]"'):
        read_image(path)
    # An RGB TIFF still reads through Pillow.
    rgb = str(tmp_path / "rgb.tif")
    Image.fromarray(np.full((5, 6, 3), 7, np.uint8)).save(rgb)
    assert read_image(rgb).shape == (5, 6, 3)


def _config(root, workdir, **model):
    return {
        "model": {
            "name": "deeplabv2_mobilenetv2_aspp_l",
            "head": "aspp",
            "rates": [1],
            "weights": None,
            "input_channels": C,
            "channel_mean": [2000.0] * C,
            "channel_std": [1150.0] * C,
            **model,
        },
        "data": {"name": "folder", "root": root, "num_classes": 3, "train": {"split": "train"}},
        "train": {
            "steps": 2,
            "batch_size": 2,
            "crop_size": 32,
            "scales": [1.0],
            "optimizer": "adam",
            "base_lr": 1e-3,
            "seed": 0,
            "verbose": 0,
        },
        "output": {"workdir": workdir, "checkpoint_every": 2, "tensorboard": False},
    }


@pytest.mark.large
def test_bad_inputs_stop_before_training_naming_the_file(tmp_path):
    from deeplab_tf.training import train

    root = str(tmp_path / "data")
    write_folder(root)
    workdir = str(tmp_path / "run")
    # The model takes 3 channels, the images have 4.
    cfg = _config(root, workdir, input_channels=3, channel_mean=[1.0] * 3, channel_std=[1.0] * 3)
    with pytest.raises(ValueError, match=r"4 channel\(s\) \(read from .*tile_00\.npy\) but the "):
        train(cfg)
    # Three-channel uint16 images with a model that expects 0..255 (no channel_mean / std).
    three = str(tmp_path / "three")
    write_folder(three, channels=3)
    cfg = _config(three, workdir)
    for key in ("input_channels", "channel_mean", "channel_std"):
        del cfg["model"][key]
    with pytest.raises(ValueError, match=r"images are float32 \(stored as uint16\) \(read from "):
        train(cfg)
    # A mask of another size: named before training.
    np.save(os.path.join(root, "images", "z.npy"), np.zeros((20, 24, C), np.uint16))
    Image.fromarray(np.zeros((19, 24), np.uint8)).save(os.path.join(root, "masks", "z.png"))
    with pytest.raises(ValueError, match=r"z\.png: label size 24x19 \(WxH\) differs"):
        train(_config(root, workdir))
    os.remove(os.path.join(root, "masks", "z.png"))
    os.remove(os.path.join(root, "images", "z.npy"))
    # An unsupported dtype.
    np.save(os.path.join(root, "images", "z.npy"), np.zeros((20, 24, C), np.bool_))
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(os.path.join(root, "masks", "z.png"))
    with pytest.raises(DatasetError, match=r"z\.npy: image dtype bool is not supported"):
        train(_config(root, workdir))
    assert not os.path.exists(workdir)  # nothing was written


@pytest.mark.large
@pytest.mark.multiprocess
def test_train_on_a_four_channel_folder_through_the_cli(tmp_path):
    import yaml

    from tests._fresh_process import run_cli, run_python

    root = str(tmp_path / "data")
    write_folder(root, n=4, size=(40, 44))
    workdir = str(tmp_path / "run")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(_config(root, workdir)))
    proc = run_cli("train", "--config", str(path), "--mixed-precision", "bfloat16")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "trained 2 steps" in proc.stdout
    code = (
        "import sys, numpy as np, keras, deeplab_tf\n"
        "m = keras.saving.load_model(sys.argv[1])\n"
        "c = m.get_config()\n"
        "assert c['input_channels'] == 4 and c['preprocessing'] == 'normalize', c\n"
        "assert c['dtype'] == 'mixed_bfloat16', c\n"
        "x = np.load(sys.argv[2]).astype('float32')[None]\n"
        "y = keras.ops.convert_to_numpy(m(x))\n"
        "assert y.shape == (1, 5, 6, 3) and np.isfinite(y).all(), y.shape\n"
        "print('ok')\n"
    )
    image = os.path.join(root, "images", "tile_00.npy")
    out = run_python(code, os.path.join(workdir, "model.keras"), image)
    assert out.stdout.strip().endswith("ok")
