"""The registration contract, tested where users meet it: save in one process, load in another.

The loading process imports ``deeplab_tf`` and ``keras`` and nothing else of the library, then
calls ``keras.saving.load_model(path)`` (safe mode, the default) on every kind of object the
library saves: compiled models (CaffeSGD, DeepLabLoss, MeanIoU), the inference wrapper
``MultiScale``, the training wrapper ``MultiScaleModel``, and the fused and bfloat16 inference
rewrites. Each registry entry goes through the same check in the harness's model test
(``tests/test_registry_models.py``); the loader is ``tests._fresh_process.load_in_new_process``.
"""

import os
import sys

import keras
import numpy as np
import pytest

import deeplab_tf
from deeplab_tf import _registration
from deeplab_tf.export import fuse_for_inference, to_bfloat16
from deeplab_tf.inference import MultiScale
from deeplab_tf.models import DeepLabV2
from deeplab_tf.training import MultiScaleModel
from tests._fresh_process import fresh_env, load_in_new_process, run_python


def _images(n=1, size=41, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype("uint8")


def _labels(x, classes=3, seed=1):
    h, w = x.shape[1:3]
    return np.random.default_rng(seed).integers(0, classes, (len(x), h, w)).astype("uint8")


def _compiled(model, x):
    model.compile(**deeplab_tf.recipes.paper("mobilenetv2", steps=10, num_classes=3))
    y = _labels(x)
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    return model, x, y


@pytest.mark.large
@pytest.mark.multiprocess
def test_compiled_models_and_wrappers_load_in_a_new_process(tmp_path):
    keras.utils.set_random_seed(3)
    x = _images(n=2, size=49)
    net = DeepLabV2("mobilenetv2", "aspp_l", num_classes=3)
    msc_net = DeepLabV2("mobilenetv2", "largefov", num_classes=3, name="msc_base")
    objects = {
        "plain": (net, x, None),
        "compiled": _compiled(DeepLabV2("mobilenetv2", "aspp_s", num_classes=3), x),
        "msc_training": _compiled(MultiScaleModel(msc_net, scales=(1.0, 0.75)), x),
        "multiscale": (MultiScale(net, scales=(1.0, 0.5), flip=True), x, None),
        "fused": (fuse_for_inference(net), x, None),
        "bfloat16": (to_bfloat16(net), x, None),
    }
    results = load_in_new_process(tmp_path, objects)
    assert results["multiscale"]["class"] == "MultiScale"
    assert results["msc_training"]["class"] == "MultiScaleModel"
    for name in ("compiled", "msc_training"):
        info = results[name]
        assert info["optimizer"] == "CaffeSGD", info
        assert info["loss"] == "DeepLabLoss", info
        assert info["metrics"] == ["loss", "mean_iou"], info
        assert info["iterations"] == 1 and info["iterations_after"] == 2, info
        assert np.isfinite(info["loss_after"]), info


def test_registration_lists_every_registered_class():
    """SERIALIZABLE_MODULES covers every ``deeplab_tf>`` class the package defines."""
    import ast
    import pathlib

    root = pathlib.Path(deeplab_tf.__file__).parent
    defining = set()
    for path in root.rglob("*.py"):
        if "register_keras_serializable" in path.read_text():
            tree = ast.parse(path.read_text())
            uses = any(
                isinstance(node, ast.Attribute) and node.attr == "register_keras_serializable"
                for node in ast.walk(tree)
            )
            if uses:
                rel = path.relative_to(root.parent).with_suffix("")
                defining.add(".".join(rel.parts))
    assert defining == set(_registration.SERIALIZABLE_MODULES)


def test_unsupported_versions_fail_with_the_supported_range():
    with pytest.raises(ImportError, match=r"keras >=3\.10,<3\.16\. Received: keras 3\.9\.2"):
        _registration.check_version("keras", "3.9.2")
    with pytest.raises(ImportError, match=r"tensorflow >=2\.16,<2\.22\. Received: tensorflow 2"):
        _registration.check_version("tensorflow", "2.22.0rc1")
    _registration.check_version("keras", keras.version())
    _registration.check_version("keras", "3.15.9")


@pytest.mark.multiprocess
def test_import_fails_clearly_on_an_unsupported_keras(tmp_path):
    """A fake ``keras`` 3.9 on the path: ``import deeplab_tf`` names the supported range."""
    fake = tmp_path / "keras"
    fake.mkdir()
    (fake / "__init__.py").write_text("def version():\n    return '3.9.0'\n")
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    proc = run_python("import deeplab_tf", check=False, env=fresh_env(PYTHONPATH=path))
    assert proc.returncode != 0
    assert "deeplab_tf supports keras >=3.10,<3.16. Received: keras 3.9.0" in proc.stderr


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["deeplab-tf", "--help"], True),
        (["/usr/bin/deeplab-tf", "predict"], True),
        (["pytest"], False),
    ],
)
def test_launched_as_command_by_script_name(monkeypatch, argv, expected):
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(sys, "orig_argv", ["python", *argv], raising=False)
    assert _registration.launched_as_command() is expected


@pytest.mark.parametrize(
    "orig, expected",
    [
        (["python", "-m", "deeplab_tf", "--help"], True),
        (["python", "-X", "importtime", "-m", "deeplab_tf.cli"], True),
        (["python", "-mdeeplab_tf"], True),
        (["python", "-m", "pytest", "-m", "deeplab_tf"], False),
        (["python", "-c", "import deeplab_tf", "-m", "deeplab_tf"], False),
        (["python", "script.py", "-m", "deeplab_tf"], False),
    ],
)
def test_launched_as_command_by_module(monkeypatch, orig, expected):
    monkeypatch.setattr(sys, "argv", ["-m"])
    monkeypatch.setattr(sys, "orig_argv", orig, raising=False)
    assert _registration.launched_as_command() is expected
