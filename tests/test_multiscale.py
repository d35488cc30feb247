"""The multi-scale core (deeplab_tf/models/multiscale.py) and its two wrappers agreeing.

MSC training (``MultiScaleTraining``) and multi-scale inference (``MultiScaleInference``) share
one implementation of branching, resizing and fusion; on the same weights, scales and max fusion
the training wrapper's fused logits are the inference wrapper's logits before (and, upsampled
with the Caffe rule, after) its upsampling to the image.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import deeplab_tf
from deeplab_tf.inference.multiscale import MultiScaleInference
from deeplab_tf.layers import resize_logits
from deeplab_tf.models import DeepLabV2
from deeplab_tf.models import multiscale as core
from deeplab_tf.training.msc import MultiScaleTraining

#: fp32 on CPU: both wrappers run the same ops in the same order, so they agree to rounding.
PARITY_ATOL = 1e-5


@pytest.fixture(scope="module")
def mobilenet_tiny():
    """DeepLabV2 MobileNetV2 ASPP-L with logits of order 1.

    Freshly initialised with frozen BatchNorm, its logits are about 1e-11; the head is linear
    (four convolutions summed), so scaling its kernels scales the logits, and a tolerance on
    them means something.
    """
    keras.utils.set_random_seed(11)
    net = DeepLabV2(backbone="mobilenetv2", head="aspp_l", num_classes=3)
    probe = np.random.default_rng(2).integers(0, 256, (1, 49, 57, 3)).astype("uint8")
    factor = 1.0 / float(np.abs(net(probe)).max())
    for layer in net.layers:
        if layer.name.startswith("fc1_voc12_c"):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel * factor, bias])
    assert 0.5 < float(np.abs(net(probe)).max()) < 2.0
    return net


@pytest.mark.parametrize("scales", [(1.0, 0.75, 0.5), (1.0, 0.5)])
def test_training_fused_equals_inference_logits(mobilenet_tiny, scales, rng):
    """Same weights, same scales, max fusion: MSC training's fused output is what inference gives.

    Sizes 8k + 1 make Caffe's zoom (h - 1) * 8 + 1 land exactly on the image, so every 8th
    pixel of the inference logits is a fused score, and the whole image is the fused scores
    upsampled by ``resize_logits``. Tolerance: ``PARITY_ATOL`` (fp32).
    """
    net = mobilenet_tiny
    images = rng.integers(0, 256, size=(2, 49, 57, 3)).astype("uint8")
    training = MultiScaleTraining(net, scales=scales)
    inference = MultiScaleInference(net, scales=scales, fusion="max", output="logits")
    assert training.trainable_weights[0] is inference.trainable_weights[0]

    fused = training(images, training=False).numpy()
    assert fused.shape == (2, 7, 8, 3)
    logits = inference(images).numpy()
    assert logits.shape == (2, 49, 57, 3) and logits.dtype == np.float32
    np.testing.assert_allclose(logits[:, ::8, ::8], fused, rtol=0, atol=PARITY_ATOL)
    upsampled = resize_logits(tf.constant(fused), (49, 57), "caffe", 8).numpy()
    np.testing.assert_allclose(logits, upsampled, rtol=0, atol=PARITY_ATOL)
    # The dict MSC training returns under fit holds the same fused map (no dropout in the
    # comparison: a plain call with training=False runs the same branches).
    outputs = training._all_scales(tf.constant(images), training=False)
    np.testing.assert_allclose(outputs["fused"].numpy(), fused, rtol=0, atol=0)
    assert sorted(outputs) == sorted(["fused", *(f"scale_{s:g}" for s in scales)])
    # The other scales win somewhere: the fusion is not the 1x branch alone.
    assert (fused > outputs["scale_1"].numpy() + 1e-3).any()


def test_both_wrappers_are_the_core_wrapper_and_old_names_are_aliases():
    assert issubclass(MultiScaleTraining, core.MultiScaleWrapper)
    assert issubclass(MultiScaleInference, core.MultiScaleWrapper)
    assert deeplab_tf.MultiScaleInference is MultiScaleInference
    assert deeplab_tf.MultiScale is MultiScaleInference
    assert deeplab_tf.inference.MultiScale is MultiScaleInference
    assert deeplab_tf.training.MultiScaleTraining is MultiScaleTraining
    assert deeplab_tf.training.MultiScaleModel is MultiScaleTraining
    get = keras.saving.get_registered_object
    assert get("deeplab_tf>MultiScaleInference") is MultiScaleInference
    assert get("deeplab_tf>MultiScaleTraining") is MultiScaleTraining
    assert get("deeplab_tf>MultiScale") is MultiScaleInference  # files of the previous version
    assert get("deeplab_tf>MultiScaleModel") is MultiScaleTraining
    # New files record the new names.
    assert keras.saving.get_registered_name(MultiScaleInference) == "deeplab_tf>MultiScaleInference"
    assert keras.saving.get_registered_name(MultiScaleTraining) == "deeplab_tf>MultiScaleTraining"


def test_core_branches_and_fusion(rng):
    images = keras.Input((None, None, 3))
    model = keras.Model(images, keras.layers.Conv2D(2, 3, strides=2, padding="same")(images))
    x = tf.constant(rng.uniform(0, 255, (1, 17, 21, 3)).astype("float32"))
    branches = core.run_branches(model, x, (1.0, 0.5), flip=True)
    assert [(b.scale, b.flipped) for b in branches] == [
        (1.0, False),
        (1.0, True),
        (0.5, False),
        (0.5, True),
    ]
    assert tuple(branches[2].images.shape) == (1, 8, 10, 3)
    np.testing.assert_allclose(branches[1].logits, model(x[:, :, ::-1]), atol=1e-6)
    maps = [b.logits for b in branches[:2]]
    np.testing.assert_array_equal(core.fuse(maps, "max"), np.maximum(*maps))
    mean = core.fuse(maps, "mean").numpy()
    want = (tf.nn.softmax(maps[0]) + tf.nn.softmax(maps[1])).numpy() / 2
    np.testing.assert_allclose(tf.nn.softmax(mean), want, atol=1e-6)
    assert core.fuse(maps[:1], "mean") is maps[0]
    grid = core.fuse_on_logit_grid(branches, "max", "caffe")
    assert tuple(grid.shape) == (1, 9, 11, 2)
    with pytest.raises(ValueError, match=r"Received: scales=\[0\.5\]"):
        core.fuse_on_logit_grid(branches[2:])
    with pytest.raises(ValueError, match="Received: fusion='median'"):
        core.fuse(maps, "median")


@pytest.mark.parametrize("bad", [(), (1.0, 1.0), (1.0, 0.0), (1.0, 4.5), "big", None])
def test_core_scale_checks(bad):
    with pytest.raises(ValueError, match="Received: scales="):
        core.check_scales(bad)
    assert core.check_scales([1, 0.75]) == (1.0, 0.75)


def test_training_wrapper_checks(mobilenet_tiny):
    with pytest.raises(ValueError, match=r"start with 1\.0\. Received: scales=\(0\.5, 1\.0\)"):
        MultiScaleTraining(mobilenet_tiny, scales=(0.5, 1.0))
    with pytest.raises(ValueError, match="keras.Model"):
        MultiScaleTraining(lambda x: x)
    assert MultiScaleTraining(mobilenet_tiny).name == f"{mobilenet_tiny.name}_msc"
