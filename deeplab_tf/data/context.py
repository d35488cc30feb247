"""PASCAL-Context (Mottaghi et al. 2014): the paper's 59 classes + background, 60 in all.

Annotations read, whichever the user has:

- the release's ``trainval/<id>.mat`` files (``LabelMap``: ids of the full 459-class
  ``labels.txt``): the 59 frequent classes (``CONTEXT_459_IDS``) become 1..59, every other id
  becomes background 0;
- PNGs already holding 0..59 (0 = background; 255 = ignore if present), e.g.
  ``VOC2010/SegmentationClassContext/<id>.png``.

Images are VOC 2010's ``JPEGImages``. Splits (train 4,998 / val 5,105) come from
``ImageSets/SegmentationContext/{split}.txt``, else VOC 2010's ``ImageSets/Main/{split}.txt``,
or a ``list_file``.
"""

from __future__ import annotations

import os

from deeplab_tf.data.info import DatasetInfo
from deeplab_tf.data.listing import (
    DatasetListing,
    check_root,
    first_existing,
    make_examples,
    parse_list_file,
)
from deeplab_tf.data.palettes import CONTEXT_459_IDS, CONTEXT_CLASSES, context_palette
from deeplab_tf.data.readers import DatasetError, LabelMap

CONTEXT_LABEL_DIRS = ("SegmentationClassContext", "trainval", "pascal_context")


def context_459_map() -> LabelMap:
    """LabelMap from the full 459-class ``LabelMap`` ids (0..459) to the 60 classes."""
    table = dict.fromkeys(range(460), 0)
    table.update({raw: i + 1 for i, raw in enumerate(CONTEXT_459_IDS)})
    return LabelMap(table, 60, description="PASCAL-Context 459-class ids 0..459")


def list_pascal_context(
    root=None, split: str = "train", label_dir=None, list_file=None, **unused
) -> DatasetListing:
    """Lists a PASCAL-Context split.

    Args:
        root: folder holding ``VOCdevkit/VOC2010`` (or that folder) and the annotations
            (``trainval/`` of .mat files, or ``SegmentationClassContext/`` PNGs).
        split: ``"train"`` or ``"val"`` (any name with a list file).
        label_dir: the annotation folder when it is elsewhere.
        list_file: split list (ids or ``/image /label`` pairs).

    Returns:
        DatasetListing.
    """
    if unused:
        raise ValueError(f"Unexpected arguments for 'pascal_context'. Received: {unused!r}")
    root = check_root(root, "pascal_context")
    candidates = [root, os.path.join(root, "VOC2010"), os.path.join(root, "VOCdevkit", "VOC2010")]
    voc_root = next((c for c in candidates if os.path.isdir(os.path.join(c, "JPEGImages"))), None)
    if voc_root is None:
        raise DatasetError(
            f"Cannot find a VOC2010 folder with JPEGImages under {root!r}. Looked in: "
            + ", ".join(repr(c) for c in candidates),
            path=root,
        )
    if label_dir is None:
        bases = [voc_root, root, os.path.dirname(voc_root)]
        label_dir = first_existing(
            [os.path.join(b, d) for d in CONTEXT_LABEL_DIRS for b in bases],
            "PASCAL-Context annotations (trainval/*.mat or SegmentationClassContext/*.png)",
        )
    elif not os.path.isdir(label_dir):
        raise DatasetError(f"label_dir={label_dir!r} is not a directory.", path=label_dir)
    names = os.listdir(label_dir)
    n_mat = sum(n.endswith(".mat") for n in names)
    n_png = sum(n.endswith(".png") for n in names)
    if not n_mat and not n_png:
        raise DatasetError(f"{label_dir}: holds neither .mat nor .png annotations.", path=label_dir)
    ext, fmt = (".mat", "context_mat") if n_mat >= n_png else (".png", "png")

    if list_file is None:
        list_file = first_existing(
            [
                os.path.join(voc_root, "ImageSets", "SegmentationContext", f"{split}.txt"),
                os.path.join(voc_root, "ImageSets", "Main", f"{split}.txt"),
                os.path.join(os.path.dirname(label_dir), f"{split}.txt"),
            ],
            f"a PASCAL-Context {split!r} split list",
            kind="file",
        )
    entries = parse_list_file(list_file, voc_root)
    items = [
        (
            i,
            img or os.path.join(voc_root, "JPEGImages", f"{i}.jpg"),
            lab or os.path.join(label_dir, f"{i}{ext}"),
        )
        for i, img, lab in entries
    ]
    examples, problems = make_examples(
        items, lambda p: "context_mat" if p.endswith(".mat") else "png"
    )
    label_map = context_459_map() if fmt == "context_mat" else LabelMap.identity(60)
    info = DatasetInfo(
        name="pascal_context",
        class_names=CONTEXT_CLASSES,
        palette=context_palette(),
        num_examples=len(examples),
    )
    if fmt == "context_mat" and any(e.label_format == "png" for e in examples):
        raise DatasetError(
            f"{list_file}: mixes .png and .mat annotations; use one format.", path=list_file
        )
    return DatasetListing(examples, label_map, info, problems)
