"""Class imbalance and training health: class-weighted and OHEM losses, class weights from label
histograms, their config keys and CLI flags, the zero-IoU warning, the batch ids of a NaN loss,
and the all-background failure of plain cross-entropy on a rare-foreground set."""

import ast
import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab_tf.training.class_weights import (
    LabelHistogram,
    class_weights_from_histogram,
    compute_class_weights,
    histogram_from_labels,
    label_histogram,
)
from deeplab_tf.training.losses import DeepLabLoss, ohem_mask, shrink_labels
from tests._data_utils import rare_foreground_arrays
from tests._harness import PoisonWeights


def numpy_pixel_ce(labels, logits, ignore=255):
    """Per-pixel cross-entropy (0 where ignored) and the true-class probability."""
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    valid = labels != ignore
    picked = np.take_along_axis(logp, np.where(valid, labels, 0)[..., None], -1)[..., 0]
    return np.where(valid, -picked, 0.0), np.exp(picked), valid


def _random_case(seed=0, n=2, h=9, w=11, c=4):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (n, h, w, c)).astype("float32")
    labels = rng.integers(0, c, (n, h, w)).astype("uint8")
    labels[rng.random((n, h, w)) < 0.2] = 255
    return labels, logits


def test_weighted_ce_equals_numpy_reference_with_ignore_pixels_and_shrinking():
    labels, logits = _random_case(0)
    weights = [0.3, 2.0, 0.0, 5.5]
    ce, _, valid = numpy_pixel_ce(labels, logits)
    w = np.where(valid, np.take(weights, np.where(valid, labels, 0)), 0.0)
    want = (ce * w).sum() / w.sum()
    got = float(DeepLabLoss(class_weights=weights)(labels, logits))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # All weights 1 is the plain loss; the scale of the weights does not matter.
    plain = float(DeepLabLoss()(labels, logits))
    np.testing.assert_allclose(float(DeepLabLoss(class_weights=[1.0] * 4)(labels, logits)), plain)
    np.testing.assert_allclose(
        float(DeepLabLoss(class_weights=[10 * x for x in weights])(labels, logits)), want, rtol=1e-5
    )
    # Labels at image size are shrunk to the logits' grid first (the rule of the plain loss).
    rng = np.random.default_rng(1)
    big = rng.integers(0, 4, (2, 17, 17)).astype("uint8")
    big[:, :, :4] = 255
    small_logits = rng.normal(size=(2, 3, 3, 4)).astype("float32")
    small = shrink_labels(big, (3, 3)).numpy()
    np.testing.assert_array_equal(small, big[:, ::8, ::8])
    ce, _, valid = numpy_pixel_ce(small, small_logits)
    w = np.where(valid, np.take(weights, np.where(valid, small, 0)), 0.0)
    np.testing.assert_allclose(
        float(DeepLabLoss(class_weights=weights)(big, small_logits)),
        (ce * w).sum() / w.sum(),
        rtol=1e-5,
    )
    # No valid pixel: 0, not NaN.
    assert float(DeepLabLoss(class_weights=weights)(np.full_like(big, 255), small_logits)) == 0.0


