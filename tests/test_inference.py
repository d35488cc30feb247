"""MultiScaleInference, the upsampling rules and sliding windows against NumPy references."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab_tf.inference import (
    MultiScaleInference,
    Predictor,
    sliding_window,
    tile_cores,
    tile_starts,
)
from deeplab_tf.layers import resize_by_scale, resize_logits
from deeplab_tf.models import DeepLabV2, Logits

# --- independent NumPy references ------------------------------------------------------------


def _lerp_axis(x, src, axis):
    """Linear interpolation of ``x`` along ``axis`` at (clamped) fractional positions ``src``."""
    n = x.shape[axis]
    src = np.clip(np.asarray(src, dtype=np.float64), 0.0, n - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    w = src - lo
    shape = [1] * x.ndim
    shape[axis] = len(src)
    w = w.reshape(shape)
    return np.take(x, lo, axis=axis) * (1 - w) + np.take(x, hi, axis=axis) * w


def np_align_corners(x, oh, ow):
    """Bilinear resize of (N, h, w, C) with corners on corners."""
    h, w = x.shape[1:3]
    sy = np.arange(oh) * ((h - 1) / (oh - 1) if oh > 1 else 0.0)
    sx = np.arange(ow) * ((w - 1) / (ow - 1) if ow > 1 else 0.0)
    return _lerp_axis(_lerp_axis(x.astype(np.float64), sy, 1), sx, 2)


def np_half_pixel(x, oh, ow):
    """Bilinear resize of (N, h, w, C) with half-pixel centres (edge values clamped)."""
    h, w = x.shape[1:3]
    sy = (np.arange(oh) + 0.5) * h / oh - 0.5
    sx = (np.arange(ow) + 0.5) * w / ow - 0.5
    return _lerp_axis(_lerp_axis(x.astype(np.float64), sy, 1), sx, 2)


def np_caffe_upsample(x, oh, ow, stride=8):
    """Caffe Interp zoom: output pixel i samples score i / stride (then crop to (oh, ow))."""
    return _lerp_axis(_lerp_axis(x.astype(np.float64), np.arange(oh) / stride, 1),
                      np.arange(ow) / stride, 2)  # fmt: skip


def np_upsample(x, oh, ow, mode):
    return np_caffe_upsample(x, oh, ow) if mode == "caffe" else np_half_pixel(x, oh, ow)


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# --- a tiny local "network" with a NumPy twin ----------------------------------------------


class StrideSample(keras.layers.Layer):
    """Pads bottom/right by 7 and keeps every 8th pixel: ceil((H+7)/8) scores, like Caffe."""

    def call(self, x):
        x = tf.pad(x, [[0, 0], [0, 7], [0, 7], [0, 0]])
        return x[:, ::8, ::8, :]


NUM_CLASSES = 4


def toy_model():
    images = keras.Input((None, None, 3), name="images")
    x = StrideSample()(images)
    x = keras.layers.Rescaling(1 / 64.0)(x)
    x = keras.layers.Dense(NUM_CLASSES, name="mix")(x)
    model = keras.Model(images, Logits(8, name="logits")(x))
    rng = np.random.default_rng(3)
    model.get_layer("mix").set_weights(
        [
            rng.normal(size=(3, NUM_CLASSES)).astype("float32"),
            rng.normal(size=NUM_CLASSES).astype("float32"),
        ]
    )
    return model


def np_toy(model, x):
    kernel, bias = model.get_layer("mix").get_weights()
    xp = np.pad(x.astype(np.float64), [(0, 0), (0, 7), (0, 7), (0, 0)])[:, ::8, ::8, :]
    return (xp / 64.0) @ kernel + bias


def np_multiscale(model, x, scales, fusion, flip, upsample, fuse_at, output="probs"):
    """NumPy restatement of MultiScaleInference's documented algorithm."""
    n, hgt, wid = x.shape[:3]
    resize = np_align_corners if upsample == "caffe" else np_half_pixel
    branches = []
    for s in scales:
        sh, sw = max(1, int(np.floor(hgt * s))), max(1, int(np.floor(wid * s)))
        xs = x.astype(np.float64) if s == 1.0 else np_align_corners(x, sh, sw)
        for flipped in [False, True] if flip else [False]:
            logits = np_toy(model, xs[:, :, ::-1] if flipped else xs)
            branches.append((s, flipped, (sh, sw), logits))
    maps = []
    if fuse_at == "logits":
        grid = next(b[3] for b in branches if b[0] == 1.0 and not b[1]).shape[1:3]
        for _, flipped, _, logits in branches:
            logits = logits[:, :, ::-1] if flipped else logits
            maps.append(resize(logits, *grid))
    else:
        for s, flipped, (sh, sw), logits in branches:
            up = np_upsample(logits, sh, sw, upsample)
            up = up[:, :, ::-1] if flipped else up
            maps.append(up if s == 1.0 else resize(up, hgt, wid))
    stack = np.stack(maps)
    fused = stack.max(0) if fusion == "max" else np.log(np_softmax(stack).mean(0))
    if fuse_at == "logits":
        fused = np_upsample(fused, hgt, wid, upsample)
    return np_softmax(fused) if output == "probs" else fused


