"""``load_dataset``: every dataset as a ``tf.data.Dataset`` of ``{"image", "label", "id"}``.

Element spec shared by all datasets (the training pipeline and the evaluator consume it):
``image`` uint8 ``(H, W, 3)`` RGB, ``label`` uint8 ``(H, W)`` class ids ``0..C-1`` and 255 =
ignore, ``id`` a ``tf.string`` scalar. A folder of ``.npy`` / multi-channel TIFF images yields
``image`` ``(H, W, C)`` uint8 or float32 instead (``info.image_format`` says which).

Files are decoded with Pillow/SciPy inside ``tf.numpy_function`` (parallel ``map``), so a corrupt
file, a missing file or a label value the dataset does not define fails with an error that names
the file, or, with ``on_error="skip"``, is skipped, logged and reported.
"""

from __future__ import annotations

import logging

import numpy as np

from deeplab_tf.data.catalog import (  # noqa: F401  (re-exported: the loader's names)
    DATASET_NAMES,
    TFDS_DATASETS,
    list_dataset,
    list_datasets,
)
from deeplab_tf.data.listing import DatasetListing
from deeplab_tf.data.readers import DatasetError, decode_example

logger = logging.getLogger("deeplab_tf.data")

ON_ERROR = ("raise", "skip")


def _report(skipped, problem):
    logger.warning("Skipping example %s: %s", problem.get("id"), problem["error"])
    if skipped is not None and problem not in skipped:
        skipped.append(problem)


