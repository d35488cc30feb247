"""Cityscapes fine annotations: 34 label ids mapped to the 19 train ids (others -> 255).

Two ways in:

- the extracted archives, read directly: ``leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_
  leftImg8bit.png`` with ``gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png``
  (or ``_gtFine_labelTrainIds.png`` with ``label_type="trainIds"``);
- TFDS's ``cityscapes/semantic_segmentation`` builder (the zips in its manual_dir), prepared
  once into TFRecords: :func:`tfds_cityscapes`.

The id table is cityscapesScripts' ``labels.py``: ids 7,8,11,12,13,17,19..28,31,32,33 are the 19
evaluated classes; ids 0..6, 9, 10, 14..16, 18, 29, 30 are ignored (255). The raw value 255
(license plate, id -1, as uint8) is ignored too; 34..254 are not Cityscapes ids and are errors.
"""

from __future__ import annotations

import glob
import os

import numpy as np

from deeplab_tf.data.info import DatasetInfo
from deeplab_tf.data.listing import DatasetListing, check_root, first_existing, make_examples
from deeplab_tf.data.palettes import CITYSCAPES_CLASSES, IGNORE_LABEL, cityscapes_palette
from deeplab_tf.data.readers import LabelMap

#: Cityscapes label id -> train id for the 19 evaluated classes.
ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
    25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip

CITYSCAPES_SPLITS = ("train", "val", "test")


def label_id_map() -> LabelMap:
    """LabelMap from the 34 Cityscapes label ids (and 255) to the 19 train ids."""
    table = {i: ID_TO_TRAIN_ID.get(i, IGNORE_LABEL) for i in range(34)}
    table[255] = IGNORE_LABEL
    return LabelMap(table, 19, description="Cityscapes label ids 0..33 (or 255 for license plates)")


def label_id_lut() -> np.ndarray:
    """``(256,)`` uint8 lookup table id -> train id; unknown ids (34..254) map to 255."""
    lut = np.full((256,), IGNORE_LABEL, np.uint8)
    for i, t in ID_TO_TRAIN_ID.items():
        lut[i] = t
    return lut


def cityscapes_info(n=None) -> DatasetInfo:
    return DatasetInfo(
        name="cityscapes",
        class_names=CITYSCAPES_CLASSES,
        palette=cityscapes_palette(),
        num_examples=n,
    )


def list_cityscapes(
    root=None, split: str = "train", label_type: str = "labelIds", **unused
) -> DatasetListing:
    """Lists a Cityscapes split from the extracted ``leftImg8bit`` and ``gtFine`` folders.

    Args:
        root: folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``"train"`` (2,975), ``"val"`` (500) or ``"test"`` (1,525; its labels are
            placeholders that map to ignore).
        label_type: ``"labelIds"`` (34 ids, mapped) or ``"trainIds"`` (already 0..18/255).

    Returns:
        DatasetListing.
    """
    if unused:
        raise ValueError(f"Unexpected arguments for dataset 'cityscapes'. Received: {unused!r}")
    if split not in CITYSCAPES_SPLITS:
        raise ValueError(
            f"cityscapes split must be one of {CITYSCAPES_SPLITS}. Received: split={split!r}"
        )
    if label_type not in ("labelIds", "trainIds"):
        raise ValueError(
            f"label_type must be 'labelIds' or 'trainIds'. Received: label_type={label_type!r}"
        )
    root = check_root(root, "cityscapes")
    base = os.path.dirname(
        first_existing(
            [os.path.join(root, "leftImg8bit"), os.path.join(root, "cityscapes", "leftImg8bit")],
            "the Cityscapes leftImg8bit folder",
        )
    )
    image_dir = os.path.join(base, "leftImg8bit", split)
    first_existing([image_dir], f"the Cityscapes {split} images")
    suffix = "_leftImg8bit.png"
    label_suffix = f"_gtFine_{'labelIds' if label_type == 'labelIds' else 'labelTrainIds'}.png"
    items = []
    for path in sorted(glob.glob(os.path.join(image_dir, "*", f"*{suffix}"))):
        city = os.path.basename(os.path.dirname(path))
        ex_id = os.path.basename(path)[: -len(suffix)]
        label = os.path.join(base, "gtFine", split, city, ex_id + label_suffix)
        items.append((ex_id, path, label))
    examples, problems = make_examples(items, "png")
    label_map = label_id_map() if label_type == "labelIds" else LabelMap.identity(19)
    return DatasetListing(examples, label_map, cityscapes_info(len(examples)), problems)


def from_tfds_cityscapes(ds):
    """Maps TFDS ``cityscapes`` elements to ``{"image", "label" (train ids), "id"}``.

    Label ids outside 0..33 and 255 fail with an error naming the image id.
    """
    import tensorflow as tf

    lut = tf.constant(label_id_lut())
    known = np.zeros((256,), bool)
    known[:34] = True
    known[255] = True
    known = tf.constant(known)

    def convert(ex):
        raw = tf.cast(ex["segmentation_label"][..., 0], tf.int32)
        ok = tf.reduce_all(tf.gather(known, raw))
        check = tf.debugging.Assert(
            ok,
            [
                tf.constant("Cityscapes label values outside 0..33 in image"),
                ex["image_id"],
                tf.constant("values:"),
                tf.unique(tf.reshape(raw, [-1]))[0],
            ],
            summarize=20,
        )
        with tf.control_dependencies([check]):
            label = tf.gather(lut, raw)
        return {"image": ex["image_left"], "label": label, "id": ex["image_id"]}

    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)


def tfds_cityscapes(split="train", data_dir=None, manual_dir=None, shuffle_files=False):
    """Cityscapes through TFDS's ``cityscapes/semantic_segmentation`` builder.

    Prepares the TFRecords once (from ``leftImg8bit_trainvaltest.zip`` and
    ``gtFine_trainvaltest.zip`` in ``manual_dir``) and maps ids to train ids.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        data_dir: TFDS data folder (default ``~/tensorflow_datasets``).
        manual_dir: folder holding the two zips.
        shuffle_files: shuffle the TFRecord shards.

    Returns:
        ``(dataset, DatasetInfo)``.
    """
    import tensorflow_datasets as tfds

    if split not in CITYSCAPES_SPLITS:
        raise ValueError(
            f"cityscapes split must be one of {CITYSCAPES_SPLITS}. Received: split={split!r}"
        )
    builder = tfds.builder("cityscapes/semantic_segmentation", data_dir=data_dir)
    config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    builder.download_and_prepare(download_config=config)
    tfds_split = {"train": "train", "val": "validation", "test": "test"}[split]
    ds = builder.as_dataset(split=tfds_split, shuffle_files=shuffle_files)
    n = builder.info.splits[tfds_split].num_examples
    return from_tfds_cityscapes(ds), cityscapes_info(n)
