"""Segment images with a DeepLab v2 model: images in, colour overlays out, optional dense CRF.

A thin, readable version of ``deeplab-tf predict`` built from the library's pieces:

1. :func:`deeplab_tf.load_inference_model` reads a ``.keras`` file (or builds a zoo model from
   its registry name plus a weights file);
2. :class:`deeplab_tf.MultiScaleInference` runs it at one or more scales (the paper's MSC: 1,
   0.75, 0.5) and returns full-resolution class probabilities;
3. :class:`deeplab_tf.DenseCRF` (``--crf``) refines them with the paper's fully connected CRF;
4. :mod:`deeplab_tf.visualize` writes, per image, ``NAME.png`` (class ids, palette PNG) and
   ``NAME_overlay.png`` (the photo tinted with the classes); with ``--crf`` also
   ``NAME_overlay_before_crf.png``.

Usage::

    python examples/predict.py photos/*.jpg --model runs/r101_voc/model.keras --out out/
    python examples/predict.py photos/ --model deeplabv2_resnet101_aspp_l \\
        --weights voc12_resnet101.weights.h5 --scales 1 0.75 0.5 --crf --out out/
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Segment images and write colour overlays (optionally CRF-refined).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--model", required=True, help="a .keras file or a registry name")
    p.add_argument("--weights", help="weights file, for a registry-name --model")
    p.add_argument("--num-classes", type=int, help="classes, for a registry-name --model")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument(
        "--scales", type=float, nargs="+", default=[1.0], help="e.g. 1 0.75 0.5 (the paper's MSC)"
    )
    p.add_argument("--crf", action="store_true", help="refine with the dense CRF")
    p.add_argument(
        "--crf-preset", default="resnet101", help="CRF parameters: resnet101, vgg16 or a model name"
    )
    p.add_argument("--crf-iterations", type=int, default=10, help="mean-field iterations")
    p.add_argument("--alpha", type=float, default=0.55, help="overlay opacity in [0, 1]")
    args = p.parse_args(argv)
    if not 0.0 <= args.alpha <= 1.0:
        p.error(f"--alpha must be in [0, 1]. Received: {args.alpha}")
    if args.crf_iterations < 1:
        p.error(f"--crf-iterations must be >= 1. Received: {args.crf_iterations}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np

    import deeplab_tf
    from deeplab_tf.data.palettes import cityscapes_palette, voc_palette
    from deeplab_tf.inference.io import ImageReadError, expand_inputs, read_image
    from deeplab_tf.visualize import overlay, save_label_png, save_rgb_png

    paths, errors = expand_inputs(args.images)
    for message in errors:
        print(f"predict.py: error: {message}", file=sys.stderr)
    if not paths:
        print("predict.py: error: no input images found", file=sys.stderr)
        return 2

    try:
        net = deeplab_tf.load_inference_model(args.model, args.weights, args.num_classes)
        model = deeplab_tf.MultiScaleInference(net, scales=args.scales, output="probs")
        crf = (
            deeplab_tf.DenseCRF.from_preset(args.crf_preset, iterations=args.crf_iterations)
            if args.crf
            else None
        )
    except ValueError as err:
        print(f"predict.py: error: {err}", file=sys.stderr)
        return 2
    palette = cityscapes_palette() if model.num_classes == 19 else voc_palette()
    os.makedirs(args.out, exist_ok=True)

    written = 0
    for path in paths:
        try:
            image, _ = read_image(path)  # (H, W, 3) uint8 RGB, whatever the file's format
        except ImageReadError as err:
            print(f"predict.py: error: {err}", file=sys.stderr)
            errors.append(str(err))
            continue
        probs = model(image[None]).numpy()  # (1, H, W, C) at the image's resolution
        label = probs[0].argmax(-1).astype(np.uint8)
        name = os.path.join(args.out, os.path.splitext(os.path.basename(path))[0])
        if crf is not None:
            save_rgb_png(name + "_overlay_before_crf.png", overlay(image, label, palette))
            label = crf(image[None], probs).numpy()[0].argmax(-1).astype(np.uint8)
        save_label_png(name + ".png", label, palette)  # written atomically
        save_rgb_png(name + "_overlay.png", overlay(image, label, palette, args.alpha))
        written += 1
        print(f"{path} -> {name}_overlay.png", flush=True)
    print(f"wrote {written} of {len(paths)} image(s) to {args.out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
