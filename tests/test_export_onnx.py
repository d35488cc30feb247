"""ONNX and OpenVINO exports: checked against Keras in ONNX Runtime and OpenVINO's CPU runtime,
in this process and in a process that imports neither deeplab_tf nor TensorFlow."""

import json
import os
import sys
import textwrap

import numpy as np
import pytest

from deeplab_tf import MultiScaleInference
from deeplab_tf.atomic import OutputExistsError
from deeplab_tf.export import export_onnx, export_openvino, openvino_model, run_onnx, run_openvino
from tests._fresh_process import run_cli, run_python
from tests.test_export import (
    NUM_CLASSES,
    _images,
    _spread_model,
    tiny,  # noqa: F401 (a fixture)
)

#: Label agreement of OpenVINO bf16 inference with fp32 that the test model must reach. Its
#: random weights give small class margins (measured 0.87-0.88 at 37x45); the benchmark's
#: ResNet-101 and MobileNetV2 at 513 / 321 (benchmarks/README.md) are the realistic figures.
BF16_AGREEMENT = 0.80
#: The same for weights stored as float16 (compress_to_fp16) with fp32 inference.
FP16_WEIGHTS_AGREEMENT = 0.97
#: The runtime benchmark's int8 LiteRT file (random weights, 49x49, calibrated on 8 photos):
#: measured 0.954 of labels equal to TF fp32 here.
INT8_RUNTIME_AGREEMENT = 0.8


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def _openvino_bf16_usable():
    """OpenVINO's CPU plugin runs bf16 on AVX-512 CPUs (natively with AVX512-BF16 / AMX), unless
    oneDNN's ISA is capped below AVX-512 (how an AVX2-only machine is simulated on this one)."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    return "avx512f" in _cpu_flags() and (not cap or cap.startswith(("AVX512", "AVX10", "ALL")))


def _bf16_cpu():
    flags = _cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


@pytest.fixture(scope="module")
def model():
    """The export tests' MobileNetV2-ASPP (tests/test_export.py) with its classifier scaled
    down 0.3x: still every class wins somewhere, but probabilities are not saturated, so a
    float32 reordering of the sums (BatchNorm folding, another runtime's kernels) moves them
    by about 5e-5, not 2e-4 (the 1e-4 tolerance would test the model's conditioning)."""
    model = _spread_model()
    for i in range(4):
        head = model.get_layer(f"fc1_voc12_c{i}")
        kernel, bias = head.get_weights()
        head.set_weights([kernel * 0.3, bias * 0.3])
    return model


def _reference(model, images):
    return MultiScaleInference(model, scales=(1.0,))(images.astype(np.float32)).numpy()


def _check_fp32(got, ref):
    assert got["probabilities"].dtype == np.float32 and got["labels"].dtype == np.int32
    np.testing.assert_allclose(got["probabilities"], ref, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(got["labels"], ref.argmax(-1))


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    return export_onnx(model, path, logits=True)


@pytest.mark.large
def test_onnx_matches_keras_at_any_size(onnx_file, model):
    import onnx

    from deeplab_tf.export import onnx_session

    session = onnx_session(onnx_file)
    (spec,) = session.get_inputs()
    assert spec.name == "images" and spec.type == "tensor(float)"
    assert not any(isinstance(d, int) for d in spec.shape[:3])  # N, H, W dynamic
    assert spec.shape[3] == 3
    for n, h, w in ((1, 37, 45), (2, 50, 33)):
        images = _images(n, h, w, seed=h)
        ref = _reference(model, images)
        assert len(np.unique(ref.argmax(-1))) == NUM_CLASSES  # labels follow the image
        got = run_onnx(session, images.astype(np.float32))
        _check_fp32(got, ref)
        # stride-8 logits: Caffe's corner-aligned zoom by 8 then crop gives the probabilities
        assert got["logits"].shape == (n, (h - 1) // 8 + 1, (w - 1) // 8 + 1, NUM_CLASSES)
        np.testing.assert_allclose(got["logits"], model(images).numpy(), atol=1e-3, rtol=0)
    props = {p.key: p.value for p in onnx.load(onnx_file).metadata_props}
    assert props["deeplab_tf.num_classes"] == str(NUM_CLASSES)
    assert props["deeplab_tf.outputs"] == "labels,probabilities,logits"


@pytest.mark.large
@pytest.mark.multiprocess
def test_onnx_runs_where_only_onnxruntime_is_imported(tmp_path, onnx_file, model):
    images = _images(1, 41, 39, seed=3)
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent(
        """
        import json, sys
        import numpy as np
        import onnxruntime as ort
        session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
        images = np.load(sys.argv[2]).astype(np.float32)
        labels, probs = session.run(["labels", "probabilities"], {"images": images})
        np.save(sys.argv[3], probs)
        np.save(sys.argv[4], labels)
        banned = [m for m in ("tensorflow", "keras", "deeplab_tf", "tf2onnx") if m in sys.modules]
        print(json.dumps({"banned": banned}))
        """
    )
    out = [str(tmp_path / "probs.npy"), str(tmp_path / "labels.npy")]
    proc = run_python(script, str(onnx_file), str(tmp_path / "images.npy"), *out)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"banned": []}
    ref = _reference(model, images)
    _check_fp32({"probabilities": np.load(out[0]), "labels": np.load(out[1])}, ref)


@pytest.mark.large
def test_onnx_fixed_size_uint8(tmp_path, model):
    path = export_onnx(model, tmp_path / "fixed.onnx", (33, 41), input_dtype="uint8")
    from deeplab_tf.export import onnx_session

    session = onnx_session(path)
    (spec,) = session.get_inputs()
    assert spec.type == "tensor(uint8)" and spec.shape[1:] == [33, 41, 3]
    images = _images(2, 33, 41, seed=5)
    _check_fp32(run_onnx(session, images), _reference(model, images))
    with pytest.raises(Exception, match="images"):  # another size: refused by ONNX Runtime
        session.run(None, {"images": _images(1, 41, 33)})
    with pytest.raises(ValueError, match="whole numbers in 0..255"):
        run_onnx(session, images.astype(np.float32) + 0.5)


@pytest.fixture(scope="module")
def openvino_file(tmp_path_factory, model):
    return export_openvino(model, tmp_path_factory.mktemp("openvino") / "model.xml")


@pytest.mark.large
def test_openvino_fp32_matches_keras_and_bf16_agrees(openvino_file, model, tmp_path):
    import openvino as ov

    assert os.path.isfile(openvino_file[:-4] + ".bin")
    compiled = openvino_model(openvino_file)
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    images = _images(2, 37, 45, seed=11)
    ref = _reference(model, images)
    _check_fp32(run_openvino(compiled, images), ref)
    other = _images(1, 50, 29, seed=2)  # dynamic H/W
    _check_fp32(run_openvino(compiled, other), _reference(model, other))

    if _openvino_bf16_usable():
        bf16 = run_openvino(openvino_model(openvino_file, precision="bf16"), images)
        agreement = float((bf16["labels"] == ref.argmax(-1)).mean())
        print(f"OpenVINO bf16 label agreement with Keras fp32: {agreement:.4f}")
        assert agreement >= BF16_AGREEMENT
        plain = ov.Core().compile_model(openvino_file, "CPU")  # what a caller gets without a hint
        if _bf16_cpu():  # the CPU plugin's default there is bf16: the recorded f32 is what saves us
            assert plain.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
            assert np.abs(bf16["probabilities"] - ref).max() > 1e-3  # bf16 really ran
    else:  # refused before compiling, not a crash of the process (or a silent f32 run)
        with pytest.raises(ValueError, match=r"cannot run bf16 inference here: .*precision='f32'"):
            openvino_model(openvino_file, precision="bf16")

    small = export_openvino(model, tmp_path / "f16.xml", compress_to_fp16=True)
    ratio = os.path.getsize(tmp_path / "f16.bin") / os.path.getsize(openvino_file[:-4] + ".bin")
    assert ratio < 0.6
    half = run_openvino(openvino_model(small), images)
    agreement = float((half["labels"] == ref.argmax(-1)).mean())
    print(f"OpenVINO fp16 weights, fp32 inference, label agreement: {agreement:.4f}")
    assert agreement >= FP16_WEIGHTS_AGREEMENT


@pytest.mark.large
@pytest.mark.multiprocess
def test_openvino_runs_where_only_openvino_is_imported(tmp_path, openvino_file, model):
    """docs/runtimes.md's recipe: a plain OpenVINO process, the f32 hint passed by hand."""
    images = _images(1, 43, 37, seed=4)
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent(
        """
        import json, sys
        import numpy as np
        import openvino as ov
        core = ov.Core()
        compiled = core.compile_model(sys.argv[1], "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        result = compiled(np.load(sys.argv[2]).astype(np.float32))
        np.save(sys.argv[3], result[compiled.output("probabilities")])
        np.save(sys.argv[4], result[compiled.output("labels")])
        banned = [m for m in ("tensorflow", "keras", "deeplab_tf") if m in sys.modules]
        print(json.dumps({"banned": banned}))
        """
    )
    out = [str(tmp_path / "probs.npy"), str(tmp_path / "labels.npy")]
    proc = run_python(script, openvino_file, str(tmp_path / "images.npy"), *out)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"banned": []}
    ref = _reference(model, images)
    _check_fp32({"probabilities": np.load(out[0]), "labels": np.load(out[1])}, ref)


def test_exports_check_arguments_and_outputs_before_work(tmp_path, tiny, monkeypatch):  # noqa: F811
    import deeplab_tf.export.graph as graph

    def no_work(*args, **kwargs):
        raise AssertionError("the export started work")

    monkeypatch.setattr(graph, "inference_function", no_work)
    monkeypatch.setattr("deeplab_tf.export.onnx.inference_function", no_work)
    monkeypatch.setattr("deeplab_tf.export.openvino.inference_function", no_work)
    existing = tmp_path / "model.onnx"
    existing.write_bytes(b"keep")
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        export_onnx(tiny, existing)
    assert existing.read_bytes() == b"keep"
    (tmp_path / "model.bin").write_bytes(b"keep")  # half of a pair is an output too
    with pytest.raises(OutputExistsError, match="model.bin"):
        export_openvino(tiny, tmp_path / "model.xml")
    for call, match in (
        (lambda: export_onnx(tiny, tmp_path / "m.pb"), "must end with .onnx"),
        (lambda: export_onnx(tiny, tmp_path), "is a folder"),
        (lambda: export_onnx(tiny, tmp_path / "a.onnx", (32, 0)), "input_size"),
        (lambda: export_onnx(tiny, tmp_path / "a.onnx", "32x32"), "input_size"),
        (lambda: export_onnx(tiny, tmp_path / "a.onnx", opset=7), "opset"),
        (lambda: export_openvino(tiny, tmp_path / "a.onnx"), "must end with .xml"),
        (lambda: export_openvino(tiny, tmp_path / "a.xml", precision="fp8"), "precision"),
    ):
        with pytest.raises(ValueError, match=match):
            call()
    assert sorted(os.listdir(tmp_path)) == ["model.bin", "model.onnx"]


@pytest.mark.parametrize(
    "module, extra, call",
    [
        ("tf2onnx", "onnx", lambda m, p: export_onnx(m, p / "m.onnx")),
        ("openvino", "openvino", lambda m, p: export_openvino(m, p / "m.xml")),
        ("onnxruntime", "onnx", lambda m, p: run_onnx(p / "m.onnx", np.zeros((1, 8, 8, 3)))),
    ],
)
def test_missing_packages_name_the_extra(tmp_path, tiny, monkeypatch, module, extra, call):  # noqa: F811
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(ImportError, match=rf'pip install "deeplab_tf\[{extra}\]"'):
        call(tiny, tmp_path)


@pytest.mark.large
def test_openvino_pair_is_replaced_whole_or_not_at_all(tmp_path, tiny, monkeypatch):  # noqa: F811
    import openvino as ov

    xml = export_openvino(tiny, tmp_path / "model.xml")
    before = {n: (tmp_path / n).read_bytes() for n in ("model.xml", "model.bin")}
    real_save = ov.save_model

    def dies(model, path, **kwargs):
        real_save(model, path, **kwargs)
        raise KeyboardInterrupt  # killed after writing the new pair, before publishing

    monkeypatch.setattr(ov, "save_model", dies)
    with pytest.raises(KeyboardInterrupt):
        export_openvino(tiny, xml, input_size=(16, 16), overwrite=True)
    assert {n: (tmp_path / n).read_bytes() for n in before} == before
    assert sorted(os.listdir(tmp_path)) == ["model.bin", "model.xml"]  # no temporaries left
    monkeypatch.setattr(ov, "save_model", real_save)
    export_openvino(tiny, xml, input_size=(16, 16), overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["model.bin", "model.xml"]
    compiled = openvino_model(xml)  # the new pair: fixed 16x16, loads and runs
    assert str(compiled.input(0).get_partial_shape()) == "[?,16,16,3]"
    images = _images(1, 16, 16)
    got = run_openvino(compiled, images)
    np.testing.assert_array_equal(got["labels"], _reference(tiny, images).argmax(-1))


@pytest.mark.large
@pytest.mark.multiprocess
def test_cli_writes_onnx_and_openvino_beside_the_saved_model(tmp_path, tiny):  # noqa: F811
    keras_path = tmp_path / "tiny.keras"
    tiny.save(keras_path)
    out = tmp_path / "export"
    proc = run_cli("export", str(keras_path), "--out", str(out), "--onnx", "--openvino")
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == ["1", "onnx", "openvino"]
    assert os.listdir(out / "onnx") == ["model.onnx"]
    assert sorted(os.listdir(out / "openvino")) == ["model.bin", "model.xml"]
    images = _images(1, 35, 43, seed=9)
    ref = _reference(tiny, images)
    for got in (run_onnx(out / "onnx" / "model.onnx", images),
                run_openvino(out / "openvino" / "model.xml", images)):  # fmt: skip
        _check_fp32(got, ref)
    again = run_cli("export", str(keras_path), "--out", str(out), "--onnx")
    assert again.returncode == 2 and "--overwrite" in again.stderr  # refused before any work
    assert sorted(os.listdir(out)) == ["1", "onnx", "openvino"]  # no second version either


@pytest.mark.large
@pytest.mark.multiprocess
def test_bench_inference_runtimes_quick():
    from tests.test_benchmarks import HAS_TORCH, run_script

    report, _ = run_script(
        "bench_inference.py", "--quick", "--runtimes-only",
        "--runtime-cases", "deeplabv2_resnet50_aspp_l:49",
    )  # fmt: skip
    (case,) = report["runtimes"]["cases"]
    rows = case["runtimes"]
    expected = {"tf_fp32", "tf_bf16", "tf_fp32_variables", "tf_bf16_variables", "openvino_fp32",
                "openvino_bf16", "onnxruntime_fp32", "litert_fp32", "litert_int8"}  # fmt: skip
    expected |= {"torch_fp32"} if HAS_TORCH else set()
    if not _openvino_bf16_usable():  # refused with a reason, not run at f32 under its name
        expected.discard("openvino_bf16")
        assert "cannot run bf16" in case["skipped"]["openvino_bf16"]
    assert set(rows) == expected, case["skipped"]
    assert rows["openvino_fp32"]["openvino_precision"] == "f32"
    # every fp32 runtime computes the same function as TF fp32; bf16 and int8 round it
    minimum = {"tf_bf16": 0.9, "tf_bf16_variables": 0.9, "openvino_bf16": 0.9,
               "litert_int8": INT8_RUNTIME_AGREEMENT}  # fmt: skip
    for name, row in rows.items():
        assert row["median_s"] > 0
        assert row["label_agreement_vs_tf_fp32"] >= minimum.get(name, 0.99), name
    assert "cpu_flags" in report["machine"] and "verdict" in case
