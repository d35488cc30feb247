"""Registered Keras layers that give DeepLab v2 its Caffe semantics.

Every layer here is serializable (``keras.saving.register_keras_serializable``) so that models
built from them save to ``.keras`` and reload with ``keras.saving.load_model`` in safe mode, and
every layer uses only standard TensorFlow ops so that the graph exports to SavedModel and TFLite.

Caffe rules reproduced (docs/architecture.md#caffe-rounding-rules):

* convolution pads symmetrically and rounds down:
  ``out = floor((in + 2*pad - k_eff) / s) + 1`` (``CaffePadding`` + a ``valid`` convolution);
* pooling rounds UP and clips the last window so that it starts inside the padded input:
  ``out = ceil((in + 2*pad - k) / s) + 1`` (``CaffeMaxPooling2D`` / ``CaffeAveragePooling2D``);
* ``Interp`` upsampling maps corners onto corners (``align_corners=True``).
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

PACKAGE = "deeplab_tf"

#: Caffe (ImageNet) channel means in BGR order, used by the authors' ImageSegData layer.
CAFFE_BGR_MEAN = (104.008, 116.669, 122.675)


def caffe_pool_output_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Output length of a Caffe pooling layer (ceil mode, last window clipped).

    Args:
        size: input length.
        kernel: window size.
        stride: window stride.
        pad: symmetric padding.

    Returns:
        The output length Caffe computes for this pooling layer.
    """
    out = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def caffe_conv_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int = 1) -> int:
    """Output length of a Caffe convolution (floor mode)."""
    k_eff = kernel + (kernel - 1) * (dilation - 1)
    return (size + 2 * pad - k_eff) // stride + 1


def _spatial_dims(x):
    """(height, width) as Python ints where static, else scalar tensors."""
    dyn = tf.shape(x)
    h = x.shape[1] if x.shape[1] is not None else dyn[1]
    w = x.shape[2] if x.shape[2] is not None else dyn[2]
    return h, w


