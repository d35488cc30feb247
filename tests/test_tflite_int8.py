"""TFLite files all the way to accelerators: int8 quantised end to end and run by LiteRT's
default (XNNPACK) delegate for every zoo model, outputs at the score grid for GPU delegates,
and the accuracy of every quantization on a briefly trained model (synthetic val split)."""

import os
from collections import Counter

import numpy as np
import pytest

import deeplab_tf
from deeplab_tf import MultiScaleInference
from deeplab_tf.evaluation.metrics import confusion_matrix, mean_iou
from deeplab_tf.export import (
    export_tflite,
    export_tflite_files,
    gpu_incompatible_ops,
    litert_interpreter,
    run_tflite,
    tflite_ops,
)
from deeplab_tf.models.registry import list_models
from tests.test_export import _images, _spread_model

NUM_CLASSES = 4
#: Ops the narrow-output training path (MatMul + shifted sum) leaves in a file, and a float
#: island in an int8 graph; none may remain inside an exported network.
TRAINING_PATH_OPS = {"FULLY_CONNECTED", "ADD_N", "RESHAPE", "PADV2"}


def _inference_form(model, h, w):
    """What the export converts, run by TensorFlow: the model rebuilt at a fixed size with
    plain dilated convolutions (the training form's MatMul + shifted sum sums in another
    order: up to 4e-4 apart on this fixture's logits of magnitude ~20)."""
    from deeplab_tf.export.optimize import with_input_shape

    return MultiScaleInference(with_input_shape(model, h, w, plain_convs=True), scales=(1.0,))


def _xnnpack_delegated(interpreter) -> bool:
    """True when LiteRT replaced the graph's nodes by XNNPACK delegate nodes."""
    ops = [op["op_name"] for op in interpreter._get_ops_details()]
    return any("DELEGATE" in name.upper() for name in ops)


def _check_int8_ops(path):
    ops = tflite_ops(path)
    counts = Counter(ops)
    assert not TRAINING_PATH_OPS & set(counts), counts
    # Quantised end to end: one QUANTIZE after the image cast, DEQUANTIZE only for the float
    # outputs (here: probabilities); the edge copies of the max pools and the crop after the
    # upsampling are the only strided slices (the training path had 37).
    assert counts["QUANTIZE"] == 1 and counts["DEQUANTIZE"] <= 1, counts
    assert counts["STRIDED_SLICE"] <= 4 * counts.get("MAX_POOL_2D", 0) + 1, counts
    return counts


#: The zoo test runs every model at the paper's evaluation size (XNNPACK's refusal to prepare
#: the int8 ResNet-101 file showed at 321 and 513).
ZOO_SIZE = 513


def check_zoo_model_in_litert(name, out_dir):
    """fp32, fp16 and int8 files of one zoo model, each run by LiteRT with XNNPACK (the body of
    the zoo test; it runs in a child process, see there)."""
    import keras

    keras.utils.set_random_seed(1234)  # as tests/conftest.py seeds every test
    size = ZOO_SIZE
    model = deeplab_tf.create_model(name, num_classes=NUM_CLASSES)
    image = _images(1, size, size, seed=3)[0]
    paths = {q: os.path.join(out_dir, f"m_{q}.tflite") for q in ("fp32", "fp16", "int8")}
    export_tflite_files(model, paths, (size, size), representative_data=[image],
                        num_calibration=1)  # fmt: skip
    expected = MultiScaleInference(model, scales=(1.0,))(image[None]).numpy()
    for q, path in paths.items():
        interpreter = litert_interpreter(path)  # default delegate: XNNPACK
        assert _xnnpack_delegated(interpreter), q
        out = run_tflite(interpreter, image)
        assert out["labels"].shape == (1, size, size)
        assert out["probabilities"].shape == (1, size, size, NUM_CLASSES)
        np.testing.assert_allclose(out["probabilities"].sum(-1), 1.0, atol=0.02)
        if q == "fp32":
            np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-3, atol=1e-3)
        ops = set(tflite_ops(path))
        assert not TRAINING_PATH_OPS & ops, (q, ops)
        assert "SPACE_TO_BATCH_ND" not in ops
    _check_int8_ops(paths["int8"])
    print("zoo model checked:", name)


