"""Export: TF Serving SavedModels (reloaded without deeplab_tf), TFLite in LiteRT, rewrites."""

import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deeplab_tf import DeepLabV2, MultiScaleInference
from deeplab_tf.cli import main as cli_main
from deeplab_tf.export import (
    export_saved_model,
    export_tflite,
    fold_batchnorm,
    fuse_for_inference,
    run_tflite,
    tflite_ops,
    to_bfloat16,
)
from tests._fresh_process import run_python

NUM_CLASSES = 4


def _spread_model(backbone="mobilenetv2", **kwargs):
    """A small random model whose labels vary with the image content.

    A freshly initialised network washes the input out (its output hardly depends on the
    image), which would make label-agreement checks meaningless. So the BatchNorm statistics are
    set to the batch statistics of random images (one training-mode pass with momentum 0), the
    classifier is scaled up and each class score is centred: then every class wins somewhere
    and the labels follow the image.

    The classifier gain is 10: with 30 the logits reached ~50, and float32 rounding in another
    runtime (LiteRT sums in another order: ~1e-5 relative) moved probabilities by 1.3e-4, at
    the 1e-4 tolerance's edge.

    Seeded here: a module-scoped fixture is built before the per-test seed, so without it the
    weights (and the TFLite tolerance margins) would depend on which tests ran first.
    """
    import keras

    keras.utils.set_random_seed(20161)
    model = DeepLabV2(
        backbone=backbone, head="aspp_s", num_classes=NUM_CLASSES, freeze_batchnorm=False, **kwargs
    )
    rng = np.random.default_rng(7)
    calib = rng.integers(0, 256, (4, 41, 41, 3)).astype(np.float32)
    bns = [layer for layer in model.layers if layer.__class__.__name__ == "BatchNormalization"]
    for bn in bns:
        bn.momentum = 0.0
    model(calib, training=True)
    for bn in bns:
        bn.momentum = 0.99
        bn.trainable = False
    for i in range(4):
        head = model.get_layer(f"fc1_voc12_c{i}")
        k, b = head.get_weights()
        head.set_weights([k * 10.0, b])
    logits = model(calib).numpy()
    head = model.get_layer("fc1_voc12_c0")
    k, b = head.get_weights()
    head.set_weights([k, b - logits.mean(axis=(0, 1, 2))])
    return model


@pytest.fixture(scope="module")
def model():
    return _spread_model()


