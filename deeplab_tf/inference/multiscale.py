"""Multi-scale inference as a Keras model (paper Sec. 3.2 and Table 4).

The paper's test-time recipe runs the same network on the image at scales 1, 0.75 and 0.5,
brings the smaller score maps to the size of the 1x scores with Caffe's corner-aligned
``Interp``, fuses them with an element-wise max and upsamples the fused stride-8 scores to the
image (``Interp`` with zoom 8, then crop). :class:`MultiScale` reproduces that order by default
and adds the common extensions: mean fusion, horizontal flips, any scale list, the half-pixel
upsampling rule, and fusion at image resolution (docs/architecture.md#multi-scale-inference).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from deeplab_tf.layers import PACKAGE, check_images, resize_by_scale, resize_logits
from deeplab_tf.models.deeplab import output_stride_of

FUSIONS = ("max", "mean")
UPSAMPLE_MODES = ("caffe", "half_pixel")
OUTPUTS = ("probs", "logits")
FUSE_AT = ("logits", "image")


def _resize_to(x, size, mode):
    """Bilinear resize of ``(N, h, w, C)`` to ``size``: corners aligned (caffe) or half-pixel."""
    if mode == "caffe":
        return tf.raw_ops.ResizeBilinear(images=x, size=size, align_corners=True)
    return tf.image.resize(x, size, method="bilinear")


def _check_scales(scales):
    try:
        scales = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        raise ValueError(
            f"scales must be a sequence of numbers. Received: scales={scales!r}"
        ) from None
    if not scales or any(not 0.0 < s <= 4.0 for s in scales):
        raise ValueError(
            f"scales must be a non-empty list of numbers in (0, 4]. Received: scales={scales!r}"
        )
    if len(set(scales)) != len(scales):
        raise ValueError(f"scales must not repeat. Received: scales={scales!r}")
    return scales


@keras.saving.register_keras_serializable(package=PACKAGE)
class MultiScale(keras.Model):
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
        >>> msc = deeplab_tf.MultiScale(model, scales=(1.0, 0.75, 0.5), fusion="max")
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
        super().__init__(name=name, **kwargs)
        if not isinstance(model, keras.Model):
            raise ValueError(f"model must be a keras.Model. Received: model={model!r}")
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
        scales = _check_scales(scales)
        if fuse_at == "logits" and 1.0 not in scales:
            raise ValueError(
                "fuse_at='logits' fuses on the grid of the 1x scores, so scales must include "
                f"1.0 (or use fuse_at='image'). Received: scales={scales!r}"
            )
        self.model = model
        self.scales = scales
        self.fusion = fusion
        self.flip = bool(flip)
        self.upsample = upsample
        self.output_type = output
        self.fuse_at = fuse_at
        self.stride = int(output_stride_of(model))
        self.num_classes = int(model.output_shape[-1])

    def build(self, input_shape=None):
        if not self.model.built:
            self.model.build(input_shape)
        self.built = True

    # --- the graph --------------------------------------------------------------------------

    def _branches(self, images):
        """Yields ``(scale, flipped, scaled_images, logits)`` for every scale and flip."""
        for scale in self.scales:
            x = resize_by_scale(images, scale)
            variants = [(False, x)] + ([(True, tf.reverse(x, axis=[2]))] if self.flip else [])
            for flipped, xv in variants:
                logits = tf.cast(self.model(xv, training=False), tf.float32)
                yield scale, flipped, x, logits

    def _fuse(self, maps):
        if len(maps) == 1:
            return maps[0]
        stack = tf.stack(maps, axis=0)
        if self.fusion == "max":
            return tf.reduce_max(stack, axis=0)
        probs = tf.reduce_mean(tf.nn.softmax(stack, axis=-1), axis=0)
        return tf.math.log(tf.maximum(probs, 1e-30))

    def call(self, images, training=False):
        images = tf.cast(check_images(images, where="MultiScale"), tf.float32)
        size = tf.shape(images)[1:3]
        maps = []
        if self.fuse_at == "logits":
            branches = list(self._branches(images))
            ref = next(b[3] for b in branches if b[0] == 1.0 and not b[1])
            grid = tf.shape(ref)[1:3]
            for _, flipped, _, logits in branches:
                if flipped:
                    logits = tf.reverse(logits, axis=[2])
                if logits is not ref:
                    logits = _resize_to(logits, grid, self.upsample)
                maps.append(logits)
            fused = resize_logits(self._fuse(maps), size, self.upsample, self.stride)
        else:
            for scale, flipped, x, logits in self._branches(images):
                up = resize_logits(logits, tf.shape(x)[1:3], self.upsample, self.stride)
                if flipped:
                    up = tf.reverse(up, axis=[2])
                if scale != 1.0:
                    up = _resize_to(up, size, self.upsample)
                maps.append(up)
            fused = self._fuse(maps)
        if self.output_type == "probs":
            return tf.nn.softmax(fused, axis=-1)
        return fused

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], input_shape[2], self.num_classes)

    # --- serialization ----------------------------------------------------------------------

    def get_config(self):
        return {
            "name": self.name,
            "model": keras.saving.serialize_keras_object(self.model),
            "scales": list(self.scales),
            "fusion": self.fusion,
            "flip": self.flip,
            "upsample": self.upsample,
            "output": self.output_type,
            "fuse_at": self.fuse_at,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(
            config["model"], custom_objects=custom_objects
        )
        return cls(**config)
