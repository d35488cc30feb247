"""COCO-Stuff 10k (.mat) and 164k (PNG), and COCO 2014 semantic masks made from a tiny
instances JSON (polygons, compressed and uncompressed RLE, overlaps, crowds), on fake trees."""

import json
import os

import numpy as np
import pytest

from deeplab_tf.data import load_dataset
from deeplab_tf.data.catalog import list_dataset
from deeplab_tf.data.check import check_dataset
from deeplab_tf.data.palettes import COCOSTUFF_CLASSES
from deeplab_tf.data.readers import DatasetError, decode_example
from tests import _data_utils as u


def decoded(listing):
    return {ex.id: decode_example(ex, listing.label_map) for ex in listing.examples}


def stuff_train_ids(s):
    """COCO-Stuff 10k's conversion, written out: ``S - 1`` with the unlabeled -1 -> 255."""
    out = np.asarray(s, np.int64) - 1
    out[out == -1] = 255
    return out.astype(np.uint8)


# --- COCO-Stuff 10k ----------------------------------------------------------------------------

TRAIN10K = ["COCO_train2014_000000000077", "COCO_train2014_000000000081"]
TEST10K = ["COCO_train2014_000000000136"]


@pytest.fixture
def stuff10k(tmp_path, rng):
    root = str(tmp_path / "cocostuff-10k-v1.1")
    return root, u.make_cocostuff10k(root, TRAIN10K, TEST10K, rng)


def test_cocostuff10k_mat_to_train_ids(stuff10k, tmp_path):
    root, written = stuff10k
    listing = list_dataset("cocostuff10k", "train", str(tmp_path))  # finds the nested folder
    assert [e.id for e in listing.examples] == TRAIN10K
    info = listing.info
    assert info.num_classes == 182 and info.class_names == COCOSTUFF_CLASSES
    assert info.ignore_label == 255 and info.num_examples == 2
    for name, (image, label) in decoded(listing).items():
        s = written[name][1]
        np.testing.assert_array_equal(label, stuff_train_ids(s))
        np.testing.assert_array_equal(label[0, :3], [255, 0, 181])
        assert np.abs(image.astype(int) - written[name][0]).max() <= 8  # JPEG
    ds, info = load_dataset("cocostuff10k", "test", root=root)
    (element,) = list(ds.as_numpy_iterator())
    assert element["id"].decode() == TEST10K[0]
    np.testing.assert_array_equal(element["label"], stuff_train_ids(written[TEST10K[0]][1]))
    report = check_dataset("cocostuff10k", root)
    assert report["num_problems"] == 0 and set(report["splits"]) == {"train", "test"}
    assert report["splits"]["train"]["ignore_pixels"] == sum(
        int((written[n][1] == 0).sum()) for n in TRAIN10K
    )


def test_cocostuff10k_v73_hdf5_mat_is_read(stuff10k):
    root, written = stuff10k
    name = TRAIN10K[1]
    s = written[name][1]
    path = os.path.join(root, "annotations", f"{name}.mat")
    u.write_mat_v73(path, {"S": s.astype(np.uint16), "regionMapStuff": np.zeros_like(s)})
    with open(path, "rb") as f:
        assert f.read(10) == b"MATLAB 7.3"
    label = decoded(list_dataset("cocostuff10k", "train", root))[name][1]
    np.testing.assert_array_equal(label, stuff_train_ids(s))
    u.write_mat_v73(path, {"L": s})
    with pytest.raises(DatasetError, match=r"v7.3 .mat file has no variable 'S'.*\['L'\]"):
        decoded(list_dataset("cocostuff10k", "train", root))
    # Datasets whose releases are v5/v7 .mat structs say what the file is.
    from deeplab_tf.data.readers import read_sbd_mat

    with pytest.raises(DatasetError, match=r"\.mat: a MATLAB v7.3 \(HDF5\) .mat file"):
        read_sbd_mat(path)


