"""Optimizer (Caffe SGD, multipliers, poly, accumulation), loss, metric, MSC, recipes."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab_tf.training import (
    CaffeSGD,
    DeepLabLoss,
    MeanIoU,
    MultiScaleTraining,
    PolyDecay,
    paper,
    shrink_labels,
)

LR_MULT = {"weights": 1.0, "biases": 2.0, "classifier_weights": 10.0, "classifier_biases": 20.0}


def tiny_net(num_classes=3, trainable_bn=False):
    """A miniature DeepLab-like net: backbone conv + frozen BN, fc8 classifier."""
    x = inp = keras.Input((None, None, 3), name="images")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(x)
    bn = keras.layers.BatchNormalization(epsilon=1e-5, name="bn_conv1")
    bn.trainable = trainable_bn
    x = bn(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(num_classes, 1, name="fc8_voc12")(x)
    return keras.Model(inp, x, name="tiny")


def numpy_caffe_steps(model, x, y, lrs, momentum, wd, mults):
    """Caffe's update computed by hand from TF gradients; returns the expected weights."""
    loss_fn = DeepLabLoss()
    weights = {v.path: v.numpy().copy() for v in model.trainable_variables}
    vel = {k: np.zeros_like(w) for k, w in weights.items()}
    for lr in lrs:
        for v in model.trainable_variables:
            v.assign(weights[v.path])
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x))
        grads = tape.gradient(loss, model.trainable_variables)
        for v, g in zip(model.trainable_variables, grads):
            lr_mult, decay_mult = mults[v.path]
            vel[v.path] = momentum * vel[v.path] + lr * lr_mult * (
                g.numpy() + wd * decay_mult * weights[v.path]
            )
            weights[v.path] = weights[v.path] - vel[v.path]
    return weights


def test_caffe_sgd_matches_numpy_update_per_variable():
    model = tiny_net()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, (2, 8, 8)).astype("uint8")
    y[0, :2] = 255
    start = [v.numpy().copy() for v in model.variables]
    bn_before = {v.path: v.numpy().copy() for v in model.get_layer("bn_conv1").variables}
    mults = {
        "conv1/kernel": (1, 1),
        "conv1/bias": (2, 0),
        "fc8_voc12/kernel": (10, 1),
        "fc8_voc12/bias": (20, 0),
    }
    assert sorted(mults) == sorted(v.path for v in model.trainable_variables)
    base, steps = 0.05, 10
    lrs = [base * (1 - k / steps) ** 0.9 for k in range(2)]
    expected = numpy_caffe_steps(model, x, y, lrs, 0.9, 5e-4, mults)
    for v, s in zip(model.variables, start):
        v.assign(s)

    opt = CaffeSGD(PolyDecay(base, steps), momentum=0.9, weight_decay=5e-4)
    loss_fn = DeepLabLoss()
    for _ in range(2):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x))
        opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
    for v in model.trainable_variables:
        np.testing.assert_allclose(
            v.numpy(), expected[v.path], rtol=1e-5, atol=1e-7, err_msg=v.path
        )
    # The classifier moved far more than the backbone (10x / 20x multipliers actually applied).
    for v in model.get_layer("bn_conv1").variables:
        np.testing.assert_array_equal(v.numpy(), bn_before[v.path])
    assert int(opt.iterations) == 2
    np.testing.assert_allclose(float(opt.learning_rate), base * (1 - 2 / steps) ** 0.9, rtol=1e-6)


def test_multipliers_are_what_the_update_uses():
    """A zero-gradient step isolates decay: only kernels decay, scaled by lr * lr_mult * wd."""
    model = tiny_net()
    opt = CaffeSGD(0.1, momentum=0.0, weight_decay=0.5)
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    opt.apply([tf.zeros_like(v) for v in model.trainable_variables], model.trainable_variables)
    for v in model.trainable_variables:
        mult = 10.0 if v.path.startswith("fc8") else 1.0
        decay = 1.0 if v.path.endswith("kernel") else 0.0
        np.testing.assert_allclose(
            v.numpy(), before[v.path] * (1 - 0.1 * mult * 0.5 * decay), rtol=1e-6
        )
    # Biases move by lr * 2 (backbone) and lr * 20 (classifier) per unit gradient.
    opt2 = CaffeSGD(0.1, momentum=0.0, weight_decay=0.0)
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    opt2.apply([tf.ones_like(v) for v in model.trainable_variables], model.trainable_variables)
    for v in model.trainable_variables:
        mult = {"conv1/kernel": 1, "conv1/bias": 2, "fc8_voc12/kernel": 10, "fc8_voc12/bias": 20}[
            v.path
        ]
        np.testing.assert_allclose(before[v.path] - v.numpy(), 0.1 * mult, rtol=1e-5)


