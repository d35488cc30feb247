"""The Caffe side of each convertible architecture: names, parsing of ``--arch``, recognising a
file's architecture.

The architecture facts (ResNet depths and block names, head rates) are the model builders'
(:mod:`deeplab_tf.models.resnet`, :mod:`deeplab_tf.models.heads`); the converter maps a file onto
a model's own layers. An independent description of the release, used as a test reference, lives
in the repository's ``tests/_caffe_reference.py``.
"""

from __future__ import annotations

from deeplab_tf.models.specs import BACKBONES, HEAD_RATES, RESNET_DEPTHS, block_names

#: Backbones that exist as Caffe releases (MobileNetV2 is beyond the paper, no Caffe model).
CAFFE_BACKBONES = tuple(b for b in BACKBONES if b != "mobilenetv2")
#: ``--arch`` head spellings -> DeepLabV2 head names.
HEADS = {"largefov": "largefov", "aspp-s": "aspp_s", "aspp-l": "aspp_l"}
#: Every accepted ``--arch`` value.
ARCHITECTURES = tuple(f"{b}-{h}" for b in CAFFE_BACKBONES for h in HEADS)


def parse_arch(arch) -> tuple[str, str]:
    """``"resnet101-aspp-l"`` (or ``deeplabv2_resnet101_aspp_l``) -> ``("resnet101", "aspp_l")``.

    Raises:
        ValueError: for an unknown architecture, listing the accepted ones.
    """
    s = str(arch).strip().lower().replace("_", "-")
    if s.startswith("deeplabv2-"):
        s = s[len("deeplabv2-") :]
    backbone, _, head = s.partition("-")
    if backbone not in CAFFE_BACKBONES or head not in HEADS:
        raise ValueError(
            f"Unknown Caffe architecture. Expected one of {', '.join(ARCHITECTURES)}. "
            f"Received: arch={arch!r}"
        )
    return backbone, HEADS[head]


def arch_name(backbone: str, head: str) -> str:
    """``("resnet101", "aspp_l")`` -> ``"resnet101-aspp-l"``."""
    return f"{backbone}-{head.replace('_', '-')}"


def build_model(arch, num_classes: int = 21, **kwargs):
    """A randomly initialised :func:`DeepLabV2` of a Caffe architecture, ready for conversion."""
    from deeplab_tf.models.deeplab import DeepLabV2

    backbone, head = parse_arch(arch)
    return DeepLabV2(backbone=backbone, head=head, num_classes=num_classes, weights=None, **kwargs)


def guess_architecture(net) -> str | None:
    """Recognises the architecture of a parsed caffemodel from its layer names and rates.

    Returns:
        e.g. ``"resnet101-aspp-l"``, ``"vgg16-largefov"``, a partial description such as
        ``"resnet101 with rates (3, 6)"``, or ``None`` when nothing is recognised.
    """
    import re

    layers = net.by_name()
    # A ResNet's depth shows in the name of its last res4 block (res4b35, res4b22, res4f).
    backbone = next(
        (
            f"resnet{depth}"
            for depth, blocks in sorted(RESNET_DEPTHS.items(), reverse=True)
            if f"res{block_names(depth, 4, blocks[2])[-1]}_branch2a" in layers
        ),
        None,
    )
    if backbone is None and "conv5_3" in layers and "conv1_1" in layers:
        backbone = "vgg16"
    if backbone is None:
        return None
    pattern = r"^fc6(_\d+)?$" if backbone == "vgg16" else r"^fc1_.*c\d+$"
    rates = tuple(
        sorted(
            layer.conv.dilation[0]
            for name, layer in layers.items()
            if re.match(pattern, name) and layer.conv is not None
        )
    )
    for head, head_rates in HEAD_RATES.items():
        if rates == head_rates:
            return arch_name(backbone, head)
    return f"{backbone} with head rates {rates}" if rates else f"{backbone} without an ASPP head"
