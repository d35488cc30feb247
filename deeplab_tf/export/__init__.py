"""Deployment: TF Serving SavedModels, TFLite, ONNX and OpenVINO files, inference-time rewrites."""

from deeplab_tf._lazy import lazy_exports

_OPT = "deeplab_tf.export.optimize"
_SM = "deeplab_tf.export.savedmodel"
_TFL = "deeplab_tf.export.tflite"
_ONNX = "deeplab_tf.export.onnx"
_OV = "deeplab_tf.export.openvino"
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
    "export_onnx": _ONNX,
    "onnx_session": _ONNX,
    "run_onnx": _ONNX,
    "export_openvino": _OV,
    "openvino_model": _OV,
    "run_openvino": _OV,
    "inference_function": "deeplab_tf.export.graph",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
