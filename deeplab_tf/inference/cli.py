"""``deeplab-tf predict``: label PNGs, colour overlays and probability maps for images.

Shared with ``deeplab-tf evaluate``: the model, multi-scale, tiling and CRF options.
"""

from __future__ import annotations

import os
import sys

from deeplab_tf.cli import (
    add_crf_arguments,
    dataset_kwargs,
    fraction,
    nonneg_int,
    positive_float,
    positive_int,
    unit_float,
)
from deeplab_tf.inference.outputs import OUTPUT_SUFFIXES, plan_outputs  # noqa: F401


def add_inference_arguments(p):
    """Adds the model / multi-scale / tiling / CRF options shared by predict and evaluate."""
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        help="a .keras file, or a registry name (see `deeplab-tf models`) with --weights",
    )
    g.add_argument(
        "--preset",
        help="a pretrained weights preset instead of --model (see `deeplab-tf weights list`; "
        "fetched and converted on first use); its class names and palette are used",
    )
    g.add_argument("--weights", help="a .weights.h5 file for a registry-name --model")
    g.add_argument("--num-classes", type=positive_int, help="classes of a registry-name model")
    g = p.add_argument_group("inference")
    g.add_argument(
        "--scales",
        type=positive_float,
        nargs="+",
        default=[1.0],
        help="image scales, e.g. 1 0.75 0.5 for the paper's MSC (default: 1)",
    )
    g.add_argument("--fusion", choices=("max", "mean"), default="max", help="multi-scale fusion")
    g.add_argument("--flip", action="store_true", help="also run mirrored images")
    g.add_argument(
        "--upsample",
        choices=("caffe", "half_pixel"),
        default="caffe",
        help="score upsampling rule (caffe: corners aligned, what converted weights expect)",
    )
    g.add_argument(
        "--fuse-at",
        choices=("logits", "image"),
        default="logits",
        help="fuse scales on the 1x score grid (the paper) or at image resolution",
    )
    g.add_argument(
        "--tile-size",
        type=nonneg_int,
        default=1025,
        help="images larger than this run as overlapping tiles (0 = never tile)",
    )
    g.add_argument("--overlap", type=fraction, default=1 / 3, help="tile overlap fraction")
    add_crf_arguments(g, "refine with the fully connected CRF (paper parameters for the model)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument(
        "--runner", metavar="RUNNER",
        help="run on Apache Beam (DirectRunner, DataflowRunner, FlinkRunner, SparkRunner); "
        'pipeline options follow a "--" (docs/scale-out.md; needs deeplab_tf[beam])',
    )  # fmt: skip
    p.add_argument(
        "--batch-size", type=positive_int, default=1,
        help="with --runner: images of one size per model call (default 1: bit-identical to "
        "the single-process path)",
    )  # fmt: skip


def build_predictor(args, num_classes=None):
    """Builds a :class:`Predictor` from parsed options; returns ``(predictor, settings)``."""
    from deeplab_tf.errors import CLIError
    from deeplab_tf.inference.multiscale import MultiScaleInference
    from deeplab_tf.inference.predict import Predictor, load_inference_model

    if args.num_classes is not None and num_classes is not None and args.num_classes != num_classes:
        raise CLIError(
            f"--num-classes {args.num_classes} disagrees with the dataset's {num_classes} classes"
        )
    num_classes = num_classes if num_classes is not None else args.num_classes
    if args.tile_size < 0:
        raise CLIError(f"--tile-size must be >= 0. Received: {args.tile_size}")
    if not 0.0 <= args.overlap < 1.0:
        raise CLIError(f"--overlap must be in [0, 1). Received: {args.overlap}")
    preset = getattr(args, "preset", None)
    if bool(preset) == bool(args.model):
        raise CLIError(
            "give either --model (a .keras file or a registry name) or --preset (a weights "
            f"preset). Received: --model {args.model!r}, --preset {preset!r}"
        )
    if preset and args.weights:
        raise CLIError(f"--weights is for a registry-name --model; --preset {preset} has its own")
    net, classes = None, None
    if preset:
        from deeplab_tf.models.deeplab import DeepLabV2

        try:
            net = DeepLabV2.from_preset(preset)
        except (ValueError, OSError) as err:
            raise CLIError(f"--preset {preset}: {err}") from None
        classes = net.preset.get("classes")
        if num_classes is not None and num_classes != net.num_classes:
            raise CLIError(
                f"--preset {preset} has {net.num_classes} classes; the dataset has {num_classes}"
            )
    try:
        net = load_inference_model(net or args.model, args.weights, num_classes)
        msc = MultiScaleInference(
            net,
            scales=args.scales,
            fusion=args.fusion,
            flip=args.flip,
            upsample=args.upsample,
            output="probs",
            fuse_at=args.fuse_at if 1.0 in args.scales else "image",
        )
    except ValueError as err:
        raise CLIError(str(err)) from None
    crf, crf_settings = build_crf(args, net) if args.crf else (None, None)
    settings = {
        "model": str(args.model or preset),
        "weights": args.weights,
        "classes": classes,
        "num_classes": msc.num_classes,
        "scales": list(msc.scales),
        "fusion": msc.fusion,
        "flip": msc.flip,
        "upsample": msc.upsample,
        "fuse_at": msc.fuse_at,
        "tile_size": args.tile_size or None,
        "overlap": args.overlap,
        "crf": crf_settings,
    }
    if not preset and args.weights is None and not str(args.model).endswith(".keras"):
        print(
            f"deeplab-tf: note: {args.model} has random weights (no --weights given); "
            "predictions are meaningless",
            file=sys.stderr,
        )
    predictor = Predictor(msc, tile_size=args.tile_size or None, overlap=args.overlap, crf=crf)
    return predictor, settings


