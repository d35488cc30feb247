"""The dense CRF exported on its own: a SavedModel version folder (reloaded without
deeplab_tf) and a builtin-ops TFLite file (run in LiteRT), each giving the labels of the
Keras-side DenseCRF; and `deeplab-tf export --crf` writing both next to the model's files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from deeplab_tf.crf import DenseCRF
from tests._crf_utils import PHOTOS, coarse_probs, load_photo

H, W, C = 48, 64, 21


def _sample():
    image = load_photo(PHOTOS[1])[8:56, 16:80]
    probs, _ = coarse_probs(image, classes=C, seed=3)
    return image[None], probs[None].astype(np.float32)


@pytest.mark.large
def test_crf_saved_model_version_folder_with_metadata(tmp_path):
    from deeplab_tf.export.crf import export_crf_saved_model

    image, probs = _sample()
    crf = DenseCRF.from_preset("resnet101")
    path = export_crf_saved_model(crf, tmp_path / "crf", C, preset="resnet101")
    assert path == str(tmp_path / "crf" / "1")
    meta = json.loads((tmp_path / "crf" / "1" / "assets.extra" / "deeplab_crf.json").read_text())
    assert meta["crf"] == crf.get_config() and meta["num_classes"] == C
    assert meta["preset"] == "resnet101"
    fn = tf.saved_model.load(path).signatures["serving_default"]
    out = fn(images=tf.constant(image), probabilities=tf.constant(probs))
    np.testing.assert_array_equal(out["labels"].numpy(), crf.labels(image, probs).numpy())
    # graph vs eager float round-off (1e-6 seen) on probabilities; labels are exact
    np.testing.assert_allclose(out["probabilities"].numpy(), crf(image, probs).numpy(), atol=1e-5)
    assert export_crf_saved_model(crf, tmp_path / "crf", C) == str(tmp_path / "crf" / "2")
    with pytest.raises(ValueError, match="already exists"):
        export_crf_saved_model(crf, tmp_path / "crf", C, version=1)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        export_crf_saved_model(crf, tmp_path / "x", 1)
    assert not (tmp_path / "x").exists()


@pytest.mark.multiprocess
def test_crf_saved_model_reloads_without_deeplab_tf_at_another_size(tmp_path):
    from deeplab_tf.export.crf import export_crf_saved_model

    image, probs = _sample()
    image, probs = image[:, :40, :56], probs[:, :40, :56]  # any size
    crf = DenseCRF.from_preset("vgg16")
    path = export_crf_saved_model(crf, tmp_path / "crf", C)
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "probs.npy", probs)
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        import tensorflow as tf
        fn = tf.saved_model.load({path!r}).signatures["serving_default"]
        out = fn(images=tf.constant(np.load({str(tmp_path / "image.npy")!r})),
                 probabilities=tf.constant(np.load({str(tmp_path / "probs.npy")!r})))
        np.save({str(tmp_path / "labels.npy")!r}, out["labels"].numpy())
        assert "deeplab_tf" not in sys.modules, "deeplab_tf was imported"
        """
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("PYTHONPATH", None)
    result = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path), env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), crf.labels(image, probs))


@pytest.mark.large
def test_crf_tflite_builtin_ops_match_the_keras_side_crf(tmp_path):
    interpreter_mod = pytest.importorskip("ai_edge_litert.interpreter")
    from deeplab_tf.export.crf import export_crf_tflite

    image, probs = _sample()
    crf = DenseCRF.from_preset("resnet101")  # the default (sparse) implementation
    path = export_crf_tflite(crf, tmp_path / f"crf_{H}x{W}.tflite", (H, W), C)
    interpreter = interpreter_mod.Interpreter(model_path=path)
    runner = interpreter.get_signature_runner()
    out = runner(image=image, probs=probs)
    expected = crf.labels(image, probs).numpy()
    assert out["labels"].shape == expected.shape and out["labels"].dtype == np.int32
    # the builtin lattice computes the same filter in another op order: float round-off only
    assert np.mean(out["labels"] == expected) >= 0.999
    with pytest.raises(FileExistsError, match="already exists"):
        export_crf_tflite(crf, path, (H, W), C)


@pytest.mark.large
def test_export_cli_writes_the_crf_next_to_the_model_and_the_phone_pipeline_agrees(tmp_path):
    interpreter_mod = pytest.importorskip("ai_edge_litert.interpreter")
    from deeplab_tf import DeepLabV2
    from deeplab_tf.cli import main

    model = DeepLabV2("mobilenetv2", head="aspp", rates=(1, 2), num_classes=C)
    model.save(tmp_path / "m.keras")
    out = tmp_path / "served"
    argv = ["export", str(tmp_path / "m.keras"), "--out", str(out), "--crf", "--no-warmup",
            "--tflite", "fp32", "--tflite-size", f"{H}x{W}"]  # fmt: skip
    assert main(argv) == 0
    assert sorted(os.listdir(out)) == ["1", "crf", "tflite"]
    assert sorted(os.listdir(out / "crf")) == ["1"]
    assert sorted(os.listdir(out / "tflite")) == [f"crf_{H}x{W}.tflite", "model_fp32.tflite"]
    # The phone pipeline: model.tflite's probabilities, then crf.tflite on the same image,
    # equals the server's serving_crf signature on that image.
    image, _ = _sample()
    net = interpreter_mod.Interpreter(model_path=str(out / "tflite" / "model_fp32.tflite"))
    probs = net.get_signature_runner()(images=image)["probabilities"]
    crf = interpreter_mod.Interpreter(model_path=str(out / "tflite" / f"crf_{H}x{W}.tflite"))
    labels = crf.get_signature_runner()(image=image, probs=probs.astype(np.float32))["labels"]
    served = tf.saved_model.load(str(out / "1")).signatures["serving_crf"]
    expected = served(images=tf.constant(image, tf.float32))["labels"].numpy()
    assert np.mean(labels == expected) >= 0.99
    assert main(argv) == 2  # nothing replaced without --overwrite
