"""A PyTorch DeepLab v2 ResNet (ASPP) with the same Caffe semantics as ``deeplab_tf``.

Used by the benchmarks as the reference implementation timed in the same run. It follows the
authors' release, as the Keras model does (docs/architecture.md): conv1 7x7/2 pad 3, pool1 max 3x3/2
pad 1 in ceil mode, bottlenecks with the stride on the first 1x1 (``branch2a``) and on the
projection, res4/res5 dilated by 2/4 (output stride 8), frozen BatchNorm (eps 1e-5), and an ASPP
head of one 3x3 conv per rate whose outputs are summed. Preprocessing (RGB 0..255 -> BGR minus
the Caffe mean) is inside the module, so both frameworks take the same images.

Modules carry the Caffe names (``res4b22_branch2b``, ``bn4b22_branch2b``, ``fc1_voc12_c0``...),
so :func:`load_keras_weights` copies a ``deeplab_tf`` model's weights by name.

Needs ``torch`` (``pip install torch``); the benchmarks skip the comparison without it.
"""

from __future__ import annotations

import math

try:
    import torch
    from torch import nn
    from torch.nn import functional as F
except ImportError as err:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "The PyTorch reference needs torch: pip install torch "
        "(https://pytorch.org/get-started/locally/, the CPU wheel is enough)"
    ) from err

from benchmarks._common import keras_arrays, read_npz, save_npz  # noqa: F401

CAFFE_BGR_MEAN = (104.008, 116.669, 122.675)
RESNET_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
RESNET_STAGES = ((2, 64, 1, 1), (3, 128, 2, 1), (4, 256, 1, 2), (5, 512, 1, 4))
ASPP_RATES = {"aspp_l": (6, 12, 18, 24), "aspp_s": (2, 4, 8, 12), "largefov": (12,)}


def block_names(depth: int, stage: int, blocks: int) -> list[str]:
    """Caffe block suffixes (``4a, 4b1 .. 4b22``; letters everywhere for ResNet-50)."""
    if depth == 50 or blocks == 3:
        return [f"{stage}{chr(ord('a') + i)}" for i in range(blocks)]
    return [f"{stage}a"] + [f"{stage}b{i}" for i in range(1, blocks)]


