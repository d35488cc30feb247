"""Inference-time rewrites of a trained DeepLab model: BatchNorm folding, bfloat16, fixed shapes.

All three return a new functional model with the same layer names (those that survive) and
leave the original untouched.
"""

from __future__ import annotations

import keras
import numpy as np

from deeplab_tf.layers import CaffePadding, FoldedBatchNorm, PaddedConv2D, Preprocess
from deeplab_tf.models.deeplab import Logits

_CONVS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


def _producer(tensor):
    return tensor._keras_history.operation


def foldable_pairs(model) -> dict[str, str]:
    """``{batchnorm name: conv name}`` for every BN that directly follows a conv whose output
    feeds nothing else (so folding cannot change any other path)."""
    consumers: dict[str, int] = {}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for t in node.input_tensors:
                name = _producer(t).name
                consumers[name] = consumers.get(name, 0) + 1
    pairs = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization) or layer.trainable:
            continue
        if len(layer._inbound_nodes) != 1:
            continue
        conv = _producer(layer.input)
        if isinstance(conv, _CONVS) and consumers.get(conv.name) == 1:
            pairs[layer.name] = conv.name
    return pairs


def fold_batchnorm(model: keras.Model) -> keras.Model:
    """Folds every frozen BatchNorm into the convolution before it.

    ``BN(conv(x)) = conv'(x)`` with ``kernel' = kernel * s``, ``bias' = (bias - mean) * s +
    beta`` and ``s = gamma / sqrt(var + eps)``; the BN layer becomes a ``FoldedBatchNorm`` identity.
    Trainable (unfrozen) BatchNorms are left alone.

    Returns:
        A new model computing the same function (to float tolerance) with fewer ops.
    """
    pairs = foldable_pairs(model)
    convs = set(pairs.values())

    def clone(layer):
        cfg = layer.get_config()
        if layer.name in pairs:
            return FoldedBatchNorm(name=layer.name)
        if layer.name in convs:
            cfg["use_bias"] = True
        return layer.__class__.from_config(cfg)

    folded = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if layer.name in pairs or not layer.weights:
            continue
        if layer.name not in convs:
            folded.get_layer(layer.name).set_weights(layer.get_weights())
    for bn_name, conv_name in pairs.items():
        bn, conv = model.get_layer(bn_name), model.get_layer(conv_name)
        gamma, beta, mean, var = (np.asarray(w, np.float64) for w in bn.get_weights())
        scale = gamma / np.sqrt(var + bn.epsilon)
        kernel, *bias = (np.asarray(w, np.float64) for w in conv.get_weights())
        bias = bias[0] if bias else np.zeros_like(mean)
        if isinstance(conv, keras.layers.DepthwiseConv2D):  # (k, k, C, multiplier=1)
            kernel = kernel * scale.reshape(1, 1, -1, kernel.shape[-1])
        else:
            kernel = kernel * scale
        new_bias = (bias - mean) * scale + beta
        folded.get_layer(conv_name).set_weights(
            [kernel.astype(np.float32), new_bias.astype(np.float32)]
        )
    return folded


def _consumers(model) -> dict[str, list]:
    users: dict[str, list] = {}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for t in node.input_tensors:
                users.setdefault(_producer(t).name, []).append(layer)
    return users


def fuse_for_inference(model: keras.Model, fold: bool = True) -> keras.Model:
    """The fastest CPU inference form of a DeepLab model, computing the same function.

    Folds frozen BatchNorm into the convolutions (:func:`fold_batchnorm`), then merges every
    remaining ``CaffePadding`` -> ``Conv2D`` pair (the builders already make dilated convs
    :class:`~deeplab_tf.layers.PaddedConv2D`; models saved before that may still have dilated
    VALID ``Conv2D`` layers, which are converted too) into one ``PaddedConv2D``: a direct
    ``tf.nn.conv2d`` with explicit padding, no separate pad copy and no SPACE_TO_BATCH_ND. Its
    speed against the plain graph and PyTorch: ``benchmarks/README.md`` (``bench_inference.py``).

    The result is meant for inference (with BatchNorm folded, SGD would see a different
    parameterisation); it saves to ``.keras`` and exports to SavedModel like the original.

    Args:
        model: a DeepLab model (frozen BatchNorm).
        fold: fold BatchNorm first.

    Returns:
        A new model with the same layer names (padding layers become ``keras.layers.Identity``).
    """
    if fold:
        model = fold_batchnorm(model)
    users = _consumers(model)
    pads = {
        layer.name: layer.pad
        for layer in model.layers
        if isinstance(layer, CaffePadding)
        and users.get(layer.name)
        and all(type(u) is keras.layers.Conv2D and u.padding == "valid" for u in users[layer.name])
    }
    padded = {u.name: pad for name, pad in pads.items() for u in users[name]}
    direct = {
        layer.name
        for layer in model.layers
        if type(layer) is keras.layers.Conv2D
        and layer.padding == "valid"
        and (layer.name in padded or max(layer.dilation_rate) > 1)
    }

    def clone(layer):
        if layer.name in pads:
            return keras.layers.Identity(name=layer.name)
        if layer.name in direct:
            return PaddedConv2D(pad=padded.get(layer.name, 0), **layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    fused = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if layer.weights:
            fused.get_layer(layer.name).set_weights(layer.get_weights())
    return fused


def to_bfloat16(model: keras.Model) -> keras.Model:
    """A twin computing in bfloat16 (``mixed_bfloat16``: float32 variables, bf16 math).

    Preprocessing and the output stay float32, so callers still pass uint8/float images and get
    float32 logits.
    """

    def clone(layer):
        cfg = layer.get_config()
        if not isinstance(layer, (Preprocess, Logits, keras.layers.InputLayer)):
            cfg["dtype"] = "mixed_bfloat16"
        else:
            cfg["dtype"] = "float32"
        return layer.__class__.from_config(cfg)

    twin = keras.models.clone_model(model, clone_function=clone)
    twin.set_weights(model.get_weights())
    return twin


def with_input_shape(
    model: keras.Model, height: int, width: int, batch: int | None = 1, plain_convs: bool = False
):
    """The same network with a fixed input size (TFLite then keeps dilated convs plain).

    Args:
        model: a model with one image input.
        height, width: the fixed input size.
        batch: the fixed batch size (None: any).
        plain_convs: every :class:`~deeplab_tf.layers.PaddedConv2D` computes its forward pass
            as one (dilated) convolution (``narrow_matmul=False``) instead of the MatMul +
            shifted sum that speeds up training of narrow classifiers; same layer names and
            weights. The TFLite export sets it: the file then holds one CONV_2D per
            classifier, quantised end to end.
    """
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer. Received: {value!r}")
    if len(model.inputs) != 1:
        raise ValueError(f"Expected a model with one input. Received {len(model.inputs)} inputs.")
    # Rebuilt from the same layers' configs on a fixed-size input (works for a DeepLabV2, whose
    # own config holds builder arguments rather than the graph, and for plain functional models).
    source = model.inputs[0]
    images = keras.Input(
        batch_shape=(batch, int(height), int(width), 3), dtype=source.dtype, name=source.name
    )

    def clone(layer):
        config = layer.get_config()
        if plain_convs and isinstance(layer, PaddedConv2D):
            config["narrow_matmul"] = False
        return layer.__class__.from_config(config)

    fixed = keras.models.clone_model(model, input_tensors=images, clone_function=clone)
    fixed.set_weights(model.get_weights())
    return fixed
