"""Input pipeline: alignment of image and label after every transform, padding, errors."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab_tf.training import pipeline as P

COLOURS = np.array(
    [[250, 0, 0], [0, 250, 0], [0, 0, 250], [250, 250, 0], [0, 250, 250]], np.float32
)
IGNORE_COLOUR = np.array([250, 0, 250], np.float32)
MEAN = np.array(P.CAFFE_RGB_MEAN, np.float32)


def derivable_example(rng, h, w, block=6):
    """Blocks whose colour encodes their label (255 has its own colour): label = f(pixels)."""
    gh, gw = -(-h // block), -(-w // block)
    grid = rng.integers(0, len(COLOURS), (gh, gw))
    grid[rng.random((gh, gw)) < 0.1] = 255
    label = np.kron(grid, np.ones((block, block), int))[:h, :w].astype(np.uint8)
    image = np.where(
        (label == 255)[..., None], IGNORE_COLOUR, COLOURS[np.minimum(label, len(COLOURS) - 1)]
    )
    return {
        "image": tf.constant(image.astype(np.uint8)),
        "label": tf.constant(label),
        "id": tf.constant("x"),
    }


def assert_aligned(image, label, min_decodable=0.6):
    """Every pixel whose colour is (nearly) a class colour has that class, padding has 255."""
    image, label = np.asarray(image, np.float32), np.asarray(label)
    refs = np.concatenate([COLOURS, IGNORE_COLOUR[None], MEAN[None]])
    ids = np.array(list(range(len(COLOURS))) + [255, 255])
    dist = np.abs(image[..., None, :] - refs).max(-1)
    nearest = dist.argmin(-1)
    decodable = dist.min(-1) <= 2.0
    assert decodable.mean() >= min_decodable, decodable.mean()
    np.testing.assert_array_equal(label[decodable], ids[nearest][decodable])


@pytest.fixture
def example(rng):
    return derivable_example(rng, 37, 50)


def test_each_transform_keeps_alignment(example):
    img, lab = example["image"], example["label"]
    assert_aligned(img, lab, 1.0)
    for seed in range(6):
        s = tf.constant([seed, 7], tf.int64)
        si, sl = P.random_scale(img, lab, (0.5, 0.75, 1.25, 1.5), seed=s)
        assert si.dtype == tf.float32 and sl.dtype == tf.uint8 and si.shape[:2] == sl.shape
        assert_aligned(si, sl)
        pi, pl = P.pad_to_size(si, sl, (64, 64))
        assert pi.shape[:2] == (max(64, si.shape[0]), max(64, si.shape[1]))
        assert_aligned(pi, pl)
        # Padding is bottom/right only: the original sits at the top-left corner.
        np.testing.assert_array_equal(pl.numpy()[: sl.shape[0], : sl.shape[1]], sl.numpy())
        if pi.shape[0] > si.shape[0]:
            assert np.all(pl.numpy()[si.shape[0] :] == 255)
            np.testing.assert_allclose(
                pi.numpy()[si.shape[0] :],
                np.broadcast_to(MEAN, pi.numpy()[si.shape[0] :].shape),
                atol=1e-4,
            )
        ci, cl = P.random_crop(pi, pl, (32, 32), seed=s)
        assert ci.shape == (32, 32, 3) and cl.shape == (32, 32)
        assert_aligned(ci, cl)
        fi, fl = P.random_flip(ci, cl, seed=s)
        assert_aligned(fi, fl)
        ei, el = P.center_crop(pi, pl, (30, 30))
        assert_aligned(ei, el)
    # Flip happens for some seeds and not others, and flips both.
    flipped = [
        bool(
            np.array_equal(
                P.random_flip(img, lab, tf.constant([k, 1], tf.int64))[1].numpy(),
                lab.numpy()[:, ::-1],
            )
        )
        for k in range(8)
    ]
    assert any(flipped) and not all(flipped)


def test_train_pipeline_batches_aligned_and_deterministic(rng):
    examples = [
        derivable_example(rng, int(rng.integers(20, 60)), int(rng.integers(20, 60)))
        for _ in range(6)
    ]
    ds = tf.data.Dataset.from_generator(
        lambda: ({k: v.numpy() for k, v in e.items()} for e in examples),
        output_signature={
            "image": tf.TensorSpec((None, None, 3), tf.uint8),
            "label": tf.TensorSpec((None, None), tf.uint8),
            "id": tf.TensorSpec((), tf.string),
        },
    )
    batches = P.train_pipeline(
        ds, crop_size=(24, 32), batch_size=3, scales=(0.75, 1.0, 1.5), seed=5, num_classes=5
    )
    assert batches.element_spec[0].dtype == tf.float32 and batches.element_spec[1].dtype == tf.uint8
    first = list(batches.take(4).as_numpy_iterator())
    again = list(
        P.train_pipeline(ds, (24, 32), 3, (0.75, 1.0, 1.5), seed=5).take(4).as_numpy_iterator()
    )
    for (i1, l1), (_, l2) in zip(first, again):
        assert i1.shape == (3, 24, 32, 3) and l1.shape == (3, 24, 32)
        np.testing.assert_array_equal(l1, l2)
        for im, lb in zip(i1, l1):
            assert_aligned(im, lb, 0.5)
    val = list(P.eval_pipeline(ds, crop_size=40, batch_size=4).as_numpy_iterator())
    assert [v[0].shape[0] for v in val] == [4, 2]
    for im, lb in zip(*val[0]):
        assert_aligned(im, lb, 0.9)


def test_centre_crop_is_centred():
    lab = tf.constant(np.arange(100, dtype=np.uint8).reshape(10, 10))
    img = tf.zeros((10, 10, 3))
    _, c = P.center_crop(img, lab, (4, 6))
    np.testing.assert_array_equal(c.numpy(), np.arange(100).reshape(10, 10)[3:7, 2:8])


def _ds(image, label):
    return tf.data.Dataset.from_tensors(
        {"image": image, "label": label, "id": tf.constant("bad_0")}
    )


def test_bad_datasets_give_clear_errors():
    good_img = tf.zeros((8, 8, 3), tf.uint8)
    good_lab = tf.zeros((8, 8), tf.uint8)
    with pytest.raises(ValueError, match=r"'label' must be uint8.*Received: dtype=int32"):
        P.train_pipeline(_ds(good_img, tf.zeros((8, 8), tf.int32)), 8, 1)
    with pytest.raises(
        ValueError, match=r"'image' must be uint8 with shape \(H, W, 3\).*shape=\(1, 8, 8, 3\)"
    ):
        P.train_pipeline(_ds(tf.zeros((1, 8, 8, 3), tf.uint8), good_lab), 8, 1)
    with pytest.raises(
        ValueError, match=r"'label' must be uint8 with shape \(H, W\).*shape=\(8, 8, 1\)"
    ):
        P.eval_pipeline(_ds(good_img, tf.zeros((8, 8, 1), tf.uint8)), 8, 1)
    with pytest.raises(ValueError, match="keys 'image'"):
        P.check_element_spec(tf.data.Dataset.from_tensors((good_img, good_lab)))
    bad = np.zeros((8, 8), np.uint8)
    bad[0, 0], bad[1, 1] = 21, 255
    with pytest.raises(ValueError, match=r"'bad_0' has label values \[21\] but num_classes=21"):
        P.check_label_values(_ds(good_img, tf.constant(bad)), 21)
    P.check_label_values(_ds(good_img, tf.constant(np.minimum(bad, 20) + (bad == 255) * 235)), 21)
    with pytest.raises(ValueError, match="image is 8x8 but label is 6x8"):
        P.check_label_values(_ds(good_img, tf.zeros((6, 8), tf.uint8)), 21)
    # The in-graph guard catches what an eager scan did not look at.
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_classes=21"):
        list(P.eval_pipeline(_ds(good_img, tf.constant(bad)), 8, 1, num_classes=21))
    with pytest.raises(ValueError, match="Received: crop_size"):
        P.train_pipeline(_ds(good_img, good_lab), 0, 1)
    with pytest.raises(ValueError, match="Received: scales"):
        P.train_pipeline(_ds(good_img, good_lab), 8, 1, scales=(0.0,))