class Bottleneck(nn.Module):
    """Caffe bottleneck ``res{tag}``: 1x1 (stride) -> 3x3 (dilation) -> 1x1 x4, + shortcut."""

    def __init__(self, in_ch: int, width: int, stride: int, dilation: int, project: bool):
        super().__init__()
        out = 4 * width
        self.branch1 = nn.Conv2d(in_ch, out, 1, stride, bias=False) if project else None
        self.bn1 = nn.BatchNorm2d(out, eps=1e-5) if project else None
        self.branch2a = nn.Conv2d(in_ch, width, 1, stride, bias=False)
        self.bn2a = nn.BatchNorm2d(width, eps=1e-5)
        self.branch2b = nn.Conv2d(
            width, width, 3, 1, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2b = nn.BatchNorm2d(width, eps=1e-5)
        self.branch2c = nn.Conv2d(width, out, 1, bias=False)
        self.bn2c = nn.BatchNorm2d(out, eps=1e-5)

    def forward(self, x):
        shortcut = self.bn1(self.branch1(x)) if self.branch1 is not None else x
        y = F.relu(self.bn2a(self.branch2a(x)))
        y = F.relu(self.bn2b(self.branch2b(y)))
        y = self.bn2c(self.branch2c(y))
        return F.relu(shortcut + y)

    def caffe_modules(self, tag: str) -> dict:
        named = {
            f"res{tag}_branch2a": self.branch2a,
            f"bn{tag}_branch2a": self.bn2a,
            f"res{tag}_branch2b": self.branch2b,
            f"bn{tag}_branch2b": self.bn2b,
            f"res{tag}_branch2c": self.branch2c,
            f"bn{tag}_branch2c": self.bn2c,
        }
        if self.branch1 is not None:
            named[f"res{tag}_branch1"] = self.branch1
            named[f"bn{tag}_branch1"] = self.bn1
        return named


class DeepLabV2ResNet(nn.Module):
    """DeepLab v2 ResNet-50/101/152 with an ASPP head, returning stride-8 logits (NCHW).

    Args:
        depth: 50, 101 or 152.
        num_classes: classes C.
        rates: ASPP rates (ASPP-L: 6, 12, 18, 24).

    Input: ``(N, 3, H, W)`` float RGB 0..255 (or ``(N, H, W, 3)`` with ``nhwc_input=True`` in
    :meth:`forward`). Output: ``(N, C, H', W')`` with Caffe rounding (513 -> 65, 321 -> 41).
    """

    def __init__(self, depth: int = 101, num_classes: int = 21, rates=(6, 12, 18, 24)):
        super().__init__()
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"depth must be one of {sorted(RESNET_DEPTHS)}. Received: {depth!r}")
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 64, 7, 2, padding=3, bias=False)
        self.bn_conv1 = nn.BatchNorm2d(64, eps=1e-5)
        self.pool1 = nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)
        blocks, self.tags = [], []
        in_ch = 64
        for (stage, width, stride, dilation), n in zip(RESNET_STAGES, RESNET_DEPTHS[depth]):
            for i, tag in enumerate(block_names(depth, stage, n)):
                blocks.append(Bottleneck(in_ch, width, stride if i == 0 else 1, dilation, i == 0))
                self.tags.append(tag)
                in_ch = 4 * width
        self.blocks = nn.ModuleList(blocks)
        self.aspp = nn.ModuleList(
            nn.Conv2d(in_ch, num_classes, 3, padding=r, dilation=r, bias=True) for r in rates
        )
        for conv in self.aspp:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        mean = torch.tensor(CAFFE_BGR_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)

    def forward(self, images):
        x = images.flip(1) - self.mean  # RGB -> BGR, minus the Caffe mean
        x = self.pool1(F.relu(self.bn_conv1(self.conv1(x))))
        for block in self.blocks:
            x = block(x)
        out = self.aspp[0](x)
        for conv in self.aspp[1:]:
            out = out + conv(x)
        return out

    def caffe_modules(self) -> dict:
        """``{caffe layer name: module}`` for every conv and BatchNorm."""
        named = {"conv1": self.conv1, "bn_conv1": self.bn_conv1}
        for tag, block in zip(self.tags, self.blocks):
            named.update(block.caffe_modules(tag))
        for i, conv in enumerate(self.aspp):
            named[f"fc1_voc12_c{i}"] = conv
        return named

    def freeze_batchnorm(self):
        """Caffe's ``use_global_stats`` with lr_mult 0: BN in eval mode, no BN gradients."""
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
                for p in m.parameters():
                    p.requires_grad_(False)
        return self


def load_arrays(torch_model: DeepLabV2ResNet, arrays: dict) -> int:
    """Copies Keras-layout weights ``{caffe name: [arrays]}`` into ``torch_model``.

    Conv kernels go ``(kh, kw, in, out) -> (out, in, kh, kw)``; BatchNorm gamma, beta, moving
    mean and variance map to weight, bias, running_mean and running_var.

    Returns:
        The number of layers copied (every conv and BN of the torch model).

    Raises:
        ValueError: when a layer is missing or a shape differs.
    """
    count = 0
    with torch.no_grad():
        for name, module in torch_model.caffe_modules().items():
            if name not in arrays:
                raise ValueError(f"No weights for layer {name!r}. Received: {len(arrays)} layers")
            weights = arrays[name]
            if isinstance(module, nn.Conv2d):
                tensors = [torch.from_numpy(weights[0].transpose(3, 2, 0, 1).copy())]
                targets = [module.weight]
                if module.bias is not None:
                    tensors.append(torch.from_numpy(weights[1].copy()))
                    targets.append(module.bias)
            else:
                tensors = [torch.from_numpy(w.copy()) for w in weights]
                targets = [module.weight, module.bias, module.running_mean, module.running_var]
            if len(tensors) != len(targets):
                raise ValueError(
                    f"Layer {name!r} needs {len(targets)} arrays. Received: {len(tensors)}"
                )
            for t, target in zip(tensors, targets):
                if tuple(t.shape) != tuple(target.shape):
                    raise ValueError(
                        f"Shape mismatch for {name}: torch {tuple(target.shape)}, "
                        f"Keras {tuple(t.shape)}."
                    )
                target.copy_(t)
            count += 1
    return count


