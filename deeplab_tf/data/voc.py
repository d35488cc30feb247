"""PASCAL VOC 2012 segmentation and its SBD augmentation ("train_aug", 10,582 images).

Layouts read (paper section 4; the release's ``train_aug.txt``):

- ``VOCdevkit/VOC2012/JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette PNGs:
  index = class id, 255 = boundary/ignore), ``ImageSets/Segmentation/{train,val,trainval}.txt``
  (1,464 / 1,449 / 2,913 ids).
- SBD (Hariharan et al. 2011): ``benchmark_RELEASE/dataset/cls/<id>.mat`` (struct
  ``GTcls.Segmentation``, class ids 0..20, no ignore), ``dataset/{train,val}.txt``,
  ``dataset/img/<id>.jpg``.
- or a ``SegmentationClassAug/<id>.png`` folder (the SBD masks converted to PNG, plus VOC's),
  next to ``JPEGImages`` or in the root.

``train_aug`` = (VOC train + SBD train + SBD val) - VOC val, sorted; with an Aug folder,
(every mask in it + VOC train) - VOC val. An id with a VOC ``SegmentationClass`` mask takes that
mask (finer, with ignore boundaries); the others take SBD's. A ``train_aug.txt`` list (ids or the
release's ``/JPEGImages/x.jpg /SegmentationClassAug/x.png`` pairs) in
``ImageSets/Segmentation`` or given as ``list_file`` overrides the computed list.
"""

from __future__ import annotations

import os

from deeplab_tf.data.info import DatasetInfo
from deeplab_tf.data.listing import (
    DatasetListing,
    check_root,
    make_examples,
    parse_list_file,
)
from deeplab_tf.data.palettes import VOC_CLASSES, voc_palette
from deeplab_tf.data.readers import DatasetError, LabelMap, read_id_list

VOC_SPLITS = ("train", "val", "trainval")
AUG_SPLITS = ("train_aug", "val", "trainval_aug")


def find_voc_root(root: str, year: str = "2012") -> str:
    """The ``VOC<year>`` folder (the one holding ``JPEGImages``) under ``root``."""
    candidates = [
        root,
        os.path.join(root, f"VOC{year}"),
        os.path.join(root, "VOCdevkit", f"VOC{year}"),
    ]
    for c in candidates:
        if os.path.isdir(os.path.join(c, "JPEGImages")):
            return c
    raise DatasetError(
        f"Cannot find a VOC{year} folder with JPEGImages under {root!r}. Looked in: "
        + ", ".join(repr(c) for c in candidates),
        path=root,
    )


def _search_bases(root, voc_root):
    bases = [root, voc_root, os.path.dirname(voc_root), os.path.dirname(os.path.dirname(voc_root))]
    out = []
    for b in bases:
        if b not in out:
            out.append(b)
    return out


def find_sbd_root(root: str, voc_root: str, sbd_root=None) -> str | None:
    """The SBD ``dataset`` folder (holding ``cls/``), or None when absent."""
    bases = [os.path.abspath(sbd_root)] if sbd_root else _search_bases(root, voc_root)
    for b in bases:
        for c in (b, os.path.join(b, "dataset"), os.path.join(b, "benchmark_RELEASE", "dataset")):
            if os.path.isdir(os.path.join(c, "cls")):
                return c
    if sbd_root:
        raise DatasetError(f"sbd_root={sbd_root!r} holds no cls/ folder.", path=sbd_root)
    return None


def find_aug_dir(root: str, voc_root: str, aug_dir=None) -> str | None:
    """The ``SegmentationClassAug`` folder, or None when absent."""
    if aug_dir:
        if not os.path.isdir(aug_dir):
            raise DatasetError(f"aug_dir={aug_dir!r} is not a directory.", path=aug_dir)
        return os.path.abspath(aug_dir)
    for b in _search_bases(root, voc_root):
        c = os.path.join(b, "SegmentationClassAug")
        if os.path.isdir(c):
            return c
    return None


def _voc_list(voc_root: str, split: str) -> list[str]:
    path = os.path.join(voc_root, "ImageSets", "Segmentation", f"{split}.txt")
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: VOC split list not found.", path=path)
    return read_id_list(path)


def _info(name, n):
    return DatasetInfo(name=name, class_names=VOC_CLASSES, palette=voc_palette(), num_examples=n)


def list_voc2012(root=None, split: str = "train", list_file=None, **unused) -> DatasetListing:
    """Lists VOC 2012 segmentation: ``train`` (1,464), ``val`` (1,449) or ``trainval``.

    Args:
        root: folder holding ``VOCdevkit/VOC2012`` (or that folder itself).
        split: one of ``"train"``, ``"val"``, ``"trainval"``.
        list_file: optional split list (ids or ``/image /label`` pairs) replacing the devkit's.

    Returns:
        DatasetListing.
    """
    _reject_unused("voc2012", unused)
    root = check_root(root, "voc2012")
    voc_root = find_voc_root(root)
    if list_file is None and split not in VOC_SPLITS:
        raise ValueError(f"voc2012 split must be one of {VOC_SPLITS}. Received: split={split!r}")
    if list_file is not None:
        entries = parse_list_file(list_file, voc_root)
    else:
        entries = [(i, None, None) for i in _voc_list(voc_root, split)]
    items = [
        (
            i,
            img or os.path.join(voc_root, "JPEGImages", f"{i}.jpg"),
            lab or os.path.join(voc_root, "SegmentationClass", f"{i}.png"),
        )
        for i, img, lab in entries
    ]
    examples, problems = make_examples(items, "png")
    return DatasetListing(
        examples, LabelMap.identity(21), _info("voc2012", len(examples)), problems
    )


