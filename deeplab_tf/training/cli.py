"""``deeplab-tf train``: train from a YAML config (shipped ones or your own) with overrides."""

from __future__ import annotations

import os

from deeplab_tf.cli import positive_int

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def shipped_configs() -> list[str]:
    """Names of the YAML configs shipped in ``deeplab_tf/configs``."""
    if not os.path.isdir(CONFIG_DIR):
        return []
    return sorted(f[: -len(".yaml")] for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml"))


def _yaml_loader():
    """PyYAML's safe loader, reading floats as YAML 1.2 does: ``1e-3`` is a number (PyYAML's
    YAML 1.1 rules need ``1.0e-3`` and would hand the schema the string ``'1e-3'``)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(
            r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
            |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
            |\.[0-9_]+(?:[eE][-+][0-9]+)?
            |[-+]?\.(?:inf|Inf|INF)
            |\.(?:nan|NaN|NAN))$""",
            re.X,
        ),
        list("-+0123456789."),
    )
    return Loader


def load_yaml(text_or_stream):
    """Parses YAML config text (a whole config or one ``--set`` value)."""
    import yaml

    return yaml.load(text_or_stream, Loader=_yaml_loader())


def load_config(path_or_name: str) -> dict:
    """Reads a YAML config from a path or a shipped config name (``voc12_resnet101_aspp_l``)."""
    import yaml

    from deeplab_tf.cli import CLIError

    path = path_or_name
    if not os.path.isfile(path):
        name = os.path.basename(path_or_name)
        name = name[: -len(".yaml")] if name.endswith(".yaml") else name
        candidate = os.path.join(CONFIG_DIR, name + ".yaml")
        if not os.path.isfile(candidate):
            raise CLIError(
                f"config {path_or_name!r} is neither a file nor a shipped config "
                f"({', '.join(shipped_configs())})"
            )
        path = candidate
    with open(path) as f:
        try:
            config = load_yaml(f)
        except yaml.YAMLError as err:
            raise CLIError(f"cannot parse {path}: {err}") from None
    if not isinstance(config, dict):
        raise CLIError(f"{path} must hold a mapping of sections. Received: {type(config).__name__}")
    return config


def apply_override(config: dict, assignment: str) -> None:
    """Applies ``section.key=value`` (value parsed as YAML) to ``config`` in place."""

    from deeplab_tf.cli import CLIError

    if "=" not in assignment or "." not in assignment.split("=", 1)[0]:
        raise CLIError(
            f"--set takes SECTION.KEY=VALUE (e.g. train.steps=100). Received: {assignment!r}"
        )
    key, value = assignment.split("=", 1)
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise CLIError(f"cannot set {key}: {p!r} is not a section. Received: {assignment!r}")
    node[leaf] = load_yaml(value)


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
        "--restart",
        action="store_true",
        help="train from scratch in a workdir that holds a finished or interrupted run "
        "(deletes its backup and checkpoints; model.keras is replaced when training ends)",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--list-configs", action="store_true", help="list the shipped configs and exit")
    p.set_defaults(func=run)


def run(args):
    from deeplab_tf.cli import CLIError

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
