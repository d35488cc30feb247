"""``deeplab-tf export``: SavedModel for TF Serving and, optionally, TFLite, ONNX and OpenVINO
files."""

from __future__ import annotations

import os

from deeplab_tf.cli import add_crf_arguments, positive_float, positive_int
from deeplab_tf.export.tflite_options import OUTPUTS, QUANTIZATIONS


def _size(text):
    import argparse

    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 321x321, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return h, w


def register(sub):
    p = sub.add_parser(
        "export",
        help="export a SavedModel for TF Serving (and TFLite files)",
        description="Writes <out>/<version>/ (saved_model.pb, variables, warm-up requests) "
        "atomically, ready for tensorflow_model_server --model_base_path=<out>. Signatures: "
        "serving_default (float images), serving_uint8, serving_bytes (encoded JPEG/PNG) "
        "and, with --crf, serving_crf.",
    )
    p.add_argument("model", help="a .keras file or a registry name (see `deeplab-tf models`)")
    p.add_argument("--out", required=True, help="model base path, e.g. /models/deeplab")
    p.add_argument("--version", help="positive integer version (default: next free)")
    p.add_argument("--weights", help="weights file for a registry name")
    p.add_argument(
        "--num-classes", type=positive_int, help="classes, for a registry name (default 21)"
    )
    p.add_argument(
        "--scales",
        type=positive_float,
        nargs="+",
        default=[1.0],
        help="image scales, e.g. 1 0.75 0.5 for the paper's MSC (default: 1)",
    )
    p.add_argument("--flip", action="store_true", help="add horizontally flipped inputs")
    p.add_argument("--fusion", choices=("max", "mean"), default="max")
    p.add_argument("--upsample", choices=("caffe", "half_pixel"), default="caffe")
    add_crf_arguments(
        p,
        "add the serving_crf signature, and write the CRF alone as <out>/crf/<version>/ "
        "(a SavedModel: image + probabilities -> labels) and <out>/tflite/crf_<H>x<W>.tflite "
        "(builtin ops, at --tflite-size) for running after the model",
    )
    p.add_argument(
        "--fold-bn",
        action="store_true",
        help="fold frozen BatchNorm and padding into the convolutions (fastest CPU inference)",
    )
    p.add_argument("--bfloat16", action="store_true", help="compute in bfloat16 (I/O unchanged)")
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        default=None,
        help="serving_bytes refuses images with more pixels than this, read from the image "
        "header before decoding (default 40,000,000, as predict)",
    )
    p.add_argument("--no-warmup", action="store_true", help="skip TF Serving warm-up requests")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing version and TFLite files"
    )
    p.add_argument(
        "--tflite",
        action="append",
        metavar="SIZE",
        help="also write <out>/tflite/model_<q>[_<output>].tflite at SIZE (HxW, repeatable "
        "only as the legacy form --tflite fp32|fp16|int8, the quantization at --tflite-size)",
    )
    p.add_argument(
        "--tflite-quantization",
        nargs="+",
        choices=QUANTIZATIONS,
        default=None,
        help="TFLite quantizations: fp32, fp16 (fp16 weights), dynamic (int8 weights), int8 "
        "(full-integer ops, float outputs), int8_full (uint8 in and out, Edge TPU / NNAPI "
        "style); int8 and int8_full are calibrated on --calibration-dataset (default: fp32)",
    )
    p.add_argument(
        "--tflite-output",
        choices=OUTPUTS,
        default="labels_and_probabilities",
        help="what the TFLite files return; logits_stride8 / probabilities_stride8 stay at "
        "the score grid (no ARG_MAX or full-size resize: for GPU delegates; the app upsamples)",
    )
    p.add_argument("--tflite-size", type=_size, default=(321, 321), help="HxW, default 321x321")
    p.add_argument(
        "--onnx",
        action="store_true",
        help='also write <out>/onnx/model.onnx (ONNX Runtime; pip install "deeplab_tf[onnx]")',
    )
    p.add_argument(
        "--openvino",
        action="store_true",
        help="also write <out>/openvino/model.xml + model.bin (OpenVINO IR, fp32 inference "
        'precision recorded; pip install "deeplab_tf[openvino]")',
    )
    p.add_argument(
        "--runtime-size",
        type=_size,
        default=None,
        help="HxW: a fixed input size for --onnx / --openvino (default: any size)",
    )
    p.add_argument("--calibration-dataset", default="synthetic", help="dataset name for int8")
    p.add_argument("--calibration-root", help="dataset root for int8 calibration")
    p.add_argument(
        "--calibration-images", type=positive_int, default=16, help="int8 calibration images"
    )
    p.set_defaults(func=run)


