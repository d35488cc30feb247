"""Multi-scale inference as a Keras model (Chen et al., TPAMI 2017, sections 3.2, 4.1, Table 4).

The paper's test-time recipe runs the same network on the image at scales 1, 0.75 and 0.5,
brings the smaller score maps to the size of the 1x scores with Caffe's corner-aligned
``Interp``, fuses them with an element-wise max and upsamples the fused stride-8 scores to the
image (``Interp`` with zoom 8, then crop). :class:`MultiScaleInference` reproduces that order by
default and adds the common extensions: mean fusion, horizontal flips, any scale list, the
half-pixel upsampling rule, and fusion at image resolution.

Branching, resizing and fusion are :mod:`deeplab_tf.models.multiscale`'s, shared with MSC
training (:class:`deeplab_tf.training.msc.MultiScaleTraining`).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from deeplab_tf.layers import PACKAGE, check_images, resize_logits
from deeplab_tf.models.deeplab import input_channels_of, output_stride_of
from deeplab_tf.models.multiscale import (
    FUSE_AT,
    FUSIONS,
    UPSAMPLE_MODES,
    MultiScaleWrapper,
    fuse_on_image,
    fuse_on_logit_grid,
)

OUTPUTS = ("probs", "logits")


@keras.saving.register_keras_serializable(package=PACKAGE)
class MultiScaleInference(MultiScaleWrapper):
    """Wraps a DeepLab model for multi-scale (and flipped) full-resolution inference.

    The wrapped model shares its weights with the wrapper; the wrapper is itself a
    ``keras.Model``: it serializes with the wrapped model inside its config, saves to
    ``.keras`` and reloads in safe mode, and works with ``predict``.

    For each scale ``s`` the image is shrunk (or grown) to ``floor(H * s)`` with corner
    alignment (as the authors' MSC prototxts do) and run through the model; with ``flip`` the
    mirrored image is run too and its scores mirrored back. Then, with ``fuse_at="logits"``
    (the paper), every score map is resized to the grid of the 1x scores, fused, and the fused
    scores are upsampled to the image with ``upsample``'s rule; with ``fuse_at="image"`` every
    score map is first upsampled to its own image size with that rule, mirrored back at pixel
    level (exact for any width), resized to the input size and fused there.

    Fusion ``"max"`` takes the element-wise maximum of the logits (the paper). Fusion ``"mean"``
    averages the softmax probabilities (DeepLab v3 practice); its "logits" are the logarithm of
    the mean probability, so their softmax is that mean.

    With ``fusion="max"``, ``output="logits"`` and ``fuse_at="logits"``, the scores before the
    upsampling to the image are the fused output of
    :class:`~deeplab_tf.training.msc.MultiScaleTraining` with the same scales.

    Registered as ``deeplab_tf>MultiScaleInference``; ``.keras`` files written before the rename
    (``deeplab_tf>MultiScale``) load as this class. ``MultiScale`` remains as an alias of this
    class, for compatibility only.

    Args:
        model: a model mapping RGB 0..255 images ``(N, H, W, 3)`` to logits at its output
            stride (``output_stride_of(model)``; 8 for DeepLab v2).
        scales: image scales, each in (0, 4]. ``fuse_at="logits"`` needs 1.0 among them.
        fusion: ``"max"`` or ``"mean"``.
        flip: also run horizontally mirrored images.
        upsample: ``"caffe"`` (corner-aligned zoom by the stride then crop; what converted
            Caffe weights expect) or ``"half_pixel"`` (``tf.image.resize``).
        output: ``"probs"`` (softmax) or ``"logits"``.
        fuse_at: ``"logits"`` (fuse at the 1x score grid, then upsample; the paper) or
            ``"image"`` (upsample each branch, then fuse).
        name: model name.

    Returns:
        Called on ``(N, H, W, 3)`` images (uint8 or float, RGB, 0..255), the model returns
        ``(N, H, W, C)`` float32 probabilities or logits.

    Example:
        >>> model = deeplab_tf.DeepLabV2("resnet101", "aspp_l", num_classes=21)
        >>> msc = deeplab_tf.MultiScaleInference(model, scales=(1.0, 0.75, 0.5), fusion="max")
        >>> probs = msc.predict(images)          # (N, H, W, 21)
    """

    def __init__(
        self,
        model,
        scales=(1.0, 0.75, 0.5),
        fusion: str = "max",
        flip: bool = False,
        upsample: str = "caffe",
        output: str = "probs",
        fuse_at: str = "logits",
        name: str = "multiscale",
        **kwargs,
    ):
        super().__init__(model, scales, name=name, **kwargs)
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}. Received: fusion={fusion!r}")
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(
                f"upsample must be one of {UPSAMPLE_MODES}. Received: upsample={upsample!r}"
            )
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}. Received: output={output!r}")
        if fuse_at not in FUSE_AT:
            raise ValueError(f"fuse_at must be one of {FUSE_AT}. Received: fuse_at={fuse_at!r}")
        if fuse_at == "logits" and 1.0 not in self.scales:
            raise ValueError(
                "fuse_at='logits' fuses on the grid of the 1x scores, so scales must include "
                f"1.0 (or use fuse_at='image'). Received: scales={self.scales!r}"
            )
        self.fusion = fusion
        self.flip = bool(flip)
        self.upsample = upsample
        self.output_type = output
        self.fuse_at = fuse_at
        self.stride = int(output_stride_of(model))
        self.num_classes = int(model.output_shape[-1])
        self.channels = input_channels_of(model)

    def call(self, images, training=False):
        images = check_images(images, where="MultiScaleInference", channels=self.channels)
        images = tf.cast(images, tf.float32)
        size = tf.shape(images)[1:3]
        branches = self.run_branches(images, flip=self.flip, training=False, dtype=tf.float32)
        if self.fuse_at == "logits":
            fused = fuse_on_logit_grid(branches, self.fusion, self.upsample)
            fused = resize_logits(fused, size, self.upsample, self.stride)
        else:
            fused = fuse_on_image(branches, size, self.fusion, self.upsample, self.stride)
        if self.output_type == "probs":
            return tf.nn.softmax(fused, axis=-1)
        return fused

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], input_shape[2], self.num_classes)

    def compute_output_spec(self, images, training=False):
        # call() returns float32 whatever the policy computes in; without this Keras would give
        # the symbolic output the policy's compute dtype (bfloat16 under mixed_bfloat16).
        return keras.KerasTensor(self.compute_output_shape(images.shape), dtype="float32")

    def get_config(self):
        return {
            **super().get_config(),
            "fusion": self.fusion,
            "flip": self.flip,
            "upsample": self.upsample,
            "output": self.output_type,
            "fuse_at": self.fuse_at,
        }


#: The name before the rename; kept for compatibility (code importing it).
MultiScale = MultiScaleInference

# ``.keras`` files written before the rename record ``deeplab_tf>MultiScale``.
keras.saving.get_custom_objects()[f"{PACKAGE}>MultiScale"] = MultiScaleInference
