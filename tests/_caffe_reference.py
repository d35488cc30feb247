"""An independent description of the authors' DeepLab v2 Caffe releases, for tests only.

:func:`caffe_layers` writes down, in Caffe's own terms (NCHW, OIHW, BatchNorm + Scale pairs), the
layers of the release prototxts (deeplab-public-ver2; docs/architecture.md): names, types, blob
shapes and hyper-parameters. It is deliberately written apart from the Keras builders and from
the converter (its tables below are its own), so that tests compare two separate descriptions of
the same network; :func:`synthetic_caffemodel` fills it with random weights and writes a file.
"""

from __future__ import annotations

import numpy as np

from deeplab_tf.convert.architectures import arch_name, parse_arch
from deeplab_tf.convert.caffemodel import CaffeLayer, ConvSpec, write_caffemodel

HEAD_RATES = {"largefov": (12,), "aspp_s": (2, 4, 8, 12), "aspp_l": (6, 12, 18, 24)}
_RESNET_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
# (stage, width, first stride, dilation)
_RESNET_STAGES = ((2, 64, 1, 1), (3, 128, 2, 1), (4, 256, 1, 2), (5, 512, 1, 4))
# (stage, convs, filters, pool stride, dilation)
_VGG_STAGES = ((1, 2, 64, 2, 1), (2, 2, 128, 2, 1), (3, 3, 256, 2, 1), (4, 3, 512, 1, 1),
               (5, 3, 512, 1, 2))  # fmt: skip
#: The moving-average normaliser Caffe's BatchNorm stores as its third blob in trained models.
BN_SCALE_FACTOR = 999.982


def resnet_block_names(depth: int, stage: int, blocks: int) -> list[str]:
    """MSRA block tags: letters for ResNet-50 and 3-block stages, else ``a, b1, b2, ...``."""
    if depth == 50 or blocks == 3:
        return [f"{stage}{chr(ord('a') + i)}" for i in range(blocks)]
    return [f"{stage}a"] + [f"{stage}b{i}" for i in range(1, blocks)]


# ---------------------------------------------------------------------------------------------
# The release's layer lists, with random weights (for tests and benchmarks)
# ---------------------------------------------------------------------------------------------


class _Builder:
    def __init__(self, rng, shape_only: bool = False):
        self.rng = rng
        self.layers: list[CaffeLayer] = []
        self.shape_only = shape_only

    def _random(self, shape, std, mean=0.0):
        if self.shape_only:
            return np.zeros(shape, np.float32)
        return (mean + std * self.rng.standard_normal(shape)).astype(np.float32)

    def plain(self, name, type_, bottom, top, **kw):
        self.layers.append(CaffeLayer(name, type_, list(bottom), list(top), **kw))

    def conv(self, name, bottom, cin, cout, k, stride=1, pad=0, dilation=1, bias=True, std=None):
        std = np.sqrt(2.0 / (cin * k * k)) if std is None else std
        blobs = [self._random((cout, cin, k, k), std)]
        if bias:
            blobs.append(self._random((cout,), 0.1))
        spec = ConvSpec(cout, (k, k), (stride,) * 2, (pad,) * 2, (dilation,) * 2, 1, bias)
        self.layers.append(CaffeLayer(name, "Convolution", [bottom], [name], blobs, conv=spec))
        return name

    def bn_scale(self, bn_name, scale_name, blob, channels, gamma_range=(0.5, 1.5)):
        f = BN_SCALE_FACTOR
        if self.shape_only:
            mean = var = np.zeros((channels,), np.float32)
            gamma = beta = mean
        else:
            mean = self._random((channels,), 0.2)
            var = self.rng.uniform(0.5, 2.0, channels).astype(np.float32)
            gamma = self.rng.uniform(*gamma_range, channels).astype(np.float32)
            beta = self._random((channels,), 0.1)
        blobs = [mean * f, var * f, np.array([f], np.float32)]
        self.layers.append(CaffeLayer(bn_name, "BatchNorm", [blob], [blob], blobs, bn_eps=1e-5))
        self.layers.append(CaffeLayer(scale_name, "Scale", [blob], [blob], [gamma, beta]))


