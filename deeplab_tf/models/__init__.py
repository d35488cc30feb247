"""Model builders: backbones, heads, the DeepLabV2 builder and the registry of named variants."""

from deeplab_tf.models.deeplab import BACKBONES, HEADS, DeepLabV2, Logits, output_stride_of
from deeplab_tf.models.registry import create_model, get_model_config, list_models

__all__ = [
    "BACKBONES",
    "HEADS",
    "DeepLabV2",
    "Logits",
    "create_model",
    "get_model_config",
    "list_models",
    "output_stride_of",
]