def test_trainable_batchnorm_gets_no_decay_and_resnet_classifier_detected():
    from deeplab_tf.training.optimizer import variable_multipliers

    model = tiny_net(trainable_bn=True)
    got = {v.path: variable_multipliers(v) for v in model.trainable_variables}
    assert got["bn_conv1/gamma"] == (1.0, 0.0) and got["bn_conv1/beta"] == (1.0, 0.0)

    class V:  # the ResNet head's Caffe name
        path = "fc1_voc12_c0/bias"

    assert variable_multipliers(V()) == (20.0, 0.0)


def test_accumulation_5x2_equals_batch_10():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, (10, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, (10, 8, 8)).astype("uint8")  # no ignored pixels: equal-weight halves
    results = []
    for batch, accum in ((10, None), (5, 2)):
        keras.utils.set_random_seed(3)
        model = tiny_net()
        model.compile(
            optimizer=CaffeSGD(PolyDecay(0.05, 3), gradient_accumulation_steps=accum),
            loss=DeepLabLoss(),
        )
        model.fit(x, y, batch_size=batch, epochs=3, shuffle=False, verbose=0)
        assert int(model.optimizer.iterations) == 3
        np.testing.assert_allclose(float(model.optimizer.learning_rate), 0.0, atol=1e-9)
        results.append([v.numpy() for v in model.trainable_variables])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_poly_schedule_and_serialization():
    sched = PolyDecay(2.5e-4, 20000)
    for step in (0, 1, 5000, 19999, 20000, 25000):
        want = 2.5e-4 * (1 - min(step, 20000) / 20000) ** 0.9
        np.testing.assert_allclose(float(sched(step)), want, rtol=1e-5, atol=1e-12)
    opt = CaffeSGD(sched, lr_mult={"classifier_biases": 30}, gradient_accumulation_steps=2)
    back = CaffeSGD.from_config(
        keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(opt)).get_config()
    )
    assert back.lr_mult["classifier_biases"] == 30 and back.gradient_accumulation_steps == 2
    assert back.caffe_weight_decay == 5e-4
    with pytest.raises(ValueError, match="Received"):
        CaffeSGD(0.1, lr_mult={"bn": 0})
    with pytest.raises(ValueError, match="Received"):
        PolyDecay(0.1, 0)


def test_docstring_claims_keras_sgd_and_polynomial_decay_agree_with_caffe():
    """What optimizer.py states: with multipliers 1 and no decay CaffeSGD is Keras's momentum
    SGD (under a schedule too), and PolynomialDecay(end 0) is PolyDecay up to float32 rounding;
    with decay, CaffeSGD's L2 goes through the momentum, unlike Keras's decoupled decay."""
    ones = dict.fromkeys(LR_MULT, 1.0)
    grads = [np.array([1.0, -2.0, 0.5], np.float32) * (i + 1) for i in range(4)]

    def run(opt):
        w = keras.Variable(np.ones(3, np.float32), name="kernel")
        for g in grads:
            opt.apply_gradients([(g, w)])
        return w.numpy()

    caffe = run(CaffeSGD(PolyDecay(0.1, 5), momentum=0.9, weight_decay=0.0, lr_mult=ones))
    np.testing.assert_allclose(caffe, run(keras.optimizers.SGD(PolyDecay(0.1, 5), momentum=0.9)))
    decayed = run(CaffeSGD(0.1, momentum=0.9, weight_decay=0.01, lr_mult=ones))
    w, v = np.ones(3), np.zeros(3)
    for g in grads:
        v = 0.9 * v + 0.1 * (g + 0.01 * w)
        w = w - v
    np.testing.assert_allclose(decayed, w, rtol=1e-6)
    keras_decayed = run(keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=0.01))
    assert not np.allclose(keras_decayed, w, rtol=1e-6)
    keras_poly = keras.optimizers.schedules.PolynomialDecay(
        2.5e-4, 20000, end_learning_rate=0.0, power=0.9
    )
    for step in (0, 1, 5000, 19990, 19999, 20000, 25000):
        np.testing.assert_allclose(
            float(keras_poly(step)), float(PolyDecay(2.5e-4, 20000)(step)), rtol=2e-4, atol=0
        )


def numpy_ce(labels, logits, ignore=255):
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    valid = labels != ignore
    picked = np.take_along_axis(logp, np.where(valid, labels, 0)[..., None], -1)[..., 0]
    return -(picked * valid).sum() / valid.sum()


def test_loss_shrinks_labels_by_corner_aligned_nearest_and_ignores_255():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, (2, 17, 17)).astype("uint8")
    labels[:, :, :5] = 255
    logits = rng.normal(size=(2, 3, 3, 4)).astype("float32")
    # Caffe Interp shrink of 17 -> 3: label pixels 0, 8, 16.
    small = labels[:, ::8, ::8]
    np.testing.assert_array_equal(shrink_labels(labels, (3, 3)).numpy(), small)
    np.testing.assert_allclose(
        float(DeepLabLoss()(labels, logits)), numpy_ce(small, logits), rtol=1e-5
    )
    # PyTorch's nearest: floor(i * 17 / 3) = 0, 5, 11.
    idx = np.array([0, 5, 11])
    np.testing.assert_array_equal(
        shrink_labels(labels, (3, 3), "nearest_floor").numpy(), labels[:, idx][:, :, idx]
    )
    # Option: logits upsampled to the label size (Caffe Interp), loss over all valid pixels.
    from deeplab_tf.layers import resize_logits

    up = resize_logits(logits, (17, 17)).numpy()
    got = float(DeepLabLoss(label_mode="upsample_logits")(labels, logits))
    np.testing.assert_allclose(got, numpy_ce(labels, up), rtol=1e-5)
    # All pixels ignored: zero loss, no NaN.
    assert float(DeepLabLoss()(np.full((1, 17, 17), 255, np.uint8), logits[:1])) == 0.0


