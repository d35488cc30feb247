"""TF Serving hardening of the SavedModel export: version folder names read as TF Serving reads
them, one warm-up record per signature that really runs on the export, and remote base paths
(``tf.io.gfile`` URLs, checked here on TensorFlow's in-memory ``ram://`` file system, which like
an object store has no folder rename)."""

import os
import secrets

import numpy as np
import pytest
import tensorflow as tf

from deeplab_tf import atomic
from deeplab_tf.cli import main as cli_main
from deeplab_tf.export import export_saved_model
from deeplab_tf.export.optimize import with_input_shape
from deeplab_tf.export.savedmodel import (
    SAVED_MODEL_FILE,
    check_export_target,
    declared_input_size,
    is_remote,
    next_version,
    version_number,
)
from deeplab_tf.export.warmup import (
    MAX_RECORDS,
    WARMUP_FILE,
    warmup_inputs,
    warmup_records,
    write_warmup_requests,
)
from tests._harness import tiny_segmenter

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def tiny():
    return tiny_segmenter(NUM_CLASSES)


def _ram_base():
    """A fresh base path on the process-wide ``ram://`` file system."""
    return f"ram://bucket{secrets.token_hex(4)}/models/deeplab"


# === version folder names ===


@pytest.mark.parametrize(
    "name,version",
    [
        ("7", 7),
        ("007", 7),
        ("0", 0),
        ("10", 10),
        (" 12\n", 12),  # safe_strto64 skips C isspace around the digits
        ("-3", -3),
        ("+4", 4),  # absl::SimpleAtoi (newer servers) takes a '+'
        (str(2**63 - 1), 2**63 - 1),
        ("3/", 3),  # an object store's listing entry
        ("3/saved_model.pb", 3),
        ("abc", None),
        ("1.tmp", None),
        ("v2", None),
        ("1e3", None),
        ("", None),
        ("\u0663", None),  # an Arabic-Indic digit: str.isdigit() says yes, C isdigit no
        (str(2**63), None),  # beyond int64: safe_strto64 fails
        (".tmp-host~1.2~0badf00d-export", None),  # the export's own temporaries
    ],
)
def test_version_number_reads_names_as_tf_serving(name, version):
    assert version_number(name) == version


@pytest.mark.large
def test_next_version_is_above_every_version_tf_serving_sees(tmp_path, tiny):
    base = tmp_path / "m"
    base.mkdir()
    for name in ("007", "0", "10", "abc", "1.tmp"):
        (base / name).mkdir()
    assert next_version(base) == 11
    assert check_export_target(base) == 11
    path = export_saved_model(tiny, base, warmup=False)
    assert path == str(base / "11")
    assert sorted(os.listdir(base)) == ["0", "007", "1.tmp", "10", "11", "abc"]
    # Only "0" and non-versions: the first version is 1, never a second 0.
    other = tmp_path / "zero"
    other.mkdir()
    (other / "0").mkdir()
    (other / "abc").mkdir()
    assert export_saved_model(tiny, other, warmup=False) == str(other / "1")


def test_explicit_version_counts_every_folder_read_as_it(tmp_path, tiny):
    base = tmp_path / "m"
    (base / "007").mkdir(parents=True)
    for overwrite in (False, True):  # replacing "007" by "7" would leave version 7 twice
        with pytest.raises(ValueError, match=r"Version 7 already exists at .*007"):
            export_saved_model(tiny, base, version=7, overwrite=overwrite, warmup=False)
    assert check_export_target(base, "0008") == 8
    assert export_saved_model(tiny, base, version="0008", warmup=False) == str(base / "8")
    for bad in ("-1", "+2", " 3", "٣", "7.0", 0, 2**63):
        with pytest.raises(ValueError, match="positive integer"):
            check_export_target(base, bad)
    assert sorted(os.listdir(base)) == ["007", "8"]


@pytest.mark.large
def test_cli_version_with_leading_zeros(tmp_path, tiny, capsys):
    keras_path = tmp_path / "m.keras"
    tiny.save(keras_path)
    out = tmp_path / "serving"
    (out / "007").mkdir(parents=True)
    argv = ["export", str(keras_path), "--out", str(out), "--no-warmup"]
    assert cli_main([*argv, "--version", "7"]) == 2
    assert "Version 7 already exists" in capsys.readouterr().err
    assert cli_main(argv) == 0
    assert f"SavedModel: {out / '8'}" in capsys.readouterr().out
    assert cli_main([*argv, "--version", "010"]) == 0
    assert sorted(os.listdir(out)) == ["007", "10", "8"]


# === warm-up records ===


def _records(version_dir):
    from tensorflow_serving.apis import prediction_log_pb2

    path = f"{version_dir}/assets.extra/{WARMUP_FILE}"
    raw = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
    return [prediction_log_pb2.PredictionLog.FromString(r) for r in raw]


