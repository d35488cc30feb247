"""Helpers shared by the benchmark scripts: machine facts, timing, FLOP counting, inputs, output.

Benchmarks are not tests: they print JSON (and a table) with every figure next to a reference
measured in the same run, so the ratios stay meaningful on a shared or throttled machine.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTO = os.path.join(REPO, "tests", "fixtures", "coffee_500x375.jpg")
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "avx_vnni")


def configure_threads(threads: int | None, inter_op: int | None = 1) -> int:
    """Pins TensorFlow (and torch, when imported later) to ``threads`` intra-op threads.

    ``inter_op`` is TensorFlow's inter-op pool (how many independent ops run at once); None
    keeps TensorFlow's default (one per core). Must run before TensorFlow executes anything.
    Returns the intra-op thread count used.
    """
    threads = int(threads or os.cpu_count() or 1)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    if inter_op is not None:
        tf.config.threading.set_inter_op_parallelism_threads(int(inter_op))
    return threads


def torch_or_none(threads: int):
    """``torch`` with ``threads`` threads, or ``None`` when it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch


def machine_info() -> dict:
    """CPU model, core count, relevant ISA flags, load average and library versions."""
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("unknown", "x86_64", ""):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    info = {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "cpu_flags": {f: f in flags for f in CPU_FLAGS},
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
    }
    import keras
    import tensorflow as tf

    info["tensorflow"] = tf.__version__
    info["keras"] = keras.__version__
    try:  # TensorFlow turns oneDNN on by default only on CPUs with AVX512/AMX features
        from tensorflow.python.util import _pywrap_util_port

        onednn = "on" if _pywrap_util_port.IsMklEnabled() else "off"
    except (ImportError, AttributeError):
        onednn = "unknown"
    setting = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    how = f" (TF_ENABLE_ONEDNN_OPTS={setting})" if setting else " (default)"
    info["onednn_opts"] = onednn + how
    if "torch" in sys.modules:
        info["torch"] = sys.modules["torch"].__version__
    return info


def bf16_note(info: dict) -> str:
    flags = info["cpu_flags"]
    if flags.get("avx512_bf16") or flags.get("amx_bf16"):
        return "this CPU has native bfloat16 dot products (AVX512-BF16/AMX)"
    return (
        "this CPU has no AVX512-BF16/AMX-BF16 (checked /proc/cpuinfo): bfloat16 math is "
        "emulated or converted to float32, so it cannot beat float32 here"
    )


def timed(fn, repeats: int, warmup: int = 1) -> dict:
    """Runs ``fn`` ``warmup`` times untimed then ``repeats`` times; seconds per call."""
    first = None
    for i in range(warmup):
        start = time.perf_counter()
        fn()
        if i == 0:
            first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return summarize(times, first)


def summarize(times, first=None) -> dict:
    out = {
        "median_s": round(statistics.median(times), 4),
        "min_s": round(min(times), 4),
        "runs": len(times),
    }
    if first is not None:
        out["first_call_s"] = round(first, 3)
    return out


def peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def conv_flops(model) -> float:
    """Analytic FLOPs of one forward pass of a fixed-shape Keras model (2 x multiply-adds).

    Counts every ``Conv2D``/``DepthwiseConv2D``/``Dense`` from its static output shape, kernel
    size and channels (dilation does not change the count); BatchNorm, ReLU, pooling, additions
    and resizing are left out (well under 1% for these networks).
    """
    import keras

    total = 0.0
    for layer in model.layers:
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            if isinstance(layer, keras.layers.Dense):
                out = layer.output.shape
                total += 2.0 * layer.kernel.shape[0] * layer.kernel.shape[1] * _prod(out[:-1])
            continue
        out = tuple(layer.output.shape)
        if None in out[1:]:
            raise ValueError(
                f"conv_flops needs a model with a fixed input size. Received output shape {out} "
                f"for layer {layer.name!r}"
            )
        kh, kw, cin, cout = layer.kernel.shape
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            macs = kh * kw * cin * cout * out[1] * out[2]  # cout = depth multiplier
        else:
            macs = kh * kw * cin * cout * out[1] * out[2]
        total += 2.0 * macs * (out[0] or 1)
    return total


def _prod(shape):
    n = 1
    for d in shape:
        n *= d or 1
    return n


def conv_throughput(dtype: str = "float32", repeats: int = 3) -> dict:
    """The machine's practical convolution limit: one large dense 3x3 conv timed in-process.

    (1, 128, 128, 256) x (3, 3, 256, 256), SAME padding: 19.3 GFLOP per call.
    """
    import tensorflow as tf

    dt = tf.as_dtype(dtype)
    x = tf.cast(tf.random.stateless_normal((1, 128, 128, 256), (1, 2)), dt)
    k = tf.cast(tf.random.stateless_normal((3, 3, 256, 256), (3, 4)) * 0.02, dt)
    conv = tf.function(lambda x: tf.nn.conv2d(x, k, 1, "SAME"))
    flops = 2.0 * 128 * 128 * 9 * 256 * 256
    t = timed(lambda: conv(x).numpy(), repeats)
    return {
        "dtype": dtype,
        "shape": "1x128x128x256 * 3x3x256x256",
        "gflop": round(flops / 1e9, 2),
        **t,
        "gflops_per_s": round(flops / 1e9 / t["min_s"], 1),
    }


def torch_conv_throughput(torch, repeats: int = 3) -> dict:
    """The same large conv in PyTorch (NCHW), for the reference framework's limit."""
    x = torch.randn(1, 256, 128, 128)
    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).eval()
    flops = 2.0 * 128 * 128 * 9 * 256 * 256
    with torch.inference_mode():
        t = timed(lambda: conv(x), repeats)
    return {**t, "gflops_per_s": round(flops / 1e9 / t["min_s"], 1)}


