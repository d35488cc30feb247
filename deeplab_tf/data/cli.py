"""``deeplab-tf data``: dataset tools (``data check``)."""

from __future__ import annotations

import json
import os

from deeplab_tf.cli import nonneg_int, positive_int
from deeplab_tf.data.catalog import FILE_DATASETS as DATASETS


def register(sub):
    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    c = data_sub.add_parser(
        "check",
        help="count examples, histogram classes and report every problem in a dataset",
        description="Decodes every example as load_dataset does and reports counts, class "
        "histograms and problems (missing files, corrupt images, size mismatches, unknown "
        "label values) without stopping at the first. Exit status 1 when problems are found.",
    )
    c.add_argument("path", help="dataset root folder")
    c.add_argument("--dataset", required=True, choices=DATASETS, help="dataset layout")
    c.add_argument(
        "--split", action="append", help="split to check (repeatable; default: standard splits)"
    )
    c.add_argument("--num-classes", type=positive_int, help="folder datasets: number of classes")
    c.add_argument("--class-names", help="folder datasets: comma-separated class names")
    c.add_argument("--list-file", help="split list replacing the dataset's own")
    c.add_argument(
        "--pseudo-labels",
        metavar="FOLDER",
        help="a folder of label PNGs (named by image stem) replacing the dataset's labels; "
        "reports images without a label and labels without an image",
    )
    c.add_argument(
        "--crowd",
        choices=("ignore", "class"),
        help="coco2014: crowd regions become 255 (ignore, default) or their class",
    )
    c.add_argument("--cache-dir", help="coco2014: folder of the generated mask PNGs")
    c.add_argument("--limit", type=positive_int, help="check at most N examples per split")
    c.add_argument("--workers", type=positive_int, default=2, help="decoding threads (default 2)")
    c.add_argument("--max-problems", type=nonneg_int, default=20, help="problems printed per split")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.add_argument("--output", help="also write the JSON report to this file")
    c.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    c.set_defaults(func=run_check)
    p.set_defaults(func=lambda args: _no_subcommand(p))


def _no_subcommand(parser):
    parser.print_help()
    return 2


def run_check(args):
    from deeplab_tf.data.check import check_dataset, format_report
    from deeplab_tf.data.readers import DatasetError
    from deeplab_tf.errors import CLIError

    kwargs = {}
    if args.dataset == "folder":
        if args.class_names:
            kwargs["class_names"] = tuple(n.strip() for n in args.class_names.split(","))
        if args.num_classes is not None:
            kwargs["num_classes"] = args.num_classes
        if not kwargs:
            raise CLIError("--dataset folder needs --num-classes or --class-names")
    elif args.num_classes is not None or args.class_names:
        raise CLIError(f"--num-classes/--class-names apply to folder datasets, not {args.dataset}")
    import inspect

    from deeplab_tf.data.catalog import lister

    accepted = inspect.signature(lister(args.dataset)).parameters
    for option, key in (
        ("--list-file", "list_file"),
        ("--crowd", "crowd"),
        ("--cache-dir", "cache_dir"),
    ):
        value = getattr(args, key)
        if value is None:
            continue
        if key not in accepted:
            raise CLIError(f"{option} does not apply to {args.dataset}")
        kwargs[key] = value
    if args.pseudo_labels:
        if not os.path.isdir(args.pseudo_labels):
            raise CLIError(f"--pseudo-labels {args.pseudo_labels!r} is not a directory")
        kwargs["pseudo_labels"] = args.pseudo_labels
    if not os.path.isdir(args.path):
        raise CLIError(f"dataset root {args.path!r} is not a directory")
    if args.output:
        from deeplab_tf.atomic import check_output

        try:
            check_output(args.output, args.overwrite, inputs=[args.list_file], option="--output")
        except ValueError as err:
            raise CLIError(str(err)) from None
    try:
        report = check_dataset(
            args.dataset,
            args.path,
            splits=args.split,
            limit=args.limit,
            workers=args.workers,
            **kwargs,
        )
    except (DatasetError, ValueError) as err:
        raise CLIError(str(err)) from err
    if args.output:
        from deeplab_tf.atomic import write_json

        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        try:
            write_json(args.output, report, overwrite=args.overwrite)
        except FileExistsError as err:
            raise CLIError(str(err)) from None
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report, max_problems=args.max_problems))
    return 1 if report["num_problems"] else 0
