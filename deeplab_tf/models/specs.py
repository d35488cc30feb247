"""Architecture facts of DeepLab v2, written once and free of Keras (docs/architecture.md).

The builders (:mod:`deeplab_tf.models.resnet`, :mod:`deeplab_tf.models.heads`,
:class:`deeplab_tf.DeepLabV2`) and the converters (``deeplab_tf.convert``) read them from here;
importing this module does not import TensorFlow or Keras, so command-line parsers can use it.
"""

from __future__ import annotations

#: Backbones of :class:`deeplab_tf.DeepLabV2` (MobileNetV2 is beyond the paper).
BACKBONES = ("vgg16", "resnet50", "resnet101", "resnet152", "mobilenetv2")
#: The convolution that reads the image, per backbone (adapted to ``input_channels``).
FIRST_CONV = {"vgg16": "conv1_1", "resnet50": "conv1", "resnet101": "conv1",
              "resnet152": "conv1", "mobilenetv2": "Conv1"}  # fmt: skip
#: Head names (``aspp`` takes explicit rates).
HEADS = ("largefov", "aspp_s", "aspp_l", "aspp")

#: The paper's named heads -> atrous rates.
HEAD_RATES = {
    "largefov": (12,),
    "aspp_s": (2, 4, 8, 12),
    "aspp_l": (6, 12, 18, 24),
}


def resolve_rates(head: str, rates=None) -> tuple[int, ...]:
    """Atrous rates of a head name (``largefov``, ``aspp_s``, ``aspp_l``, or ``aspp`` + rates)."""
    if head == "aspp":
        if not rates:
            raise ValueError(
                "head='aspp' needs explicit rates, e.g. rates=(6, 12, 18, 24). "
                f"Received: rates={rates!r}"
            )
    elif head in HEAD_RATES:
        if rates is not None and tuple(rates) != HEAD_RATES[head]:
            raise ValueError(
                f"head={head!r} has fixed rates {HEAD_RATES[head]}; use head='aspp' for custom "
                f"rates. Received: rates={rates!r}"
            )
        rates = HEAD_RATES[head]
    else:
        raise ValueError(
            f"head must be one of {sorted(HEAD_RATES) + ['aspp']}. Received: head={head!r}"
        )
    try:
        rates = tuple(int(r) for r in rates)
    except (TypeError, ValueError):
        raise ValueError(f"rates must be positive integers. Received: rates={rates!r}") from None
    if not rates or any(r < 1 for r in rates):
        raise ValueError(f"rates must be positive integers. Received: rates={rates!r}")
    return rates


#: blocks per stage (res2..res5)
RESNET_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}

#: (stage, bottleneck width, stride of the first block, dilation of the 3x3s)
RESNET_STAGES = ((2, 64, 1, 1), (3, 128, 2, 1), (4, 256, 1, 2), (5, 512, 1, 4))
#: The same at output stride 16 (a memory option for training): res4 strided, res5 dilated by 2.
RESNET_STAGES_OS16 = ((2, 64, 1, 1), (3, 128, 2, 1), (4, 256, 2, 1), (5, 512, 1, 2))


def block_names(depth: int, stage: int, blocks: int) -> list[str]:
    """Caffe block suffixes of one stage, e.g. ``['4a', '4b1', ..., '4b22']``.

    MSRA's ResNet-50 names every block with a letter (``res4f``); ResNet-101/152 keep letters
    for the 3-block stages and use ``a, b1, b2...`` elsewhere.
    """
    if depth == 50 or blocks == 3:
        return [f"{stage}{chr(ord('a') + i)}" for i in range(blocks)]
    return [f"{stage}a"] + [f"{stage}b{i}" for i in range(1, blocks)]