@pytest.fixture(scope="module")
def trained():
    """MobileNetV2-ASPP trained briefly on the built-in synthetic shapes (a model whose labels
    mean something, for quantisation checks); returns ``(model, val_images)``."""
    import keras

    from deeplab_tf.data.synthetic import synthetic_arrays
    from deeplab_tf.training.losses import DeepLabLoss

    keras.utils.set_random_seed(0)
    images, labels, _ = synthetic_arrays("train", 64, 48, num_classes=NUM_CLASSES)
    model = DeepLabV2(
        "mobilenetv2", head="aspp", rates=(1, 2), num_classes=NUM_CLASSES, freeze_batchnorm=False
    )
    for layer in model.layers:  # short run: let the moving statistics catch up
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=DeepLabLoss())
    model.fit(images, labels, batch_size=8, epochs=10, verbose=0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    val, _, _ = synthetic_arrays("val", 4, 48, num_classes=NUM_CLASSES)
    return model, val


@pytest.fixture(scope="module")
def tiny():
    """A four-layer stride-8 segmenter: enough for the folder/version mechanics, cheap to trace."""
    import keras

    from deeplab_tf.layers import Preprocess
    from deeplab_tf.models import Logits

    images = keras.Input((None, None, 3), name="images")
    x = Preprocess(name="preprocess")(images)
    x = keras.layers.Conv2D(8, 3, strides=4, name="conv")(x)
    x = keras.layers.Conv2D(NUM_CLASSES, 2, strides=2, name="fc8_voc12")(x)
    return keras.Model(images, Logits(8, name="logits")(x), name="tiny")


def _images(n=2, h=37, w=45, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, h // 4 + 1, w // 4 + 1, 3)).astype(np.float32)
    up = tf.image.resize(base, (h, w), method="bilinear").numpy()  # smooth, photo-like
    return np.clip(np.round(up), 0, 255).astype(np.uint8)


def _encode(image, fmt):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()


RELOAD_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "deeplab_tf" or name.startswith("deeplab_tf."):
                raise ImportError("deeplab_tf must not be needed to serve: " + name)
    sys.meta_path.insert(0, Block())
    import numpy as np
    import tensorflow as tf
    path, inputs, out = sys.argv[1:4]
    data = np.load(inputs)
    loaded = tf.saved_model.load(path)
    sigs = loaded.signatures
    result = {"signatures": sorted(sigs.keys())}
    f = sigs["serving_default"](images=tf.constant(data["images"].astype(np.float32)))
    u = sigs["serving_uint8"](images=tf.constant(data["images"]))
    encoded = [data["png"].tobytes(), data["jpeg"].tobytes()]
    b = sigs["serving_bytes"](image_bytes=tf.constant(encoded))
    arrays = {
        "labels": f["labels"].numpy(), "probs": f["probabilities"].numpy(),
        "labels_u8": u["labels"].numpy(), "bytes_labels": b["labels"].numpy(),
        "heights": b["heights"].numpy(), "widths": b["widths"].numpy(),
        "png0": np.frombuffer(b["label_png_bytes"].numpy()[0], np.uint8),
    }
    c = sigs["serving_crf"](images=tf.constant(data["images"].astype(np.float32)))
    arrays["crf_labels"] = c["labels"].numpy()
    arrays["crf_before"] = c["labels_before_crf"].numpy()
    try:
        sigs["serving_bytes"](image_bytes=tf.constant([b"definitely not an image"]))
        result["garbage"] = "no error"
    except tf.errors.InvalidArgumentError as err:
        result["garbage"] = "InvalidArgumentError"
    np.savez(out, **arrays)
    print(json.dumps(result))
    """
)


def _run_script(script, *args):
    """Runs ``script`` in a fresh Python (it must not crash); returns its last line as JSON."""
    proc = run_python(script, *args, timeout=300)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.multiprocess
def test_saved_model_reloads_without_deeplab_tf(tmp_path, model):
    images = _images()
    small = _images(1, 29, 23, seed=3)[0]
    msc = MultiScaleInference(model, scales=(1.0, 0.5))
    expected = msc(images).numpy()

    from deeplab_tf import DenseCRF

    crf = DenseCRF.from_preset("resnet101", iterations=5)
    expected_crf = crf(images, expected).numpy()
    base = tmp_path / "models" / "deeplab"
    path = export_saved_model(
        model, base, version=3, scales=(1.0, 0.5), bytes_max_side=None, crf=crf
    )
    assert path == os.path.join(base, "3")
    assert sorted(os.listdir(base)) == ["3"]  # nothing half-written left beside it
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))

    inputs = tmp_path / "inputs.npz"
    np.savez(
        inputs,
        images=images,
        png=np.frombuffer(_encode(images[0], "PNG"), np.uint8),
        jpeg=np.frombuffer(_encode(small, "JPEG"), np.uint8),
    )
    out = tmp_path / "out.npz"
    meta = _run_script(RELOAD_SCRIPT, path, str(inputs), str(out))
    assert meta["signatures"] == [
        "serving_bytes", "serving_crf", "serving_default", "serving_uint8"
    ]  # fmt: skip
    assert meta["garbage"] == "InvalidArgumentError"
    got = np.load(out)
    # Graph-mode kernels may round differently from eager ones: probabilities agree to ~1e-4
    # and labels everywhere except at exact near-ties.
    np.testing.assert_allclose(got["probs"], expected, rtol=1e-3, atol=1e-3)
    assert (got["labels"] == expected.argmax(-1)).mean() > 0.998
    np.testing.assert_array_equal(got["labels_u8"], got["labels"])
    assert len(np.unique(got["labels"])) > 1
    # Encoded bytes: each image at its own size, padded with -1 to the largest.
    assert list(got["heights"]) == [37, 29] and list(got["widths"]) == [45, 23]
    np.testing.assert_array_equal(got["bytes_labels"][0], got["labels"][0])
    assert (got["bytes_labels"][1, 29:, :] == -1).all() and (
        got["bytes_labels"][1, :, 23:] == -1
    ).all()
    jpeg_ref = msc(tf.image.decode_jpeg(_encode(small, "JPEG"))[None]).numpy()[0].argmax(-1)
    assert (got["bytes_labels"][1, :29, :23] == jpeg_ref).mean() > 0.99
    # The CRF signature refines the same probabilities as the in-process DenseCRF.
    np.testing.assert_array_equal(got["crf_before"], got["labels"])
    assert (got["crf_labels"] == expected_crf.argmax(-1)).mean() > 0.999
    assert (got["crf_labels"] != got["labels"]).any()  # the CRF did change something
    png0 = np.array(Image.open(io.BytesIO(got["png0"].tobytes())))
    np.testing.assert_array_equal(png0, got["labels"][0])


def test_warmup_records_are_byte_identical_to_tf_serving_protos():
    """The project's own warm-up messages serialize exactly as tensorflow-serving-api's."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    from deeplab_tf.export.warmup import predict_log_record

    image = np.random.default_rng(0).uniform(0, 255, (1, 5, 7, 3)).astype(np.float32)
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(signature_name="serving_uint8")
    )
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(image))
    request.inputs["other"].CopyFrom(tf.make_tensor_proto(np.arange(3, dtype=np.int32)))
    official = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
    )
    ours = predict_log_record(
        {"images": image, "other": np.arange(3, dtype=np.int32)}, "serving_uint8"
    )
    parsed = prediction_log_pb2.PredictionLog.FromString(ours)
    assert parsed == official
    assert parsed.WhichOneof("log_type") == "predict_log"
    # Byte for byte (a single map entry, so map ordering cannot differ).
    del request.inputs["other"]
    one = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
    )
    assert predict_log_record({"images": image}, "serving_uint8") == one.SerializeToString()


