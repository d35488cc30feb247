"""What a dataset is on disk: its examples, how to map its labels, its metadata, its problems.

Each dataset module (``voc``, ``cityscapes``, ``context``, ``person_part``, ``cocostuff``,
``coco``, ``folder``) turns a root folder into a :class:`DatasetListing` without decoding anything
(``coco`` makes its masks once); :mod:`deeplab_tf.data.loader` turns a listing into a
``tf.data.Dataset`` and ``deeplab-tf data check`` decodes every example.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os

from deeplab_tf.data.info import DatasetInfo
from deeplab_tf.data.readers import DatasetError, Example, LabelMap


@dataclasses.dataclass
class DatasetListing:
    """The examples of one split, found on disk.

    Attributes:
        examples: the examples whose files exist.
        label_map: raw stored values -> train ids.
        info: class names, palette, number of examples.
        problems: ``{"id", "path", "kind", "error"}`` dicts for examples dropped at listing time
            (missing image or label files); empty when everything was found.
        rgb_palette: colours accepted in RGB masks (folder datasets), or None.
        warnings: ``{"id", "path", "kind", "error"}`` dicts for files that are not examples but look
            wrong (a mask without an image); reported, never fatal.
    """

    examples: list
    label_map: LabelMap
    info: DatasetInfo
    problems: list = dataclasses.field(default_factory=list)
    rgb_palette: object = None
    warnings: list = dataclasses.field(default_factory=list)


_LABELS_REPLACED = contextvars.ContextVar("deeplab_tf_labels_replaced", default=False)


@contextlib.contextmanager
def labels_replaced():
    """While active, listing functions do not require the dataset's own label files.

    Used to list a split whose labels come from elsewhere (pseudo-labels,
    :mod:`deeplab_tf.data.pseudo`): :func:`make_examples` reports only missing images, and
    datasets whose labels are generated (COCO's masks) skip generating them.
    """
    token = _LABELS_REPLACED.set(True)
    try:
        yield
    finally:
        _LABELS_REPLACED.reset(token)


def labels_are_replaced() -> bool:
    """Whether a :func:`labels_replaced` block is active."""
    return _LABELS_REPLACED.get()


def first_existing(candidates, what: str, kind: str = "dir") -> str:
    """Returns the first existing path among ``candidates`` or raises a clear error."""
    check = os.path.isdir if kind == "dir" else os.path.isfile
    for c in candidates:
        if c and check(c):
            return c
    tried = ", ".join(repr(c) for c in candidates if c)
    raise DatasetError(f"Cannot find {what}. Looked for: {tried}")


def check_root(root, name: str) -> str:
    if root is None:
        raise ValueError(
            f"Dataset {name!r} reads files the user has on disk: pass root=<folder>. Received: None"
        )
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if not os.path.isdir(root):
        raise DatasetError(f"Dataset root {root!r} is not a directory.", path=root)
    return root


def make_examples(items, label_format: str = "png"):
    """Builds examples from ``(id, image_path, label_path)`` triples, separating missing files.

    Inside :func:`labels_replaced`, only the images must exist.

    Returns:
        ``(examples, problems)``: the examples whose files all exist, and one problem dict per
        example with a missing file.
    """
    examples, problems = [], []
    required = (0,) if labels_are_replaced() else (0, 1)
    for ex_id, image_path, label_path in items:
        fmt = label_format(label_path) if callable(label_format) else label_format
        paths = (image_path, label_path)
        missing = [paths[i] for i in required if paths[i] is not None]
        missing = [p for p in missing if not os.path.isfile(p)]
        if missing:
            kind = "image" if missing[0] == image_path else "label"
            problems.append(
                {
                    "id": ex_id,
                    "path": missing[0],
                    "kind": "missing",
                    "error": f"{missing[0]}: {kind} file not found.",
                }
            )
            continue
        examples.append(Example(ex_id, image_path, label_path, fmt))
    return examples, problems


def parse_list_file(path: str, data_root: str):
    """Reads a split list: either one id per line or DeepLab's ``/image /label`` pairs.

    Args:
        path: the list file.
        data_root: folder that pair paths are relative to (their leading ``/`` is ignored).

    Returns:
        list of ``(id, image_path or None, label_path or None)``; ``None`` entries are to be
        filled by the dataset from the id.
    """
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: split list file not found.", path=path)
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) == 1:
                out.append((parts[0], None, None))
            elif len(parts) == 2 and ("/" in parts[0] or "." in parts[0]):
                image = os.path.join(data_root, parts[0].lstrip("/"))
                label = os.path.join(data_root, parts[1].lstrip("/"))
                out.append((os.path.splitext(os.path.basename(image))[0], image, label))
            else:
                raise DatasetError(
                    f"{path}:{lineno}: expected an id or '/image /label'. "
                    f"Received: {line.strip()!r}",
                    path=path,
                )
    return out
