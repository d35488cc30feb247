"""Model builders: backbones, heads, the DeepLabV2 builder and the registry of named variants."""

from deeplab_tf._lazy import lazy_exports

_DEEPLAB = "deeplab_tf.models.deeplab"
_REGISTRY = "deeplab_tf.models.registry"
_EXPORTS = {
    "BACKBONES": _DEEPLAB,
    "HEADS": _DEEPLAB,
    "DeepLabV2": _DEEPLAB,
    "Logits": _DEEPLAB,
    "output_stride_of": _DEEPLAB,
    "create_model": _REGISTRY,
    "get_model_config": _REGISTRY,
    "list_models": _REGISTRY,
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
