"""The streaming confusion matrix and scores against an independent NumPy reference."""

import json
import math

import numpy as np
import pytest

from deeplab_tf.evaluation import ConfusionMatrix, evaluate, format_table, scores_from_confusion


def reference_scores(gt, pred, num_classes, ignore=255):
    """Per-class masks, no confusion matrix: an independent restatement of the definitions."""
    gt, pred = gt.ravel(), pred.ravel()
    keep = gt != ignore
    gt, pred = gt[keep], pred[keep]
    ious, accs, weights = [], [], []
    for c in range(num_classes):
        g, p = gt == c, pred == c
        inter, union = np.sum(g & p), np.sum(g | p)
        ious.append(inter / union if union else np.nan)
        accs.append(inter / g.sum() if g.sum() else np.nan)
        weights.append(g.sum() / gt.size)
    ious, accs, weights = map(np.array, (ious, accs, weights))
    present = ~np.isnan(ious)
    return {
        "pixel_accuracy": np.mean(gt == pred),
        "mean_accuracy": np.nanmean(accs),
        "mean_iou": np.mean(ious[present]),
        "frequency_weighted_iou": np.nansum(weights * np.nan_to_num(ious)),
        "per_class_iou": ious,
        "per_class_accuracy": accs,
    }


def _random(rng, shape, num_classes, absent=(), ignore_frac=0.1):
    gt = rng.integers(0, num_classes, size=shape)
    pred = np.where(rng.random(shape) < 0.6, gt, rng.integers(0, num_classes, size=shape))
    for c in absent:  # neither in ground truth nor in prediction
        gt[gt == c] = (c + 1) % num_classes
        pred[pred == c] = (c + 2) % num_classes
    gt[rng.random(shape) < ignore_frac] = 255
    return gt.astype(np.uint8), pred.astype(np.int64)


@pytest.mark.parametrize("num_classes,absent", [(2, ()), (5, (3,)), (21, (4, 7, 20))])
def test_scores_match_reference_on_random_data(num_classes, absent, rng):
    cm = ConfusionMatrix(num_classes)
    gts, preds = [], []
    for _ in range(4):  # streaming over batches of differently sized images
        h, w = rng.integers(5, 40, size=2)
        gt, pred = _random(rng, (2, h, w), num_classes, absent)
        cm.update(gt, pred)
        gts.append(gt.ravel())
        preds.append(pred.ravel())
    got = cm.result()
    want = reference_scores(np.concatenate(gts), np.concatenate(preds), num_classes)
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "frequency_weighted_iou"):
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    np.testing.assert_allclose(got["per_class_iou"], want["per_class_iou"], atol=1e-12)
    np.testing.assert_allclose(got["per_class_accuracy"], want["per_class_accuracy"], atol=1e-12)
    for c in absent:
        assert math.isnan(got["per_class_iou"][c]) and c not in got["valid_classes"]
    assert got["pixels"] == int(np.sum(np.concatenate(gts) != 255))


