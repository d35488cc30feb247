"""``deeplab-tf evaluate``: score a model on a dataset split (mean IoU and friends)."""

from __future__ import annotations

import os

from deeplab_tf.cli import dataset_kwargs, nonneg_int, positive_int


def register(sub):
    from deeplab_tf.inference.cli import add_inference_arguments

    p = sub.add_parser(
        "evaluate",
        help="score a model on a dataset: mean IoU, per-class IoU, accuracies",
        description="Runs a model over a dataset split and prints a per-class IoU table; "
        "--report writes every score and the settings used as JSON.",
    )
    p.add_argument(
        "--dataset", required=True, help="dataset name (voc2012, cityscapes, folder, synthetic...)"
    )
    p.add_argument("--split", default="val", help="split (default: val)")
    p.add_argument("--root", help="folder holding the dataset")
    p.add_argument("--limit", type=positive_int, help="evaluate only the first N images")
    p.add_argument("--report", help="write the scores and settings to this JSON file")
    p.add_argument(
        "--save-visuals", metavar="DIR",
        help="write image | prediction | ground truth PNGs here (see --num-visuals)",
    )  # fmt: skip
    p.add_argument(
        "--num-visuals", type=nonneg_int, default=20, help="how many side-by-sides to save"
    )
    p.add_argument(
        "--overwrite", action="store_true",
        help="replace an existing --report file and side-by-sides in --save-visuals",
    )  # fmt: skip
    p.add_argument(
        "--dataset-arg", action="append", default=[], metavar="KEY=VALUE",
        help="extra option for the dataset loader (repeatable; values parsed as JSON if possible)",
    )  # fmt: skip
    add_inference_arguments(p)
    p.set_defaults(func=run)


def check_evaluate_outputs(args):
    """Refuses, before any work, a --report that is an input or exists (without --overwrite)
    and a --save-visuals folder that already holds side-by-sides (without --overwrite)."""
    import re

    from deeplab_tf.atomic import check_outputs
    from deeplab_tf.errors import CLIError

    try:
        if args.report:
            if os.path.isdir(args.report):
                raise ValueError(f"--report {args.report!r} is a folder; expected a file path")
            inputs = [("--model", args.model), ("--weights", args.weights)]
            check_outputs([("--report", args.report)], inputs, args.overwrite)
        if args.save_visuals and os.path.isdir(args.save_visuals) and not args.overwrite:
            old = sorted(
                f for f in os.listdir(args.save_visuals) if re.match(r"^\d{4}_.*\.png$", f)
            )
            if old:
                raise ValueError(
                    f"--save-visuals {args.save_visuals!r} already holds side-by-sides "
                    f"({old[0]}, {len(old)} in all); pass --overwrite to replace them, or "
                    "choose another folder"
                )
        elif args.save_visuals and os.path.exists(args.save_visuals):
            if not os.path.isdir(args.save_visuals):
                raise ValueError(f"--save-visuals {args.save_visuals!r} is a file, not a folder")
    except ValueError as err:
        raise CLIError(str(err)) from None


def run(args):
    from deeplab_tf.data import load_dataset
    from deeplab_tf.errors import CLIError
    from deeplab_tf.evaluation.evaluate import evaluate
    from deeplab_tf.inference.cli import build_predictor
    from deeplab_tf.inference.progress import Progress

    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be >= 1. Received: {args.limit}")
    check_evaluate_outputs(args)
    try:
        dataset, info = load_dataset(
            args.dataset, split=args.split, root=args.root, **dataset_kwargs(args.dataset_arg)
        )
    except (ValueError, FileNotFoundError, OSError) as err:
        raise CLIError(f"cannot load dataset {args.dataset!r} ({args.split}): {err}") from None

    if getattr(args, "runner", None):  # the same command on Apache Beam (docs/scale-out.md)
        from deeplab_tf.beam.cli import run_evaluate

        settings = build_predictor(args, num_classes=info.num_classes)[1]
        return run_evaluate(args, info, settings, dataset_kwargs(args.dataset_arg), report_scores)
    predictor, settings = build_predictor(args, num_classes=info.num_classes)
    total = info.num_examples
    if args.limit is not None:
        total = min(total, args.limit) if total else args.limit
    bar = Progress(total, "evaluate", enabled=False if args.no_progress else None)

    on_example = None
    if args.save_visuals:
        from deeplab_tf.visualize import save_rgb_png, side_by_side

        os.makedirs(args.save_visuals, exist_ok=True)
        saved = []

        def on_example(name, image, label, pred):
            if len(saved) < args.num_visuals:
                safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "image"
                path = os.path.join(args.save_visuals, f"{len(saved):04d}_{safe}.png")
                panel = side_by_side(image, pred, label, info.palette, info.class_names)
                saved.append(save_rgb_png(path, panel, overwrite=args.overwrite))

    try:
        scores = evaluate(
            predictor, dataset, info.num_classes, info.ignore_label, args.limit, bar, on_example
        )
    finally:
        bar.close()
    if scores["num_images"] == 0:
        raise CLIError(f"dataset {args.dataset!r} ({args.split}) yielded no images")

    return report_scores(args, info, scores, settings)


def report_scores(args, info, scores, settings):
    """Prints the table and writes ``--report`` (shared by the Beam path)."""
    from deeplab_tf.errors import CLIError
    from deeplab_tf.evaluation.evaluate import write_json
    from deeplab_tf.evaluation.metrics import format_table

    print(f"{info.name} {args.split}: {scores['num_images']} images, {scores['seconds']:.1f} s")
    print(format_table(scores, info.class_names))
    if args.report:
        report = {
            "dataset": {"name": info.name, "split": args.split, "root": args.root},
            "settings": settings,
            "class_names": list(info.class_names),
            "scores": scores,
        }
        try:
            write_json(args.report, report, overwrite=args.overwrite)
        except FileExistsError as err:  # created by someone else while this run worked
            raise CLIError(str(err)) from None
        print(f"report written to {args.report}")
    return 0
