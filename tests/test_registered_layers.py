"""The layer contract (``tests/_harness.py``) on every registered ``deeplab_tf>`` layer.

The layers are read from Keras' registry after ``import deeplab_tf``, not listed here: a layer
registered without inputs in :data:`LAYER_CASES` fails its test, so no new layer skips the
contract. Wrappers (``MultiScaleInference``, ``MultiScaleTraining``) are layers too; they wrap
:func:`tests._harness.tiny_segmenter`, built anew for every instance (so under the dtype policy
under test).
"""

import numpy as np
import pytest

import deeplab_tf
from deeplab_tf.layers import caffe_pool_output_size
from tests._harness import TestCase, registered_layers, tiny_segmenter

RNG = np.random.default_rng(0)
FEATURES = RNG.normal(size=(2, 9, 8, 3)).astype("float32")
IMAGES = RNG.integers(0, 256, (2, 19, 22, 3)).astype("uint8")
LOGITS = RNG.normal(size=(2, 3, 4, 5)).astype("float32")


def _pool_shape(k, s, p, x=FEATURES):
    n, h, w, c = x.shape
    return (n, caffe_pool_output_size(h, k, s, p), caffe_pool_output_size(w, k, s, p), c)


def _wrapper_kwargs(**kwargs):
    return lambda: {"model": tiny_segmenter(num_classes=3), **kwargs}


#: registered name -> the cases (keyword arguments of ``TestCase.run_layer_test``) it runs.
LAYER_CASES = {
    "deeplab_tf>CaffeAveragePooling2D": [
        {"init_kwargs": {"pool_size": 3, "strides": 2, "padding": 1}, "input_data": FEATURES,
         "expected_output_shape": _pool_shape(3, 2, 1)},
        {"init_kwargs": {"pool_size": 2, "strides": 2, "padding": 0}, "input_data": FEATURES,
         "expected_output_shape": _pool_shape(2, 2, 0)},
    ],
    "deeplab_tf>CaffeMaxPooling2D": [
        {"init_kwargs": {"pool_size": 3, "strides": 2, "padding": 1}, "input_data": FEATURES,
         "expected_output_shape": _pool_shape(3, 2, 1)},
        {"init_kwargs": {"pool_size": 3, "strides": 1, "padding": 1}, "input_data": FEATURES,
         "expected_output_shape": FEATURES.shape},
    ],
    "deeplab_tf>CaffePadding": [
        {"init_kwargs": {"pad": 2}, "input_data": FEATURES,
         "expected_output_shape": (2, 13, 12, 3)},
    ],
    "deeplab_tf>FoldedBatchNorm": [
        {"init_kwargs": {}, "input_data": FEATURES, "expected_output_shape": FEATURES.shape},
    ],
    "deeplab_tf>Logits": [
        # float32 under any global policy (the network's output; documented).
        {"init_kwargs": {"output_stride": 16}, "input_data": LOGITS,
         "expected_output_shape": LOGITS.shape, "mixed_precision_dtype": "float32"},
    ],
    "deeplab_tf>PaddedConv2D": [
        # dilated, stride 1: the atrous_conv2d path
        {"init_kwargs": {"pad": 2, "filters": 4, "kernel_size": 3, "dilation_rate": 2},
         "input_data": FEATURES, "expected_output_shape": (2, 9, 8, 4), "atol": 1e-5},
        # strided: tf.nn.conv2d with explicit padding
        {"init_kwargs": {"pad": 1, "filters": 2, "kernel_size": 3, "strides": 2, "use_bias": False},
         "input_data": FEATURES, "expected_output_shape": (2, 5, 4, 2), "atol": 1e-5},
    ],
    # Preprocess keeps float32 under any global policy (documented: preprocessing stays float32).
    "deeplab_tf>Preprocess": [
        {"init_kwargs": {"mode": "caffe"}, "input_data": IMAGES,
         "expected_output_shape": IMAGES.shape, "mixed_precision_dtype": "float32"},
        {"init_kwargs": {"mode": "tf"}, "input_data": IMAGES.astype("float32"),
         "expected_output_shape": IMAGES.shape, "mixed_precision_dtype": "float32"},
    ],
    # MultiScaleInference returns float32 probabilities or logits whatever the wrapped model
    # computes in (documented in its docstring), in the eager and the symbolic call (its
    # compute_output_spec says so).
    "deeplab_tf>MultiScaleInference": [
        {"init_kwargs": _wrapper_kwargs(scales=(1.0, 0.5), flip=True), "input_data": IMAGES,
         "expected_output_shape": (2, 19, 22, 3), "mixed_precision_dtype": "float32",
         "atol": 1e-5},
        {"init_kwargs": _wrapper_kwargs(scales=(0.75, 1.25), fusion="mean", output="logits",
                                        fuse_at="image", upsample="half_pixel"),
         "input_data": IMAGES, "expected_output_shape": (2, 19, 22, 3),
         "mixed_precision_dtype": "float32", "atol": 1e-5},
    ],
    # Inference output of the training wrapper: the max-fused logits at the 1x output size
    # (float32: the wrapped DeepLabV2's logits layer is float32 under any policy).
    "deeplab_tf>MultiScaleTraining": [
        {"init_kwargs": _wrapper_kwargs(scales=(1.0, 0.75, 0.5)), "input_data": IMAGES,
         "expected_output_shape": (2, 4, 4, 3), "mixed_precision_dtype": "float32",
         "atol": 1e-5},
    ],
    # DeepLabV2: a registered keras.Model subclass that carries its config; its logits layer
    # is float32 under any policy (the convolutions compute in the policy's dtype).
    "deeplab_tf>DeepLabV2": [
        {"init_kwargs": {"backbone": "mobilenetv2", "head": "aspp_s", "num_classes": 3},
         "input_data": IMAGES[:1], "expected_output_shape": (1, 3, 3, 3),
         "mixed_precision_dtype": "float32", "atol": 1e-4},
    ],
}  # fmt: skip
# The names files of deeplab_tf 0.1 recorded resolve to the same classes: same contract.
LAYER_CASES["deeplab_tf>MultiScale"] = LAYER_CASES["deeplab_tf>MultiScaleInference"]
LAYER_CASES["deeplab_tf>MultiScaleModel"] = LAYER_CASES["deeplab_tf>MultiScaleTraining"]

REGISTERED = registered_layers()


class TestRegisteredLayers(TestCase):
    @pytest.mark.parametrize("registered_name", sorted(REGISTERED))
    def test_layer_contract(self, registered_name):
        cases = LAYER_CASES.get(registered_name)
        if not cases:
            pytest.fail(
                f"{registered_name} is a registered layer without harness inputs: declare its "
                "cases in LAYER_CASES (tests/test_registered_layers.py)"
            )
        for case in cases:
            self.run_layer_test(REGISTERED[registered_name], **case)

    def test_every_case_is_a_registered_layer(self):
        declared = set(LAYER_CASES)
        assert isinstance(deeplab_tf.DeepLabV2, type)
        assert declared <= set(REGISTERED), sorted(declared - set(REGISTERED))

    def test_registry_holds_the_known_layers(self):
        """The enumeration sees the layers (a broken registry read would pass vacuously)."""
        known = {
            "deeplab_tf>CaffePadding",
            "deeplab_tf>DeepLabV2",
            "deeplab_tf>MultiScaleInference",
        }
        assert known <= set(REGISTERED)
        assert "deeplab_tf>CaffeSGD" not in REGISTERED  # optimizers are not layers