def run(args):
    from deeplab_tf.atomic import check_outputs
    from deeplab_tf.errors import CLIError
    from deeplab_tf.export.savedmodel import check_export_target, is_remote

    try:  # argument checks first: nothing is built or written before they pass
        checked = check_export_target(args.out, args.version, args.overwrite)
        version = None if args.version is None else checked  # None: next free one
        if args.tflite and is_remote(args.out):
            raise ValueError(f"--tflite files are written to a local --out only; got {args.out!r}")
        tflite_dir = os.path.join(args.out, "tflite")
        if args.tflite and os.path.exists(tflite_dir) and not os.path.isdir(tflite_dir):
            raise ValueError(f"{tflite_dir!r} exists and is not a folder")
        _tflite_settings(args)
        tflite_files = [
            (f"--tflite-quantization {q}", tflite_path(tflite_dir, q, args.tflite_output))
            for q in args.tflite_quantization
        ]
        if args.crf and not is_remote(args.out):
            h, w = args.tflite_size
            tflite_files.append(("--crf", os.path.join(tflite_dir, f"crf_{h}x{w}.tflite")))
        if (args.onnx or args.openvino) and is_remote(args.out):
            raise ValueError(f"--onnx / --openvino write to a local --out only; got {args.out!r}")
        runtime_files = runtime_outputs(args)
        check_runtime_packages(args)
        tflite_files += runtime_files
        inputs = [("the model", args.model), ("--weights", args.weights)]
        check_outputs(tflite_files, inputs, args.overwrite)
    except ValueError as err:
        raise CLIError(str(err)) from None

    from deeplab_tf.export.optimize import fuse_for_inference, to_bfloat16
    from deeplab_tf.export.savedmodel import export_saved_model
    from deeplab_tf.inference.io import DEFAULT_MAX_PIXELS
    from deeplab_tf.inference.predict import load_inference_model

    try:
        model = load_inference_model(args.model, args.weights, args.num_classes)
    except ValueError as err:
        raise CLIError(str(err)) from None
    if args.fold_bn:
        model = fuse_for_inference(model)
    fp32_model = model
    if args.bfloat16:
        model = to_bfloat16(model)
    crf = crf_settings = None
    if args.crf:
        from deeplab_tf.inference.cli import build_crf

        crf, crf_settings = build_crf(args, model)
    try:
        path = export_saved_model(
            model,
            args.out,
            version,
            scales=tuple(args.scales),
            flip=args.flip,
            fusion=args.fusion,
            upsample=args.upsample,
            crf=crf,
            warmup=not args.no_warmup,
            max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
            overwrite=args.overwrite,
        )
    except ValueError as err:
        raise CLIError(str(err)) from None
    print(f"SavedModel: {path}")
    print(f"  inspect: saved_model_cli show --dir {path} --all")
    if crf is not None and is_remote(args.out):
        print("note: the separate CRF artifacts are written for a local --out only; the "
              "serving_crf signature above carries the CRF")  # fmt: skip
    elif crf is not None:
        from deeplab_tf.export.crf import export_crf_saved_model, export_crf_tflite
        from deeplab_tf.models.deeplab import input_channels_of

        num_classes = model.output_shape[-1]
        channels = input_channels_of(model)
        version_name = os.path.basename(os.path.normpath(path))
        try:
            crf_path = export_crf_saved_model(
                crf, os.path.join(args.out, "crf"), num_classes, version=int(version_name),
                preset=crf_settings["preset"], overwrite=args.overwrite, channels=channels,
            )  # fmt: skip
            print(f"CRF SavedModel: {crf_path}")
            h, w = args.tflite_size
            crf_file = os.path.join(tflite_dir, f"crf_{h}x{w}.tflite")
            export_crf_tflite(crf, crf_file, (h, w), num_classes, args.overwrite, channels)
            print(f"CRF TFLite ({h}x{w}, builtin ops): {crf_file}")
        except (ValueError, FileExistsError) as err:
            raise CLIError(str(err)) from None
    if args.tflite:
        from deeplab_tf.export.tflite import export_tflite_files

        data = None
        if any(q.startswith("int8") for q in args.tflite_quantization):
            from deeplab_tf.data import load_dataset

            data, _ = load_dataset(
                args.calibration_dataset, split="train", root=args.calibration_root
            )
        paths = {q: tflite_path(tflite_dir, q, args.tflite_output)
                 for q in args.tflite_quantization}  # fmt: skip
        try:
            export_tflite_files(
                model, paths, args.tflite_size, representative_data=data,
                num_calibration=args.calibration_images, scales=tuple(args.scales),
                upsample=args.upsample, output=args.tflite_output, overwrite=args.overwrite,
            )  # fmt: skip
        except (ValueError, FileExistsError) as err:
            raise CLIError(str(err)) from None
        h, w = args.tflite_size
        for q, out in paths.items():
            print(f"TFLite ({q}, {h}x{w}, {args.tflite_output}): {out}")
    export_runtimes(args, fp32_model, runtime_files)
    return 0


