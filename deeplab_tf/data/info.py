"""Dataset metadata shared by every loader, the trainer, the evaluator and the visualisers."""

from __future__ import annotations

import dataclasses

import numpy as np

from deeplab_tf.data.palettes import IGNORE_LABEL, voc_palette
from deeplab_tf.data.readers import RGB_FORMAT, ImageFormat


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a consumer needs to know about a segmentation dataset.

    Attributes:
        name: dataset name (``"voc2012"``, ``"synthetic"``, ``"folder"``...).
        class_names: one name per class id ``0..num_classes-1``.
        palette: ``(256, 3)`` uint8 RGB colours indexed by class id (255 = ignore).
        ignore_label: label value excluded from losses and metrics.
        num_examples: number of examples in the split, when known.
        image_format: channels and dtype of the images (:class:`ImageFormat`): RGB uint8, or
            what a folder of ``.npy`` / multi-channel TIFF images holds.
    """

    name: str
    class_names: tuple
    palette: np.ndarray = dataclasses.field(default_factory=voc_palette, compare=False)
    ignore_label: int = IGNORE_LABEL
    num_examples: int | None = None
    image_format: ImageFormat = dataclasses.field(default=RGB_FORMAT, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if not self.class_names:
            raise ValueError(f"class_names must not be empty. Received: {self.class_names!r}")
        palette = np.asarray(self.palette, dtype=np.uint8)
        if palette.ndim != 2 or palette.shape[1] != 3 or palette.shape[0] < len(self.class_names):
            raise ValueError(
                "palette must be (K, 3) with K >= num_classes. "
                f"Received shape {palette.shape} for {len(self.class_names)} classes"
            )
        if palette.shape[0] < 256:
            palette = np.concatenate([palette, np.zeros((256 - len(palette), 3), np.uint8)])
        object.__setattr__(self, "palette", palette)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