def caffe_layers(
    arch,
    num_classes: int = 21,
    seed: int | None = 0,
    classifier_tag: str = "voc12",
    msc_copies=(),
) -> list[CaffeLayer]:
    """The Caffe layers of a DeepLab v2 release model, with random weights in Caffe layouts.

    Names, types, blob shapes and hyper-parameters follow the authors' prototxts
    (deeplab-public-ver2; docs/architecture.md#layer-tables). Parameter-free layers (ReLU,
    Pooling, Dropout, Eltwise, the data layer) are included too, as in a real file.

    Args:
        arch: e.g. ``"resnet101-aspp-l"``, ``"vgg16-largefov"``.
        num_classes: classifier outputs.
        seed: random seed for the weights; ``None`` gives all-zero blobs (shapes only).
        classifier_tag: the dataset tag in classifier names (``fc8_voc12``, ``fc1_voc12_c0``).
        msc_copies: names of layers to duplicate as the MSC copies ``{name}_res075`` and
            ``{name}_res05`` (with different random weights), as in the release's MSC nets.

    Returns:
        A list of :class:`CaffeLayer` in prototxt order.
    """
    backbone, head = parse_arch(arch)
    rates = HEAD_RATES[head]
    b = _Builder(np.random.default_rng(seed), shape_only=seed is None)
    b.plain("data", "Data", [], ["data", "label"])
    if backbone == "vgg16":
        x, cin = "data", 3
        for stage, n_conv, filters, pool_stride, dil in _VGG_STAGES:
            for i in range(1, n_conv + 1):
                x = b.conv(f"conv{stage}_{i}", x, cin, filters, 3, pad=dil, dilation=dil)
                b.plain(f"relu{stage}_{i}", "ReLU", [x], [x])
                cin = filters
            b.plain(f"pool{stage}", "Pooling", [x], [f"pool{stage}"],
                    pool=("MAX", (3, 3), (pool_stride,) * 2, (1, 1)))  # fmt: skip
            x = f"pool{stage}"
        outs = []
        for i, rate in enumerate(rates, start=1):
            sfx = "" if len(rates) == 1 else f"_{i}"
            y = b.conv(f"fc6{sfx}", "pool5", 512, 1024, 3, pad=rate, dilation=rate)
            b.plain(f"relu6{sfx}", "ReLU", [y], [y])
            b.plain(f"drop6{sfx}", "Dropout", [y], [y])
            y = b.conv(f"fc7{sfx}", y, 1024, 1024, 1)
            b.plain(f"relu7{sfx}", "ReLU", [y], [y])
            b.plain(f"drop7{sfx}", "Dropout", [y], [y])
            outs.append(b.conv(f"fc8_{classifier_tag}{sfx}", y, 1024, num_classes, 1))
        if len(outs) > 1:
            b.plain(f"fc8_{classifier_tag}", "Eltwise", outs, [f"fc8_{classifier_tag}"])
    else:
        depth = int(backbone[len("resnet") :])
        x = b.conv("conv1", "data", 3, 64, 7, stride=2, pad=3, bias=False)
        b.bn_scale("bn_conv1", "scale_conv1", x, 64)
        b.plain("conv1_relu", "ReLU", [x], [x])
        b.plain("pool1", "Pooling", [x], ["pool1"], pool=("MAX", (3, 3), (2, 2), (1, 1)))
        x, cin = "pool1", 64
        for (stage, width, stride, dil), blocks in zip(_RESNET_STAGES, _RESNET_BLOCKS[depth]):
            for i, tag in enumerate(resnet_block_names(depth, stage, blocks)):
                s = stride if i == 0 else 1
                if i == 0:
                    sc = b.conv(f"res{tag}_branch1", x, cin, 4 * width, 1, stride=s, bias=False)
                    b.bn_scale(f"bn{tag}_branch1", f"scale{tag}_branch1", sc, 4 * width)
                else:
                    sc = x
                y = b.conv(f"res{tag}_branch2a", x, cin, width, 1, stride=s, bias=False)
                b.bn_scale(f"bn{tag}_branch2a", f"scale{tag}_branch2a", y, width)
                b.plain(f"res{tag}_branch2a_relu", "ReLU", [y], [y])
                y = b.conv(f"res{tag}_branch2b", y, width, width, 3, pad=dil, dilation=dil,
                           bias=False)  # fmt: skip
                b.bn_scale(f"bn{tag}_branch2b", f"scale{tag}_branch2b", y, width)
                b.plain(f"res{tag}_branch2b_relu", "ReLU", [y], [y])
                y = b.conv(f"res{tag}_branch2c", y, width, 4 * width, 1, bias=False)
                # small residual gains keep 33 random blocks numerically tame
                b.bn_scale(f"bn{tag}_branch2c", f"scale{tag}_branch2c", y, 4 * width, (0.1, 0.3))
                b.plain(f"res{tag}", "Eltwise", [sc, y], [f"res{tag}"])
                b.plain(f"res{tag}_relu", "ReLU", [f"res{tag}"], [f"res{tag}"])
                x, cin = f"res{tag}", 4 * width
        outs = [
            b.conv(f"fc1_{classifier_tag}_c{i}", x, 2048, num_classes, 3, pad=r, dilation=r)
            for i, r in enumerate(rates)
        ]
        if len(outs) > 1:
            b.plain(f"fc1_{classifier_tag}", "Eltwise", outs, [f"fc1_{classifier_tag}"])
    layers = b.layers
    if msc_copies:
        by_name = {layer.name: layer for layer in layers}
        missing = [n for n in msc_copies if n not in by_name]
        if missing:
            raise ValueError(f"msc_copies names unknown layers. Received: {missing}")
        for name in msc_copies:
            for sfx in ("_res075", "_res05"):
                src = by_name[name]
                blobs = [b._random(a.shape, 1.0) for a in src.blobs]
                layers.append(
                    CaffeLayer(
                        name + sfx, src.type, src.bottom, src.top, blobs, src.conv, src.bn_eps
                    )  # fmt: skip
                )
    return layers