# --- upsampling rules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "h,w,oh,ow",
    [(5, 4, 33, 25), (5, 4, 32, 24), (5, 5, 28, 27), (4, 7, 25, 49), (4, 7, 24, 44), (1, 3, 1, 17)],
)
def test_caffe_rule_matches_numpy(h, w, oh, ow, rng):
    x = rng.normal(size=(2, h, w, 3)).astype("float32")
    got = resize_logits(tf.constant(x), (oh, ow), mode="caffe", stride=8).numpy()
    np.testing.assert_allclose(got, np_caffe_upsample(x, oh, ow), atol=2e-5)
    # Corner-aligned: every 8th output pixel is exactly a score.
    np.testing.assert_allclose(got[:, ::8, ::8], x[:, : (oh + 7) // 8, : (ow + 7) // 8], atol=1e-6)


@pytest.mark.parametrize("shape", [(5, 4), (4, 7), (6, 6)])
@pytest.mark.parametrize("size", [(33, 26), (32, 27), (7, 9), (3, 2)])
def test_half_pixel_rule_matches_numpy(shape, size, rng):
    x = rng.normal(size=(2, *shape, 3)).astype("float32")
    got = resize_logits(tf.constant(x), size, mode="half_pixel").numpy()
    np.testing.assert_allclose(got, np_half_pixel(x, *size), atol=2e-5)


def test_rules_differ_and_caffe_equals_numpy_align_corners_zoom(rng):
    x = rng.normal(size=(1, 5, 5, 2)).astype("float32")
    caffe = resize_logits(tf.constant(x), (33, 33), mode="caffe").numpy()
    half = resize_logits(tf.constant(x), (33, 33), mode="half_pixel").numpy()
    np.testing.assert_allclose(caffe, np_align_corners(x, 33, 33), atol=2e-5)
    assert np.abs(caffe - half).max() > 0.05


@pytest.mark.parametrize("hw", [(37, 50), (40, 33)])
@pytest.mark.parametrize("scale", [0.75, 0.5, 1.5])
def test_resize_by_scale_matches_numpy(hw, scale, rng):
    x = rng.uniform(0, 255, size=(1, *hw, 3)).astype("float32")
    got = resize_by_scale(tf.constant(x), scale).numpy()
    oh, ow = int(np.floor(hw[0] * scale)), int(np.floor(hw[1] * scale))
    np.testing.assert_allclose(got, np_align_corners(x, oh, ow), atol=1e-3)


# --- MultiScaleInference against the NumPy restatement ------------------------------------------


@pytest.mark.parametrize(
    "scales,fusion,flip,upsample,fuse_at",
    [
        ((1.0,), "max", False, "caffe", "logits"),
        ((1.0, 0.75, 0.5), "max", False, "caffe", "logits"),
        ((1.0, 0.75, 0.5), "mean", True, "caffe", "logits"),
        ((1.0, 0.75, 0.5), "max", True, "half_pixel", "logits"),
        ((0.5, 1.25), "max", True, "caffe", "image"),
        ((1.0, 0.75), "mean", False, "half_pixel", "image"),
    ],
)
@pytest.mark.parametrize("hw", [(37, 50), (32, 41)])
def test_multiscale_matches_numpy(scales, fusion, flip, upsample, fuse_at, hw, rng):
    model = toy_model()
    x = rng.uniform(0, 255, size=(2, *hw, 3)).astype("float32")
    msc = MultiScaleInference(
        model, scales, fusion, flip, upsample, output="logits", fuse_at=fuse_at
    )
    got = msc(x).numpy()
    want = np_multiscale(model, x, scales, fusion, flip, upsample, fuse_at, output="logits")
    assert got.shape == (2, *hw, NUM_CLASSES)
    np.testing.assert_allclose(got, want, atol=2e-3)
    probs = MultiScaleInference(model, scales, fusion, flip, upsample, fuse_at=fuse_at)(x).numpy()
    np.testing.assert_allclose(probs, np_softmax(want), atol=2e-4)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_single_scale_is_model_plus_caffe_upsampling(rng):
    model = toy_model()
    x = rng.uniform(0, 255, size=(1, 33, 40, 3)).astype("float32")
    got = MultiScaleInference(model, scales=(1.0,), output="logits")(x).numpy()
    want = np_caffe_upsample(model(x).numpy(), 33, 40)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_flip_is_exact_for_mirror_symmetric_input(rng):
    """A mirror-symmetric image gives the same scores with and without flipping."""
    model = toy_model()
    half = rng.uniform(0, 255, size=(1, 33, 17, 3)).astype("float32")
    x = np.concatenate([half, half[:, :, -2::-1]], axis=2)  # width 33, symmetric
    plain = MultiScaleInference(model, (1.0,), fuse_at="image")(x).numpy()
    flipped = MultiScaleInference(model, (1.0,), flip=True, fusion="mean", fuse_at="image")
    flipped = flipped(x).numpy()
    np.testing.assert_allclose(plain, flipped, atol=1e-5)


# --- a real DeepLab model inside: Keras plumbing ------------------------------------------------


@pytest.fixture(scope="module")
def vgg_tiny():
    keras.utils.set_random_seed(7)
    return DeepLabV2("vgg16", "largefov", num_classes=3)


@pytest.mark.large
def test_multiscale_save_reload_safe_mode(vgg_tiny, tmp_path, rng):
    msc = MultiScaleInference(vgg_tiny, scales=(1.0, 0.5), fusion="max", flip=True)
    x = rng.integers(0, 256, size=(1, 41, 35, 3)).astype("uint8")
    want = msc.predict(x, verbose=0)
    assert want.shape == (1, 41, 35, 3)
    cfg = msc.get_config()
    assert cfg["model"]["class_name"] == "DeepLabV2" and cfg["scales"] == [1.0, 0.5]
    path = str(tmp_path / "msc.keras")
    msc.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, MultiScaleInference) and loaded.flip and loaded.scales == (1.0, 0.5)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), want, atol=1e-5)
    # Weights are shared with the wrapped model, not copied.
    assert msc.trainable_weights[0] is vgg_tiny.trainable_weights[0]
    # uint8 and float inputs agree.
    np.testing.assert_allclose(msc(x.astype("float32")).numpy(), want, atol=1e-5)


