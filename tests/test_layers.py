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
    PaddedConv2D,
    Preprocess,
    atrous_conv2d,
    caffe_conv_output_size,
    caffe_pool_output_size,
    resize_logits,
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
        PaddedConv2D(pad=2, filters=4, kernel_size=3, dilation_rate=2),
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
        resize_logits(tf.zeros((1, 2, 2, 3)), (9, 9), mode="nearest")


# === Atrous convolution with its own gradient ===


@pytest.mark.parametrize(
    "n,h,w,c_in,c_out,k,rate,pad",
    [
        (2, 9, 11, 3, 4, 3, 2, 2),  # DeepLab's pad == rate, direct forward convolution
        (1, 13, 7, 5, 2, 3, 4, 4),
        (2, 8, 9, 4, 3, 3, 2, 0),  # no padding
        (1, 12, 12, 2, 2, 3, 3, 5),  # padding wider than the kernel's reach
        (2, 9, 10, 20, 2, 3, 2, 2),  # narrow output: MatMul + shifted-sum forward
        (1, 5, 5, 40, 4, 3, 4, 4),  # rate 4 on a 5x5 map (most taps in the padding)
        (1, 7, 8, 2, 3, 1, 2, 0),  # 1x1
    ],
)
def test_atrous_conv2d_value_and_gradients_match_tensorflow(n, h, w, c_in, c_out, k, rate, pad):
    """Against TensorFlow's own dilated convolution (SPACE_TO_BATCH path) and its autodiff,
    in float64 so that only the summation order differs."""
    rng = np.random.default_rng(h * 100 + c_in)
    x = tf.constant(rng.normal(size=(n, h, w, c_in)))
    kernel = tf.constant(rng.normal(size=(k, k, c_in, c_out)))

    def reference(x, kernel):
        padded = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        return tf.nn.convolution(padded, kernel, padding="VALID", dilations=rate)

    results = []
    for fn in (reference, lambda x, kernel: atrous_conv2d(x, kernel, rate, pad)):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = fn(x, kernel)
            weights = tf.sin(tf.reshape(tf.range(tf.size(y), dtype=tf.float64), tf.shape(y)))
            loss = tf.reduce_sum(y * weights)
        results.append([y, *tape.gradient(loss, [x, kernel])])
    for ref, got, what in zip(*results, ("output", "d input", "d kernel")):
        assert got.shape == ref.shape, what
        np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-10, atol=1e-10, err_msg=what)


def test_padded_conv_trains_without_space_to_batch():
    """PaddedConv2D equals CaffePadding + Conv2D with the same weights and, dilated, has a CPU
    gradient (TensorFlow's own explicit-padding dilated Conv2D has none) with no
    SPACE_TO_BATCH_ND (the path of Keras' dilated Conv2D) anywhere in the step."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(2, 15, 13, 6)), tf.float32)
    plain = keras.layers.Conv2D(5, 3, dilation_rate=3)
    padded = PaddedConv2D(pad=3, filters=5, kernel_size=3, dilation_rate=3)
    plain.build(CaffePadding(3).compute_output_shape(x.shape))
    padded.build(x.shape)
    padded.set_weights(plain.get_weights())
    ref = plain(CaffePadding(3)(x)).numpy()
    np.testing.assert_allclose(padded(x).numpy(), ref, rtol=1e-5, atol=1e-5)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(padded(x) ** 2)
        return tape.gradient(loss, padded.trainable_variables)

    grads = step(x)
    assert len(grads) == 2 and all(np.isfinite(g.numpy()).all() for g in grads)
    ops = {op.type for op in step.get_concrete_function(x).graph.get_operations()}
    assert "SpaceToBatchND" not in ops and "Conv2D" in ops


def test_dilated_caffe_convs_are_padded_convs():
    """Dilated Caffe convolutions carry their padding (no CaffePadding copy in front)."""
    from deeplab_tf import DeepLabV2

    model = DeepLabV2(backbone="resnet50", head="aspp_l", num_classes=3, input_shape=(65, 65, 3))
    for name, pad in (("res4b_branch2b", 2), ("res5a_branch2b", 4), ("fc1_voc12_c3", 24)):
        layer = model.get_layer(name)
        assert type(layer) is PaddedConv2D and layer.pad == pad == layer.dilation_rate[0]
        assert name + "_pad" not in {la.name for la in model.layers}
    assert type(model.get_layer("res2a_branch2b")) is keras.layers.Conv2D  # undilated
    assert type(model.get_layer("res2a_branch2b_pad")) is CaffePadding