def _pool_extra(size, kernel, stride, pad):
    """Extra bottom/right padding that makes a VALID pooling produce Caffe's ceil-mode count."""
    if isinstance(size, int):
        out = caffe_pool_output_size(size, kernel, stride, pad)
        return max(0, (out - 1) * stride + kernel - (size + 2 * pad))
    # Dynamic: same arithmetic with integer tensor ops (ceil(a/b) = -floor(-a/b)).
    out = -((-(size + 2 * pad - kernel)) // stride) + 1
    if pad > 0:
        out = tf.where((out - 1) * stride >= size + pad, out - 1, out)
    return tf.maximum(0, (out - 1) * stride + kernel - (size + 2 * pad))


#: Image dtypes the networks take (RGB values 0..255). ``uint16``/``bool``/strings are refused
#: rather than silently cast (a 16-bit image would be read as far brighter than white).
IMAGE_DTYPES = ("uint8", "int32", "int64", "float16", "bfloat16", "float32", "float64")


def check_images(images, name: str = "images", where: str = "The model", runtime: bool = False,
                 channels: int = 3):  # fmt: skip
    """Validates an image batch ``(N, H, W, channels)`` before any work; returns it.

    What is known statically (eager tensors, arrays, traced shapes) is checked in Python and
    raises ``ValueError``. What is only known at run time (a traced graph with unknown
    dimensions: an exported SavedModel) is checked in the graph, with ``tf.ensure_shape`` for
    the rank and channel count and ``tf.debugging.Assert`` for empty images, both failing the
    request with ``InvalidArgumentError`` instead of reaching the convolution kernels (where a
    rank-3 batch aborts the process); with ``runtime`` float images must also be finite.
    Fully static shapes add no ops (TFLite stays builtin).

    Args:
        images: a tensor or array.
        name: the argument's name, for messages.
        where: who is asking, for messages.
        runtime: always add the in-graph checks, even where the traced shape already looks
            right. For serving signatures: their input spec is a claim about the requests, not
            a check (TF Serving and ``loaded.signatures[...]`` pass any shape through).
        channels: the channel count expected (3: RGB; a model built with ``input_channels``).

    Raises:
        ValueError: a wrong rank, channel count, dtype or an empty dimension known statically.
    """
    if not tf.is_tensor(images):
        images = tf.convert_to_tensor(images)
    expected = (
        f"expected a batch of RGB images (N, H, W, 3) of one of {IMAGE_DTYPES}, 0..255"
        if channels == 3
        else f"expected a batch of {channels}-channel images (N, H, W, {channels}) of one of "
        f"{IMAGE_DTYPES}"
    )
    dtype = images.dtype.name
    if dtype not in IMAGE_DTYPES:
        raise ValueError(
            f"{where} got {name} of dtype {dtype}. Received: {name}.dtype={dtype}; {expected}"
            + (" (scale 16-bit images to 0..255 first)" if dtype == "uint16" else "")
        )
    shape = images.shape
    if shape.rank is not None:
        if shape.rank != 4 or shape[-1] not in (None, channels):
            raise ValueError(
                f"{where} got {name} of the wrong shape. Received: {name}.shape="
                f"{tuple(shape)}; {expected}"
                + (" (add a batch axis: images[None])" if shape.rank == 3 else "")
            )
        if any(d == 0 for d in shape):
            raise ValueError(
                f"{where} got an empty {name} batch or image. Received: {name}.shape="
                f"{tuple(shape)}; {expected}, each dimension at least 1"
            )
    if runtime or shape.rank != 4 or shape[-1] is None:
        images = tf.ensure_shape(images, [None, None, None, channels], name=f"check_{name}_shape")
    if not tf.executing_eagerly() and (runtime or not all(d is not None for d in images.shape)):
        dims = tf.shape(images)
        ok = tf.reduce_all(dims > 0)
        check = tf.debugging.Assert(
            ok,
            [
                f"{where}: {name} must be (N >= 1, H >= 1, W >= 1, {channels}); got shape",
                dims,
            ],  # fmt: skip
        )
        with tf.control_dependencies([check]):
            images = tf.identity(images)
    if runtime and images.dtype.is_floating:
        images = tf.debugging.assert_all_finite(images, f"{where}: {name} hold NaN or inf")
    return images


@keras.saving.register_keras_serializable(package=PACKAGE)
class Preprocess(keras.layers.Layer):
    """Turns caller images (RGB, 0..255, uint8 or float) into what the network expects.

    For the authors' Caffe models: RGB -> BGR, subtract ``CAFFE_BGR_MEAN``, no scaling
    (docs/architecture.md#input-and-preprocessing). Other backbones (e.g. MobileNetV2) use
    ``mode="tf"``: ``x / 127.5 - 1``. Inputs with any number of channels use
    ``mode="normalize"``: ``(x - mean) / std`` per channel, in the input's channel order
    (:mod:`deeplab_tf.models.channels`).

    Args:
        mode: ``"caffe"`` (BGR, mean subtracted), ``"tf"`` (RGB scaled to [-1, 1]) or
            ``"normalize"`` (per channel, N channels).
        mean: channel means in the network's channel order (``"caffe"``: 3 values;
            ``"normalize"``: one per input channel).
        std: ``"normalize"`` only: one positive standard deviation per channel.
    """

    MODES = ("caffe", "tf", "normalize")

    def __init__(self, mode: str = "caffe", mean=CAFFE_BGR_MEAN, std=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(
                f"Preprocess mode must be one of {self.MODES}. Received: mode={mode!r}"
            )
        mean = tuple(float(m) for m in mean)
        if mode == "normalize":
            std = None if std is None else tuple(float(v) for v in std)
            if std is None or len(std) != len(mean) or not mean:
                raise ValueError(
                    "mode='normalize' needs one mean and one std per channel. Received: "
                    f"mean={list(mean)!r}, std={std!r}"
                )
            if not all(v > 0 for v in std):
                raise ValueError(f"std values must be > 0. Received: std={list(std)!r}")
        elif std is not None:
            raise ValueError(f"std is for mode='normalize'. Received: mode={mode!r}, std={std!r}")
        elif len(mean) != 3:
            raise ValueError(f"mean needs 3 channel values. Received: mean={mean!r}")
        self.mode = mode
        self.mean = mean
        self.std = std

    @property
    def channels(self) -> int:
        return len(self.mean) if self.mode == "normalize" else 3

    def call(self, images):
        images = check_images(images, where="DeepLab's Preprocess layer", channels=self.channels)
        x = tf.cast(images, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "normalize":
            mean = tf.constant(self.mean, dtype=x.dtype)
            return (x - mean) / tf.constant(self.std, dtype=x.dtype)
        # RGB -> BGR as a 1x1 convolution with a permutation kernel: exact (products with 0
        # and 1), and one CONV_2D in TFLite, which GPU delegates take (REVERSE_V2 they do not).
        flip = tf.constant([[[[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]]], x.dtype)
        x = tf.nn.conv2d(x, flip, 1, "VALID")
        return x - tf.constant(self.mean, dtype=x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = {**super().get_config(), "mode": self.mode, "mean": list(self.mean)}
        if self.std is not None:
            config["std"] = list(self.std)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class CaffePadding(keras.layers.Layer):
    """Symmetric zero padding that keeps static shapes static (a ``ZeroPadding2D`` twin).

    Kept as our own layer so the spatial rule sits next to the pooling rules and so weight
    converters can recognise it; it pads ``pad`` pixels on each side of H and W.
    """

    def __init__(self, pad: int, **kwargs):
        super().__init__(**kwargs)
        self.pad = int(pad)

    def call(self, x):
        p = self.pad
        return tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])

    def compute_output_shape(self, s):
        grow = lambda d: None if d is None else d + 2 * self.pad
        return (s[0], grow(s[1]), grow(s[2]), s[3])

    def get_config(self):
        return {**super().get_config(), "pad": self.pad}


class _CaffePool(keras.layers.Layer):
    """Shared logic of Caffe's ceil-mode pooling layers."""

    def __init__(self, pool_size: int = 3, strides: int = 2, padding: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = int(pool_size)
        self.strides = int(strides)
        self.padding = int(padding)
        if self.padding >= self.pool_size:
            raise ValueError(
                f"pad must be smaller than the kernel. Received: padding={padding}, "
                f"pool_size={pool_size}"
            )

    def _extra(self, x):
        h, w = _spatial_dims(x)
        eh = _pool_extra(h, self.pool_size, self.strides, self.padding)
        ew = _pool_extra(w, self.pool_size, self.strides, self.padding)
        return eh, ew

    def compute_output_shape(self, s):
        size = lambda d: (
            None
            if d is None
            else caffe_pool_output_size(d, self.pool_size, self.strides, self.padding)
        )
        return (s[0], size(s[1]), size(s[2]), s[3])

    def get_config(self):
        return {
            **super().get_config(),
            "pool_size": self.pool_size,
            "strides": self.strides,
            "padding": self.padding,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class CaffeMaxPooling2D(_CaffePool):
    """Max pooling with Caffe's symmetric padding and ceil rounding.

    Caffe clips each window to the input, so padded cells never count. Here they are copies
    of the nearest edge pixel ("replicate" padding), which gives the same maxima: a window
    reaching into the padding also holds that edge pixel, since every window starts inside
    the input (Caffe drops a last window that would start in the padding). Unlike padding
    with the dtype's lowest value, edge copies keep the activation range, so the layer
    quantises to int8 (a ``-3.4e38`` pad value would swamp the int8 scale) and converts to
    builtin TFLite ops that LiteRT's XNNPACK and GPU delegates take (STRIDED_SLICE +
    CONCATENATION + MAX_POOL_2D; docs/architecture.md#tflite).

    Args:
        pool_size: square window size.
        strides: stride.
        padding: symmetric padding in pixels (an int, Caffe's ``pad``).
    """

    def call(self, x):
        eh, ew = self._extra(x)
        p = self.padding
        most = p + self.strides - 1  # ceil mode adds fewer cells than the stride
        x = _replicate_edges(x, 1, p, p + eh, most)
        x = _replicate_edges(x, 2, p, p + ew, most)
        k, s = self.pool_size, self.strides
        return tf.nn.max_pool2d(x, k, s, "VALID")


def _replicate_edges(x, axis: int, before: int, after, most: int):
    """Pads ``axis`` of an NHWC tensor with ``before``/``after`` copies of its edge slices.

    ``after`` is an int, or a scalar tensor at most ``most`` (dynamic shapes): then ``most``
    copies are appended and the result is cut to its exact length. The edge slices are
    strided slices (STRIDED_SLICE in TFLite, which the GPU delegate runs; SLICE it does not).
    """
    if isinstance(after, int) and before == 0 and after == 0:
        return x
    index = [slice(None)] * 4
    index[axis] = slice(0, 1)
    first = x[tuple(index)]
    index[axis] = slice(-1, None)
    last = x[tuple(index)]
    count = after if isinstance(after, int) else most
    grown = tf.concat([first] * before + [x] + [last] * count, axis=axis)
    if isinstance(after, int):
        return grown
    index[axis] = slice(0, before + tf.shape(x)[axis] + after)
    return grown[tuple(index)]


@keras.saving.register_keras_serializable(package=PACKAGE)
class CaffeAveragePooling2D(_CaffePool):
    """Average pooling with Caffe's rounding; padded zeros count in the divisor.

    Caffe divides by the window clipped to the *padded* input (``pool_size`` = min(hend,
    H + pad) - hstart), so symmetric padding counts as zeros while the extra ceil-mode
    cells past the padding do not. That is reproduced by summing a zero-padded input and
    dividing by a count map built the same way.
    """

    def call(self, x):
        h, w = _spatial_dims(x)
        k, s, p = self.pool_size, self.strides, self.padding
        eh = _pool_extra(h, k, s, p)
        ew = _pool_extra(w, k, s, p)
        xs = tf.pad(x, [[0, 0], [p, p + eh], [p, p + ew], [0, 0]])
        sums = tf.nn.avg_pool2d(xs, k, s, "VALID") * float(k * k)
        ones = tf.ones(tf.stack([1, h + 2 * p, w + 2 * p, 1]), dtype=x.dtype)
        ones = tf.pad(ones, [[0, 0], [0, eh], [0, ew], [0, 0]])
        counts = tf.nn.avg_pool2d(ones, k, s, "VALID") * float(k * k)
        return sums / counts


def resize_logits(logits, size, mode: str = "caffe", stride: int = 8):
    """Upsamples stride-``stride`` logits (or probabilities) to ``size``.

    Two rules (docs/architecture.md#upsampling-interp):

    * ``"caffe"`` (default; what the authors' test nets and converted weights expect): Caffe's
      ``Interp`` with zoom factor ``stride``: bilinear with corners on corners
      (``align_corners=True``) to ``(h - 1) * stride + 1``, then crop to ``size``.
    * ``"half_pixel"``: ``tf.image.resize`` bilinear straight to ``size``.

    Args:
        logits: ``(N, h, w, C)`` float tensor.
        size: target ``(H, W)`` (ints or an int tensor).
        mode: ``"caffe"`` (align corners, zoom then crop) or ``"half_pixel"``.
        stride: zoom factor for ``"caffe"``.

    Returns:
        ``(N, H, W, C)`` tensor in ``logits``' dtype.
    """
    size = tf.cast(tf.convert_to_tensor(size), tf.int32)
    dtype = logits.dtype
    x = tf.cast(logits, tf.float32)
    if mode == "half_pixel":
        out = tf.image.resize(x, size, method="bilinear")
    elif mode == "caffe":
        hw = tf.shape(x)[1:3]
        zoom = (hw - 1) * stride + 1
        # Networks with ceil-mode pooling always give zoom >= size; for any other
        # producer fall back to aligning corners straight onto the target size.
        target = tf.maximum(zoom, size)
        out = tf.raw_ops.ResizeBilinear(images=x, size=target, align_corners=True)
        out = out[:, : size[0], : size[1], :]
    else:
        raise ValueError(f"mode must be 'caffe' or 'half_pixel'. Received: mode={mode!r}")
    return tf.cast(out, dtype)


def resize_by_scale(x, scale: float):
    """Resizes ``(N, H, W, C)`` by ``scale`` with corner alignment; size ``floor(H*scale)``.

    Caffe ``Interp``-style shrink of multi-scale training and inference: ``ResizeBilinear(
    align_corners=True)`` as the authors' MSC prototxts do.
    """
    if scale == 1.0:
        return x
    hw = tf.shape(x)[1:3]
    size = tf.maximum(1, tf.cast(tf.floor(tf.cast(hw, tf.float32) * scale), tf.int32))
    out = tf.raw_ops.ResizeBilinear(images=tf.cast(x, tf.float32), size=size, align_corners=True)
    return tf.cast(out, x.dtype)


@keras.saving.register_keras_serializable(package=PACKAGE)
class FoldedBatchNorm(keras.layers.Layer):
    """Identity left where a frozen BatchNorm was folded into the preceding convolution.

    Keeps the BN's name and call signature (``training``, ``mask``) so a folded model keeps its
    graph and layer names; see ``deeplab_tf.export.optimize.fold_batchnorm``.
    """

    def call(self, x, training=None, mask=None):
        return x

    def compute_output_shape(self, s):
        return s


def atrous_conv2d(x, kernel, rate, pad: int = 0, narrow_matmul: bool = True):
    """Stride-1 dilated ("atrous") convolution with symmetric zero padding, NHWC.

    TensorFlow's CPU kernels have no dilated ``Conv2DBackpropInput`` / ``Conv2DBackpropFilter``,
    so a plain ``Conv2D(dilation_rate=r)`` trains through SPACE_TO_BATCH_ND, which turns a
    rate-24 ASPP branch on a 41x41 map into a batch of 576 tiny images whose backward pass
    costs several times its forward pass. Here every pass is forward convolutions and MatMuls:

    * forward: one ``tf.nn.conv2d`` with ``dilations`` and explicit padding; when the output
      is much narrower than the input (an ASPP classifier: 2048 -> 21 channels), instead one
      ``(N*H*W, C_in) @ (C_in, kh*kw*C_out)`` MatMul followed by a shifted sum of the kh*kw
      output planes (faster than the convolution there; benchmarks/README.md);
    * input gradient: the same dilated convolution of the output gradient with the kernel
      flipped in space and transposed in channels;
    * kernel gradient: one ``(C_in, N*H*W) @ (N*H*W, C_out)`` MatMul per kernel tap on the
      tap's window of the padded input, or, for narrow outputs, one MatMul of the input
      against the output gradient shifted once per tap (a ``(N*H*W, kh*kw*C_out)`` stack).

    Args:
        x: (N, H, W, C_in) float tensor.
        kernel: (kh, kw, C_in, C_out) tensor of the same dtype.
        rate: dilation, an int or an (rate_h, rate_w) pair.
        pad: symmetric zero padding of both spatial dimensions (Caffe's ``pad``).
        narrow_matmul: use the MatMul + shifted-sum forward for narrow outputs. False keeps
            one dilated convolution (an inference export: TFLite then holds one CONV_2D that
            quantises end to end, instead of FULLY_CONNECTED + RESHAPE + STRIDED_SLICE +
            ADD_N, which LiteRT's XNNPACK delegate fails to prepare in int8).

    Returns:
        (N, H + 2 pad - (kh - 1) rate_h, W + 2 pad - (kw - 1) rate_w, C_out).
    """
    rh, rw = (int(rate), int(rate)) if isinstance(rate, int) else (int(rate[0]), int(rate[1]))
    pad = int(pad)
    kh, kw, c_in, c_out = (int(d) for d in kernel.shape)
    taps = kh * kw
    narrow = narrow_matmul and taps > 1 and taps * c_out <= c_in  # ASPP classifier: 2048 -> 21

    @tf.custom_gradient
    def conv(x, kernel):
        shape = tf.shape(x)
        n, height, width = shape[0], shape[1], shape[2]
        out_h = height + 2 * pad - (kh - 1) * rh
        out_w = width + 2 * pad - (kw - 1) * rw
        if narrow:
            # (C_in, kh*kw*C_out): column block t = i*kw + j holds kernel tap (i, j).
            matrix = tf.reshape(tf.transpose(kernel, [2, 0, 1, 3]), [c_in, taps * c_out])
            z = tf.matmul(tf.reshape(x, [-1, c_in]), matrix)
            z = tf.reshape(z, [n, height, width, taps, c_out])
            if pad:
                z = tf.pad(z, [[0, 0], [pad, pad], [pad, pad], [0, 0], [0, 0]])
            y = tf.add_n(
                [
                    z[:, i * rh : i * rh + out_h, j * rw : j * rw + out_w, i * kw + j, :]
                    for i in range(kh)
                    for j in range(kw)
                ]
            )
        else:
            paddings = [[0, 0], [pad, pad], [pad, pad], [0, 0]] if pad else "VALID"
            y = tf.nn.conv2d(x, kernel, 1, paddings, dilations=[rh, rw])

        def grad(dy):
            # d input: the same dilated convolution of dy with the kernel flipped in space and
            # transposed in channels, padded by the kernel's reach minus the forward padding.
            flipped = tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])
            qh, qw = (kh - 1) * rh - pad, (kw - 1) * rw - pad
            dx = tf.nn.conv2d(
                dy,
                flipped,
                1,
                [[0, 0], [max(qh, 0), max(qh, 0)], [max(qw, 0), max(qw, 0)], [0, 0]],
                dilations=[rh, rw],
            )
            if qh < 0 or qw < 0:  # padding wider than the kernel's reach: crop
                ch, cw = max(-qh, 0), max(-qw, 0)
                dx = dx[:, ch : tf.shape(dx)[1] - ch, cw : tf.shape(dx)[2] - cw, :]
            if narrow:
                # Narrow output: shift dy once per tap, D_t[q] = dy[q - offset_t] (zero
                # outside), into one (N*H*W, taps*C_out) stack; d kernel = x^T D.
                th, tw = (kh - 1) * rh, (kw - 1) * rw
                dyp = tf.pad(dy, [[0, 0], [th, th], [tw, tw], [0, 0]])
                stack = tf.concat(
                    [
                        dyp[
                            :,
                            th + pad - i * rh : th + pad - i * rh + height,
                            tw + pad - j * rw : tw + pad - j * rw + width,
                            :,
                        ]
                        for i in range(kh)
                        for j in range(kw)
                    ],
                    axis=-1,
                )
                dk = tf.matmul(
                    tf.reshape(x, [-1, c_in]),
                    tf.reshape(stack, [-1, taps * c_out]),
                    transpose_a=True,
                )
                dk = tf.transpose(tf.reshape(dk, [c_in, kh, kw, c_out]), [1, 2, 0, 3])
            else:
                # One (C_in, N*H*W) @ (N*H*W, C_out) MatMul per tap on its input window.
                xp = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]]) if pad else x
                dy2 = tf.reshape(dy, [-1, c_out])
                dk = tf.stack(
                    [
                        tf.matmul(
                            tf.reshape(
                                xp[:, i * rh : i * rh + out_h, j * rw : j * rw + out_w, :],
                                [-1, c_in],
                            ),
                            dy2,
                            transpose_a=True,
                        )
                        for i in range(kh)
                        for j in range(kw)
                    ]
                )
                dk = tf.reshape(dk, [kh, kw, c_in, c_out])
            return dx, dk

        return y, grad

    return conv(x, kernel)


