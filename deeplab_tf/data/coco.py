"""COCO 2014 semantic masks (81 classes) made from the instances JSON, cached as PNGs once.

Layout read: ``annotations/instances_{train,val}2014.json`` and the images in
``{train,val}2014/`` (or ``images/{train,val}2014/``) under the root; 82,783 / 40,504 images.
Classes: 0 = background, then the JSON's categories in the order of their ids (COCO's 80:
person = 1 ... toothbrush = 80, :data:`COCO_CLASSES`). Example ids are COCO's image ids written
with 12 digits (``000000000009``), the names COCO 2017 gives its files and the
weakly-supervised literature its ``coco_seg_anno/<id>.png`` masks, so a pseudo-label folder named
either way (by this id or by the image's file stem) matches.

How a mask is made from the annotations of one image (rule version :data:`RULE_VERSION`):

- every annotation's ``segmentation`` (polygons, uncompressed or compressed RLE) is decoded by
  ``pycocotools`` at the image's size;
- instances are painted from the largest (pixel count) to the smallest, so where two overlap
  the smaller one wins (a person in front of a bus keeps its pixels); of two equal sizes the
  later one in the JSON wins;
- crowd regions (``iscrowd: 1``): with ``crowd="ignore"`` (default) their pixels that no
  non-crowd instance covers become 255 (ignored by the loss and the metrics); with
  ``crowd="class"`` they are painted with their category like the instances (same order);
- everything else is background (0).

Conventions elsewhere: torchvision's segmentation reference keeps crowd regions as their class
and sets pixels covered by two instances to 255; PyTorch-Encoding and several weakly-supervised
conversion scripts paint the first annotation that claims a pixel; converters offering the
choice advise ignoring crowd regions because their outlines are coarse. Ignoring crowds and
letting the smaller instance win keeps every pixel labelled once with the most specific
object, and never trains on a crowd outline.

Cache: ``<cache_dir>/<split>2014-<crowd>-<key>/`` with ``index.json`` (image list and class
names, from the JSON) and ``masks/<id>.png`` (palette PNGs of class ids). ``cache_dir``
defaults to ``datasets/coco2014`` under the package's cache root (``$DEEPLAB_TF_CACHE``, else
``$KERAS_HOME/deeplab_tf``, i.e. ``~/.keras/deeplab_tf``). ``key`` hashes the JSON's resolved
path, size and modification time and the rule version, so a changed JSON or rule gets a new
folder. Every file is written atomically; masks already there are reused (a second run, or a
run after an interrupted one, loads no JSON when nothing is missing), and processes building
the same folder wait for each other (a lock on the folder).
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os

import numpy as np

from deeplab_tf.data.info import DatasetInfo
from deeplab_tf.data.listing import (
    DatasetListing,
    check_root,
    first_existing,
    labels_are_replaced,
    make_examples,
)
from deeplab_tf.data.palettes import COCOSTUFF_CLASSES, COCOSTUFF_UNUSED, IGNORE_LABEL, voc_palette
from deeplab_tf.data.readers import DatasetError, LabelMap, read_id_list

logger = logging.getLogger("deeplab_tf.data")

#: Version of the rasterisation rule in the module docstring (part of the cache key).
RULE_VERSION = 1
CROWD_MODES = ("ignore", "class")
COCO2014_SPLITS = ("train", "val")
INDEX_FORMAT = 1

#: Background and COCO's 80 thing categories in the order of their ids (COCO-Stuff's thing ids
#: are COCO's category ids minus one; the eleven unused ones are not COCO categories).
COCO_CLASSES = ("background",) + tuple(
    name for i, name in enumerate(COCOSTUFF_CLASSES[:91]) if i not in COCOSTUFF_UNUSED
)


def _mask_api():
    try:
        from pycocotools import mask
    except ImportError as err:
        raise ImportError(
            'Making COCO semantic masks needs pycocotools: pip install "deeplab_tf[coco]"'
        ) from err
    return mask


def default_cache_dir() -> str:
    """``datasets/coco2014`` under the package's cache root (see the module docstring)."""
    from deeplab_tf.weights.cache import cache_dir

    return os.path.join(cache_dir(), "datasets", "coco2014")


