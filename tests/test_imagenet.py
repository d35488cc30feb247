"""ImageNet initialisation, offline: Keras Applications twins built with weights=None."""

import keras
import numpy as np
import pytest

from deeplab_tf import DeepLabV2
from deeplab_tf.models.imagenet import (
    decimate_fc,
    keras_application,
    load_imagenet_weights,
    resnet_name_map,
)


def _randomize(model, rng):
    """Random weights everywhere, incl. conv biases and BN statistics (variance > 0)."""
    for layer in model.layers:
        values = []
        for w in layer.weights:
            v = rng.normal(0, 0.05, w.shape).astype(np.float32)
            if "variance" in w.path:
                v = rng.uniform(0.5, 1.5, w.shape).astype(np.float32)
            values.append(v)
        if values:
            layer.set_weights(values)


def _submodel(model, start, end):
    return keras.Model(model.get_layer(start).output, model.get_layer(end).output)


def _images(rng, size):
    return rng.uniform(0, 255, (1, size, size, 3)).astype(np.float32)


@pytest.mark.large
def test_resnet50_mapping_tensors_and_forward(tmp_path, rng):
    source = keras_application("resnet50", weights=None)
    _randomize(source, rng)
    path = tmp_path / "resnet50.weights.h5"
    source.save_weights(path)

    model = DeepLabV2(backbone="resnet50", num_classes=3)
    mapped = load_imagenet_weights(model, "resnet50", source=str(path))
    n_conv = sum(1 for layer in source.layers if layer.name.endswith("_conv"))
    assert len(mapped) == 2 * n_conv == 2 * 53

    for src_name, dst_name in resnet_name_map(50).items():
        src, dst = source.get_layer(src_name), model.get_layer(dst_name)
        if src_name.endswith("_conv"):
            np.testing.assert_array_equal(dst.get_weights()[0], src.get_weights()[0])
        else:
            bias = source.get_layer(src_name[:-2] + "conv").get_weights()[1]
            g, b, m, v = src.get_weights()
            dg, db, dm, dv = dst.get_weights()
            np.testing.assert_array_equal(dg, g)
            np.testing.assert_array_equal(db, b)
            np.testing.assert_allclose(dm, m - bias, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(dv + 1e-5, v + 1.001e-5, rtol=1e-6)

    # The stem and res2/res3 are not dilated: on an odd size (Keras' floor pooling agrees
    # with Caffe's ceil pooling there) both networks compute the same features.
    images = _images(rng, 65)
    pre = _submodel(model, "images", "preprocess")(images)
    ours = _submodel(model, "preprocess", "res3d_relu")(pre)
    theirs = keras.Model(source.input, source.get_layer("conv3_block4_out").output)(pre)
    assert ours.shape == theirs.shape == (1, 9, 9, 512)
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-3 * float(np.abs(theirs).max()))


@pytest.mark.large
def test_resnet101_and_152_name_maps_cover_both_models():
    for depth, counts in ((101, (3, 4, 23, 3)), (152, (3, 8, 36, 3))):
        mapping = resnet_name_map(depth)
        assert len(mapping) == 2 * (1 + sum(counts) * 3 + 4)
        names = {layer.name for layer in DeepLabV2(backbone=f"resnet{depth}").layers}
        assert set(mapping.values()) <= names
        # every Caffe conv/BN of the backbone is reached
        backbone = {n for n in names if n.startswith(("res", "bn", "conv1")) and "_" in n}
        backbone = {n for n in backbone if not n.endswith(("_relu", "_pad"))} | {"conv1"}
        assert backbone == set(mapping.values())
    assert resnet_name_map(101)["conv4_block23_2_conv"] == "res4b22_branch2b"
    assert resnet_name_map(101)["conv3_block1_0_bn"] == "bn3a_branch1"


