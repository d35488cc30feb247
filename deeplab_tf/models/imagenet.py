"""ImageNet initialisation: Keras Applications weights mapped into the dilated backbones.

Keras Applications' VGG16 and ResNet50/101/152 weights are conversions of the original Caffe
ImageNet models, so they are what DeepLab v2 started from. Their layer names and a few
conventions differ from the Caffe release, and the mapping below undoes those differences
exactly:

* ResNet: Keras convolutions carry a bias that Caffe's do not. ``BN(conv(x) + b)`` equals
  ``BN'(conv(x))`` with ``moving_mean' = moving_mean - b``, so the bias is folded into the
  BatchNorm. Keras uses BN epsilon 1.001e-5 where Caffe uses 1e-5: the difference is moved into
  the variance (``var' = var + 1e-8``), so outputs are unchanged.
* VGG-16: fc6/fc7 are initialised by DeepLab v1's decimation: the ImageNet fc6
  (7x7x512 -> 4096) keeps every 3rd spatial tap and every 4th output (3x3x512 -> 1024); fc7
  keeps every 4th input and output (1024 -> 1024). Every fc6_i / fc7_i branch of an ASPP head
  gets the same initialisation (docs/architecture.md#imagenet-initialisation).
* MobileNetV2: our layer names are Keras Applications' own; weights are copied by name.
"""

from __future__ import annotations

import numpy as np

from deeplab_tf.models.resnet import RESNET_DEPTHS, block_names

_BRANCHES = {"0": "branch1", "1": "branch2a", "2": "branch2b", "3": "branch2c"}


def keras_application(
    backbone: str, weights=None, include_top: bool | None = None, input_shape=None
):
    """Builds the Keras Applications twin of a backbone (``weights`` as Keras takes it).

    ``input_shape`` defaults to 224x224 with the top (VGG16) and to dynamic without it.
    """
    import keras

    apps = {
        "vgg16": keras.applications.VGG16,
        "resnet50": keras.applications.ResNet50,
        "resnet101": keras.applications.ResNet101,
        "resnet152": keras.applications.ResNet152,
        "mobilenetv2": keras.applications.MobileNetV2,
    }
    if backbone not in apps:
        raise ValueError(f"No ImageNet model for backbone={backbone!r}. Known: {sorted(apps)}")
    if include_top is None:
        include_top = backbone == "vgg16"  # fc6/fc7 come from VGG's fc1/fc2
    if input_shape is None:
        input_shape = (224, 224, 3) if include_top else (None, None, 3)
    return apps[backbone](weights=weights, include_top=include_top, input_shape=input_shape)


def resnet_name_map(depth: int) -> dict[str, str]:
    """Keras Applications ResNet layer name -> Caffe/DeepLab name (convs and BNs)."""
    mapping = {"conv1_conv": "conv1", "conv1_bn": "bn_conv1"}
    for stage, blocks in zip((2, 3, 4, 5), RESNET_DEPTHS[depth]):
        for i, tag in enumerate(block_names(depth, stage, blocks), start=1):
            for k, branch in _BRANCHES.items():
                if k == "0" and i != 1:
                    continue
                mapping[f"conv{stage}_block{i}_{k}_conv"] = f"res{tag}_{branch}"
                mapping[f"conv{stage}_block{i}_{k}_bn"] = f"bn{tag}_{branch}"
    return mapping


def _layer(model, name, source_desc):
    try:
        return model.get_layer(name)
    except ValueError:
        raise ValueError(
            f"Layer {name!r} is missing from {source_desc}; the ImageNet mapping expects it."
        ) from None


def _assign(layer, values, source_name, adapt=None):
    """Sets ``values`` on ``layer``; ``adapt``: ``(first conv name, fn)`` adapting a 3-channel
    kernel to the model's ``input_channels`` (:mod:`deeplab_tf.models.channels`)."""
    if adapt is not None and layer.name == adapt[0]:
        values = [adapt[1](values[0]), *values[1:]]
    expected = [tuple(w.shape) for w in layer.weights]
    received = [tuple(np.shape(v)) for v in values]
    if expected != received:
        raise ValueError(
            f"Shape mismatch loading {source_name!r} into layer {layer.name!r}: "
            f"expected {expected}, received {received}"
        )
    layer.set_weights(values)


def map_resnet(model, source, depth: int, adapt=None) -> list[str]:
    """Copies a Keras Applications ResNet into a DeepLab ResNet; returns mapped layer names.

    Each Keras ``*_conv`` (kernel + bias) and its ``*_bn`` become one bias-free Caffe conv and
    one BatchNorm with the bias folded into the moving mean and the epsilon difference moved
    into the moving variance.
    """
    names = resnet_name_map(depth)
    mapped = []
    for src_conv, dst_conv in names.items():
        if not src_conv.endswith("_conv"):
            continue
        src_bn = src_conv[: -len("conv")] + "bn"
        dst_bn = names[src_bn]
        kernel, *bias = _layer(source, src_conv, "the ImageNet ResNet").get_weights()
        bn_src = _layer(source, src_bn, "the ImageNet ResNet")
        bn_dst = _layer(model, dst_bn, "the DeepLab model")
        gamma, beta, mean, var = bn_src.get_weights()
        if bias:
            mean = mean - bias[0]
        var = var + (float(bn_src.epsilon) - float(bn_dst.epsilon))
        _assign(_layer(model, dst_conv, "the DeepLab model"), [kernel], src_conv, adapt)
        _assign(bn_dst, [gamma, beta, mean, var], src_bn)
        mapped += [dst_conv, dst_bn]
    return mapped


