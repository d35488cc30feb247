"""Pseudo-labels: a folder of label PNGs that replaces a dataset's ground truth.

The weakly-supervised workflow trains DeepLab on masks made by another method (CAMs refined
by a CRF or an affinity network) for the images of a standard split. ``pseudo_labels=FOLDER``
(``load_dataset``, the training config's ``data`` section, ``deeplab-tf data check
--pseudo-labels``) keeps the dataset's images and split and takes every example's label from
``FOLDER/<image file stem>.png``, else ``FOLDER/<example id>.png`` (for COCO 2014 the id is the
12-digit image id, the name of the literature's ``coco_seg_anno`` masks).

The PNGs hold train ids (palette or grey PNGs of ``0..C-1`` and 255 = ignore) of the dataset's
classes, whatever the dataset stores on disk (Cityscapes label ids, COCO-Stuff 10k's 1-based
``.mat`` ids, PASCAL-Context's 459 ids...). The dataset's own label files are not needed.

What is compared against the image set: an image without a label is a problem (``missing``;
training stops before it starts, naming the file, unless ``on_error="skip"``); a PNG without an
image of the split is a warning (``extra_label``; a folder made for ``train_aug`` may serve a
subset of it); label sizes and values are checked when each example is decoded (``data check``
reports every ``size_mismatch`` and ``unknown_values``).
"""

from __future__ import annotations

import dataclasses
import os

from deeplab_tf.data.listing import DatasetListing
from deeplab_tf.data.readers import DatasetError, Example, LabelMap


def label_folder_stems(folder) -> dict:
    """``{stem: path}`` of the ``.png`` files in ``folder``.

    Raises:
        DatasetError: ``folder`` is not a directory.
    """
    folder = os.path.abspath(os.path.expanduser(os.fspath(folder)))
    if not os.path.isdir(folder):
        raise DatasetError(
            f"pseudo_labels={folder!r} is not a directory (expected a folder of label PNGs "
            "named by image stem).",
            path=folder,
        )
    return {
        os.path.splitext(n)[0]: os.path.join(folder, n)
        for n in sorted(os.listdir(folder))
        if n.lower().endswith(".png") and os.path.isfile(os.path.join(folder, n))
    }


def apply_pseudo_labels(listing: DatasetListing, folder, split=None) -> DatasetListing:
    """Replaces the label of every example of ``listing`` with its PNG in ``folder``.

    Args:
        listing: a listing made inside :func:`deeplab_tf.data.listing.labels_replaced` (so
            that examples without ground truth are kept).
        folder: the pseudo-label folder.
        split: the split name, for messages.

    Returns:
        A new DatasetListing: PNG labels read as the dataset's class ids (identity map),
        missing labels as problems, labels without an image as warnings.
    """
    labels = label_folder_stems(folder)
    folder = os.path.abspath(os.path.expanduser(os.fspath(folder)))
    info = listing.info
    what = f"{info.name}" + (f" split {split!r}" if split else "")
    examples, problems, used = [], list(listing.problems), set()
    for ex in listing.examples:
        stem = os.path.splitext(os.path.basename(ex.image_path))[0]
        key = stem if stem in labels else ex.id if ex.id in labels else None
        if key is None:
            path = os.path.join(folder, f"{stem}.png")
            problems.append(
                {
                    "id": ex.id,
                    "path": path,
                    "kind": "missing",
                    "error": f"{path}: pseudo-label not found for image {ex.image_path} "
                    f"(looked for {stem}.png" + (f" and {ex.id}.png)." if ex.id != stem else ")."),
                }
            )
            continue
        used.add(key)
        examples.append(Example(ex.id, ex.image_path, labels[key], "png"))
    warnings = list(listing.warnings) + [
        {
            "id": stem,
            "path": labels[stem],
            "kind": "extra_label",
            "error": f"{labels[stem]}: pseudo-label has no image in {what}.",
        }
        for stem in sorted(set(labels) - used)
    ]
    label_map = LabelMap(
        {**{i: i for i in range(info.num_classes)}, info.ignore_label: info.ignore_label},
        info.num_classes,
        info.ignore_label,
        description=f"{info.name} class ids 0..{info.num_classes - 1} and "
        f"{info.ignore_label} (ignore) in pseudo-label PNGs",
    )
    return DatasetListing(
        examples,
        label_map,
        dataclasses.replace(info, num_examples=len(examples)),
        problems,
        listing.rgb_palette,
        warnings,
    )