@pytest.mark.large
def test_vgg16_mapping_with_decimated_fc(tmp_path, rng):
    source = keras_application("vgg16", weights=None)
    path = tmp_path / "vgg16.weights.h5"
    source.save_weights(path)  # Keras' random init is enough: every tensor differs

    model = DeepLabV2(backbone="vgg16", head="aspp_l", num_classes=21)
    mapped = load_imagenet_weights(model, "vgg16", source=str(path))
    assert len(mapped) == 13 + 8
    fc1_k, fc1_b = source.get_layer("fc1").get_weights()
    fc2_k, fc2_b = source.get_layer("fc2").get_weights()
    for i in range(1, 5):
        fc6_k, fc6_b = model.get_layer(f"fc6_{i}").get_weights()
        fc7_k, fc7_b = model.get_layer(f"fc7_{i}").get_weights()
        # every 3rd spatial tap and every 4th channel, indexed by hand on Keras' flat layout
        for y, x, c, o in [(0, 0, 0, 0), (1, 2, 511, 1023), (2, 1, 17, 300)]:
            assert fc6_k[y, x, c, o] == fc1_k[(3 * y * 7 + 3 * x) * 512 + c, 4 * o]
        np.testing.assert_array_equal(fc6_b, fc1_b[::4])
        assert fc7_k[0, 0, 5, 7] == fc2_k[20, 28] and fc7_k[0, 0, 1023, 0] == fc2_k[4092, 0]
        np.testing.assert_array_equal(fc7_b, fc2_b[::4])
    for stage, n in ((1, 2), (3, 3), (5, 3)):
        for a, b in zip(
            model.get_layer(f"conv{stage}_{n}").get_weights(),
            source.get_layer(f"block{stage}_conv{n}").get_weights(),
        ):
            np.testing.assert_array_equal(a, b)
    images = _images(rng, 20)
    pre = _submodel(model, "images", "preprocess")(images)
    ours = _submodel(model, "preprocess", "relu1_2")(pre)
    theirs = source.get_layer("block1_conv2")(source.get_layer("block1_conv1")(pre))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-3)


def test_decimation_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"Received: \(10, 4096\)"):
        decimate_fc(np.zeros((10, 4096)), np.zeros(4096), np.zeros((4096, 4096)), np.zeros(4096))


@pytest.mark.large
def test_mobilenetv2_mapping_by_name(tmp_path, rng):
    # A static odd size: Keras then pads stride-2 layers symmetrically, as we always do.
    source = keras_application("mobilenetv2", weights=None, input_shape=(65, 65, 3))
    _randomize(source, rng)
    path = tmp_path / "mnv2.weights.h5"
    source.save_weights(path)
    model = DeepLabV2(backbone="mobilenetv2", num_classes=3)
    mapped = load_imagenet_weights(model, "mobilenetv2", source=str(path))
    assert "block_16_project_BN" in mapped and "Conv_1" not in mapped
    images = _images(rng, 65)
    pre = _submodel(model, "images", "preprocess")(images)
    ours = _submodel(model, "preprocess", "block_5_add")(pre)
    theirs = keras.Model(source.input, source.get_layer("block_5_add").output)(pre)
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-3 * float(np.abs(theirs).max()))


@pytest.mark.large
def test_wrong_file_and_wrong_architecture_errors(tmp_path):
    bogus = tmp_path / "bogus.weights.h5"
    bogus.write_bytes(b"not an hdf5 file")
    model = DeepLabV2(backbone="resnet50", num_classes=2)
    with pytest.raises(ValueError, match="Could not load .*bogus.weights.h5"):
        load_imagenet_weights(model, "resnet50", source=str(bogus))
    # A ResNet-50 source into a ResNet-101 model: res4 has more blocks than the source.
    source = keras_application("resnet50", weights=None)
    deeper = DeepLabV2(backbone="resnet101", num_classes=2)
    with pytest.raises(
        ValueError, match="'conv4_block7_1_conv' is missing from the ImageNet ResNet"
    ):
        load_imagenet_weights(deeper, "resnet101", source=source)
    # A model of another backbone: the mapping names the layer it cannot find.
    with pytest.raises(ValueError, match="'conv1_1' is missing from the DeepLab model"):
        load_imagenet_weights(model, "vgg16", source=keras_application("vgg16"))
    with pytest.raises(ValueError, match="No ImageNet model for backbone='alexnet'"):
        load_imagenet_weights(model, "alexnet", source=str(bogus))