def test_ohem_by_loss_keeps_exactly_the_k_hardest_pixels():
    labels, logits = _random_case(2)
    ce, p, valid = numpy_pixel_ce(labels, logits)
    n_valid = int(valid.sum())
    for min_kept in (1, 7, 40, 10_000):
        loss = DeepLabLoss(ohem="loss", ohem_min_kept=min_kept)
        kept = ohem_mask(
            tf.constant(np.where(valid, labels, 0).astype("int32")),
            tf.constant(logits),
            tf.constant(valid),
            "loss",
            min_kept,
        ).numpy()
        k = min(min_kept * labels.shape[0], n_valid)
        assert kept.sum() == k and not (kept & ~valid).any()
        order = np.argsort(np.where(valid, ce, -np.inf), axis=None)[::-1]
        np.testing.assert_array_equal(np.sort(np.flatnonzero(kept)), np.sort(order[:k]))
        np.testing.assert_allclose(float(loss(labels, logits)), ce[kept].mean(), rtol=1e-5)
    # With class weights the kept pixels are weighted (selection by the unweighted loss).
    weights = np.array([1.0, 3.0, 0.5, 2.0])
    kept = np.zeros(labels.size, bool)
    kept[np.argsort(np.where(valid, ce, -np.inf), axis=None)[::-1][:14]] = True
    kept = kept.reshape(labels.shape)
    w = np.where(kept, weights[np.where(valid, labels, 0)], 0.0)
    got = DeepLabLoss(class_weights=list(weights), ohem="loss", ohem_min_kept=7)(labels, logits)
    np.testing.assert_allclose(float(got), (ce * w).sum() / w.sum(), rtol=1e-5)


def test_ohem_by_threshold_keeps_the_pixels_below_it_and_at_least_the_minimum():
    labels, logits = _random_case(3)
    ce, p, valid = numpy_pixel_ce(labels, logits)
    for threshold in (0.05, 0.3, 0.7):
        below = valid & (p < threshold)
        for min_kept in (1, 5, 60):
            k = min(min_kept * labels.shape[0], int(valid.sum()))
            loss = DeepLabLoss(ohem="threshold", ohem_threshold=threshold, ohem_min_kept=min_kept)
            _, w = loss.pixel_weights(tf.constant(labels.astype("int32")), tf.constant(logits))
            kept = w.numpy() > 0
            if below.sum() >= k:
                np.testing.assert_array_equal(kept, below)
            else:  # too few below the threshold: the k hardest
                assert kept.sum() == k
                hardest = np.argsort(np.where(valid, p, np.inf), axis=None)[:k]
                np.testing.assert_array_equal(np.sort(np.flatnonzero(kept)), np.sort(hardest))
            np.testing.assert_allclose(float(loss(labels, logits)), ce[kept].mean(), rtol=1e-5)
    # Both branches were exercised above: at 0.05 few pixels pass, at 0.7 many.
    assert (valid & (p < 0.05)).sum() < 60 * 2 <= (valid & (p < 0.7)).sum()


def test_loss_arguments_are_checked_and_the_config_round_trips(tmp_path):
    loss = DeepLabLoss(class_weights=[0.5, 2], ohem="threshold", ohem_threshold=0.7)
    back = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(back) is DeepLabLoss and back.get_config() == loss.get_config()
    assert back.class_weights == (0.5, 2.0) and back.ohem_min_kept == 256
    for kwargs, match in [
        ({"ohem": "hard"}, r"ohem must be None or one of \('loss', 'threshold'\)"),
        ({"ohem": "threshold"}, r"needs ohem_threshold.*Received: ohem_threshold=None"),
        ({"ohem": "threshold", "ohem_threshold": 1.0}, "in \\(0, 1\\)"),
        ({"ohem_threshold": 0.5}, "only used with ohem='threshold'"),
        ({"ohem": "loss", "ohem_min_kept": 0}, "ohem_min_kept must be a positive int"),
        ({"class_weights": [1.0, -1.0]}, r"finite numbers >= 0.*\[1.0, -1.0\]"),
        ({"class_weights": [0, 0]}, "all zero"),
        ({"class_weights": "median_frequency"}, "sequence of numbers"),
    ]:
        with pytest.raises(ValueError, match=match):
            DeepLabLoss(**kwargs)
    labels, logits = _random_case(0)
    with pytest.raises(ValueError, match="class_weights has 3 weights but the logits have 4"):
        DeepLabLoss(class_weights=[1, 2, 3])(labels, logits)


