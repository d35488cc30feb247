"""PASCAL-Person-Part (Chen et al., CVPR 2014): background + 6 parts (paper section 4.3).

Annotations read, whichever the user has:

- PNGs holding 0..6 (``SegmentationPart/<id>.png``, the release used with DeepLab), with
  ``list/{split}_id.txt`` (train 1,716 / val 1,817) or ``ImageSets/Person/{split}.txt``;
- PASCAL-Part's ``Annotations_Part/<id>.mat``: every person's 24 parts merged into the six
  (``PERSON_PART_MERGE``: head, torso, upper arms, lower arms, upper legs, lower legs). Without a
  list, the split is VOC 2010's ``ImageSets/Main/person_{split}.txt`` positives that have a
  .mat file (pass the standard list for the exact 1,716 / 1,817 images).

Images are VOC 2010's ``JPEGImages``.
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
from deeplab_tf.data.palettes import PERSON_PART_CLASSES, person_part_palette
from deeplab_tf.data.readers import DatasetError, LabelMap

PART_LABEL_DIRS = ("SegmentationPart", "Annotations_Part")


def list_person_part(
    root=None, split: str = "train", label_dir=None, list_file=None, **unused
) -> DatasetListing:
    """Lists a PASCAL-Person-Part split.

    Args:
        root: folder holding ``JPEGImages`` and ``SegmentationPart`` or ``Annotations_Part``
            (directly, or as ``pascal_data/``, ``VOCdevkit/VOC2010/``).
        split: ``"train"`` or ``"val"`` (any name with a list file).
        label_dir: the annotation folder when it is elsewhere.
        list_file: split list (ids or ``/image /label`` pairs).

    Returns:
        DatasetListing.
    """
    if unused:
        raise ValueError(f"Unexpected arguments for 'person_part'. Received: {unused!r}")
    root = check_root(root, "person_part")
    candidates = [
        root,
        os.path.join(root, "pascal_data"),
        os.path.join(root, "VOC2010"),
        os.path.join(root, "VOCdevkit", "VOC2010"),
    ]
    data_root = next((c for c in candidates if os.path.isdir(os.path.join(c, "JPEGImages"))), None)
    if data_root is None:
        raise DatasetError(
            f"Cannot find a JPEGImages folder for person_part under {root!r}. Looked in: "
            + ", ".join(repr(c) for c in candidates),
            path=root,
        )
    if label_dir is None:
        label_dir = first_existing(
            [os.path.join(b, d) for d in PART_LABEL_DIRS for b in (data_root, root)],
            "Person-Part annotations (SegmentationPart/*.png or Annotations_Part/*.mat)",
        )
    elif not os.path.isdir(label_dir):
        raise DatasetError(f"label_dir={label_dir!r} is not a directory.", path=label_dir)
    is_mat = sum(n.endswith(".mat") for n in os.listdir(label_dir)) > 0
    ext = ".mat" if is_mat else ".png"

    if list_file is None:
        for c in (
            os.path.join(data_root, "list", f"{split}_id.txt"),
            os.path.join(data_root, "ImageSets", "Person", f"{split}.txt"),
            os.path.join(data_root, f"{split}_id.txt"),
        ):
            if os.path.isfile(c):
                list_file = c
                break
    if list_file is not None:
        entries = parse_list_file(list_file, data_root)
    else:
        main = os.path.join(data_root, "ImageSets", "Main", f"person_{split}.txt")
        if not (is_mat and os.path.isfile(main)):
            raise DatasetError(
                f"No split list for person_part split {split!r}: looked for list/{split}_id.txt, "
                f"ImageSets/Person/{split}.txt under {data_root!r}. Pass list_file=.",
                path=data_root,
            )
        entries = []
        with open(main, encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[1] == "1":
                    if os.path.isfile(os.path.join(label_dir, parts[0] + ".mat")):
                        entries.append((parts[0], None, None))
    items = [
        (
            i,
            img or os.path.join(data_root, "JPEGImages", f"{i}.jpg"),
            lab or os.path.join(label_dir, f"{i}{ext}"),
        )
        for i, img, lab in entries
    ]
    examples, problems = make_examples(
        items, lambda p: "pascal_part_mat" if p.endswith(".mat") else "png"
    )
    info = DatasetInfo(
        name="person_part",
        class_names=PERSON_PART_CLASSES,
        palette=person_part_palette(),
        num_examples=len(examples),
    )
    return DatasetListing(examples, LabelMap.identity(7), info, problems)
