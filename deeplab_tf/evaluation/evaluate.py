"""Evaluating a model over a segmentation dataset with the streaming confusion matrix."""

from __future__ import annotations

import os
import time

import numpy as np

from deeplab_tf.evaluation.metrics import ConfusionMatrix


def _numpy(x):
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def evaluate(
    predictor,
    dataset,
    num_classes: int,
    ignore_label: int = 255,
    limit: int | None = None,
    progress=None,
    on_example=None,
) -> dict:
    """Runs ``predictor`` over ``dataset`` and scores it.

    Args:
        predictor: callable mapping an ``(H, W, 3)`` uint8 image to ``(H, W, C)`` scores (a
            :class:`~deeplab_tf.inference.Predictor`), or to an ``(H, W)`` label map.
        dataset: iterable (e.g. ``tf.data.Dataset``) of ``{"image", "label", "id"}`` dicts,
            unbatched (``(H, W, 3)``) or batched (``(N, H, W, 3)``).
        num_classes: number of classes.
        ignore_label: ground-truth value left out (255).
        limit: stop after this many images.
        progress: optional object with ``update(n, info)`` (a :class:`Progress`).
        on_example: optional callback ``f(id, image, label, prediction)`` per image.

    Returns:
        The scores of :func:`~deeplab_tf.evaluation.scores_from_confusion` plus
        ``num_images``, ``seconds`` and ``confusion_matrix`` (nested lists, rows ground truth).
    """
    cm = ConfusionMatrix(num_classes, ignore_label)
    count, start = 0, time.perf_counter()
    for element in dataset:
        images, labels = _numpy(element["image"]), _numpy(element["label"])
        ids = _numpy(element["id"]) if "id" in element else None
        if images.ndim == 3:
            images, labels = images[None], labels[None]
            ids = None if ids is None else np.asarray(ids)[None]
        for i in range(len(images)):
            if limit is not None and count >= limit:
                break
            image, label = images[i], labels[i]
            if label.ndim == 3 and label.shape[-1] == 1:
                label = label[..., 0]
            if label.shape != image.shape[:2]:
                raise ValueError(
                    f"label shape {label.shape} does not match image shape {image.shape[:2]}"
                )
            out = np.asarray(predictor(image))
            pred = np.argmax(out, axis=-1) if out.ndim == 3 else out
            cm.update(label, pred)
            name = ids[i] if ids is not None else str(count)
            name = name.decode() if isinstance(name, bytes) else str(name)
            if on_example is not None:
                on_example(name, image, label, pred)
            count += 1
            if progress is not None:
                progress.update(1, name)
        if limit is not None and count >= limit:
            break
    scores = cm.result()
    scores["num_images"] = count
    scores["seconds"] = round(time.perf_counter() - start, 3)
    scores["confusion_matrix"] = cm.matrix.tolist()
    return scores


def write_json(path, obj, overwrite: bool = True):
    """Writes ``obj`` as JSON atomically (NaN written as null).

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    import math

    from deeplab_tf import atomic

    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, list | tuple):
            return [clean(v) for v in o]
        return o

    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    os.makedirs(folder, exist_ok=True)
    return atomic.write_json(path, clean(obj), overwrite)