@pytest.mark.large
@pytest.mark.multiprocess
@pytest.mark.xdist_group("zoo_litert_513")
@pytest.mark.parametrize("name", list_models())
def test_every_zoo_model_runs_in_litert_default_delegate(tmp_path, name):
    """fp32, fp16 and int8 of each zoo model at 513x513 in LiteRT with XNNPACK, int8 quantised
    end to end.

    Each model runs in its own process: the TFLite converter keeps what it allocated (the
    seven models in one process peaked at 13 GB resident). One child peaks at 10.4 GB for
    ResNet-152 at 513 (6.6 GB at 97), so the seven run one after another on one worker (one
    xdist group) rather than two children at once on a 24 GB machine. The seven take 7 min 13 s
    here (ResNet-152 2 min 9 s; 1 min 46 s at 97: the conversions dominate, not the size).
    """
    from tests._fresh_process import run_python

    code = (
        "import sys\n"
        "from tests.test_tflite_int8 import check_zoo_model_in_litert\n"
        "check_zoo_model_in_litert(sys.argv[1], sys.argv[2])\n"
    )
    proc = run_python(code, name, str(tmp_path), timeout=900)
    assert f"zoo model checked: {name}" in proc.stdout


@pytest.mark.large
def test_int8_resnet_classifiers_are_plain_dilated_convs(tmp_path):
    """The ResNet ASPP-L int8 graph (4 dilated classifiers 2048 -> C, a padded max pool) holds
    CONV_2D classifiers, no float island, and prepares in XNNPACK."""
    model = _spread_model("resnet50")
    image = _images(1, 33, 33)[0]
    path = export_tflite(model, tmp_path / "m.tflite", (33, 33), "int8", [image],
                         num_calibration=1)  # fmt: skip
    counts = _check_int8_ops(path)
    assert counts["MAX_POOL_2D"] == 1
    interpreter = litert_interpreter(path)
    assert _xnnpack_delegated(interpreter)
    assert run_tflite(interpreter, image)["labels"].shape == (1, 33, 33)


@pytest.mark.large
def test_outputs_at_the_score_grid_are_gpu_compatible(tmp_path):
    """``logits_stride8`` / ``probabilities_stride8``: the network's scores, no ARG_MAX and no
    full-resolution resize, every op one the TFLite GPU delegate runs (the default output,
    with its uint8 CAST and ARG_MAX, is reported incompatible: the check can fail).

    Checked with ``gpu_incompatible_ops`` (LiteRT's GPU compatibility rules), not with
    ``tf.lite.experimental.Analyzer.analyze(..., gpu_compatibility=True)``: in TensorFlow 2.21
    that analyzer reports every graph compatible (see the test below)."""
    model = _spread_model()
    image = _images(1, 41, 33)[0]
    logits = _inference_form(model, 41, 33).model(image[None].astype(np.float32)).numpy()
    grid = logits.shape[1:3]
    full = export_tflite(model, tmp_path / "full.tflite", (41, 33))
    assert {"ARG_MAX", "CAST"} <= set(gpu_incompatible_ops(full))
    for output in ("logits_stride8", "probabilities_stride8"):
        path = export_tflite(model, tmp_path / f"{output}.tflite", (41, 33), output=output)
        assert gpu_incompatible_ops(path) == []
        ops = tflite_ops(path)
        assert "ARG_MAX" not in ops and "RESIZE_BILINEAR" not in ops
        (value,) = run_tflite(path, image).values()
        assert value.shape == (1, *grid, NUM_CLASSES)
        if output == "logits_stride8":
            # Relative to the logits' range (up to ~20 here): float summation order only.
            scale = float(np.abs(logits).max())
            np.testing.assert_allclose(value, logits, rtol=1e-4, atol=1e-5 * scale)
        else:
            e = np.exp(logits - logits.max(-1, keepdims=True))
            np.testing.assert_allclose(value, e / e.sum(-1, keepdims=True), rtol=1e-4, atol=1e-4)
    expected = _inference_form(model, 41, 33)(image[None]).numpy()
    labels = export_tflite(model, tmp_path / "l.tflite", (41, 33), output="labels")
    out = run_tflite(labels, image)
    assert list(out) == ["labels"]
    assert (out["labels"] == expected.argmax(-1)).mean() > 0.999
    probs = export_tflite(model, tmp_path / "p.tflite", (41, 33), output="probabilities")
    out = run_tflite(probs, image)
    assert list(out) == ["probabilities"]
    np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-4, atol=1e-4)