def cache_folder(json_path: str, split: str, crowd: str, cache_dir=None) -> str:
    """The cache folder of one instances JSON, split and crowd rule."""
    st = os.stat(json_path)
    text = f"{os.path.realpath(json_path)}|{st.st_size}|{st.st_mtime_ns}|rule{RULE_VERSION}"
    key = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    base = os.path.abspath(os.path.expanduser(os.fspath(cache_dir or default_cache_dir())))
    return os.path.join(base, f"{split}2014-{crowd}-{key}")


def _load_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as err:
        raise DatasetError(
            f"{path}: cannot read the instances JSON ({type(err).__name__}: {err}).",
            path=path,
            kind="corrupt",
        ) from err
    keys = ("images", "annotations", "categories")
    if not isinstance(data, dict) or any(not isinstance(data.get(k), list) for k in keys):
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DatasetError(
            f"{path}: not a COCO instances JSON: expected lists 'images', 'annotations' and "
            f"'categories'. Received: {got}",
            path=path,
        )
    return data


def _field(obj, key, kind, path, what):
    value = obj.get(key) if isinstance(obj, dict) else None
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if not ok or (kind is int and value < 0) or (kind is str and not value):
        raise DatasetError(
            f"{path}: {what} needs {key!r} ({'a non-negative int' if kind is int else 'text'}). "
            f"Received: {obj!r}"[:400],
            path=path,
        )
    return value


def index_from_json(data: dict, path: str) -> dict:
    """The image list and categories of an instances JSON (what listing needs)."""
    cats = {}
    for c in data["categories"]:
        cid = _field(c, "id", int, path, "a category")
        if cid in cats:
            raise DatasetError(f"{path}: category id {cid} appears twice.", path=path)
        cats[cid] = _field(c, "name", str, path, "a category")
    if not 1 <= len(cats) <= 254:
        raise DatasetError(
            f"{path}: {len(cats)} categories; expected 1..254 (COCO has 80).", path=path
        )
    images, seen = [], set()
    for im in data["images"]:
        iid = _field(im, "id", int, path, "an image")
        if iid in seen:
            raise DatasetError(f"{path}: image id {iid} appears twice.", path=path)
        seen.add(iid)
        name = _field(im, "file_name", str, path, f"image {iid}")
        h = _field(im, "height", int, path, f"image {iid}")
        w = _field(im, "width", int, path, f"image {iid}")
        images.append([iid, name, h, w])
    return {
        "format": INDEX_FORMAT,
        "rule": RULE_VERSION,
        "categories": [[cid, cats[cid]] for cid in sorted(cats)],
        "images": sorted(images),
    }


