"""Pretrained weights as data: the authors' Caffe release and the PyTorch port's checkpoints.

Each preset names the architecture it fits (a model-registry entry and a class count), where its
source file comes from, what it was trained on, and the mIoU its publisher reports. Nothing
here downloads: :mod:`deeplab_tf.weights.cache` fetches, verifies, converts and caches a
preset's file the first time it is asked for.

Sources (the reported numbers were not re-measured by this project: no dataset is on its build
machines):

* The authors' ResNet-101 archive (``prototxt_and_model.zip``, deeplab-public-ver2) holds
  ``init.caffemodel`` (ImageNet, then MS-COCO: the initialisation for VOC training),
  ``train_iter_20000.caffemodel`` (VOC 2012 train_aug, MSC training) and
  ``train2_iter_20000.caffemodel`` (the same, fine-tuned on VOC 2012 trainval: it has seen the
  val images). Paper, Table 4 and section 4.1.
* The PyTorch port (kazuto1011/deeplab-pytorch, GitHub release v1.0) publishes checkpoints it
  trained itself with the paper's recipe, on VOC 2012 train_aug, COCO-Stuff 10k and COCO-Stuff
  164k; the mIoU figures are its README's.
* The VGG-16 releases have no download address recorded here: those presets say how to obtain
  the file and convert a local copy (``weights="/path/to/train_iter_20000.caffemodel"``), or
  find it in a mirror folder under the name in ``source.file``
  (``vgg16_largefov_train_iter_20000.caffemodel``, ``vgg16_aspp_l_train_iter_20000.caffemodel``:
  both releases name their file ``train_iter_20000.caffemodel``).

Example:
    >>> from deeplab_tf.weights.presets import list_presets
    >>> [p["name"] for p in list_presets()][:2]
    ['deeplabv2_resnet101_coco_init', 'deeplabv2_resnet101_cocostuff10k']
"""

from __future__ import annotations

import copy

#: The authors' ResNet-101 archive (about 1 GB; no SHA-256 is published for it).
AUTHORS_RESNET101_ZIP = (
    "http://liangchiehchen.com/projects/released/deeplab_aspp_resnet101/prototxt_and_model.zip"
)
#: Where the PyTorch port's v1.0 release assets live.
PORT_RELEASE = "https://github.com/kazuto1011/deeplab-pytorch/releases/download/v1.0/"
PORT_README = "kazuto1011/deeplab-pytorch README, 'Performance' (no CRF / CRF)"
AUTHORS_PAGE = "http://liangchiehchen.com/projects/DeepLab_Models.html"

_RESNET101 = {"model": "deeplabv2_resnet101_aspp_l", "backbone": "resnet101", "head": "aspp_l"}


def _port(file: str, **fields) -> dict:
    """A preset of one of the PyTorch port's release checkpoints (ResNet-101 ASPP-L)."""
    return {
        **_RESNET101, "classifier": True, "size_mb": 170, "warning": None,
        "publisher": "PyTorch port (kazuto1011/deeplab-pytorch v1.0)",
        "source": {"kind": "pth", "url": PORT_RELEASE + file, "member": None, "file": file,
                   "sha256": None},
        **fields,
    }  # fmt: skip


