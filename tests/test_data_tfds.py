"""TFDS paths: the VOC/SBD builder (manual_dir) and TFDS's Cityscapes builder, on fake trees."""

import os
import zipfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from deeplab_tf.data import load_dataset
from tests import _data_utils as u

VOC_TRAIN = ["2007_000032", "2007_000039"]
VOC_VAL = ["2007_000033"]
SBD_TRAIN = ["2008_000002", "2007_000033"]
SBD_VAL = ["2008_000003"]


def as_dict(ds):
    return {ex["id"].decode(): (ex["image"], ex["label"]) for ex in ds.as_numpy_iterator()}


@pytest.fixture
def voc_sbd(tmp_path, rng):
    root = str(tmp_path / "manual")
    voc, _ = u.make_voc(root, VOC_TRAIN, VOC_VAL, rng)
    for i in ("2008_000002", "2008_000003"):
        u.write_jpeg(os.path.join(voc, "JPEGImages", f"{i}.jpg"), u.smooth_image(rng, 20, 24))
    u.make_sbd(root, SBD_TRAIN, SBD_VAL, rng)
    return root, str(tmp_path / "tfds")


def test_tfds_voc_builder_matches_file_reader(voc_sbd):
    root, data_dir = voc_sbd
    for name, split, ids in (
        ("voc2012", "train", VOC_TRAIN),
        ("voc2012_aug", "train_aug", ["2007_000032", "2007_000039", "2008_000002", "2008_000003"]),
    ):
        ds, info = load_dataset(name, split, root=root, source="tfds", data_dir=data_dir)
        assert info.num_examples == len(ids)
        spec = ds.element_spec
        assert spec["image"].dtype == tf.uint8 and spec["image"].shape.as_list() == [None, None, 3]
        assert spec["label"].dtype == tf.uint8 and spec["label"].shape.as_list() == [None, None]
        assert spec["id"].dtype == tf.string
        got = as_dict(ds)
        ref = as_dict(load_dataset(name, split, root=root)[0])
        assert sorted(got) == sorted(ids)
        for i in ids:  # same pixels: original JPEG bytes decoded with the accurate IDCT
            np.testing.assert_array_equal(got[i][0], ref[i][0])
            np.testing.assert_array_equal(got[i][1], ref[i][1])
    # Prepared once: the records exist and a second load does not need the manual files.
    import shutil

    shutil.rmtree(root)
    ds, _ = load_dataset("voc2012", "train", root=root, source="tfds", data_dir=data_dir)
    assert sorted(as_dict(ds)) == VOC_TRAIN


def test_tfds_load_by_registered_name(voc_sbd):
    root, data_dir = voc_sbd
    import deeplab_tf.data.tfds_voc  # noqa: F401 - registers the builder

    ds = tfds.load(
        "deeplab_voc2012/segmentation",
        split="val",
        data_dir=data_dir,
        download_and_prepare_kwargs={
            "download_config": tfds.download.DownloadConfig(manual_dir=root)
        },
    )
    (ex,) = list(ds.as_numpy_iterator())
    assert ex["id"] == b"2007_000033" and ex["label"].shape == (20, 24, 1)


@pytest.mark.large
def test_tfds_cityscapes_builder_maps_train_ids(tmp_path, rng):
    """TFDS's own builder on fake zips (its feature shape is fixed at 1024 x 2048)."""
    from PIL import Image

    manual = tmp_path / "manual"
    manual.mkdir()
    h, w = 1024, 2048
    label = np.zeros((h, w), np.uint8)
    label[:, :4] = [[7, 26, 33, 5]]
    image = np.zeros((h, w, 3), np.uint8)
    image[:4, :4] = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    src = tmp_path / "src"
    for split in ("train", "val", "test"):
        name = f"aachen_000000_00001{len(split)}"
        u.write_png(str(src / "gtFine" / split / "aachen" / f"{name}_gtFine_labelIds.png"), label)
        os.makedirs(src / "leftImg8bit" / split / "aachen", exist_ok=True)
        Image.fromarray(image).save(
            src / "leftImg8bit" / split / "aachen" / f"{name}_leftImg8bit.png"
        )
    for zname, top in (
        ("leftImg8bit_trainvaltest.zip", "leftImg8bit"),
        ("gtFine_trainvaltest.zip", "gtFine"),
    ):
        with zipfile.ZipFile(manual / zname, "w") as z:
            for dirpath, _, files in os.walk(src / top):
                for f in files:
                    full = os.path.join(dirpath, f)
                    z.write(full, os.path.relpath(full, src))
    ds, info = load_dataset(
        "cityscapes", "val", root=str(manual), source="tfds", data_dir=str(tmp_path / "tfds")
    )
    assert info.num_examples == 1 and info.num_classes == 19
    (ex,) = list(ds.as_numpy_iterator())
    assert ex["id"] == b"aachen_000000_000013"
    np.testing.assert_array_equal(ex["label"][0, :4], [0, 13, 18, 255])
    assert (ex["label"][:, 4:] == 255).all()
    np.testing.assert_array_equal(ex["image"], image)


def test_tfds_cocostuff_builder_matches_file_reader(tmp_path, rng):
    root10k, root164k = str(tmp_path / "10k"), str(tmp_path / "164k")
    data_dir = str(tmp_path / "tfds")
    u.make_cocostuff10k(root10k, ["a", "b"], ["c"], rng)
    u.make_cocostuff164k(root164k, "val2017", ["000000000139", "000000000285"], rng)
    u.make_cocostuff164k(root164k, "train2017", ["000000000009"], rng)  # every split is prepared
    for name, root, split, tfds_split in (
        ("cocostuff10k", root10k, "train", "train"),
        ("cocostuff164k", root164k, "val", "val2017"),
    ):
        ds, info = load_dataset(name, split, root=root, source="tfds", data_dir=data_dir)
        assert info.num_classes == 182 and info.num_examples == 2
        got = as_dict(ds)
        ref = as_dict(load_dataset(name, tfds_split, root=root)[0])
        assert sorted(got) == sorted(ref) and len(got) == 2
        for i in ref:  # same pixels; 10k labels already shifted to 0..181 / 255
            np.testing.assert_array_equal(got[i][0], ref[i][0])
            np.testing.assert_array_equal(got[i][1], ref[i][1])
    import deeplab_tf.data.tfds_cocostuff  # noqa: F401 - registers the builder

    assert "deeplab_cocostuff" in tfds.list_builders()
    with pytest.raises(ValueError, match="split must be one of"):
        load_dataset("cocostuff10k", "val", root=root10k, source="tfds", data_dir=data_dir)
