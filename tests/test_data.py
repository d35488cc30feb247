"""Dataset loaders on fake trees that mirror the real archive layouts; exact pixel checks."""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deeplab_tf.data import (
    CONTEXT_CLASSES,
    DatasetError,
    LabelMap,
    list_dataset,
    load_dataset,
    voc_palette,
)
from deeplab_tf.data.cityscapes import ID_TO_TRAIN_ID, from_tfds_cityscapes
from deeplab_tf.data.palettes import CONTEXT_459_IDS
from tests import _data_utils as u


def as_dict(ds):
    return {ex["id"].decode(): (ex["image"], ex["label"]) for ex in ds.as_numpy_iterator()}


def check_spec(ds):
    spec = ds.element_spec
    assert set(spec) == {"image", "label", "id"}
    assert spec["image"].dtype == tf.uint8 and spec["image"].shape.as_list() == [None, None, 3]
    assert spec["label"].dtype == tf.uint8 and spec["label"].shape.as_list() == [None, None]
    assert spec["id"].dtype == tf.string and spec["id"].shape.rank == 0


# --- VOC 2012 ------------------------------------------------------------------------------


@pytest.fixture
def voc_tree(tmp_path, rng):
    voc, written = u.make_voc(str(tmp_path), ["2007_000032", "2007_000039"], ["2007_000033"], rng)
    return str(tmp_path), voc, written


def test_voc2012_palette_pngs_read_as_indices(voc_tree):
    root, voc, written = voc_tree
    # The masks really are palette PNGs: colour reading would give (128, 0, 0) for class 1.
    with Image.open(os.path.join(voc, "SegmentationClass", "2007_000032.png")) as im:
        assert im.mode == "P"
    for split, ids in (("train", ["2007_000032", "2007_000039"]), ("val", ["2007_000033"])):
        ds, info = load_dataset("voc2012", split, root=root)
        check_spec(ds)
        assert info.num_examples == len(ids) and info.num_classes == 21
        assert info.name == "voc2012" and info.class_names[15] == "person"
        got = as_dict(ds)
        assert list(got) == ids  # list order kept
        for i in ids:
            image, label = got[i]
            np.testing.assert_array_equal(label, written[i][1])
            assert 255 in label
            assert image.shape == written[i][0].shape
            assert np.abs(image.astype(int) - written[i][0]).max() <= 6  # q100 JPEG
            # An independent decoder gives the same pixels (TF's with the accurate IDCT, as
            # libjpeg/OpenCV/Caffe use; TF's default INTEGER_FAST differs by a few levels).
            data = tf.io.read_file(os.path.join(voc, "JPEGImages", f"{i}.jpg"))
            ref = tf.io.decode_jpeg(data, dct_method="INTEGER_ACCURATE")
            np.testing.assert_array_equal(image, ref.numpy())


def test_voc2012_root_can_be_voc_folder_and_trainval(voc_tree):
    root, voc, written = voc_tree
    ds, info = load_dataset("voc2012", "trainval", root=voc)
    assert info.num_examples == 3
    assert sorted(as_dict(ds)) == sorted(written)


def test_voc2012_bad_split_and_root(voc_tree, tmp_path):
    root, _, _ = voc_tree
    with pytest.raises(ValueError, match="Received: split='test'"):
        load_dataset("voc2012", "test", root=root)
    with pytest.raises(DatasetError, match="is not a directory"):
        load_dataset("voc2012", "train", root=str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match="Cannot find a VOC2012 folder with JPEGImages"):
        load_dataset("voc2012", "train", root=str(tmp_path / "VOCdevkit" / "VOC2012" / "ImageSets"))
    with pytest.raises(ValueError, match="root"):
        load_dataset("voc2012", "train")
    with pytest.raises(ValueError, match="Unknown dataset"):
        load_dataset("coco", "train", root=root)


