"""Datasets: loaders that yield ``{"image", "label", "id"}`` dicts, plus their metadata.

``load_dataset(name, split, root)`` reads PASCAL VOC 2012 (+ SBD train_aug), Cityscapes,
PASCAL-Context, PASCAL-Person-Part, COCO-Stuff 10k and 164k, COCO 2014 (semantic masks made from
the instances JSON), a folder of image/mask pairs, or synthetic data, and returns
``(tf.data.Dataset, DatasetInfo)``; ``pseudo_labels=FOLDER`` replaces any file dataset's labels.
TensorFlow is imported only when a dataset is built.
"""

from deeplab_tf.data.info import DatasetInfo
from deeplab_tf.data.loader import list_dataset, list_datasets, load_dataset, make_dataset
from deeplab_tf.data.palettes import (
    CITYSCAPES_CLASSES,
    CONTEXT_CLASSES,
    IGNORE_LABEL,
    PERSON_PART_CLASSES,
    VOC_CLASSES,
    cityscapes_palette,
    colorize,
    context_palette,
    person_part_palette,
    voc_palette,
)
from deeplab_tf.data.readers import DatasetError, Example, LabelMap

__all__ = [
    "CITYSCAPES_CLASSES",
    "CONTEXT_CLASSES",
    "IGNORE_LABEL",
    "PERSON_PART_CLASSES",
    "VOC_CLASSES",
    "DatasetError",
    "DatasetInfo",
    "Example",
    "LabelMap",
    "cityscapes_palette",
    "colorize",
    "context_palette",
    "list_dataset",
    "list_datasets",
    "load_dataset",
    "make_dataset",
    "person_part_palette",
    "voc_palette",
]
