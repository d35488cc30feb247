"""Multi-scale processing: the one core behind MSC training and multi-scale inference.

Chen et al., TPAMI 2017, section 3.2: the same network (shared parameters) runs on several
rescaled copies of the image, the score maps are brought to a common size with bilinear
interpolation and fused by the maximum response at each position, "both during training and
testing"; section 4.1 and Table 4 ("MSC"): scales 1, 0.75 and 0.5.

This module holds every step both uses, once:

* branching (:func:`run_branches`): each scale ``s`` shrinks (or grows) the image to
  ``floor(H * s)`` with corner alignment (Caffe ``Interp``, as the authors' MSC prototxts do),
  optionally with a horizontally mirrored copy, and runs the model on each;
* resizing (:func:`resize_to`): corner-aligned (``"caffe"``) or half-pixel bilinear;
* fusion (:func:`fuse`, :func:`fuse_on_logit_grid`, :func:`fuse_on_image`): element-wise max of
  the logits (the paper) or the mean of the softmax probabilities, either on the grid of the 1x
  scores or at image resolution;
* :class:`MultiScaleWrapper`, the shared base of the two public wrappers, which holds the
  wrapped model (its weights are shared, not copied), the scales, and the config round trip.

The wrappers themselves are :class:`deeplab_tf.training.msc.MultiScaleTraining` (MSC training
under ``model.fit``: per-scale and fused logits for the four-term loss) and
:class:`deeplab_tf.inference.multiscale.MultiScaleInference` (full-resolution probabilities or
logits, with flips, fusion and upsampling options).
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import tensorflow as tf

from deeplab_tf.layers import resize_by_scale, resize_logits

FUSIONS = ("max", "mean")
UPSAMPLE_MODES = ("caffe", "half_pixel")
FUSE_AT = ("logits", "image")
#: Largest image scale accepted.
MAX_SCALE = 4.0


class Branch(NamedTuple):
    """One run of the model: at ``scale``, on the mirrored image when ``flipped``.

    ``images`` are the rescaled (not mirrored) images; ``logits`` the model's output on the
    (possibly mirrored) images, still mirrored when ``flipped``.
    """

    scale: float
    flipped: bool
    images: tf.Tensor
    logits: tf.Tensor


def check_model(model) -> None:
    """Raises ValueError unless ``model`` is a ``keras.Model``."""
    if not isinstance(model, keras.Model):
        raise ValueError(f"model must be a keras.Model. Received: model={model!r}")


def check_scales(scales) -> tuple[float, ...]:
    """Validates image scales: a non-empty sequence of distinct numbers in (0, 4].

    Returns:
        The scales as a tuple of floats.

    Raises:
        ValueError: anything else.
    """
    try:
        scales = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        raise ValueError(
            f"scales must be a sequence of numbers. Received: scales={scales!r}"
        ) from None
    if not scales or any(not 0.0 < s <= MAX_SCALE for s in scales):
        raise ValueError(
            f"scales must be a non-empty list of numbers in (0, {MAX_SCALE:g}]. "
            f"Received: scales={scales!r}"
        )
    if len(set(scales)) != len(scales):
        raise ValueError(f"scales must not repeat. Received: scales={scales!r}")
    return scales


def resize_to(x, size, mode: str = "caffe"):
    """Bilinear resize of ``(N, h, w, C)`` to ``size``: corners aligned (caffe) or half-pixel.

    Computed in float32 and returned in ``x``'s dtype.
    """
    dtype = x.dtype
    x = tf.cast(x, tf.float32)
    if mode == "caffe":
        out = tf.raw_ops.ResizeBilinear(images=x, size=size, align_corners=True)
    else:
        out = tf.image.resize(x, size, method="bilinear")
    return tf.cast(out, dtype)


def run_branches(model, images, scales, flip: bool = False, training=None, dtype=None):
    """Runs ``model`` on ``images`` at every scale (and mirrored, with ``flip``).

    Args:
        model: maps images ``(N, H, W, 3)`` to logits.
        images: ``(N, H, W, 3)``; passed to the model as they are at scale 1 and as float32
            after resizing at the other scales.
        scales: image scales, in order.
        flip: also run each rescaled image mirrored left-right (its logits stay mirrored).
        training: passed to the model.
        dtype: cast the logits to this dtype; None keeps the model's (e.g. under mixed
            precision).

    Returns:
        A list of :class:`Branch`, in the order of ``scales``, each unflipped branch followed by
        its flipped one.
    """
    branches = []
    for scale in scales:
        x = images if scale == 1.0 else resize_by_scale(tf.cast(images, tf.float32), scale)
        variants = [(False, x)] + ([(True, tf.reverse(x, axis=[2]))] if flip else [])
        for flipped, xv in variants:
            logits = model(xv, training=training)
            if dtype is not None:
                logits = tf.cast(logits, dtype)
            branches.append(Branch(scale, flipped, x, logits))
    return branches


def fuse(maps, fusion: str = "max"):
    """Fuses same-sized score maps.

    ``"max"``: the element-wise maximum of the logits (the paper), in the maps' dtype.
    ``"mean"``: the mean of their softmax probabilities (DeepLab v3 practice), returned as the
    logarithm of that mean, so that its softmax is the mean.
    """
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}. Received: fusion={fusion!r}")
    maps = list(maps)
    if len(maps) == 1:
        return maps[0]
    if fusion == "max":
        fused = maps[0]
        for m in maps[1:]:
            fused = tf.maximum(fused, m)
        return fused
    probs = tf.reduce_mean(tf.nn.softmax(tf.stack(maps, axis=0), axis=-1), axis=0)
    return tf.math.log(tf.maximum(probs, 1e-30))


def fuse_on_logit_grid(branches, fusion: str = "max", mode: str = "caffe"):
    """Fuses on the grid of the 1x scores (the paper's order; also MSC training's output).

    Flipped branches are mirrored back on the score grid, every branch other than the
    unflipped 1x one is resized to its grid with ``mode``'s rule, and the maps are fused.

    Returns:
        ``(N, h, w, C)`` at the 1x branch's logit size, in its dtype.

    Raises:
        ValueError: no unflipped branch at scale 1.
    """
    ref = next((b for b in branches if b.scale == 1.0 and not b.flipped), None)
    if ref is None:
        raise ValueError(
            "Fusing on the grid of the 1x scores needs scale 1.0 among the scales. "
            f"Received: scales={sorted({b.scale for b in branches})!r}"
        )
    grid = tf.shape(ref.logits)[1:3]
    maps = []
    for b in branches:
        logits = tf.reverse(b.logits, axis=[2]) if b.flipped else b.logits
        if b is not ref:
            logits = resize_to(logits, grid, mode)
        maps.append(logits)
    return fuse(maps, fusion)


def fuse_on_image(branches, size, fusion: str = "max", mode: str = "caffe", stride: int = 8):
    """Upsamples every branch to its own image, mirrors it back there, resizes, then fuses.

    Each branch's logits are upsampled to its rescaled image's size with
    :func:`deeplab_tf.layers.resize_logits` (``mode``, ``stride``), mirrored back at pixel level
    when flipped (exact for any width), resized to ``size`` with ``mode``'s rule unless at scale
    1, and the maps are fused.

    Returns:
        ``(N, H, W, C)`` at ``size``.
    """
    maps = []
    for b in branches:
        up = resize_logits(b.logits, tf.shape(b.images)[1:3], mode, stride)
        if b.flipped:
            up = tf.reverse(up, axis=[2])
        if b.scale != 1.0:
            up = resize_to(up, size, mode)
        maps.append(up)
    return fuse(maps, fusion)


class MultiScaleWrapper(keras.Model):
    """Base of the multi-scale wrappers: a wrapped model run at several scales.

    Not registered and not used directly: subclasses define ``call`` and register themselves.
    The wrapped model is an attribute (``model``), so its weights are the wrapper's weights
    (shared, not copied) and ``.keras`` files store them under ``model``.

    Args:
        model: a ``keras.Model`` mapping RGB 0..255 images ``(N, H, W, 3)`` to logits.
        scales: image scales, distinct, each in (0, 4].
        name: model name.

    The wrapper takes the wrapped model's dtype policy (not saved: it is the model's).
    """

    def __init__(self, model, scales, name=None, **kwargs):
        check_model(model)
        scales = check_scales(scales)
        # The wrapper has the wrapped model's dtype policy (so that compile() wraps the
        # optimizer in a LossScaleOptimizer under mixed_float16), but does not cast its inputs:
        # the images reach the model (whose preprocessing is float32) at full precision.
        kwargs.setdefault("dtype", model.dtype_policy)
        kwargs.setdefault("autocast", False)
        super().__init__(name=name, **kwargs)
        self.model = model
        self.scales = scales

    def build(self, input_shape=None):
        if not self.model.built:
            self.model.build(input_shape)
        self.built = True

    def run_branches(self, images, flip: bool = False, training=None, dtype=None):
        """:func:`run_branches` with this wrapper's model and scales."""
        return run_branches(self.model, images, self.scales, flip, training, dtype)

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
