"""Pictures of segmentations: palette label PNGs, colour overlays and side-by-side panels.

* :func:`save_label_png`: a class-id map as a palette ("P" mode) PNG, the format of the VOC
  ``SegmentationClass`` files (pixel value = class id, colours from the palette).
* :func:`overlay`: the photo tinted with the class colours, with class outlines.
* :func:`side_by_side`: image | prediction | ground truth panels with titles and a legend of
  the classes shown.

Every writer goes through a temporary file and an atomic rename.
"""

from __future__ import annotations

import numpy as np

from deeplab_tf.atomic import atomic_write
from deeplab_tf.data.palettes import IGNORE_LABEL, voc_palette


def _palette(palette):
    p = voc_palette() if palette is None else np.asarray(palette, dtype=np.uint8)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"palette must be (K, 3) uint8. Received shape {p.shape}")
    if len(p) < 256:
        p = np.concatenate([p, np.zeros((256 - len(p), 3), np.uint8)])
    return p[:256]


def _check_label(label, shape=None):
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label must be 2-D (H, W). Received shape {label.shape}")
    if shape is not None and label.shape != tuple(shape):
        raise ValueError(f"label shape {label.shape} does not match the image's {tuple(shape)}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(
            f"label values must be in [0, 255]. Received [{label.min()}, {label.max()}]"
        )
    return label.astype(np.uint8)


def _check_image(image):
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB. Received shape {image.shape}")
    if image.dtype != np.uint8:
        image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return image


def display_image(image) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 picture of a model input, for overlays: RGB uint8 as it is; any
    other image (``.npy`` / TIFF inputs of ``input_channels=N`` models, float values) shows its
    first three channels (one or two channels: the first, in grey), stretched from the
    image's own minimum and maximum to 0..255."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] < 1:
        raise ValueError(f"image must be (H, W) or (H, W, C). Received shape {image.shape}")
    if image.shape[2] == 3 and image.dtype == np.uint8:
        return image
    shown = image[..., :3] if image.shape[2] >= 3 else np.repeat(image[..., :1], 3, axis=-1)
    shown = shown.astype(np.float32)
    finite = shown[np.isfinite(shown)]
    if finite.size == 0:
        return np.zeros(shown.shape, np.uint8)
    low, high = float(finite.min()), float(finite.max())
    scaled = (np.nan_to_num(shown, nan=low) - low) * (255.0 / max(high - low, 1e-12))
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def label_image(label, palette=None):
    """An ``(H, W)`` class-id map as a Pillow "P" image carrying ``palette``."""
    from PIL import Image

    img = Image.fromarray(_check_label(label), mode="P")
    img.putpalette(_palette(palette).reshape(-1).tolist())
    return img


def save_label_png(path, label, palette=None, overwrite: bool = True):
    """Writes a class-id map as a palette PNG (VOC style), atomically. Returns ``path``.

    With ``overwrite=False`` an existing ``path`` raises :class:`FileExistsError`.
    """
    img = label_image(label, palette)
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG", optimize=True), overwrite)


def save_rgb_png(path, image, overwrite: bool = True):
    """Writes an ``(H, W, 3)`` uint8 RGB array as a PNG, atomically. Returns ``path``.

    With ``overwrite=False`` an existing ``path`` raises :class:`FileExistsError`.
    """
    from PIL import Image

    img = Image.fromarray(_check_image(image), mode="RGB")
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"), overwrite)


def boundaries(label) -> np.ndarray:
    """Boolean ``(H, W)`` mask of pixels whose right or lower neighbour has another class."""
    label = np.asarray(label)
    edge = np.zeros(label.shape, dtype=bool)
    dx = label[:, 1:] != label[:, :-1]
    dy = label[1:, :] != label[:-1, :]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    return edge


