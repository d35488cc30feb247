"""DeepLab's dilated ResNet backbones (MSRA/Caffe ResNet; docs/architecture.md#resnet-backbones).

* conv1 7x7/2 pad 3 (no bias) + BN + ReLU, pool1 max 3x3/2 pad 1 in ceil mode;
* bottleneck blocks whose stride sits on the first 1x1 (``branch2a``) and on the projection
  shortcut (``branch1``), never on the 3x3;
* res3 has stride 2, res4 and res5 stride 1 with every 3x3 dilated by 2 and 4: output stride 8
  (the paper); ``output_stride=16`` strides res4 instead and dilates res5 by 2, which quarters
  the memory of res4/res5 and the head (the same weights fit both).

Layer names are the release's (``res4b22_branch2b``, ``bn4b22_branch2b``...), so converted
Caffe weights load by name.
"""

from __future__ import annotations

import keras

from deeplab_tf.layers import CaffeMaxPooling2D
from deeplab_tf.models.blocks import batch_norm, caffe_conv, relu
from deeplab_tf.models.specs import (  # noqa: F401
    RESNET_DEPTHS,
    RESNET_STAGES,
    RESNET_STAGES_OS16,
    block_names,
)


def bottleneck(x, tag: str, width: int, stride: int, dilation: int, project: bool, frozen: bool):
    """One Caffe bottleneck block ``res{tag}`` (1x1 reduce -> 3x3 -> 1x1 expand x4, + shortcut)."""
    if project:
        shortcut = caffe_conv(x, 4 * width, 1, f"res{tag}_branch1", stride=stride, use_bias=False)
        shortcut = batch_norm(shortcut, f"bn{tag}_branch1", frozen)
    else:
        shortcut = x
    y = caffe_conv(x, width, 1, f"res{tag}_branch2a", stride=stride, use_bias=False)
    y = batch_norm(y, f"bn{tag}_branch2a", frozen)
    y = relu(y, f"res{tag}_branch2a_relu")
    y = caffe_conv(
        y, width, 3, f"res{tag}_branch2b", pad=dilation, dilation=dilation, use_bias=False
    )
    y = batch_norm(y, f"bn{tag}_branch2b", frozen)
    y = relu(y, f"res{tag}_branch2b_relu")
    y = caffe_conv(y, 4 * width, 1, f"res{tag}_branch2c", use_bias=False)
    y = batch_norm(y, f"bn{tag}_branch2c", frozen)
    y = keras.layers.Add(name=f"res{tag}")([shortcut, y])
    return relu(y, f"res{tag}_relu")


def resnet_features(x, depth: int = 101, frozen_bn: bool = True, output_stride: int = 8):
    """Applies a dilated ResNet trunk to a preprocessed BGR tensor.

    Args:
        x: preprocessed input tensor.
        depth: 50, 101 or 152.
        frozen_bn: BatchNorm in inference mode with non-trainable gamma/beta (the paper).
        output_stride: 8 (the paper: res4, res5 dilated by 2, 4) or 16 (res4 strided, res5
            dilated by 2).

    Returns:
        The ``res5c`` feature map (2048 channels).
    """
    if depth not in RESNET_DEPTHS:
        raise ValueError(
            f"ResNet depth must be one of {sorted(RESNET_DEPTHS)}. Received: depth={depth!r}"
        )
    if output_stride not in (8, 16):
        raise ValueError(
            f"output_stride must be 8 or 16. Received: output_stride={output_stride!r}"
        )
    stages = RESNET_STAGES if output_stride == 8 else RESNET_STAGES_OS16
    x = caffe_conv(x, 64, 7, "conv1", stride=2, pad=3, use_bias=False)
    x = batch_norm(x, "bn_conv1", frozen_bn)
    x = relu(x, "conv1_relu")
    x = CaffeMaxPooling2D(3, 2, 1, name="pool1")(x)
    for (stage, width, stride, dilation), blocks in zip(stages, RESNET_DEPTHS[depth]):
        for i, tag in enumerate(block_names(depth, stage, blocks)):
            first = i == 0
            x = bottleneck(
                x,
                tag,
                width,
                stride if first else 1,
                dilation,
                project=first,
                frozen=frozen_bn,
            )
    return x
