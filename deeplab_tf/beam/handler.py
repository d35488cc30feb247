"""A ``RunInference`` model handler for DeepLab: MSC + dense CRF per element.

The model (a ``.keras`` file, a registry name plus ``.weights.h5``, or a weights preset) is
loaded once per worker process by ``RunInference``'s shared handle; a ``gs://`` model file is
copied to the worker's local disk first (docs/scale-out.md#how-the-model-file-reaches-workers).
Each batch holds images of one size at most: a batch from ``BatchElements`` is split by image
size, every group of more than one untiled image runs as one model call, and the CRF runs per
image. Per-element failures become the element's result (an exception) instead of failing
the bundle, so that the pipeline routes them to the dead-letter output.
"""

from __future__ import annotations

import time

import numpy as np

from deeplab_tf.beam._require import NAMESPACE, import_beam

beam = import_beam()
from apache_beam.ml.inference.base import ModelHandler, PredictionResult  # noqa: E402

#: The keys of a predictor's settings (the ``settings`` of a ``predict`` / ``evaluate`` report).
SETTINGS_KEYS = (
    "model", "weights", "preset", "num_classes", "scales", "fusion", "flip", "upsample",
    "fuse_at", "tile_size", "overlap", "crf",
)  # fmt: skip


def predictor_from_settings(settings: dict):
    """Builds the :class:`~deeplab_tf.inference.Predictor` that ``settings`` describe.

    Args:
        settings: ``model`` (a ``.keras`` path, local or on a Beam file system, or a registry
            name), ``weights``, ``preset`` (a weights preset instead of ``model``),
            ``num_classes``, the :class:`~deeplab_tf.inference.MultiScaleInference` options
            ``scales`` / ``fusion`` / ``flip`` / ``upsample`` / ``fuse_at``, ``tile_size``,
            ``overlap`` and ``crf`` (None, or a :class:`~deeplab_tf.crf.DenseCRF` config).

    Raises:
        ValueError: unknown keys, or what the model loader and the wrapper refuse.
    """
    from deeplab_tf.beam.filesystems import local_copy
    from deeplab_tf.inference.multiscale import MultiScaleInference
    from deeplab_tf.inference.predict import Predictor, load_inference_model

    unknown = sorted(set(settings) - set(SETTINGS_KEYS) - {"classes", "channels"})
    if unknown:
        raise ValueError(f"Unknown predictor settings {unknown}; expected {list(SETTINGS_KEYS)}")
    model_path = settings.get("model")
    saved = bool(model_path) and is_saved_model(model_path)
    if saved:
        net = SavedModelScores(model_path)
        fixed = {"scales": [1.0], "flip": False, "fusion": "max"}
        changed = {k: settings.get(k) for k, v in fixed.items() if settings.get(k, v) != v}
        if changed or settings.get("weights"):
            raise ValueError(
                "An exported SavedModel has its multi-scale settings built in at export "
                f"(deeplab-tf export --scales ...); leave {sorted(changed) or ['weights']} at "
                f"their defaults. Received: {changed or settings.get('weights')}"
            )
        msc = net
    elif settings.get("preset"):
        from deeplab_tf.models.deeplab import DeepLabV2

        net = load_inference_model(DeepLabV2.from_preset(settings["preset"]))
    else:
        with local_copy(settings["model"]) as model:
            weights = settings.get("weights")
            with local_copy(weights) if weights else _nothing() as weights:
                net = load_inference_model(model, weights, settings.get("num_classes"))
    if not saved:
        msc = _wrap(net, settings, MultiScaleInference)
    crf = None
    if settings.get("crf"):
        from deeplab_tf.crf import DenseCRF

        config = {k: v for k, v in settings["crf"].items() if k != "preset"}
        crf = DenseCRF.from_config(config)
    return Predictor(
        msc,
        tile_size=settings.get("tile_size") or None,
        overlap=settings.get("overlap", 1 / 3),
        crf=crf,
    )


