"""``deeplab-tf convert-caffe``: the authors' Caffe release -> Keras ``.weights.h5``."""

from __future__ import annotations

import os

from deeplab_tf.cli import positive_int


def register(sub):
    from deeplab_tf.convert.architectures import ARCHITECTURES

    p = sub.add_parser(
        "convert-caffe",
        help="convert a released .caffemodel to a Keras .weights.h5 (no Caffe needed)",
        description="Reads a DeepLab v2 .caffemodel (V1 or V2 layers), checks every layer's "
        "kernel, stride, pad and dilation against the Keras model and writes its weights "
        "atomically.",
    )
    p.add_argument("caffemodel", help="path of the .caffemodel")
    p.add_argument(
        "--arch",
        required=True,
        help=f"architecture: {', '.join(ARCHITECTURES)}, or 'auto' to recognise it",
    )
    p.add_argument("--out", required=True, help="output path, ending in .weights.h5")
    p.add_argument(
        "--num-classes",
        type=positive_int,
        default=None,
        help="classes of the Keras model (default: read from the file's classifier)",
    )
    p.add_argument(
        "--no-classifier",
        action="store_true",
        help="ignore the file's classifier and keep a freshly initialised one "
        "(e.g. the COCO init.caffemodel as a VOC starting point)",
    )
    p.add_argument("--manifest", help="record name, source and SHA-256 in this manifest.json")
    p.add_argument("--name", help="manifest entry name (default: the output file's stem)")
    p.add_argument(
        "--training-data", default=None, help="manifest: what the weights were trained on"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out file and a manifest entry of the same name",
    )
    p.set_defaults(func=run)


def _check_manifest_target(manifest):
    """Before any work: an existing --manifest must be a readable manifest (it is rewritten
    after the weights), a new one must be creatable."""
    from deeplab_tf.errors import CLIError
    from deeplab_tf.weights import read_manifest

    if not manifest:
        return
    manifest = os.fspath(manifest)
    if os.path.isdir(manifest):
        raise CLIError(f"--manifest is a folder, not a JSON file. Received: {manifest!r}")
    if os.path.exists(manifest):
        try:
            read_manifest(manifest)
        except (ValueError, OSError) as err:
            raise CLIError(
                f"--manifest {manifest!r} exists but is not a usable manifest: {err}. Fix or "
                "remove it (nothing was written)."
            ) from None
        if not os.access(manifest, os.W_OK):
            raise CLIError(f"--manifest is not writable. Received: {manifest!r}")
    else:
        parent = os.path.dirname(os.path.abspath(manifest))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            raise CLIError(f"--manifest cannot be created there. Received: {manifest!r}")


def run(args):
    from deeplab_tf.errors import CLIError

    out = os.fspath(args.out)
    if not out.endswith(".weights.h5"):
        raise CLIError(f"--out must end in .weights.h5 (Keras' weights format). Received: {out!r}")
    if args.num_classes is not None and args.num_classes < 1:
        raise CLIError(f"--num-classes must be >= 1. Received: {args.num_classes}")
    if not os.path.isfile(args.caffemodel):
        raise CLIError(f"no such file. Received: {args.caffemodel!r}")
    if os.path.isdir(out):
        raise CLIError(f"--out is a folder, not a file. Received: {out!r}")
    from deeplab_tf.atomic import atomic_write, check_outputs
    from deeplab_tf.weights import manifest_entry_exists

    name = args.name or os.path.basename(out)[: -len(".weights.h5")]
    try:  # before any work: never replace the input, or an existing output unless asked
        check_outputs([("--out", out)], [("caffemodel", args.caffemodel)], args.overwrite)
        if args.manifest:
            check_outputs(
                [("--out", out), ("--manifest", args.manifest)],
                [("caffemodel", args.caffemodel)],
                overwrite=True,  # the manifest is updated in place, by entry
            )
    except ValueError as err:
        raise CLIError(str(err)) from None
    _check_manifest_target(args.manifest)
    try:
        if args.manifest:
            exists = manifest_entry_exists(args.manifest, name)
            if exists and not args.overwrite:
                raise ValueError(exists)
    except ValueError as err:
        raise CLIError(str(err)) from None

    from deeplab_tf.convert.architectures import arch_name, guess_architecture, parse_arch
    from deeplab_tf.convert.caffe_to_keras import ConversionError, convert_caffemodel
    from deeplab_tf.convert.caffemodel import read_caffemodel
    from deeplab_tf.weights import record_in_manifest, sha256_of

    try:
        net = read_caffemodel(args.caffemodel)
        arch = args.arch
        if arch == "auto":
            arch = guess_architecture(net)
            if arch is None or " " in arch:
                raise CLIError(
                    f"could not recognise the architecture of {args.caffemodel} "
                    f"(found: {arch}); pass --arch explicitly"
                )
        arch = arch_name(*parse_arch(arch))
        model, report = convert_caffemodel(
            net,
            arch=arch,
            num_classes=args.num_classes,
            include_classifier=not args.no_classifier,
        )
    except (ValueError, ConversionError) as err:
        raise CLIError(str(err)) from None

    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    try:
        atomic_write(out, model.save_weights, overwrite=args.overwrite)
    except FileExistsError as err:
        raise CLIError(str(err)) from None
    digest = sha256_of(out)
    num_classes = int(model.output.shape[-1])
    print(
        f"{args.caffemodel} ({report.encoding} layers) -> {out}\n"
        f"  architecture {arch}, {num_classes} classes, {len(report.mapped)} layers, "
        f"{report.num_tensors} tensors; skipped {len(report.skipped_msc)} MSC copies"
        + (f", {len(report.skipped_classifier)} classifier layers" if args.no_classifier else "")
        + f"\n  sha256 {digest}"
    )
    if args.manifest:
        try:
            record_in_manifest(
                args.manifest,
                {
                    "name": name,
                    "architecture": arch,
                    "file": os.path.basename(out),
                    "source_file": os.path.basename(args.caffemodel),
                    "training_data": args.training_data,
                    "num_classes": num_classes,
                    "classifier_loaded": not args.no_classifier,
                    "sha256": digest,
                },
                overwrite=args.overwrite,
            )
        except ValueError as err:  # an entry of that name appeared meanwhile
            raise CLIError(str(err)) from None
        print(f"  recorded as {name!r} in {args.manifest}")
    return 0