def test_cocostuff10k_bad_files_are_named(stuff10k, tmp_path):
    root, written = stuff10k
    ann = os.path.join(root, "annotations")
    import scipy.io

    scipy.io.savemat(os.path.join(ann, f"{TRAIN10K[0]}.mat"), {"labels": np.zeros((12, 16))})
    bad = written[TRAIN10K[1]][1].copy()
    bad[2, 2] = 200
    u.write_cocostuff_mat(os.path.join(ann, f"{TRAIN10K[1]}.mat"), bad)
    with open(os.path.join(ann, f"{TEST10K[0]}.mat"), "wb") as f:
        f.write(b"not a mat file at all")
    report = check_dataset("cocostuff10k", root)
    problems = {
        p["id"]: p for s in report["splits"].values() for p in s["problems"]
    }  # every bad file, with its reason
    assert problems[TRAIN10K[0]]["kind"] == "format"
    assert "has no field 'S'" in problems[TRAIN10K[0]]["error"]
    assert f"{TRAIN10K[0]}.mat" in problems[TRAIN10K[0]]["error"]
    assert problems[TRAIN10K[1]]["kind"] == "unknown_values"
    assert "[200]" in problems[TRAIN10K[1]]["error"] and "1..182" in problems[TRAIN10K[1]]["error"]
    assert problems[TEST10K[0]]["kind"] == "corrupt"
    with pytest.raises(ValueError, match="split must be one of"):
        list_dataset("cocostuff10k", "val", root)
    with pytest.raises(DatasetError, match="images/ folder"):
        list_dataset("cocostuff10k", "train", str(tmp_path / "cocostuff-10k-v1.1" / "images"))
    os.remove(os.path.join(ann, f"{TRAIN10K[0]}.mat"))
    with pytest.raises(DatasetError, match=rf"{TRAIN10K[0]}.mat: label file not found"):
        load_dataset("cocostuff10k", "train", root=root)


# --- COCO-Stuff 164k ---------------------------------------------------------------------------


def test_cocostuff164k_pngs(tmp_path, rng):
    root = str(tmp_path)
    train = u.make_cocostuff164k(root, "train2017", ["000000000009", "000000000025"], rng)
    val = u.make_cocostuff164k(root, "val2017", ["000000000139"], rng)
    for split in ("train", "train2017"):
        listing = list_dataset("cocostuff164k", split, root)
        assert [e.id for e in listing.examples] == sorted(train)
    assert listing.info.num_classes == 182 and listing.info.class_names[181] == "wood"
    for stem, (_, label) in decoded(listing).items():
        np.testing.assert_array_equal(label, train[stem][1])
    ds, _ = load_dataset("cocostuff164k", "val2017", root=root)
    np.testing.assert_array_equal(next(ds.as_numpy_iterator())["label"], val["000000000139"][1])

    bad = train["000000000025"][1].copy()
    bad[1, 1] = 182
    u.write_png(os.path.join(root, "annotations", "train2017", "000000000025.png"), bad)
    u.write_png(os.path.join(root, "annotations", "val2017", "000000000632.png"), bad)
    report = check_dataset("cocostuff164k", root)
    (problem,) = report["splits"]["train"]["problems"]
    assert problem["kind"] == "unknown_values" and "[182]" in problem["error"]
    assert "0..181 and 255" in problem["error"]
    (warning,) = report["splits"]["val"]["warnings"]
    assert warning["kind"] == "orphan_mask" and "000000000632.png" in warning["path"]
    with pytest.raises(ValueError, match="train2017"):
        list_dataset("cocostuff164k", "test2017", root)


# --- COCO 2014 semantic masks -----------------------------------------------------------------

H, W = 20, 24
CATEGORIES = [
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
    {"id": 18, "name": "dog", "supercategory": "animal"},
]  # class ids: person 1, car 2, dog 3 (the order of the category ids)


