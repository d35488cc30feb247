"""``deeplab-tf weights list | fetch NAME | path NAME | verify NAME``: pretrained presets."""

from __future__ import annotations

import json


def register(sub):
    p = sub.add_parser(
        "weights",
        help="list, fetch, locate and verify pretrained weights presets",
        description="Pretrained weights: the authors' Caffe release and the PyTorch port's "
        "checkpoints, downloaded once (resumable; DEEPLAB_TF_WEIGHTS_MIRROR=URL-or-folder "
        "replaces the addresses), verified by SHA-256, converted once with the strict "
        "converter and cached under $KERAS_HOME/deeplab_tf (or $DEEPLAB_TF_CACHE).",
    )
    verbs = p.add_subparsers(dest="weights_command", metavar="ACTION")
    v = verbs.add_parser("list", help="the presets: name, architecture, classes, reported mIoU")
    v.add_argument("--json", action="store_true", help="print every field as JSON")
    v.set_defaults(func=run_list)
    for verb, text in (
        ("fetch", "download, verify and convert a preset now (later uses are offline)"),
        ("path", "print the cached files of a preset (nothing is fetched)"),
        ("verify", "re-check the SHA-256 of a preset's cached files against their records"),
    ):
        v = verbs.add_parser(verb, help=text)
        v.add_argument("name", help="preset name (see `deeplab-tf weights list`)")
        if verb == "fetch":
            v.add_argument("--quiet", action="store_true", help="no progress output")
        v.set_defaults(func=globals()[f"run_{verb}"])
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _preset(name):
    from deeplab_tf.errors import CLIError
    from deeplab_tf.weights.presets import get_preset

    try:
        return get_preset(name)
    except ValueError as err:
        raise CLIError(str(err)) from None


def run_list(args):
    from deeplab_tf.weights.presets import list_presets

    presets = list_presets()
    if args.json:
        print(json.dumps(presets, indent=2))
        return 0
    print(f"{'name':38s} {'model':28s} {'classes':>7s} {'mIoU':>13s}  training data")
    for p in presets:
        miou = p["reported_miou"] or {}
        shown = "-"
        if miou.get("no_crf") is not None or miou.get("crf") is not None:
            shown = "/".join(
                "-" if miou.get(k) is None else f"{miou[k]:.2f}" for k in ("no_crf", "crf")
            )
        classes = str(p["num_classes"]) if p["num_classes"] else "any"
        print(f"{p['name']:38s} {p['model']:28s} {classes:>7s} {shown:>13s}  {p['training_data']}")
    print("\nmIoU: no CRF / CRF, as reported by the publisher (not re-measured here); "
          "`--json` gives split and source.")  # fmt: skip
    return 0


def run_fetch(args):
    from deeplab_tf.errors import CLIError
    from deeplab_tf.models.deeplab import DeepLabV2
    from deeplab_tf.weights.cache import preset_files
    from deeplab_tf.weights.download import DownloadError

    preset = _preset(args.name)
    try:
        model = DeepLabV2.from_preset(preset["name"])
    except (ValueError, OSError) as err:
        kind = "download failed" if isinstance(err, DownloadError) else "cannot fetch"
        raise CLIError(f"{preset['name']}: {kind}: {err}") from None
    for role, path in preset_files(preset["name"]).items():
        print(f"{role:40s} {path}")
    print(f"{preset['name']}: ready ({model.count_params():,} parameters)")
    return 0


def run_path(args):
    from deeplab_tf.errors import CLIError
    from deeplab_tf.weights.cache import preset_files

    preset = _preset(args.name)
    files = preset_files(preset["name"])
    if not files:
        raise CLIError(
            f"{preset['name']} is not in the cache; `deeplab-tf weights fetch {preset['name']}` "
            "fetches it."
        )
    for role, path in files.items():
        print(f"{role:40s} {path}")
    return 0


def run_verify(args):
    from deeplab_tf.errors import CLIError
    from deeplab_tf.weights.cache import verify_preset

    preset = _preset(args.name)
    try:
        checked = verify_preset(preset["name"])
    except ValueError as err:
        raise CLIError(str(err)) from None
    if not checked:
        raise CLIError(f"{preset['name']} is not in the cache: nothing to verify.")
    for path, sha in checked.items():
        print(f"OK {sha}  {path}")
    return 0
