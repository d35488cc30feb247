"""The paper's training recipes as ``model.compile`` arguments (paper Sec. 4.1, Tables 2 and 4).

Example:
    >>> import deeplab_tf
    >>> model = deeplab_tf.DeepLabV2(backbone="resnet101", head="aspp_l", num_classes=21)
    >>> model.compile(**deeplab_tf.recipes.paper("resnet101", steps=20000))
"""

from __future__ import annotations

import keras

from deeplab_tf.models.deeplab import deeplab_config, find_deeplab
from deeplab_tf.models.registry import get_model_config, list_models
from deeplab_tf.training.losses import DeepLabLoss
from deeplab_tf.training.metrics import MeanIoU
from deeplab_tf.training.optimizer import CaffeSGD, PolyDecay

#: Short names accepted by :func:`paper` for the paper's main model of each backbone.
ALIASES = {
    "vgg16": "deeplabv2_vgg16_largefov",
    "resnet50": "deeplabv2_resnet50_aspp_l",
    "resnet101": "deeplabv2_resnet101_aspp_l",
    "resnet152": "deeplabv2_resnet152_aspp_l",
    "mobilenetv2": "deeplabv2_mobilenetv2_aspp_l",
}


def resolve_model_name(name: str) -> str:
    """Registry name for ``name``: a registered name, ``"resnet101"``, or ``"vgg16_aspp_s"``."""
    if not isinstance(name, str):
        raise ValueError(f"Expected a model or backbone name. Received: {name!r}")
    if name in list_models():
        return name
    if name in ALIASES:
        return ALIASES[name]
    if f"deeplabv2_{name}" in list_models():
        return f"deeplabv2_{name}"
    raise ValueError(
        f"Unknown model or backbone {name!r}. Known: {', '.join(sorted(ALIASES))} or "
        f"{', '.join(list_models())}"
    )


def get_recipe(backbone_or_model_name: str) -> dict:
    """The registry's recipe dict for a model or backbone name."""
    return get_model_config(resolve_model_name(backbone_or_model_name))["recipe"]


def paper(
    backbone_or_model_name="resnet101",
    steps: int | None = None,
    num_classes: int | None = None,
    accumulation_steps: int | None = None,
    base_lr: float | None = None,
    label_mode: str = "nearest",
    ignore_label: int | None = None,
) -> dict:
    """``compile`` keyword arguments reproducing the authors' solver for a model.

    Optimizer: :class:`CaffeSGD` (momentum 0.9, L2 5e-4 in the gradient, lr multipliers
    1/2/10/20) on the poly schedule ``base_lr * (1 - step/steps)^0.9``; loss:
    :class:`DeepLabLoss` (softmax cross-entropy over valid pixels, label shrunk to the logits);
    metric: :class:`MeanIoU` (``mean_iou`` in the progress bar).

    Multi-scale training (the ResNet recipe's ``msc``) is a model change, not a compile
    argument: wrap the model in :class:`~deeplab_tf.training.msc.MultiScaleTraining`.

    Args:
        backbone_or_model_name: ``"resnet101"``, ``"vgg16"``, a registry name, or a DeepLab
            model (a :class:`~deeplab_tf.DeepLabV2` or a multi-scale wrapper of one: its
            config gives the recipe and the classes; its name is not
            read).
        steps: number of optimizer updates (Caffe ``max_iter``); the recipe's 20,000 by default.
        num_classes: classes for the metric; 21 by default, or the model's output channels.
        accumulation_steps: micro-batches per update (``2`` for the PyTorch port's 5 x 2).
        base_lr: overrides the recipe's base learning rate.
        label_mode: see :class:`DeepLabLoss`.
        ignore_label: overrides the recipe's ignore label (255).

    Returns:
        ``{"optimizer", "loss", "metrics"}``.
    """
    stride = 8
    if isinstance(backbone_or_model_name, keras.Model):
        # The model's own description (backbone, head, classes, stride), never its name.
        net = find_deeplab(backbone_or_model_name)
        if net is None:
            deeplab_config(backbone_or_model_name)  # raises, with the migration hint
        if num_classes is None:
            num_classes = net.num_classes
        stride = net.output_stride
        registered = f"deeplabv2_{net.backbone}_{net.head}"
        backbone_or_model_name = registered if registered in list_models() else net.backbone
    recipe = get_recipe(backbone_or_model_name)
    steps = recipe["steps"] if steps is None else steps
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int. Received: steps={steps!r}")
    if accumulation_steps is not None and (
        not isinstance(accumulation_steps, int) or accumulation_steps < 1
    ):
        raise ValueError(
            f"accumulation_steps must be a positive int. Received: {accumulation_steps!r}"
        )
    num_classes = 21 if num_classes is None else num_classes
    ignore = recipe.get("ignore_label", 255) if ignore_label is None else ignore_label
    schedule = PolyDecay(recipe["base_lr"] if base_lr is None else base_lr, steps, recipe["power"])
    optimizer = CaffeSGD(
        schedule,
        momentum=recipe["momentum"],
        weight_decay=recipe["weight_decay"],
        lr_mult=recipe["lr_mult"],
        gradient_accumulation_steps=accumulation_steps
        if accumulation_steps and accumulation_steps > 1
        else None,
    )
    return {
        "optimizer": optimizer,
        "loss": DeepLabLoss(ignore_label=ignore, label_mode=label_mode, stride=stride),
        "metrics": [MeanIoU(num_classes, ignore_label=ignore)],
    }
