"""Train DeepLab v2 ResNet-101 ASPP-L on PASCAL VOC 2012 train_aug: the paper's main recipe.

The recipe (paper section 4, the release's solver): 20,000 updates of batch 10 (here 5 x 2
accumulated micro-batches, as the PyTorch port does), 321 x 321 random crops of images
randomly scaled by 0.5..1.5 and flipped, Caffe SGD (momentum 0.9, weight decay 5e-4, learning
rate 2.5e-4 on the "poly" schedule with power 0.9, x10/x20 on the classifier), frozen
BatchNorm, and multi-scale training (MSC: inputs at 1, 0.75 and 0.5, losses on each branch and
their max fusion). Everything comes from ``deeplab_tf/configs/voc12_resnet101_aspp_l.yaml``;
this script only fills in the paths and the options you pass, then calls
:func:`deeplab_tf.training.train` (``model.fit`` underneath).

Data: ``--root`` is the folder holding ``VOCdevkit/VOC2012`` and ``benchmark_RELEASE``
(the SBD archive, for the 10,582-image train_aug split); pass ``--sbd-root`` or ``--aug-dir``
(a ``SegmentationClassAug`` folder) when they live elsewhere. ``deeplab-tf data check
ROOT --dataset voc2012_aug`` reports problems with the tree before you spend GPU hours.

Usage::

    # The paper's run (needs a GPU; about 20k steps), ImageNet initialisation:
    python examples/train_voc.py --root /data --workdir runs/r101_voc

    # From the release's MS-COCO initialisation (the paper's 76.35% val mIoU without the
    # dense CRF, 77.69% with it), converted with
    # `deeplab-tf convert-caffe init.caffemodel --arch auto --no-classifier \
    #     --num-classes 21 --out init.weights.h5`:
    python examples/train_voc.py --root /data --weights init.weights.h5 --workdir runs/r101_coco

    # A smoke test on a laptop: a small backbone, tiny crops, two steps.
    python examples/train_voc.py --root /data --workdir /tmp/smoke --backbone mobilenetv2 \\
        --weights none --crop-size 64 --batch-size 2 --accumulation-steps 1 --steps 2 --no-val

Training resumes from ``WORKDIR/backup`` when re-run with the same ``--workdir``; the trained
network is written to ``WORKDIR/model.keras``. Evaluate it afterwards with the paper's
multi-scale inference and the dense CRF::

    deeplab-tf evaluate --model runs/r101_voc/model.keras --dataset voc2012 --root /data \\
        --split val --scales 1 0.75 0.5 --crf
"""

from __future__ import annotations

import argparse
import os
import sys

CONFIG = "voc12_resnet101_aspp_l"
BACKBONES = ("resnet101", "resnet50", "resnet152", "vgg16", "mobilenetv2")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Train DeepLab v2 (ResNet-101 ASPP-L by default) on PASCAL VOC 2012 "
        "train_aug with the paper's recipe.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = p.add_argument_group("data")
    data.add_argument(
        "--root",
        "--voc-root",
        dest="root",
        required=True,
        help="folder holding VOCdevkit/VOC2012 (and benchmark_RELEASE, unless --sbd-root)",
    )
    data.add_argument("--sbd-root", help="SBD 'dataset' folder (with cls/*.mat), if elsewhere")
    data.add_argument("--aug-dir", help="a SegmentationClassAug folder, instead of SBD")
    model = p.add_argument_group("model")
    model.add_argument("--backbone", choices=BACKBONES, default="resnet101")
    model.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet', 'none' (random init) or a weights file (.weights.h5, .caffemodel, .pth)",
    )
    train = p.add_argument_group("training (defaults: the paper's recipe)")
    train.add_argument("--workdir", required=True, help="checkpoints, logs and model.keras")
    train.add_argument("--steps", type=int, default=20000, help="optimizer updates")
    train.add_argument("--batch-size", type=int, default=5, help="images per micro-batch")
    train.add_argument(
        "--accumulation-steps", type=int, default=2, help="micro-batches per update (5 x 2 = 10)"
    )
    train.add_argument("--crop-size", type=int, default=321, help="training crop side")
    train.add_argument("--base-lr", type=float, default=2.5e-4, help="poly schedule start")
    train.add_argument(
        "--msc",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="multi-scale training (inputs at 1, 0.75, 0.5; the paper's MSC)",
    )
    train.add_argument("--checkpoint-every", type=int, default=1000, help="steps per checkpoint")
    train.add_argument("--seed", type=int, default=None, help="deterministic input order")
    val = p.add_argument_group("validation (VOC val, at every checkpoint)")
    val.add_argument("--no-val", action="store_true", help="skip validation")
    val.add_argument("--val-crop-size", type=int, default=513, help="validation pad/crop side")
    val.add_argument("--val-examples", type=int, default=None, help="validate on the first N")
    p.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard logs")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "accumulation_steps", "crop_size", "checkpoint_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1. Received: {getattr(args, name)}")
    if not os.path.isdir(args.root):
        p.error(f"--root must be an existing folder. Received: {args.root!r}")
    return args


def build_config(args) -> dict:
    """The shipped paper config with this run's paths and options filled in."""
    from deeplab_tf.training.config_files import load_config

    config = load_config(CONFIG)
    weights = None if args.weights.lower() == "none" else args.weights
    config["model"].update(name=f"deeplabv2_{args.backbone}_aspp_l", weights=weights)
    data = config["data"]
    data["root"] = os.path.abspath(args.root)
    if args.sbd_root:
        data["sbd_root"] = os.path.abspath(args.sbd_root)
    if args.aug_dir:
        data["aug_dir"] = os.path.abspath(args.aug_dir)
    if args.no_val:
        data.pop("val", None)
    config["train"].update(
        steps=args.steps,
        batch_size=args.batch_size,
        accumulation_steps=args.accumulation_steps,
        crop_size=args.crop_size,
        base_lr=args.base_lr,
        msc=args.msc,
        seed=args.seed,
    )
    config["val"] = {
        "crop_size": args.val_crop_size,
        "batch_size": 1,
        "max_examples": args.val_examples,
    }
    config["output"].update(
        workdir=os.path.abspath(args.workdir),
        # Epochs are checkpoint intervals; a short run is one epoch.
        checkpoint_every=min(args.checkpoint_every, args.steps),
        tensorboard=not args.no_tensorboard,
    )
    return config


def main(argv=None) -> int:
    args = parse_args(argv)
    config = build_config(args)

    from deeplab_tf.training import resolve_config, train

    try:
        resolved = resolve_config(config)
    except ValueError as err:
        print(f"train_voc.py: error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        import yaml

        print(yaml.safe_dump(resolved, sort_keys=False))
        return 0
    t = resolved["train"]
    print(
        f"Training {resolved['model']['name']} (weights: {resolved['model'].get('weights')}) "
        f"for {t['steps']} steps of {t['batch_size']} x {t['accumulation_steps']} images, "
        f"crop {t['crop_size']}, MSC {'on' if t['msc'] else 'off'}; workdir "
        f"{resolved['output']['workdir']}",
        flush=True,
    )
    try:
        _, history = train(config)
    except ValueError as err:  # bad data tree, labels out of range...: say so, no traceback
        print(f"train_voc.py: error: {err}", file=sys.stderr)
        return 2
    last = {k: round(float(v[-1]), 4) for k, v in history.history.items()}
    print(f"done; last epoch: {last}")
    print(f"model: {os.path.join(resolved['output']['workdir'], 'model.keras')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
