"""Multi-scale (MSC) training under ``model.fit`` (Chen et al., TPAMI 2017, sections 3.2, 4.1).

The same network runs on the image at scales 1, 0.75 and 0.5 (the authors' ResNet-101 MSC
prototxt); the smaller score maps are upsampled bilinearly (corners aligned, Caffe ``Interp``) to
the 1x score map's size and fused by an element-wise max. The training loss is the sum of four
losses (each scale and the fusion), each against the label shrunk to that output's size.

Branching, resizing and fusion are :mod:`deeplab_tf.models.multiscale`'s, shared with
multi-scale inference (:class:`deeplab_tf.inference.multiscale.MultiScaleInference`).
"""

from __future__ import annotations

import keras

from deeplab_tf.layers import PACKAGE
from deeplab_tf.models.multiscale import MultiScaleWrapper, check_model, fuse_on_logit_grid


def _scale_key(scale: float) -> str:
    return f"scale_{scale:g}"


@keras.saving.register_keras_serializable(package=PACKAGE)
class MultiScaleTraining(MultiScaleWrapper):
    """Wraps a DeepLab model for MSC training under plain ``model.fit``.

    Inference (``training`` false: ``predict``, ``evaluate``, export) returns the max-fused
    logits at the 1x output size, so the wrapper is a drop-in segmentation model. In training
    it returns a dict ``{"fused", "scale_1", "scale_0.75", "scale_0.5"}`` and the loss is the sum
    of the compiled loss over the four entries (each shrinks the label to its own size); metrics
    see the fused logits. Weights are shared: the wrapped model is called at each scale.

    The fused logits are those of :class:`~deeplab_tf.inference.multiscale.MultiScaleInference`
    with the same scales, ``fusion="max"`` and ``output="logits"`` before its upsampling to
    the image (the two share :mod:`deeplab_tf.models.multiscale`).

    Registered as ``deeplab_tf>MultiScaleTraining``; ``.keras`` files written before the rename
    (``deeplab_tf>MultiScaleModel``) load as this class. ``MultiScaleModel`` remains as an alias
    of this class, for compatibility only.

    Args:
        model: a DeepLab ``keras.Model`` (images in, stride-8 logits out).
        scales: input scales; the first must be 1 (the fusion happens at its size).
        name: model name (defaults to ``"{model.name}_msc"``).

    Example:
        >>> msc = MultiScaleTraining(create_model("deeplabv2_resnet101_aspp_l"))
        >>> msc.compile(**deeplab_tf.recipes.paper("resnet101"))
        >>> msc.fit(train_batches, steps_per_epoch=1000, epochs=20)
    """

    def __init__(self, model, scales=(1.0, 0.75, 0.5), name=None, **kwargs):
        check_model(model)
        super().__init__(model, scales, name=name or f"{model.name}_msc", **kwargs)
        if self.scales[0] != 1.0:
            raise ValueError(
                "MSC training fuses on the grid of the 1x scores, so scales must start with "
                f"1.0. Received: scales={self.scales!r}"
            )
        if model.built:
            # Weights exist already (shared with the wrapped model): callbacks such as
            # BackupAndRestore require a built model before fit().
            self.build(None)

    def _all_scales(self, images, training):
        branches = self.run_branches(images, training=training)
        outputs = {_scale_key(b.scale): b.logits for b in branches}
        outputs["fused"] = fuse_on_logit_grid(branches, fusion="max", mode="caffe")
        return outputs

    def call(self, images, training=None):
        outputs = self._all_scales(images, training)
        return outputs if training else outputs["fused"]

    def compute_output_spec(self, images, training=None):
        return self.model.compute_output_spec(images)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if not isinstance(y_pred, dict):
            return super().compute_loss(x, y, y_pred, sample_weight, training)
        # Compiled loss on the fused output (plus any regularisation losses, counted once) ...
        total = super().compute_loss(x, y, y_pred["fused"], sample_weight, training)
        loss_fn = keras.losses.get(self.loss) if not callable(self.loss) else self.loss
        # ... plus the same loss on each scale's own output.
        for s in self.scales:
            total = total + loss_fn(y, y_pred[_scale_key(s)])
        return total

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if isinstance(y_pred, dict):
            y_pred = y_pred["fused"]
        return super().compute_metrics(x, y, y_pred, sample_weight)


#: The name before the rename; kept for compatibility (code importing it).
MultiScaleModel = MultiScaleTraining

# ``.keras`` files written before the rename record ``deeplab_tf>MultiScaleModel``.
keras.saving.get_custom_objects()[f"{PACKAGE}>MultiScaleModel"] = MultiScaleTraining
