"""The registration contract, tested where users meet it: save in one process, load in another.

The loading process imports ``deeplab_tf`` and ``keras`` and nothing else of the library, then
calls ``keras.saving.load_model(path)`` (safe mode, the default) on every kind of object the
library saves: compiled models (CaffeSGD, DeepLabLoss, MeanIoU), the inference wrapper
``MultiScaleInference``, the training wrapper ``MultiScaleTraining``, and the fused and bfloat16
inference rewrites. Each registry entry goes through the same check in the harness's model test
(``tests/test_registry_models.py``); the loader is ``tests._fresh_process.load_in_new_process``.
"""

import json
import os
import pathlib
import sys
import zipfile

import keras
import numpy as np
import pytest

import deeplab_tf
from deeplab_tf import _registration
from deeplab_tf.export import fuse_for_inference, to_bfloat16
from deeplab_tf.inference import MultiScaleInference
from deeplab_tf.models import DeepLabV2
from deeplab_tf.training import MultiScaleTraining
from tests._fresh_process import LOADER, fresh_env, load_in_new_process, run_python


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
        "msc_training": _compiled(MultiScaleTraining(msc_net, scales=(1.0, 0.75)), x),
        "multiscale": (MultiScaleInference(net, scales=(1.0, 0.5), flip=True), x, None),
        "fused": (fuse_for_inference(net), x, None),
        "bfloat16": (to_bfloat16(net), x, None),
    }
    results = load_in_new_process(tmp_path, objects)
    assert results["multiscale"]["class"] == "MultiScaleInference"
    assert results["msc_training"]["class"] == "MultiScaleTraining"
    for name in ("compiled", "msc_training"):
        info = results[name]
        assert info["optimizer"] == "CaffeSGD", info
        assert info["loss"] == "DeepLabLoss", info
        assert info["metrics"] == ["loss", "mean_iou"], info
        assert info["iterations"] == 1 and info["iterations_after"] == 2, info
        assert np.isfinite(info["loss_after"]), info


def test_registration_lists_every_registered_class():
    """SERIALIZABLE_MODULES covers every ``deeplab_tf>`` class the package defines.

    Also the modules that keep a renamed class's old registered name (an entry added to
    ``keras.saving.get_custom_objects()``), so that files saved under the old name load.
    """
    import ast
    import pathlib

    root = pathlib.Path(deeplab_tf.__file__).parent
    defining = set()
    for path in root.rglob("*.py"):
        text = path.read_text()
        if "register_keras_serializable" in text or "get_custom_objects" in text:
            tree = ast.parse(text)
            uses = any(
                isinstance(node, ast.Attribute)
                and node.attr in ("register_keras_serializable", "get_custom_objects")
                for node in ast.walk(tree)
            )
            if uses:
                rel = path.relative_to(root.parent).with_suffix("")
                defining.add(".".join(rel.parts))
    assert defining == set(_registration.SERIALIZABLE_MODULES)
    # The multi-scale core has no registered class of its own: the wrappers register.
    assert "deeplab_tf.models.multiscale" not in defining


# Multi-scale wrappers as the previous version (commit caa7d81) saved them: registered names
# deeplab_tf>MultiScale and deeplab_tf>MultiScaleModel (tests/fixtures/README.md).
FIXTURES = pathlib.Path(__file__).parent / "fixtures"
OLD_NAMES = {"MultiScaleInference": "MultiScale", "MultiScaleTraining": "MultiScaleModel"}


def _with_old_names(src, dst):
    """Copies a ``.keras`` file, recording the multi-scale wrappers under their old names."""
    with zipfile.ZipFile(src) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    new = config["class_name"]
    assert new in OLD_NAMES, new
    config["class_name"] = OLD_NAMES[new]
    config["registered_name"] = f"deeplab_tf>{OLD_NAMES[new]}"
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(dst, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


@pytest.mark.large
def test_multiscale_files_of_the_previous_version_load_in_a_new_process(tmp_path):
    """Old registered names load in safe mode, as the new classes, with the old outputs.

    Two kinds of file: the fixtures written by the previous version's code, and files written
    now with the registered names rewritten to the old ones (the current wrapped model inside).
    """
    expected = np.load(FIXTURES / "legacy_multiscale_expected.npz")
    x, y = expected["x"], expected["y"]
    keras.utils.set_random_seed(4)
    net = DeepLabV2("mobilenetv2", "largefov", num_classes=3, name="renamed_base")
    fresh = {
        "renamed_inference": MultiScaleInference(net, scales=(1.0, 0.75), flip=True),
        "renamed_training": MultiScaleTraining(net, scales=(1.0, 0.5)),
    }
    jobs, want = [], {}
    for name, path, out in [
        ("inference", FIXTURES / "legacy_multiscale.keras", expected["inference"]),
        ("training", FIXTURES / "legacy_multiscale_model.keras", expected["training_fused"]),
    ]:
        jobs.append({"path": str(path), "compiled": name == "training"})
        want[str(path)] = (out, name)
    for name, model in fresh.items():
        path = tmp_path / f"{name}.keras"
        want[str(path)] = (keras.ops.convert_to_numpy(model(x, training=False)), name)
        model.save(tmp_path / "new.keras")
        _with_old_names(tmp_path / "new.keras", path)
        jobs.append({"path": str(path)})
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    for i, job in enumerate(jobs):
        job.update(x=str(tmp_path / "x.npy"), out=str(tmp_path / f"out{i}.npy"))
        if job.get("compiled"):
            job["y"] = str(tmp_path / "y.npy")
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    run_python(LOADER, str(tmp_path / "jobs.json"), str(tmp_path / "report.json"))
    report = json.loads((tmp_path / "report.json").read_text())
    for job in jobs:
        out, name = want[job["path"]]
        got = np.load(job["out"])
        # Relative to the outputs' size: fresh MobileNetV2 logits are tiny (about 1e-11).
        scale = float(np.abs(out).max())
        assert scale > 0, job["path"]
        np.testing.assert_allclose(got, out, rtol=1e-5, atol=1e-6 * scale, err_msg=job["path"])
        info = report[job["path"]]
        cls = "MultiScaleInference" if "inference" in name else "MultiScaleTraining"
        assert info["class"] == cls, (job["path"], info)
    info = report[str(FIXTURES / "legacy_multiscale_model.keras")]
    assert info["optimizer"] == "CaffeSGD" and info["loss"] == "DeepLabLoss", info
    assert info["iterations"] == 1 and info["iterations_after"] == 2, info
    assert info["metrics"] == ["loss", "mean_iou"] and np.isfinite(info["loss_after"]), info


def test_old_msc_training_file_gives_the_old_per_scale_outputs():
    """The previous version's MSC training file, loaded here: every output of the fit dict."""
    expected = np.load(FIXTURES / "legacy_multiscale_expected.npz")
    model = keras.saving.load_model(FIXTURES / "legacy_multiscale_model.keras")
    assert isinstance(model, MultiScaleTraining) and model.scales == (1.0, 0.75)
    outputs = model(expected["x"], training=True)
    assert sorted(outputs) == ["fused", "scale_0.75", "scale_1"]
    for key, value in outputs.items():
        np.testing.assert_allclose(value, expected[f"training_{key}"], rtol=1e-5, atol=1e-5)


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
