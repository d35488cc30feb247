"""Deployment: TF Serving SavedModels, TFLite files, and inference-time model rewrites."""

from deeplab_tf._lazy import lazy_exports

_OPT = "deeplab_tf.export.optimize"
_SM = "deeplab_tf.export.savedmodel"
_TFL = "deeplab_tf.export.tflite"
_EXPORTS = {
    "fold_batchnorm": _OPT,
    "fuse_for_inference": _OPT,
    "to_bfloat16": _OPT,
    "with_input_shape": _OPT,
    "SIGNATURES": _SM,
    "check_export_target": _SM,
    "export_saved_model": _SM,
    "write_warmup_requests": "deeplab_tf.export.warmup",
    "export_tflite": _TFL,
    "export_tflite_files": _TFL,
    "gpu_incompatible_ops": _TFL,
    "litert_interpreter": _TFL,
    "run_tflite": _TFL,
    "tflite_ops": _TFL,
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