@keras.saving.register_keras_serializable(package=PACKAGE)
class PaddedConv2D(keras.layers.Conv2D):
    """A Caffe convolution in one layer: symmetric explicit padding and native dilation.

    The DeepLab builders use it for every dilated stride-1 convolution (ResNet res4/res5,
    VGG conv5/fc6, the ASPP branches), which run through :func:`atrous_conv2d`: no padded copy
    of the input (a separate ``CaffePadding`` would copy a 2048-channel map per ASPP branch)
    and no SPACE_TO_BATCH_ND in the forward or backward pass. Undilated convolutions keep
    ``CaffePadding`` + ``Conv2D`` for training; ``deeplab_tf.export.fuse_for_inference``
    merges those into this layer too (forward only: a direct ``tf.nn.conv2d`` with explicit
    padding).

    Args:
        pad: symmetric zero padding (Caffe's ``pad``).
        narrow_matmul: for a dilated convolution with a narrow output (an ASPP classifier),
            compute the forward pass as one MatMul and a shifted sum (faster training;
            :func:`atrous_conv2d`). ``deeplab_tf.export.with_input_shape(...,
            plain_convs=True)`` (used by the TFLite export) sets it to False: one dilated
            convolution, which converts to a single CONV_2D.
        **kwargs: ``keras.layers.Conv2D`` arguments (``padding`` must be ``"valid"``).
    """

    def __init__(self, pad: int = 0, narrow_matmul: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.narrow_matmul = bool(narrow_matmul)
        if self.padding != "valid":
            raise ValueError(
                f"PaddedConv2D pads explicitly; padding must be 'valid'. Received: {self.padding!r}"
            )
        self.pad = int(pad)

    def call(self, inputs):
        p = self.pad
        kernel = tf.cast(self.kernel, inputs.dtype)
        if max(self.dilation_rate) > 1 and tuple(self.strides) == (1, 1):
            y = atrous_conv2d(inputs, kernel, self.dilation_rate, p, self.narrow_matmul)
        else:
            y = tf.nn.conv2d(
                inputs,
                kernel,
                strides=self.strides,
                padding=[[0, 0], [p, p], [p, p], [0, 0]] if p else "VALID",
                dilations=self.dilation_rate,
            )
        if self.use_bias:
            y = tf.nn.bias_add(y, tf.cast(self.bias, y.dtype))
        return self.activation(y) if self.activation is not None else y

    def compute_output_shape(self, input_shape):
        grow = lambda d: None if d is None else d + 2 * self.pad
        n, h, w, c = input_shape
        return super().compute_output_shape((n, grow(h), grow(w), c))

    def get_config(self):
        return {**super().get_config(), "pad": self.pad, "narrow_matmul": self.narrow_matmul}