def decimate_fc(fc1_kernel, fc1_bias, fc2_kernel, fc2_bias):
    """DeepLab v1 decimation of VGG-16's fc6/fc7 (7x7x512x4096 -> 3x3x512x1024, 1024x1024).

    Args:
        fc1_kernel: ``(25088, 4096)`` Keras ``fc1`` kernel (flattened H, W, C order).
        fc1_bias: ``(4096,)``.
        fc2_kernel: ``(4096, 4096)``.
        fc2_bias: ``(4096,)``.

    Returns:
        ``(fc6_kernel (3,3,512,1024), fc6_bias (1024,), fc7_kernel (1,1,1024,1024),
        fc7_bias (1024,))``.
    """
    fc1_kernel = np.asarray(fc1_kernel)
    if fc1_kernel.shape != (7 * 7 * 512, 4096) or np.shape(fc2_kernel) != (4096, 4096):
        raise ValueError(
            "VGG-16 fc1/fc2 kernels must be (25088, 4096) and (4096, 4096). Received: "
            f"{fc1_kernel.shape} and {np.shape(fc2_kernel)}"
        )
    fc6 = fc1_kernel.reshape(7, 7, 512, 4096)[::3, ::3, :, ::4]
    fc7 = np.asarray(fc2_kernel)[::4, ::4]
    return fc6, np.asarray(fc1_bias)[::4], fc7.reshape(1, 1, 1024, 1024), np.asarray(fc2_bias)[::4]


def map_vgg16(model, source, adapt=None) -> list[str]:
    """Copies Keras Applications VGG16 convs and the decimated fc6/fc7 into a DeepLab VGG-16."""
    mapped = []
    for stage, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)):
        for i in range(1, n + 1):
            src = _layer(source, f"block{stage}_conv{i}", "the ImageNet VGG16")
            dst = _layer(model, f"conv{stage}_{i}", "the DeepLab model")
            _assign(dst, src.get_weights(), src.name, adapt)
            mapped.append(dst.name)
    names = {layer.name for layer in model.layers}
    fc6s = sorted(n for n in names if n == "fc6" or n.startswith("fc6_"))
    fc6s = [n for n in fc6s if not n.endswith("_pad")]
    if fc6s:
        try:
            fc1, fc2 = source.get_layer("fc1"), source.get_layer("fc2")
        except ValueError:
            raise ValueError(
                "The ImageNet VGG16 has no fc1/fc2 (built with include_top=False?); DeepLab "
                "initialises fc6/fc7 from them. Use the include_top=True weights."
            ) from None
        fc6_k, fc6_b, fc7_k, fc7_b = decimate_fc(*fc1.get_weights(), *fc2.get_weights())
        for fc6_name in fc6s:
            fc7_name = "fc7" + fc6_name[len("fc6") :]
            _assign(_layer(model, fc6_name, "the DeepLab model"), [fc6_k, fc6_b], "fc1")
            _assign(_layer(model, fc7_name, "the DeepLab model"), [fc7_k, fc7_b], "fc2")
            mapped += [fc6_name, fc7_name]
    return mapped


def map_by_name(model, source, adapt=None) -> list[str]:
    """Copies every weighted layer of ``source`` into the same-named layer of ``model``."""
    mapped = []
    for src in source.layers:
        if not src.weights:
            continue
        dst = _layer(model, src.name, "the DeepLab model")
        _assign(dst, src.get_weights(), src.name, adapt)
        mapped.append(dst.name)
    return mapped


def load_imagenet_weights(model, backbone: str, source=None) -> list[str]:
    """Initialises a DeepLab model's backbone from ImageNet weights.

    Args:
        model: a model built by :func:`deeplab_tf.DeepLabV2` with this ``backbone``.
        backbone: ``vgg16``, ``resnet50/101/152`` or ``mobilenetv2``.
        source: ``None`` to let Keras fetch its ImageNet weights (network access), the path of
            a weights file of the Keras Applications model (VGG16 with its top), or an already
            built Keras Applications model.

    Returns:
        The names of the DeepLab layers that were initialised.

    Raises:
        ValueError: for a wrong file, shape mismatch or missing layer, naming the layer.
    """
    import keras

    if source is None:
        source = keras_application(backbone, weights="imagenet")
    elif not isinstance(source, keras.Model):
        path = str(source)
        source = keras_application(backbone, weights=None)
        try:
            source.load_weights(path)
        except Exception as err:  # Keras raises several types for a wrong file
            raise ValueError(
                f"Could not load {path!r} as Keras Applications {backbone} weights "
                f"({type(err).__name__}: {err})"
            ) from err
    from deeplab_tf.models.channels import first_conv_adapter

    adapt = first_conv_adapter(model)  # input_channels != 3 or per-channel normalisation
    if backbone == "vgg16":
        return map_vgg16(model, source, adapt)
    if backbone.startswith("resnet"):
        return map_resnet(model, source, int(backbone[len("resnet") :]), adapt)
    if backbone == "mobilenetv2":
        return map_by_name(model, _strip_top(source), adapt)
    raise ValueError(f"No ImageNet mapping for backbone={backbone!r}")


def _strip_top(source):
    """MobileNetV2 layers after ``block_16_project_BN`` (Conv_1, the classifier) are not used."""
    import keras

    end = source.get_layer("block_16_project_BN").output
    return keras.Model(source.inputs, end)


__all__ = [
    "decimate_fc",
    "keras_application",
    "load_imagenet_weights",
    "resnet_name_map",
]
