"""A dilated MobileNetV2 backbone (beyond the paper: a model that phones run fast).

Follows DeepLab v3's recipe: the last strides of MobileNetV2 are removed and the depthwise
convolutions after them dilated, giving output stride 8 or 16. Layer names are Keras
Applications' (``block_6_depthwise``...), so its ImageNet weights load by name. Padding follows
the Caffe rule used everywhere in this package (symmetric); Keras pads stride-2 layers
asymmetrically, which agrees on odd input sizes only.
"""

from __future__ import annotations

import keras

from deeplab_tf.layers import CaffePadding
from deeplab_tf.models.blocks import batch_norm

#: (filters, stride, expansion) for block ids 0..16, as in Keras Applications (alpha 1.0).
MOBILENETV2_BLOCKS = (
    (16, 1, 1),
    (24, 2, 6), (24, 1, 6),
    (32, 2, 6), (32, 1, 6), (32, 1, 6),
    (64, 2, 6), (64, 1, 6), (64, 1, 6), (64, 1, 6),
    (96, 1, 6), (96, 1, 6), (96, 1, 6),
    (160, 2, 6), (160, 1, 6), (160, 1, 6),
    (320, 1, 6),
)  # fmt: skip

MOBILENET_BN_EPSILON = 1e-3


def _relu6(x, name):
    return keras.layers.ReLU(6.0, name=name)(x)


def mobilenetv2_features(x, output_stride: int = 8, frozen_bn: bool = True):
    """Applies the dilated MobileNetV2 trunk (to ``block_16_project_BN``, 320 channels).

    Args:
        x: input scaled to [-1, 1] (``Preprocess(mode="tf")``).
        output_stride: 8 or 16.
        frozen_bn: BatchNorm in inference mode, non-trainable.
    """
    if output_stride not in (8, 16):
        raise ValueError(
            f"output_stride must be 8 or 16. Received: output_stride={output_stride!r}"
        )
    eps = MOBILENET_BN_EPSILON
    x = CaffePadding(1, name="Conv1_pad")(x)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="valid", use_bias=False, name="Conv1")(x)
    x = batch_norm(x, "bn_Conv1", frozen_bn, eps)
    x = _relu6(x, "Conv1_relu")
    current_stride, rate = 2, 1
    in_channels = 32
    for block_id, (filters, stride, expansion) in enumerate(MOBILENETV2_BLOCKS):
        block_rate = rate
        if stride == 2 and current_stride >= output_stride:
            # Drop the stride and dilate everything after it (DeepLab v3).
            stride = 1
            rate *= 2
        else:
            current_stride *= stride
        prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
        inputs = x
        if block_id:
            x = keras.layers.Conv2D(
                expansion * in_channels, 1, use_bias=False, name=prefix + "expand"
            )(x)
            x = batch_norm(x, prefix + "expand_BN", frozen_bn, eps)
            x = _relu6(x, prefix + "expand_relu")
        x = CaffePadding(block_rate, name=prefix + "pad")(x)
        x = keras.layers.DepthwiseConv2D(
            3,
            strides=stride,
            dilation_rate=block_rate,
            padding="valid",
            use_bias=False,
            name=prefix + "depthwise",
        )(x)
        x = batch_norm(x, prefix + "depthwise_BN", frozen_bn, eps)
        x = _relu6(x, prefix + "depthwise_relu")
        x = keras.layers.Conv2D(filters, 1, use_bias=False, name=prefix + "project")(x)
        x = batch_norm(x, prefix + "project_BN", frozen_bn, eps)
        if in_channels == filters and stride == 1:
            x = keras.layers.Add(name=prefix + "add")([inputs, x])
        in_channels = filters
    return x
