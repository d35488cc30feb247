"""The DoFns and the CombineFn of the pipelines (docs/scale-out.md).

Every failure of one element (a corrupt image, a failed inference, an unwritable output) is
emitted on the ``DEAD_LETTER`` output as ``{"input", "error"}`` instead of failing the bundle,
and counted in the ``failures`` metric; the other elements complete.
"""

from __future__ import annotations

import numpy as np

from deeplab_tf.beam._require import NAMESPACE, import_beam

beam = import_beam()

#: Tag of the dead-letter outputs.
DEAD_LETTER = "dead_letter"


def _counter(name):
    return beam.metrics.Metrics.counter(NAMESPACE, name)


def _message(err) -> str:
    """One line: the error's first line (TensorFlow's graph errors: their last)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    if lines[0].startswith("Graph execution error") and len(lines) > 1:
        return f"{type(err).__name__}: {lines[-1]}"
    return lines[0] if lines[0].startswith("/") else f"{type(err).__name__}: {lines[0]}"


def dead_letter(name, err):
    _counter("failures").inc()
    return beam.pvalue.TaggedOutput(DEAD_LETTER, {"input": str(name), "error": _message(err)})


class DecodeImage(beam.DoFn):
    """``(input path, output base)`` -> ``{"input", "base", "image"}`` with the package's
    image reader (:func:`deeplab_tf.inference.io.read_image`: EXIF orientation applied, at most
    ``max_pixels``, ``channels`` as the model takes), as ``deeplab-tf predict`` reads; failures
    to the dead letter."""

    def __init__(self, max_pixels: int, channels: int = 3):
        self.max_pixels, self.channels = int(max_pixels), int(channels)

    def process(self, item):
        from deeplab_tf.beam.filesystems import local_copy
        from deeplab_tf.inference.io import read_image

        path, base = item
        try:
            with local_copy(path) as local:
                image, _ = read_image(local, self.max_pixels, self.channels)
        except Exception as err:  # noqa: BLE001 - one bad image must not stop the job
            yield dead_letter(path, err)
            return
        _counter("images_read").inc()
        yield {"input": path, "base": base, "image": image}


class DecodeExample(beam.DoFn):
    """A dataset example -> ``{"input", "image", "label"}`` with
    :func:`deeplab_tf.data.readers.decode_example` (what ``load_dataset`` decodes)."""

    def __init__(self, label_map, rgb_palette=None):
        self.label_map, self.rgb_palette = label_map, rgb_palette

    def process(self, example):
        from deeplab_tf.beam.filesystems import local_copy
        from deeplab_tf.data.readers import Example, decode_example

        ex_id, image_path, label_path, label_format = example
        try:
            with local_copy(image_path) as img, local_copy(label_path) as lab:
                image, label = decode_example(
                    Example(ex_id, img, lab, label_format), self.label_map, self.rgb_palette
                )
        except Exception as err:  # noqa: BLE001 - one bad example must not stop the job
            yield dead_letter(image_path, err)
            return
        _counter("images_read").inc()
        yield {"input": image_path, "id": ex_id, "image": image, "label": label}


class WriteOutputs(beam.DoFn):
    """A ``PredictionResult`` -> the files of ``predict`` (``NAME.png``, ``NAME_overlay.png``,
    optionally ``NAME_probs.npy``) through :func:`deeplab_tf.inference.outputs.write_prediction`,
    each file temp-then-rename; an output of an earlier attempt is replaced by identical bytes
    (idempotent). Yields the input path."""

    def __init__(self, palette_name, alpha, legend, with_probs):
        self.palette_name, self.alpha = palette_name, float(alpha)
        self.legend, self.with_probs = bool(legend), bool(with_probs)

    def setup(self):
        from deeplab_tf.data.palettes import label_set

        self.class_names, self.palette = label_set(self.palette_name)

    def process(self, result):
        from deeplab_tf.beam.filesystems import staged_base
        from deeplab_tf.inference.outputs import write_prediction

        element, probs = result.example, result.inference
        if isinstance(probs, Exception):
            yield dead_letter(element["input"], probs)
            return
        names = self.class_names if len(self.class_names) == probs.shape[-1] else None
        try:
            with staged_base(element["base"]) as (base, finish):
                files = write_prediction(
                    base, element["image"], probs, self.palette, self.alpha, self.legend,
                    names, self.with_probs, overwrite=True,
                )  # fmt: skip
                finish(files)
        except Exception as err:  # noqa: BLE001 - one unwritable output must not stop the job
            yield dead_letter(element["input"], err)
            return
        _counter("images_done").inc()
        yield element["input"]


class ToConfusion(beam.DoFn):
    """A ``PredictionResult`` of a dataset example -> its ``(C, C)`` confusion matrix
    (:func:`deeplab_tf.evaluation.metrics.confusion_matrix`, the rule of ``evaluate``)."""

    def __init__(self, num_classes: int, ignore_label):
        self.num_classes, self.ignore_label = int(num_classes), ignore_label

    def process(self, result):
        from deeplab_tf.evaluation.metrics import confusion_matrix

        element, probs = result.example, result.inference
        if isinstance(probs, Exception):
            yield dead_letter(element["input"], probs)
            return
        try:
            pred = np.argmax(probs, axis=-1)
            cm = confusion_matrix(element["label"], pred, self.num_classes, self.ignore_label)
        except Exception as err:  # noqa: BLE001
            yield dead_letter(element["input"], err)
            return
        _counter("images_done").inc()
        yield cm


class ConfusionMatrixCombineFn(beam.CombineFn):
    """Sums per-image confusion matrices (int64, so exactly) and counts the images: the
    output is ``{"confusion_matrix": (C, C) list, "num_images": n}``."""

    def __init__(self, num_classes: int):
        self.num_classes = int(num_classes)

    def create_accumulator(self):
        return np.zeros((self.num_classes, self.num_classes), np.int64), 0

    def add_input(self, accumulator, cm):
        matrix, n = accumulator
        return matrix + np.asarray(cm, np.int64), n + 1

    def merge_accumulators(self, accumulators):
        matrix, n = self.create_accumulator()
        for m, k in accumulators:
            matrix, n = matrix + m, n + k
        return matrix, n

    def extract_output(self, accumulator):
        matrix, n = accumulator
        return {"confusion_matrix": matrix.tolist(), "num_images": int(n)}