# A preset:
#   name            the preset's name (``create_model(..., weights=NAME)`` or its ``tag``)
#   tag             short name for ``weights=`` on a model of this architecture
#   architecture    the registry entry, backbone and head it fits
#   num_classes     classes of its classifier (None: backbone only; any class count)
#   classes         label set of ``deeplab_tf.data.palettes.label_set`` (names and palette)
#   source          kind ("caffemodel" or "pth"), url (None: no known address), archive
#                   member (for a zip), file (the name a mirror or a local folder holds),
#                   sha256 (None: recorded on the first download, then enforced)
#   classifier      whether the classifier is loaded (False: the model keeps its own init)
#   training_data, reported_miou (split, inference, no_crf, crf, source), size_mb, warning
_PRESETS = {
    "deeplabv2_resnet101_coco_init": {
        "tag": "coco_init", **_RESNET101, "num_classes": None, "classes": None,
        "source": {
            "kind": "caffemodel", "url": AUTHORS_RESNET101_ZIP, "member": "init.caffemodel",
            "file": "prototxt_and_model.zip", "sha256": None,
        },
        "classifier": False,
        "training_data": "ImageNet, then MS-COCO (the authors' initialisation for VOC training; "
        "the backbone only, the classifier keeps the model's own initialisation)",
        "reported_miou": None, "size_mb": 1000, "publisher": "authors (deeplab-public-ver2)",
        "warning": None,
    },
    "deeplabv2_resnet101_voc12": {
        "tag": "voc12", **_RESNET101, "num_classes": 21, "classes": "voc",
        "source": {
            "kind": "caffemodel", "url": AUTHORS_RESNET101_ZIP,
            "member": "train_iter_20000.caffemodel", "file": "prototxt_and_model.zip",
            "sha256": None,
        },
        "classifier": True,
        "training_data": "PASCAL VOC 2012 train_aug (10,582 images), COCO init, MSC training",
        "reported_miou": {
            "split": "VOC 2012 val", "inference": "MSC (1, 0.75, 0.5), max fusion",
            "no_crf": 76.35, "crf": 77.69, "source": "paper, Table 4 / the authors' release",
        },
        "size_mb": 1000, "publisher": "authors (deeplab-public-ver2)", "warning": None,
    },
    "deeplabv2_resnet101_voc12_trainval": {
        "tag": "voc12_trainval", **_RESNET101, "num_classes": 21, "classes": "voc",
        "source": {
            "kind": "caffemodel", "url": AUTHORS_RESNET101_ZIP,
            "member": "train2_iter_20000.caffemodel", "file": "prototxt_and_model.zip",
            "sha256": None,
        },
        "classifier": True,
        "training_data": "deeplabv2_resnet101_voc12 fine-tuned on VOC 2012 trainval",
        "reported_miou": {
            "split": "VOC 2012 test", "inference": "MSC, COCO, CRF", "no_crf": None,
            "crf": 79.7, "source": "paper headline (test server)",
        },
        "size_mb": 1000, "publisher": "authors (deeplab-public-ver2)",
        "warning": "trained on VOC 2012 trainval: it has seen the val images, so val numbers "
        "from it are inflated. Evaluate on val with deeplabv2_resnet101_voc12 instead.",
    },
    "deeplabv2_resnet101_vocaug_pytorch": _port(
        "deeplabv2_resnet101_msc-vocaug-20000.pth", tag="vocaug_pytorch", num_classes=21,
        classes="voc",
        training_data="PASCAL VOC 2012 train_aug, COCO init, MSC training (trained by the "
        "PyTorch port)",
        reported_miou={
            "split": "VOC 2012 val", "inference": "the port's test protocol", "no_crf": 76.65,
            "crf": 77.93, "source": PORT_README,
        },
    ),
    "deeplabv2_resnet101_cocostuff10k": _port(
        "deeplabv2_resnet101_msc-cocostuff10k-20000.pth", tag="cocostuff10k", num_classes=182,
        classes="cocostuff",
        training_data="COCO-Stuff 10k train (9k images, pre-warped to 513x513), COCO init",
        reported_miou={
            "split": "COCO-Stuff 10k test", "inference": "the port's test protocol",
            "no_crf": 34.8, "crf": 35.6, "source": PORT_README,
        },
    ),
    "deeplabv2_resnet101_cocostuff164k": _port(
        "deeplabv2_resnet101_msc-cocostuff164k-100000.pth", tag="cocostuff164k",
        num_classes=182, classes="cocostuff",
        training_data="COCO-Stuff 164k train2017 (118k images), COCO init, 100k iterations",
        reported_miou={
            "split": "COCO-Stuff 164k val2017", "inference": "the port's test protocol",
            "no_crf": 39.1, "crf": 39.7, "source": PORT_README,
        },
    ),
    "deeplabv2_vgg16_largefov_voc12": {
        "tag": "voc12", "model": "deeplabv2_vgg16_largefov", "backbone": "vgg16",
        "head": "largefov", "num_classes": 21, "classes": "voc",
        "source": {
            "kind": "caffemodel", "url": None, "member": None,
            "file": "vgg16_largefov_train_iter_20000.caffemodel", "sha256": None,
        },
        "classifier": True,
        "training_data": "PASCAL VOC 2012 train_aug, ImageNet init",
        "reported_miou": {
            "split": "VOC 2012 val", "inference": "single scale", "no_crf": 65.76,
            "crf": 69.84, "source": "paper, Table 3",
        },
        "size_mb": 80, "publisher": "authors (deeplab-public-ver2)", "warning": None,
    },
    "deeplabv2_vgg16_aspp_l_voc12": {
        "tag": "voc12", "model": "deeplabv2_vgg16_aspp_l", "backbone": "vgg16",
        "head": "aspp_l", "num_classes": 21, "classes": "voc",
        "source": {
            "kind": "caffemodel", "url": None, "member": None,
            "file": "vgg16_aspp_l_train_iter_20000.caffemodel", "sha256": None,
        },
        "classifier": True,
        "training_data": "PASCAL VOC 2012 train_aug, ImageNet init",
        "reported_miou": {
            "split": "VOC 2012 val", "inference": "single scale", "no_crf": 68.96,
            "crf": 71.57, "source": "paper, Table 3",
        },
        "size_mb": 80, "publisher": "authors (deeplab-public-ver2)", "warning": None,
    },
}  # fmt: skip


