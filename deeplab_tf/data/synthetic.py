"""A built-in, deterministic synthetic segmentation dataset.

Images show textured, noisy shapes on a textured background; each foreground class has its own
shape, colour family and texture, so a segmentation network can learn them from a few hundred
steps. Each shape is outlined by a 255 (ignore) band, as VOC marks object boundaries. The data
is generated with NumPy/OpenCV, depends only on ``(split, seed)``, and needs no download, so
training can be demonstrated and tested anywhere.

Example:
    >>> ds, info = synthetic_dataset("train", num_images=64, size=64)
    >>> info.num_classes
    5
"""

from __future__ import annotations

import zlib

import cv2
import numpy as np

from deeplab_tf.data.info import DatasetInfo

#: Class names; class 0 is the background.
SYNTHETIC_CLASSES = ("background", "disk", "square", "triangle", "ring", "diamond", "cross", "bar")
# Per foreground class: base RGB colour and texture kind.
_COLOURS = np.array(
    [
        [220, 60, 50],
        [60, 190, 70],
        [60, 90, 220],
        [230, 200, 40],
        [200, 70, 210],
        [50, 210, 210],
        [240, 140, 40],
    ],
    np.float32,
)
_TEXTURES = ("hstripes", "checker", "dots", "dstripes", "plain", "vstripes", "grain")


def _texture(kind, h, w, rng):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(4.0, 7.0)
    phase = rng.uniform(0, 2 * np.pi)
    if kind == "hstripes":
        t = np.sin(2 * np.pi * yy / period + phase)
    elif kind == "vstripes":
        t = np.sin(2 * np.pi * xx / period + phase)
    elif kind == "dstripes":
        t = np.sin(2 * np.pi * (xx + yy) / (period * 1.4) + phase)
    elif kind == "checker":
        t = np.sign(np.sin(2 * np.pi * xx / period + phase) * np.sin(2 * np.pi * yy / period))
    elif kind == "dots":
        t = (np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period) > 0.5) * 2.0 - 1.0
    elif kind == "grain":
        t = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 1.0) * 2.0
    else:
        t = np.zeros((h, w), np.float32)
    return t.astype(np.float32)