def numpy_miou(labels, preds, c, ignore=255):
    ious = []
    keep = labels != ignore
    for k in range(c):
        inter = np.sum((labels == k) & (preds == k) & keep)
        union = np.sum(((labels == k) | (preds == k)) & keep)
        if union:
            ious.append(inter / union)
    return float(np.mean(ious))


def test_mean_iou_matches_numpy_reference_over_batches():
    rng = np.random.default_rng(3)
    metric = MeanIoU(5)
    all_l, all_p = [], []
    for _ in range(3):
        labels = rng.integers(0, 4, (2, 9, 9)).astype("uint8")  # class 4 never in labels
        labels[rng.random(labels.shape) < 0.2] = 255
        logits = rng.normal(size=(2, 9, 9, 5)).astype("float32")
        metric.update_state(labels, logits)
        all_l.append(labels)
        all_p.append(logits.argmax(-1))
    want = numpy_miou(np.concatenate(all_l), np.concatenate(all_p), 5)
    np.testing.assert_allclose(float(metric.result()), want, rtol=1e-6)
    metric.reset_state()
    assert float(metric.result()) == 0.0
    perfect = MeanIoU(3)
    lab = np.array([[[0, 1], [2, 255]]], np.uint8)
    perfect.update_state(lab, np.eye(3, dtype="float32")[np.array([[[0, 1], [2, 0]]])])
    assert float(perfect.result()) == 1.0


def test_paper_recipe_reads_registry():
    kw = paper("resnet101", steps=100)
    assert isinstance(kw["optimizer"], CaffeSGD)
    sched = kw["optimizer"]._learning_rate
    assert (sched.base_lr, sched.max_steps, sched.power) == (2.5e-4, 100, 0.9)
    assert kw["optimizer"].momentum == 0.9 and kw["optimizer"].caffe_weight_decay == 5e-4
    assert kw["optimizer"].lr_mult == LR_MULT
    assert isinstance(kw["loss"], DeepLabLoss) and kw["metrics"][0].num_classes == 21
    assert paper("deeplabv2_vgg16_largefov")["optimizer"]._learning_rate.base_lr == 1e-3
    assert paper("vgg16", accumulation_steps=2)["optimizer"].gradient_accumulation_steps == 2
    import deeplab_tf.recipes

    assert deeplab_tf.recipes.paper is paper
    with pytest.raises(ValueError, match="Unknown model or backbone"):
        paper("resnet18")


def test_msc_under_fit_sums_four_losses_and_saves(tmp_path):
    net = tiny_net(3)
    msc = MultiScaleTraining(net)
    assert msc.built  # BackupAndRestore needs a built model before fit()
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 3, (2, 16, 16)).astype("uint8")
    loss_fn = DeepLabLoss()
    outs = msc(x, training=True)
    assert sorted(outs) == ["fused", "scale_0.5", "scale_0.75", "scale_1"]
    assert outs["scale_0.75"].shape[1:3] == (12, 12) and outs["scale_0.5"].shape[1:3] == (8, 8)
    # Fused = max of the 1x logits and the others upsampled (corners aligned) to 16x16.
    up = [
        tf.raw_ops.ResizeBilinear(images=outs[k], size=[16, 16], align_corners=True)
        for k in ("scale_0.75", "scale_0.5")
    ]
    np.testing.assert_allclose(
        outs["fused"], np.maximum(outs["scale_1"], np.maximum(*up)), atol=1e-5
    )
    want = sum(float(loss_fn(y, outs[k])) for k in outs)
    msc.compile(optimizer=CaffeSGD(1e-3), loss=DeepLabLoss(), metrics=[MeanIoU(3)])
    np.testing.assert_allclose(float(msc.compute_loss(x, y, outs)), want, rtol=1e-5)
    hist = msc.fit(x, y, batch_size=2, epochs=2, verbose=0)
    assert set(hist.history) == {"loss", "mean_iou"} and int(msc.optimizer.iterations) == 2
    path = str(tmp_path / "msc.keras")
    msc.save(path)
    back = keras.saving.load_model(path)
    np.testing.assert_allclose(back.predict(x, verbose=0), msc.predict(x, verbose=0), atol=1e-5)
    assert back.scales == (1.0, 0.75, 0.5)
    with pytest.raises(ValueError, match="Received"):
        MultiScaleTraining(net, scales=(0.5, 1.0))
