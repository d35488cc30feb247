"""DeepLab's VGG-16 backbone (paper Sec. 3.1; docs/architecture.md#vgg-16-backbone).

conv1..conv5 as in VGG-16, every pooling 3x3 with pad 1 in Caffe's ceil mode; pool4 and pool5
have stride 1 and conv5 is dilated by 2, giving output stride 8 (321 -> 41, 513 -> 65).
"""

from __future__ import annotations

from deeplab_tf.layers import CaffeMaxPooling2D
from deeplab_tf.models.blocks import caffe_conv, relu

#: (stage, number of convs, filters, pool stride, conv dilation)
VGG16_STAGES = (
    (1, 2, 64, 2, 1),
    (2, 2, 128, 2, 1),
    (3, 3, 256, 2, 1),
    (4, 3, 512, 1, 1),
    (5, 3, 512, 1, 2),
)


def vgg16_features(x):
    """Applies the dilated VGG-16 trunk to a preprocessed (BGR, mean-free) tensor.

    Layer names are the Caffe release's (``conv1_1`` ... ``conv5_3``, ``pool1`` ... ``pool5``).

    Returns:
        The ``pool5`` feature map (512 channels, output stride 8).
    """
    for stage, n_conv, filters, pool_stride, dilation in VGG16_STAGES:
        for i in range(1, n_conv + 1):
            name = f"conv{stage}_{i}"
            x = caffe_conv(x, filters, 3, name, pad=dilation, dilation=dilation)
            x = relu(x, f"relu{stage}_{i}")
        x = CaffeMaxPooling2D(3, pool_stride, 1, name=f"pool{stage}")(x)
    return x
