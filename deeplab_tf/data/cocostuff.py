"""COCO-Stuff (Caesar et al., CVPR 2018): 182 label ids (171 used), 255 = unlabeled.

Both releases, as the PyTorch DeepLab port (``kazuto1011/deeplab-pytorch``) reads them:

- **COCO-Stuff 10k** (``cocostuff-10k-v1.1.zip``): ``images/<name>.jpg``,
  ``annotations/<name>.mat`` (variable ``S``: MATLAB's 1-based ids, 0 = unlabeled) and
  ``imageLists/{train,test,all}.txt`` (9,000 / 1,000 / 10,000 names without extension).
  ``S`` becomes train ids as in the port: ``S - 1``, and the unlabeled -1 becomes 255. The
  release's ``.mat`` files are MATLAB v5/v7; one re-saved as v7.3 (HDF5) is read with h5py.
- **COCO-Stuff 164k** (COCO 2017 images + ``stuffthingmaps_trainval2017.zip``):
  ``images/{train2017,val2017}/<id>.jpg`` and ``annotations/{train2017,val2017}/<id>.png``
  (grey PNGs holding ids 0..181 and 255 = unlabeled), 118,287 / 5,000 images.

Ids 0..90 are COCO's 91 thing ids (minus one), 91..181 the 91 stuff classes; the eleven
thing ids that no annotation uses (``COCOSTUFF_UNUSED``) stay classes that never occur, so
models have 182 outputs as the port's checkpoints do, and their IoU is ``nan`` (excluded from
the mean) in evaluation.
"""

from __future__ import annotations

import glob
import os

from deeplab_tf.data.info import DatasetInfo
from deeplab_tf.data.listing import (
    DatasetListing,
    check_root,
    first_existing,
    make_examples,
)
from deeplab_tf.data.palettes import COCOSTUFF_CLASSES, IGNORE_LABEL, cocostuff_palette
from deeplab_tf.data.readers import DatasetError, LabelMap, read_id_list

NUM_IDS = len(COCOSTUFF_CLASSES)
COCOSTUFF10K_SPLITS = ("train", "test", "all")
#: Split names of the 164k release (``train``/``val`` are accepted for the 2017 folders).
COCOSTUFF164K_SPLITS = ("train2017", "val2017")


def cocostuff_info(name: str, n=None) -> DatasetInfo:
    return DatasetInfo(
        name=name, class_names=COCOSTUFF_CLASSES, palette=cocostuff_palette(), num_examples=n
    )


def mat_label_map() -> LabelMap:
    """LabelMap of the 10k ``.mat`` files: 0 (unlabeled) -> 255, 1..182 -> 0..181."""
    table = {raw: raw - 1 for raw in range(1, NUM_IDS + 1)}
    table[0] = IGNORE_LABEL
    return LabelMap(
        table,
        NUM_IDS,
        description=f"COCO-Stuff 10k .mat ids 0 (unlabeled) and 1..{NUM_IDS}",
    )


def _reject_unused(name, unused):
    if unused:
        raise ValueError(f"Unexpected arguments for dataset {name!r}. Received: {unused!r}")


def _find_base(root: str, marker: str, nested: tuple, what: str) -> str:
    candidates = [root] + [os.path.join(root, n) for n in nested]
    for c in candidates:
        if os.path.isdir(os.path.join(c, marker)):
            return c
    raise DatasetError(
        f"Cannot find {what} under {root!r}: expected a {marker}/ folder in one of "
        + ", ".join(repr(c) for c in candidates),
        path=root,
    )


