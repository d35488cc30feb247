"""The datasets this package reads, listed once: names, listing functions, standard splits.

Every list of dataset names (``load_dataset``, the ``data`` config section, ``deeplab-tf data
check``, the TFDS builders) is derived from :data:`DATASETS`. No TensorFlow here: the command
line builds its ``--dataset`` choices from this module.
"""

from __future__ import annotations

import importlib

from deeplab_tf.data.listing import DatasetListing

#: name -> ``lister``: "module:function" returning a :class:`DatasetListing` (None: generated,
#: not read from files); ``check_splits``: the splits ``data check`` reads by default;
#: ``tfds``: whether ``load_dataset(..., source="tfds")`` has a builder for it.
DATASETS = {
    name: {"lister": lister, "check_splits": splits, "tfds": tfds}
    for name, lister, splits, tfds in (
        ("voc2012", "deeplab_tf.data.voc:list_voc2012", ("train", "val"), True),
        ("voc2012_aug", "deeplab_tf.data.voc:list_voc2012_aug", ("train_aug", "val"), True),
        ("cityscapes", "deeplab_tf.data.cityscapes:list_cityscapes", ("train", "val"), True),
        ("pascal_context", "deeplab_tf.data.context:list_pascal_context", ("train", "val"), False),
        ("person_part", "deeplab_tf.data.person_part:list_person_part", ("train", "val"), False),
        ("cocostuff10k", "deeplab_tf.data.cocostuff:list_cocostuff10k", ("train", "test"), True),
        ("cocostuff164k", "deeplab_tf.data.cocostuff:list_cocostuff164k", ("train", "val"), True),
        ("coco2014", "deeplab_tf.data.coco:list_coco2014", ("train", "val"), False),
        ("folder", "deeplab_tf.data.folder:list_folder", ("train",), False),
        ("synthetic", None, (), False),
    )
}

#: Every name :func:`deeplab_tf.data.load_dataset` accepts.
DATASET_NAMES = tuple(DATASETS)
#: The datasets read from files on disk (all but ``synthetic``).
FILE_DATASETS = tuple(n for n, d in DATASETS.items() if d["lister"])
#: The datasets with a TFDS builder.
TFDS_DATASETS = tuple(n for n, d in DATASETS.items() if d["tfds"])


def list_datasets() -> list[str]:
    """Names accepted by :func:`deeplab_tf.data.load_dataset`."""
    return list(DATASET_NAMES)


def lister(name: str):
    """The listing function of a file dataset (``KeyError`` for another name)."""
    module, func = DATASETS[name]["lister"].split(":")
    return getattr(importlib.import_module(module), func)


def list_dataset(
    name: str, split: str = "train", root=None, pseudo_labels=None, **kwargs
) -> DatasetListing:
    """Finds the examples of a dataset split on disk without decoding them.

    Args:
        name: a dataset name from :func:`list_datasets` (not ``"synthetic"``).
        split: split name (dataset specific).
        root: dataset folder.
        pseudo_labels: a folder of label PNGs (named by image stem or example id) replacing
            the dataset's labels (:mod:`deeplab_tf.data.pseudo`); the dataset's own label
            files are then not needed.
        **kwargs: dataset-specific options (``sbd_root``, ``aug_dir``, ``list_file``,
            ``label_dir``, ``label_type``, ``num_classes``, ``class_names``, ``palette``...).

    Returns:
        DatasetListing with the examples, label mapping, DatasetInfo and listing problems.
    """
    if name not in FILE_DATASETS:
        raise ValueError(
            f"Unknown dataset {name!r}; expected one of {sorted(FILE_DATASETS)}. "
            f"Received: name={name!r}"
        )
    if pseudo_labels is None:
        return lister(name)(root=root, split=split, **kwargs)
    from deeplab_tf.data.listing import labels_replaced
    from deeplab_tf.data.pseudo import apply_pseudo_labels, label_folder_stems

    label_folder_stems(pseudo_labels)  # a bad folder is named before the dataset is listed
    with labels_replaced():
        listing = lister(name)(root=root, split=split, **kwargs)
    return apply_pseudo_labels(listing, pseudo_labels, split)


def list_split_examples(
    name: str, split: str = "train", root=None, limit=None, labels: bool = True, **kwargs
):
    """:func:`list_dataset` for a command that runs over a split: the examples to run, checked.

    Args:
        name, split, root, **kwargs: as :func:`list_dataset`.
        limit: the first N examples only (None: all).
        labels: whether the dataset's label files are needed (``evaluate``); False lists the
            images only (``predict``: a split whose labels are absent, or not yet made).

    Returns:
        ``(listing, examples)``: the :class:`DatasetListing` and its first ``limit`` examples.

    Raises:
        ValueError: an unknown dataset, a missing root, missing files (named), or no examples.
    """
    import contextlib

    from deeplab_tf.data.listing import labels_replaced

    with contextlib.nullcontext() if labels else labels_replaced():
        listing = list_dataset(name, split=split, root=root, **kwargs)
    if listing.problems:
        raise ValueError(
            f"{len(listing.problems)} example(s) of dataset {name!r} ({split}) have missing "
            f"files: {listing.problems[0]['error']}"
        )
    examples = listing.examples[:limit] if limit else listing.examples
    if not examples:
        raise ValueError(f"dataset {name!r} ({split}) has no examples. Received: root={root!r}")
    return listing, examples
