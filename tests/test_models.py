"""DeepLabV2 builders: Caffe shapes, parameter counts, names, frozen BN, serialization."""

import keras
import numpy as np
import pytest

import deeplab_tf
from deeplab_tf import DeepLabV2, create_model, get_model_config, list_models, output_stride_of
from deeplab_tf.cli import main as cli_main
from tests._harness import caffe_output_size as expected_size

SWEEP = [(33, 33), (48, 40), (57, 64), (64, 64), (65, 65), (75, 100), (80, 31)]


@pytest.fixture(scope="module")
def dynamic_models():
    return {
        bb: DeepLabV2(backbone=bb, head="largefov", num_classes=4, dropout=0.0)
        for bb in ("vgg16", "resnet50", "mobilenetv2")
    }


@pytest.mark.parametrize("backbone", ["vgg16", "resnet50", "mobilenetv2"])
def test_output_size_sweep_matches_caffe_rounding(dynamic_models, backbone):
    model = dynamic_models[backbone]
    for h, w in SWEEP:
        out = model(np.zeros((1, h, w, 3), np.float32))
        assert out.shape == (1, expected_size(backbone, h), expected_size(backbone, w), 4), (h, w)


PAPER_SIZES = [(321, 321), (513, 513), (320, 320), (512, 512), (375, 500)]


@pytest.mark.parametrize(
    "backbone,size",
    [("vgg16", s) for s in PAPER_SIZES] + [("resnet101", s) for s in PAPER_SIZES[::2]],
)
def test_static_shapes_at_paper_sizes(backbone, size):
    model = DeepLabV2(backbone=backbone, head="aspp_l", input_shape=(*size, 3))
    h, w = (expected_size(backbone, s) for s in size)
    assert tuple(model.output.shape) == (None, h, w, 21)
    if size == (321, 321):
        assert (h, w) == (41, 41)
    if size == (513, 513):
        assert (h, w) == (65, 65)


@pytest.mark.parametrize(
    "backbone,head,count",
    [
        ("vgg16", "largefov", 20_505_429),
        ("vgg16", "aspp_l", 37_877_652),
        ("vgg16", "aspp_s", 37_877_652),
    ],
)
def test_vgg_parameter_counts(backbone, head, count):
    assert DeepLabV2(backbone=backbone, head=head, num_classes=21).count_params() == count


def _bn_layers(model):
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def test_resnet101_count_names_dilations_and_forward():
    model = DeepLabV2(backbone="resnet101", head="aspp_l", num_classes=21)
    bns = _bn_layers(model)
    moving = sum(int(np.prod(b.moving_mean.shape)) * 2 for b in bns)
    assert model.count_params() - moving == 44_048_532
    assert moving // 2 == 52_672
    assert all(b.epsilon == 1e-5 and not b.trainable for b in bns)
    # Stride on the first 1x1 and on the projection; dilations 2 (res4) and 4 (res5).
    assert model.get_layer("res3a_branch2a").strides == (2, 2)
    assert model.get_layer("res3a_branch1").strides == (2, 2)
    assert model.get_layer("res3a_branch2b").strides == (1, 1)
    assert model.get_layer("res4b22_branch2b").dilation_rate == (2, 2)
    assert model.get_layer("res4b22_branch2b").pad == 2  # PaddedConv2D: padding inside
    assert model.get_layer("res5c_branch2b").dilation_rate == (4, 4)
    assert model.get_layer("res5c_branch2b").pad == 4
    assert not model.get_layer("res5c_branch2b").use_bias
    for i, rate in enumerate((6, 12, 18, 24)):
        head = model.get_layer(f"fc1_voc12_c{i}")
        assert head.dilation_rate == (rate, rate) and head.use_bias and head.kernel_size == (3, 3)
        assert head.pad == rate
    for name in ["conv1", "bn_conv1", "res2c", "res3b3", "res4b1", "bn5a_branch1", "fc1_voc12"]:
        model.get_layer(name)
    out = model(np.random.default_rng(0).uniform(0, 255, (1, 65, 65, 3)).astype(np.float32))
    assert out.shape == (1, 9, 9, 21) and np.isfinite(out.numpy()).all()


@pytest.mark.large
def test_resnet_block_names_follow_msra():
    r50 = DeepLabV2(backbone="resnet50", num_classes=2)
    r50.get_layer("res4f_branch2c")
    r50.get_layer("res3d_branch2a")
    names = {layer.name for layer in DeepLabV2(backbone="resnet152", num_classes=2).layers}
    assert {"res3b7", "res4b35", "res5c"} <= names and "res3b8" not in names