@pytest.mark.large
@pytest.mark.multiprocess
def test_compiled_model_with_weighted_ohem_loss_loads_in_a_new_process(tmp_path):
    from tests._fresh_process import load_in_new_process
    from tests._harness import tiny_segmenter

    model = tiny_segmenter(3)
    loss = DeepLabLoss(class_weights=[0.2, 1.0, 4.0], ohem="loss", ohem_min_kept=3)
    model.compile(optimizer="adam", loss=loss)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 3, (2, 32, 32)).astype("uint8")
    model.fit(x, y, epochs=1, verbose=0)
    report = load_in_new_process(tmp_path, {"m": (model, x, y)})["m"]
    assert report["loss"] == "DeepLabLoss" and np.isfinite(report["loss_after"])
    back = keras.saving.load_model(str(tmp_path / "m.keras"))
    assert back.loss.get_config() == loss.get_config()


def test_msc_training_sums_the_weighted_ohem_loss_over_scales():
    from deeplab_tf.training import CaffeSGD, MultiScaleTraining
    from tests._harness import tiny_segmenter

    msc = MultiScaleTraining(tiny_segmenter(3))
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 3, (2, 32, 32)).astype("uint8")
    y[:, :3] = 255
    loss = DeepLabLoss(class_weights=[0.5, 1.0, 3.0], ohem="threshold", ohem_threshold=0.6)
    outs = msc(x, training=True)
    want = sum(float(loss(y, outs[k])) for k in ("fused", "scale_1", "scale_0.75", "scale_0.5"))
    msc.compile(optimizer=CaffeSGD(1e-3), loss=loss)
    np.testing.assert_allclose(float(msc.compute_loss(x, y, outs)), want, rtol=1e-5)
    hist = msc.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])


def test_class_weights_from_a_known_histogram():
    # 3 images of 10 labelled pixels each: [8 bg, 2 a], [6 bg, 4 b], [10 bg]; class c absent.
    maps = [
        np.array([0] * 8 + [1] * 2 + [255] * 5),
        np.array([0] * 6 + [2] * 4),
        np.array([0] * 10 + [255]),
    ]
    hist = histogram_from_labels(maps, 4)
    np.testing.assert_array_equal(hist.pixels, [24, 2, 4, 0])
    np.testing.assert_array_equal(hist.image_pixels, [30, 10, 10, 0])
    np.testing.assert_array_equal(hist.images, [3, 1, 1, 0])
    assert hist.num_examples == 3 and hist.ignored == 6
    # Inverse frequency: P / (K n_c) over the K = 3 present classes, P = 30.
    inv = class_weights_from_histogram(hist, "inverse_frequency", absent="zero")
    np.testing.assert_allclose(inv, [30 / 72, 5.0, 2.5, 0.0])
    sqrt = class_weights_from_histogram(hist, "inverse_sqrt_frequency", absent="max")
    np.testing.assert_allclose(sqrt, np.sqrt([30 / 72, 5.0, 2.5, 5.0]))
    # Median frequency: f = n_c / P_c = [0.8, 0.2, 0.4], median 0.4.
    med = class_weights_from_histogram(hist, "median_frequency", absent="zero")
    np.testing.assert_allclose(med, [0.5, 2.0, 1.0, 0.0])
    with pytest.raises(ValueError, match=r"Classes \['cat'\] \(ids \[3\]\) have no pixel"):
        class_weights_from_histogram(hist, "median_frequency", class_names=["bg", "a", "b", "cat"])
    with pytest.raises(ValueError, match="method must be one of"):
        class_weights_from_histogram(hist, "inverse")
    with pytest.raises(ValueError, match="absent must be one of"):
        class_weights_from_histogram(hist, "median_frequency", absent="skip")
    empty = LabelHistogram(np.zeros(2, np.int64), np.zeros(2, np.int64), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="no labelled pixel"):
        class_weights_from_histogram(empty, "inverse_frequency")
    with pytest.raises(ValueError, match=r"Label map 0 has values \[7\] but num_classes=4"):
        histogram_from_labels([np.array([0, 7])], 4)
    # From a dataset of the shared contract (the pipeline's input), ignore label excluded.
    ds = tf.data.Dataset.from_generator(
        lambda: ({"label": m.astype("uint8")} for m in maps),
        output_signature={"label": tf.TensorSpec((None,), tf.uint8)},
    )
    np.testing.assert_array_equal(label_histogram(ds, 4).pixels, [24, 2, 4, 0])
    np.testing.assert_array_equal(label_histogram(ds, 4, max_examples=1).pixels, [8, 2, 0, 0])
    np.testing.assert_allclose(compute_class_weights(ds, 4, absent="zero"), med)
    with pytest.raises(ValueError, match="empty dataset"):
        label_histogram(ds.take(0), 4)


