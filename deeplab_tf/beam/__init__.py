"""Scale-out of inference, the dense CRF and evaluation on Apache Beam (docs/scale-out.md).

``predict_pipeline`` and ``evaluate_pipeline`` run the single-process ``predict`` /
``evaluate`` computations as Beam pipelines (``RunInference`` with
:class:`DeepLabModelHandler`), on any runner. Needs ``pip install "deeplab_tf[beam]"``; names
are imported lazily so that ``import deeplab_tf.beam`` alone does not import Beam.
"""

from __future__ import annotations

from deeplab_tf._lazy import lazy_exports

_EXPORTS = {
    "predict_pipeline": "deeplab_tf.beam.pipeline",
    "evaluate_pipeline": "deeplab_tf.beam.pipeline",
    "DeepLabModelHandler": "deeplab_tf.beam.handler",
    "predictor_from_settings": "deeplab_tf.beam.handler",
    "ConfusionMatrixCombineFn": "deeplab_tf.beam.transforms",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