def test_vgg_heads_structure_and_classifier_init():
    model = DeepLabV2(backbone="vgg16", head="aspp_s", num_classes=21)
    for i, rate in enumerate((2, 4, 8, 12), start=1):
        fc6 = model.get_layer(f"fc6_{i}")
        assert fc6.dilation_rate == (rate, rate) and fc6.filters == 1024
        assert model.get_layer(f"fc7_{i}").kernel_size == (1, 1)
        kernel, bias = model.get_layer(f"fc8_voc12_{i}").get_weights()
        assert abs(kernel.std() - 0.01) < 0.001 and not bias.any()
    assert model.get_layer("conv5_3").dilation_rate == (2, 2)
    assert model.get_layer("pool4").strides == 1
    lfov = DeepLabV2(backbone="vgg16", head="largefov", pool5a=True)
    assert lfov.get_layer("fc6").dilation_rate == (12, 12)
    assert lfov.get_layer("pool5a").pool_size == 3
    assert lfov.count_params() == 20_505_429


def test_custom_rates_and_dropout():
    model = DeepLabV2(backbone="vgg16", head="aspp", rates=(3, 5), num_classes=2, dropout=0.0)
    assert [model.get_layer(f"fc6_{i}").dilation_rate[0] for i in (1, 2)] == [3, 5]
    assert not [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]


def test_uint8_and_float_inputs_agree():
    model = DeepLabV2(backbone="mobilenetv2", head="aspp_s", num_classes=3)
    images = np.random.default_rng(1).integers(0, 256, (2, 40, 36, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        model(images).numpy(), model(images.astype(np.float32)).numpy(), rtol=1e-5, atol=1e-5
    )


@pytest.mark.large
def test_frozen_batchnorm_does_not_change_under_fit():
    model = DeepLabV2(backbone="resnet50", head="aspp_s", num_classes=3)
    bns = _bn_layers(model)
    for b in bns:  # non-trivial statistics, so a training-mode pass would visibly differ
        g, be, m, v = b.get_weights()
        b.set_weights([g * 1.5, be + 0.1, m + 0.2, v * 2.0])
    before = {b.name: [w.copy() for w in b.get_weights()] for b in bns}
    conv_before = model.get_layer("res2a_branch2a").get_weights()[0].copy()
    assert not any(w.path.startswith("bn") for w in model.trainable_weights)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x = np.random.default_rng(2).uniform(0, 255, (2, 33, 33, 3)).astype(np.float32)
    y = np.random.default_rng(3).normal(size=(2, 5, 5, 3)).astype(np.float32)
    model.fit(x, y, epochs=1, batch_size=2, verbose=0)
    for b in bns:
        for old, new in zip(before[b.name], b.get_weights()):
            np.testing.assert_array_equal(old, new, err_msg=b.name)
    assert not np.array_equal(conv_before, model.get_layer("res2a_branch2a").get_weights()[0])


def test_trainable_batchnorm_when_unfrozen():
    model = DeepLabV2(
        backbone="mobilenetv2", head="largefov", num_classes=2, freeze_batchnorm=False
    )
    assert all(b.trainable for b in _bn_layers(model))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"backbone": "vgg16", "head": "largefov", "num_classes": 3, "pool5a": True},
        {"backbone": "mobilenetv2", "head": "aspp_l", "num_classes": 5},
    ],
    ids=["vgg16_pool5a", "mobilenetv2"],
)
def test_keras_save_and_safe_mode_reload(tmp_path, kwargs):
    model = DeepLabV2(**kwargs)
    x = np.random.default_rng(4).uniform(0, 255, (1, 37, 45, 3)).astype(np.float32)
    expected = model.predict(x, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-5)
    assert output_stride_of(reloaded) == 8
    assert [(type(a).__name__, a.name) for a in reloaded.layers] == [
        (type(b).__name__, b.name) for b in model.layers
    ]


