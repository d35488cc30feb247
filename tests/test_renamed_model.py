"""A model's name is only a label: a DeepLabV2 built with ``name="mine"`` trains, predicts (with
the CRF), evaluates, exports and converts exactly as its default-named twin, because every step
reads the model's own config (backbone, head, classes, stride, preprocessing, classifier)."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab_tf import DeepLabV2
from deeplab_tf.cli import main
from deeplab_tf.convert import load_weights
from deeplab_tf.training import recipes
from tests._caffe_reference import synthetic_caffemodel
from tests._data_utils import make_folder_dataset

NUM_CLASSES = 4


def _twins(backbone="mobilenetv2", head="aspp_s"):
    """A default-named model and ``"mine"`` with the same weights."""
    keras.utils.set_random_seed(3)
    default = DeepLabV2(backbone=backbone, head=head, num_classes=NUM_CLASSES)
    mine = DeepLabV2(backbone=backbone, head=head, num_classes=NUM_CLASSES, name="mine")
    for i in range(len(default.rates)):  # a random net hardly depends on its input: sharpen it
        classifier = default.get_layer(f"fc1_voc12_c{i}")
        kernel, bias = classifier.get_weights()
        classifier.set_weights([kernel * 1e4, bias])
    mine.set_weights(default.get_weights())
    assert default.name == f"deeplabv2_{backbone}_{head}" and mine.name == "mine"
    assert {**default.get_config(), "name": "mine"} == mine.get_config()
    return default, mine


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory):
    return make_folder_dataset(tmp_path_factory.mktemp("data"), 2, (33, 41), NUM_CLASSES)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    default, mine = _twins()
    folder = tmp_path_factory.mktemp("models")
    paths = {}
    for key, model in (("default", default), ("mine", mine)):
        paths[key] = str(folder / f"{key}.keras")
        model.save(paths[key])
    return paths


@pytest.mark.large
def test_paper_recipe_trains_a_renamed_model_exactly_as_the_default(rng):
    x = rng.integers(0, 256, (2, 33, 33, 3)).astype("uint8")
    y = rng.integers(0, NUM_CLASSES, (2, 33, 33)).astype("uint8")
    weights = {}
    for model in _twins():
        model.compile(**recipes.paper(model, steps=10))
        model.fit(x, y, batch_size=2, epochs=1, verbose=0)
        weights[model.name] = model.get_weights()
        # The classifier got Caffe's 10x multiplier, found from the model, not its name.
        mults = {v.path: m for v, m in zip(model.trainable_variables, model.optimizer._multipliers)}
        assert mults["fc1_voc12_c0/kernel"] == (10.0, 1.0)
        assert mults["fc1_voc12_c0/bias"] == (20.0, 0.0)
    for a, b in zip(weights["deeplabv2_mobilenetv2_aspp_s"], weights["mine"]):
        np.testing.assert_array_equal(a, b)


def test_recipe_comes_from_the_config_not_the_name():
    vgg = DeepLabV2(backbone="vgg16", head="largefov", num_classes=3, name="renamed_vgg")
    compiled = recipes.paper(vgg, steps=5)
    # VGG-16's recipe: base lr 1e-3 (ResNet's is 2.5e-4); the metric counts the model's classes.
    assert float(compiled["optimizer"].learning_rate) == pytest.approx(1e-3)
    assert compiled["metrics"][0].num_classes == 3
    with pytest.raises(TypeError, match="Expected a DeepLabV2"):
        recipes.paper(keras.Model(vgg.inputs, vgg.outputs, name="deeplabv2_vgg16_largefov"))


@pytest.mark.large
def test_predict_with_crf_and_evaluate_agree_for_a_renamed_model(saved, folder_data, tmp_path):
    outputs = {}
    for key, path in saved.items():
        out = tmp_path / f"pred_{key}"
        args = ["predict", str(folder_data / "images"), "--out", str(out), "--model", path]
        assert main([*args, "--crf", "--no-progress"]) == 0
        pngs = sorted(p for p in os.listdir(out) if p.endswith(".png"))
        assert pngs, os.listdir(out)
        outputs[key] = {p: (out / p).read_bytes() for p in pngs}
        report = tmp_path / f"eval_{key}.json"
        assert (
            main(
                [
                    "evaluate",
                    "--dataset",
                    "folder",
                    "--root",
                    str(folder_data),
                    "--split",
                    "all",
                    "--model",
                    path,
                    "--report",
                    str(report),
                    "--no-progress",
                    "--dataset-arg",
                    f"num_classes={NUM_CLASSES}",
                ]  # fmt: skip
            )
            == 0
        )
        scores = json.loads(report.read_text())["scores"]
        outputs[key]["scores"] = {k: scores[k] for k in ("confusion_matrix", "mean_iou")}
    assert outputs["mine"] == outputs["default"]
    # Not a constant prediction: several classes appear (the comparison means something).
    assert sum(v > 0 for v in np.sum(outputs["mine"]["scores"]["confusion_matrix"], 0)) >= 2


def test_crf_preset_follows_the_backbone_not_the_name(tmp_path):
    """A VGG model named like a ResNet gets VGG's CRF parameters."""
    from argparse import Namespace

    from deeplab_tf.crf import DenseCRF
    from deeplab_tf.inference.cli import build_crf

    vgg = DeepLabV2(backbone="vgg16", head="largefov", num_classes=3, name="resnet101_lookalike")
    _, settings = build_crf(Namespace(crf_preset=None, model=str(tmp_path / "x.keras")), vgg)
    assert settings["preset"] == "vgg16"
    assert settings["bi_xy_std"] == DenseCRF.from_preset("vgg16").get_config()["bi_xy_std"]


@pytest.mark.large
def test_export_of_a_renamed_model_serves_the_same_outputs(saved, tmp_path, rng):
    images = rng.integers(0, 256, (1, 33, 41, 3)).astype("uint8")
    results = {}
    for key, path in saved.items():
        out = tmp_path / f"served_{key}"
        assert main(["export", path, "--out", str(out), "--no-warmup"]) == 0
        served = tf.saved_model.load(str(out / "1"))
        results[key] = {
            k: v.numpy() for k, v in served.signatures["serving_default"](images=images).items()
        }
    assert sorted(results["mine"]) == sorted(results["default"])
    for k in results["default"]:
        np.testing.assert_array_equal(results["mine"][k], results["default"][k])


@pytest.mark.large
def test_convert_into_a_renamed_model(tmp_path, rng):
    path = str(tmp_path / "vgg.caffemodel")
    synthetic_caffemodel(path, "vgg16-largefov", num_classes=NUM_CLASSES, seed=4)
    default = load_weights(DeepLabV2("vgg16", "largefov", num_classes=NUM_CLASSES), path)
    mine = load_weights(DeepLabV2("vgg16", "largefov", num_classes=NUM_CLASSES, name="x"), path)
    for a, b in zip(default.get_weights(), mine.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = rng.integers(0, 256, (1, 25, 25, 3)).astype("uint8")
    np.testing.assert_array_equal(default.predict(x, verbose=0), mine.predict(x, verbose=0))