def list_cocostuff10k(root=None, split: str = "train", list_file=None, **unused) -> DatasetListing:
    """Lists a COCO-Stuff 10k split.

    Args:
        root: folder holding ``images/``, ``annotations/`` and ``imageLists/`` (or holding
            the extracted ``cocostuff-10k-v1.1/`` folder).
        split: ``"train"`` (9,000), ``"test"`` (1,000) or ``"all"``; any name with a list file.
        list_file: a list of image names (one per line, no extension) replacing
            ``imageLists/<split>.txt``.

    Returns:
        DatasetListing (label format ``cocostuff_mat``, mapped to ids 0..181 and 255).
    """
    _reject_unused("cocostuff10k", unused)
    root = check_root(root, "cocostuff10k")
    base = _find_base(root, "images", ("cocostuff-10k-v1.1",), "COCO-Stuff 10k")
    if list_file is None:
        if split not in COCOSTUFF10K_SPLITS:
            raise ValueError(
                f"cocostuff10k split must be one of {COCOSTUFF10K_SPLITS} (or pass list_file). "
                f"Received: split={split!r}"
            )
        list_file = os.path.join(base, "imageLists", f"{split}.txt")
    if not os.path.isfile(list_file):
        raise DatasetError(f"{list_file}: COCO-Stuff 10k split list not found.", path=list_file)
    names = [os.path.splitext(n)[0] for n in read_id_list(list_file)]
    items = [
        (
            n,
            os.path.join(base, "images", f"{n}.jpg"),
            os.path.join(base, "annotations", f"{n}.mat"),
        )
        for n in names
    ]
    examples, problems = make_examples(items, "cocostuff_mat")
    info = cocostuff_info("cocostuff10k", len(examples))
    return DatasetListing(examples, mat_label_map(), info, problems)


def list_cocostuff164k(root=None, split: str = "train2017", **unused) -> DatasetListing:
    """Lists a COCO-Stuff 164k split (every image of the split's image folder).

    Args:
        root: folder holding ``images/<split>/`` and ``annotations/<split>/`` (the
            stuffthingmaps PNGs; a ``stuffthingmaps/<split>/`` folder is accepted too).
        split: ``"train2017"`` (118,287) or ``"val2017"`` (5,000); ``"train"`` and ``"val"``
            name the same folders.

    Returns:
        DatasetListing (ids 0..181 kept, 255 = unlabeled; other values are errors).
    """
    _reject_unused("cocostuff164k", unused)
    folder = {"train": "train2017", "val": "val2017"}.get(split, split)
    if folder not in COCOSTUFF164K_SPLITS:
        raise ValueError(
            f"cocostuff164k split must be one of {COCOSTUFF164K_SPLITS} (or 'train', 'val'). "
            f"Received: split={split!r}"
        )
    root = check_root(root, "cocostuff164k")
    image_dir = first_existing(
        [os.path.join(root, "images", folder), os.path.join(root, folder)],
        f"the COCO-Stuff 164k {folder} images",
    )
    label_dir = first_existing(
        [os.path.join(root, d, folder) for d in ("annotations", "stuffthingmaps")],
        f"the COCO-Stuff 164k {folder} label maps (stuffthingmaps PNGs)",
    )
    images = sorted(glob.glob(os.path.join(image_dir, "*.jpg")))
    items = []
    for path in images:
        stem = os.path.splitext(os.path.basename(path))[0]
        items.append((stem, path, os.path.join(label_dir, f"{stem}.png")))
    examples, problems = make_examples(items, "png")
    stems = {i[0] for i in items}
    warnings = [
        {"id": stem, "path": path, "kind": "orphan_mask", "error": f"{path}: label has no image."}
        for path in sorted(glob.glob(os.path.join(label_dir, "*.png")))
        if (stem := os.path.splitext(os.path.basename(path))[0]) not in stems
    ]
    info = cocostuff_info("cocostuff164k", len(examples))
    table = {i: i for i in (*range(NUM_IDS), IGNORE_LABEL)}
    label_map = LabelMap(
        table, NUM_IDS, description=f"COCO-Stuff ids 0..{NUM_IDS - 1} and 255 (unlabeled)"
    )
    return DatasetListing(examples, label_map, info, problems, warnings=warnings)