def _run_records(version_dir):
    """Parses the warm-up file back with the official protos and runs every request's inputs
    through the loaded SavedModel's signature of the same name, as TF Serving does at load.

    Returns:
        ``(loaded, {signature: (inputs, outputs)})``.
    """
    loaded = tf.saved_model.load(version_dir)
    logs = _records(version_dir)
    assert 1 <= len(logs) <= MAX_RECORDS
    ran = {}
    for log in logs:
        assert log.WhichOneof("log_type") == "predict_log"
        request = log.predict_log.request
        name = request.model_spec.signature_name
        assert name not in ran  # one record per signature
        signature = loaded.signatures[name]
        specs = signature.structured_input_signature[1]
        assert set(request.inputs) == set(specs)
        inputs = {}
        for key, proto in request.inputs.items():
            value = tf.make_ndarray(proto)
            assert tf.as_dtype(proto.dtype) == specs[key].dtype
            assert tf.TensorShape(value.shape).is_compatible_with(specs[key].shape)
            inputs[key] = tf.constant(value, dtype=specs[key].dtype)
        ran[name] = (inputs, {k: v.numpy() for k, v in signature(**inputs).items()})
    return loaded, ran


@pytest.mark.large
def test_warmup_has_one_running_request_per_signature(tmp_path, tiny):
    from deeplab_tf import DenseCRF

    crf = DenseCRF.from_preset("resnet101", iterations=2)
    path = export_saved_model(tiny, tmp_path, crf=crf, warmup_size=(40, 52))
    loaded, ran = _run_records(path)
    assert set(ran) == set(loaded.signatures) == {
        "serving_default", "serving_uint8", "serving_bytes", "serving_crf"
    }  # fmt: skip
    for name in ("serving_default", "serving_uint8", "serving_crf"):
        inputs, outputs = ran[name]
        assert inputs["images"].shape == (1, 40, 52, 3)
        assert outputs["labels"].shape == (1, 40, 52)
        assert outputs["probabilities"].shape == (1, 40, 52, NUM_CLASSES)
    assert ran["serving_default"][0]["images"].dtype == tf.float32
    assert ran["serving_uint8"][0]["images"].dtype == tf.uint8
    # The same picture in every record: the float and uint8 requests agree.
    np.testing.assert_array_equal(
        ran["serving_default"][1]["labels"], ran["serving_uint8"][1]["labels"]
    )
    # serving_bytes gets a real JPEG file of the warm-up size, decoded by the graph.
    inputs, outputs = ran["serving_bytes"]
    data = inputs["image_bytes"].numpy()
    assert data.shape == (1,) and data[0][:2] == b"\xff\xd8"
    assert tuple(tf.image.extract_jpeg_shape(data[0]).numpy()) == (40, 52, 3)
    assert (outputs["heights"][0], outputs["widths"][0]) == (40, 52)
    assert outputs["labels"].shape == (1, 40, 52)
    assert "labels_before_crf" in ran["serving_crf"][1]


def test_warmup_size_defaults_to_declared_size_or_513(tmp_path, tiny):
    assert declared_input_size(tiny) is None
    _, ran = _run_records(export_saved_model(tiny, tmp_path / "dynamic"))
    assert set(ran) == {"serving_default", "serving_uint8", "serving_bytes"}
    assert ran["serving_default"][1]["labels"].shape == (1, 513, 513)
    assert (ran["serving_bytes"][1]["heights"][0], ran["serving_bytes"][1]["widths"][0]) == (
        513,
        513,
    )
    fixed = with_input_shape(tiny, 48, 64)
    assert declared_input_size(fixed) == (48, 64)
    _, ran = _run_records(export_saved_model(fixed, tmp_path / "fixed"))
    assert ran["serving_uint8"][0]["images"].shape == (1, 48, 64, 3)
    assert ran["serving_bytes"][1]["labels"].shape == (1, 48, 64)


def test_warmup_jpeg_stays_under_max_pixels(tmp_path, tiny):
    """One failing record fails the whole load, so the JPEG obeys the export's pixel limit."""
    path = export_saved_model(tiny, tmp_path, max_pixels=5000, warmup_size=(100, 120))
    _, ran = _run_records(path)  # serving_bytes would raise InvalidArgument over the limit
    h, w = ran["serving_bytes"][1]["heights"][0], ran["serving_bytes"][1]["widths"][0]
    assert h * w <= 5000 and abs(h / w - 100 / 120) < 0.05
    assert ran["serving_default"][0]["images"].shape == (1, 100, 120, 3)  # tensors: no limit


def test_warmup_rejects_bad_arguments(tmp_path, tiny):
    images = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")
    with pytest.raises(ValueError, match="No warm-up input for 'ids'"):
        warmup_inputs([tf.TensorSpec([None, 5], tf.int32, name="ids")], (8, 8))
    with pytest.raises(ValueError, match="1 to 1000 signatures"):
        warmup_records({f"s{i}": [images] for i in range(MAX_RECORDS + 1)}, (4, 4))
    with pytest.raises(ValueError, match=r"warmup_size must be \(height, width\)"):
        export_saved_model(tiny, tmp_path, warmup_size=(0, 5))
    assert not os.listdir(tmp_path)  # refused before anything was written
    path = write_warmup_requests(str(tmp_path), {"serving_default": [images]}, (6, 7))
    with pytest.raises(FileExistsError):
        write_warmup_requests(str(tmp_path), {"serving_default": [images]}, (6, 7))
    assert os.listdir(os.path.dirname(path)) == [WARMUP_FILE]


