"""model.fit end to end: resume after interruption, config/dataset errors, real learning."""

import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab_tf.training import (
    CaffeSGD,
    DeepLabLoss,
    MeanIoU,
    PolyDecay,
    list_checkpoints,
    train,
    training_callbacks,
)
from tests._harness import PoisonWeights


def tiny_net():
    x = inp = keras.Input((None, None, 3), name="images")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(x)
    x = keras.layers.Conv2D(3, 1, name="fc8_voc12")(x)
    return keras.Model(inp, x, name="tiny")


class Interrupt(keras.callbacks.Callback):
    """Raises like a killed process after ``after`` batches of this run."""

    def __init__(self, after):
        super().__init__()
        self.after, self.seen = after, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.after:
            raise KeyboardInterrupt("simulated kill")


class CountBatches(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.n = 0

    def on_train_batch_end(self, batch, logs=None):
        self.n += 1


def _run(workdir, callbacks, steps=12, every=4):
    keras.utils.set_random_seed(0)
    model = tiny_net()
    model.compile(
        optimizer=CaffeSGD(PolyDecay(0.01, steps)), loss=DeepLabLoss(), metrics=[MeanIoU(3)]
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (8, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, (8, 8, 8)).astype("uint8")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(2)
    cbs = training_callbacks(workdir, tensorboard=True) + callbacks
    model.fit(ds, epochs=steps // every, steps_per_epoch=every, callbacks=cbs, verbose=0)
    return model


@pytest.mark.large
def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    full = _run(str(tmp_path / "full"), [])
    killed = str(tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):
        _run(killed, [Interrupt(after=6)])  # dies in the middle of epoch 2
    assert os.path.exists(os.path.join(killed, "backup", "latest.weights.h5"))
    counter = CountBatches()
    resumed = _run(killed, [counter])  # a fresh model and optimizer, same workdir
    assert counter.n == 8  # epoch 1 restored from the backup; epochs 2 and 3 run
    for m in (full, resumed):
        assert int(m.optimizer.iterations) == 12
        assert float(m.optimizer.learning_rate) == 0.0
    assert [os.path.basename(f) for f in list_checkpoints(os.path.join(killed, "checkpoints"))] == [
        "ckpt-000004.weights.h5",
        "ckpt-000008.weights.h5",
        "ckpt-000012.weights.h5",
    ]
    assert not os.path.exists(os.path.join(killed, "backup"))  # removed once training completed
    assert os.listdir(os.path.join(killed, "logs"))  # TensorBoard event files


def _synthetic_config(workdir, **train_overrides):
    return {
        "model": {
            "name": "deeplabv2_mobilenetv2_aspp_l",
            "head": "aspp",
            "rates": [1, 2],
            "freeze_batchnorm": False,
            "weights": None,
        },
        "data": {
            "name": "synthetic",
            "size": 64,
            "num_classes": 5,
            "train": {"split": "train", "num_images": 256},
            "val": {"split": "val", "num_images": 32},
        },
        "train": {
            "steps": 120,
            "batch_size": 8,
            "crop_size": 64,
            "scales": [0.75, 1.0, 1.25],
            "msc": False,
            "optimizer": "adam",
            "base_lr": 3e-3,
            "bn_momentum": 0.9,
            "seed": 0,
            "verbose": 0,
            **train_overrides,
        },
        "val": {"crop_size": 64, "batch_size": 8},
        "output": {"workdir": workdir, "checkpoint_every": 40, "tensorboard": False},
    }


def test_bad_configs_and_datasets_fail_before_training(tmp_path):
    cfg = _synthetic_config(str(tmp_path / "w"))
    with pytest.raises(ValueError, match=r"Unknown keys in config section 'train': \['stepz'\]"):
        train({**cfg, "train": {**cfg["train"], "stepz": 3}})
    with pytest.raises(ValueError, match="multiple of output.checkpoint_every"):
        train({**cfg, "train": {**cfg["train"], "steps": 50}})
    with pytest.raises(ValueError, match=r"train.batch_size must be a positive int. Received: 0"):
        train({**cfg, "train": {**cfg["train"], "batch_size": 0}})
    with pytest.raises(ValueError, match="Unknown model or backbone"):
        train({**cfg, "model": {"name": "resnet18"}})
    started = CountBatches()
    img = tf.zeros((16, 16, 3), tf.uint8)
    lab = np.zeros((16, 16), np.uint8)
    lab[3, 3] = 7
    from deeplab_tf.data.info import DatasetInfo

    info = DatasetInfo("toy", ("a", "b", "c", "d", "e"))
    bad_values = tf.data.Dataset.from_tensors(
        {"image": img, "label": tf.constant(lab), "id": tf.constant("t1")}
    )
    with pytest.raises(ValueError, match=r"'t1' has label values \[7\] but num_classes=5"):
        train(cfg, callbacks=[started], dataset_overrides={"train": (bad_values, info)})
    bad_dtype = tf.data.Dataset.from_tensors(
        {"image": img, "label": tf.zeros((16, 16), tf.int64), "id": tf.constant("t")}
    )
    with pytest.raises(ValueError, match="'label' must be uint8.*Received: dtype=int64"):
        train(cfg, callbacks=[started], dataset_overrides={"train": (bad_dtype, info)})
    bad_rank = tf.data.Dataset.from_tensors(
        {"image": img[None], "label": tf.constant(lab)[None], "id": tf.constant("t")}
    )
    with pytest.raises(
        ValueError,
        match=r"'image' must be uint8 with shape \(H, W, 3\).*"
        r"Received: dtype=uint8, shape=\(1, 16, 16, 3\)",
    ):
        train(cfg, callbacks=[started], dataset_overrides={"train": (bad_rank, info)})
    with pytest.raises(ValueError, match="model.num_classes=21 but dataset 'toy' has 5"):
        train(
            {**cfg, "model": {**cfg["model"], "num_classes": 21}},
            dataset_overrides={"train": (bad_values, info)},
        )
    assert started.n == 0 and not os.path.exists(str(tmp_path / "w"))


@pytest.mark.large
def test_learning_is_real_on_synthetic_data_via_cli(tmp_path):
    """MobileNetV2 DeepLab from scratch, 120 Adam steps of 8 crops at 64 px, through the CLI."""
    import yaml

    from deeplab_tf.cli import main
    from deeplab_tf.data.synthetic import synthetic_dataset
    from deeplab_tf.training.pipeline import eval_pipeline

    path = tmp_path / "cfg.yaml"
    config = _synthetic_config("unused")
    del config["data"]["val"]  # scored below on a held-out split; saves per-epoch validation
    path.write_text(yaml.safe_dump(config))
    workdir = str(tmp_path / "run")
    assert main(["train", "--config", str(path), "--workdir", workdir]) == 0
    model = keras.saving.load_model(os.path.join(workdir, "model.keras"))
    # Held out: a split the training never saw, scored at full resolution.
    ds, _ = synthetic_dataset("test", num_images=48, size=64, num_classes=5)
    metric = MeanIoU(5, label_mode="upsample_logits")
    baseline = MeanIoU(5)  # chance level: everything predicted as background
    for images, labels in eval_pipeline(ds, 64, 16, mean=(127.5,) * 3):
        metric.update_state(labels, model(images, training=False))
        baseline.update_state(labels, tf.one_hot(tf.zeros(tf.shape(labels), tf.int32), 5))
    miou, chance = float(metric.result()), float(baseline.result())
    print(f"held-out mIoU after 120 steps: {miou:.3f} (all-background: {chance:.3f})")
    assert chance < 0.2
    assert miou > 0.4
    assert len(list_checkpoints(os.path.join(workdir, "checkpoints"))) == 3


def test_shipped_configs_resolve_to_the_paper_recipes(capsys):
    from deeplab_tf.cli import main
    from deeplab_tf.training.cli import load_config, shipped_configs
    from deeplab_tf.training.trainer import resolve_config

    names = shipped_configs()
    assert {"voc12_resnet101_aspp_l", "voc12_vgg16_largefov", "synthetic_tiny"} <= set(names)
    for name in names:
        resolve_config(load_config(name))
    r101 = resolve_config(load_config("voc12_resnet101_aspp_l"))["train"]
    assert (r101["base_lr"], r101["steps"], r101["batch_size"] * r101["accumulation_steps"]) == (
        2.5e-4,
        20000,
        10,
    )
    assert r101["msc"] and r101["msc_scales"] == [1.0, 0.75, 0.5] and r101["crop_size"] == 321
    vgg = resolve_config(load_config("voc12_vgg16_largefov"))["train"]
    assert (vgg["base_lr"], vgg["batch_size"], vgg["msc"]) == (1e-3, 10, False)
    assert (
        main(["train", "--config", "voc12_vgg16_largefov", "--steps", "3000", "--print-config"])
        == 0
    )
    assert "steps: 3000" in capsys.readouterr().out
    assert (
        main(
            [
                "train",
                "--config",
                "voc12_vgg16_largefov",
                "--set",
                "train.steps=-1",
                "--print-config",
            ]
        )
        == 2
    )
    assert "train.steps must be a positive int. Received: -1" in capsys.readouterr().err


def test_config_schema_reports_every_problem_at_once(tmp_path):
    from deeplab_tf.training.trainer import resolve_config

    cfg = _synthetic_config(str(tmp_path / "w"))
    cfg["train"].update(
        base_lr=float("nan"), flip="maybe", momentum=5, bacth_size=4, power=float("inf")
    )
    cfg["train"]["steps"] = "120"
    cfg["model"]["dropout"] = 2.0
    cfg["model"]["rates"] = [1, -2]
    cfg["data"]["sise"] = 64
    cfg["data"]["train"] = {"split": "train", "num_imagez": 8}
    cfg["output"]["tensorboard"] = "yes"
    cfg["distribute"] = {"strategy": "mirored"}
    cfg["vall"] = {}
    with pytest.raises(ValueError) as info:
        resolve_config(cfg)
    message = str(info.value)
    for expected in (
        "(12 problems)",
        "train.base_lr must be a finite number. Received: nan",
        "train.flip must be true or false. Received: 'maybe'",
        "train.momentum must be < 1. Received: 5",
        "train.power must be a finite number. Received: inf",
        "train.steps must be a positive int. Received: '120'",
        "'bacth_size' (did you mean 'batch_size'?)",
        "model.dropout must be < 1. Received: 2.0",
        "model.rates every item must be >= 1. Received: [1, -2]",
        "'sise' (did you mean 'size'?)",
        "'train.num_imagez' (did you mean 'num_images'?)",
        "output.tensorboard must be true or false. Received: 'yes'",
        "distribute.strategy must be one of ['default', 'mirrored', 'multi_worker', 'tpu'] "
        "(did you mean 'mirrored'?)",
        "Unknown config section 'vall' (did you mean 'val'?)",
    ):
        assert expected in message, (expected, message)
    cfg = _synthetic_config(str(tmp_path / "w"), base_lr=0.0)
    with pytest.raises(ValueError, match=r"train.base_lr must be > 0. Received: 0.0"):
        resolve_config(cfg)
    cfg = _synthetic_config(str(tmp_path / "w"))
    cfg["data"]["name"] = "synthetik"
    with pytest.raises(ValueError, match=r"did you mean 'synthetic'"):
        resolve_config(cfg)


def _toy_examples(n, bad_at=None):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
    labels = rng.integers(0, 5, (n, 32, 32)).astype(np.uint8)
    if bad_at is not None:
        labels[bad_at, 5, 5] = 9
    ids = [f"img{i:03d}.png" for i in range(n)]
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels, "id": ids})


def _tiny_run_config(workdir, **train):
    cfg = _synthetic_config(workdir, steps=2, batch_size=2, crop_size=32, **train)
    cfg["output"]["checkpoint_every"] = 1
    del cfg["data"]["val"]
    return cfg


def test_empty_dataset_stops_before_training(tmp_path):
    from deeplab_tf.data.info import DatasetInfo

    info = DatasetInfo("toy", ("a", "b", "c", "d", "e"))
    empty = _toy_examples(1).take(0)
    started = CountBatches()
    with pytest.raises(ValueError, match="The training dataset is empty. Received: 0 examples"):
        train(
            _tiny_run_config(str(tmp_path / "w")),
            callbacks=[started],
            dataset_overrides={"train": (empty, info)},
        )
    assert started.n == 0 and not os.path.exists(tmp_path / "w")


@pytest.mark.large
def test_bad_label_beyond_the_precheck_stops_cleanly_naming_the_example(tmp_path):
    from deeplab_tf.data.info import DatasetInfo

    info = DatasetInfo("toy", ("a", "b", "c", "d", "e"))
    workdir = tmp_path / "w"
    cfg = _tiny_run_config(str(workdir), validate_examples=2)
    with pytest.raises(ValueError) as err:
        train(cfg, dataset_overrides={"train": (_toy_examples(6, bad_at=4), info)})
    message = str(err.value)
    assert 'Bad training example "img004.png": label values' in message
    assert message.split(". Training")[0].endswith("found [9]")
    assert "Traceback" not in message and "nothing was saved" in message
    assert not (workdir / "model.keras").exists()


@pytest.mark.large
def test_non_finite_loss_stops_and_saves_nothing_diverged(tmp_path):
    from deeplab_tf.data.info import DatasetInfo

    info = DatasetInfo("toy", ("a", "b", "c", "d", "e"))
    workdir = tmp_path / "w"
    cfg = _tiny_run_config(str(workdir))
    cfg["train"]["steps"] = 3
    with pytest.raises(RuntimeError, match=r"loss became non-finite \(loss=nan\) at step 2") as err:
        train(
            cfg,
            callbacks=[PoisonWeights(at=1)],
            dataset_overrides={"train": (_toy_examples(4), info)},
        )
    assert not (workdir / "model.keras").exists()
    names = [os.path.basename(f) for f in list_checkpoints(str(workdir / "checkpoints"))]
    assert names == ["ckpt-000001.weights.h5"]  # the finite one, nothing after
    # The message names the failing batch's examples (2 of the 4 ids) and that checkpoint.
    message = str(err.value)
    assert re.search(
        r"at step 2; the batch's examples: \['img00[0-3].png', 'img00[0-3].png'\]", message
    )
    last = os.path.join(str(workdir), "checkpoints", "ckpt-000001.weights.h5")
    assert f"the last good checkpoint is {last}" in message
    # the resume backup is the last finite state, kept for a restart with a lower rate
    assert (workdir / "backup" / "latest.weights.h5").exists()