def overlay(image, label, palette=None, alpha=0.55, skip=(0, IGNORE_LABEL), outline=True):
    """The photo tinted with its segmentation.

    Args:
        image: ``(H, W, 3)`` RGB.
        label: ``(H, W)`` class ids.
        palette: ``(K, 3)`` colours; the VOC palette by default.
        alpha: opacity of the class colours, in [0, 1].
        skip: class ids left untinted (background and ignore by default; VOC's background
            colour is black, which would only darken the photo).
        outline: draw class boundaries in full colour.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]. Received: alpha={alpha!r}")
    image = _check_image(image)
    label = _check_label(label, image.shape[:2])
    pal = _palette(palette)
    colour = pal[label].astype(np.float32)
    tint = ~np.isin(label, np.asarray(tuple(skip), dtype=np.int64))
    out = image.astype(np.float32)
    out[tint] = (1.0 - alpha) * out[tint] + alpha * colour[tint]
    if outline:
        edge = boundaries(label)
        # Outline in the colour of the non-skipped class on each side of the boundary.
        edge &= tint
        out[edge] = colour[edge]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _font(size):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no scalable default font
        return ImageFont.load_default()


def side_by_side(
    image,
    prediction,
    ground_truth=None,
    palette=None,
    class_names=None,
    titles=None,
    min_height=160,
    legend=True,
):
    """Image | prediction | ground truth panels, with titles and a legend of the classes shown.

    Small inputs are enlarged (nearest neighbour) to at least ``min_height`` pixels so that
    the panels are legible.

    Args:
        image: ``(H, W, 3)`` RGB.
        prediction: ``(H, W)`` class ids.
        ground_truth: optional ``(H, W)`` class ids (255 = ignore, drawn in the palette's
            ignore colour).
        palette: colours; the VOC palette by default.
        class_names: names for the legend (ids are used when absent).
        titles: panel titles; defaults to "image", "prediction", "ground truth".
        min_height: smallest panel height in pixels.
        legend: add a row naming every class present.

    Returns:
        ``(H', W', 3)`` uint8 RGB.
    """
    from PIL import Image, ImageDraw

    image = _check_image(image)
    shape = image.shape[:2]
    pal = _palette(palette)
    panels = [image, pal[_check_label(prediction, shape)]]
    labels = [_check_label(prediction, shape)]
    if ground_truth is not None:
        labels.append(_check_label(ground_truth, shape))
        panels.append(pal[labels[-1]])
    titles = list(titles or ["image", "prediction", "ground truth"])[: len(panels)]
    factor = max(1, int(np.ceil(min_height / max(1, shape[0]))))
    h, w = shape[0] * factor, shape[1] * factor
    gap, head = 6, 22
    font = _font(14)
    total_w = len(panels) * w + (len(panels) + 1) * gap
    strip = legend_strip(labels, pal, class_names, total_w) if legend else None
    canvas = Image.new("RGB", (total_w, head + h + gap), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (panel, title) in enumerate(zip(panels, titles)):
        x0 = gap + i * (w + gap)
        big = Image.fromarray(panel).resize((w, h), Image.NEAREST)
        canvas.paste(big, (x0, head))
        draw.text((x0, 3), title, fill=(20, 20, 20), font=font)
    if strip is not None and len(strip):
        return np.concatenate([np.asarray(canvas), strip], axis=0)
    return np.asarray(canvas)


def legend_strip(labels, palette=None, class_names=None, width=640):
    """A white strip naming every class present in ``labels``, each beside its colour swatch,
    in rows that fit ``width`` pixels.

    Args:
        labels: one ``(H, W)`` label map or a list of them.
        palette: colours; the VOC palette by default.
        class_names: names by class id (ids are shown when absent); 255 is "ignore".
        width: strip width in pixels.

    Returns:
        ``(h, width, 3)`` uint8 (``h`` is 0 when no label is present).
    """
    from PIL import Image, ImageDraw

    pal = _palette(palette)
    labels = [labels] if isinstance(labels, np.ndarray) else list(labels)
    font = _font(14)
    gap = 6
    present = sorted(set(np.unique(np.concatenate([lab.ravel() for lab in labels])).tolist()))
    names = list(class_names) if class_names is not None else None
    entries = []
    for cid in present:
        if cid == IGNORE_LABEL:
            entries.append((cid, "ignore"))
        else:
            entries.append((cid, names[cid] if names and cid < len(names) else str(cid)))
    rows, row, x = [], [], gap
    for cid, text in entries:
        item_w = 18 + int(font.getlength(text)) + 14
        if row and x + item_w > width:
            rows.append(row)
            row, x = [], gap
        row.append((x, cid, text))
        x += item_w
    if row:
        rows.append(row)
    if not rows:
        return np.zeros((0, width, 3), np.uint8)
    canvas = Image.new("RGB", (width, len(rows) * 20 + gap), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, items in enumerate(rows):
        y = r * 20
        for x, cid, text in items:
            draw.rectangle(
                [x, y + 2, x + 13, y + 15],
                fill=tuple(int(c) for c in pal[cid]),
                outline=(90, 90, 90),
            )
            draw.text((x + 18, y + 1), text, fill=(20, 20, 20), font=font)
    return np.asarray(canvas)