def _tiny_config(workdir, **train):
    return {
        "model": {"name": "deeplabv2_mobilenetv2_aspp_l", "weights": None},
        "data": {"name": "synthetic", "size": 32, "num_classes": 3, "train": {"num_images": 4}},
        "train": {"steps": 2, "batch_size": 2, "crop_size": 32, "verbose": 0, **train},
        "output": {"workdir": workdir, "checkpoint_every": 1, "tensorboard": False},
    }


def test_config_keys_are_validated_with_clear_errors(tmp_path):
    from deeplab_tf.training.trainer import resolve_config, train

    cfg = resolve_config(_tiny_config("w", class_weighting="median_frequency", ohem="loss"))
    assert cfg["train"]["class_weighting"] == "median_frequency"
    assert cfg["train"]["ohem_min_kept"] == 256 and cfg["val"]["zero_iou_patience"] == 3
    for keys, match in [
        (
            {"class_weighting": "median_frequncy"},
            r"train.class_weighting must be one of .*did you mean",
        ),
        ({"class_weights": [1, -2]}, r"train.class_weights every item must be >= 0"),
        ({"class_weights": [1, 2], "class_weighting": "inverse_frequency"}, "not both"),
        ({"class_weight_examples": 10}, "class_weight_examples .* needs train.class_weighting"),
        ({"class_weight_absent": "drop"}, r"class_weight_absent must be one of \['error'"),
        ({"ohem": "top_k"}, r"train.ohem must be one of \['loss', 'threshold'\]"),
        ({"ohem": "threshold"}, r"needs train.ohem_threshold"),
        ({"ohem": "threshold", "ohem_threshold": 1.5}, r"train.ohem_threshold must be < 1"),
        ({"ohem": "loss", "ohem_threshold": 0.5}, "only used with train.ohem: threshold"),
        ({"ohem_min_kept": 0}, r"train.ohem_min_kept must be a positive int"),
    ]:
        with pytest.raises(ValueError, match=match):
            resolve_config(_tiny_config("w", **keys))
    with pytest.raises(ValueError, match=r"val.zero_iou_patience must be a positive int"):
        resolve_config({**_tiny_config("w"), "val": {"zero_iou_patience": 0}})
    # Checks that need the data run before the model is built and before anything is written.
    workdir = tmp_path / "w"
    with pytest.raises(ValueError, match=r"train.class_weights: .*one weight per class: 3"):
        train(_tiny_config(str(workdir), class_weights=[1.0, 2.0]))
    with pytest.raises(ValueError, match=r"class_weighting='inverse_frequency' on the training"):
        # 4 synthetic images with 3 classes: count one whose labels miss a class.
        maps = [np.zeros((32, 32), np.uint8)]
        from deeplab_tf.data.info import DatasetInfo

        ds = tf.data.Dataset.from_tensor_slices(
            {"image": np.zeros((1, 32, 32, 3), np.uint8), "label": np.stack(maps), "id": ["a"]}
        )
        train(
            _tiny_config(str(workdir), class_weighting="inverse_frequency"),
            dataset_overrides={"train": (ds, DatasetInfo("toy", ("bg", "x", "y")))},
        )
    assert not workdir.exists()


