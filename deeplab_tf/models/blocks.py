"""Small functional building blocks shared by the backbones and heads (Caffe semantics)."""

from __future__ import annotations

import keras

from deeplab_tf.layers import CaffePadding, PaddedConv2D

#: Caffe's BatchNorm epsilon; Keras' default 1e-3 would be wrong here
#: (docs/architecture.md#batchnorm-strides-and-initialisation).
BN_EPSILON = 1e-5


def caffe_conv(
    x,
    filters: int,
    kernel: int,
    name: str,
    stride: int = 1,
    pad: int = 0,
    dilation: int = 1,
    use_bias: bool = True,
    kernel_initializer="glorot_uniform",
):
    """A Caffe ``Convolution``: symmetric zero padding by ``pad`` then a VALID convolution.

    The convolution layer carries the Caffe layer name, so converted weights load by name.
    Dilated stride-1 convolutions are one :class:`~deeplab_tf.layers.PaddedConv2D` (padding
    inside, a direct dilated convolution with a MatMul gradient); the others are a
    ``CaffePadding`` layer named ``{name}_pad`` (when ``pad`` > 0) and a ``Conv2D``.
    """
    kwargs = dict(
        filters=filters,
        kernel_size=kernel,
        strides=stride,
        padding="valid",
        dilation_rate=dilation,
        use_bias=use_bias,
        kernel_initializer=kernel_initializer,
        name=name,
    )
    if dilation > 1 and stride == 1:
        return PaddedConv2D(pad=pad, **kwargs)(x)
    if pad:
        x = CaffePadding(pad, name=f"{name}_pad")(x)
    return keras.layers.Conv2D(**kwargs)(x)


def batch_norm(x, name: str, frozen: bool, epsilon: float = BN_EPSILON):
    """Caffe ``BatchNorm`` + ``Scale`` as one Keras layer (epsilon 1e-5).

    ``frozen=True`` (the paper: ``use_global_stats: true``, lr_mult 0) makes the layer
    non-trainable, which in Keras 3 also means it always normalises with its moving statistics,
    so neither gamma/beta nor the statistics change under ``model.fit``.
    """
    layer = keras.layers.BatchNormalization(epsilon=epsilon, name=name)
    if frozen:
        layer.trainable = False
    return layer(x)


def relu(x, name: str):
    return keras.layers.ReLU(name=name)(x)


def classifier_initializer():
    """Classifier init from the paper's prototxts: Gaussian std 0.01 (bias 0)."""
    return keras.initializers.RandomNormal(stddev=0.01)
