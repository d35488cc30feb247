"""Smoke runs of the benchmark scripts: each runs once at its smallest setting (``--quick``) in
a subprocess, as users run it (``python -m benchmarks.<script>`` from the repository root), and
must exit 0 and print a JSON report with its reference. Speed itself is never asserted here
(benchmarks are not tests)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_TORCH = importlib.util.find_spec("torch") is not None


def _module(name):
    return "benchmarks." + name.removesuffix(".py")


def run_script(name, *args, timeout=600):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", _module(name), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout), proc.stderr


@pytest.mark.parametrize(
    "name", ["bench_inference.py", "bench_train.py", "bench_tflite.py", "bench_tiling.py"]
)
@pytest.mark.multiprocess
def test_help(name):
    proc = subprocess.run(
        [sys.executable, "-m", _module(name), "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout


@pytest.mark.large
@pytest.mark.multiprocess
def test_bench_inference_quick():
    report, table = run_script("bench_inference.py", "--quick")
    assert report["conv_limit_fp32"]["gflops_per_s"] > 0
    target = report["target"]
    assert set(target["variants"]) >= {"graph", "fused", "fused_bf16"}
    for row in target["variants"].values():
        assert row["median_s"] > 0 and 0.0 <= row["label_agreement_vs_fp32_graph"] <= 1.0
    # The rewrite computes the same function as the model it was made from.
    assert target["variants"]["fused"]["label_agreement_vs_fp32_graph"] >= 0.99
    if HAS_TORCH:
        assert "torch_fp32" in target["variants"]
        assert target["variants"]["torch_fp32"]["label_agreement_vs_fp32_graph"] >= 0.99
        assert set(target["verdict"]) == {"fp32", "bf16"}
    assert {(r["size"], r["batch"]) for r in report["zoo"]} == {(33, 1), (33, 2)}
    assert "median_s" in table


@pytest.mark.large
@pytest.mark.multiprocess
def test_bench_train_precisions_quick():
    """Each precision's Keras step (and PyTorch's where installed); fp32 is the default run's
    row, so this covers ``bench_train.py --quick`` too (one run: the steps cost 2 minutes)."""
    report, table = run_script(
        "bench_train.py", "--quick", "--msc", "off", "--precision", "bf16,fp32,fp16"
    )
    rows = {r["precision"]: r for r in report["results"]}
    assert list(rows) == ["fp32", "bf16", "fp16"]  # fp32 first: the others are compared to it
    for precision, row in rows.items():
        assert row["keras"]["precision"] == precision and row["keras"]["seconds_per_step"] > 0
        assert row["keras"]["peak_rss_mb"] > 0
        if precision != "fp32":
            assert row["vs_fp32"] > 0
        if HAS_TORCH:
            assert row["torch"]["precision"] == precision and row["time_vs_torch"] > 0
    assert rows["fp16"]["keras"]["optimizer"] == "LossScaleOptimizer"
    assert rows["bf16"]["keras"]["optimizer"] == "CaffeSGD"
    assert "bf16" in table


@pytest.mark.large
@pytest.mark.multiprocess
def test_bench_tflite_quick():
    report, _ = run_script("bench_tflite.py", "--quick")
    rows = report["results"]
    assert set(rows) == {"tf_graph", "tf_fused", "tflite_fp32"}
    assert rows["tflite_fp32"]["file_mb"] > 0 and rows["tflite_fp32"]["median_s"] > 0
    assert rows["tflite_fp32"]["label_agreement_vs_tf_fp32"] > 0.95
    assert rows["tf_fused"]["label_agreement_vs_tf_fp32"] >= 0.99


@pytest.mark.large
def test_torch_reference_matches_keras():
    """The PyTorch reference computes the Keras model's function with copied weights."""
    torch = pytest.importorskip("torch")
    import numpy as np

    import deeplab_tf
    from benchmarks import _common, torch_deeplab

    model = deeplab_tf.DeepLabV2("resnet50", "aspp_l", num_classes=5)
    images = _common.photo(41, 45, 2)
    assert _common.calibrate_batchnorm(model, images) == 53
    reference = torch_deeplab.DeepLabV2ResNet(50, num_classes=5).eval()
    # 53 BatchNorms, 53 backbone convs, 4 ASPP convs
    assert torch_deeplab.load_keras_weights(reference, model) == 53 + 53 + 4
    expected = np.asarray(model(images))
    with torch.inference_mode():
        got = reference(torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32)))
    got = got.numpy().transpose(0, 2, 3, 1)
    assert got.shape == expected.shape == (2, 6, 6, 5)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())