def _wrap(net, settings, MultiScaleInference):
    scales = list(settings.get("scales") or [1.0])
    return MultiScaleInference(
        net,
        scales=scales,
        fusion=settings.get("fusion", "max"),
        flip=bool(settings.get("flip", False)),
        upsample=settings.get("upsample", "caffe"),
        output="probs",
        fuse_at=settings.get("fuse_at", "logits") if 1.0 in scales else "image",
    )


def is_saved_model(path) -> bool:
    """Whether ``path`` is a SavedModel folder (``deeplab-tf export``'s version folder)."""
    from deeplab_tf.beam.filesystems import exists, join

    return exists(join(path, "saved_model.pb"))


class SavedModelScores:
    """An exported SavedModel (``deeplab_tf.export``) as the predictor's model: its
    ``serving_default`` signature maps float32 RGB images to full-resolution
    ``probabilities`` (multi-scale settings as exported). Read with ``tf.saved_model.load``,
    which reads ``gs://`` and other ``tf.io.gfile`` paths itself."""

    stride = 8

    def __init__(self, path):
        import tensorflow as tf

        self.path = str(path)
        self._loaded = tf.saved_model.load(self.path)
        self._fn = self._loaded.signatures["serving_default"]
        self.num_classes = int(self._fn.structured_outputs["probabilities"].shape[-1])

    def __call__(self, images, training=False):
        import tensorflow as tf

        return self._fn(images=tf.cast(images, tf.float32))["probabilities"]


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


class DeepLabModelHandler(ModelHandler):
    """``RunInference`` handler: elements are dicts with an ``"image"`` ``(H, W, 3)`` uint8
    array (other keys are passed through); each result's ``inference`` is the ``(H, W, C)``
    float32 (CRF-refined) probabilities, or the exception that image raised.

    Args:
        settings: see :func:`predictor_from_settings`.
        batch_size: most images per model call (images of one size only). 1 (the default)
            gives scores bit-identical to the single-process ``predict``; larger batches
            differ in the last float bits (oneDNN picks other kernels).
    """

    def __init__(self, settings: dict, batch_size: int = 1):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1. Received: batch_size={batch_size!r}")
        self._settings = dict(settings)
        self._batch_size = int(batch_size)
        super().__init__()

    def load_model(self):
        return predictor_from_settings(self._settings)

    def batch_elements_kwargs(self):
        return {"min_batch_size": 1, "max_batch_size": self._batch_size}

    def share_model_across_processes(self) -> bool:
        return False

    def run_inference(self, batch, model, inference_args=None):
        crf_ms = beam.metrics.Metrics.distribution(NAMESPACE, "crf_ms")
        model_ms = beam.metrics.Metrics.distribution(NAMESPACE, "model_ms")
        results = [None] * len(batch)
        groups: dict = {}
        for i, element in enumerate(batch):
            groups.setdefault(np.shape(element["image"]), []).append(i)
        for shape, idx in groups.items():
            scores = {}
            tiled = model.tile_size and (
                shape[0] > model.tile_size[0] or shape[1] > model.tile_size[1]
            )
            start = time.perf_counter()
            if len(idx) > 1 and not tiled and len(shape) == 3:
                try:
                    stacked = np.stack([batch[i]["image"] for i in idx])
                    scores = dict(zip(idx, np.asarray(model._fn(stacked))))
                except Exception:  # noqa: BLE001 - retried image by image below
                    scores = {}
            for i in idx:
                if i not in scores:
                    try:
                        scores[i] = model.scores(batch[i]["image"])
                    except Exception as err:  # noqa: BLE001 - the element's dead letter
                        scores[i] = err
            model_ms.update(int(1000 * (time.perf_counter() - start) / len(idx)))
            for i in idx:
                probs = scores[i]
                if not isinstance(probs, Exception) and model.crf is not None:
                    start = time.perf_counter()
                    try:
                        probs = model.refine(batch[i]["image"], probs)
                    except Exception as err:  # noqa: BLE001 - the element's dead letter
                        probs = err
                    crf_ms.update(int(1000 * (time.perf_counter() - start)))
                results[i] = PredictionResult(batch[i], probs)
        return results

    def get_num_bytes(self, batch) -> int:
        return sum(int(np.asarray(e["image"]).nbytes) for e in batch)
