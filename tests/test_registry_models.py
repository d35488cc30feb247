"""The model contract (``tests/_harness.py``) on every ``deeplab_tf.list_models()`` entry.

One parametrised test: per entry, Caffe's output sizes on odd and even inputs and the 21-class
parameter count (``<name>``), and the fresh-process ``.keras`` save/load (``<name>-save_load``;
``large`` for the backbones of 37M parameters and more, whose files take the fast loop's time).
"""

import pytest

import deeplab_tf
from tests._harness import TestCase


def _aspp_l(channels, classes=21):
    """Parameters of the ASPP-L classifier: four 3x3 convolutions with bias."""
    return 4 * (3 * 3 * channels * classes + classes)


FC_1000 = 2048 * 1000 + 1000  # the ImageNet classifier the DeepLab ResNets drop
MOBILENETV2_CONV_1 = 320 * 1280 + 2 * 1280  # Conv_1 + its BN, which the DeepLab backbone drops

#: 21-class parameter counts (BatchNorm moving statistics left out) derived from published
#: backbone counts, independent of this package: torchvision's ResNet-50/101/152 (25,557,032 /
#: 44,549,160 / 60,192,808, bias-free convolutions like MSRA's Caffe models) and Keras'
#: MobileNetV2(include_top=False) (2,223,872 trainable), each with ASPP-L on its last features.
DERIVED_PARAMS = {
    "deeplabv2_resnet50_aspp_l": 25_557_032 - FC_1000 + _aspp_l(2048),
    "deeplabv2_resnet101_aspp_l": 44_549_160 - FC_1000 + _aspp_l(2048),
    "deeplabv2_resnet152_aspp_l": 60_192_808 - FC_1000 + _aspp_l(2048),
    "deeplabv2_mobilenetv2_aspp_l": 2_223_872 - MOBILENETV2_CONV_1 + _aspp_l(320),
}

#: Entries whose fresh-process save/load runs only in the full suite (``large``).
LARGE_SAVE_LOAD = {
    "deeplabv2_resnet101_aspp_l",
    "deeplabv2_resnet152_aspp_l",
    "deeplabv2_vgg16_aspp_l",
    "deeplabv2_vgg16_aspp_s",
}


def expected_params(name):
    """The registry's ``params_voc`` where given (checked against the derivation where both
    exist), else the derived count; every entry has one."""
    registry = deeplab_tf.get_model_config(name)["params_voc"]
    derived = DERIVED_PARAMS.get(name)
    if registry is not None and derived is not None:
        assert registry == derived, (name, registry, derived)
    count = registry if registry is not None else derived
    assert count is not None, f"{name}: no params_voc and no derived count in DERIVED_PARAMS"
    return count


#: Entries whose in-process contract takes several seconds (ResNet-50/101/152 builds and
#: parameter counts): run by the full suite, not the fast loop.
LARGE_CONTRACT = {
    "deeplabv2_resnet50_aspp_l", "deeplabv2_resnet101_aspp_l", "deeplabv2_resnet152_aspp_l",
}  # fmt: skip


def _cases():
    for name in deeplab_tf.list_models():
        marks = [pytest.mark.large] if name in LARGE_CONTRACT else []
        yield pytest.param(name, False, id=name, marks=marks)
        marks = [pytest.mark.multiprocess]
        marks += [pytest.mark.large] if name in LARGE_SAVE_LOAD else []
        yield pytest.param(name, True, id=f"{name}-save_load", marks=marks)


class TestRegistryModels(TestCase):
    @pytest.mark.parametrize("name, save_load", list(_cases()))
    def test_model_contract(self, name, save_load, tmp_path):
        if save_load:
            self.run_model_test(name, tmp_path, check_sizes=False, check_save_load=True)
        else:
            self.run_model_test(name, expected_params=expected_params(name), check_save_load=False)

    def test_tables_name_registry_entries(self):
        assert set(DERIVED_PARAMS) <= set(deeplab_tf.list_models())
        assert LARGE_SAVE_LOAD <= set(deeplab_tf.list_models())
        assert LARGE_CONTRACT <= set(deeplab_tf.list_models())