def runtime_outputs(args):
    """``(flag, path)`` of the --onnx / --openvino files under ``--out``."""
    files = []
    if args.onnx:
        files.append(("--onnx", os.path.join(args.out, "onnx", "model.onnx")))
    if args.openvino:
        files.append(("--openvino", os.path.join(args.out, "openvino", "model.xml")))
        files.append(("--openvino", os.path.join(args.out, "openvino", "model.bin")))
    return files


def check_runtime_packages(args):
    """Refuses --onnx / --openvino before any work when their packages are missing."""
    import importlib.util

    needed = [("--onnx", m, "onnx") for m in ("tf2onnx", "onnx") if args.onnx]
    needed += [("--openvino", "openvino", "openvino")] if args.openvino else []
    for flag, module, extra in needed:
        if importlib.util.find_spec(module) is None:
            install = f'pip install "deeplab_tf[{extra}]"'
            raise ValueError(f"{flag} needs the {module} package: {install}")


def export_runtimes(args, model, files):
    """Writes the --onnx / --openvino files (float32: --bfloat16 applies to the SavedModel)."""
    from deeplab_tf.errors import CLIError

    settings = dict(scales=tuple(args.scales), flip=args.flip, fusion=args.fusion,
                    upsample=args.upsample, overwrite=args.overwrite)  # fmt: skip
    size = args.runtime_size
    shown = "any size" if size is None else f"{size[0]}x{size[1]}"
    for flag, path in files:
        try:
            if flag == "--onnx":
                from deeplab_tf.export.onnx import export_onnx

                export_onnx(model, path, size, **settings)
                print(f"ONNX ({shown}): {path}")
            elif path.endswith(".xml"):
                from deeplab_tf.export.openvino import export_openvino

                export_openvino(model, path, size, **settings)
                print(f"OpenVINO IR ({shown}, f32 inference precision recorded): {path}")
        except (ImportError, FileExistsError) as err:
            raise CLIError(str(err)) from None


def tflite_path(folder, quantization, output):
    """``model_<q>.tflite`` (default output) or ``model_<q>_<output>.tflite``."""
    suffix = "" if output == "labels_and_probabilities" else f"_{output}"
    return os.path.join(folder, f"model_{quantization}{suffix}.tflite")


def _tflite_settings(args):
    """Reads ``--tflite``: ``SIZE`` (HxW) with ``--tflite-quantization``, or the older form
    ``--tflite fp32|fp16|int8`` (repeatable) at ``--tflite-size``. Sets ``args.tflite_size``
    and ``args.tflite_quantization``; raises ValueError for a mix or a bad value."""
    given = args.tflite or []
    legacy = [v for v in given if v in QUANTIZATIONS]
    sizes = [v for v in given if v not in QUANTIZATIONS]
    if legacy and (sizes or args.tflite_quantization):
        raise ValueError(
            "give --tflite SIZE with --tflite-quantization, or --tflite QUANTIZATION alone. "
            f"Received: --tflite {' '.join(given)}"
        )
    if len(sizes) > 1:
        raise ValueError(f"--tflite takes one SIZE. Received: --tflite {' '.join(sizes)}")
    if sizes:
        import argparse

        try:
            args.tflite_size = _size(sizes[0])
        except argparse.ArgumentTypeError as err:
            raise ValueError(f"--tflite: {err}") from None
    if args.tflite_quantization and not given:
        raise ValueError("--tflite-quantization needs --tflite SIZE (e.g. --tflite 513x513)")
    args.tflite_quantization = list(
        dict.fromkeys(legacy or args.tflite_quantization or (["fp32"] if given else []))
    )
