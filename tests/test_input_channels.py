"""Inputs with any number of channels: the first-convolution adaptation rule, models built with
``input_channels``, pretrained (converted and ImageNet-mapped) weights adapted, multi-scale
inference and the exported signatures."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from deeplab_tf import DeepLabV2
from deeplab_tf.models.channels import CAFFE_RGB_MEAN, adapt_input_kernel


def _kernel(seed=0):
    return np.random.default_rng(seed).normal(size=(3, 3, 3, 8)).astype(np.float32)


def _conv(x, k):
    return tf.nn.conv2d(x[None], k, 1, "VALID")[0].numpy()


def test_adaptation_rule_keeps_the_activation_of_a_flat_input():
    k = _kernel()
    v = np.random.default_rng(1).uniform(0, 1, (6, 6, 1)).astype(np.float32)
    reference = _conv(np.repeat(v, 3, axis=-1), k)  # the RGB image (v, v, v)
    for n in (1, 2, 3, 4, 7):
        adapted = adapt_input_kernel(k, n, bgr=False)
        assert adapted.shape == (3, 3, n, 8)
        np.testing.assert_allclose(_conv(np.repeat(v, n, axis=-1), adapted), reference,
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
    np.testing.assert_array_equal(adapt_input_kernel(k, 1, False)[:, :, 0], k.sum(axis=2))
    four = adapt_input_kernel(k, 4, bgr=False)
    np.testing.assert_allclose(four[:, :, :3], k * 0.75, rtol=1e-6)  # RGB kept, scaled by 3/N
    np.testing.assert_allclose(four[:, :, 3], k.mean(axis=2) * 0.75, rtol=1e-6)
    # A Caffe (BGR) kernel is put in RGB order first.
    np.testing.assert_array_equal(adapt_input_kernel(k, 3, bgr=True), k[:, :, ::-1])
    with pytest.raises(ValueError, match=r"\(kh, kw, 3, out\) kernel"):
        adapt_input_kernel(k[:, :, :2], 4, False)
    with pytest.raises(ValueError, match="channels must be an integer >= 1"):
        adapt_input_kernel(k, 0, False)


def _four_channel(**kw):
    return DeepLabV2(
        "mobilenetv2", head="aspp", rates=(1, 2), num_classes=3, input_channels=4,
        channel_mean=(127.5,) * 4, channel_std=(127.5,) * 4, **kw,
    )  # fmt: skip


def test_four_channel_model_config_round_trip_and_errors(tmp_path):
    import keras

    model = _four_channel()
    x = np.random.default_rng(0).uniform(0, 255, (2, 33, 33, 4)).astype(np.float32)
    y = model(x)
    assert y.shape == (2, 5, 5, 3)
    config = model.get_config()
    assert config["input_channels"] == 4 and config["preprocessing"] == "normalize"
    assert config["channel_std"] == [127.5] * 4
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(again(x), y, atol=1e-5)
    with pytest.raises(ValueError, match=r"expected shape=\(None, None, None, 4\)"):
        model(x[..., :3])  # Keras's input check names the 4 channels
    from deeplab_tf.layers import check_images

    with pytest.raises(ValueError, match=r"expected a batch of 4-channel images"):
        check_images(x[..., :3], channels=4)
    with pytest.raises(ValueError, match="needs channel_mean and channel_std with 4 values"):
        DeepLabV2("mobilenetv2", head="aspp_l", input_channels=4)
    with pytest.raises(ValueError, match="input_channels=4 needs preprocessing='normalize'"):
        DeepLabV2("mobilenetv2", head="aspp_l", input_channels=4, preprocessing="tf")
    with pytest.raises(ValueError, match="channel_std values must be > 0"):
        DeepLabV2("mobilenetv2", head="aspp_l", input_channels=1, channel_mean=[0],
                  channel_std=[0])  # fmt: skip
    with pytest.raises(ValueError, match=r"input_shape must be \(H, W, 4\)"):
        _four_channel(input_shape=(33, 33, 3))


def test_imagenet_mapping_adapts_the_first_convolution():
    from deeplab_tf.models.imagenet import keras_application, load_imagenet_weights

    source = keras_application("mobilenetv2", weights=None)  # random weights, no download
    rgb = DeepLabV2("mobilenetv2", head="aspp_l", num_classes=3)
    four = _four_channel()
    load_imagenet_weights(rgb, "mobilenetv2", source=source)
    load_imagenet_weights(four, "mobilenetv2", source=source)
    k = source.get_layer("Conv1").kernel.numpy()
    np.testing.assert_allclose(four.get_layer("Conv1").kernel.numpy(),
                               adapt_input_kernel(k, 4, bgr=False), rtol=1e-6)  # fmt: skip
    np.testing.assert_array_equal(rgb.get_layer("Conv1").kernel.numpy(), k)
    # Every other layer is the same
    for a in rgb.layers:
        if a.weights and a.name not in ("Conv1",) and not a.name.startswith("fc1_voc12"):
            for va, vb in zip(a.weights, four.get_layer(a.name).weights):
                np.testing.assert_array_equal(va.numpy(), vb.numpy())


@pytest.mark.large
def test_converted_caffe_weights_adapted_and_normalize_equals_caffe_mode(tmp_path):
    from tests._caffe_reference import synthetic_caffemodel

    path = str(tmp_path / "vgg.caffemodel")
    layers = synthetic_caffemodel(path, "vgg16-largefov", seed=3)
    caffe = DeepLabV2("vgg16", "largefov", weights=path)
    # normalize mode, 3 channels, the Caffe means in RGB order, std 1: the same network
    same = DeepLabV2("vgg16", "largefov", channel_mean=CAFFE_RGB_MEAN, channel_std=(1, 1, 1),
                     weights=path)  # fmt: skip
    x = np.random.default_rng(0).uniform(0, 255, (1, 41, 41, 3)).astype(np.float32)
    np.testing.assert_allclose(same.predict(x, verbose=0), caffe.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-3)  # fmt: skip
    grey = DeepLabV2("vgg16", "largefov", input_channels=1, channel_mean=[116.0],
                     channel_std=[1.0], weights=path)  # fmt: skip
    conv1 = {x.name: x for x in layers}["conv1_1"].blobs[0].transpose(2, 3, 1, 0)
    np.testing.assert_allclose(grey.get_layer("conv1_1").kernel.numpy(),
                               conv1.sum(axis=2, keepdims=True), rtol=1e-6, atol=1e-7)  # fmt: skip
    flat = DeepLabV2("vgg16", "largefov", channel_mean=(116.0,) * 3, channel_std=(1, 1, 1),
                     weights=path)  # fmt: skip
    g = x[..., :1]
    np.testing.assert_allclose(grey.predict(g, verbose=0),
                               flat.predict(np.repeat(g, 3, axis=-1), verbose=0),
                               rtol=1e-4, atol=1e-3)  # fmt: skip


@pytest.mark.large
def test_multiscale_inference_and_export_take_n_channels(tmp_path):
    from deeplab_tf.export import export_saved_model
    from deeplab_tf.inference import MultiScaleInference

    model = _four_channel()
    x = np.random.default_rng(2).uniform(0, 255, (1, 29, 35, 4)).astype(np.float32)
    msc = MultiScaleInference(model, scales=(1.0, 0.75), output="probs")
    probs = msc(x).numpy()
    assert probs.shape == (1, 29, 35, 3)
    path = export_saved_model(model, tmp_path / "served", scales=(1.0, 0.75), verbose=False)
    loaded = tf.saved_model.load(path)
    assert set(loaded.signatures) == {"serving_default", "serving_uint8"}  # bytes are RGB only
    out = loaded.signatures["serving_default"](images=tf.constant(x))
    np.testing.assert_allclose(out["probabilities"].numpy(), probs, atol=1e-5)
    # serving_crf with the N-channel bilateral kernel (one std per channel)
    from deeplab_tf.crf import DenseCRF

    crf = DenseCRF.from_preset("mobilenetv2", bi_feature_std=(3.0, 3.0, 3.0, 6.0))
    path = export_saved_model(model, tmp_path / "crf", crf=crf, verbose=False)
    refined = tf.saved_model.load(path).signatures["serving_crf"](images=tf.constant(x))
    expected = crf.labels(np.round(x).astype(np.uint8), probs).numpy()
    assert np.mean(refined["labels"].numpy() == expected) >= 0.999
