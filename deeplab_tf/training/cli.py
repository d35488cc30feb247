"""``deeplab-tf train``: train from a YAML config (shipped ones or your own) with overrides."""

from __future__ import annotations

import os

from deeplab_tf.cli import positive_int
from deeplab_tf.training.config_files import (  # noqa: F401  (re-exported for callers)
    CONFIG_DIR,
    apply_override,
    load_config,
    load_yaml,
    shipped_configs,
)
from deeplab_tf.training.schema import MIXED_PRECISION, OHEM_MODES, WEIGHTING_METHODS


def register(sub):
    p = sub.add_parser(
        "train",
        help="train a DeepLab v2 model from a YAML config",
        description="Train with model.fit: the paper's recipe, checkpoints, TensorBoard, resume. "
        "Rerunning the same command resumes an interrupted run; a finished run (run.json in "
        "the workdir says so) is left alone unless --restart is given.",
    )
    p.add_argument("--config", help="YAML path or shipped config name (see --list-configs)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (repeatable), e.g. --set train.steps=100",
    )
    p.add_argument("--workdir", help="shortcut for --set output.workdir=DIR")
    p.add_argument("--steps", type=positive_int, help="shortcut for --set train.steps=N")
    p.add_argument(
        "--strategy",
        choices=("default", "mirrored", "multi_worker", "tpu"),
        help="tf.distribute strategy (shortcut for --set distribute.strategy=NAME): all local "
        "GPUs (mirrored), the hosts in TF_CONFIG (multi_worker) or a TPU (tpu); "
        "train.batch_size is the global batch, split evenly over the replicas",
    )
    p.add_argument(
        "--tpu",
        help="with --strategy tpu: 'local' (TPU VM / Colab TPU runtime), a TPU name or "
        "grpc://IP:8470 (shortcut for --set distribute.tpu=...)",
    )
    p.add_argument(
        "--class-weights",
        metavar="RULE|W0,W1,...",
        help="per-class loss weights: one of " + ", ".join(WEIGHTING_METHODS) + " (computed "
        "from the training labels' histogram, ignore label excluded; shortcut for --set "
        "train.class_weighting=RULE) or one number per class, comma-separated (shortcut for "
        "--set train.class_weights=[...])",
    )
    p.add_argument(
        "--ohem",
        choices=OHEM_MODES,
        help="online hard example mining: keep the hardest pixels by loss (train.ohem_min_kept "
        "per image) or those below a true-class probability threshold (--ohem-threshold), "
        "at least train.ohem_min_kept per image (shortcut for --set train.ohem=MODE)",
    )
    p.add_argument(
        "--ohem-threshold",
        type=float,
        metavar="P",
        help="with --ohem threshold: the probability in (0, 1) below which a pixel is hard "
        "(shortcut for --set train.ohem_threshold=P)",
    )
    p.add_argument(
        "--ohem-min-kept",
        type=positive_int,
        metavar="N",
        help="pixels per image OHEM keeps at least, at the loss's resolution "
        "(shortcut for --set train.ohem_min_kept=N)",
    )
    p.add_argument(
        "--mixed-precision",
        choices=MIXED_PRECISION,
        help="train with Keras mixed precision: bfloat16 (mixed_bfloat16) or float16 "
        "(mixed_float16, with dynamic loss scaling); variables stay float32 "
        "(shortcut for --set train.mixed_precision=...)",
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="train from scratch in a workdir that holds a finished or interrupted run "
        "(deletes its backup and checkpoints; model.keras is replaced when training ends)",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--list-configs", action="store_true", help="list the shipped configs and exit")
    p.set_defaults(func=run)


def parse_class_weights(text: str):
    """``--class-weights``: ``("class_weighting", rule)`` or ``("class_weights", [floats])``.

    Raises:
        CLIError: neither a rule name nor comma-separated numbers.
    """
    from deeplab_tf.errors import CLIError

    text = text.strip()
    if text in WEIGHTING_METHODS:
        return "class_weighting", text
    try:
        weights = [float(v) for v in text.split(",")]
    except ValueError:
        import difflib

        close = difflib.get_close_matches(text, WEIGHTING_METHODS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise CLIError(
            f"--class-weights takes one of {list(WEIGHTING_METHODS)} or comma-separated numbers "
            f"(one per class, e.g. 0.5,12){hint}. Received: {text!r}"
        ) from None
    return "class_weights", weights


def run(args):
    from deeplab_tf.errors import CLIError

    if args.list_configs:
        for name in shipped_configs():
            print(name)
        return 0
    if not args.config:
        raise CLIError(
            "train needs --config (a YAML path or one of: " + ", ".join(shipped_configs()) + ")"
        )
    config = load_config(args.config)
    for assignment in args.overrides:
        apply_override(config, assignment)
    if args.workdir:
        apply_override(config, f"output.workdir={args.workdir}")
    if args.steps is not None:
        apply_override(config, f"train.steps={args.steps}")
    if args.strategy:
        apply_override(config, f"distribute.strategy={args.strategy}")
    if args.tpu:
        config.setdefault("distribute", {})["tpu"] = args.tpu
    if args.class_weights is not None:
        key, value = parse_class_weights(args.class_weights)
        config.setdefault("train", {})[key] = value
    for flag, key in (
        ("ohem", "ohem"),
        ("ohem_threshold", "ohem_threshold"),
        ("ohem_min_kept", "ohem_min_kept"),
        ("mixed_precision", "mixed_precision"),
    ):
        if getattr(args, flag) is not None:
            config.setdefault("train", {})[key] = getattr(args, flag)

    from deeplab_tf.training.trainer import RunFinished, resolve_config, train

    try:
        resolved = resolve_config(config)
        if args.print_config:
            import yaml

            print(yaml.safe_dump(resolved, sort_keys=False))
            return 0
        model, history = train(config, restart=args.restart)
    except RunFinished as done:
        print(f"deeplab-tf: {done}")
        return 0
    except (ValueError, RuntimeError) as err:
        raise CLIError(str(err)) from None
    logs = {k: round(float(v[-1]), 4) for k, v in history.history.items()}
    print(f"trained {resolved['train']['steps']} steps; last epoch: {logs}")
    print(f"saved {os.path.join(resolved['output']['workdir'], 'model.keras')}")
    return 0
