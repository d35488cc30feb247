"""The ``deeplab-tf`` command line.

Each sub-command lives next to the code it drives, in a module that defines
``register(subparsers)``; this file only collects them. Command modules import nothing heavy at
module level, and ``import deeplab_tf`` defers its Keras registration in this process, so
``deeplab-tf --help`` and every verb's ``--help`` answer without importing TensorFlow (a test
runs the parser with ``tensorflow`` and ``keras`` blocked). Once a verb is parsed, :func:`main`
registers the library's Keras classes (``deeplab_tf._registration.register_all``) before running
it, so every verb loads saved ``.keras`` files.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from deeplab_tf.errors import CLIError  # re-exported: the class every verb raises

# Quiet TensorFlow's C++ start-up logging for command-line users (errors still show).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow's BFC allocator for host memory: it reuses freed blocks, where the default
# allocator hands large tensors back to the OS and page-faults them in again on every step
# (measured effect on a training step: benchmarks/README.md, "Figures behind code comments").
# Set before TensorFlow starts; a user's own setting wins.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

#: Modules that contribute sub-commands (each defines ``register(subparsers)``).
COMMAND_MODULES = [
    "deeplab_tf.quickstart",
    "deeplab_tf.models.cli",
    "deeplab_tf.data.cli",
    "deeplab_tf.training.cli",
    "deeplab_tf.evaluation.cli",
    "deeplab_tf.inference.cli",
    "deeplab_tf.crf.cli",
    "deeplab_tf.export.cli",
    "deeplab_tf.convert.cli",
    "deeplab_tf.weights.cli",
]


# --- argparse types shared by every verb's numeric options: a bad value is refused by the
# parser ("argument --limit: expected a positive integer, got -5"), before any work.


def _number_type(convert, noun, ok):
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}")
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text}")
        return value

    parse.__name__ = noun.replace(" ", "_")  # argparse names the type in some messages
    return parse


#: An integer >= 1.
positive_int = _number_type(int, "a positive integer", lambda v: v >= 1)
#: An integer >= 0.
nonneg_int = _number_type(int, "an integer >= 0", lambda v: v >= 0)
#: A finite number > 0.
positive_float = _number_type(float, "a positive number", lambda v: v > 0)
#: A finite number >= 0.
nonneg_float = _number_type(float, "a number >= 0", lambda v: v >= 0)
#: A number in [0, 1) (overlaps, fractions).
fraction = _number_type(float, "a number in [0, 1)", lambda v: 0 <= v < 1)
#: A number in [0, 1] (opacities, probabilities).
unit_float = _number_type(float, "a number in [0, 1]", lambda v: 0 <= v <= 1)


def positive_floats(text):
    """Comma-separated positive numbers, e.g. ``3,4,5``."""
    parts = [v for v in text.split(",") if v.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive numbers, got {text!r}")
    try:
        return [positive_float(v.strip()) for v in parts]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive numbers, got {text!r}"
        ) from None


def add_crf_arguments(parser, crf_help: str) -> None:
    """``--crf``, ``--crf-preset`` and ``--crf-feature-std``: the dense CRF options that
    ``predict``, ``evaluate`` and ``export`` share (read by ``inference.cli.build_crf``)."""
    parser.add_argument("--crf", action="store_true", help=crf_help)
    parser.add_argument(
        "--crf-preset",
        help="CRF parameters: resnet101, vgg16 or a registry name (default: from the model)",
    )
    parser.add_argument(
        "--crf-feature-std", type=positive_floats, metavar="S1,S2,...",
        help="bilateral kernel standard deviation per image channel, in the channels' units "
        "(needed for models with input_channels other than 3; default for RGB: the preset's)",
    )  # fmt: skip


def dataset_kwargs(pairs) -> dict:
    """``--dataset-arg KEY=VALUE`` options (of ``evaluate`` and ``predict --dataset``) as the
    listing's keyword arguments; values are parsed as JSON where they can be."""
    import json

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise CLIError(f"--dataset-arg needs KEY=VALUE. Received: {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    from deeplab_tf import __version__

    parser = argparse.ArgumentParser(
        prog="deeplab-tf",
        description="DeepLab v2 for Keras 3 / TensorFlow 2: models, training, inference, "
        "dense CRF and export.",
    )
    parser.add_argument("--version", action="version", version=f"deeplab-tf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def _split_pipeline_args(argv):
    """``(argv, beam options)``: with ``--runner`` given, what follows a ``--`` is Beam's."""
    if "--" in argv:
        i = argv.index("--")
        if any(a == "--runner" or a.startswith("--runner=") for a in argv[:i]):
            return argv[:i], argv[i + 1 :]
    return argv, []


def main(argv=None) -> int:
    parser = build_parser()
    argv, pipeline_args = _split_pipeline_args(sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(argv)
    args.pipeline_args = pipeline_args
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        from deeplab_tf import _registration

        _registration.register_all()
    except ImportError as err:
        print(f"deeplab-tf: error: {err}", file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except CLIError as err:
        print(f"deeplab-tf: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("deeplab-tf: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Under ``python -m deeplab_tf.cli`` this file runs as ``__main__``; use the package
    # module so that CLIError raised by sub-commands is the class caught in main().
    from deeplab_tf.cli import main as _main

    sys.exit(_main())