def test_voc2012_missing_mask_raises_naming_file_or_skips(voc_tree):
    root, voc, written = voc_tree
    missing = os.path.join(voc, "SegmentationClass", "2007_000039.png")
    os.remove(missing)
    with pytest.raises(DatasetError, match="2007_000039.png"):
        load_dataset("voc2012", "train", root=root)
    skipped = []
    ds, _ = load_dataset("voc2012", "train", root=root, on_error="skip", skipped=skipped)
    assert list(as_dict(ds)) == ["2007_000032"]
    assert skipped[0]["path"] == missing and skipped[0]["kind"] == "missing"


def test_voc2012_corrupt_image_and_bad_labels(voc_tree):
    root, voc, written = voc_tree
    bad_jpg = os.path.join(voc, "JPEGImages", "2007_000032.jpg")
    with open(bad_jpg, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    ds, _ = load_dataset("voc2012", "train", root=root)
    with pytest.raises(tf.errors.OpError, match="2007_000032.jpg"):
        list(ds.as_numpy_iterator())
    # A label value the dataset does not define (VOC: 0..20, 255) is an error, never clipped.
    bad = written["2007_000039"][1].copy()
    bad[0, 0] = 21
    u.write_png(os.path.join(voc, "SegmentationClass", "2007_000039.png"), bad, voc_palette())
    skipped = []
    ds, _ = load_dataset("voc2012", "train", root=root, on_error="skip", skipped=skipped)
    assert list(as_dict(ds)) == []
    kinds = {p["path"]: p["kind"] for p in skipped}
    assert kinds == {
        bad_jpg: "corrupt",
        os.path.join(voc, "SegmentationClass", "2007_000039.png"): "unknown_values",
    }
    (unknown,) = [p for p in skipped if p["kind"] == "unknown_values"]
    assert "[21]" in unknown["error"]


def test_voc2012_size_mismatch_is_an_error(voc_tree):
    root, voc, written = voc_tree
    u.write_png(
        os.path.join(voc, "SegmentationClass", "2007_000033.png"),
        np.zeros((5, 5), np.uint8),
        voc_palette(),
    )
    ds, _ = load_dataset("voc2012", "val", root=root)
    with pytest.raises(tf.errors.OpError, match="2007_000033.png: label size 5x5"):
        list(ds.as_numpy_iterator())


def test_shuffle_files_keeps_pairs(voc_tree):
    root, _, written = voc_tree
    ds, _ = load_dataset("voc2012", "trainval", root=root, shuffle_files=True, seed=3)
    got = as_dict(ds)
    for i, (_, label) in got.items():
        np.testing.assert_array_equal(label, written[i][1])
    assert sorted(got) == sorted(written)


# --- VOC 2012 + SBD (train_aug) ----------------------------------------------------------------

VOC_TRAIN = ["2007_000032", "2007_000039"]
VOC_VAL = ["2007_000033", "2007_000042"]
SBD_TRAIN = ["2007_000039", "2008_000002", "2007_000033"]
SBD_VAL = ["2008_000003", "2007_000042", "2008_000005"]
TRAIN_AUG = ["2007_000032", "2007_000039", "2008_000002", "2008_000003", "2008_000005"]


@pytest.fixture
def aug_tree(tmp_path, rng):
    root = str(tmp_path)
    voc, voc_written = u.make_voc(root, VOC_TRAIN, VOC_VAL, rng)
    sbd_only = sorted(set(SBD_TRAIN + SBD_VAL) - set(VOC_TRAIN + VOC_VAL))
    images = {}
    for i in sbd_only:  # SBD-only images also sit in VOC2012's JPEGImages
        images[i] = u.smooth_image(rng, 20, 24)
        u.write_jpeg(os.path.join(voc, "JPEGImages", f"{i}.jpg"), images[i])
    sbd, sbd_written = u.make_sbd(root, SBD_TRAIN, SBD_VAL, rng)
    return root, voc, voc_written, sbd, sbd_written


def test_train_aug_from_sbd_mat(aug_tree):
    root, voc, voc_written, sbd, sbd_written = aug_tree
    ds, info = load_dataset("voc2012_aug", "train_aug", root=root)
    check_spec(ds)
    assert info.num_examples == len(TRAIN_AUG) and info.name == "voc2012_aug"
    got = as_dict(ds)
    assert list(got) == TRAIN_AUG  # (VOC train + SBD train + SBD val) - VOC val, sorted
    # VOC masks win where they exist (they carry 255 boundaries), SBD's elsewhere.
    for i in TRAIN_AUG:
        expected = voc_written[i][1] if i in voc_written else sbd_written[i]
        np.testing.assert_array_equal(got[i][1], expected)
    assert 255 not in got["2008_000002"][1]
    ds, info = load_dataset("voc2012_aug", "val", root=root)
    assert sorted(as_dict(ds)) == sorted(VOC_VAL)
    listing = list_dataset("voc2012_aug", "trainval_aug", root=root)
    assert sorted(e.id for e in listing.examples) == sorted(TRAIN_AUG + VOC_VAL)
    fmt = {e.id: e.label_format for e in listing.examples}
    assert fmt["2007_000042"] == "png" and fmt["2008_000002"] == "sbd_mat"


def test_train_aug_image_falls_back_to_sbd_img(aug_tree, rng):
    root, voc, _, sbd, sbd_written = aug_tree
    os.remove(os.path.join(voc, "JPEGImages", "2008_000005.jpg"))
    image = u.smooth_image(rng, 20, 24)
    u.write_jpeg(os.path.join(sbd, "img", "2008_000005.jpg"), image)
    ds, _ = load_dataset("voc2012_aug", "train_aug", root=root)
    got = as_dict(ds)
    assert np.abs(got["2008_000005"][0].astype(int) - image).max() <= 6
    np.testing.assert_array_equal(got["2008_000005"][1], sbd_written["2008_000005"])


def test_train_aug_from_segmentation_class_aug_folder(aug_tree, rng):
    root, voc, voc_written, sbd, _ = aug_tree
    import shutil

    shutil.rmtree(os.path.join(root, "benchmark_RELEASE"))
    aug = {}
    for i in sorted(set(SBD_TRAIN + SBD_VAL + VOC_TRAIN + VOC_VAL)):
        aug[i] = rng.integers(0, 21, size=(20, 24)).astype(np.uint8)
        u.write_png(os.path.join(voc, "SegmentationClassAug", f"{i}.png"), aug[i])
    ds, info = load_dataset("voc2012_aug", "train_aug", root=root)
    got = as_dict(ds)
    assert list(got) == TRAIN_AUG
    for i in TRAIN_AUG:
        np.testing.assert_array_equal(got[i][1], aug[i])


def test_train_aug_release_pair_list(aug_tree):
    root, voc, voc_written, sbd, sbd_written = aug_tree
    lines = [f"/JPEGImages/{i}.jpg /SegmentationClass/{i}.png" for i in VOC_TRAIN]
    u.write_lines(os.path.join(voc, "ImageSets", "Segmentation", "train_aug.txt"), lines)
    got = as_dict(load_dataset("voc2012_aug", "train_aug", root=root)[0])
    assert list(got) == VOC_TRAIN
    np.testing.assert_array_equal(got[VOC_TRAIN[1]][1], voc_written[VOC_TRAIN[1]][1])


def test_train_aug_without_sbd_is_a_clear_error(voc_tree):
    root, _, _ = voc_tree
    with pytest.raises(DatasetError, match="benchmark_RELEASE"):
        load_dataset("voc2012_aug", "train_aug", root=root)


def test_sbd_mat_with_wrong_layout_names_file(aug_tree):
    import scipy.io

    root, voc, voc_written, sbd, _ = aug_tree
    path = os.path.join(sbd, "cls", "2008_000003.mat")
    scipy.io.savemat(path, {"GTinst": {"Segmentation": np.zeros((20, 24), np.uint8)}})
    skipped = []
    ds, _ = load_dataset("voc2012_aug", "train_aug", root=root, on_error="skip", skipped=skipped)
    assert "2008_000003" not in as_dict(ds)
    assert skipped[0]["path"] == path and "GTcls.Segmentation" in skipped[0]["error"]


# --- Cityscapes ------------------------------------------------------------------------------


def expected_train_ids(label):
    out = np.full(label.shape, 255, np.uint8)
    for k, v in ID_TO_TRAIN_ID.items():
        out[label == k] = v
    return out


def test_cityscapes_label_ids_to_train_ids(tmp_path, rng):
    root = str(tmp_path)
    names = ["aachen_000000_000019", "bochum_000000_000313"]
    labels = [rng.integers(0, 34, size=(16, 32)).astype(np.uint8) for _ in names]
    labels[0][0, :5] = [7, 26, 33, 0, 255]
    images = u.make_cityscapes(root, "train", names, labels, rng)
    ds, info = load_dataset("cityscapes", "train", root=root)
    check_spec(ds)
    assert info.num_classes == 19 and info.class_names[13] == "car"
    got = as_dict(ds)
    assert list(got) == names
    np.testing.assert_array_equal(got[names[0]][1][0, :5], [0, 13, 18, 255, 255])
    for name, label in zip(names, labels):
        np.testing.assert_array_equal(got[name][0], images[name])
        np.testing.assert_array_equal(got[name][1], expected_train_ids(label))
    assert len(ID_TO_TRAIN_ID) == 19 and sorted(ID_TO_TRAIN_ID.values()) == list(range(19))


def test_cityscapes_unknown_id_and_missing_label(tmp_path, rng):
    root = str(tmp_path)
    label = np.full((8, 8), 7, np.uint8)
    label[3, 3] = 40
    u.make_cityscapes(root, "val", ["lindau_000000_000019"], [label], rng)
    ds, _ = load_dataset("cityscapes", "val", root=root)
    with pytest.raises(tf.errors.OpError, match=r"000019_gtFine_labelIds.png.*\[40\]"):
        list(ds.as_numpy_iterator())
    os.remove(
        os.path.join(root, "gtFine", "val", "lindau", "lindau_000000_000019_gtFine_labelIds.png")
    )
    with pytest.raises(DatasetError, match="gtFine_labelIds.png: label file not found"):
        load_dataset("cityscapes", "val", root=root)


def test_cityscapes_tfds_adaptor_maps_ids(rng):
    raw = rng.integers(0, 34, size=(2, 6, 10, 1)).astype(np.uint8)
    raw[0, 0, 0, 0] = 255
    images = rng.integers(0, 256, size=(2, 6, 10, 3), dtype=np.uint8)
    tfds_like = tf.data.Dataset.from_tensor_slices(
        {"image_id": ["a_0_1", "b_0_2"], "image_left": images, "segmentation_label": raw}
    )
    got = list(from_tfds_cityscapes(tfds_like).as_numpy_iterator())
    for k, ex in enumerate(got):
        np.testing.assert_array_equal(ex["label"], expected_train_ids(raw[k, ..., 0]))
        np.testing.assert_array_equal(ex["image"], images[k])
    bad = raw.copy()
    bad[1, 2, 2, 0] = 77
    tfds_like = tf.data.Dataset.from_tensor_slices(
        {"image_id": ["a_0_1", "b_0_2"], "image_left": images, "segmentation_label": bad}
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="b_0_2"):
        list(from_tfds_cityscapes(tfds_like).as_numpy_iterator())


# --- PASCAL-Context ----------------------------------------------------------------------------


def test_pascal_context_from_mat(tmp_path, rng):
    root = str(tmp_path)
    voc = os.path.join(root, "VOCdevkit", "VOC2010")
    ids = ["2008_000002", "2008_000003"]
    label_maps = {}
    for i in ids:
        u.write_jpeg(os.path.join(voc, "JPEGImages", f"{i}.jpg"), u.smooth_image(rng, 12, 14))
        lm = rng.integers(0, 460, size=(12, 14))
        lm[0, :6] = [2, 458, 284, 1, 0, 459]
        label_maps[i] = lm
        u.write_context_mat(os.path.join(root, "trainval", f"{i}.mat"), lm)
    u.write_lines(os.path.join(voc, "ImageSets", "Main", "train.txt"), ids)
    ds, info = load_dataset("pascal_context", "train", root=root)
    check_spec(ds)
    assert info.num_classes == 60 and len(CONTEXT_CLASSES) == 60
    got = as_dict(ds)
    # aeroplane -> 1, wood -> 59, person -> 37, accordion (not among the 59) -> background.
    np.testing.assert_array_equal(got[ids[0]][1][0, :6], [1, 59, 37, 0, 0, 0])
    assert CONTEXT_CLASSES[37] == "person" and CONTEXT_CLASSES[59] == "wood"
    for i in ids:
        expected = np.zeros((12, 14), np.uint8)
        for k, raw in enumerate(CONTEXT_459_IDS):
            expected[label_maps[i] == raw] = k + 1
        np.testing.assert_array_equal(got[i][1], expected)


def test_pascal_context_from_png(tmp_path, rng):
    root = str(tmp_path)
    voc = os.path.join(root, "VOC2010")
    u.write_jpeg(os.path.join(voc, "JPEGImages", "2008_000002.jpg"), u.smooth_image(rng, 9, 11))
    label = rng.integers(0, 60, size=(9, 11)).astype(np.uint8)
    u.write_png(os.path.join(voc, "SegmentationClassContext", "2008_000002.png"), label)
    u.write_lines(os.path.join(voc, "ImageSets", "SegmentationContext", "val.txt"), ["2008_000002"])
    got = as_dict(load_dataset("pascal_context", "val", root=root)[0])
    np.testing.assert_array_equal(got["2008_000002"][1], label)


# --- PASCAL-Person-Part ---------------------------------------------------------------------


def test_person_part_from_png_release(tmp_path, rng):
    root = str(tmp_path / "pascal_data")
    ids = ["2008_000008", "2008_000023"]
    labels = {}
    for i in ids:
        u.write_jpeg(os.path.join(root, "JPEGImages", f"{i}.jpg"), u.smooth_image(rng, 10, 8))
        labels[i] = rng.integers(0, 7, size=(10, 8)).astype(np.uint8)
        u.write_png(os.path.join(root, "SegmentationPart", f"{i}.png"), labels[i])
    u.write_lines(os.path.join(root, "list", "val_id.txt"), ids)
    ds, info = load_dataset("person_part", "val", root=str(tmp_path))
    assert info.num_classes == 7 and info.class_names[3] == "upper arms"
    got = as_dict(ds)
    for i in ids:
        np.testing.assert_array_equal(got[i][1], labels[i])


def test_person_part_from_pascal_part_mat(tmp_path, rng):
    root = str(tmp_path / "VOCdevkit" / "VOC2010")
    h, w = 6, 8
    z = np.zeros((h, w), np.uint8)

    def mask(r, c):
        m = z.copy()
        m[r, c] = 1
        return m

    person = [
        ("head", mask(0, slice(0, 2))),
        ("hair", mask(0, 2)),
        ("neck", mask(1, 0)),
        ("ruarm", mask(2, 0)),
        ("lhand", mask(3, 0)),
        ("luleg", mask(4, 0)),
        ("rfoot", mask(5, 0)),
    ]
    objects = [("person", mask(slice(0, 6), slice(0, 3)), person), ("dog", mask(5, 7), [])]
    u.write_pascal_part_mat(os.path.join(root, "Annotations_Part", "2008_000008.mat"), "x", objects)
    u.write_pascal_part_mat(
        os.path.join(root, "Annotations_Part", "2008_000009.mat"), "y", [("dog", mask(1, 1), [])]
    )
    for i in ("2008_000008", "2008_000009", "2008_000010"):
        u.write_jpeg(os.path.join(root, "JPEGImages", f"{i}.jpg"), u.smooth_image(rng, h, w))
    u.write_lines(
        os.path.join(root, "ImageSets", "Main", "person_train.txt"),
        ["2008_000008  1", "2008_000009 -1", "2008_000010  1"],  # 000010 has no .mat
    )
    ds, _ = load_dataset("person_part", "train", root=str(tmp_path))
    got = as_dict(ds)
    assert list(got) == ["2008_000008"]
    expected = z.copy()
    expected[0, 0:3] = 1
    expected[1, 0], expected[2, 0], expected[3, 0], expected[4, 0], expected[5, 0] = 2, 3, 4, 5, 6
    np.testing.assert_array_equal(got["2008_000008"][1], expected)


# --- Folder ----------------------------------------------------------------------------------


def test_folder_grey_palette_and_rgb_masks(tmp_path, rng):
    root = str(tmp_path)
    labels = {}
    for stem in ["a", "b", "c"]:
        img = rng.integers(0, 256, size=(7, 9, 3), dtype=np.uint8)
        Image.fromarray(img).save(os.path.join(_mk(root, "images"), f"{stem}.png"))
        labels[stem] = rng.choice([0, 1, 2, 255], size=(7, 9)).astype(np.uint8)
    u.write_png(os.path.join(root, "masks", "a.png"), labels["a"])
    u.write_png(os.path.join(root, "masks", "b.png"), labels["b"], voc_palette())
    Image.fromarray(voc_palette()[labels["c"]]).save(os.path.join(root, "masks", "c.png"))
    with pytest.raises(ValueError, match="num_classes or class_names"):
        load_dataset("folder", root=root)
    # RGB colour masks need a palette to be read as ids.
    ds, info = load_dataset("folder", root=root, num_classes=3)
    with pytest.raises(tf.errors.OpError, match="c.png: mask is an RGB colour image"):
        list(ds.as_numpy_iterator())
    ds, info = load_dataset(
        "folder", "all", root=root, class_names=("bg", "cat", "dog"), palette=voc_palette()
    )
    check_spec(ds)
    assert info.class_names == ("bg", "cat", "dog") and info.num_examples == 3
    got = as_dict(ds)
    for stem in "abc":
        np.testing.assert_array_equal(got[stem][1], labels[stem])


def test_folder_problems(tmp_path, rng):
    root = str(tmp_path)
    for stem in ["a", "b", "c"]:
        u.write_jpeg(os.path.join(root, "images", f"{stem}.jpg"), u.smooth_image(rng, 6, 6))
    u.write_png(os.path.join(root, "masks", "a.png"), np.full((6, 6), 2, np.uint8))
    u.write_png(os.path.join(root, "masks", "b.png"), np.full((6, 6), 3, np.uint8))
    skipped = []
    ds, _ = load_dataset("folder", root=root, num_classes=3, on_error="skip", skipped=skipped)
    got = as_dict(ds)
    assert list(got) == ["a"] and (got["a"][1] == 2).all()
    assert sorted(p["kind"] for p in skipped) == ["missing", "unknown_values"]
    with pytest.raises(DatasetError, match="c.png: label file not found"):
        load_dataset("folder", root=root, num_classes=3)
    with pytest.raises(DatasetError, match="no split 'val'"):
        load_dataset("folder", "val", root=root, num_classes=3)


def test_folder_split_subfolders(tmp_path, rng):
    root = str(tmp_path)
    for split, stems in (("train", ["x", "y"]), ("val", ["z"])):
        for stem in stems:
            image = u.smooth_image(rng, 5, 5)
            u.write_jpeg(os.path.join(root, split, "images", f"{stem}.jpg"), image)
            u.write_png(os.path.join(root, split, "masks", f"{stem}.png"), np.ones((5, 5)))
    assert list(as_dict(load_dataset("folder", "val", root=root, num_classes=2)[0])) == ["z"]
    assert list(as_dict(load_dataset("folder", "train", root=root, num_classes=2)[0])) == ["x", "y"]


def _mk(*parts):
    path = os.path.join(*parts)
    os.makedirs(path, exist_ok=True)
    return path


# --- Plumbing --------------------------------------------------------------------------------


def test_label_map_rejects_unknown_values():
    lm = LabelMap.identity(3)
    np.testing.assert_array_equal(lm(np.array([[0, 2, 255]])), [[0, 2, 255]])
    for bad in (3, 254, 256, -1):
        with pytest.raises(DatasetError, match=f"\\[{bad}\\]"):
            lm(np.array([[0, bad]]), path="m.png")
    with pytest.raises(ValueError, match="Received: 1 -> 7"):
        LabelMap({1: 7}, 3)


def test_synthetic_delegates_lazily(monkeypatch):
    import types

    calls = {}

    def fake_synthetic_dataset(split="train", **kwargs):
        calls.update(split=split, **kwargs)
        return "ds", "info"

    module = types.ModuleType("deeplab_tf.data.synthetic")
    module.synthetic_dataset = fake_synthetic_dataset
    monkeypatch.setitem(sys.modules, "deeplab_tf.data.synthetic", module)
    assert load_dataset("synthetic", "val", num_images=3, size=16, seed=1) == ("ds", "info")
    assert calls == {"split": "val", "num_images": 3, "size": 16, "seed": 1}
    with pytest.raises(ValueError, match="reads no files"):
        load_dataset("synthetic", root="/tmp")


def test_on_error_and_source_are_checked(voc_tree):
    root, _, _ = voc_tree
    with pytest.raises(ValueError, match="Received: on_error='ignore'"):
        load_dataset("voc2012", root=root, on_error="ignore")
    with pytest.raises(ValueError, match="Received: source='hdf5'"):
        load_dataset("voc2012", root=root, source="hdf5")
    with pytest.raises(ValueError, match="Unexpected arguments"):
        load_dataset("voc2012", root=root, num_classes=3)


def test_one_image_reader_for_datasets_and_predict(tmp_path):
    from deeplab_tf.data import catalog, readers
    from deeplab_tf.inference import io

    assert io.IMAGE_EXTENSIONS is readers.IMAGE_EXTENSIONS
    assert (
        issubclass(io.ImageReadError, DatasetError) and io.ImageReadError is readers.ImageReadError
    )
    assert catalog.DATASET_NAMES == tuple(catalog.list_datasets())
    # A photo turned by its EXIF orientation: predict shows it upright, a dataset reads the
    # stored pixels (its label mask is aligned with those).
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(pixels).save(tmp_path / "turned.png", exif=exif.tobytes())
    stored = readers.read_image(str(tmp_path / "turned.png"))
    np.testing.assert_array_equal(stored, pixels)
    upright, notes = io.read_image(tmp_path / "turned.png")
    assert upright.shape == (10, 6, 3) and notes == ["rotated by its EXIF orientation"]
    np.testing.assert_array_equal(upright, np.rot90(pixels, -1))
    # Greyscale and palette images convert the same way on both paths.
    grey = rng.integers(0, 256, (4, 5), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(
        readers.read_image(str(tmp_path / "grey.png")), np.stack([grey] * 3, -1)
    )
    np.testing.assert_array_equal(io.read_image(tmp_path / "grey.png")[0], np.stack([grey] * 3, -1))
    # Failures are DatasetErrors of the dataset kinds, naming the file.
    with pytest.raises(DatasetError, match="nope.jpg: no such file") as err:
        readers.read_image(str(tmp_path / "nope.jpg"), example_id="x")
    assert err.value.kind == "missing" and err.value.example_id == "x"
    (tmp_path / "bad.jpg").write_bytes(b"GIF89a not a jpeg")
    with pytest.raises(DatasetError, match="bad.jpg") as err:
        readers.read_image(str(tmp_path / "bad.jpg"))
    assert err.value.kind == "corrupt"