def test_cli_flags_set_the_keys_and_bad_values_are_clear_errors(capsys):
    import yaml

    from deeplab_tf.cli import main
    from deeplab_tf.errors import CLIError
    from deeplab_tf.training.cli import parse_class_weights

    assert parse_class_weights("median_frequency") == ("class_weighting", "median_frequency")
    assert parse_class_weights("0.5, 12") == ("class_weights", [0.5, 12.0])
    with pytest.raises(CLIError, match=r"did you mean 'median_frequency'\?\)\. Received: 'medi"):
        parse_class_weights("median_frequncy")
    argv = ["train", "--config", "voc12_vgg16_largefov", "--workdir", "w", "--print-config"]
    assert main(argv + ["--class-weights", "inverse_sqrt_frequency", "--ohem", "threshold",
                        "--ohem-threshold", "0.7", "--ohem-min-kept", "100"]) == 0  # fmt: skip
    train = yaml.safe_load(capsys.readouterr().out)["train"]
    assert train["class_weighting"] == "inverse_sqrt_frequency" and train["ohem"] == "threshold"
    assert train["ohem_threshold"] == 0.7 and train["ohem_min_kept"] == 100
    assert main(argv + ["--class-weights", "1,2,3"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["train"]["class_weights"] == [1.0, 2.0, 3.0]
    assert main(argv + ["--ohem", "threshold", "--ohem-threshold", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "train.ohem_threshold must be < 1. Received: 1.5" in err
    assert main(argv + ["--class-weights", "heavy"]) == 2
    assert "--class-weights takes one of" in capsys.readouterr().err


def test_recorded_batch_ids_are_the_ids_of_the_examples_in_each_batch():
    from deeplab_tf.training.pipeline import BatchIdRecorder, train_pipeline

    n = 10  # each example's label is its index: the batch's labels say which examples it holds
    images = np.zeros((n, 8, 8, 3), np.uint8)
    labels = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None], (n, 8, 8)).copy()
    ds = tf.data.Dataset.from_tensor_slices(
        {"image": images, "label": labels, "id": [f"ex{i}" for i in range(n)]}
    )
    # Default keep (1024): prefetching runs ahead of the consumer by a load-dependent number
    # of batches, so a small keep could drop a batch before it is looked up.
    recorder = BatchIdRecorder()
    batches = train_pipeline(ds, 8, 3, None, flip=False, shuffle_buffer=10, batch_ids=recorder)
    for index, (_, label) in enumerate(batches.take(7)):
        assert recorder.get(index) == [f"ex{int(v)}" for v in label.numpy()[:, 0, 0]]
    small = BatchIdRecorder(keep=4)  # only the newest `keep` batches are remembered
    for index in range(7):
        small.record(index, [f"ex{index}"])
    assert small.get(2) is None and small.get(3) == ["ex3"] and small.get(6) == ["ex6"]
    # The batches are those of the pipeline without a recorder.
    plain = train_pipeline(ds, 8, 3, None, flip=False, shuffle_buffer=10, seed=1)
    recorded = train_pipeline(ds, 8, 3, None, flip=False, shuffle_buffer=10, seed=1,
                              batch_ids=BatchIdRecorder())  # fmt: skip
    for (a, la), (b, lb) in zip(plain.take(4), recorded.take(4)):
        np.testing.assert_array_equal(la, lb)
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="batch_ids must be a BatchIdRecorder"):
        train_pipeline(ds, 8, 3, None, batch_ids=["x"])


def test_non_finite_loss_names_the_step_and_the_batch_ids():
    from deeplab_tf.training.callbacks import StopOnNonFiniteLoss
    from deeplab_tf.training.pipeline import BatchIdRecorder, train_pipeline
    from tests._harness import tiny_segmenter

    n = 12
    labels = np.broadcast_to((np.arange(n) % 3).astype(np.uint8)[:, None, None], (n, 16, 16))
    ds = tf.data.Dataset.from_tensor_slices(
        {
            "image": np.full((n, 16, 16, 3), 100, np.uint8),
            "label": labels.copy(),
            "id": [f"ex{i}" for i in range(n)],
        }
    )
    recorder = BatchIdRecorder()
    kwargs = dict(scales=None, flip=False, shuffle_buffer=12, seed=5)
    batches = train_pipeline(ds, 16, 2, batch_ids=recorder, **kwargs)
    model = tiny_segmenter(3)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=DeepLabLoss())
    guard = StopOnNonFiniteLoss(recorder)
    model.fit(batches, steps_per_epoch=6, epochs=1, callbacks=[guard, PoisonWeights(3)], verbose=0)
    assert guard.failure[0] == 4 and not np.isfinite(guard.failure[1])
    # The ids of the fourth batch of the same seeded stream (a pipeline without recorder).
    ids_by_position = []
    for e in ds.shuffle(12, seed=5).repeat().take(8):
        ids_by_position.append(e["id"].numpy().decode())
    assert guard.failure_ids == ids_by_position[6:8], (guard.failure_ids, ids_by_position)


