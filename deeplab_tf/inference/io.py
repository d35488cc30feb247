"""Reading user images robustly, and expanding the inputs of a batch command.

Images are decoded by the package's one reader (:func:`deeplab_tf.data.readers.decode_image`).
Every failure becomes an :class:`ImageReadError` with a message naming the file, what was
found and what was expected, so that batch commands can report it and carry on.
"""

from __future__ import annotations

import glob
import os

import numpy as np

from deeplab_tf.data.readers import (  # noqa: F401  (this module's public names)
    DATASET_IMAGE_EXTENSIONS,
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageReadError,
    decode_image,
)


def read_image(path, max_pixels: int = DEFAULT_MAX_PIXELS, channels: int = 3):
    """Reads a user's image for a model that takes ``channels`` input channels.

    RGB files (JPEG, PNG, ...) decode into RGB uint8 with
    :func:`deeplab_tf.data.readers.decode_image`, the EXIF orientation applied. ``.npy`` arrays
    and TIFFs read by tifffile keep their channels and values, as training reads them
    (:func:`deeplab_tf.data.readers.read_image`: uint8 stays uint8, other dtypes become
    float32), so a model trained on 4-channel ``.npy`` / TIFF files predicts on the same kind
    of file. At most ``max_pixels`` pixels, checked before the pixels are read.

    Returns:
        ``(image, notes)``: an ``(H, W, channels)`` array and a list of strings.

    Raises:
        ImageReadError: unreadable path, not an image, empty, larger than ``max_pixels``, or
            with another number of channels than the model takes.
    """
    from deeplab_tf.data import readers

    if channels == 3 and not readers.is_array_image(path):
        return decode_image(path, max_pixels)
    image = readers.read_image(path, max_pixels=max_pixels)
    if image.shape[2] != channels:
        hint = "" if readers.is_array_image(path) else (
            f"; an RGB image file decodes to 3 channels: store {channels}-channel images as "
            ".npy or TIFF"
        )  # fmt: skip
        raise ImageReadError(
            f"{path}: image has {image.shape[2]} channel(s) ({image.dtype}); the model takes "
            f"{channels} (input_channels={channels}){hint}",
            path=os.fspath(path),
            kind="channels",
        )
    notes = []
    if channels == 3 and image.dtype != np.uint8:
        top = float(np.nanmax(image)) if image.size else 0.0
        if top > 255:
            notes.append(
                f"{image.dtype} values up to {top:g}, read as stored: RGB models expect 0..255 "
                "unless they were trained on such arrays (convert 16-bit photos to 8 bits)"
            )
    return image, notes


def dataset_inputs(dataset, split="val", root=None, dataset_args=None, limit=None):
    """The images of a dataset split, for ``predict --dataset`` and ``predict_pipeline``.

    Lists the split with :func:`deeplab_tf.data.catalog.list_split_examples` (what ``evaluate``
    lists; label files are not needed) and names each output after its example id
    (``2007_000033``, ``frankfurt_000000_000294``, ...), which the dataset keeps unique where
    file names are not (Cityscapes' city folders, ``test`` images of several years). Path
    separators in an id become ``_``; names that still collide are refused by
    :func:`~deeplab_tf.inference.outputs.plan_outputs`.

    Returns:
        ``(paths, names)``: image paths and output names, in the listing's order.

    Raises:
        ValueError: unknown dataset, missing root or files, no examples (before any work).
    """
    from deeplab_tf.data.catalog import list_split_examples

    _, examples = list_split_examples(
        dataset, split, root, limit, labels=False, **(dataset_args or {})
    )
    names = [e.id.replace(os.sep, "_").replace("/", "_") for e in examples]
    return [e.image_path for e in examples], names


def expand_inputs(patterns) -> tuple[list[str], list[str]]:
    """Expands files, directories (their image files, sorted: the extensions dataset folders
    read, ``.npy`` included) and glob patterns.

    Args:
        patterns: iterable of paths or glob patterns.

    Returns:
        ``(paths, errors)``: de-duplicated paths in order, and one message per pattern that
        matched nothing.
    """
    paths, errors, seen = [], [], set()

    def add(p):
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            paths.append(p)

    for pattern in patterns:
        pattern = os.fspath(pattern)
        if os.path.isdir(pattern):
            found = sorted(
                os.path.join(pattern, f)
                for f in os.listdir(pattern)
                if f.lower().endswith(DATASET_IMAGE_EXTENSIONS)
                and os.path.isfile(os.path.join(pattern, f))
            )
            if not found:
                errors.append(
                    f"{pattern}: directory holds no image files "
                    f"({', '.join(DATASET_IMAGE_EXTENSIONS)})"
                )
            for p in found:
                add(p)
        elif os.path.exists(pattern):
            add(pattern)
        elif glob.has_magic(pattern):
            found = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            if not found:
                errors.append(f"{pattern}: pattern matched no files")
            for p in found:
                add(p)
        else:
            errors.append(f"{pattern}: no such file or directory")
    return paths, errors
