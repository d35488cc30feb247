"""``deeplab-tf crf-search``: grid search of the dense CRF's appearance kernel."""

from __future__ import annotations

import json
import os

from deeplab_tf.cli import positive_floats, positive_int


def register(sub):
    p = sub.add_parser(
        "crf-search",
        help="grid-search the dense CRF's bi_w, bi_xy_std, bi_rgb_std on a validation subset",
        description="Runs the model on a validation subset once, then scores the dense CRF on "
        "every (bi_w, bi_xy_std, bi_rgb_std) setting; prints a table and writes JSON.",
    )
    p.add_argument("--model", required=True, help="trained model (.keras file)")
    data = p.add_argument_group("data (a dataset, or an image/mask folder pair)")
    data.add_argument("--dataset", help="dataset name for deeplab_tf.data.load_dataset")
    data.add_argument("--root", help="dataset root folder")
    data.add_argument("--split", default="val", help="dataset split (default: val)")
    data.add_argument("--images", help="folder of RGB images (with --masks)")
    data.add_argument("--masks", help="folder of label PNGs with the images' file stems")
    p.add_argument(
        "--num-images", type=positive_int, default=100, help="subset size (default: 100)"
    )
    p.add_argument("--num-classes", type=positive_int, help="classes (default: the model's output)")
    p.add_argument(
        "--preset", default="resnet101", help="fixed CRF parameters (default: resnet101)"
    )
    p.add_argument("--bi-w", type=positive_floats, default=[3.0, 4.0, 5.0], help="e.g. 3,4,5")
    p.add_argument(
        "--bi-xy-std", type=positive_floats, default=[49.0, 67.0, 80.0], help="e.g. 49,67"
    )
    p.add_argument("--bi-rgb-std", type=positive_floats, default=[3.0, 4.0, 5.0], help="e.g. 3,4,5")
    p.add_argument("--normalization", default="symmetric", choices=["symmetric", "after"])
    p.add_argument("--output", help="write the JSON result here (default: print it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.set_defaults(func=run)


def _folder_samples(images_dir, masks_dir, limit):
    import numpy as np
    from PIL import Image

    from deeplab_tf.errors import CLIError

    for d, flag in ((images_dir, "--images"), (masks_dir, "--masks")):
        if not os.path.isdir(d):
            raise CLIError(f"{flag} must be an existing folder. Received: {d!r}")
    masks = {os.path.splitext(f)[0]: f for f in os.listdir(masks_dir)}
    names = sorted(
        f for f in os.listdir(images_dir)
        if f.lower().endswith((".jpg", ".jpeg", ".png")) and os.path.splitext(f)[0] in masks
    )  # fmt: skip
    if not names:
        raise CLIError(f"no image in {images_dir!r} has a mask with the same stem in {masks_dir!r}")
    for name in names[:limit]:
        image = np.array(Image.open(os.path.join(images_dir, name)).convert("RGB"))
        label = np.array(Image.open(os.path.join(masks_dir, masks[os.path.splitext(name)[0]])))
        if label.ndim != 2 or label.shape != image.shape[:2]:
            raise CLIError(
                f"mask for {name} must be a single-channel image of the image's size. "
                f"Received: image {image.shape}, mask {label.shape}"
            )
        yield image, label


def _dataset_samples(name, split, root, limit):
    from deeplab_tf.data import load_dataset

    ds, _ = load_dataset(name, split=split, root=root)
    for ex in ds.take(limit):
        yield ex["image"].numpy(), ex["label"].numpy()


def run(args):
    from deeplab_tf.errors import CLIError

    if args.num_images < 1:
        raise CLIError(f"--num-images must be >= 1. Received: {args.num_images}")
    if bool(args.dataset) == bool(args.images or args.masks):
        raise CLIError("give either --dataset (with --root) or both --images and --masks")
    if (args.images is None) != (args.masks is None):
        raise CLIError("--images and --masks go together")
    if not os.path.isfile(args.model):
        raise CLIError(f"--model must be an existing .keras file. Received: {args.model!r}")
    if args.output:
        from deeplab_tf.atomic import check_output

        try:
            check_output(args.output, args.overwrite, inputs=[args.model], option="--output")
            for d in (args.images, args.masks):
                if d and os.path.commonpath(
                    [os.path.realpath(d), os.path.realpath(args.output)]
                ) == os.path.realpath(d):
                    raise ValueError(
                        f"--output {args.output!r} is inside the input folder {d!r}; "
                        "choose a path outside the images and masks"
                    )
        except ValueError as err:
            raise CLIError(str(err)) from None

    import tensorflow as tf

    from deeplab_tf.crf.search import format_table, grid_search
    from deeplab_tf.inference.predict import load_inference_model
    from deeplab_tf.layers import resize_logits

    try:
        model = load_inference_model(args.model)
    except ValueError as err:
        raise CLIError(str(err)) from err
    num_classes = args.num_classes or int(model.outputs[0].shape[-1])
    if args.dataset:
        try:
            pairs = _dataset_samples(args.dataset, args.split, args.root, args.num_images)
        except (ValueError, FileNotFoundError) as err:
            raise CLIError(str(err)) from err
    else:
        pairs = _folder_samples(args.images, args.masks, args.num_images)

    def samples():
        for image, label in pairs:
            logits = model(tf.constant(image[None]), training=False)
            logits = resize_logits(logits, image.shape[:2])
            probs = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)[0].numpy()
            yield image, probs, label

    def progress(done, total, s):
        print(f"[{done}/{total}] bi_w={s['bi_w']:g} bi_xy_std={s['bi_xy_std']:g} "
              f"bi_rgb_std={s['bi_rgb_std']:g}: {s['miou']:.2f} mIoU", flush=True)  # fmt: skip

    try:
        result = grid_search(
            list(samples()), num_classes=num_classes, bi_w=args.bi_w,
            bi_xy_std=args.bi_xy_std, bi_rgb_std=args.bi_rgb_std, preset=args.preset,
            normalization=args.normalization, progress=progress,
        )  # fmt: skip
    except ValueError as err:
        raise CLIError(str(err)) from err
    print(format_table(result))
    best = result["best"]
    print(f"best: bi_w={best['bi_w']:g} bi_xy_std={best['bi_xy_std']:g} "
          f"bi_rgb_std={best['bi_rgb_std']:g} ({best['miou']:.2f} mIoU)")  # fmt: skip
    text = json.dumps(result, indent=2)
    if args.output:
        from deeplab_tf.atomic import write_text

        try:
            write_text(args.output, text + "\n", overwrite=args.overwrite)
        except FileExistsError as err:
            raise CLIError(str(err)) from None
    else:
        print(text)
    return 0