def test_multiscale_rejects_bad_arguments(vgg_tiny):
    bad = [
        dict(scales=()),
        dict(scales=(1.0, -0.5)),
        dict(scales=(1.0, 1.0)),
        dict(scales="big"),
        dict(fusion="median"),
        dict(upsample="nearest"),
        dict(output="labels"),
        dict(fuse_at="middle"),
        dict(scales=(0.5, 0.75)),  # fuse_at='logits' needs 1.0
    ]
    for kwargs in bad:
        with pytest.raises(ValueError, match="Received"):
            MultiScaleInference(vgg_tiny, **kwargs)
    with pytest.raises(ValueError, match="keras.Model"):
        MultiScaleInference(lambda x: x)


# --- sliding window ---------------------------------------------------------------------------


def test_tile_starts_cover_and_align():
    for length in (1, 50, 64, 100, 513, 1000, 2048):
        for tile in (33, 64, 513):
            starts = tile_starts(length, tile, overlap=1 / 3, align=8)
            t = min(tile, length)
            assert starts[0] == 0 and starts[-1] + t == length
            assert all(s % 8 == 0 for s in starts[:-1])
            assert all(b - a < t for a, b in zip(starts, starts[1:]))  # they overlap
            cores = tile_cores(starts, tile, length)
            assert cores[0][0] == 0 and cores[-1][1] == length
            assert all(a[1] == b[0] for a, b in zip(cores, cores[1:]))  # partition
            for s, (a, b) in zip(starts, cores):
                assert s <= a < b <= s + t  # each core lies inside its tile
    with pytest.raises(ValueError, match="Received"):
        tile_starts(100, 10, overlap=1.0)


