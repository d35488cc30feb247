"""Dense CRF export: SavedModel reloaded without deeplab_tf, and TFLite with builtin ops only."""

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
    return image[None], probs[None]


class _CRFLabels(tf.Module):
    def __init__(self, crf, shape):
        super().__init__()
        self.crf = crf
        self.__call__ = tf.function(
            self._labels,
            input_signature=[
                tf.TensorSpec(shape + [3], tf.uint8, name="image"),
                tf.TensorSpec(shape + [C], tf.float32, name="probs"),
            ],
        )

    def _labels(self, image, probs):
        return {"labels": self.crf.labels(image, probs)}


@pytest.mark.multiprocess
def test_saved_model_reloads_in_a_process_without_deeplab_tf(tmp_path):
    image, probs = _sample()
    crf = DenseCRF.from_preset("resnet101")
    expected = crf.labels(image, probs).numpy()
    module = _CRFLabels(crf, [None, None, None])
    export_dir = str(tmp_path / "crf_saved_model")
    tf.saved_model.save(module, export_dir, signatures={"serving_default": module.__call__})
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "probs.npy", probs)
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        import tensorflow as tf
        loaded = tf.saved_model.load({export_dir!r})
        fn = loaded.signatures["serving_default"]
        out = fn(image=tf.constant(np.load({str(tmp_path / "image.npy")!r})),
                 probs=tf.constant(np.load({str(tmp_path / "probs.npy")!r})))
        np.save({str(tmp_path / "labels.npy")!r}, out["labels"].numpy())
        assert "deeplab_tf" not in sys.modules, "deeplab_tf was imported"
        """
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), expected)


@pytest.mark.large
def test_tflite_builtins_only_same_labels(tmp_path):
    interpreter_mod = pytest.importorskip("ai_edge_litert.interpreter")
    image, probs = _sample()
    crf = DenseCRF.from_preset("vgg16", impl="builtin")
    expected = crf.labels(image, probs).numpy()
    module = _CRFLabels(crf, [1, H, W])
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.__call__.get_concrete_function()], module
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    flatbuffer = converter.convert()
    path = tmp_path / "crf.tflite"
    path.write_bytes(flatbuffer)
    interpreter = interpreter_mod.Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner()
    out = runner(image=image, probs=probs)
    labels = out["labels"]
    assert labels.shape == expected.shape
    assert np.mean(labels == expected) >= 0.999


def test_crf_saved_model_takes_n_channel_float_images(tmp_path):
    """For an ``input_channels=4`` model: float32 (N, H, W, 4) images, one bilateral std per
    channel, refused before any work without them; the result equals the eager CRF's."""
    import tensorflow as tf

    from deeplab_tf.crf import DenseCRF
    from deeplab_tf.export.crf import export_crf_saved_model

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1, 12, 10, 4)).astype(np.float32)
    probs = rng.dirichlet(np.ones(3), (1, 12, 10)).astype(np.float32)
    with pytest.raises(ValueError, match="the image has 4 channels"):
        export_crf_saved_model(DenseCRF(), tmp_path / "bad", 3, channels=4)
    assert not (tmp_path / "bad").exists()
    crf = DenseCRF(bi_feature_std=(10.0, 10.0, 10.0, 20.0), iterations=3)
    path = export_crf_saved_model(crf, tmp_path / "crf", 3, channels=4)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    out = serve(images=tf.constant(image), probabilities=tf.constant(probs))
    np.testing.assert_allclose(out["probabilities"].numpy(), crf(image, probs).numpy(), atol=1e-5)
