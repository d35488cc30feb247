"""Inference: the multi-scale wrapper model, sliding windows, image I/O and prediction."""

from deeplab_tf.inference.io import ImageReadError, atomic_write, expand_inputs, read_image
from deeplab_tf.inference.multiscale import MultiScale
from deeplab_tf.inference.predict import Predictor, load_inference_model
from deeplab_tf.inference.sliding_window import sliding_window, tile_cores, tile_starts

__all__ = [
    "ImageReadError",
    "MultiScale",
    "Predictor",
    "atomic_write",
    "expand_inputs",
    "load_inference_model",
    "read_image",
    "sliding_window",
    "tile_cores",
    "tile_starts",
]