def list_presets() -> list[dict]:
    """Every preset, sorted by name: name, tag, model, backbone, head, num_classes, classes,
    source, training_data, reported_miou, size_mb, publisher, warning (copies)."""
    return [{"name": name, **copy.deepcopy(_PRESETS[name])} for name in sorted(_PRESETS)]


def preset_names() -> list[str]:
    """The preset names, sorted."""
    return sorted(_PRESETS)


def get_preset(name: str) -> dict:
    """A copy of one preset.

    Raises:
        ValueError: an unknown name, listing the known ones.
    """
    if name not in _PRESETS:
        raise ValueError(
            f"Unknown weights preset {name!r}. Known presets: {', '.join(preset_names())} "
            "(`deeplab-tf weights list` describes them)."
        )
    return {"name": name, **copy.deepcopy(_PRESETS[name])}


def is_preset(name) -> bool:
    """Whether ``name`` is a preset name or the tag of one (``"voc12"``)."""
    return isinstance(name, str) and (name in _PRESETS or any(
        p["tag"] == name for p in _PRESETS.values()
    ))  # fmt: skip


def resolve_preset(weights: str, backbone: str, head: str) -> dict:
    """The preset that ``weights=`` names for a model of ``backbone`` and ``head``.

    ``weights`` is a preset name (which must fit the architecture) or a tag such as
    ``"voc12"``, looked up among the presets of that architecture.

    Raises:
        ValueError: no preset of that name or tag fits; the message lists the ones that do.
    """
    fits = [
        n for n, p in sorted(_PRESETS.items()) if p["backbone"] == backbone and p["head"] == head
    ]
    if weights in _PRESETS:
        preset = get_preset(weights)
        if preset["name"] not in fits:
            raise ValueError(
                f"Weights preset {weights!r} is for a {preset['backbone']} {preset['head']} "
                f"model; this model is {backbone} {head}. Presets for it: "
                f"{', '.join(fits) or 'none'}. Received: weights={weights!r}"
            )
        return preset
    for name in fits:
        if _PRESETS[name]["tag"] == weights:
            return get_preset(name)
    tags = [f"{_PRESETS[n]['tag']!r} ({n})" for n in fits]
    raise ValueError(
        f"No weights preset {weights!r} for a {backbone} {head} model. "
        f"Available: {', '.join(tags) or 'none'}; also None, 'imagenet' or a weights file. "
        f"Received: weights={weights!r}"
    )