def test_zero_iou_monitor_warns_after_patience_evaluations(caplog):
    from deeplab_tf.training.callbacks import ZeroIoUMonitor
    from deeplab_tf.training.metrics import MeanIoU

    metric = MeanIoU(3)
    monitor = ZeroIoUMonitor(patience=2, class_names=("bg", "cat", "dog"), metric=metric)
    monitor.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    monitor.model.compile(optimizer="sgd", loss="mse")
    monitor.model.optimizer.build(monitor.model.trainable_variables)

    def evaluate(confusion, logs=("val_loss",)):
        metric.confusion.assign(np.asarray(confusion, np.float64))
        with caplog.at_level(logging.WARNING, logger="deeplab_tf.training"):
            caplog.clear()
            monitor.on_epoch_end(0, {k: 1.0 for k in logs})
        return caplog.text

    # cat is in the labels but never predicted; dog is absent from the labels (not judged).
    never_cat = [[50, 0, 0], [5, 0, 0], [0, 0, 0]]
    assert evaluate(never_cat) == ""
    assert evaluate(never_cat, logs=("loss",)) == ""  # a training-only epoch does not count
    text = evaluate(never_cat)
    assert "Class cat (id [1]) has IoU 0 on the validation data for 2 evaluations" in text
    assert monitor.warned == {1} and monitor.evaluations == 2
    assert evaluate(never_cat) == ""  # warned once
    assert evaluate([[50, 0, 0], [3, 2, 0], [0, 0, 0]]) == "" and monitor.warned == set()
    with pytest.raises(ValueError, match="patience must be a positive int"):
        ZeroIoUMonitor(patience=0)


def _rare_fit(loss, ims, labs, val, steps=50, epochs=4):
    from deeplab_tf.training.callbacks import ZeroIoUMonitor
    from deeplab_tf.training.metrics import MeanIoU

    keras.utils.set_random_seed(0)
    x = inp = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 127.5, -1)(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    model = keras.Model(inp, keras.layers.Conv2D(2, 1)(x))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss, metrics=[MeanIoU(2)])
    ds = tf.data.Dataset.from_tensor_slices((ims.astype("float32"), labs))
    monitor = ZeroIoUMonitor(patience=2, class_names=("background", "spot"))
    model.fit(
        ds.shuffle(len(ims), seed=0).repeat().batch(8),
        steps_per_epoch=steps,
        epochs=epochs,
        validation_data=tf.data.Dataset.from_tensor_slices(val).batch(32),
        callbacks=[monitor],
        verbose=0,
    )
    vi, vl = val
    pred = np.argmax(model.predict(vi, verbose=0), -1)
    valid = vl != 255
    inter = ((pred == 1) & (vl == 1) & valid).sum()
    union = (((pred == 1) | (vl == 1)) & valid).sum()
    return inter / union, int(((pred == 1) & valid).sum()), monitor