def photo(height: int, width: int, batch: int = 1, seed: int = 0):
    """A photo-like uint8 batch ``(batch, H, W, 3)``: the repo's CC0 coffee photo resized (and
    flipped/shifted for further batch entries), or a synthetic scene when the fixture is absent."""
    import numpy as np

    try:
        from PIL import Image

        base = np.asarray(Image.open(PHOTO).convert("RGB").resize((width, height), Image.BILINEAR))
    except (ImportError, OSError):
        from deeplab_tf.data.synthetic import render_synthetic_example

        rng = np.random.default_rng(seed)
        base = render_synthetic_example(rng, (height, width), num_classes=21, max_objects=6)[0]
    images = []
    for i in range(batch):
        img = base[:, ::-1] if i % 2 else base
        images.append(np.roll(img, 7 * (i // 2), axis=(0, 1)))
    return np.stack(images).astype(np.uint8)


def calibrate_batchnorm(model, images) -> int:
    """Sets every BatchNorm's moving mean/variance to the statistics of its input on ``images``.

    With random weights this gives a network whose activations are normalised like a trained
    one's (no exploding residual sums), so label agreement between precisions is measured on
    realistic magnitudes. One eager pass in topological order, so each BN sees the output of the
    already-calibrated layers before it.

    Returns:
        The number of BatchNorm layers calibrated.
    """
    import keras
    import tensorflow as tf
    from keras import tree

    values = {}
    for kt, x in zip(model.inputs, [tf.convert_to_tensor(images)]):
        values[id(kt)] = x
    count = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        for node in layer._inbound_nodes:
            args, kwargs = node.arguments.fill_in(values)
            if isinstance(layer, keras.layers.BatchNormalization):
                x = tf.cast(args[0], tf.float32)
                mean, var = tf.nn.moments(x, axes=[0, 1, 2])
                layer.moving_mean.assign(mean)
                layer.moving_variance.assign(var)
                count += 1
            out = layer(*args, **kwargs)
            for kt, v in zip(tree.flatten(node.outputs), tree.flatten(out)):
                values[id(kt)] = v
    return count


def dampen_residual_branches(model, gamma: float = 0.2) -> int:
    """Sets gamma of the last BatchNorm of every residual branch (ResNet ``bn*_branch2c``,
    MobileNetV2 ``*_project_BN`` of blocks with a skip connection) to ``gamma``.

    Trained residual networks have small ones; with gamma 1 a calibrated random deep ResNet is
    chaotic (any rounding changes most labels). Returns the number of layers changed.
    """
    import tensorflow as tf

    names = {layer.name for layer in model.layers}
    count = 0
    for layer in model.layers:
        name = layer.name
        residual = (name.startswith("bn") and name.endswith("branch2c")) or (
            name.endswith("project_BN") and name[: -len("project_BN")] + "add" in names
        )
        if residual:
            layer.gamma.assign(tf.fill(layer.gamma.shape, gamma))
            count += 1
    return count


def label_agreement(logits_a, logits_b, size) -> float:
    """Fraction of equal pixel labels after upsampling both logit maps to ``size`` (Caffe rule)."""
    import numpy as np
    import tensorflow as tf

    from deeplab_tf.layers import resize_logits

    def labels(logits):
        up = resize_logits(tf.cast(logits, tf.float32), size, mode="caffe")
        return np.argmax(np.asarray(up), axis=-1)

    return float(np.mean(labels(logits_a) == labels(logits_b)))


def print_table(rows: list[dict], columns: list[str], file=None) -> None:
    """A plain text table of ``rows`` (dicts) with the given columns, to stderr by default."""
    file = file or sys.stderr
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)), file=file)
    file.flush()


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def emit(report: dict, json_out: str | None) -> None:
    """Prints the report as JSON on stdout and, if asked, writes it atomically to a file."""
    text = json.dumps(report, indent=2, sort_keys=False)
    print(text)
    sys.stdout.flush()
    if json_out:
        from deeplab_tf.atomic import write_text

        os.makedirs(os.path.dirname(os.path.abspath(json_out)), exist_ok=True)
        write_text(json_out, text + "\n")


def keras_arrays(keras_model, names) -> dict:
    """``{layer name: [numpy weights]}`` of a Keras model for the given layer names."""
    arrays = {}
    for name in names:
        try:
            layer = keras_model.get_layer(name)
        except ValueError:
            raise ValueError(
                f"The Keras model has no layer {name!r} (expected a deeplab_tf ResNet ASPP "
                f"model). Received: model {keras_model.name!r}"
            ) from None
        arrays[name] = [w for w in layer.get_weights()]
    return arrays


def save_npz(arrays: dict, path) -> None:
    """Writes ``{name: [arrays]}`` to an ``.npz`` (keys ``name/i``), readable without Keras."""
    import numpy as np

    np.savez(path, **{f"{k}/{i}": w for k, ws in arrays.items() for i, w in enumerate(ws)})


def read_npz(path) -> dict:
    """Reads what :func:`save_npz` wrote."""
    import numpy as np

    arrays: dict = {}
    with np.load(path) as data:
        keys = sorted(data.files, key=lambda k: (k.rsplit("/", 1)[0], int(k.rsplit("/", 1)[1])))
        for key in keys:
            arrays.setdefault(key.rsplit("/", 1)[0], []).append(data[key])
    return arrays


def ratio(a, b):
    return None if a is None or b in (None, 0) else round(a / b, 3)