def test_sliding_window_equals_untiled_for_a_local_model(rng):
    """Tile starts on the stride grid + margins >= 8 px: stitched == whole image, exactly.

    The sizes make the last (flush) tile start on the 8-px grid too: 97 - 49 = 48 and
    161 - 65 = 96; elsewhere the last tile may sit off the grid (a different, equally valid
    sampling phase), which a real network barely notices.
    """
    msc = MultiScaleInference(toy_model(), scales=(1.0,))
    image = rng.integers(0, 256, size=(97, 161, 3)).astype("uint8")
    whole = msc(image[None]).numpy()[0]
    calls = []

    def fn(batch):
        calls.append(batch.shape)
        return msc(batch).numpy()

    tiled = sliding_window(fn, image, tile_size=(49, 65), overlap=0.5, batch_size=5)
    assert len(calls) == 3 and all(c[1:3] == (49, 65) for c in calls)
    np.testing.assert_allclose(tiled, whole, atol=1e-6)
    # The Predictor switches to tiles above tile_size and agrees too.
    pred = Predictor(msc, tile_size=(49, 65), overlap=0.5)
    np.testing.assert_allclose(pred(image), whole, atol=1e-6)
    np.testing.assert_allclose(Predictor(msc)(image), whole, atol=1e-6)


def test_sliding_window_real_model_single_tile_equals_whole(vgg_tiny, rng):
    msc = MultiScaleInference(vgg_tiny, scales=(1.0, 0.75))
    image = rng.integers(0, 256, size=(45, 38, 3)).astype("uint8")
    whole = msc(image[None]).numpy()[0]
    tiled = sliding_window(lambda b: msc(b), image, tile_size=64)
    np.testing.assert_allclose(tiled, whole, atol=1e-6)
    # Many tiles on a real network: bounded per-call size, full-size output, valid probs.
    out = sliding_window(lambda b: msc(b), image, tile_size=24, overlap=0.25)
    assert out.shape == (45, 38, 3)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)


def test_sliding_window_checks_inputs():
    with pytest.raises(ValueError, match="Received"):
        sliding_window(lambda b: b, np.zeros((4, 4)), 8)
    with pytest.raises(ValueError, match="Received"):
        sliding_window(lambda b: b, np.zeros((4, 4, 3)), 0)
    with pytest.raises(ValueError, match="full-resolution"):
        sliding_window(lambda b: b[:, ::2], np.zeros((40, 40, 3)), 16)
