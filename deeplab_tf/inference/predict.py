"""Predicting label maps for images: whole or tiled, multi-scale, optionally CRF-refined.

:class:`Predictor` turns one ``(H, W, 3)`` image into ``(H, W, C)`` full-resolution scores
with a (multi-scale) model, switching to :func:`sliding_window` for images larger than the
tile size. :func:`load_inference_model` builds the network from a ``.keras`` file or a
registry name plus weights, as the ``predict`` and ``evaluate`` commands do.
"""

from __future__ import annotations

import os

import numpy as np

from deeplab_tf.inference.tiling import _pair, sliding_window
from deeplab_tf.models.deeplab import input_channels_of


class Predictor:
    """Full-resolution scores for single images, whole or tiled.

    Args:
        model: a model returning full-resolution scores, e.g. :class:`MultiScaleInference`.
        tile_size: tile size (int or ``(h, w)``) above which images are tiled; ``None`` or 0
            runs every image whole.
        overlap: tile overlap fraction for tiled images.
        batch_size: tiles per model call.
        crf: optional callable ``crf(images_uint8, probs) -> probs`` on batches (the dense
            CRF); it needs ``model`` to return probabilities.

    Example:
        >>> predictor = Predictor(MultiScaleInference(model), tile_size=513)
        >>> probs = predictor(image)            # (H, W, C) float32
    """

    def __init__(
        self, model, tile_size=None, overlap: float = 1 / 3, batch_size: int = 1, crf=None
    ):
        import tensorflow as tf

        self.model = model
        self.tile_size = _pair(tile_size, "tile_size") if tile_size else None
        self.overlap = float(overlap)
        self.batch_size = int(batch_size)
        self.stride = int(getattr(model, "stride", 8))
        self.crf = crf
        self.channels = input_channels_of(model)
        self._fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def scores(self, image) -> np.ndarray:
        """``(H, W, C)`` float32 model scores for an ``(H, W, channels)`` image (RGB for the
        usual 3 channels; before any CRF)."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != self.channels:
            kind = "RGB" if self.channels == 3 else f"{self.channels} channels"
            raise ValueError(
                f"image must be (H, W, {self.channels}) ({kind}: the model's input_channels). "
                f"Received shape {image.shape}"
            )
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"image is empty. Received shape {image.shape}")
        h, w = image.shape[:2]
        if self.tile_size and (h > self.tile_size[0] or w > self.tile_size[1]):
            return sliding_window(
                self._fn, image, self.tile_size, self.overlap, self.stride, self.batch_size
            )
        return np.asarray(self._fn(image[None]))[0]

    def __call__(self, image) -> np.ndarray:
        """Scores for one image, refined by the CRF when one was given."""
        return self.refine(image, self.scores(image))

    def refine(self, image, probs) -> np.ndarray:
        """``probs``, the ``(H, W, C)`` scores of ``image``, refined by the CRF (if any)."""
        if self.crf is None:
            return probs
        image = np.asarray(image)  # uint8 RGB, or the N channels' own values (float32)
        refined = self.crf(image[None], probs[None])
        return np.asarray(refined.numpy() if hasattr(refined, "numpy") else refined)[0]


def load_inference_model(model, weights=None, num_classes=None):
    """The base (single-scale) network behind ``predict`` / ``evaluate``.

    Args:
        model: a ``keras.Model``, the path of a ``.keras`` file (a DeepLab model or a saved
            :class:`MultiScaleInference`, whose wrapped model is used), or a registry name
            (``deeplab-tf models`` lists them).
        weights: for a registry name: a ``.weights.h5`` file saved from the same architecture.
        num_classes: for a registry name: number of classes (21 when omitted).

    Returns:
        A ``keras.Model`` mapping RGB images to logits.

    Raises:
        ValueError: unknown name, missing file, or arguments that do not fit together.
    """
    import keras

    from deeplab_tf.inference.multiscale import MultiScaleInference
    from deeplab_tf.models.registry import create_model, list_models

    if isinstance(model, keras.Model):
        net = model
    elif str(model).endswith(".keras") or os.path.isfile(str(model)):
        path = str(model)
        if not os.path.isfile(path):
            raise ValueError(f"Model file not found. Received: model={path!r}")
        if weights is not None:
            raise ValueError(
                "weights is for registry names; a .keras file carries its own weights. "
                f"Received: model={path!r}, weights={weights!r}"
            )
        if not path.endswith(".keras"):
            raise ValueError(
                "A model file must be a Keras '.keras' archive (or give a registry name plus "
                f"weights). Received: model={path!r}"
            )
        net = keras.saving.load_model(path, compile=False)
    elif model in list_models():
        if weights is not None and not os.path.isfile(str(weights)):
            raise ValueError(f"Weights file not found. Received: weights={weights!r}")
        net = create_model(model, num_classes=int(num_classes or 21), weights=weights)
    else:
        raise ValueError(
            f"model must be a .keras file or one of {', '.join(list_models())}. "
            f"Received: model={model!r}"
        )
    if isinstance(net, MultiScaleInference):
        net = net.model
    if num_classes is not None and int(net.output_shape[-1]) != int(num_classes):
        raise ValueError(
            f"The model predicts {net.output_shape[-1]} classes but {num_classes} were expected."
        )
    return net
