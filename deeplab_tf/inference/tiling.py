"""Sliding-window inference for images too large to run whole (e.g. Cityscapes 1024x2048).

The image is cut into overlapping tiles, every tile runs through the model (for example a
:class:`~deeplab_tf.inference.MultiScaleInference`), and the full-resolution scores are
stitched back: each output pixel is taken from the one tile in which it lies deepest (the tile
"cores" split every overlap in the middle), so a pixel always gets the prediction with the most
context on all sides and no seam is averaged. Memory is bounded by one batch of tiles plus the
``(H, W, C)`` output.
"""

from __future__ import annotations

import math

import numpy as np


def _pair(v, name):
    if isinstance(v, int | np.integer):
        v = (int(v), int(v))
    try:
        h, w = (int(t) for t in v)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be an int or (height, width). Received: {name}={v!r}"
        ) from None
    if h < 1 or w < 1:
        raise ValueError(f"{name} must be positive. Received: {name}={v!r}")
    return h, w


def tile_starts(length: int, tile: int, overlap: float = 1 / 3, align: int = 8) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)``.

    Starts are multiples of ``align`` (the network's output stride, so every tile sees the same
    pixel grid phase) except the last, which ends flush with the image.

    Args:
        length: image length along one axis.
        tile: tile length.
        overlap: fraction of a tile shared with its neighbour, in [0, 1).
        align: step granularity in pixels.

    Returns:
        Sorted, distinct start offsets; ``[0]`` when the tile covers the image.
    """
    if not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"overlap must be in [0, 1). Received: overlap={overlap!r}")
    if tile >= length:
        return [0]
    align = max(1, int(align))
    step = int(math.floor(tile * (1.0 - overlap) / align)) * align
    step = max(step, align if align <= tile else 1)
    starts = list(range(0, length - tile, step)) + [length - tile]
    return sorted(set(starts))


def tile_cores(starts, tile: int, length: int) -> list[tuple[int, int]]:
    """The ``[begin, end)`` range each tile owns: overlaps are split in the middle."""
    tile = min(tile, length)
    bounds = [0]
    for a, b in zip(starts[:-1], starts[1:]):
        bounds.append((b + a + tile) // 2)
    bounds.append(length)
    return list(zip(bounds[:-1], bounds[1:]))


def sliding_window(fn, image, tile_size=513, overlap: float = 1 / 3, align: int = 8, batch_size=1):
    """Runs ``fn`` over overlapping tiles of one image and stitches the outputs.

    Args:
        fn: callable mapping a ``(n, h, w, 3)`` batch to ``(n, h, w, C)`` scores (NumPy or
            tensors), e.g. ``MultiScaleInference(...).predict_on_batch`` or a ``tf.function``.
        image: ``(H, W, 3)`` array.
        tile_size: tile size, an int or ``(height, width)``; tiles are clipped to the image.
        overlap: fraction of a tile shared with each neighbour, in [0, 1).
        align: tile starts are multiples of this (the output stride).
        batch_size: tiles per call of ``fn``.

    Returns:
        ``(H, W, C)`` NumPy array in ``fn``'s output dtype.
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"image must be (H, W, channels). Received shape {image.shape}")
    th, tw = _pair(tile_size, "tile_size")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1. Received: batch_size={batch_size!r}")
    height, width = image.shape[:2]
    th, tw = min(th, height), min(tw, width)
    ys = tile_starts(height, th, overlap, align)
    xs = tile_starts(width, tw, overlap, align)
    tiles = [
        (y0, x0, yc, xc)
        for y0, yc in zip(ys, tile_cores(ys, th, height))
        for x0, xc in zip(xs, tile_cores(xs, tw, width))
    ]
    out = None
    for i in range(0, len(tiles), int(batch_size)):
        chunk = tiles[i : i + int(batch_size)]
        crops = np.stack([image[y0 : y0 + th, x0 : x0 + tw] for y0, x0, _, _ in chunk])
        preds = fn(crops)
        preds = np.asarray(preds.numpy() if hasattr(preds, "numpy") else preds)
        if preds.shape[:3] != crops.shape[:3]:
            raise ValueError(
                "fn must return full-resolution scores (n, h, w, C) for (n, h, w, 3) tiles. "
                f"Received {preds.shape} for tiles {crops.shape}"
            )
        if out is None:
            out = np.empty((height, width, preds.shape[-1]), dtype=preds.dtype)
        for pred, (y0, x0, (ya, yb), (xa, xb)) in zip(preds, chunk):
            out[ya:yb, xa:xb] = pred[ya - y0 : yb - y0, xa - x0 : xb - x0]
    return out
