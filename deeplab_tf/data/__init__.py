"""Datasets: loaders that yield ``{"image", "label", "id"}`` dicts, plus their metadata."""

from deeplab_tf.data.info import DatasetInfo
from deeplab_tf.data.palettes import IGNORE_LABEL, colorize, voc_palette

__all__ = ["IGNORE_LABEL", "DatasetInfo", "colorize", "voc_palette"]
