"""The ``DeepLabV2`` functional builder (Chen et al., TPAMI 2017, sections 3.1-3.2)."""

from __future__ import annotations

import os

import keras

from deeplab_tf.layers import PACKAGE, Preprocess
from deeplab_tf.models.heads import conv_head, resolve_rates, vgg_head
from deeplab_tf.models.mobilenetv2 import mobilenetv2_features
from deeplab_tf.models.resnet import resnet_features
from deeplab_tf.models.vgg import vgg16_features

BACKBONES = ("vgg16", "resnet50", "resnet101", "resnet152", "mobilenetv2")
HEADS = ("largefov", "aspp_s", "aspp_l", "aspp")


@keras.saving.register_keras_serializable(package=PACKAGE)
class Logits(keras.layers.Layer):
    """Identity that names the model's output and records its output stride.

    Downstream code (multi-scale inference, label shrinking, export) reads
    ``model.get_layer("logits").output_stride`` instead of guessing it.
    """

    def __init__(self, output_stride: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.output_stride = int(output_stride)

    def call(self, x):
        return x

    def compute_output_shape(self, s):
        return s

    def get_config(self):
        return {**super().get_config(), "output_stride": self.output_stride}


def output_stride_of(model: keras.Model) -> int:
    """The output stride recorded in a DeepLab model's ``logits`` layer (8 if absent)."""
    try:
        return model.get_layer("logits").output_stride
    except ValueError:
        return 8


def preprocessing_mode(backbone: str) -> str:
    """``"caffe"`` (BGR minus mean) for the Caffe backbones, ``"tf"`` ([-1, 1]) for MobileNetV2."""
    return "tf" if backbone == "mobilenetv2" else "caffe"


def DeepLabV2(
    backbone: str = "resnet101",
    head: str = "aspp_l",
    num_classes: int = 21,
    rates=None,
    weights=None,
    freeze_batchnorm: bool = True,
    dropout: float = 0.5,
    input_shape=(None, None, 3),
    output_stride: int = 8,
    pool5a: bool = False,
    name: str | None = None,
) -> keras.Model:
    """Builds a DeepLab v2 network as a functional ``keras.Model``.

    The model takes RGB images with values 0..255 (uint8 or float, any size, batched),
    preprocesses them in-graph (BGR, mean subtraction for the Caffe backbones) and returns
    class logits at output stride 8: ``(N, H', W', num_classes)`` with Caffe's rounding
    (321 -> 41, 513 -> 65). Layer names are the authors' Caffe names.

    Paper: section 3.1 (atrous convolution), 3.2 (ASPP); Caffe release prototxts.

    Args:
        backbone: ``vgg16``, ``resnet50``, ``resnet101``, ``resnet152`` or ``mobilenetv2``
            (beyond the paper; dilated as in DeepLab v3).
        head: ``largefov`` (rate 12), ``aspp_s`` (2, 4, 8, 12), ``aspp_l`` (6, 12, 18, 24) or
            ``aspp`` with explicit ``rates``.
        num_classes: number of classes C (21 for PASCAL VOC).
        rates: atrous rates for ``head="aspp"``.
        weights: ``None`` (random init), ``"imagenet"`` (Keras Applications ImageNet weights
            mapped into the dilated backbone; for VGG-16 also the decimated fc6/fc7), or a path
            to a ``.weights.h5`` file saved from a model of the same architecture.
        freeze_batchnorm: BatchNorm uses moving statistics and its gamma/beta do not train
            (the paper). Ignored for VGG-16, which has no BatchNorm.
        dropout: dropout rate after fc6 and fc7 of the VGG heads (0 disables).
        input_shape: ``(H, W, 3)``; ``None`` for dynamic sizes. A fixed size gives TFLite plain
            dilated ``CONV_2D`` ops.
        output_stride: 8 (the paper) for every backbone; MobileNetV2 also allows 16.
        pool5a: VGG-16 only: the parameter-free 3x3 average pool before fc6 found in v1
            LargeFOV reimplementations.
        name: model name; defaults to ``deeplabv2_{backbone}_{head}``.

    Returns:
        A ``keras.Model`` whose output layer is named ``logits``.

    Example:
        >>> from deeplab_tf import DeepLabV2
        >>> model = DeepLabV2(backbone="vgg16", head="largefov", num_classes=21)
        >>> model.count_params()
        20505429
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}. Received: backbone={backbone!r}")
    rates = resolve_rates(head, rates)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(
            f"num_classes must be a positive int. Received: num_classes={num_classes!r}"
        )
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout!r}")
    if output_stride != 8 and backbone != "mobilenetv2":
        raise ValueError(
            f"DeepLab v2 backbones have output stride 8; only mobilenetv2 also allows 16. "
            f"Received: backbone={backbone!r}, output_stride={output_stride!r}"
        )
    if pool5a and backbone != "vgg16":
        raise ValueError(f"pool5a exists for vgg16 only. Received: backbone={backbone!r}")
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(
            f"input_shape must be (H, W, 3) with H, W ints or None. Received: {input_shape!r}"
        )
    if weights is not None and weights != "imagenet" and not os.path.isfile(str(weights)):
        raise ValueError(
            "weights must be None, 'imagenet' or the path of an existing weights file. "
            f"Received: weights={weights!r}"
        )

    images = keras.Input(shape=input_shape, name="images")
    x = Preprocess(mode=preprocessing_mode(backbone), name="preprocess")(images)
    if backbone == "vgg16":
        x = vgg16_features(x)
        x = vgg_head(x, num_classes, rates, dropout=dropout, pool5a=pool5a)
    elif backbone == "mobilenetv2":
        x = mobilenetv2_features(x, output_stride, freeze_batchnorm)
        x = conv_head(x, num_classes, rates)
    else:
        x = resnet_features(x, int(backbone[len("resnet") :]), freeze_batchnorm)
        x = conv_head(x, num_classes, rates)
    logits = Logits(output_stride, name="logits")(x)
    model = keras.Model(images, logits, name=name or f"deeplabv2_{backbone}_{head}")

    if weights == "imagenet":
        from deeplab_tf.models.imagenet import load_imagenet_weights

        load_imagenet_weights(model, backbone)
    elif weights is not None:
        from deeplab_tf.convert.weights import load_weights

        load_weights(model, weights)  # .weights.h5 (SHA-256 vs manifest), .caffemodel, .pth
    return model