# === remote base paths (tf.io.gfile) ===


def test_ram_and_file_urls():
    assert is_remote("ram://b/m") and is_remote("gs://b/m") and is_remote("S3://b/m")
    assert not is_remote("/models/m") and not is_remote("file:///models/m")
    assert not is_remote("C:\\models\\m") and not is_remote("models/m")


def test_remote_export_publishes_saved_model_pb_last(tiny, monkeypatch):
    """On a file system without folder rename the version is copied from a staging prefix that
    is no version, with saved_model.pb last: whenever a poller would find saved_model.pb in the
    version folder, every other file is already there."""
    base = _ram_base()
    gfile = tf.io.gfile
    for name in ("007", "abc", "9/variables"):  # "9": an export interrupted before its .pb
        gfile.makedirs(f"{base}/{name}")
    assert next_version(base) == 10
    stale = f".tmp-{atomic._host()}~{os.getpid()}.1~0badf00d-export"  # this pid, other start
    live = f".tmp-{atomic.owner_tag()}~0badf00d-export"
    for name in (stale, live):
        gfile.makedirs(f"{base}/{name}")
    target = f"{base}/10"
    copies, staged, seen = [], [], []
    real_copy = gfile.copy

    def copy(src, dst, overwrite=False):
        assert not overwrite
        real_copy(src, dst, overwrite=overwrite)
        copies.append((src, dst))
        if "-export/" in dst:  # the upload to the staging prefix
            staged.append(dst.split("-export/", 1)[1])
        elif dst.startswith(target + "/"):
            seen.append(dst[len(target) + 1 :])
            if gfile.exists(f"{target}/{SAVED_MODEL_FILE}"):  # what a TF Serving poll finds
                assert seen[-1] == SAVED_MODEL_FILE, "a file was copied after saved_model.pb"
                missing = [rel for rel in staged if not gfile.exists(f"{target}/{rel}")]
                assert not missing, missing

    monkeypatch.setattr(gfile, "copy", copy)
    path = export_saved_model(tiny, base, warmup_size=(24, 20))
    monkeypatch.undo()
    assert path == target
    assert seen[-1] == SAVED_MODEL_FILE and sorted(seen) == sorted(staged)
    assert {"variables/variables.index", f"assets.extra/{WARMUP_FILE}"} <= set(seen)
    uploads = [dst for src, dst in copies if not src.startswith("ram://")]
    assert uploads and all(version_number(d[len(base) + 1 :]) is None for d in uploads)
    # The staging prefix is gone, the dead process's too; the live one's stays.
    names = {n.rstrip("/") for n in gfile.listdir(base)}
    assert names == {"007", "abc", "9", "10", live}
    # The published version serves, warm-up records included.
    _, ran = _run_records(path)
    assert ran["serving_default"][1]["labels"].shape == (1, 24, 20)
    expected = tiny_probs(tiny, ran["serving_default"][0]["images"])
    np.testing.assert_allclose(ran["serving_default"][1]["probabilities"], expected, atol=1e-5)
    # A version that exists cannot be replaced there, with or without overwrite.
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="Version 10 already exists"):
            export_saved_model(tiny, base, version=10, overwrite=overwrite, warmup=False)
    assert export_saved_model(tiny, base, version=12, warmup=False) == f"{base}/12"


def tiny_probs(model, images):
    from deeplab_tf import MultiScaleInference

    return MultiScaleInference(model, scales=(1.0,))(images).numpy()


def test_file_url_is_a_local_atomic_export(tmp_path, tiny):
    path = export_saved_model(tiny, f"file://{tmp_path}/m", warmup=False)
    assert path == os.path.join(str(tmp_path), "m", "1")
    assert os.path.isfile(os.path.join(path, SAVED_MODEL_FILE))
    assert os.listdir(tmp_path / "m") == ["1"]


def test_cli_remote_out(tmp_path, tiny, capsys):
    keras_path = tmp_path / "m.keras"
    tiny.save(keras_path)
    base = _ram_base()
    argv = ["export", str(keras_path), "--out", base, "--no-warmup"]
    assert cli_main([*argv, "--tflite", "fp32"]) == 2
    assert "--tflite files are written to a local --out only" in capsys.readouterr().err
    assert not tf.io.gfile.exists(base)  # refused before any work
    assert cli_main(argv) == 0
    assert f"SavedModel: {base}/1" in capsys.readouterr().out
    assert tf.io.gfile.exists(f"{base}/1/{SAVED_MODEL_FILE}")
