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
