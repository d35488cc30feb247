"""A folder of the user's own image/mask pairs.

Layout: ``images/<stem>.<jpg|png|...|tif|npy>`` and ``masks/<stem>.<png|npy>`` with matching
stems. Masks are palette PNGs (indices), grey PNGs (values) or 2-D integer ``.npy`` arrays
holding class ids ``0..num_classes-1`` and 255 for ignore; RGB colour masks are accepted when a
``palette`` is given (each colour -> its index).

Images with any number of channels (medical, remote sensing): ``.npy`` arrays ``(H, W)`` /
``(H, W, C)`` and TIFFs read with tifffile (the ``[tiff]`` extra; ``(H, W, C)`` or planar
``(C, H, W)``), in any of :data:`~deeplab_tf.data.readers.ARRAY_IMAGE_DTYPES`. The first
image sets the split's format (``info.image_format``: channels, and uint8 or float32 for the
other dtypes, values kept); every image is probed (headers only) when the split is listed, and
one with other channels or another dtype is reported naming the file. Train them with
``DeepLabV2(input_channels=C, channel_mean=..., channel_std=...)``.

Splits: ``<root>/<split>/{images,masks}``, ``<root>/{images,masks}/<split>``, or a
``<root>/<split>.txt`` list of stems. A folder without any of these is one split, returned for
``split="train"`` or ``"all"``.
"""

from __future__ import annotations

import os

import numpy as np

from deeplab_tf.data.info import DatasetInfo
from deeplab_tf.data.listing import DatasetListing, check_root, make_examples
from deeplab_tf.data.palettes import IGNORE_LABEL, voc_palette
from deeplab_tf.data.readers import (
    DATASET_IMAGE_EXTENSIONS,
    MASK_EXTENSIONS,
    RGB_FORMAT,
    DatasetError,
    LabelMap,
    is_array_image,
    mismatch_error,
    probe_image,
    read_id_list,
)


def _stems(folder, exts):
    out = {}
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if ext.lower() in exts and os.path.isfile(os.path.join(folder, name)):
            if stem in out:
                raise DatasetError(
                    f"{folder}: two files share the stem {stem!r} ({os.path.basename(out[stem])}, "
                    f"{name}); stems must be unique.",
                    path=os.path.join(folder, name),
                )
            out[stem] = os.path.join(folder, name)
    return out


def _mask_format(path) -> str:
    return "npy" if path is not None and path.lower().endswith(".npy") else "png"


def _image_format(examples):
    """``(format, examples, problems)``: the split's image format (its first image's) and the
    examples whose images have it; each other image (other channels or dtype, unsupported
    dtype, unreadable header) is one problem naming its file. Only array images (``.npy``,
    TIFF) are probed; a split without any keeps RGB without opening a file."""
    if not any(is_array_image(ex.image_path) for ex in examples):
        return RGB_FORMAT, examples, []
    reference, kept, problems = None, [], []
    for ex in examples:
        try:
            got = probe_image(ex.image_path, ex.id)
            if reference is None:
                reference = got
            elif (got.channels, got.dtype) != (reference.channels, reference.dtype):
                raise mismatch_error(ex.image_path, got, reference, ex.id)
        except DatasetError as err:
            problem = err.as_problem()
            problem["id"] = problem["id"] or ex.id
            problems.append(problem)
            continue
        kept.append(ex)
    return reference or RGB_FORMAT, kept, problems


def find_folder_split(root: str, split):
    """Returns ``(images_dir, masks_dir, stems or None)`` for ``split``."""
    for images, masks in (
        (os.path.join(root, str(split), "images"), os.path.join(root, str(split), "masks")),
        (os.path.join(root, "images", str(split)), os.path.join(root, "masks", str(split))),
    ):
        if split not in (None, "all") and os.path.isdir(images):
            return images, masks, None
    images, masks = os.path.join(root, "images"), os.path.join(root, "masks")
    if not os.path.isdir(images):
        raise DatasetError(
            f"Folder dataset {root!r} has no images/ folder (expected images/ + masks/ with "
            "matching stems).",
            path=root,
        )
    list_path = os.path.join(root, f"{split}.txt")
    if split not in (None, "all") and os.path.isfile(list_path):
        return images, masks, read_id_list(list_path)
    if split in (None, "all", "train"):
        return images, masks, None
    raise DatasetError(
        f"Folder dataset {root!r} has no split {split!r}: expected {split}/images, "
        f"images/{split} or {split}.txt. Use split='all' for the whole folder.",
        path=root,
    )


def list_folder(
    root=None,
    split="train",
    num_classes: int | None = None,
    class_names=None,
    palette=None,
    ignore_label: int = IGNORE_LABEL,
    unlabeled: bool = False,
    **unused,
) -> DatasetListing:
    """Lists a folder of ``images/`` + ``masks/`` pairs.

    Args:
        root: the folder.
        split: a split name (see the module docstring), ``"all"`` or None.
        num_classes: number of classes (ids ``0..num_classes-1``); or give ``class_names``.
        class_names: one name per class id.
        palette: ``(K, 3)`` colours: used for display and to read RGB colour masks.
        ignore_label: the ignore value in masks (255).
        unlabeled: list images without masks too (their label is all ignore) instead of
            reporting them as problems.

    Returns:
        DatasetListing.
    """
    if unused:
        raise ValueError(f"Unexpected arguments for dataset 'folder'. Received: {unused!r}")
    if class_names is None and num_classes is None:
        raise ValueError("The folder dataset needs num_classes or class_names. Received neither.")
    if class_names is None:
        if int(num_classes) < 1 or int(num_classes) > 255:
            raise ValueError(f"num_classes must lie in [1, 255]. Received: {num_classes!r}")
        class_names = tuple(f"class_{i}" for i in range(int(num_classes)))
    elif num_classes is not None and int(num_classes) != len(class_names):
        raise ValueError(
            f"num_classes={num_classes} disagrees with {len(class_names)} class_names. "
            f"Received: {class_names!r}"
        )
    root = check_root(root, "folder")
    images_dir, masks_dir, stems = find_folder_split(root, split)
    images = _stems(images_dir, DATASET_IMAGE_EXTENSIONS)
    masks = _stems(masks_dir, MASK_EXTENSIONS) if os.path.isdir(masks_dir) else {}
    items = []
    problems = []
    for stem in stems if stems is not None else sorted(images):
        image = images.get(stem, os.path.join(images_dir, stem + ".jpg"))
        mask = masks.get(stem)
        if mask is None and unlabeled:
            items.append((stem, image, None))
            continue
        items.append((stem, image, mask or os.path.join(masks_dir, stem + ".png")))
    if stems is None:
        for stem in sorted(set(masks) - set(images)):
            problems.append(
                {
                    "id": stem,
                    "path": masks[stem],
                    "kind": "orphan_mask",
                    "error": f"{masks[stem]}: mask has no image.",
                }
            )
    examples, missing = make_examples(items, _mask_format)
    image_format, examples, bad = _image_format(examples)
    missing = missing + bad
    rgb_palette = None if palette is None else np.asarray(palette, np.uint8)
    info = DatasetInfo(
        name="folder",
        class_names=tuple(class_names),
        palette=voc_palette() if palette is None else rgb_palette,
        ignore_label=ignore_label,
        num_examples=len(examples),
        image_format=image_format,
    )
    label_map = LabelMap.identity(len(class_names), ignore_label)
    return DatasetListing(examples, label_map, info, missing, rgb_palette, warnings=problems)
