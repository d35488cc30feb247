"""An inference rewrite measured by the benchmarks: explicit-padding, direct dilated convs.

``deeplab_tf`` builds every Caffe convolution as ``CaffePadding`` (a ``tf.pad``) followed by a
VALID ``Conv2D``; for dilated convolutions Keras' TensorFlow backend goes through
``tf.nn.convolution``, which wraps them in SPACE_TO_BATCH_ND / BATCH_TO_SPACE_ND (needed for
the CPU gradient, not for inference). :func:`fuse_for_inference` folds the frozen BatchNorms
(``deeplab_tf.export.fold_batchnorm``) and then replaces each ``CaffePadding -> Conv2D`` pair by
one ``tf.nn.conv2d`` with explicit symmetric padding and native dilation, which oneDNN runs as a
single fused Conv2D+BiasAdd(+ReLU) primitive. The function computed is the same (checked by the
benchmark against the original model's logits).

Candidate for ``deeplab_tf.export.optimize``; kept here until its owner adopts it.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from deeplab_tf.layers import CaffePadding


class PaddedConv2D(keras.layers.Conv2D):
    """``Conv2D`` with Caffe's symmetric zero padding folded in and native dilation."""

    def __init__(self, pad: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.pad = int(pad)

    def call(self, inputs):
        p = self.pad
        y = tf.nn.conv2d(
            inputs,
            tf.cast(self.kernel, inputs.dtype),
            strides=self.strides,
            padding=[[0, 0], [p, p], [p, p], [0, 0]] if p else "VALID",
            dilations=self.dilation_rate,
        )
        if self.use_bias:
            y = tf.nn.bias_add(y, tf.cast(self.bias, y.dtype))
        return self.activation(y) if self.activation is not None else y

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        grow = lambda d: None if d is None else d + 2 * self.pad
        return super().compute_output_shape((n, grow(h), grow(w), c))

    def get_config(self):
        return {**super().get_config(), "pad": self.pad}


class _Identity(keras.layers.Layer):
    def call(self, x):
        return x

    def compute_output_shape(self, s):
        return s


def fuse_for_inference(model: keras.Model, fold: bool = True) -> keras.Model:
    """Folded BatchNorm + padding merged into direct (dilated) convolutions.

    Args:
        model: a ``deeplab_tf`` DeepLab model (frozen BatchNorm).
        fold: fold BatchNorm first (``deeplab_tf.export.fold_batchnorm``).

    Returns:
        A new model with the same outputs; only usable for inference (not serialisable).
    """
    if fold:
        from deeplab_tf.export import fold_batchnorm

        model = fold_batchnorm(model)
    consumers: dict[str, list] = {}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for t in node.input_tensors:
                consumers.setdefault(t._keras_history.operation.name, []).append(layer)
    pads = {}
    for layer in model.layers:
        if isinstance(layer, CaffePadding):
            users = consumers.get(layer.name, [])
            if users and all(
                type(u) is keras.layers.Conv2D and u.padding == "valid" for u in users
            ):
                pads[layer.name] = layer.pad
    padded_conv = {}
    for name, pad in pads.items():
        for user in consumers[name]:
            padded_conv[user.name] = pad
    direct = {
        layer.name
        for layer in model.layers
        if type(layer) is keras.layers.Conv2D
        and layer.padding == "valid"
        and max(layer.dilation_rate) > 1
    }

    def clone(layer):
        cfg = layer.get_config()
        if layer.name in pads:
            return _Identity(name=layer.name)
        if layer.name in padded_conv or layer.name in direct:
            return PaddedConv2D(pad=padded_conv.get(layer.name, 0), **cfg)
        return layer.__class__.from_config(cfg)

    fused = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if layer.weights:
            fused.get_layer(layer.name).set_weights(layer.get_weights())
    return fused
