"""Multi-scale (MSC) training (paper Sec. 3.2, Table 4; the authors' ResNet-101 MSC prototxt).

The same network runs on the image at scales 1, 0.75 and 0.5; the smaller score maps are
upsampled bilinearly (corners aligned, Caffe ``Interp``) to the 1x score map's size and fused by
an element-wise max. The training loss is the sum of four losses (each scale and the fusion),
each against the label shrunk to that output's size.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from deeplab_tf.layers import resize_by_scale

PACKAGE = "deeplab_tf"


def _scale_key(scale: float) -> str:
    return f"scale_{scale:g}"


@keras.saving.register_keras_serializable(package=PACKAGE)
class MultiScaleModel(keras.Model):
    """Wraps a DeepLab model for MSC training under plain ``model.fit``.

    Inference (``training`` false: ``predict``, ``evaluate``, export) returns the max-fused
    logits at the 1x output size, so the wrapper is a drop-in segmentation model. In training
    it returns a dict ``{"fused", "scale_1", "scale_0.75", "scale_0.5"}`` and the loss is the sum
    of the compiled loss over the four entries (each shrinks the label to its own size); metrics
    see the fused logits. Weights are shared: the wrapped model is called at each scale.

    Args:
        model: a DeepLab ``keras.Model`` (images in, stride-8 logits out).
        scales: input scales; the first must be 1 (the fusion happens at its size).
        name: model name (defaults to ``"{model.name}_msc"``).

    Example:
        >>> msc = MultiScaleModel(create_model("deeplabv2_resnet101_aspp_l"))
        >>> msc.compile(**deeplab_tf.recipes.paper("resnet101"))
        >>> msc.fit(train_batches, steps_per_epoch=1000, epochs=20)
    """

    def __init__(self, model, scales=(1.0, 0.75, 0.5), name=None, **kwargs):
        super().__init__(name=name or f"{model.name}_msc", **kwargs)
        scales = tuple(float(s) for s in scales)
        if (
            not scales
            or scales[0] != 1.0
            or any(not 0 < s <= 4 for s in scales)
            or len(set(scales)) != len(scales)
        ):
            raise ValueError(
                "scales must be distinct values in (0, 4] starting with 1.0. "
                f"Received: scales={scales!r}"
            )
        if not isinstance(model, keras.Model):
            raise ValueError(f"model must be a keras.Model. Received: {type(model).__name__}")
        self.model = model
        self.scales = scales
        if model.built:
            # Weights exist already (shared with the wrapped model): callbacks such as
            # BackupAndRestore require a built model before fit().
            self.build(None)

    def build(self, input_shape):
        if not self.model.built:
            self.model.build(input_shape)
        self.built = True

    def _all_scales(self, images, training):
        outputs = {}
        base = None
        for s in self.scales:
            x = images if s == 1.0 else resize_by_scale(tf.cast(images, tf.float32), s)
            logits = self.model(x, training=training)
            if base is None:
                base = logits
            outputs[_scale_key(s)] = logits
        size = tf.shape(base)[1:3]
        fused = base
        for s in self.scales[1:]:
            up = tf.raw_ops.ResizeBilinear(
                images=tf.cast(outputs[_scale_key(s)], tf.float32), size=size, align_corners=True
            )
            fused = tf.maximum(fused, tf.cast(up, base.dtype))
        outputs["fused"] = fused
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

    def get_config(self):
        return {
            "name": self.name,
            "model": keras.saving.serialize_keras_object(self.model),
            "scales": list(self.scales),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(
            config["model"], custom_objects=custom_objects
        )
        return cls(**config)
