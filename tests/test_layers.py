"""Caffe-semantics layers against independent NumPy transcriptions of Caffe's C++ loops."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab_tf.layers import (
    CAFFE_BGR_MEAN,
    CaffeAveragePooling2D,
    CaffeMaxPooling2D,
    CaffePadding,
    Preprocess,
    ResizeImages,
    ResizeLogits,
    caffe_conv_output_size,
    caffe_pool_output_size,
)


def caffe_pool_reference(x, k, s, p, mode):
    """Caffe's PoolingLayer::Forward_cpu, loop for loop (NHWC)."""
    n, h, w, c = x.shape
    ph = int(math.ceil((h + 2 * p - k) / s)) + 1
    pw = int(math.ceil((w + 2 * p - k) / s)) + 1
    if p:
        if (ph - 1) * s >= h + p:
            ph -= 1
        if (pw - 1) * s >= w + p:
            pw -= 1
    out = np.zeros((n, ph, pw, c), np.float32)
    for i in range(ph):
        for j in range(pw):
            hs, ws = i * s - p, j * s - p
            he, we = min(hs + k, h + p), min(ws + k, w + p)
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            win = x[:, hs:he, ws:we, :]
            if mode == "max":
                out[:, i, j] = win.max(axis=(1, 2))
            else:
                out[:, i, j] = win.sum(axis=(1, 2)) / size
    return out


SIZES = [(1, 1), (2, 3), (5, 4), (8, 8), (9, 7), (16, 15), (41, 40)]


@pytest.mark.parametrize("k,s,p", [(3, 2, 1), (3, 1, 1), (2, 2, 0), (3, 2, 0), (3, 3, 1)])
@pytest.mark.parametrize("mode", ["max", "avg"])
def test_pooling_matches_caffe_loops(k, s, p, mode, rng):
    cls = CaffeMaxPooling2D if mode == "max" else CaffeAveragePooling2D
    layer = cls(k, s, p)
    dynamic = tf.function(layer.call, input_signature=[tf.TensorSpec([None, None, None, 2])])
    for h, w in SIZES:
        if h + 2 * p < k or w + 2 * p < k:
            continue
        x = (
            rng.normal(size=(2, h, w, 2)).astype(np.float32) - 3.0
        )  # negatives: padding must not win
        ref = caffe_pool_reference(x, k, s, p, mode)
        static = layer(x).numpy()
        np.testing.assert_allclose(static, ref, rtol=1e-6, atol=1e-6, err_msg=f"{h}x{w}")
        np.testing.assert_allclose(dynamic(x).numpy(), ref, rtol=1e-6, atol=1e-6)
        assert layer.compute_output_shape((2, h, w, 2)) == ref.shape


def test_output_size_formulas():
    # The paper's sizes through VGG's three stride-2 pools and the ResNet stem.
    size = 321
    for _ in range(3):
        size = caffe_pool_output_size(size, 3, 2, 1)
    assert size == 41
    assert caffe_pool_output_size(513, 3, 2, 1) == 257
    assert caffe_pool_output_size(2, 3, 3, 1) == 1  # last window clipped (ceil alone says 2)
    assert caffe_conv_output_size(321, 7, 2, 3) == 161
    assert caffe_conv_output_size(41, 3, 1, 12, dilation=12) == 41


def test_preprocess_caffe_and_tf_modes():
    rgb = np.array([[[[10, 20, 30]]]], np.uint8)
    out = Preprocess()(rgb).numpy()
    np.testing.assert_allclose(
        out[0, 0, 0], np.array([30, 20, 10]) - np.array(CAFFE_BGR_MEAN), 1e-5
    )
    np.testing.assert_allclose(Preprocess()(rgb.astype(np.float32)).numpy(), out)
    np.testing.assert_allclose(
        Preprocess(mode="tf")(rgb).numpy()[0, 0, 0],
        [-1 + 10 / 127.5, -1 + 20 / 127.5, -1 + 30 / 127.5],
        1e-6,
    )
    with pytest.raises(ValueError, match="Received: mode='bgr'"):
        Preprocess(mode="bgr")


def test_padding_is_symmetric():
    x = np.ones((1, 3, 2, 1), np.float32)
    y = CaffePadding(2)(x).numpy()
    assert y.shape == (1, 7, 6, 1)
    assert y.sum() == 6 and y[0, 2:5, 2:4, 0].all()


@pytest.mark.parametrize(
    "layer",
    [
        Preprocess(mode="tf"),
        CaffePadding(3),
        CaffeMaxPooling2D(3, 1, 1),
        CaffeAveragePooling2D(3, 2, 1),
        ResizeLogits(mode="half_pixel", stride=16),
        ResizeImages(0.75),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_layer_config_round_trip(layer):
    blob = keras.saving.serialize_keras_object(layer)
    clone = keras.saving.deserialize_keras_object(blob, safe_mode=True)
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match="pad must be smaller"):
        CaffeMaxPooling2D(3, 2, 3)
    with pytest.raises(ValueError, match="Received: mode='nearest'"):
        ResizeLogits(mode="nearest")
    with pytest.raises(ValueError, match="Received: scale=0"):
        ResizeImages(0)
