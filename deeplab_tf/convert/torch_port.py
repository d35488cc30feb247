"""The PyTorch port's converted state dicts (kazuto1011/deeplab-pytorch) -> Keras.

The port converts the same Caffe release to ``.pth`` files whose keys follow its module tree:

* current layout: ``base.layer1.conv1.conv.weight``, ``base.layer1.conv1.bn.running_mean``,
  ``base.layer{2..5}.block{n}.{reduce,conv3x3,increase,shortcut}.{conv,bn}.*``,
  ``base.aspp.c{i}.{weight,bias}`` (``base.`` is the MSC wrapper);
* older layout: ``scale.`` prefix, ``proj`` for the shortcut, ``aspp.stages.c{i}``.

Keys are translated to Caffe layer names (``res4b22_branch2b``, ``bn4b22_branch2b``,
``fc1_voc12_c0``) and go through the same checked mapping as a caffemodel. A state dict carries no
strides, pads or dilations, so only shapes can be checked for it.
"""

from __future__ import annotations

import re

import numpy as np

from deeplab_tf.convert.caffemodel import CaffeLayer, CaffeNet

_PREFIXES = ("module.", "base.", "scale.")
_BRANCH = {"reduce": "2a", "conv3x3": "2b", "increase": "2c", "shortcut": "1", "proj": "1"}
_KEY = re.compile(
    r"^(?:layer1\.conv1\.(?P<stem>conv|bn)"
    r"|layer(?P<stage>[2-5])\.block(?P<block>\d+)\.(?P<branch>reduce|conv3x3|increase|shortcut|proj)"
    r"\.(?P<kind>conv|bn)"
    r"|aspp\.(?:stages\.)?c(?P<aspp>\d+))"
    r"\.(?P<param>weight|bias|running_mean|running_var|num_batches_tracked)$"
)


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key


def state_dict_to_caffe_net(state_dict, source: str = "<state_dict>") -> CaffeNet:
    """Translates a port state dict (``{key: array}``) into Caffe-named layers.

    Args:
        state_dict: mapping of parameter names to arrays (numpy or anything ``np.asarray`` takes).
        source: name for error messages.

    Returns:
        A :class:`CaffeNet` with Convolution and BatchNorm/Scale layers (no hyper-parameters).

    Raises:
        ValueError: keys that are not the port's DeepLab v2 ResNet keys.
    """
    from deeplab_tf.models.specs import RESNET_DEPTHS, block_names

    parsed, unknown = [], []
    blocks: dict = {}
    for key, value in state_dict.items():
        m = _KEY.match(_strip(key))
        if not m:
            unknown.append(key)
            continue
        parsed.append((m, np.asarray(value)))
        if m.group("stage"):
            s = int(m.group("stage"))
            blocks[s] = max(blocks.get(s, 0), int(m.group("block")))
    if unknown:
        shown = ", ".join(unknown[:8]) + (" ..." if len(unknown) > 8 else "")
        raise ValueError(
            f"{source}: keys that are not the PyTorch port's DeepLab v2 ResNet keys: {shown}"
        )
    if not parsed:
        raise ValueError(f"{source}: the state dict is empty.")
    counts = tuple(blocks.get(s, 0) for s in (2, 3, 4, 5))
    depth = {blocks: d for d, blocks in RESNET_DEPTHS.items()}.get(counts)
    if depth is None:
        raise ValueError(f"{source}: blocks per stage {counts} are not ResNet-50/101/152.")
    tags = {s: block_names(depth, s, counts[s - 2]) for s in (2, 3, 4, 5)}

    layers: dict = {}
    order: list = []

    def get(name, type_):
        if name not in layers:
            layers[name] = CaffeLayer(
                name, type_, [name], [name], [None] * (3 if type_ == "BatchNorm" else 2)
            )
            order.append(name)
        return layers[name]

    for m, value in parsed:
        param = m.group("param")
        if param == "num_batches_tracked":
            continue
        if m.group("aspp") is not None:
            conv = get(f"fc1_voc12_c{m.group('aspp')}", "Convolution")
            conv.blobs[0 if param == "weight" else 1] = value
            continue
        if m.group("stem"):
            conv_name, bn_name, kind = "conv1", "bn_conv1", m.group("stem")
        else:
            tag = tags[int(m.group("stage"))][int(m.group("block")) - 1]
            branch = _BRANCH[m.group("branch")]
            conv_name, bn_name, kind = (
                f"res{tag}_branch{branch}",
                f"bn{tag}_branch{branch}",
                m.group("kind"),
            )
        if kind == "conv":
            get(conv_name, "Convolution").blobs[0] = value
        else:
            bn = get(bn_name, "BatchNorm")
            scale = get("scale" + bn_name[2:], "Scale")
            if param == "running_mean":
                bn.blobs[0] = value
            elif param == "running_var":
                bn.blobs[1] = value
            elif param == "weight":
                scale.blobs[0] = value
            else:
                scale.blobs[1] = value
    out = []
    for name in order:
        layer = layers[name]
        if layer.type == "BatchNorm":
            layer.blobs[2] = np.ones((1,), np.float32)
        layer.blobs = [np.asarray(b, np.float32) for b in layer.blobs if b is not None]
        out.append(layer)
    return CaffeNet(name=source, layers=out, encoding="pytorch", source=source)


def load_torch_state_dict(model, path, include_classifier: bool = True):
    """Loads the PyTorch port's ``.pth`` into a DeepLab v2 ResNet Keras model, without torch.

    The file is read by :func:`deeplab_tf.weights.read_pth` (a restricted unpickler: only
    tensor-rebuild functions and storage types; a pickle naming any other global is refused
    unread) and goes through the same checked mapping as a caffemodel.

    Args:
        model: a ``DeepLabV2(backbone="resnet101", head="aspp_l", ...)`` model.
        path: the ``.pth`` file (a state dict, or a checkpoint with a ``state_dict`` key).
        include_classifier: also load ``aspp.c{i}``.

    Returns:
        The :class:`ConversionReport`.

    Raises:
        UnsafePickleError: the pickle names a global other than the allowed ones.
        ValueError: a truncated or corrupt file, or keys that are not the port's.
        ConversionError: the file does not fit the model.
    """
    from deeplab_tf.convert.caffe_to_keras import assign_plan, map_caffe_to_keras
    from deeplab_tf.weights.pth import read_pth

    arrays = read_pth(path)
    net = state_dict_to_caffe_net(arrays, source=str(path))
    plan, report = map_caffe_to_keras(net, model, include_classifier)
    report.num_tensors = assign_plan(model, plan)
    return report