@pytest.mark.multiprocess
def test_warmup_requests_are_prediction_logs(tmp_path, tiny):
    from tensorflow_serving.apis import prediction_log_pb2

    path = export_saved_model(tiny, tmp_path, warmup_size=(24, 20))
    assert path.endswith(os.sep + "1")
    records = list(
        tf.data.TFRecordDataset(
            os.path.join(path, "assets.extra", "tf_serving_warmup_requests")
        ).as_numpy_iterator()
    )
    logs = [prediction_log_pb2.PredictionLog.FromString(r) for r in records]
    requests = {log.predict_log.request.model_spec.signature_name: log for log in logs}
    assert sorted(requests) == ["serving_bytes", "serving_default", "serving_uint8"]
    request = requests["serving_default"].predict_log.request
    assert tf.make_ndarray(request.inputs["images"]).shape == (1, 24, 20, 3)
    # saved_model_cli (ships with TensorFlow) loads and runs it through the C++ loader path.
    cli = [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    shown = subprocess.run(
        [*cli, "show", "--dir", path, "--all"], capture_output=True, text=True, timeout=300
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    for name in (
        "serving_default",
        "serving_bytes",
        "image_bytes",
        "probabilities",
        "label_png_bytes",
    ):
        assert name in shown.stdout
    np.save(tmp_path / "images.npy", np.full((1, 24, 20, 3), 128, np.float32))
    ran = subprocess.run(
        [
            *cli, "run", "--dir", path, "--tag_set", "serve", "--signature_def",
            "serving_default", "--inputs", f"images={tmp_path / 'images.npy'}",
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "labels" in ran.stdout and "probabilities" in ran.stdout
    # The next export without a version takes the next integer.
    assert export_saved_model(tiny, tmp_path, warmup=False).endswith(os.sep + "2")


def test_versions_are_protected_and_swapped_atomically(tmp_path, tiny, monkeypatch):
    model = tiny
    base = tmp_path / "m"
    export_saved_model(model, base, version=1, warmup=False)
    stamp = os.path.getmtime(base / "1" / "saved_model.pb")
    with pytest.raises(ValueError, match="Version 1 already exists"):
        export_saved_model(model, base, version=1)
    import deeplab_tf.export.savedmodel as sm

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sm, "write_warmup_requests", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_saved_model(model, base, version=1, overwrite=True)
    with pytest.raises(RuntimeError, match="disk full"):
        export_saved_model(model, base, version=2)
    assert sorted(os.listdir(base)) == ["1"]  # no half-written version, old one intact
    assert os.path.getmtime(base / "1" / "saved_model.pb") == stamp
    monkeypatch.undo()
    export_saved_model(model, base, version=1, overwrite=True, warmup=False)
    assert sorted(os.listdir(base)) == ["1"]


def _export_during_write_out(monkeypatch, other):
    """Runs ``other()`` (a concurrent export) while the first export writes its files."""
    import keras

    cls = type(keras.export.ExportArchive())  # the backend's subclass does the writing
    real = cls.write_out
    state = {"nested": False}

    def write_out(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        if not state["nested"]:
            state["nested"] = True
            other()
        return result

    monkeypatch.setattr(cls, "write_out", write_out)


def test_concurrent_exports_get_distinct_versions(tmp_path, tiny, monkeypatch, capsys):
    """The version is claimed when publishing: a concurrent export never replaces another."""
    keras_path = tmp_path / "m.keras"
    tiny.save(keras_path)
    out = tmp_path / "serving"
    argv = ["export", str(keras_path), "--out", str(out), "--no-warmup"]
    inner = []
    _export_during_write_out(monkeypatch, lambda: inner.append(cli_main(argv)))
    assert cli_main(argv) == 0 and inner == [0]
    printed = [line for line in capsys.readouterr().out.splitlines() if "SavedModel:" in line]
    assert printed == [f"SavedModel: {out / '1'}", f"SavedModel: {out / '2'}"]
    assert sorted(os.listdir(out)) == ["1", "2"]  # both complete, no temporaries left
    for v in ("1", "2"):
        assert os.path.isfile(out / v / "saved_model.pb")
    # An explicit version taken meanwhile by another export: a clear error, the other stays.
    monkeypatch.undo()
    inner.clear()
    stamp = None

    def other():
        nonlocal stamp
        inner.append(cli_main([*argv, "--version", "7"]))
        stamp = os.path.getmtime(out / "7" / "saved_model.pb")

    _export_during_write_out(monkeypatch, other)
    assert cli_main([*argv, "--version", "7"]) == 2 and inner == [0]
    err = capsys.readouterr().err
    assert "Version 7 already exists" in err and "Traceback" not in err
    assert os.path.getmtime(out / "7" / "saved_model.pb") == stamp
    assert sorted(os.listdir(out)) == ["1", "2", "7"]


@pytest.mark.multiprocess
def test_stale_export_temporaries_are_cleaned(tmp_path, tiny):
    from deeplab_tf import atomic

    base = tmp_path / "m"
    base.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = base / f".tmp-{atomic._host()}~{dead.pid}.~0badf00d-export"
    stale.mkdir()
    (stale / "saved_model.pb").write_text("half")
    live = base / f".tmp-{atomic.owner_tag()}~0badf00d-export"  # this (live) process's
    live.mkdir()
    atomic._cleaned.discard(str(base))
    export_saved_model(tiny, base, warmup=False)
    assert sorted(os.listdir(base)) == sorted(["1", live.name])


@pytest.mark.parametrize(
    "version,match",
    [("abc", "Received: 'abc'"), (0, "positive integer"), (True, "Received: True"), (1.5, "1.5")],
)
def test_bad_versions(tmp_path, tiny, version, match):
    model = tiny
    with pytest.raises(ValueError, match=match):
        export_saved_model(model, tmp_path, version=version)


def test_cli_rejects_bad_arguments_before_work(tmp_path, capsys):
    afile = tmp_path / "file"
    afile.write_text("x")
    assert cli_main(["export", "no_such_model", "--out", str(afile)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert cli_main(["export", "no_such_model", "--out", str(tmp_path), "--version", "v2"]) == 2
    assert "Received: 'v2'" in capsys.readouterr().err
    assert cli_main(["export", "no_such_model", "--out", str(tmp_path / "new")]) == 2
    assert "Received: model='no_such_model'" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_cli_exports_keras_file(tmp_path, tiny):
    model = tiny
    keras_path = tmp_path / "m.keras"
    model.save(keras_path)
    out = tmp_path / "serving"
    assert cli_main(["export", str(keras_path), "--out", str(out), "--version", "5"]) == 0
    loaded = tf.saved_model.load(str(out / "5"))
    images = _images(1)
    got = loaded.signatures["serving_uint8"](images=tf.constant(images))["labels"].numpy()
    np.testing.assert_array_equal(
        got, MultiScaleInference(model, scales=(1.0,))(images).numpy().argmax(-1)
    )


@pytest.mark.large  # slowest of the fast loop (12-32 s)
def test_tflite_fp32_matches_and_keeps_dilated_convs_plain(tmp_path, model):
    images = _images(1, 41, 33)
    expected = MultiScaleInference(model, scales=(1.0,))(images).numpy()
    path = export_tflite(model, tmp_path / "m.tflite", (41, 33))
    out = run_tflite(path, images[0])
    np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-4, atol=1e-4)
    assert (out["labels"] == expected.argmax(-1)).mean() > 0.999
    ops = tflite_ops(path)
    assert "CONV_2D" in ops and "DEPTHWISE_CONV_2D" in ops
    assert "SPACE_TO_BATCH_ND" not in ops and "BATCH_TO_SPACE_ND" not in ops
    with pytest.raises(ValueError, match=r"takes images of shape \(1, 41, 33, 3\)"):
        run_tflite(path, np.zeros((40, 33, 3), np.uint8))


@pytest.mark.large
@pytest.mark.xdist_group("export_trained")
def test_tflite_fp16_and_int8_label_agreement(tmp_path, trained):
    model, images = trained
    calibration = list(images[:2])
    expected = MultiScaleInference(model, scales=(1.0,))(images).numpy().argmax(-1)
    assert len(np.unique(expected)) >= 3  # the model has learnt several classes
    sizes = {}
    for q, threshold in (("fp16", 0.99), ("int8", 0.95)):
        path = export_tflite(
            model, tmp_path / f"m_{q}.tflite", (48, 48), q, representative_data=calibration
        )
        sizes[q] = os.path.getsize(path)
        labels = np.concatenate([run_tflite(path, im)["labels"] for im in images])
        agreement = (labels == expected).mean()
        print(f"{q}: label agreement {agreement:.4f}, {sizes[q]} bytes")
        assert agreement >= threshold, (q, agreement)
    assert sizes["int8"] < sizes["fp16"]
    with pytest.raises(ValueError, match="needs representative_data"):
        export_tflite(model, tmp_path / "x.tflite", (48, 48), "int8")
    with pytest.raises(ValueError, match="Received: quantization='int4'"):
        export_tflite(model, tmp_path / "x.tflite", (48, 48), "int4")


def _op_count(model, op_type):
    fn = tf.function(lambda x: model(x)).get_concrete_function(
        tf.TensorSpec([1, None, None, 3], tf.float32)
    )
    return sum(op_type in (None, op.type) for op in fn.graph.get_operations())


def test_batchnorm_folding_same_outputs_fewer_ops():
    model = _spread_model("resnet50")
    folded = fold_batchnorm(model)
    x = _images(1, 33, 41).astype(np.float32)
    ref = model(x).numpy()
    np.testing.assert_allclose(folded(x).numpy(), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert _op_count(model, "Rsqrt") == 53  # one per inference-mode BatchNorm
    assert _op_count(folded, "Rsqrt") == 0
    assert _op_count(folded, None) < _op_count(model, None) - 5 * 53
    assert [layer.name for layer in folded.layers] == [layer.name for layer in model.layers]


@pytest.mark.large  # slowest of the fast loop (12-32 s)
def test_fused_inference_model_same_outputs_direct_dilated_convs(tmp_path):
    import keras

    model = _spread_model("resnet50")
    fused = fuse_for_inference(model)
    x = _images(1, 33, 41).astype(np.float32)
    ref = model(x).numpy()
    np.testing.assert_allclose(fused(x).numpy(), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert _op_count(model, "SpaceToBatchND") == 0  # AtrousConv2D: direct dilated convs
    assert _op_count(fused, "SpaceToBatchND") == 0 and _op_count(fused, "Rsqrt") == 0
    assert _op_count(fused, "Pad") < _op_count(model, "Pad")  # padding merged into the convs
    assert type(fused.get_layer("res4b_branch2b")).__name__ == "PaddedConv2D"
    fused.save(tmp_path / "fused.keras")
    reloaded = keras.saving.load_model(tmp_path / "fused.keras", safe_mode=True)
    np.testing.assert_allclose(reloaded(x).numpy(), fused(x).numpy(), rtol=1e-6, atol=1e-6)


def test_frozen_inference_function_matches_and_holds_a_copy(model):
    """``inference_function(freeze=True)``: the same outputs as the function that reads the
    variables, no variable captured, and the weights as they were when it was frozen."""
    from deeplab_tf.export.graph import inference_function

    images = _images(1, 41, 33)
    live, _ = inference_function(model, (41, 33), input_dtype="uint8")
    frozen, signature = inference_function(model, (41, 33), input_dtype="uint8", freeze=True)
    assert signature[0].shape.as_list() == [None, 41, 33, 3]
    expected = {k: v.numpy() for k, v in live(images).items()}
    out = frozen(images)
    assert sorted(out) == ["labels", "probabilities"]
    np.testing.assert_array_equal(out["labels"].numpy(), expected["labels"])
    # 1e-4: oneDNN picks other kernels for constant filters (labels stay equal)
    np.testing.assert_allclose(out["probabilities"].numpy(), expected["probabilities"],
                               rtol=1e-4, atol=1e-4)  # fmt: skip
    assert not frozen.get_concrete_function().variables
    # Zeroing every weight the live graph reads makes every logit 0 (every label 0) there.
    assert len(np.unique(expected["labels"])) > 1
    weights = live.get_concrete_function().variables
    saved = [w.numpy() for w in weights]
    try:
        for w in weights:
            w.assign(np.zeros(w.shape, w.dtype.as_numpy_dtype))
        assert not live(images)["labels"].numpy().any()
        np.testing.assert_array_equal(frozen(images)["labels"].numpy(), expected["labels"])
    finally:
        for w, value in zip(weights, saved):
            w.assign(value)


@pytest.mark.large
@pytest.mark.xdist_group("export_trained")
def test_bfloat16_twin_agrees_on_labels(trained):
    model, images = trained
    twin = to_bfloat16(model)
    ref = model(images).numpy()
    out = twin(images)
    assert out.dtype == tf.float32
    agreement = (out.numpy().argmax(-1) == ref.argmax(-1)).mean()
    print(f"bfloat16 vs float32: label agreement {agreement:.4f}")
    assert agreement >= 0.98, agreement
    assert twin.get_layer("block_3_project").compute_dtype == "bfloat16"
    assert twin.get_layer("preprocess").compute_dtype == "float32"


BAD_REQUESTS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    loaded = tf.saved_model.load(sys.argv[1])
    sigs = loaded.signatures
    f32, u8 = np.float32, np.uint8
    bad = {
        "rank3": np.zeros((20, 20, 3)), "rank5": np.zeros((1, 1, 20, 20, 3)),
        "rank2": np.zeros((20, 3)), "channels4": np.zeros((1, 20, 20, 4)),
        "channels1": np.zeros((1, 20, 20, 1)), "empty_h": np.zeros((1, 0, 20, 3)),
        "empty_batch": np.zeros((0, 20, 20, 3)),
    }
    result = {}
    def attempt(key, fn, **kwargs):
        try:
            fn(**kwargs)
            result[key] = "no error"
        except tf.errors.InvalidArgumentError as err:
            result[key] = "InvalidArgumentError: " + " ".join(err.message.split())
        except (TypeError, ValueError) as err:
            result[key] = "python " + type(err).__name__
    for sig, dtype in [("serving_default", f32), ("serving_uint8", u8), ("serving_crf", f32)]:
        for case, array in bad.items():
            attempt(f"{sig}/{case}", sigs[sig], images=tf.constant(array.astype(dtype)))
    nan = np.zeros((1, 20, 20, 3), f32)
    nan[0, 3, 4, 1] = np.nan
    attempt("serving_default/nan", sigs["serving_default"], images=tf.constant(nan))
    attempt("serving_crf/inf", sigs["serving_crf"], images=tf.constant(nan * 0 + np.inf))
    attempt("serving_bytes/rank0", sigs["serving_bytes"], image_bytes=tf.constant(b"x"))
    attempt("serving_bytes/rank2", sigs["serving_bytes"], image_bytes=tf.constant([[b"x"]]))
    attempt("serving_bytes/empty", sigs["serving_bytes"], image_bytes=tf.zeros([0], tf.string))
    attempt("serving_bytes/empty_string", sigs["serving_bytes"], image_bytes=tf.constant([b""]))
    good = np.full((1, 20, 20, 3), 128, f32)
    result["good"] = list(sigs["serving_default"](images=tf.constant(good))["labels"].shape)
    result["good_crf"] = list(sigs["serving_crf"](images=tf.constant(good))["labels"].shape)
    print(json.dumps(result))
    """
)


@pytest.mark.multiprocess
def test_every_signature_rejects_bad_requests_and_keeps_serving(tmp_path, tiny):
    """A rank-3 batch used to abort the serving process in the convolution kernel; every
    signature now fails such requests with InvalidArgumentError and serves the next one."""
    from deeplab_tf import DenseCRF

    crf = DenseCRF.from_preset("resnet101", iterations=1)
    path = export_saved_model(tiny, tmp_path, warmup=False, crf=crf)
    result = _run_script(BAD_REQUESTS_SCRIPT, path)
    assert result.pop("good") == [1, 20, 20] and result.pop("good_crf") == [1, 20, 20]
    assert len(result) == 3 * 7 + 6
    for key, outcome in result.items():
        assert outcome.startswith("InvalidArgumentError"), (key, outcome)
    assert (
        "[20,20,3] is not compatible with expected shape [?,?,?,3]"
        in result["serving_default/rank3"]
    )
    assert "NaN or inf" in result["serving_default/nan"]


@pytest.mark.parametrize(
    "shape,dtype,match",
    [
        ((20, 20, 3), np.uint8, r"images.shape=\(20, 20, 3\).*images\[None\]"),
        ((1, 20, 20, 4), np.float32, r"Received: images.shape=\(1, 20, 20, 4\)"),
        ((1, 0, 20, 3), np.float32, "empty"),
        ((1, 20, 20, 3), np.uint16, "dtype uint16.*0..255"),
        ((1, 20, 20, 3), bool, "dtype bool"),
    ],
)
def test_keras_entry_points_reject_bad_images(tiny, shape, dtype, match):
    images = np.zeros(shape, dtype)
    with pytest.raises(ValueError, match=match):
        MultiScaleInference(tiny, scales=(1.0,))(images)
    if dtype not in (np.uint16, bool):  # a functional model casts to its input dtype first
        with pytest.raises(ValueError):  # Keras' input check or the Preprocess layer's
            tiny(images)
    with pytest.raises(ValueError, match=match):
        tiny.get_layer("preprocess")(images)


def test_run_tflite_rejects_bad_images(tmp_path, tiny):
    path = export_tflite(tiny, tmp_path / "m.tflite", (24, 24))
    with pytest.raises(ValueError, match=r"Received: \(1, 20, 20, 3\)"):
        run_tflite(path, np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(ValueError, match="dtype float32.*0..255"):
        run_tflite(path, np.full((24, 24, 3), 0.5, np.float32))
    with pytest.raises(ValueError, match="dtype uint16"):
        run_tflite(path, np.zeros((24, 24, 3), np.uint16))
    ok = run_tflite(path, np.full((24, 24, 3), 7.0, np.float32))  # whole values 0..255: fine
    assert ok["labels"].shape == (1, 24, 24)


BYTES_LIMIT_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    import tensorflow as tf
    small_limit, default_limit, inputs = sys.argv[1:4]
    data = np.load(inputs)
    result = {}
    loaded = {}
    def rss_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    def send(key, path, blob):
        if path not in loaded:  # one load per model, as a server does: memory stays flat
            loaded[path] = tf.saved_model.load(path).signatures["serving_bytes"]
        fn = loaded[path]
        try:
            out = fn(image_bytes=tf.constant([blob]))
            result[key] = [int(out["heights"][0]), int(out["widths"][0])]
        except tf.errors.InvalidArgumentError as err:
            result[key] = "InvalidArgumentError: " + " ".join(err.message.split())
    for name in data.files:
        if name != "bomb":
            send(name, small_limit, data[name].tobytes())
    send("default_ok", default_limit, data["ok_png"].tobytes())  # both models loaded and used
    result["rss_before_bomb_mb"] = rss_mb()
    send("bomb_small_limit", small_limit, data["bomb"].tobytes())
    send("bomb_default_limit", default_limit, data["bomb"].tobytes())
    send("after", default_limit, data["ok_png"].tobytes())
    result["peak_rss_mb"] = rss_mb()
    print(json.dumps(result))
    """
)


@pytest.mark.multiprocess
def test_serving_bytes_refuses_images_over_max_pixels_before_decoding(tmp_path, tiny):
    """One 8000x8000 PNG of a few hundred KB used to take gigabytes in serving_bytes; the size
    is now read from the header and checked before decoding."""
    small = export_saved_model(tiny, tmp_path / "small", max_pixels=1000, warmup=False)
    default = export_saved_model(tiny, tmp_path / "default", warmup=False)
    arrays = {}
    for fmt in ("PNG", "JPEG", "GIF", "BMP"):
        for tag, side in (("ok", 30), ("big", 40)):  # 900 and 1600 pixels
            arrays[f"{tag}_{fmt.lower()}"] = np.frombuffer(
                _encode(_images(1, side, side + 1, seed=side)[0], fmt), np.uint8
            )
    buf = io.BytesIO()
    Image.new("1", (8000, 8000)).save(buf, format="PNG")  # 64M pixels, a tiny file
    arrays["bomb"] = np.frombuffer(buf.getvalue(), np.uint8)
    assert len(buf.getvalue()) < 1_000_000
    np.savez(tmp_path / "inputs.npz", **arrays)
    result = _run_script(BYTES_LIMIT_SCRIPT, small, default, str(tmp_path / "inputs.npz"))
    for fmt in ("png", "jpeg", "gif", "bmp"):
        assert result[f"ok_{fmt}"] == [30, 31], (fmt, result[f"ok_{fmt}"])
        refused = result[f"big_{fmt}"]
        assert refused.startswith("InvalidArgumentError"), (fmt, refused)
        assert "[40 41]" in refused and "over the limit of 1000 pixels" in refused, refused
    for key in ("bomb_small_limit", "bomb_default_limit"):
        assert "[8000 8000]" in result[key], result[key]
    assert "limit of 40000000 pixels" in result["bomb_default_limit"]
    assert result["after"] == [30, 31]
    # Against this process's own high-water mark before the bomb (both models loaded and used):
    # merely decoding the 64M-pixel PNG would add 192 MB (uint8 RGB); scoring it, gigabytes.
    grown = result["peak_rss_mb"] - result["rss_before_bomb_mb"]
    assert grown < 100, result
    with pytest.raises(ValueError, match="max_pixels must be a positive integer"):
        export_saved_model(tiny, tmp_path / "x", max_pixels=-5)
    assert not (tmp_path / "x").exists()


def test_cli_export_max_pixels(tmp_path, tiny, capsys):
    keras_path = tmp_path / "m.keras"
    tiny.save(keras_path)
    out = tmp_path / "serving"
    argv = ["export", str(keras_path), "--out", str(out), "--no-warmup", "--max-pixels", "100"]
    assert cli_main(argv) == 0
    fn = tf.saved_model.load(str(out / "1")).signatures["serving_bytes"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="over the limit of 100 pixels"):
        fn(image_bytes=tf.constant([_encode(_images(1, 11, 10)[0], "PNG")]))
    assert fn(image_bytes=tf.constant([_encode(_images(1, 9, 10)[0], "PNG")]))["heights"][0] == 9