def list_voc2012_aug(
    root=None,
    split: str = "train_aug",
    sbd_root=None,
    aug_dir=None,
    list_file=None,
    **unused,
) -> DatasetListing:
    """Lists VOC 2012 + SBD: ``train_aug`` (10,582), ``val`` (1,449) or ``trainval_aug``.

    Args:
        root: folder holding ``VOCdevkit/VOC2012`` and ``benchmark_RELEASE`` (or
            ``SegmentationClassAug``); either may also sit next to ``VOCdevkit``.
        split: ``"train_aug"``, ``"val"`` (VOC val with VOC masks) or ``"trainval_aug"``
            (train_aug + val, 12,031).
        sbd_root: SBD ``dataset`` folder when it is elsewhere.
        aug_dir: ``SegmentationClassAug`` folder when it is elsewhere (preferred over SBD).
        list_file: optional list (ids or ``/image /label`` pairs) replacing the computed one.

    Returns:
        DatasetListing.
    """
    _reject_unused("voc2012_aug", unused)
    if split not in AUG_SPLITS:
        raise ValueError(
            f"voc2012_aug split must be one of {AUG_SPLITS}. Received: split={split!r}"
        )
    root = check_root(root, "voc2012_aug")
    voc_root = find_voc_root(root)
    if split == "val":
        return _renamed(list_voc2012(root, "val", list_file=list_file), "voc2012_aug")
    aug = find_aug_dir(root, voc_root, aug_dir)
    sbd = None if aug else find_sbd_root(root, voc_root, sbd_root)
    if aug is None and sbd is None and list_file is None:
        raise DatasetError(
            f"voc2012_aug needs SBD (benchmark_RELEASE/dataset/cls/*.mat) or a "
            f"SegmentationClassAug folder; neither was found near {root!r}. Pass sbd_root= or "
            "aug_dir=.",
            path=root,
        )
    val = set(_voc_list(voc_root, "val"))
    default_list = os.path.join(voc_root, "ImageSets", "Segmentation", "train_aug.txt")
    if list_file is None and os.path.isfile(default_list):
        list_file = default_list
    if list_file is not None:
        entries = parse_list_file(list_file, voc_root)
    else:
        ids = set(_voc_list(voc_root, "train"))
        if aug is not None:
            ids |= {os.path.splitext(f)[0] for f in os.listdir(aug) if f.endswith(".png")}
        else:
            for s in ("train", "val"):
                path = os.path.join(sbd, f"{s}.txt")
                if not os.path.isfile(path):
                    raise DatasetError(f"{path}: SBD split list not found.", path=path)
                ids |= set(read_id_list(path))
        entries = [(i, None, None) for i in sorted(ids - val)]
    if split == "trainval_aug":
        known = {e[0] for e in entries}
        entries = entries + [(i, None, None) for i in sorted(val - known)]

    items, formats = [], {}
    for i, img, lab in entries:
        if img is None:
            img = os.path.join(voc_root, "JPEGImages", f"{i}.jpg")
            if not os.path.isfile(img) and sbd is not None:
                alt = os.path.join(sbd, "img", f"{i}.jpg")
                img = alt if os.path.isfile(alt) else img
        if lab is None:
            voc_mask = os.path.join(voc_root, "SegmentationClass", f"{i}.png")
            if split == "trainval_aug" and i in val:
                lab = voc_mask
            elif aug is not None:
                lab = os.path.join(aug, f"{i}.png")
            elif os.path.isfile(voc_mask):
                lab = voc_mask
            else:
                lab = os.path.join(sbd, "cls", f"{i}.mat")
        formats[lab] = "sbd_mat" if lab.endswith(".mat") else "png"
        items.append((i, img, lab))
    examples, problems = make_examples(items, lambda p: formats[p])
    return DatasetListing(
        examples, LabelMap.identity(21), _info("voc2012_aug", len(examples)), problems
    )


def _renamed(listing: DatasetListing, name: str) -> DatasetListing:
    info = listing.info
    listing.info = DatasetInfo(
        name=name,
        class_names=info.class_names,
        palette=info.palette,
        ignore_label=info.ignore_label,
        num_examples=info.num_examples,
    )
    return listing


def _reject_unused(name, unused):
    if unused:
        raise ValueError(
            f"Unexpected arguments for dataset {name!r}: {sorted(unused)}. Received: {unused!r}"
        )
