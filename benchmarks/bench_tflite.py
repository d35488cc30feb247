"""TFLite (LiteRT) against TensorFlow on the same model and input size, per quantization.

Each TFLite file is written by ``deeplab_tf.export.export_tflite`` (uint8 image in, labels and
probabilities at image size out, preprocessing and upsampling inside) and run with LiteRT's
default CPU path (XNNPACK). The reference is the same computation in TensorFlow, measured in the
same run: ``MultiScaleInference(model, scales=(1.0,))`` under ``tf.function`` with a fixed input
signature, for the model as built (``tf_graph``) and with the benchmarks' inference rewrite
(``tf_fused``: folded BN, direct dilated convs). Reported: latency, images/s, file size, conversion
time, and the fraction of pixel labels equal to the TensorFlow float32 labels.

Weights are random with BatchNorm statistics calibrated on a photo and residual branches damped
(see bench_inference.py), so
int8 calibration sees realistic activation ranges; int8 is calibrated on flips/shifts of the
benchmark photo.

Prints JSON on stdout and a table on stderr. Usage::

    python -m benchmarks.bench_tflite                  # ResNet-101 ASPP-L at 321x321
    python -m benchmarks.bench_tflite --quick          # CI smoke run (MobileNetV2, 33 px)
    python -m benchmarks.bench_tflite --model deeplabv2_vgg16_largefov --size 513
    python -m benchmarks.bench_tflite --accuracy       # quantization accuracy, trained model
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

from benchmarks import _common
from deeplab_tf.export.tflite_options import QUANTIZATIONS


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Prints JSON (stdout) and a table (stderr).",
    )
    p.add_argument(
        "--quick", action="store_true", help="MobileNetV2 at 33 px, fp32 only (CI smoke run)"
    )
    p.add_argument("--model", default="deeplabv2_resnet101_aspp_l")
    p.add_argument("--size", type=int, default=321)
    p.add_argument("--quantizations", nargs="+", default=list(QUANTIZATIONS), choices=QUANTIZATIONS)
    p.add_argument("--calibration-images", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--keep", default=None, help="folder to keep the .tflite files in")
    p.add_argument(
        "--accuracy",
        action="store_true",
        help="instead: train a small model briefly on the synthetic shapes and report, per "
        "quantization, LiteRT latency, label agreement with Keras fp32 and val mIoU",
    )
    p.add_argument("--accuracy-size", type=int, default=48, help="image side for --accuracy")
    p.add_argument("--val-images", type=int, default=16, help="synthetic val images")
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.size, args.repeats, args.calibration_images = (
            "deeplabv2_mobilenetv2_aspp_l", 33, 1, 1,
        )  # fmt: skip
        args.quantizations = ["fp32"]
    if args.accuracy_size < 17 or args.val_images < 1:
        p.error(
            "--accuracy-size must be >= 17 and --val-images >= 1. Received: "
            f"{args.accuracy_size}, {args.val_images}"
        )
    if args.size < 17:
        p.error(f"--size must be >= 17. Received: {args.size}")
    if args.repeats < 1 or args.calibration_images < 1:
        p.error(
            f"--repeats and --calibration-images must be >= 1. Received: {args.repeats}, "
            f"{args.calibration_images}"
        )
    return args


def train_synthetic_model(num_classes: int = 4, size: int = 48, epochs: int = 10, seed: int = 0):
    """MobileNetV2-ASPP (rates 1, 2) trained briefly on 64 synthetic training images: a model
    whose labels mean something, for quantisation accuracy (also the tests' fixture)."""
    import keras

    from deeplab_tf import DeepLabV2
    from deeplab_tf.data.synthetic import synthetic_arrays
    from deeplab_tf.training.losses import DeepLabLoss

    keras.utils.set_random_seed(seed)
    images, labels, _ = synthetic_arrays("train", 64, size, num_classes=num_classes)
    model = DeepLabV2(
        "mobilenetv2", head="aspp", rates=(1, 2), num_classes=num_classes, freeze_batchnorm=False
    )
    for layer in model.layers:  # short run: let the moving statistics catch up
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=DeepLabLoss())
    model.fit(images, labels, batch_size=8, epochs=epochs, verbose=0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    return model


def accuracy(args, threads):
    """Every quantization of a briefly trained model on the synthetic val split: latency in
    LiteRT (default delegate), label agreement with Keras float32 and mIoU."""
    import numpy as np

    from deeplab_tf import MultiScaleInference
    from deeplab_tf.data.synthetic import synthetic_arrays, synthetic_dataset
    from deeplab_tf.evaluation.metrics import confusion_matrix, mean_iou
    from deeplab_tf.export.tflite import export_tflite_files, litert_interpreter, run_tflite

    size, classes = args.accuracy_size, 4
    start = time.perf_counter()
    model = train_synthetic_model(classes, size)
    train_s = time.perf_counter() - start
    images, truth, _ = synthetic_arrays("val", args.val_images, size, num_classes=classes)
    keras_labels = MultiScaleInference(model, scales=(1.0,))(images).numpy().argmax(-1)
    calibration, _ = synthetic_dataset("train", 16, size, num_classes=classes)
    rows = {
        "keras_fp32": {
            "median_s": None,
            "file_mb": None,
            "label_agreement_vs_fp32": 1.0,
            "miou": mean_iou(confusion_matrix(truth, keras_labels, classes)),
        }
    }
    workdir = tempfile.mkdtemp(prefix="deeplab-tflite-acc-")
    try:
        paths = {q: os.path.join(workdir, f"m_{q}.tflite") for q in args.quantizations}
        calibrated = any(q.startswith("int8") for q in paths)
        export_tflite_files(model, paths, (size, size),
                            representative_data=calibration if calibrated else None,
                            num_calibration=16)  # fmt: skip
        for q, path in paths.items():
            interpreter = litert_interpreter(path, num_threads=threads)
            t = _common.timed(lambda i=interpreter: run_tflite(i, images[0]), args.repeats)
            labels = np.concatenate([run_tflite(interpreter, im)["labels"] for im in images])
            rows[f"tflite_{q}"] = {
                "median_s": t["median_s"],
                "file_mb": round(os.path.getsize(path) / 2**20, 3),
                "label_agreement_vs_fp32": round(float((labels == keras_labels).mean()), 5),
                "miou": mean_iou(confusion_matrix(truth, labels, classes)),
            }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for row in rows.values():
        row["miou"] = round(float(row["miou"]), 4)
    _common.print_table(
        [{"runtime": k, **v} for k, v in rows.items()],
        ["runtime", "median_s", "file_mb", "label_agreement_vs_fp32", "miou"],
    )
    return {
        "model": "MobileNetV2-ASPP (rates 1, 2), 64 synthetic train images, 10 epochs",
        "train_s": round(train_s, 1),
        "size": size,
        "val_images": args.val_images,
        "calibration": "16 synthetic train images (tf.data of {'image': ...})",
        "results": rows,
    }


def main(argv=None):
    args = parse_args(argv)
    threads = _common.configure_threads(args.threads)
    if args.accuracy:
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")
        start_all = time.perf_counter()
        report = {"benchmark": "tflite_accuracy", "machine": _common.machine_info(),
                  **accuracy(args, threads)}  # fmt: skip
        report["machine"]["threads"] = threads
        report["machine"]["load_average_1m_end"] = round(os.getloadavg()[0], 2)
        report["litert"] = f"ai-edge-litert, default delegates (XNNPACK), num_threads={threads}"
        report["wall_s"] = round(time.perf_counter() - start_all, 1)
        report["command"] = "python -m benchmarks.bench_tflite " + " ".join(sys.argv[1:])
        _common.emit(report, args.json_out)
        return
    import numpy as np
    import tensorflow as tf

    import deeplab_tf
    from deeplab_tf.export import fuse_for_inference, with_input_shape
    from deeplab_tf.export.tflite import export_tflite_files, litert_interpreter, run_tflite
    from deeplab_tf.inference import MultiScaleInference

    tf.get_logger().setLevel("ERROR")
    info = _common.machine_info()
    info["threads"] = threads
    start_all = time.perf_counter()
    size = args.size
    model = deeplab_tf.create_model(args.model)
    _common.calibrate_batchnorm(model, _common.photo(min(size, 161), min(size, 161)))
    _common.dampen_residual_branches(model)
    image = _common.photo(size, size, 1)
    fixed = with_input_shape(model, size, size)
    gflop = _common.conv_flops(fixed) / 1e9
    rows, outputs = {}, {}

    def serve_fn(net):
        msc = MultiScaleInference(net, scales=(1.0,))

        @tf.function(input_signature=[tf.TensorSpec((1, size, size, 3), tf.uint8)])
        def serve(images):
            probs = tf.cast(msc(tf.cast(images, tf.float32)), tf.float32)
            return tf.argmax(probs, axis=-1, output_type=tf.int32)

        return lambda x: serve(x).numpy()

    for name, net in (("tf_graph", fixed), ("tf_fused", fuse_for_inference(fixed))):
        fn = serve_fn(net)
        t = _common.timed(lambda fn=fn: fn(image), args.repeats)
        outputs[name] = fn(image)
        rows[name] = {**t, "file_mb": None, "convert_s": None}
    workdir = args.keep or tempfile.mkdtemp(prefix="deeplab-tflite-bench-")
    os.makedirs(workdir, exist_ok=True)
    calibration = list(_common.photo(size, size, args.calibration_images, seed=1))
    try:
        paths = {q: os.path.join(workdir, f"{args.model}_{size}_{q}.tflite")
                 for q in args.quantizations}  # fmt: skip
        calibrated = any(q.startswith("int8") for q in paths)
        start = time.perf_counter()
        export_tflite_files(model, paths, (size, size),
                            representative_data=calibration if calibrated else None,
                            num_calibration=args.calibration_images)  # fmt: skip
        convert_s = (time.perf_counter() - start) / len(paths)
        for q, path in paths.items():
            interpreter = litert_interpreter(path, num_threads=threads)
            t = _common.timed(lambda i=interpreter: run_tflite(i, image), args.repeats)
            outputs[f"tflite_{q}"] = np.asarray(run_tflite(interpreter, image)["labels"])
            rows[f"tflite_{q}"] = {
                **t,
                "file_mb": round(os.path.getsize(path) / 2**20, 2),
                "convert_s": round(convert_s, 1),
            }
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    ref_s = rows["tf_graph"]["median_s"]
    for name, row in rows.items():
        row["images_per_s"] = round(1 / row["median_s"], 3)
        row["gflops_per_s"] = round(gflop / row["median_s"], 1)
        row["time_vs_tf_graph"] = _common.ratio(row["median_s"], ref_s)
        if "tflite_fp32" in rows:
            row["time_vs_tflite_fp32"] = _common.ratio(
                row["median_s"], rows["tflite_fp32"]["median_s"]
            )
        row["label_agreement_vs_tf_fp32"] = round(
            float(np.mean(outputs[name] == outputs["tf_graph"])), 5
        )
    _common.print_table(
        [{"runtime": k, **v} for k, v in rows.items()],
        ["runtime", "median_s", "images_per_s", "time_vs_tf_graph", "file_mb", "convert_s",
         "label_agreement_vs_tf_fp32"],
    )  # fmt: skip
    info["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    report = {
        "benchmark": "tflite",
        "machine": info,
        "model": args.model,
        "size": size,
        "gflop_per_image": round(gflop, 2),
        "litert": f"ai-edge-litert Interpreter, default delegates (XNNPACK), num_threads={threads}",
        "results": rows,
        "wall_s": round(time.perf_counter() - start_all, 1),
        "command": "python -m benchmarks.bench_tflite " + " ".join(sys.argv[1:]),
    }
    _common.emit(report, args.json_out)


if __name__ == "__main__":
    main()