def _read_index(folder: str):
    path = os.path.join(folder, "index.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError):
        return None  # unreadable: rebuilt from the JSON
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        return None
    return index


def decode_segmentation(segmentation, height: int, width: int, where: str) -> np.ndarray:
    """An annotation's ``segmentation`` (polygons, uncompressed or compressed RLE) as an
    ``(H, W)`` bool mask.

    Raises:
        DatasetError: a malformed segmentation or an RLE of another size, naming ``where``.
    """
    api = _mask_api()

    def bad(reason):
        return DatasetError(f"{where}: {reason}. Received: {segmentation!r}"[:500], path=where)

    if isinstance(segmentation, list):
        if not segmentation:
            return np.zeros((height, width), bool)
        for poly in segmentation:
            if (
                not isinstance(poly, list)
                or len(poly) < 6
                or len(poly) % 2
                or not all(isinstance(v, (int, float)) for v in poly)
            ):
                raise bad("a polygon must be a list of at least 3 (x, y) pairs")
        rle = api.merge(api.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and {"counts", "size"} <= set(segmentation):
        if list(segmentation["size"]) != [height, width]:
            raise bad(f"RLE size differs from the image's [{height}, {width}]")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            rle = api.frPyObjects(segmentation, height, width)
        elif isinstance(counts, (str, bytes)):
            rle = {"size": [height, width], "counts": counts}
            if isinstance(counts, str):
                rle["counts"] = counts.encode("ascii")
        else:
            raise bad("RLE counts must be a list of run lengths or a compressed string")
    else:
        raise bad("expected a list of polygons or an RLE {'counts', 'size'}")
    try:
        mask = api.decode(rle)
    except Exception as err:  # noqa: BLE001 - pycocotools raises plain Exceptions
        raise bad(f"cannot decode ({type(err).__name__}: {err})") from err
    if mask.shape != (height, width):
        raise bad(f"decoded to {mask.shape}, expected ({height}, {width})")
    return mask.astype(bool)


def semantic_mask(annotations, height: int, width: int, cat_index: dict, crowd="ignore", where=""):
    """The ``(H, W)`` uint8 class-id mask of one image (the rule in the module docstring).

    Args:
        annotations: the image's annotation dicts, in JSON order.
        height, width: the image size.
        cat_index: category id -> class id (1..).
        crowd: ``"ignore"`` (crowd regions -> 255 where no instance covers them) or
            ``"class"`` (crowd regions painted as instances).
        where: the JSON path, for error messages.

    Returns:
        uint8 mask: 0 background, class ids, 255 ignored crowd pixels.
    """
    out = np.zeros((height, width), np.uint8)
    instances, crowds = [], []
    for order, ann in enumerate(annotations):
        label = f"{where}: annotation {ann.get('id', order)} (image {ann.get('image_id')})"
        mask = decode_segmentation(ann.get("segmentation"), height, width, label)
        if ann.get("iscrowd", 0) and crowd == "ignore":
            crowds.append(mask)
        else:
            instances.append((-int(mask.sum()), order, mask, cat_index[ann["category_id"]]))
    for mask in crowds:
        out[mask] = IGNORE_LABEL
    for _, _, mask, value in sorted(instances, key=lambda t: t[:2]):
        out[mask] = value
    return out


def _annotations_by_image(data, path, cat_index, image_ids):
    by_image = collections.defaultdict(list)
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise DatasetError(f"{path}: annotation #{k} is not an object.", path=path)
        where = f"annotation {ann.get('id', f'#{k}')}"
        iid = _field(ann, "image_id", int, path, where)
        cid = _field(ann, "category_id", int, path, where)
        if cid not in cat_index:
            raise DatasetError(
                f"{path}: {where} has category_id {cid}, not one of the JSON's categories "
                f"({sorted(cat_index)[:5]}...).",
                path=path,
            )
        if iid not in image_ids:
            raise DatasetError(
                f"{path}: {where} refers to image_id {iid}, which 'images' does not list.",
                path=path,
            )
        by_image[iid].append(ann)
    return by_image


def _write_masks(folder, index, todo, data, json_path, crowd, workers=None):
    import concurrent.futures

    from deeplab_tf.atomic import atomic_write
    from deeplab_tf.visualize import label_image

    _mask_api()  # the ImportError before any work
    cat_index = {cid: i + 1 for i, (cid, _) in enumerate(index["categories"])}
    image_ids = {e[0] for e in index["images"]}
    by_image = _annotations_by_image(data, json_path, cat_index, image_ids)
    palette = voc_palette()
    logger.info("Writing %d COCO semantic masks to %s", len(todo), folder)

    def write(entry):
        iid, _, h, w = entry
        mask = semantic_mask(by_image.get(iid, []), h, w, cat_index, crowd, json_path)
        img = label_image(mask, palette)
        path = os.path.join(folder, "masks", f"{iid:012d}.png")
        atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))

    # PNG compression and the atomic write's fsync release the GIL: threads overlap them.
    workers = workers or min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for n, _ in enumerate(pool.map(write, todo), 1):
            if n % 1000 == 0:
                logger.info("COCO masks: %d / %d written", n, len(todo))


