"""DeepLab v2 classifier heads: LargeFOV and ASPP (paper Sec. 3.2, Fig. 7; Tables 3-4).

* VGG-16 heads turn fc6/fc7/fc8 into convolutions: per branch ``fc6`` 3x3 1024 (dilated) ->
  ReLU -> dropout -> ``fc7`` 1x1 1024 -> ReLU -> dropout -> ``fc8`` 1x1 C. LargeFOV is one branch
  at rate 12; ASPP has four branches whose class scores are summed.
* ResNet heads (and the MobileNetV2 extension) are one 3x3 conv (with bias) per branch,
  ``features -> C`` at rate ``r_i``, summed (Caffe names ``fc1_voc12_c0..c3``).

Layer tables and names: docs/architecture.md#layer-tables.
"""

from __future__ import annotations

import keras

from deeplab_tf.layers import CaffeAveragePooling2D
from deeplab_tf.models.blocks import caffe_conv, classifier_initializer, relu
from deeplab_tf.models.specs import HEAD_RATES, resolve_rates  # noqa: F401 (re-exported)


def vgg_head(x, num_classes: int, rates, dropout: float = 0.5, pool5a: bool = False):
    """fc6 -> fc7 -> fc8 per branch, summed over branches (VGG-16 LargeFOV / ASPP).

    Names: one branch gives ``fc6, fc7, fc8_voc12``; several give ``fc6_1..``, ``fc7_1..``,
    ``fc8_voc12_1..`` and the sum ``fc8_voc12``.

    Args:
        pool5a: insert the parameter-free 3x3/1 average pool of v1 LargeFOV reimplementations
            (Caffe divisor: padded zeros count).
    """
    if pool5a:
        x = CaffeAveragePooling2D(3, 1, 1, name="pool5a")(x)
    outputs = []
    single = len(rates) == 1
    for i, rate in enumerate(rates, start=1):
        sfx = "" if single else f"_{i}"
        y = caffe_conv(x, 1024, 3, f"fc6{sfx}", pad=rate, dilation=rate)
        y = relu(y, f"relu6{sfx}")
        if dropout:
            y = keras.layers.Dropout(dropout, name=f"drop6{sfx}")(y)
        y = caffe_conv(y, 1024, 1, f"fc7{sfx}")
        y = relu(y, f"relu7{sfx}")
        if dropout:
            y = keras.layers.Dropout(dropout, name=f"drop7{sfx}")(y)
        y = caffe_conv(
            y, num_classes, 1, f"fc8_voc12{sfx}", kernel_initializer=classifier_initializer()
        )
        outputs.append(y)
    if single:
        return outputs[0]
    return keras.layers.Add(name="fc8_voc12")(outputs)


def conv_head(x, num_classes: int, rates):
    """ResNet ASPP: one 3x3 conv per branch (``fc1_voc12_c{i}``), summed into ``fc1_voc12``."""
    outputs = [
        caffe_conv(
            x,
            num_classes,
            3,
            f"fc1_voc12_c{i}",
            pad=rate,
            dilation=rate,
            kernel_initializer=classifier_initializer(),
        )
        for i, rate in enumerate(rates)
    ]
    if len(outputs) == 1:
        return outputs[0]
    return keras.layers.Add(name="fc1_voc12")(outputs)
