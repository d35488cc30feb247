"""Class names and colour palettes of the datasets the paper uses.

The VOC palette is the devkit's bit-interleaving colour map (``labelcolormap.m``): class ``i``
gets the colour VOC's palette PNGs store at index ``i``; index 255 (ignore) is (224, 224, 192).
"""

from __future__ import annotations

import numpy as np

IGNORE_LABEL = 255

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip

CITYSCAPES_COLORS = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: ``(n, 3)`` uint8, row ``i`` the colour of class ``i``."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


def cityscapes_palette() -> np.ndarray:
    """Cityscapes train-id colours as a 256-row palette (ignore 255 -> black)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(CITYSCAPES_COLORS)] = CITYSCAPES_COLORS
    return palette


def colorize(label: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """Maps an ``(H, W)`` integer label map to an ``(H, W, 3)`` uint8 RGB image."""
    palette = voc_palette() if palette is None else np.asarray(palette, dtype=np.uint8)
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label must be 2-D (H, W). Received shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() >= len(palette)):
        raise ValueError(
            f"label values must lie in [0, {len(palette) - 1}]. "
            f"Received min {label.min()}, max {label.max()}"
        )
    return palette[label.astype(np.int64)]


#: PASCAL-Context, the paper's 59 most frequent classes plus background (60 in all), in the
#: alphabetical order of the Context release's ``labels.txt``; id 0 is background.
CONTEXT_CLASSES = (
    "background", "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat",
    "book", "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth",
    "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food",
    "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person",
    "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign",
    "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall",
    "water", "window", "wood",
)  # fmt: skip

#: Ids of ``CONTEXT_CLASSES[1:]`` in the full 459-class index of the Context release
#: (``labels.txt``, the values stored in ``trainval/*.mat`` ``LabelMap``); every other id maps
#: to background.
CONTEXT_459_IDS = (
    2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105, 113,
    115, 144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308, 324, 326,
    347, 349, 354, 355, 360, 366, 368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458,
)  # fmt: skip

#: PASCAL-Person-Part (Chen et al., CVPR 2014): background plus six merged body parts.
PERSON_PART_CLASSES = (
    "background", "head", "torso", "upper arms", "lower arms", "upper legs", "lower legs",
)  # fmt: skip

#: How the 24 PASCAL-Part person part names merge into ``PERSON_PART_CLASSES`` ids.
PERSON_PART_MERGE = {
    **dict.fromkeys(
        ("head", "hair", "leye", "reye", "lear", "rear", "lebrow", "rebrow", "nose", "mouth"), 1
    ),
    **dict.fromkeys(("torso", "neck"), 2),
    **dict.fromkeys(("luarm", "ruarm"), 3),
    **dict.fromkeys(("llarm", "rlarm", "lhand", "rhand"), 4),
    **dict.fromkeys(("luleg", "ruleg"), 5),
    **dict.fromkeys(("llleg", "rlleg", "lfoot", "rfoot"), 6),
}


def context_palette() -> np.ndarray:
    """PASCAL-Context colours: the VOC bit-interleaving map over the 60 class ids."""
    return voc_palette()


def person_part_palette() -> np.ndarray:
    """PASCAL-Person-Part colours: the VOC bit-interleaving map over the 7 part ids."""
    return voc_palette()


#: COCO-Stuff (Caesar et al., CVPR 2018), the 182 label ids of its ``stuffthingmaps`` PNGs
#: (0-181; 255 = unlabeled): the 91 COCO thing ids, then the 91 stuff ids. Eleven thing ids are
#: unused by the annotations (street sign, hat, shoe, eye glasses, plate, mirror, window, desk,
#: door, blender, hair brush), so 171 classes are supervised.
COCOSTUFF_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "street sign", "stop sign", "parking meter", "bench",
    "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "hat",
    "backpack", "umbrella", "shoe", "eye glasses", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard",
    "surfboard", "tennis racket", "bottle", "plate", "wine glass", "cup", "fork", "knife",
    "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog",
    "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "mirror", "dining table",
    "window", "desk", "toilet", "door", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "blender", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush", "hair brush",
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds",
    "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence",
    "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog",
    "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill",
    "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud",
    "napkin", "net", "paper", "pavement", "pillow", "plant-other", "plastic", "platform",
    "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug", "salad",
    "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone",
    "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)  # fmt: skip

#: Ids of COCO-Stuff that no annotation uses (0-based, as in the label PNGs).
COCOSTUFF_UNUSED = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)


def cocostuff_palette() -> np.ndarray:
    """A 256-row palette for COCO-Stuff ids 0-181 (the VOC bit-interleaving colours shifted
    by one, so that no class is black); 255 (unlabeled) is black."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(COCOSTUFF_CLASSES)] = voc_palette()[1 : len(COCOSTUFF_CLASSES) + 1]
    return palette


#: Label sets by name: ``name -> (class names, palette function)``.
_LABEL_SETS = {
    "voc": (VOC_CLASSES, voc_palette),
    "cityscapes": (CITYSCAPES_CLASSES, cityscapes_palette),
    "cocostuff": (COCOSTUFF_CLASSES, cocostuff_palette),
}


def label_set(name: str):
    """``(class names, (256, 3) palette)`` of a label set: ``voc``, ``cityscapes``,
    ``cocostuff``.

    Raises:
        ValueError: an unknown name.
    """
    if name not in _LABEL_SETS:
        raise ValueError(f"Unknown label set {name!r}. Known: {', '.join(sorted(_LABEL_SETS))}")
    names, palette = _LABEL_SETS[name]
    return names, palette()
