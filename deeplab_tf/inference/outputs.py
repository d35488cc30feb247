"""The files ``predict`` writes per image: ``NAME.png``, ``NAME_overlay.png``, ``NAME_probs.npy``.

One implementation for the single-process ``deeplab-tf predict`` and the Beam pipeline
(docs/scale-out.md), so that both write the same bytes for the same scores.
"""

from __future__ import annotations

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
        image: ``(H, W, 3)`` uint8 RGB input.
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
    from deeplab_tf.visualize import legend_strip, overlay, save_label_png, save_rgb_png

    label = np.argmax(probs, axis=-1).astype(np.uint8)
    written = [save_label_png(base + ".png", label, palette, overwrite=overwrite)]
    overlaid = overlay(image, label, palette, alpha)
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
