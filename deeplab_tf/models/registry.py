"""Registry of the paper's named DeepLab v2 variants, kept as data (timm / keras-hub style).

Each entry carries its builder arguments, its preprocessing, the paper's dense-CRF parameters,
its training recipe (the authors' solvers, docs/architecture.md#training-recipe) and the numbers
the paper reports, so that training, inference and export can all start from a name.

Example:
    >>> import deeplab_tf
    >>> deeplab_tf.list_models()[:2]
    ['deeplabv2_mobilenetv2_aspp_l', 'deeplabv2_resnet101_aspp_l']
    >>> model = deeplab_tf.create_model("deeplabv2_vgg16_largefov", num_classes=21)
"""

from __future__ import annotations

import copy

from deeplab_tf.layers import CAFFE_BGR_MEAN

#: Dense-CRF settings and where they come from (docs/architecture.md#crf-parameters).
CRF_RESNET = {
    "iterations": 10, "bi_w": 4.0, "bi_xy_std": 67.0, "bi_rgb_std": 3.0, "pos_w": 3.0,
    "pos_xy_std": 1.0, "source": "PyTorch port's VOC config",
}  # fmt: skip
CRF_VGG = {
    "iterations": 10, "bi_w": 4.0, "bi_xy_std": 49.0, "bi_rgb_std": 5.0, "pos_w": 3.0,
    "pos_xy_std": 3.0, "source": "the release's run_densecrf.sh",
}  # fmt: skip

CAFFE_PREPROCESSING = {"input": "RGB 0..255", "mode": "caffe", "bgr_mean": list(CAFFE_BGR_MEAN)}
TF_PREPROCESSING = {"input": "RGB 0..255", "mode": "tf", "scale": "x / 127.5 - 1"}

_COMMON_RECIPE = {
    "policy": "poly",
    "power": 0.9,
    "steps": 20000,
    "batch_size": 10,
    "crop_size": 321,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "lr_mult": {"weights": 1, "biases": 2, "classifier_weights": 10, "classifier_biases": 20},
    "scales": [0.5, 0.75, 1.0, 1.25, 1.5],
    "ignore_label": 255,
}
RECIPE_VGG = {**_COMMON_RECIPE, "base_lr": 1e-3, "msc": False}
RECIPE_RESNET = {**_COMMON_RECIPE, "base_lr": 2.5e-4, "msc": True, "msc_scales": [1.0, 0.75, 0.5]}

_MODELS = {
    "deeplabv2_vgg16_largefov": {
        "backbone": "vgg16", "head": "largefov",
        "description": "VGG-16 DeepLab-LargeFOV (fc6 3x3 rate 12, 1024 channels)",
        "params_voc": 20_505_429, "crf": CRF_VGG, "recipe": RECIPE_VGG,
        "preprocessing": CAFFE_PREPROCESSING,
        "paper_voc12_val_miou": {"no_crf": 65.76, "crf": 69.84},
    },
    "deeplabv2_vgg16_aspp_s": {
        "backbone": "vgg16", "head": "aspp_s",
        "description": "VGG-16 DeepLab-ASPP-S (rates 2, 4, 8, 12)",
        "params_voc": 37_877_652, "crf": CRF_VGG, "recipe": RECIPE_VGG,
        "preprocessing": CAFFE_PREPROCESSING,
        "paper_voc12_val_miou": {"no_crf": 66.98, "crf": 69.73},
    },
    "deeplabv2_vgg16_aspp_l": {
        "backbone": "vgg16", "head": "aspp_l",
        "description": "VGG-16 DeepLab-ASPP-L (rates 6, 12, 18, 24)",
        "params_voc": 37_877_652, "crf": CRF_VGG, "recipe": RECIPE_VGG,
        "preprocessing": CAFFE_PREPROCESSING,
        "paper_voc12_val_miou": {"no_crf": 68.96, "crf": 71.57},
    },
    "deeplabv2_resnet101_aspp_l": {
        "backbone": "resnet101", "head": "aspp_l",
        "description": "ResNet-101 DeepLab-ASPP-L, the paper's main model (MSC, COCO init)",
        "params_voc": 44_048_532, "crf": CRF_RESNET, "recipe": RECIPE_RESNET,
        "preprocessing": CAFFE_PREPROCESSING,
        "paper_voc12_val_miou": {"no_crf": 76.35, "crf": 77.69},
    },
    "deeplabv2_resnet50_aspp_l": {
        "backbone": "resnet50", "head": "aspp_l",
        "description": "ResNet-50 DeepLab-ASPP-L (same rule as ResNet-101, [3, 4, 6, 3] blocks)",
        "params_voc": None, "crf": CRF_RESNET, "recipe": RECIPE_RESNET,
        "preprocessing": CAFFE_PREPROCESSING, "paper_voc12_val_miou": None,
    },
    "deeplabv2_resnet152_aspp_l": {
        "backbone": "resnet152", "head": "aspp_l",
        "description": "ResNet-152 DeepLab-ASPP-L ([3, 8, 36, 3] blocks)",
        "params_voc": None, "crf": CRF_RESNET, "recipe": RECIPE_RESNET,
        "preprocessing": CAFFE_PREPROCESSING, "paper_voc12_val_miou": None,
    },
    "deeplabv2_mobilenetv2_aspp_l": {
        "backbone": "mobilenetv2", "head": "aspp_l",
        "description": "Beyond the paper: MobileNetV2 dilated to output stride 8, ASPP-L head",
        "params_voc": None, "crf": CRF_RESNET,
        "recipe": {**RECIPE_RESNET, "base_lr": 1e-3, "msc": False},
        "preprocessing": TF_PREPROCESSING, "paper_voc12_val_miou": None,
    },
}  # fmt: skip

_BUILD_KEYS = ("backbone", "head")


def list_models() -> list[str]:
    """Names of the registered variants, sorted."""
    return sorted(_MODELS)


def get_model_config(name: str) -> dict:
    """A copy of a variant's entry (builder arguments, preprocessing, CRF, recipe, paper numbers).

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name not in _MODELS:
        raise ValueError(f"Unknown model {name!r}. Known models: {', '.join(list_models())}")
    return copy.deepcopy(_MODELS[name])


def create_model(name: str, **kwargs):
    """Builds a registered variant; keyword arguments go to :func:`DeepLabV2` and win.

    Example:
        >>> model = create_model("deeplabv2_resnet101_aspp_l", num_classes=21, weights=None)
    """
    from deeplab_tf.models.deeplab import DeepLabV2

    cfg = get_model_config(name)
    args = {k: cfg[k] for k in _BUILD_KEYS}
    args["preprocessing"] = cfg["preprocessing"]["mode"]  # the entry's, carried in the config
    args["name"] = name
    args.update(kwargs)
    return DeepLabV2(**args)