def load_keras_weights(torch_model: DeepLabV2ResNet, keras_model) -> int:
    """Copies a ``deeplab_tf`` ResNet DeepLab model's weights into ``torch_model`` by Caffe name.

    Returns:
        The number of layers copied.
    """
    return load_arrays(torch_model, keras_arrays(keras_model, torch_model.caffe_modules()))


def shrink_labels(labels, size):
    """Corner-aligned nearest resampling of ``(N, H, W)`` labels to the logits' ``size``."""
    h, w = size
    big_h, big_w = labels.shape[-2:]
    iy = torch.round(torch.arange(h, dtype=torch.float64) * (big_h - 1) / max(h - 1, 1)).long()
    ix = torch.round(torch.arange(w, dtype=torch.float64) * (big_w - 1) / max(w - 1, 1)).long()
    return labels[:, iy][:, :, ix]


def deeplab_loss(logits, labels, ignore_label: int = 255):
    """Softmax cross-entropy over valid pixels with labels shrunk to the logit size."""
    small = shrink_labels(labels, logits.shape[-2:])
    return F.cross_entropy(logits.float(), small.long(), ignore_index=ignore_label)


def msc_outputs(model, images, scales=(1.0, 0.75, 0.5)):
    """Multi-scale training outputs: each scale's logits and their max fusion (at 1x size)."""
    outs = []
    h, w = images.shape[-2:]
    for s in scales:
        if s == 1.0:
            x = images
        else:
            x = F.interpolate(
                images, size=(int(math.floor(h * s)), int(math.floor(w * s))),
                mode="bilinear", align_corners=True,
            )  # fmt: skip
        outs.append(model(x))
    fused = outs[0]
    for o in outs[1:]:
        up = F.interpolate(o, size=fused.shape[-2:], mode="bilinear", align_corners=True)
        fused = torch.maximum(fused, up)
    return [fused] + outs


def sgd(model, lr: float = 2.5e-4, momentum: float = 0.9, weight_decay: float = 5e-4):
    """The DeepLab solver in PyTorch: SGD with momentum, L2 5e-4, 10x lr on the classifier."""
    head = [p for n, p in model.named_parameters() if n.startswith("aspp") and p.requires_grad]
    ids = {id(p) for p in head}
    body = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    return torch.optim.SGD(
        [{"params": body, "lr": lr}, {"params": head, "lr": 10 * lr}],
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
    )


def train_step(model, optimizer, micro_batches, msc: bool = False, autocast=None, scaler=None):
    """One optimizer update accumulated over ``micro_batches`` (a list of (images, labels)).

    ``autocast``: ``torch.bfloat16`` / ``torch.float16`` runs the forward pass under
    ``torch.autocast("cpu", dtype=...)`` (PyTorch's mixed precision; the loss is computed in
    float32 from float32-cast logits); ``scaler``: a ``torch.amp.GradScaler`` for float16.
    """
    import contextlib

    import torch

    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for images, labels in micro_batches:
        scope = (
            torch.autocast("cpu", dtype=autocast) if autocast is not None
            else contextlib.nullcontext()
        )  # fmt: skip
        with scope:
            outputs = msc_outputs(model, images) if msc else [model(images)]
        loss = sum(deeplab_loss(o.float(), labels) for o in outputs)
        loss = loss / len(micro_batches)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        total += float(loss.detach())
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return total