def list_coco2014(
    root=None,
    split: str = "train",
    crowd: str = "ignore",
    cache_dir=None,
    list_file=None,
    **unused,
) -> DatasetListing:
    """Lists a COCO 2014 split with semantic masks made from its instances JSON (cached).

    Args:
        root: folder holding ``annotations/instances_<split>2014.json`` and the images
            (``<split>2014/`` or ``images/<split>2014/``).
        split: ``"train"`` or ``"val"`` (``"train2014"``/``"val2014"`` too).
        crowd: ``"ignore"`` (crowd regions -> 255) or ``"class"`` (see the module docstring).
        cache_dir: where the masks are cached (default: the package cache, see above).
        list_file: image ids or file stems, one per line (first column), selecting a subset
            (e.g. the weakly-supervised lists of images with at least one object).

    Returns:
        DatasetListing of 1 + (number of categories) classes.

    Raises:
        DatasetError: missing folders or JSON, a malformed JSON or annotation (named), or a
            cache folder that cannot be created.
        ImportError: masks must be made and pycocotools is not installed.
    """
    if unused:
        raise ValueError(f"Unexpected arguments for dataset 'coco2014'. Received: {unused!r}")
    split = {"train2014": "train", "val2014": "val"}.get(split, split)
    if split not in COCO2014_SPLITS:
        raise ValueError(
            f"coco2014 split must be one of {COCO2014_SPLITS}. Received: split={split!r}"
        )
    if crowd not in CROWD_MODES:
        raise ValueError(f"crowd must be one of {CROWD_MODES}. Received: crowd={crowd!r}")
    root = check_root(root, "coco2014")
    name = f"instances_{split}2014.json"
    json_path = first_existing(
        [os.path.join(root, "annotations", name), os.path.join(root, name)],
        f"the COCO {split}2014 instances JSON",
        kind="file",
    )
    image_dir = first_existing(
        [os.path.join(root, f"{split}2014"), os.path.join(root, "images", f"{split}2014")],
        f"the COCO {split}2014 images",
    )
    folder = cache_folder(json_path, split, crowd, cache_dir)
    try:
        os.makedirs(os.path.join(folder, "masks"), exist_ok=True)
    except OSError as err:
        raise DatasetError(
            f"Cannot create the COCO mask cache {folder!r} ({err}); pass cache_dir= (or set "
            "$DEEPLAB_TF_CACHE) to a writable folder.",
            path=folder,
        ) from err

    from deeplab_tf.atomic import folder_lock, write_json

    data = None
    index = _read_index(folder)
    if index is None:
        with folder_lock(folder):
            index = _read_index(folder)
            if index is None:
                data = _load_json(json_path)
                index = index_from_json(data, json_path)
                write_json(os.path.join(folder, "index.json"), index)
    entries = [tuple(e) for e in index["images"]]
    problems = []
    if list_file is not None:
        if not os.path.isfile(list_file):
            raise DatasetError(f"{list_file}: split list file not found.", path=list_file)
        by_key = {}
        for e in entries:
            by_key[f"{e[0]:012d}"] = e
            by_key[os.path.splitext(e[1])[0]] = e
        selected = []
        for key in read_id_list(list_file):
            key = os.path.splitext(key)[0]
            if key in by_key:
                selected.append(by_key[key])
            else:
                problems.append(
                    {
                        "id": key,
                        "path": list_file,
                        "kind": "missing",
                        "error": f"{list_file}: {key!r} is not an image of {json_path}.",
                    }
                )
        entries = selected

    def mask_path(e):
        return os.path.join(folder, "masks", f"{e[0]:012d}.png")

    if not labels_are_replaced() and any(not os.path.isfile(mask_path(e)) for e in entries):
        with folder_lock(folder):
            todo = [e for e in entries if not os.path.isfile(mask_path(e))]
            if todo:
                data = data if data is not None else _load_json(json_path)
                _write_masks(folder, index, todo, data, json_path, crowd)
    items = [(f"{e[0]:012d}", os.path.join(image_dir, e[1]), mask_path(e)) for e in entries]
    examples, missing = make_examples(items, "png")
    class_names = ("background",) + tuple(n for _, n in index["categories"])
    info = DatasetInfo(
        name="coco2014", class_names=class_names, palette=voc_palette(), num_examples=len(examples)
    )
    return DatasetListing(examples, LabelMap.identity(len(class_names)), info, problems + missing)