def rect(x0, y0, x1, y1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def uncompressed_rle(mask):
    """COCO's uncompressed RLE: run lengths over the column-major pixels, zeros first."""
    flat = np.asarray(mask, np.uint8).ravel(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.r_[0, change, flat.size]
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0] + runs
    return {"size": [H, W], "counts": runs}


def compressed_rle(mask):
    from pycocotools import mask as api

    rle = api.encode(np.asfortranarray(np.asarray(mask, np.uint8)))
    return {"size": [H, W], "counts": rle["counts"].decode("ascii")}


def poly(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def coco_tree(root, rng, annotations=None, crowd_image=True):
    """``annotations/instances_train2014.json`` (image 9 with overlapping instances and a crowd,
    image 25 without annotations) and the two images; returns the expected masks."""
    pytest.importorskip("pycocotools")
    small_person = rect(6, 4, 10, 10)  # 24 px, first in the JSON
    big_car = rect(2, 2, 20, 16)  # 252 px, later: the smaller person still wins
    dog = rect(12, 3, 16, 8)  # 20 px, RLE (compressed)
    tie_person = rect(14, 4, 18, 9)  # 20 px too, later than the dog: wins the overlap
    crowd = rect(0, 14, 24, 20)  # crowd region of persons, partly under the car
    anns = annotations or [
        {"id": 101, "image_id": 9, "category_id": 1, "segmentation": poly(6, 4, 10, 10),
         "iscrowd": 0},
        {"id": 102, "image_id": 9, "category_id": 3, "segmentation": poly(2, 2, 20, 16),
         "iscrowd": 0},
        {"id": 103, "image_id": 9, "category_id": 18, "segmentation": compressed_rle(dog),
         "iscrowd": 0},
        {"id": 104, "image_id": 9, "category_id": 1, "segmentation": uncompressed_rle(tie_person),
         "iscrowd": 0},
        {"id": 105, "image_id": 9, "category_id": 1, "segmentation": uncompressed_rle(crowd),
         "iscrowd": 1},
    ]  # fmt: skip
    data = {
        "info": {},
        "images": [
            {"id": 25, "file_name": "COCO_train2014_000000000025.jpg", "height": H, "width": W},
            {"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "height": H, "width": W},
        ],
        "annotations": anns,
        "categories": CATEGORIES,
    }
    path = os.path.join(root, "annotations", "instances_train2014.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)
    for iid in (9, 25):
        u.write_jpeg(
            os.path.join(root, "train2014", f"COCO_train2014_{iid:012d}.jpg"),
            u.smooth_image(rng, H, W),
        )
    expected = np.zeros((H, W), np.uint8)
    expected[crowd] = 255
    expected[big_car] = 2
    expected[small_person] = 1
    expected[dog] = 3
    expected[tie_person] = 1
    return path, {"000000000009": expected, "000000000025": np.zeros((H, W), np.uint8)}


def test_coco2014_masks_overlaps_crowds_and_cache(tmp_path, rng, monkeypatch):
    root, cache = str(tmp_path / "coco"), str(tmp_path / "cache")
    json_path, expected = coco_tree(root, rng)
    listing = list_dataset("coco2014", "train", root, cache_dir=cache)
    assert [e.id for e in listing.examples] == ["000000000009", "000000000025"]
    assert listing.info.class_names == ("background", "person", "car", "dog")
    got = decoded(listing)
    for key, mask in expected.items():
        np.testing.assert_array_equal(got[key][1], mask)
    # The pixels the rule decides, spelled out: person over car, the tie to the later one,
    # crowd -> 255 except under the car, the image without annotations all background.
    assert got["000000000009"][1][5, 7] == 1 and got["000000000009"][1][5, 15] == 1
    assert got["000000000009"][1][4, 12] == 3 and got["000000000009"][1][15, 5] == 2
    assert got["000000000009"][1][18, 0] == 255
    (folder,) = os.listdir(cache)
    assert folder.startswith("train2014-ignore-")
    masks = os.path.join(cache, folder, "masks")
    assert sorted(os.listdir(masks)) == ["000000000009.png", "000000000025.png"]
    assert not [n for n in os.listdir(os.path.join(cache, folder)) if n.startswith(".tmp")]
    stamps = {n: os.stat(os.path.join(masks, n)).st_mtime_ns for n in os.listdir(masks)}

    # A second run reads neither the JSON nor pycocotools: the index and the masks are reused.
    import deeplab_tf.data.coco as coco

    def no_json(path):
        raise AssertionError(f"the JSON was read again: {path}")

    monkeypatch.setattr(coco, "_load_json", no_json)
    monkeypatch.setattr(coco, "_mask_api", no_json)
    again = list_dataset("coco2014", "train", root, cache_dir=cache)
    assert [e.label_path for e in again.examples] == [e.label_path for e in listing.examples]
    assert {n: os.stat(os.path.join(masks, n)).st_mtime_ns for n in os.listdir(masks)} == stamps
    monkeypatch.undo()

    # A deleted mask is made again (and only it).
    os.remove(os.path.join(masks, "000000000009.png"))
    again = list_dataset("coco2014", "train", root, cache_dir=cache)
    np.testing.assert_array_equal(decoded(again)["000000000009"][1], expected["000000000009"])
    assert (
        os.stat(os.path.join(masks, "000000000025.png")).st_mtime_ns == stamps["000000000025.png"]
    )

    # crowd="class": the crowd region is a person instance (144 px, smaller than the car's
    # 252, so it wins where they overlap), in a cache folder of its own.
    by_class = list_dataset("coco2014", "train", root, cache_dir=cache, crowd="class")
    mask = decoded(by_class)["000000000009"][1]
    assert mask[18, 0] == 1 and mask[15, 5] == 1 and mask[12, 5] == 2 and 255 not in mask
    assert len(os.listdir(cache)) == 2

    # Through tf.data, and with a list of ids or stems selecting a subset.
    ids = tmp_path / "subset.txt"
    ids.write_text("COCO_train2014_000000000025 1 2\n000000000009\n000000000777\n")
    subset = list_dataset("coco2014", "train", root, cache_dir=cache, list_file=str(ids))
    assert [e.id for e in subset.examples] == ["000000000025", "000000000009"]
    ((problem),) = subset.problems
    assert problem["id"] == "000000000777" and "is not an image of" in problem["error"]
    ds, info = load_dataset("coco2014", "train", root=root, cache_dir=cache)
    labels = {e["id"].decode(): e["label"] for e in ds.as_numpy_iterator()}
    np.testing.assert_array_equal(labels["000000000009"], expected["000000000009"])
    assert info.num_classes == 4


def test_coco2014_default_cache_is_under_the_package_cache(tmp_path, rng, monkeypatch):
    root = str(tmp_path / "coco")
    _, expected = coco_tree(root, rng)
    monkeypatch.setenv("DEEPLAB_TF_CACHE", str(tmp_path / "pkgcache"))
    listing = list_dataset("coco2014", "train", root)
    base = str(tmp_path / "pkgcache" / "datasets" / "coco2014")
    assert all(e.label_path.startswith(base + os.sep) for e in listing.examples)
    report = check_dataset("coco2014", root, splits=["train"])
    assert report["num_problems"] == 0
    train = report["splits"]["train"]
    assert train["class_pixels"]["car"] == int((expected["000000000009"] == 2).sum())
    assert train["class_images"]["background"] == 2
    assert train["ignore_pixels"] == int((expected["000000000009"] == 255).sum())


def test_coco2014_bad_inputs_are_named(tmp_path, rng, monkeypatch):
    root, cache = str(tmp_path / "coco"), str(tmp_path / "cache")
    bad_cat = [
        {"id": 7, "image_id": 9, "category_id": 2, "segmentation": poly(0, 0, 4, 4), "iscrowd": 0}
    ]
    coco_tree(root, rng, annotations=bad_cat)
    with pytest.raises(
        DatasetError, match=r"instances_train2014.json: annotation 7 .*category_id 2"
    ):
        list_dataset("coco2014", "train", root, cache_dir=cache)
    wrong_size = [
        {"id": 8, "image_id": 9, "category_id": 1, "iscrowd": 1,
         "segmentation": {"size": [H + 1, W], "counts": [0, 5]}},
    ]  # fmt: skip
    coco_tree(root, rng, annotations=wrong_size)
    with pytest.raises(DatasetError, match=r"annotation 8 \(image 9\): RLE size differs"):
        list_dataset("coco2014", "train", root, cache_dir=cache)
    bad_poly = [
        {"id": 9, "image_id": 9, "category_id": 1, "segmentation": [[1, 2, 3]], "iscrowd": 0}
    ]
    coco_tree(root, rng, annotations=bad_poly)
    with pytest.raises(DatasetError, match=r"annotation 9 .*at least 3 \(x, y\) pairs"):
        list_dataset("coco2014", "train", root, cache_dir=cache)

    json_path = os.path.join(root, "annotations", "instances_train2014.json")
    with open(json_path, "w") as f:
        json.dump({"images": []}, f)
    with pytest.raises(DatasetError, match=r"instances_train2014.json: not a COCO instances JSON"):
        list_dataset("coco2014", "train", root, cache_dir=cache)
    with open(json_path, "w") as f:
        f.write("{truncated")
    with pytest.raises(DatasetError, match=r"cannot read the instances JSON"):
        list_dataset("coco2014", "train", root, cache_dir=cache)
    with pytest.raises(DatasetError, match="instances JSON"):
        list_dataset("coco2014", "val", root, cache_dir=cache)
    with pytest.raises(ValueError, match="crowd must be one of"):
        list_dataset("coco2014", "train", root, crowd="drop")

    # Without pycocotools, the error says what to install (before any mask is written).
    coco_tree(root, rng)
    import sys

    monkeypatch.setitem(sys.modules, "pycocotools", None)
    with pytest.raises(ImportError, match=r'pip install "deeplab_tf\[coco\]"'):
        list_dataset("coco2014", "train", root, cache_dir=str(tmp_path / "other"))


def test_coco2014_pseudo_labels_need_no_masks_nor_pycocotools(tmp_path, rng, monkeypatch):
    """The weakly-supervised ``coco_seg_anno/<12-digit id>.png`` folders match by example id;
    with pseudo-labels no mask is made, so pycocotools is not needed."""
    import sys

    root, cache = str(tmp_path / "coco"), str(tmp_path / "cache")
    coco_tree(root, rng)
    pseudo = str(tmp_path / "coco_seg_anno")
    label = np.full((H, W), 3, np.uint8)
    u.write_png(os.path.join(pseudo, "000000000009.png"), label)
    u.write_png(os.path.join(pseudo, "COCO_train2014_000000000025.png"), label)
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    listing = list_dataset("coco2014", "train", root, cache_dir=cache, pseudo_labels=pseudo)
    assert not listing.problems and not listing.warnings
    assert listing.info.class_names == ("background", "person", "car", "dog")
    for _, got in decoded(listing).values():
        np.testing.assert_array_equal(got, label)
    (folder,) = os.listdir(cache)
    assert os.listdir(os.path.join(cache, folder, "masks")) == []