def _shape_mask(cls, h, w, rng):
    """Filled mask of a class's shape at a random position and size."""
    mask = np.zeros((h, w), np.uint8)
    r = int(rng.uniform(0.15, 0.3) * min(h, w)) + 3
    cy = int(rng.uniform(r, h - r)) if h > 2 * r else h // 2
    cx = int(rng.uniform(r, w - r)) if w > 2 * r else w // 2
    name = SYNTHETIC_CLASSES[cls]
    if name == "disk":
        cv2.circle(mask, (cx, cy), r, 1, -1)
    elif name == "square":
        cv2.rectangle(mask, (cx - r, cy - r), (cx + r, cy + r), 1, -1)
    elif name == "triangle":
        pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
        cv2.fillPoly(mask, [pts], 1)
    elif name == "ring":
        cv2.circle(mask, (cx, cy), r, 1, -1)
        cv2.circle(mask, (cx, cy), max(1, r // 2), 0, -1)
    elif name == "diamond":
        pts = np.array([[cx, cy - r], [cx + r, cy], [cx, cy + r], [cx - r, cy]], np.int32)
        cv2.fillPoly(mask, [pts], 1)
    elif name == "cross":
        t = max(2, r // 3)
        cv2.rectangle(mask, (cx - r, cy - t), (cx + r, cy + t), 1, -1)
        cv2.rectangle(mask, (cx - t, cy - r), (cx + t, cy + r), 1, -1)
    else:  # bar
        t = max(2, r // 3)
        cv2.rectangle(mask, (cx - r, cy - t), (cx + r, cy + t), 1, -1)
    return mask.astype(bool)


def render_synthetic_example(
    rng: np.random.Generator,
    size=(64, 64),
    num_classes: int = 5,
    max_objects: int = 3,
    noise: float = 12.0,
    border: int = 1,
):
    """Draws one ``(image uint8 (H, W, 3), label uint8 (H, W))`` pair from ``rng``."""
    h, w = size
    # Background: a smooth colour gradient with low-contrast grain.
    base = rng.uniform(70, 150, size=3).astype(np.float32)
    grad = rng.uniform(-40, 40, size=(2, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = base + (yy / h)[..., None] * grad[0] + (xx / w)[..., None] * grad[1]
    image += _texture("grain", h, w, rng)[..., None] * 6.0
    label = np.zeros((h, w), np.uint8)
    ignore = np.zeros((h, w), bool)
    kernel = np.ones((2 * border + 1, 2 * border + 1), np.uint8)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = int(rng.integers(1, num_classes))
        mask = _shape_mask(cls, h, w, rng)
        colour = _COLOURS[(cls - 1) % len(_COLOURS)] + rng.uniform(-25, 25, size=3)
        tex = _texture(_TEXTURES[(cls - 1) % len(_TEXTURES)], h, w, rng)
        obj = colour + tex[..., None] * 35.0
        image[mask] = obj[mask]
        label[mask] = cls
        if border:
            m8 = mask.astype(np.uint8)
            band = (cv2.dilate(m8, kernel) - cv2.erode(m8, kernel)).astype(bool)
            ignore = (ignore & ~mask) | band
    image += rng.normal(0.0, noise, size=image.shape)
    label[ignore] = 255
    return np.clip(np.round(image), 0, 255).astype(np.uint8), label


def synthetic_arrays(
    split: str = "train",
    num_images: int = 64,
    size=64,
    num_classes: int = 5,
    seed: int = 0,
    max_objects: int = 3,
    noise: float = 12.0,
):
    """NumPy arrays ``(images (N, H, W, 3) uint8, labels (N, H, W) uint8, ids list[str])``.

    Deterministic in ``(split, seed)``; different splits never share images.
    """
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a non-empty string. Received: split={split!r}")
    if not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"num_images must be a positive int. Received: num_images={num_images!r}")
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or min(hw) < 16:
        raise ValueError(f"size must be an int or (h, w), each >= 16. Received: size={size!r}")
    if not isinstance(num_classes, int) or not 2 <= num_classes <= len(SYNTHETIC_CLASSES):
        raise ValueError(
            f"num_classes must be an int in [2, {len(SYNTHETIC_CLASSES)}]. "
            f"Received: num_classes={num_classes!r}"
        )
    split_key = zlib.crc32(split.encode("utf-8"))
    images = np.empty((num_images, hw[0], hw[1], 3), np.uint8)
    labels = np.empty((num_images, hw[0], hw[1]), np.uint8)
    for i in range(num_images):
        rng = np.random.default_rng([int(seed), split_key, i])
        images[i], labels[i] = render_synthetic_example(rng, hw, num_classes, max_objects, noise)
    ids = [f"synthetic_{split}_{i:05d}" for i in range(num_images)]
    return images, labels, ids


def synthetic_dataset(
    split: str = "train",
    num_images: int = 64,
    size=64,
    num_classes: int = 5,
    seed: int = 0,
    max_objects: int = 3,
    noise: float = 12.0,
):
    """The synthetic dataset as ``(tf.data.Dataset, DatasetInfo)``.

    Elements follow the shared contract ``{"image": uint8 (H, W, 3), "label": uint8 (H, W),
    "id": string}``; labels are ``0..num_classes-1`` with 255 bands around shapes.

    Args:
        split: any name (``"train"``, ``"val"``...); it seeds the generator.
        num_images: number of examples.
        size: image side or ``(h, w)``, at least 16.
        num_classes: 2..8 including the background.
        seed: global seed.
        max_objects: at most this many shapes per image (at least one).
        noise: standard deviation of the Gaussian pixel noise.

    Returns:
        ``(dataset, info)``.
    """
    import tensorflow as tf

    images, labels, ids = synthetic_arrays(
        split, num_images, size, num_classes, seed, max_objects, noise
    )
    ds = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels, "id": ids})
    info = DatasetInfo(
        name="synthetic", class_names=SYNTHETIC_CLASSES[:num_classes], num_examples=num_images
    )
    return ds, info
