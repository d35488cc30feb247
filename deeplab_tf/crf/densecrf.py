"""Fully connected CRF refinement (Kraehenbuehl and Koltun 2011; DeepLab v2 paper Sec. 3.3).

Energy ``E(x) = sum_i theta_i(x_i) + sum_{i<j} mu(x_i, x_j) k(f_i, f_j)`` with unary
``theta_i = -log P(x_i)``, Potts ``mu`` and the two Gaussian kernels

    w1 exp(-|p_i-p_j|^2 / 2 s_a^2 - |I_i-I_j|^2 / 2 s_b^2) + w2 exp(-|p_i-p_j|^2 / 2 s_g^2),

minimised by mean field: ``Q = softmax(-U + sum_k w_k * normalised message_k(Q))``.
(The paper's Eqs. (2)-(3); docs/architecture.md#dense-crf.)

Example:
    >>> crf = DenseCRF.from_preset("resnet101")
    >>> refined = crf(image_uint8, probs)        # (N, H, W, C) float32
    >>> labels = crf.labels(image_uint8, probs)  # (N, H, W) int32
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import tensorflow as tf

from deeplab_tf.crf import lattice as _lattice
from deeplab_tf.crf.presets import preset as _preset

BACKENDS = ("tf", "pydensecrf")
NORMALIZATIONS = ("symmetric", "after")
IMPLS = ("sparse", "builtin")
OVERFLOW = ("error", "downsample")


class DenseCRF(tf.Module):
    """Dense CRF mean-field refinement of per-pixel class probabilities.

    The default ``"tf"`` backend runs the permutohedral lattice (:mod:`deeplab_tf.crf.lattice`)
    with standard TensorFlow ops, batched (N images of one size), any size, inside
    ``tf.function`` and SavedModels. ``impl="builtin"`` restricts it to ops that have TFLite
    builtin kernels (slower on CPU than the default ``"sparse"``). The ``"pydensecrf"``
    backend calls the reference C++ implementation (``pip install deeplab_tf[crf]``).

    Eager calls run one compiled ``tf.function`` per instance (lattice build and all
    iterations in one graph; traced for the first size, then shape-generic). The positional
    kernel's lattice depends only on the image size, so it is built once per size and kept
    in a small cache (8 sizes; about 40 MB for a 500x375 image).

    Args:
        iterations: mean-field iterations (10 in the paper).
        bi_w: bilateral (appearance) kernel weight w1.
        bi_xy_std: bilateral kernel position standard deviation s_a, in pixels.
        bi_rgb_std: bilateral kernel colour standard deviation s_b, in 0..255 units.
        bi_feature_std: for images with another channel count (or per-channel weighting): one
            standard deviation per image channel, replacing ``bi_rgb_std``; the bilateral
            kernel then runs on ``2 + N`` features (pydensecrf's generic pairwise energy,
            ``create_pairwise_bilateral``). Channel values are still 0..255 (scale first).
        pos_w: positional (smoothness) kernel weight w2.
        pos_xy_std: positional kernel standard deviation s_g, in pixels.
        normalization: ``"symmetric"`` (pydensecrf's default: ``n * K(n * Q)`` with
            ``n = 1 / sqrt(K 1)``) or ``"after"`` (the authors' 2011 code: ``K(Q) / K 1``).
        from_logits: the second argument of ``__call__`` holds logits (unary ``-log_softmax``)
            instead of probabilities (unary ``-log(clip(p, prob_clip, 1))``).
        prob_clip: lower clip of probabilities before the log (pydensecrf's
            ``unary_from_softmax`` default, 1e-5).
        backend: ``"tf"`` or ``"pydensecrf"``.
        impl: ``"sparse"`` or ``"builtin"`` for the tf backend (see
            :func:`deeplab_tf.crf.lattice.make_filter`).
        max_vertices: cap on the vertices of each lattice (memory grows as vertices x
            classes; see :mod:`deeplab_tf.crf.lattice`); None disables it.
        overflow: what an eager call does when a lattice would exceed ``max_vertices``:
            ``"error"`` raises :class:`~deeplab_tf.crf.lattice.LatticeOverflowError`;
            ``"downsample"`` warns and runs the CRF on the image downsampled 2x (then 4x, 8x),
            with the spatial standard deviations scaled alike, and upsamples the result.
        name: module name.

    Raises:
        ValueError: for out-of-range parameters or unknown options.
    """

    def __init__(
        self,
        iterations: int = 10,
        bi_w: float = 4.0,
        bi_xy_std: float = 67.0,
        bi_rgb_std: float = 3.0,
        bi_feature_std=None,
        pos_w: float = 3.0,
        pos_xy_std: float = 1.0,
        normalization: str = "symmetric",
        from_logits: bool = False,
        prob_clip: float = 1e-5,
        backend: str = "tf",
        impl: str = "sparse",
        max_vertices: int | None = _lattice.DEFAULT_MAX_VERTICES,
        overflow: str = "error",
        name: str | None = None,
    ):
        super().__init__(name=name)
        if not isinstance(iterations, (int, np.integer)) or iterations < 0:
            raise ValueError(
                f"iterations must be an integer >= 0. Received: iterations={iterations!r}"
            )
        for key, val in (
            ("bi_xy_std", bi_xy_std),
            ("bi_rgb_std", bi_rgb_std),
            ("pos_xy_std", pos_xy_std),
        ):
            if not float(val) > 0:
                raise ValueError(f"{key} must be > 0. Received: {key}={val!r}")
        for key, val in (("bi_w", bi_w), ("pos_w", pos_w)):
            if not float(val) >= 0:
                raise ValueError(f"{key} must be >= 0. Received: {key}={val!r}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}. "
                f"Received: normalization={normalization!r}"
            )
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}. Received: backend={backend!r}")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}. Received: impl={impl!r}")
        if not 0 < float(prob_clip) < 1:
            raise ValueError(f"prob_clip must be in (0, 1). Received: prob_clip={prob_clip!r}")
        if max_vertices is not None and int(max_vertices) < 1:
            raise ValueError(
                f"max_vertices must be a positive integer or None. "
                f"Received: max_vertices={max_vertices!r}"
            )
        self.iterations = int(iterations)
        self.bi_w = float(bi_w)
        self.bi_xy_std = float(bi_xy_std)
        self.bi_rgb_std = float(bi_rgb_std)
        if bi_feature_std is not None:
            stds = [float(v) for v in bi_feature_std]
            if not stds or not all(v > 0 for v in stds):
                raise ValueError(
                    "bi_feature_std must be one positive standard deviation per image channel. "
                    f"Received: bi_feature_std={bi_feature_std!r}"
                )
            bi_feature_std = tuple(stds)
        self.bi_feature_std = bi_feature_std
        self.pos_w = float(pos_w)
        self.pos_xy_std = float(pos_xy_std)
        self.normalization = normalization
        self.from_logits = bool(from_logits)
        self.prob_clip = float(prob_clip)
        self.backend = backend
        self.impl = impl
        self.max_vertices = None if max_vertices is None else int(max_vertices)
        if overflow not in OVERFLOW:
            raise ValueError(f"overflow must be one of {OVERFLOW}. Received: overflow={overflow!r}")
        self.overflow = overflow

    # === Config ===
    def get_config(self) -> dict:
        """Returns the constructor arguments (JSON-serialisable)."""
        return {
            "iterations": self.iterations,
            "bi_w": self.bi_w,
            "bi_xy_std": self.bi_xy_std,
            "bi_rgb_std": self.bi_rgb_std,
            "bi_feature_std": None if self.bi_feature_std is None else list(self.bi_feature_std),
            "pos_w": self.pos_w,
            "pos_xy_std": self.pos_xy_std,
            "normalization": self.normalization,
            "from_logits": self.from_logits,
            "prob_clip": self.prob_clip,
            "backend": self.backend,
            "impl": self.impl,
            "max_vertices": self.max_vertices,
            "overflow": self.overflow,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config: dict) -> DenseCRF:
        """Builds a DenseCRF from :meth:`get_config`'s output."""
        return cls(**config)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> DenseCRF:
        """The preset parameters for a backbone or model (docs/architecture.md#crf-parameters).

        Args:
            name: ``"resnet101"`` (also ``"resnet"``, ``"resnet50"``, ``"resnet152"``,
                ``"mobilenetv2"``), ``"vgg16"`` (``"vgg"``) or a registered model name.
            **overrides: constructor arguments replacing the preset's.

        Returns:
            A DenseCRF.
        """
        params = _preset(name)
        params.pop("source", None)
        params.update(overrides)
        return cls(**params)

    # === Inference ===
    def __call__(self, image, probs):
        """Refines class probabilities.

        Inputs are checked before any work. Called eagerly (arrays, eager tensors), the
        values are checked too: images must be 0..255 and finite; probabilities finite,
        non-negative, at most 1 and with a positive sum per pixel (values above 1 look like
        logits: pass ``from_logits=True``); per-pixel sums off 1 by more than 1e-3 are
        normalised with a warning. Inside a graph (``tf.function``, the exported
        ``serving_crf`` signature, TFLite builtins, where an assertion op would not convert)
        the same conditions are enforced by clamping instead: NaN -> 0, values clipped to
        [0, 1], each pixel divided by its sum (uniform where the sum is 0), and float images
        rounded and clipped to 0..255.

        Args:
            image: RGB (N, H, W, 3) or (H, W, 3): uint8, or another integer/float dtype holding
                0..255 values. ``uint16`` (and other 16-bit scales) are refused: scale to 0..255.
            probs: (N, H, W, C) or (H, W, C) probabilities (or logits with
                ``from_logits=True``) at the image's resolution.

        Returns:
            float32 refined probabilities, same rank as ``probs``.

        Raises:
            ValueError: for inputs of the wrong rank, channel count, size or dtype, and (eager
                calls) for values outside the ranges above.
        """
        image, probs, squeeze = self._check_inputs(image, probs)
        if self.backend == "pydensecrf":
            out = self._pydensecrf(image, probs)
        elif tf.executing_eagerly():
            try:
                out = self._tf_eager(image, probs)
            except _lattice.LatticeOverflowError as err:
                if self.overflow != "downsample":
                    raise
                out = self._downsampled(image, probs, err)
        else:
            out = self._tf(image, probs)
        return out[0] if squeeze else out

    def labels(self, image, probs):
        """Refined per-pixel labels: ``argmax`` of :meth:`__call__` as int32."""
        return tf.argmax(self(image, probs), axis=-1, output_type=tf.int32)

    def _check_inputs(self, image, probs):
        image = tf.convert_to_tensor(image)
        probs = tf.convert_to_tensor(probs)
        if image.shape.rank not in (3, 4) or not image.shape[-1]:
            raise ValueError(
                "image must be (N, H, W, C) or (H, W, C) with a static channel count (3: RGB; "
                f"other counts use bi_feature_std). Received: shape={image.shape}"
            )
        self.feature_stds(int(image.shape[-1]))  # one std per channel, checked before any work
        if probs.shape.rank != image.shape.rank:
            raise ValueError(
                "probs must have the image's rank, (N, H, W, C) or (H, W, C). "
                f"Received: image.shape={image.shape}, probs.shape={probs.shape}"
            )
        if probs.shape[-1] is None or probs.shape[-1] < 1:
            raise ValueError(f"probs needs a static class axis. Received: shape={probs.shape}")
        squeeze = image.shape.rank == 3
        if squeeze:
            image, probs = image[None], probs[None]
        static_i, static_p = image.shape.as_list(), probs.shape.as_list()
        for k in range(3):
            a, b = static_i[k], static_p[k]
            if a is not None and b is not None and a != b:
                raise ValueError(
                    "image and probs must have the same batch and spatial size. "
                    f"Received: image.shape={image.shape}, probs.shape={probs.shape}"
                )
        image = _check_image_dtype(image)
        if not probs.dtype.is_floating:
            raise ValueError(
                f"probs must be floating point. Received: probs.dtype={probs.dtype.name}; "
                "expected float32 probabilities (or logits with from_logits=True)"
            )
        eager = tf.executing_eagerly() and not isinstance(probs, tf.Variable)
        if eager:
            _check_image_values(image)
        if image.dtype != tf.uint8:
            image = tf.cast(tf.clip_by_value(tf.round(tf.cast(image, tf.float32)), 0, 255), "uint8")
        if probs.dtype != tf.float32:
            probs = tf.cast(probs, tf.float32)
        if not self.from_logits:
            probs = _check_probabilities(probs) if eager else _sanitise_probabilities(probs)
        elif eager and not bool(tf.reduce_all(tf.math.is_finite(probs))):
            raise ValueError(
                "logits hold NaN or inf. Received: non-finite logits; expected finite scores"
            )
        return image, probs, squeeze

    def _unary(self, probs):
        if self.from_logits:
            return -tf.nn.log_softmax(probs, axis=-1)
        return -tf.math.log(tf.clip_by_value(probs, np.float32(self.prob_clip), 1.0))

    # --- TensorFlow backend ---
    def feature_stds(self, channels: int) -> np.ndarray:
        """The bilateral kernel's standard deviation per image channel (``bi_feature_std``,
        else ``bi_rgb_std`` for every channel)."""
        if self.bi_feature_std is None:
            if channels != 3:
                raise ValueError(
                    f"the image has {channels} channels; the bilateral kernel with bi_rgb_std "
                    "reads RGB (3). For other images pass bi_feature_std with one standard "
                    f"deviation per channel. Received: image channels={channels}"
                )
            return np.full([channels], self.bi_rgb_std, np.float32)
        if len(self.bi_feature_std) != channels:
            raise ValueError(
                f"bi_feature_std has {len(self.bi_feature_std)} values; the image has {channels} "
                f"channels. Received: bi_feature_std={list(self.bi_feature_std)!r}"
            )
        return np.asarray(self.bi_feature_std, np.float32)

    def _key_budget(self, height, width, batch, d):
        """Static check of the int64 key budget; returns False when it must be checked in graph."""
        if height is None or width is None:
            return True
        if d == 2:
            s = self.pos_xy_std
            lo, hi = [0.0, 0.0], [(width - 1) / s, (height - 1) / s]
        else:
            s, stds = self.bi_xy_std, self.feature_stds(d - 2)
            lo = [0.0] * d
            hi = [(width - 1) / s, (height - 1) / s] + [255.0 / float(c) for c in stds]
        bits = _lattice.key_bits_for_bounds(lo, hi, batch=batch if batch else 1)
        if bits > _lattice.KEY_BITS:
            raise ValueError(
                f"the dense CRF's permutohedral keys for a {height}x{width} image "
                f"(batch {batch}, d={d}) need up to {bits:.1f} bits, more than the "
                f"{_lattice.KEY_BITS}-bit int64 budget: the standard deviations are too small "
                f"for the image. Received: bi_xy_std={self.bi_xy_std}, "
                f"bi_rgb_std={self.bi_rgb_std}, pos_xy_std={self.pos_xy_std}"
            )
        return batch is None

    def _norm_from_k1(self, k1):
        """Per-point normalisation from ``K 1`` (the filtered ones)."""
        if self.impl == "builtin":  # TFLite has no float64 kernels.
            k1 = k1 + np.float32(1e-20)
            if self.normalization == "symmetric":
                return 1.0 / tf.sqrt(k1)
            return 1.0 / k1
        # The reference computes 1 / sqrt(K1 + 1e-20) in double.
        k1 = tf.cast(k1, tf.float64) + 1e-20
        if self.normalization == "symmetric":
            return tf.cast(1.0 / tf.sqrt(k1), tf.float32)
        return tf.cast(1.0 / k1, tf.float32)

    def _kernel_filter(self, lat, weight, k1=None, plan=None):
        """The normalised, weighted message ``w * n K(n Q)`` (or ``w * K(Q) / K1``) as one
        filter with the scales folded into its splat and slice weights; ``K 1`` is computed
        on the same index structures when not given."""
        if self.impl == "sparse" and plan is None:
            plan = _lattice.sparse_plan(lat, parts=_PARTS)
        if k1 is None:
            plain = _lattice.make_filter(lat, self.impl, plan=plan)
            k1 = plain(tf.ones([tf.shape(lat.offsets)[0], 1], tf.float32))[:, 0]
        norm = self._norm_from_k1(k1)
        post = norm * np.float32(weight)
        pre = norm if self.normalization == "symmetric" else None
        if self.impl == "sparse":
            return _lattice.make_split_filter(lat, pre=pre, post=post, plan=plan)
        filt = _lattice.make_filter(lat, self.impl, pre=pre, post=post)
        return lambda blocks: [filt(blocks[0])]

    def _tf_eager(self, image, probs):
        """Eager calls run one compiled graph (lattice build and all iterations), so
        independent ops run side by side and nothing is dispatched from Python per step."""
        n, height, width, _ = probs.shape.as_list()
        if self.iterations > 0 and self.bi_w > 0:
            self._key_budget(height, width, n, 2 + int(image.shape[-1]))  # errors before tracing
        pos = None
        if self.iterations > 0 and self.pos_w > 0:
            self._key_budget(height, width, 1, 2)
            pos = _position_kernel(height, width, self.pos_xy_std, self.max_vertices, self.impl)
        holder = self.__dict__.get("_compiled")
        if holder is None:
            holder = _Compiled(tf.function(self._tf, reduce_retracing=True))
            object.__setattr__(self, "_compiled", holder)
        try:
            return holder.fn(image, probs, pos)
        except tf.errors.InvalidArgumentError as err:
            raise _graph_error(err, f"image shape={tuple(image.shape)}") from None

    def _downsampled(self, image, probs, err):
        """The CRF on the image downsampled 2x, 4x or 8x (the first whose lattice fits), with
        the spatial standard deviations scaled alike; the result is upsampled back."""
        height, width = probs.shape[1], probs.shape[2]
        for factor in (2, 4, 8):
            size = (-(-height // factor), -(-width // factor))
            small = tf.image.resize(tf.cast(image, tf.float32), size, method="area")
            small = tf.cast(tf.clip_by_value(tf.round(small), 0, 255), tf.uint8)
            config = dict(self.get_config(), overflow="error", name=None)
            config.update(bi_xy_std=self.bi_xy_std / factor, pos_xy_std=self.pos_xy_std / factor)
            try:
                refined = DenseCRF(**config)._tf_eager(
                    small, tf.image.resize(probs, size, method="area")
                )
            except _lattice.LatticeOverflowError:
                continue
            warnings.warn(
                f"Dense CRF: the lattice of a {width}x{height} image has more vertices than "
                f"max_vertices={self.max_vertices}; the CRF ran on the image downsampled "
                f"{factor}x ({size[1]}x{size[0]}) and its result was upsampled.",
                stacklevel=3,
            )
            up = tf.image.resize(refined, (height, width), method="bilinear")
            return up / tf.reduce_sum(up, axis=-1, keepdims=True)
        raise err

    def _tf(self, image, probs, pos=None):
        shape = tf.shape(probs)
        batch, height, width = shape[0], shape[1], shape[2]
        static = probs.shape.as_list()
        classes = static[-1]
        points = height * width
        neg_unary = -tf.reshape(self._unary(probs), [batch * points, classes])
        q = tf.nn.softmax(neg_unary, axis=-1)
        if self.iterations == 0:
            return tf.reshape(q, shape)

        filters = []
        if self.pos_w > 0:
            # Positions do not depend on the image: one lattice (and its K 1) per size, shared
            # by the batch (tiled), built once and cached for static sizes.
            if pos is None and static[1] is not None and static[2] is not None:
                self._key_budget(static[1], static[2], 1, 2)
                with tf.init_scope():
                    pos = _position_kernel(
                        static[1], static[2], self.pos_xy_std, self.max_vertices, self.impl
                    )
            if pos is None:
                lat = _lattice.build_lattice(
                    _positions(height, width, self.pos_xy_std),
                    max_vertices=self.max_vertices,
                    check_key_budget=True,
                    impl=self.impl,
                )
                k1 = plan = None
            else:
                lat, k1, plan = _lattice_from(pos), pos[4], pos[5]
            if static[0] != 1:
                lat, plan = _tile_lattice(lat, batch), None
                k1 = None if k1 is None else tf.tile(k1, [batch])
            filters.append(self._kernel_filter(lat, self.pos_w, k1, plan))
        if self.bi_w > 0:
            channels = int(image.shape[-1])
            check = self._key_budget(static[1], static[2], static[0], 2 + channels)
            pos_feats = _positions(height, width, self.bi_xy_std)
            pos_feats = tf.tile(pos_feats[None], [batch, 1, 1])
            colour = tf.cast(tf.reshape(image, [batch, points, channels]), tf.float32)
            colour = colour / tf.constant(self.feature_stds(channels))
            feats = tf.concat([pos_feats, colour], axis=-1)
            feats = tf.reshape(feats, [batch * points, 2 + channels])
            bidx = None
            if static[0] != 1:
                bidx = tf.repeat(tf.range(batch), points)
            lat = _lattice.build_lattice(
                feats,
                batch_index=bidx,
                max_vertices=self.max_vertices,
                check_key_budget=check,
                impl=self.impl,
            )
            filters.append(self._kernel_filter(lat, self.bi_w))

        # The sparse filters work on point blocks (independent splat / slice ops that run side
        # by side); the mean-field state stays in blocks until the end.
        parts = _PARTS if self.impl == "sparse" else 1
        if parts == 1:
            neg_blocks = [neg_unary]
        else:
            total_points = batch * points
            sizes = [total_points * i // parts for i in range(parts + 1)]
            sizes = tf.stack([sizes[i + 1] - sizes[i] for i in range(parts)])
            neg_blocks = tf.split(neg_unary, sizes, axis=0, num=parts)
        q = [tf.nn.softmax(x, axis=-1) for x in neg_blocks]
        for _ in range(self.iterations):
            messages = [filt(q) for filt in filters]
            # Chained adds, not AddN (see lattice.sum_tensors: an aborted step would poison it).
            totals = [
                _lattice.sum_tensors([neg] + [msg[i] for msg in messages])
                for i, neg in enumerate(neg_blocks)
            ]
            q = [tf.nn.softmax(x, axis=-1) for x in totals]
        q = q[0] if parts == 1 else tf.concat(q, axis=0)
        return tf.reshape(q, shape)

    # --- pydensecrf backend ---
    def _pydensecrf(self, image, probs):
        try:
            import pydensecrf.densecrf as dcrf
        except ImportError as err:
            raise ImportError(
                "DenseCRF(backend='pydensecrf') needs pydensecrf: "
                "pip install deeplab_tf[crf] (installs pydensecrf2)"
            ) from err
        unary = self._unary(probs)
        norm = (
            dcrf.NORMALIZE_SYMMETRIC
            if self.normalization == "symmetric"
            else (dcrf.NORMALIZE_AFTER)
        )

        def run(img, un):
            n, h, w, c = un.shape
            out = np.empty((n, h, w, c), np.float32)
            for k in range(n):
                crf = dcrf.DenseCRF2D(w, h, c)
                crf.setUnaryEnergy(np.ascontiguousarray(un[k].reshape(-1, c).T, np.float32))
                if self.pos_w > 0:
                    crf.addPairwiseGaussian(
                        sxy=self.pos_xy_std, compat=self.pos_w, normalization=norm
                    )
                if self.bi_w > 0 and img.shape[-1] == 3 and self.bi_feature_std is None:
                    crf.addPairwiseBilateral(
                        sxy=self.bi_xy_std,
                        srgb=self.bi_rgb_std,
                        rgbim=np.array(img[k], dtype=np.uint8, order="C"),
                        compat=self.bi_w,
                        normalization=norm,
                    )
                elif self.bi_w > 0:  # N channels: pydensecrf's generic pairwise energy
                    # on the features addPairwiseBilateral builds for RGB, in its order
                    # (x, y, then the channels; create_pairwise_bilateral puts y first, and
                    # the permutohedral approximation depends on the order)
                    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
                    stds = self.feature_stds(img.shape[-1])
                    chans = np.asarray(img[k], np.float32).reshape(h * w, -1) / stds
                    feats = np.concatenate(
                        [(xx.reshape(1, -1) / self.bi_xy_std), (yy.reshape(1, -1) / self.bi_xy_std),
                         chans.T], axis=0,
                    )  # fmt: skip
                    crf.addPairwiseEnergy(
                        np.ascontiguousarray(feats, np.float32), compat=self.bi_w,
                        normalization=norm,
                    )  # fmt: skip
                q = np.array(crf.inference(self.iterations), np.float32)
                out[k] = q.T.reshape(h, w, c)
            return out

        out = tf.numpy_function(run, [image, unary], tf.float32, stateful=False)
        out.set_shape(probs.shape)
        return out


_IMAGE_DTYPES = ("uint8", "int32", "int64", "float16", "bfloat16", "float32", "float64")
_SUM_TOLERANCE = 1e-3


def _check_image_dtype(image):
    dtype = image.dtype.name
    if dtype not in _IMAGE_DTYPES:
        raise ValueError(
            f"image must hold RGB values 0..255. Received: image.dtype={dtype}; expected one of "
            f"{_IMAGE_DTYPES}"
            + (
                " (scale 16-bit images to 0..255 first, e.g. image // 257)"
                if dtype == "uint16"
                else ""
            )
        )
    return image


def _check_image_values(image):
    if image.dtype == tf.uint8 or tf.size(image) == 0:
        return
    x = tf.cast(image, tf.float32)
    lo, hi = float(tf.reduce_min(x)), float(tf.reduce_max(x))
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > 255:
        raise ValueError(
            f"image values must be 0..255. Received: image.dtype={image.dtype.name} with values "
            f"in [{lo}, {hi}]; expected RGB 0..255 (a 0..1 float image needs * 255)"
        )


def _check_probabilities(probs):
    """Eager validation (see ``DenseCRF.__call__``); returns the (maybe normalised) probs."""
    import warnings

    if tf.size(probs) == 0:
        return probs
    p = probs.numpy()
    where = "DenseCRF: probs"
    if not np.isfinite(p).all():
        bad = int((~np.isfinite(p)).sum())
        raise ValueError(
            f"{where} hold {bad} NaN or inf values. Received: non-finite probabilities; "
            "expected finite values in [0, 1]"
        )
    lo, hi = float(p.min()), float(p.max())
    if lo < 0 or hi > 1 + _SUM_TOLERANCE:
        hint = " They look like logits: pass from_logits=True." if lo < 0 or hi > 1 else ""
        raise ValueError(
            f"{where} must be in [0, 1]. Received: values in [{lo:g}, {hi:g}]; expected "
            f"probabilities (softmax outputs).{hint}"
        )
    sums = p.sum(axis=-1, dtype=np.float64)
    if (sums <= 0).any():
        raise ValueError(
            f"{where} are all zero at {int((sums <= 0).sum())} pixel(s). Received: a zero "
            "probability vector; expected each pixel's probabilities to sum to 1"
        )
    off = np.abs(sums - 1.0)
    if off.max() > _SUM_TOLERANCE:
        warnings.warn(
            f"{where} do not sum to 1 (per-pixel sums in [{sums.min():.4g}, {sums.max():.4g}]); "
            "normalising them. Pass softmax outputs, or logits with from_logits=True.",
            stacklevel=4,
        )
        return tf.constant((p / sums[..., None]).astype(np.float32))
    return probs


def _sanitise_probabilities(probs):
    """In-graph counterpart of :func:`_check_probabilities` with TFLite builtin ops only:
    NaN -> 0, clip to [0, 1], divide by the per-pixel sum (uniform where it is 0)."""
    p = tf.clip_by_value(tf.where(tf.equal(probs, probs), probs, tf.zeros_like(probs)), 0.0, 1.0)
    total = tf.reduce_sum(p, axis=-1, keepdims=True)
    uniform = tf.ones_like(p) / tf.cast(tf.shape(p)[-1], tf.float32)
    return tf.where(total > 0, p / tf.maximum(total, np.float32(1e-30)), uniform)


def _positions(height, width, std):
    """(H*W, 2) float32 [x / std, y / std] in row-major pixel order, as pydensecrf."""
    ys, xs = tf.meshgrid(tf.range(height), tf.range(width), indexing="ij")
    pos = tf.stack([tf.reshape(xs, [-1]), tf.reshape(ys, [-1])], axis=-1)
    return tf.cast(pos, tf.float32) / np.float32(std)


#: Point blocks of the sparse mean-field loop (one per core of a typical CPU).
_PARTS = 2


class _Compiled:
    """Holds a DenseCRF's compiled eager path outside tf.Module attribute tracking (so it is
    never exported with the module)."""

    def __init__(self, fn):
        self.fn = fn


@functools.lru_cache(maxsize=8)
@tf.autograph.experimental.do_not_convert
def _position_kernel_eager(height, width, std, max_vertices, impl):
    def build(h, w):
        lat = _lattice.build_lattice(
            _positions(h, w, std), max_vertices=max_vertices, check_key_budget=False, impl=impl
        )
        plan = _lattice.sparse_plan(lat, parts=_PARTS) if impl == "sparse" else None
        k1 = _lattice.make_filter(lat, impl, plan=plan)(tf.ones([h * w, 1], tf.float32))[:, 0]
        return lat.offsets, lat.weights, lat.neighbours, lat.num_vertices, k1, plan

    fn = tf.function(build)
    try:
        return tuple(fn(tf.constant(height), tf.constant(width)))
    except tf.errors.InvalidArgumentError as err:
        raise _graph_error(err, f"height={height}, width={width}") from None


def _graph_error(err, received):
    """A ValueError (LatticeOverflowError for the vertex cap) with the cause of a failed graph
    run: TensorFlow's message starts with "Graph execution error:" and a stack trace, and the
    assertion's own text is at its end."""
    lines = [ln.strip() for ln in err.message.splitlines()]
    cause = next((ln for ln in lines if "assertion failed:" in ln), lines[-1] if lines else "")
    cause = cause.split("assertion failed:", 1)[-1].strip().strip("[]").split("] [[")[0]
    cls = ValueError
    if _lattice.OVERFLOW_MESSAGE in cause:
        cls = _lattice.LatticeOverflowError
        cause += (
            " (memory grows as vertices x classes): use a smaller image, larger bi_xy_std / "
            "bi_rgb_std or a larger max_vertices, or let the CRF downsample (DenseCRF "
            'overflow="downsample", as deeplab-tf predict and evaluate do)'
        )
    return cls(f"{cause}. Received: {received}")


@tf.autograph.experimental.do_not_convert
def _position_kernel(height, width, std, max_vertices, impl):
    """The positional kernel's lattice and ``K 1`` for one image of a static size, built
    eagerly once per size (cached; constants in a traced graph).

    Returns:
        (offsets, weights, neighbours, num_vertices, k1, sparse plan or None), eager
        tensors.
    """
    with tf.init_scope():
        return _position_kernel_eager(int(height), int(width), float(std), max_vertices, impl)


def _lattice_from(pos):
    return _lattice.Lattice(
        offsets=pos[0], weights=pos[1], neighbours=pos[2], num_vertices=pos[3], dim=2
    )


def _tile_lattice(lat, copies):
    """``copies`` independent copies of a lattice (block-diagonal), for a batch of images
    that share positional features: copy b's rows are offset by b * (M + 1), so each copy
    keeps its own zero row."""
    m1 = lat.num_vertices + 1
    shift = tf.range(copies) * m1
    offsets = tf.reshape(lat.offsets[None] + shift[:, None, None], [-1, lat.dim + 1])
    weights = tf.tile(lat.weights, [copies, 1])
    nb = lat.neighbours[:, :, None, :] + shift[None, None, :, None]  # (d+1, 2, B, M+1)
    neighbours = tf.reshape(nb, [lat.dim + 1, 2, -1])
    return _lattice.Lattice(
        offsets=offsets,
        weights=weights,
        neighbours=neighbours,
        num_vertices=copies * m1 - 1,
        dim=lat.dim,
    )


def crf_labels(image, probs, **kwargs):
    """One-call helper: refined labels with ``DenseCRF(**kwargs)``.

    Args:
        image: uint8 RGB (N, H, W, 3) or (H, W, 3).
        probs: matching (N, H, W, C) or (H, W, C) probabilities.
        **kwargs: :class:`DenseCRF` arguments, or ``preset="resnet101"`` / ``"vgg16"``.

    Returns:
        int32 labels (N, H, W) or (H, W).
    """
    preset = kwargs.pop("preset", None)
    crf = DenseCRF.from_preset(preset, **kwargs) if preset else DenseCRF(**kwargs)
    return crf.labels(image, probs)