def _tiny_tflite(path, fn, dtype):
    import tensorflow as tf

    class Graph(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], dtype)])
        def serve(self, x):
            return fn(tf, x)

    graph = Graph()
    concrete = graph.serve.get_concrete_function()
    path.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([concrete], graph).convert())
    return path


def test_gpu_compatibility_follows_the_delegates_rules(tmp_path):
    """By op kind and, for CAST, by type pair: a float32 -> int32 cast and CUMSUM run on the GPU
    delegate; a uint8 -> float32 cast and ARG_MAX do not."""

    def accepted(tf, x):
        return tf.cast(tf.math.cumsum(tf.nn.relu(x), axis=3), tf.int32)

    def rejected(tf, x):
        return tf.argmax(tf.cast(x, tf.float32), -1, output_type=tf.int32)

    good = _tiny_tflite(tmp_path / "good.tflite", accepted, "float32")
    assert {"CAST", "CUMSUM"} <= set(tflite_ops(good))
    assert gpu_incompatible_ops(good) == []
    bad = _tiny_tflite(tmp_path / "bad.tflite", rejected, "uint8")
    assert gpu_incompatible_ops(bad) == ["ARG_MAX", "CAST"]


def test_tf_analyzer_gpu_check_still_passes_incompatible_graphs(tmp_path, capsys):
    """Why ``gpu_incompatible_ops`` exists: TensorFlow's ``Analyzer.analyze(...,
    gpu_compatibility=True)`` calls a graph with ARG_MAX and a uint8 CAST compatible. When this
    fails, TensorFlow has fixed its analyzer: use it in ``gpu_incompatible_ops``."""
    import tensorflow as tf

    def rejected(tf, x):
        return tf.argmax(tf.cast(x, tf.float32), -1, output_type=tf.int32)

    bad = _tiny_tflite(tmp_path / "bad.tflite", rejected, "uint8")
    tf.lite.experimental.Analyzer.analyze(model_path=str(bad), gpu_compatibility=True)
    report = capsys.readouterr().out
    assert "ARG_MAX" in report  # the report did run on this graph
    assert "looks compatible with GPU delegate" in report, report[-2000:]