def _cause(err) -> str:
    """One line for a failed image: TensorFlow's graph errors start with "Graph execution
    error:" and a stack trace, and their cause is the last line."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    if not lines:
        return ""
    if lines[0].startswith("Graph execution error") and len(lines) > 1:
        return lines[-1]
    return lines[0]


def build_crf(args, net=None):
    """The dense CRF for ``--crf``: ``(DenseCRF, settings)``, or a CLIError if unavailable.

    The preset is ``--crf-preset`` if given, else the registry name given as ``--model``, else
    the model's own backbone (its DeepLabV2 config; its name is not read)
    (docs/architecture.md#crf-parameters).
    """
    from deeplab_tf.crf import DenseCRF
    from deeplab_tf.errors import CLIError
    from deeplab_tf.models.deeplab import MIGRATION, find_deeplab, input_channels_of
    from deeplab_tf.models.registry import list_models

    preset = args.crf_preset
    if preset is None and args.model in list_models():
        preset = args.model
    if preset is None and net is not None:
        deeplab = find_deeplab(net)
        if deeplab is None:
            raise CLIError(
                f"The model does not say its backbone, which picks the CRF parameters: pass "
                f"--crf-preset resnet101|vgg16. {MIGRATION}"
            )
        preset = deeplab.backbone
    if preset is None:
        preset = "resnet101"
    overrides = {}
    channels = input_channels_of(net) if net is not None else 3
    stds = getattr(args, "crf_feature_std", None)
    if stds is not None and len(stds) != channels:
        raise CLIError(
            f"--crf-feature-std needs one value per image channel: the model takes {channels}. "
            f"Received: {','.join(f'{v:g}' for v in stds)}"
        )
    if stds is None and channels != 3:
        raise CLIError(
            f"the model takes {channels}-channel images, and the CRF's bilateral kernel needs "
            f"a standard deviation per channel in the channels' units: pass --crf-feature-std "
            f"with {channels} values (the RGB presets use 3 for 0..255 colours, 13 for VGG)"
        )
    if stds is not None:
        overrides["bi_feature_std"] = list(stds)
    try:
        # A lattice over the vertex cap (a large, detailed photo) falls back to a downsampled
        # CRF with a warning instead of failing the image.
        crf = DenseCRF.from_preset(preset, overflow="downsample", **overrides)
    except (ValueError, KeyError) as err:
        raise CLIError(str(err)) from None
    return crf, {"preset": preset, **crf.get_config()}


def register(sub):
    p = sub.add_parser(
        "predict",
        help="segment images: label PNGs, colour overlays, optional probability maps",
        description="Segments images (files, directories or glob patterns, or with --dataset "
        "the images of a dataset split) and writes, per image, NAME.png (class ids, VOC "
        "palette), NAME_overlay.png (the photo tinted with the classes) and, with --probs, "
        "NAME_probs.npy (H, W, C float16); NAME is the file's stem, or the example id with "
        "--dataset (2007_000033, frankfurt_000000_000294...). A file that cannot be "
        "used is reported and skipped; the exit status is 1 if any file failed. Outputs never "
        "replace an input or each other (refused before any work), nor an existing file "
        "unless --overwrite is given.",
    )
    p.add_argument(
        "inputs", nargs="*", metavar="IMAGE",
        help="image files, directories, globs (or --dataset instead)",
    )  # fmt: skip
    g = p.add_argument_group("dataset input (instead of IMAGE)")
    g.add_argument(
        "--dataset", help="predict the images of a dataset split (voc2012, cityscapes, "
        "cocostuff164k, folder...; listed as `deeplab-tf evaluate` lists it; labels not needed)",
    )  # fmt: skip
    g.add_argument("--split", default="val", help="with --dataset: split (default: val)")
    g.add_argument("--root", help="with --dataset: folder holding the dataset")
    g.add_argument("--limit", type=positive_int, help="with --dataset: the first N images only")
    g.add_argument(
        "--dataset-arg", action="append", default=[], metavar="KEY=VALUE",
        help="with --dataset: extra option for its listing (repeatable; values parsed as JSON)",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--probs", action="store_true", help="also write NAME_probs.npy")
    p.add_argument(
        "--overwrite", action="store_true",
        help="replace outputs left by an earlier run (each atomically)",
    )  # fmt: skip
    p.add_argument("--alpha", type=unit_float, default=0.55, help="overlay opacity (default 0.55)")
    p.add_argument(
        "--palette", choices=("voc", "cityscapes", "cocostuff"), default=None,
        help="label colours and class names (default: the preset's; else cityscapes for 19 "
        "classes, voc otherwise)",
    )  # fmt: skip
    p.add_argument(
        "--legend", action="store_true",
        help="add a legend naming the classes present below each overlay",
    )  # fmt: skip
    p.add_argument(
        "--max-pixels", type=positive_int, default=None,
        help="largest accepted image, in pixels (default 40,000,000)",
    )  # fmt: skip
    add_inference_arguments(p)
    p.set_defaults(func=run)


def _dataset_inputs(args):
    """``(paths, names)`` of ``--dataset`` (:func:`deeplab_tf.inference.io.dataset_inputs`), or
    None for IMAGE inputs; refuses both or neither, and a dataset that does not list."""
    from deeplab_tf.errors import CLIError
    from deeplab_tf.inference.io import dataset_inputs

    if bool(args.inputs) == bool(args.dataset):
        raise CLIError(
            "give IMAGE inputs or --dataset NAME --root ROOT, not both or neither. Received: "
            f"IMAGE {args.inputs!r}, --dataset {args.dataset!r}"
        )
    if not args.dataset:
        extra = [f for f in ("root", "limit") if getattr(args, f) is not None]
        if args.dataset_arg or extra:
            flags = [f"--{f}" for f in extra] + ["--dataset-arg"] * bool(args.dataset_arg)
            raise CLIError(f"{', '.join(flags)} need(s) --dataset. Received IMAGE inputs")
        return None
    try:
        return dataset_inputs(
            args.dataset, args.split, args.root, dataset_kwargs(args.dataset_arg), args.limit
        )
    except (ValueError, OSError) as err:
        raise CLIError(f"--dataset {args.dataset!r} ({args.split}): {err}") from None


def run(args):
    from deeplab_tf.data.palettes import label_set
    from deeplab_tf.errors import CLIError
    from deeplab_tf.inference.io import (
        DEFAULT_MAX_PIXELS,
        ImageReadError,
        expand_inputs,
        read_image,
    )
    from deeplab_tf.inference.outputs import write_prediction
    from deeplab_tf.inference.progress import Progress

    listed = _dataset_inputs(args)  # None without --dataset; bad input refused before the model
    if getattr(args, "runner", None):  # the same command on Apache Beam (docs/scale-out.md)
        from deeplab_tf.beam.cli import run_predict

        return run_predict(args, build_predictor(args)[1])
    if not 0.0 <= args.alpha <= 1.0:
        raise CLIError(f"--alpha must be in [0, 1]. Received: {args.alpha}")
    max_pixels = args.max_pixels or DEFAULT_MAX_PIXELS
    if listed is not None:
        (paths, names), errors = listed, []
    else:
        (paths, errors), names = expand_inputs(args.inputs), None
    for message in errors:
        print(f"deeplab-tf: error: {message}", file=sys.stderr)
    if not paths:
        raise CLIError("no input images found")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise CLIError(f"--out must be a folder. Received: {args.out!r} (an existing file)")

    predictor, settings = build_predictor(args)  # argument errors first; no inference yet
    try:  # before any inference: outputs never replace inputs, each other or (unasked) old files
        protected = [p for p in (args.model, args.weights) if p and os.path.isfile(p)]
        plan = plan_outputs(paths, args.out, args.probs, protected, args.overwrite, names=names)
    except ValueError as err:
        raise CLIError(str(err)) from None
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as err:
        raise CLIError(f"cannot create output directory {args.out!r}: {err}") from None
    num_classes = predictor.model.num_classes
    palette_name = (
        args.palette or settings["classes"] or ("cityscapes" if num_classes == 19 else "voc")
    )
    class_names, palette = label_set(palette_name)
    if len(class_names) != num_classes:
        class_names = None  # ids in the legend: the label set's names do not fit the model

    done, keep = 0, args.overwrite
    bar = Progress(len(paths), "predict", enabled=False if args.no_progress else None)
    for path, base in plan:
        try:
            image, notes = read_image(path, max_pixels, predictor.channels)
            for note in notes:
                bar.write(f"deeplab-tf: note: {path}: {note}")
            probs = predictor(image)
            write_prediction(
                base, image, probs, palette, args.alpha, args.legend, class_names, args.probs, keep
            )
            done += 1
        except ImageReadError as err:
            errors.append(str(err))
            bar.write(f"deeplab-tf: error: {err}")
        except Exception as err:  # noqa: BLE001 - one bad image must not stop the batch
            message = f"{path}: {type(err).__name__}: {_cause(err)}"
            errors.append(message)
            bar.write(f"deeplab-tf: error: {message}")
        bar.update(1, os.path.basename(path))
    bar.close()
    print(f"deeplab-tf: wrote {done} of {len(paths)} image(s) to {args.out}", end="")
    print(f"; {len(errors)} failed" if errors else "")
    return 1 if errors else 0