def test_hand_computed_example():
    gt = np.array([[0, 0, 1, 1], [0, 255, 1, 2]])
    pred = np.array([[0, 1, 1, 1], [0, 3, 2, 2]])
    s = ConfusionMatrix(5).update(gt, pred)
    # rows = ground truth, columns = prediction; the ignored pixel (pred 3) is not counted
    want = np.zeros((5, 5), int)
    want[0, 0], want[0, 1], want[1, 1], want[1, 2], want[2, 2] = 2, 1, 2, 1, 1
    np.testing.assert_array_equal(s, want)
    r = scores_from_confusion(want)
    # IoU: class 0 = 2/3, class 1 = 2/4, class 2 = 1/2; classes 3, 4 absent -> excluded
    assert r["per_class_iou"][:3] == pytest.approx([2 / 3, 0.5, 0.5])
    assert math.isnan(r["per_class_iou"][3]) and math.isnan(r["per_class_iou"][4])
    assert r["mean_iou"] == pytest.approx((2 / 3 + 0.5 + 0.5) / 3)
    assert r["pixel_accuracy"] == pytest.approx(5 / 7)
    assert r["mean_accuracy"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert r["frequency_weighted_iou"] == pytest.approx(3 / 7 * 2 / 3 + 3 / 7 * 0.5 + 1 / 7 * 0.5)


def test_predicted_but_absent_class_counts_as_zero():
    gt = np.zeros((4, 4), np.uint8)
    pred = gt.copy().astype(int)
    pred[0, 0] = 1  # class 1 is predicted but never in the ground truth
    cm = ConfusionMatrix(3)
    cm.update(gt, pred)
    r = cm.result()
    assert r["per_class_iou"][1] == 0.0 and math.isnan(r["per_class_iou"][2])
    assert r["mean_iou"] == pytest.approx((15 / 16 + 0.0) / 2)


def test_streaming_equals_one_shot_and_merge(rng):
    gt, pred = _random(rng, (6, 17, 23), 7)
    a, b, c = ConfusionMatrix(7), ConfusionMatrix(7), ConfusionMatrix(7)
    a.update(gt, pred)
    b.update(gt[:3], pred[:3])
    c.update(gt[3:], pred[3:])
    b.merge(c)
    np.testing.assert_array_equal(a.matrix, b.matrix)
    a.reset()
    assert a.matrix.sum() == 0 and math.isnan(a.result()["mean_iou"])


def test_bad_inputs_are_rejected():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="same shape"):
        cm.update(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(ValueError, match=r"labels must be class ids in \[0, 2\]"):
        cm.update(np.full((2, 2), 7), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="predictions must be class ids"):
        cm.update(np.zeros((2, 2), int), np.full((2, 2), 3))
    with pytest.raises(ValueError, match="integer class ids"):
        cm.update(np.zeros((2, 2)), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="Received"):
        ConfusionMatrix(0)
    with pytest.raises(ValueError, match="Cannot merge"):
        cm.merge(ConfusionMatrix(4))
    assert cm.matrix.sum() == 0  # nothing half-counted


def test_format_table(rng):
    gt, pred = _random(rng, (20, 20), 3, absent=(2,))
    cm = ConfusionMatrix(3)
    cm.update(gt, pred)
    table = format_table(cm.result(), ["background", "cat", "dog"])
    lines = table.splitlines()
    assert lines[0].split() == ["id", "class", "IoU", "acc"]
    assert lines[3].split()[1:] == ["dog", "-", "-"]
    assert f"{100 * cm.result()['mean_iou']:6.2f}".strip() in lines[-4]
    with pytest.raises(ValueError, match="class_names"):
        format_table(cm.result(), ["a"])


def test_evaluate_loop_over_tf_dataset(rng):
    import tensorflow as tf

    images = rng.integers(0, 256, size=(5, 12, 14, 3)).astype(np.uint8)
    labels = rng.integers(0, 3, size=(5, 12, 14)).astype(np.uint8)
    labels[:, 0] = 255
    ds = tf.data.Dataset.from_tensor_slices(
        {"image": images, "label": labels, "id": [f"im{i}" for i in range(5)]}
    )
    lookup = {images[i].tobytes(): labels[i] for i in range(5)}

    def oracle(image):  # one-hot scores of the true label (ignore -> class 0)
        lab = lookup[np.asarray(image).tobytes()].astype(int)
        return np.eye(3)[np.where(lab == 255, 0, lab)]

    seen = []
    r = evaluate(oracle, ds, 3, on_example=lambda n, *a: seen.append(n))
    assert r["mean_iou"] == 1.0 and r["num_images"] == 5 and seen == [f"im{i}" for i in range(5)]
    r = evaluate(oracle, ds.batch(2), 3, limit=3)
    assert r["num_images"] == 3
    want = reference_scores(labels[:3], labels[:3].astype(int), 3)
    assert r["pixel_accuracy"] == pytest.approx(want["pixel_accuracy"])
    # A constant predictor: scores equal the reference's.
    r = evaluate(lambda im: np.zeros(im.shape[:2], int), ds, 3)
    want = reference_scores(labels, np.zeros_like(labels, dtype=int), 3)
    assert r["mean_iou"] == pytest.approx(want["mean_iou"])
    json.dumps(r)  # JSON-ready