def synthetic_caffemodel(
    path,
    arch,
    num_classes: int = 21,
    seed: int = 0,
    encoding: str = "v2",
    shape_encoding: str = "shape",
    classifier_tag: str = "voc12",
    msc_copies=(),
    edit=None,
) -> list[CaffeLayer]:
    """Writes a caffemodel of an architecture with random weights; returns its layers.

    Args:
        path: output ``.caffemodel``.
        arch: architecture (see :data:`ARCHITECTURES`).
        num_classes: classifier outputs.
        seed: random seed.
        encoding: ``"v2"`` or ``"v1"`` (VGG only: V1 has no BatchNorm/Scale types).
        shape_encoding: ``"shape"`` or ``"legacy"`` (num/channels/height/width).
        classifier_tag: dataset tag in the classifier names.
        msc_copies: layers to duplicate as ``_res075`` / ``_res05`` MSC copies.
        edit: optional ``callable(layers)`` that mutates the layer list before writing (tests
            use it to plant a wrong dilation, drop a layer, etc.).

    Returns:
        The list of :class:`CaffeLayer` written (the reference for tests).
    """
    layers = caffe_layers(arch, num_classes, seed, classifier_tag, msc_copies)
    if edit is not None:
        edit(layers)
    write_caffemodel(path, layers, name=arch_name(*parse_arch(arch)), encoding=encoding,
                     shape_encoding=shape_encoding)  # fmt: skip
    return layers