def make_dataset(
    listing: DatasetListing,
    *,
    on_error: str = "raise",
    skipped: list | None = None,
    shuffle_files: bool = False,
    seed: int | None = None,
    num_parallel_calls=None,
    deterministic: bool = True,
):
    """Turns a listing into a ``tf.data.Dataset`` of ``{"image", "label", "id"}``.

    Args:
        listing: from :func:`list_dataset`.
        on_error: ``"raise"`` (default) stops with the first problem, naming the file;
            ``"skip"`` drops bad examples, logs a warning and appends ``{"id", "path",
            "kind", "error"}`` dicts to ``skipped``.
        skipped: a list receiving the skipped examples' problems (``on_error="skip"``).
        shuffle_files: shuffle the example order (before decoding) every epoch.
        seed: shuffle seed.
        num_parallel_calls: decoding parallelism (default ``tf.data.AUTOTUNE``).
        deterministic: keep the example order under parallel decoding.

    Returns:
        ``tf.data.Dataset``.
    """
    import tensorflow as tf

    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}. Received: on_error={on_error!r}")
    if listing.problems:
        if on_error == "raise":
            shown = "\n  ".join(p["error"] for p in listing.problems[:5])
            more = len(listing.problems) - 5
            raise DatasetError(
                f"{len(listing.problems)} example(s) of {listing.info.name!r} have missing or "
                f"unusable files:\n  {shown}"
                + (f"\n  ... and {more} more" if more > 0 else "")
                + "\nPass on_error='skip' to drop them.",
                path=listing.problems[0]["path"],
                example_id=listing.problems[0]["id"],
            )
        for p in listing.problems:
            _report(skipped, p)
    examples = list(listing.examples)
    label_map, rgb_palette = listing.label_map, listing.rgb_palette
    image_format = listing.info.image_format
    expect = None if image_format.path is None else image_format  # None: RGB files
    skip = on_error == "skip"

    def decode(index):
        ex = examples[int(index)]
        try:
            image, label = decode_example(ex, label_map, rgb_palette, expect)
        except DatasetError as err:
            if not skip:
                raise
            _report(skipped, err.as_problem())
            image = np.zeros((0, 0, image_format.channels), image_format.dtype)
            label = np.zeros((0, 0), np.uint8)
            return image, label, np.bytes_(ex.id.encode()), np.False_
        return image, label, np.bytes_(ex.id.encode()), np.True_

    def decode_tf(index):
        image, label, ex_id, ok = tf.numpy_function(
            decode,
            [index],
            [tf.as_dtype(image_format.dtype), tf.uint8, tf.string, tf.bool],
            stateful=False,
        )
        image.set_shape([None, None, image_format.channels])
        label.set_shape([None, None])
        ex_id.set_shape([])
        ok.set_shape([])
        return {"image": image, "label": label, "id": ex_id}, ok

    ds = tf.data.Dataset.range(len(examples))
    if shuffle_files and examples:
        ds = ds.shuffle(len(examples), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(
        decode_tf,
        num_parallel_calls=num_parallel_calls or tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    if skip:
        ds = ds.filter(lambda element, ok: ok)
    ds = ds.map(lambda element, ok: element)
    if not skip:
        ds = ds.apply(tf.data.experimental.assert_cardinality(len(examples)))
    return ds


def load_dataset(
    name: str,
    split: str = "train",
    root=None,
    *,
    on_error: str = "raise",
    skipped: list | None = None,
    shuffle_files: bool = False,
    seed: int | None = None,
    num_parallel_calls=None,
    deterministic: bool = True,
    source: str = "files",
    data_dir=None,
    **kwargs,
):
    """Loads a segmentation dataset as ``(tf.data.Dataset, DatasetInfo)``.

    Every dataset yields ``{"image": uint8 (H, W, 3) RGB, "label": uint8 (H, W), "id":
    tf.string}`` with class ids ``0..C-1`` and 255 = ignore.

    Args:
        name: ``"voc2012"``, ``"voc2012_aug"``, ``"cityscapes"``, ``"pascal_context"``,
            ``"person_part"``, ``"cocostuff10k"``, ``"cocostuff164k"``, ``"coco2014"``,
            ``"folder"`` or ``"synthetic"``.
        split: split name: VOC ``train/val/trainval``; ``voc2012_aug`` ``train_aug/val/
            trainval_aug``; Cityscapes ``train/val/test``; Context and Person-Part
            ``train/val``; COCO-Stuff 10k ``train/test/all``; COCO-Stuff 164k
            ``train2017/val2017``; COCO 2014 ``train/val``; folder: see
            :mod:`deeplab_tf.data.folder`.
        root: folder holding the extracted dataset (``VOCdevkit``, ``benchmark_RELEASE``,
            ``leftImg8bit``/``gtFine``...). Not used by ``"synthetic"``.
        on_error: ``"raise"`` or ``"skip"`` (see :func:`make_dataset`).
        skipped: list receiving skipped examples' problems.
        shuffle_files: shuffle example order before decoding.
        seed: shuffle seed.
        num_parallel_calls: decoding parallelism.
        deterministic: keep order under parallel decoding.
        source: ``"files"`` (read the folders, nothing to prepare) or ``"tfds"`` (prepare
            TFRecords once with a TFDS builder, then read them; ``voc2012``, ``voc2012_aug``,
            ``cityscapes``, ``cocostuff10k``, ``cocostuff164k``). For ``"tfds"``, ``root`` is
            the builder's manual_dir.
        data_dir: TFDS data folder for ``source="tfds"``.
        **kwargs: dataset-specific options, passed to the dataset's ``list_*`` function
            (``folder`` needs ``num_classes`` or ``class_names``) or to
            ``synthetic_dataset``; ``pseudo_labels=FOLDER`` (any file dataset) takes every
            label from a folder of PNGs instead (:mod:`deeplab_tf.data.pseudo`).

    Returns:
        ``(dataset, info)``: a ``tf.data.Dataset`` and a :class:`DatasetInfo`.

    Example:
        >>> ds, info = load_dataset("voc2012_aug", "train_aug", root="~/data")  # doctest: +SKIP
        >>> info.num_examples, info.num_classes  # doctest: +SKIP
        (10582, 21)
    """
    if name == "synthetic":
        if root is not None:
            raise ValueError(f"The synthetic dataset reads no files. Received: root={root!r}")
        from deeplab_tf.data.synthetic import synthetic_dataset

        if seed is not None:
            kwargs["seed"] = seed
        return synthetic_dataset(split=split, **kwargs)
    if source not in ("files", "tfds"):
        raise ValueError(f"source must be 'files' or 'tfds'. Received: source={source!r}")
    if source == "tfds":
        if kwargs:
            raise ValueError(f"source='tfds' takes no dataset options. Received: {kwargs!r}")
        if name in ("voc2012", "voc2012_aug"):
            from deeplab_tf.data.tfds_voc import tfds_voc

            return tfds_voc(
                name, split, manual_dir=root, data_dir=data_dir, shuffle_files=shuffle_files
            )
        if name in ("cocostuff10k", "cocostuff164k"):
            from deeplab_tf.data.tfds_cocostuff import tfds_cocostuff

            return tfds_cocostuff(
                name, split, manual_dir=root, data_dir=data_dir, shuffle_files=shuffle_files
            )
        if name == "cityscapes":
            from deeplab_tf.data.cityscapes import tfds_cityscapes

            return tfds_cityscapes(
                split, data_dir=data_dir, manual_dir=root, shuffle_files=shuffle_files
            )
        raise ValueError(
            f"source='tfds' is available for {', '.join(TFDS_DATASETS[:-1])} and "
            f"{TFDS_DATASETS[-1]}. Received: name={name!r}"
        )
    if data_dir is not None:
        raise ValueError(f"data_dir is only used with source='tfds'. Received: {data_dir!r}")
    listing = list_dataset(name, split, root, **kwargs)
    ds = make_dataset(
        listing,
        on_error=on_error,
        skipped=skipped,
        shuffle_files=shuffle_files,
        seed=seed,
        num_parallel_calls=num_parallel_calls,
        deterministic=deterministic,
    )
    return ds, listing.info