@pytest.mark.large
def test_plain_ce_predicts_only_background_on_rare_foreground_and_weights_fix_it(caplog):
    """The all-background failure on purpose, and its fix.

    Data: 256 training and 64 held-out 48x48 images, one small disk each (radius 3-5 px,
    colour shifted by 40 levels, noise 12): the foreground is 1.3% of the labelled pixels.
    Network: two 3x3 convolutions of 8 filters and a 1x1 classifier; Adam 0.01, batch 8,
    200 steps (4 epochs of 50, validated after each), same seed for both runs.

    Thresholds: plain cross-entropy reaches a foreground IoU below 0.05 (it predicts only
    background) and the zero-IoU monitor warns about the foreground class; the loss weighted
    by median-frequency balancing (computed from the training labels: [0.507, 38.8]) reaches a
    foreground IoU above 0.2 and no warning stands at the end. Measured here (seed 0): plain
    IoU 0.000 with 0 foreground pixels predicted; weighted IoU 0.55. Over seeds 0-4 the
    weighted run measured 0.25-0.60 and plain cross-entropy 0.000 each time (in this budget;
    plain cross-entropy does learn the disks after about 1000 steps).
    """
    ims, labs, _ = rare_foreground_arrays(256, seed=0)
    vi, vl, _ = rare_foreground_arrays(64, seed=1)
    val = (vi.astype("float32"), vl)
    weights = compute_class_weights(
        tf.data.Dataset.from_tensor_slices({"label": labs}), 2, "median_frequency"
    )
    np.testing.assert_allclose(weights, [0.507, 38.77], rtol=1e-3)
    with caplog.at_level(logging.WARNING, logger="deeplab_tf.training"):
        plain_iou, plain_fg, plain_monitor = _rare_fit(DeepLabLoss(), ims, labs, val)
    weighted_iou, _, weighted_monitor = _rare_fit(
        DeepLabLoss(class_weights=weights), ims, labs, val
    )
    print(f"foreground IoU: plain {plain_iou:.3f} ({plain_fg} px predicted), "
          f"weighted {weighted_iou:.3f}")  # fmt: skip
    assert plain_iou < 0.05 and plain_monitor.warned == {1}
    assert "Class spot (id [1]) has IoU 0" in caplog.text
    assert weighted_iou > 0.2 and weighted_monitor.warned == set()


@pytest.mark.large
def test_trainer_names_batch_ids_and_the_last_good_checkpoint_on_nan(tmp_path, caplog):
    """Also: a run with weights computed from its labels and OHEM trains (one good interval)."""
    from deeplab_tf.data.info import DatasetInfo
    from deeplab_tf.training import list_checkpoints, train

    n = 6
    ds = tf.data.Dataset.from_tensor_slices(
        {
            "image": np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3)).astype(np.uint8),
            "label": np.random.default_rng(1).integers(0, 3, (n, 32, 32)).astype(np.uint8),
            "id": [f"img{i}" for i in range(n)],
        }
    )
    cfg = _tiny_config(
        str(tmp_path / "w"),
        steps=3,
        seed=0,
        optimizer="adam",
        base_lr=1e-3,
        class_weighting="median_frequency",
        ohem="threshold",
        ohem_threshold=0.7,
        ohem_min_kept=16,
    )
    with pytest.raises(RuntimeError) as err, caplog.at_level(logging.INFO, "deeplab_tf.training"):
        train(
            cfg,
            callbacks=[PoisonWeights(at=1)],
            dataset_overrides={"train": (ds, DatasetInfo("toy", ("a", "b", "c")))},
        )
    message = str(err.value)
    good = list_checkpoints(str(tmp_path / "w" / "checkpoints"))
    assert [os.path.basename(f) for f in good] == ["ckpt-000001.weights.h5"]
    assert "loss became non-finite (loss=nan) at step 2; the batch's examples: ['img" in message
    ids = ast.literal_eval(message.split("the batch's examples: ")[1].split("]")[0] + "]")
    assert len(ids) == 2 and set(ids) <= {f"img{i}" for i in range(n)}
    assert f"the last good checkpoint is {good[0]}" in message
    assert "class weights (median_frequency): [" in caplog.text