@pytest.mark.large
def test_weights_path_round_trip(tmp_path):
    model = DeepLabV2(backbone="mobilenetv2", num_classes=3)
    path = tmp_path / "m.weights.h5"
    model.save_weights(path)
    other = DeepLabV2(backbone="mobilenetv2", num_classes=3, weights=str(path))
    for a, b in zip(model.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_mobilenetv2_output_stride_16():
    model = DeepLabV2(backbone="mobilenetv2", output_stride=16, num_classes=2)
    assert model(np.zeros((1, 64, 64, 3))).shape == (1, 4, 4, 2)
    assert output_stride_of(model) == 16
    assert model.get_layer("block_16_depthwise").dilation_rate == (2, 2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"backbone": "resnet18"}, "Received: backbone='resnet18'"),
        ({"head": "psp"}, "Received: head='psp'"),
        ({"head": "aspp"}, "needs explicit rates"),
        ({"head": "aspp_l", "rates": (1, 2)}, "use head='aspp'"),
        ({"head": "aspp", "rates": (0, 2)}, "positive integers"),
        ({"num_classes": 0}, "Received: num_classes=0"),
        ({"dropout": 1.0}, "Received: dropout=1.0"),
        ({"input_shape": (64, 64)}, "input_shape must be"),
        ({"input_shape": (64, 64, 1)}, "input_shape must be"),
        ({"output_stride": 32}, "output_stride=32"),
        ({"pool5a": True}, "pool5a exists for vgg16 only"),
        ({"weights": "/no/such/file.h5"}, "Received: weights='/no/such/file.h5'"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DeepLabV2(**kwargs)


def test_registry():
    names = list_models()
    assert {
        "deeplabv2_vgg16_largefov",
        "deeplabv2_vgg16_aspp_s",
        "deeplabv2_vgg16_aspp_l",
        "deeplabv2_resnet101_aspp_l",
    } <= set(names)
    cfg = get_model_config("deeplabv2_resnet101_aspp_l")
    assert cfg["crf"]["bi_xy_std"] == 67 and cfg["recipe"]["base_lr"] == 2.5e-4
    assert get_model_config("deeplabv2_vgg16_largefov")["crf"]["bi_rgb_std"] == 5
    cfg["crf"]["bi_w"] = -1  # a copy: the registry is not mutated
    assert get_model_config("deeplabv2_resnet101_aspp_l")["crf"]["bi_w"] == 4
    model = create_model("deeplabv2_vgg16_largefov", num_classes=21)
    assert model.name == "deeplabv2_vgg16_largefov"
    assert model.count_params() == get_model_config(model.name)["params_voc"]
    with pytest.raises(ValueError, match="Known models: deeplabv2_"):
        get_model_config("deeplabv3")
    assert "DeepLabV2" in deeplab_tf.__all__


def test_cli_lists_models(capsys):
    assert cli_main(["models"]) == 0
    out = capsys.readouterr().out
    assert "deeplabv2_resnet101_aspp_l" in out and "44,048,532" in out and "76.35 (77.69)" in out


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=[pytest.mark.large] if "resnet" in n else []) for n in list_models()],
)
def test_registry_preprocessing_is_the_built_models_config(name):
    """The registry's preprocessing entry is what the model is built with and records."""
    model = create_model(name, num_classes=2, input_shape=(33, 33, 3))
    mode = get_model_config(name)["preprocessing"]["mode"]
    assert model.get_config()["preprocessing"] == mode == model.get_layer("preprocess").mode
    assert isinstance(model, DeepLabV2)


@pytest.mark.parametrize(
    "size, os8, os16",
    [(321, 41, 21), pytest.param(513, 65, 33, marks=pytest.mark.large),
     pytest.param(100, 13, 7, marks=pytest.mark.large)],
)  # fmt: skip
@pytest.mark.large
def test_resnet_output_stride_16_sizes_and_same_weights(size, os8, os16):
    """Output stride 16 (res4 strided, res5 dilated by 2): Caffe-rounded sizes, and the same
    variables as the paper's stride-8 model, so its weights load into it unchanged."""
    from deeplab_tf import DeepLabV2, output_stride_of

    a = DeepLabV2("resnet50", "aspp_l", num_classes=3)
    b = DeepLabV2("resnet50", "aspp_l", num_classes=3, output_stride=16)
    x = np.zeros((1, size, size, 3), np.float32)
    assert a(x).shape[1:3] == (os8, os8)
    assert b(x).shape[1:3] == (os16, os16)
    assert output_stride_of(b) == 16 and b.get_config()["output_stride"] == 16
    assert [v.shape for v in a.weights] == [v.shape for v in b.weights]
    b.set_weights(a.get_weights())
    res4 = b.get_layer("res4a_branch2a")
    assert res4.get_config()["strides"] in ((2, 2), [2, 2])
    assert b.get_layer("res5a_branch2b").get_config()["dilation_rate"] in ((2, 2), [2, 2])
    with pytest.raises(ValueError, match="output_stride must be 8 .* or, for the ResNet"):
        DeepLabV2("vgg16", "largefov", output_stride=16)
