"""The files ``predict`` writes per image: ``NAME.png``, ``NAME_overlay.png``, ``NAME_probs.npy``.

One implementation for the single-process ``deeplab-tf predict`` and the Beam pipeline
(docs/scale-out.md), so that both write the same bytes for the same scores.
"""

from __future__ import annotations

import os

#: Suffixes of the files written for every image (``_probs.npy`` is optional).
OUTPUT_SUFFIXES = (".png", "_overlay.png")
PROBS_SUFFIX = "_probs.npy"


def write_prediction(
    base,
    image,
    probs,
    palette,
    alpha: float = 0.55,
    legend: bool = False,
    class_names=None,
    with_probs: bool = False,
    overwrite: bool = True,
) -> list[str]:
    """Writes the outputs of one image, each atomically (:mod:`deeplab_tf.atomic`).

    Args:
        base: output path without suffix (``out/NAME``).
        image: the model's input: ``(H, W, 3)`` uint8 RGB, or an N-channel array (the overlay
            then shows :func:`deeplab_tf.visualize.display_image` of it).
        probs: ``(H, W, C)`` scores; the label map is their argmax.
        palette: ``(256, 3)`` label colours.
        alpha: overlay opacity.
        legend: add a legend strip below the overlay.
        class_names: names for the legend (None: class ids).
        with_probs: also write ``NAME_probs.npy`` (float16).
        overwrite: replace existing files (else :class:`FileExistsError`).

    Returns:
        The paths written.
    """
    import numpy as np

    from deeplab_tf.atomic import atomic_write
    from deeplab_tf.visualize import (
        display_image,
        legend_strip,
        overlay,
        save_label_png,
        save_rgb_png,
    )

    label = np.argmax(probs, axis=-1).astype(np.uint8)
    written = [save_label_png(base + ".png", label, palette, overwrite=overwrite)]
    overlaid = overlay(display_image(image), label, palette, alpha)
    if legend:
        strip = legend_strip(label, palette, class_names, overlaid.shape[1])
        overlaid = np.concatenate([overlaid, strip], axis=0)
    written.append(save_rgb_png(base + "_overlay.png", overlaid, overwrite=overwrite))
    if with_probs:
        half = np.asarray(probs).astype(np.float16)
        written.append(
            atomic_write(base + PROBS_SUFFIX, lambda t, a=half: np.save(t, a), overwrite)
        )
    return written


def plan_outputs(
    paths,
    out,
    probs: bool = False,
    protected=(),
    overwrite: bool = False,
    check_files=True,
    names=None,
):
    """The output files of each input, checked before any work.

    Args:
        paths: input image paths.
        out: output folder.
        probs: also plan ``NAME_probs.npy``.
        protected: other files the run reads (the model, its weights).
        overwrite: whether outputs that exist already may be replaced.
        check_files: check the files on disk (False: names only, for an object store).
        names: the output name of each input (a dataset's example ids, from
            :func:`~deeplab_tf.inference.io.dataset_inputs`); default: the file's stem.

    Returns:
        A list of ``(input, base)``: the outputs of ``input`` are ``base + suffix``.

    Raises:
        OutputError: an output resolves to an input or to another output of this run (two
            inputs ``a.jpg`` and ``a.png`` both give ``a.png``; two examples of one name), or
            exists and ``overwrite`` is False; the message names the files involved.
    """
    from deeplab_tf.atomic import OutputError, check_outputs

    suffixes = OUTPUT_SUFFIXES + ((PROBS_SUFFIX,) if probs else ())
    plan, outputs, owner = [], [], {}
    if names is not None and len(names) != len(paths):
        raise ValueError(f"{len(names)} names for {len(paths)} inputs")
    for i, path in enumerate(paths):
        stem = names[i] if names is not None else os.path.splitext(os.path.basename(path))[0]
        stem = stem or "image"
        base = os.path.join(out, stem)
        for suffix in suffixes:
            key = os.path.normcase(os.path.realpath(base + suffix))
            if key in owner:
                raise OutputError(
                    f"inputs {owner[key]!r} and {path!r} would both write {base + suffix!r}; "
                    "predict them into separate --out folders, or rename one"
                )
            owner[key] = path
            outputs.append(("output", base + suffix))
        plan.append((path, base))
    if check_files:
        inputs = [("an input image", p) for p in paths] + [("a model file", p) for p in protected]
        check_outputs(outputs, inputs, overwrite)
    return plan
