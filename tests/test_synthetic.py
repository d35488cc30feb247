"""The built-in synthetic dataset: contract, determinism, content."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab_tf.data.info import DatasetInfo
from deeplab_tf.data.synthetic import synthetic_arrays, synthetic_dataset


def test_contract_and_info():
    ds, info = synthetic_dataset("train", num_images=6, size=(40, 56), num_classes=4, seed=3)
    assert isinstance(info, DatasetInfo) and info.num_classes == 4 and info.num_examples == 6
    assert info.class_names[0] == "background"
    spec = ds.element_spec
    assert spec["image"].dtype == tf.uint8 and tuple(spec["image"].shape) == (40, 56, 3)
    assert spec["label"].dtype == tf.uint8 and tuple(spec["label"].shape) == (40, 56)
    assert spec["id"].dtype == tf.string
    ids = [e["id"].numpy().decode() for e in ds]
    assert len(set(ids)) == 6 and ids[0] == "synthetic_train_00000"


def test_deterministic_per_split_and_seed():
    a = synthetic_arrays("train", 4, 32, seed=1)
    b = synthetic_arrays("train", 4, 32, seed=1)
    c = synthetic_arrays("val", 4, 32, seed=1)
    d = synthetic_arrays("train", 4, 32, seed=2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[0], d[0])
    # A prefix of a larger draw is the same images (per-image seeding).
    np.testing.assert_array_equal(synthetic_arrays("train", 2, 32, seed=1)[1], a[1][:2])


def test_content_classes_borders_texture_and_noise():
    images, labels, _ = synthetic_arrays("train", 40, 64, num_classes=5, seed=0)
    values = set(np.unique(labels).tolist())
    assert values == {0, 1, 2, 3, 4, 255}
    ignore = labels == 255
    assert 0.01 < ignore.mean() < 0.2
    # Ignore pixels form thin bands along shape outlines: (nearly) all lie within 2 px of a
    # labelled pixel (tiny slivers between overlapping shapes may vanish entirely).
    for lab in labels[:5]:
        assert np.all(lab[lab == 255] == 255)
        padded = np.pad(lab != 255, 2)
        near = np.zeros_like(lab, bool)
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                near |= padded[2 + dy : 2 + dy + 64, 2 + dx : 2 + dx + 64]
        assert near[lab == 255].mean() > 0.97
    # Classes differ in colour on average (learnable), pixels are noisy/textured (not flat).
    means = [images[labels == k].mean(0) for k in range(1, 5)]
    assert min(np.abs(means[i] - means[j]).max() for i in range(4) for j in range(i + 1, 4)) > 30
    for k in range(5):
        assert images[labels == k].std(0).min() > 8


def test_bad_arguments():
    with pytest.raises(ValueError, match="Received: num_classes=9"):
        synthetic_arrays("train", 2, 32, num_classes=9)
    with pytest.raises(ValueError, match="Received: size=8"):
        synthetic_arrays("train", 2, 8)
    with pytest.raises(ValueError, match="Received: num_images=0"):
        synthetic_arrays("train", 0, 32)
