"""``deeplab-tf predict`` on what an ``input_channels=N`` model was trained on: ``.npy`` and
multi-channel TIFF files, read as training reads them, with N-channel CRF features and a
displayable overlay; other channel counts refused per file, naming it."""

import numpy as np
import pytest
from PIL import Image

from deeplab_tf import DeepLabV2, MultiScaleInference
from deeplab_tf.inference.io import ImageReadError, read_image
from deeplab_tf.inference.predict import Predictor
from deeplab_tf.visualize import display_image

tifffile = pytest.importorskip("tifffile")  # the [tiff] extra, part of the [test] extra


def _four_channel_model():
    return DeepLabV2(
        "mobilenetv2", head="aspp", rates=(1, 2), num_classes=3, input_channels=4,
        channel_mean=(2000.0,) * 4, channel_std=(1000.0,) * 4,
    )  # fmt: skip


def _images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    folder.mkdir()
    a = rng.integers(0, 4000, (30, 34, 4)).astype(np.uint16)
    b = rng.integers(0, 4000, (26, 22, 4)).astype(np.uint16)
    np.save(folder / "a.npy", a)
    tifffile.imwrite(folder / "b.tif", np.moveaxis(b, -1, 0), planarconfig="separate")
    return folder, {"a": a.astype(np.float32), "b": b.astype(np.float32)}


def test_reader_keeps_channels_and_refuses_other_counts(tmp_path):
    folder, arrays = _images(tmp_path)
    image, notes = read_image(folder / "a.npy", channels=4)
    assert image.dtype == np.float32 and notes == []
    np.testing.assert_array_equal(image, arrays["a"])
    np.testing.assert_array_equal(read_image(folder / "b.tif", channels=4)[0], arrays["b"])
    with pytest.raises(ImageReadError, match=r"a.npy: image has 4 channel\(s\) \(float32\); the "
                       r"model takes 3 \(input_channels=3\)"):  # fmt: skip
        read_image(folder / "a.npy")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "c.png")
    with pytest.raises(ImageReadError, match="c.png: image has 3 channel.*store 4-channel images"):
        read_image(folder / "c.png", channels=4)
    with pytest.raises(ImageReadError, match=r"30 = 1,020 pixels, above the limit of 1,000"):
        read_image(folder / "a.npy", max_pixels=1000, channels=4)
    # An RGB model still reads photos as before, and 3-channel arrays with their values.
    np.save(folder / "rgb.npy", np.full((5, 6, 3), 300.0, np.float32))
    image, notes = read_image(folder / "rgb.npy")
    assert image.max() == 300.0 and "values up to 300, read as stored" in notes[0]
    assert read_image(folder / "c.png")[0].dtype == np.uint8


def test_display_image_of_n_channels():
    x = np.zeros((2, 3, 4), np.float32)
    x[0, 0] = [4000, 10, 20, 30]
    x[1, 2] = [-100, 0, 0, 0]
    shown = display_image(x)
    assert shown.shape == (2, 3, 3) and shown.dtype == np.uint8
    assert shown.max() == 255 and shown.min() == 0  # stretched over the image's own range
    grey = display_image(np.arange(6, dtype=np.uint16).reshape(2, 3, 1))
    assert (grey[..., 0] == grey[..., 2]).all() and grey[1, 2, 0] == 255
    rgb = np.arange(18, dtype=np.uint8).reshape(2, 3, 3)
    assert display_image(rgb) is rgb


def test_predictor_checks_the_channel_count():
    predictor = Predictor(MultiScaleInference(_four_channel_model(), output="probs"))
    assert predictor.channels == 4
    with pytest.raises(ValueError, match=r"image must be \(H, W, 4\) \(4 channels"):
        predictor(np.zeros((9, 9, 3), np.float32))
    assert predictor(np.zeros((9, 9, 4), np.float32)).shape == (9, 9, 3)


@pytest.mark.large
@pytest.mark.multiprocess
def test_cli_predicts_on_four_channel_files_as_trained(tmp_path):
    """A saved 4-channel model, ``deeplab-tf predict`` in its own process: label PNGs equal to
    the model's argmax in this process, an overlay of the first three channels, a wrong file
    reported by name (exit 1) with the rest written; the CRF needs per-channel stds (asked for
    before any work) and then runs on the 4 channels."""
    from tests._fresh_process import run_cli

    model = _four_channel_model()
    model_path = tmp_path / "m4.keras"
    model.save(model_path)
    folder, arrays = _images(tmp_path)
    np.save(folder / "wrong.npy", np.zeros((12, 12, 3), np.float32))
    out = tmp_path / "out"
    proc = run_cli("predict", str(folder), "--model", str(model_path), "--out", str(out),
                   "--no-progress")  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "wrong.npy: image has 3 channel(s) (float32); the model takes 4" in proc.stderr
    assert "wrote 2 of 3 image(s)" in proc.stdout
    msc = MultiScaleInference(model, output="probs")
    for stem, image in arrays.items():
        expected = msc(image[None]).numpy()[0].argmax(-1)
        label = np.asarray(Image.open(out / f"{stem}.png"))
        np.testing.assert_array_equal(label, expected)
        overlay = np.asarray(Image.open(out / f"{stem}_overlay.png"))
        assert overlay.shape == (*image.shape[:2], 3)
    assert not (out / "wrong.png").exists()

    # The CRF: 4 channels need 4 standard deviations, refused before any output is made.
    crf_out = tmp_path / "crf"
    argv = ["predict", str(folder / "a.npy"), "--model", str(model_path), "--out", str(crf_out),
            "--no-progress", "--crf"]  # fmt: skip
    bad = run_cli(*argv)
    assert bad.returncode == 2 and "pass --crf-feature-std with 4 values" in bad.stderr
    bad = run_cli(*argv, "--crf-feature-std", "3,3,3")
    assert bad.returncode == 2 and "one value per image channel: the model takes 4" in bad.stderr
    assert not crf_out.exists()
    uint8 = (arrays["a"] / 16).astype(np.uint8)  # the CRF takes 0..255 features
    np.save(folder / "a.npy", uint8)
    ok = run_cli(*argv, "--crf-feature-std", "13,13,13,13")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert (crf_out / "a.png").exists() and (crf_out / "a_overlay.png").exists()