def test_bad_combinations_are_refused_before_work(tmp_path, monkeypatch):
    import deeplab_tf.export.tflite as tflite

    def boom(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(tflite, "with_input_shape", boom)
    model, image = object(), np.zeros((33, 33, 3), np.uint8)
    cases = [
        (dict(quantization="int8"), "int8 quantization needs representative_data"),
        (dict(quantization="int8_full"), "int8_full quantization needs representative_data"),
        (dict(quantization="dynamic", representative_data=[image]), "int8 / int8_full files only"),
        (dict(quantization="int4"), "Received: quantization='int4'"),
        (dict(output="logits"), "Received: output='logits'"),
        (
            dict(quantization="int8", representative_data=[image], num_calibration=0),
            "num_calibration must be >= 1",
        ),  # fmt: skip
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            export_tflite(model, tmp_path / "x.tflite", (33, 33), **kwargs)
    monkeypatch.undo()
    tiny = _spread_model()
    with pytest.raises(ValueError, match="RGB images"):
        export_tflite(tiny, tmp_path / "x.tflite", (33, 33), "int8", [np.zeros((33, 33))])
    with pytest.raises(ValueError, match="stride 8, so its score-grid output is"):
        export_tflite(tiny, tmp_path / "x.tflite", (33, 33), output="logits_stride16")
    assert not os.path.exists(tmp_path / "x.tflite")


@pytest.fixture(scope="module")
def trained():
    """MobileNetV2-ASPP trained briefly on the synthetic shapes (the benchmark's model), with
    the synthetic val split's images and labels."""
    from benchmarks.bench_tflite import train_synthetic_model
    from deeplab_tf.data.synthetic import synthetic_arrays

    model = train_synthetic_model(NUM_CLASSES, 48)
    val_images, val_labels, _ = synthetic_arrays("val", 8, 48, num_classes=NUM_CLASSES)
    return model, val_images, val_labels


#: Minimum label agreement with the Keras float32 labels and largest mIoU drop (synthetic val,
#: 8 images of 48x48) per quantization.
THRESHOLDS = {
    "fp32": (0.999, 0.002),
    "fp16": (0.99, 0.01),
    "dynamic": (0.98, 0.02),
    "int8": (0.95, 0.05),
    "int8_full": (0.95, 0.05),
}


@pytest.mark.large
def test_quantizations_agree_with_float_and_keep_miou(tmp_path, trained):
    """Every quantization of a trained model against Keras float32 on the synthetic val split;
    int8 files calibrated on a tf.data dataset of ``{"image": ...}`` (the train split)."""
    from deeplab_tf.data.synthetic import synthetic_dataset

    model, images, truth = trained
    expected = MultiScaleInference(model, scales=(1.0,))(images).numpy().argmax(-1)
    assert len(np.unique(expected)) >= 3  # the model has learnt several classes
    keras_miou = mean_iou(confusion_matrix(truth, expected, NUM_CLASSES))
    assert keras_miou >= 0.45, keras_miou  # 0.526 measured
    calibration, _ = synthetic_dataset("train", 8, 48, num_classes=NUM_CLASSES)
    paths = {q: tmp_path / f"m_{q}.tflite" for q in THRESHOLDS}
    export_tflite_files(model, paths, (48, 48), representative_data=calibration,
                        num_calibration=8)  # fmt: skip
    sizes = {q: os.path.getsize(p) for q, p in paths.items()}
    for q, (min_agreement, max_drop) in THRESHOLDS.items():
        interpreter = litert_interpreter(paths[q])
        labels = np.concatenate([run_tflite(interpreter, im)["labels"] for im in images])
        agreement = float((labels == expected).mean())
        miou = mean_iou(confusion_matrix(truth, labels, NUM_CLASSES))
        print(f"{q}: agreement {agreement:.4f}, mIoU {miou:.4f} (keras {keras_miou:.4f}), "
              f"{sizes[q]} bytes")  # fmt: skip
        assert agreement >= min_agreement, (q, agreement)
        assert miou >= keras_miou - max_drop, (q, miou, keras_miou)
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"] and sizes["dynamic"] < sizes["fp16"]
    # int8_full: a float-free interface with raw pixels in (scale 1, zero point 0).
    runner = litert_interpreter(paths["int8_full"]).get_signature_runner("serving_default")
    (spec,) = runner.get_input_details().values()
    assert spec["dtype"] == np.uint8 and spec["quantization"] == (1.0, 0)
    outputs = runner.get_output_details()
    assert outputs["probabilities"]["dtype"] == np.uint8
    assert outputs["labels"]["dtype"] == np.int32
    assert "CAST" not in tflite_ops(paths["int8_full"])


@pytest.mark.large
@pytest.mark.multiprocess
def test_cli_writes_tflite_files_per_quantization_and_output(tmp_path):
    """``deeplab-tf export M --tflite SIZE --tflite-quantization ... --tflite-output ...`` in
    its own process: one file per quantization, as asked, and bad flags refused before work."""
    from tests._fresh_process import run_cli

    model_path = tmp_path / "m.keras"
    _spread_model().save(model_path)
    out = tmp_path / "out"
    argv = ["export", str(model_path), "--out", str(out), "--no-warmup", "--tflite", "33x33"]
    proc = run_cli(*argv, "--tflite-quantization", "fp32", "int8_full", "--tflite-output",
                   "logits_stride8", "--calibration-images", "2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(os.listdir(out / "tflite"))
    assert files == ["model_fp32_logits_stride8.tflite", "model_int8_full_logits_stride8.tflite"]
    for name in files:
        (value,) = run_tflite(out / "tflite" / name, _images(1, 33, 33)[0]).values()
        assert value.shape == (1, 5, 5, NUM_CLASSES)
    assert gpu_incompatible_ops(out / "tflite" / files[0]) == []  # fp32, for GPU delegates
    bad = run_cli(*argv[:-2], "--tflite-quantization", "int8", "--out", str(tmp_path / "o2"))
    assert bad.returncode == 2 and "needs --tflite SIZE" in bad.stderr
    assert not (tmp_path / "o2").exists()
