"""Permutohedral lattice (Adams, Baek, Davis 2010) with standard TensorFlow ops only.

The fully connected CRF's Gaussian message passing is a high-dimensional Gaussian filter; the
permutohedral lattice computes it in linear time by splatting each point onto the d+1 vertices
of its enclosing simplex, blurring along the d+1 lattice directions, and slicing back
(docs/architecture.md#permutohedral-lattice). It follows the reference code used by pydensecrf
(Kraehenbuehl's ``permutohedral.cpp``) operation by operation, in float32, so that a single
filtering pass matches it to float32 precision:

1. elevation with the reference recurrence and scale factors (not a MatMul, whose different
   summation order flips a few hundred labels on real photos);
2. rounding to the nearest remainder-0 point (half to even), ranking of the residuals, wrap
   by the coordinate sum, barycentric weights;
3. vertex keys packed into int64 with a mixed radix and a +-(d+1) margin, so that a vertex's
   blur neighbours are its packed key plus a constant and can never alias another vertex;
4. hashing: ``impl="builtin"`` uses one ``tf.unique`` (first-occurrence order, like the
   reference hash table) and two more over [keys, shifted keys] for the neighbours;
   ``impl="sparse"`` (the CPU default) hashes in ``key mod 8`` partitions, numbers the
   vertices in ascending key order (neighbours then sit close in memory, so the blur's gathers
   run faster; benchmarks/README.md) and finds neighbours with ``tf.searchsorted``;
5. splat, blur and slice as sparse-dense MatMuls (``"sparse"``, int32 indices, missing
   neighbours dropped) or ``unsorted_segment_sum`` and gathers (``"builtin"``).

The build works coordinate-major ((d+1, P) arrays) because column slices and last-axis
stacks of (P, d+1) arrays are per-element copies in TensorFlow.

With ``impl="builtin"`` every op used (``Unique``, ``UnsortedSegmentSum``, ``GatherV2``,
``MatMul``, elementwise maths) has a TFLite builtin kernel, so graphs convert with
``tf.lite.OpsSet.TFLITE_BUILTINS`` only; both impls use standard TF ops only and load in TF
Serving's C++ runtime.

Memory: the lattice holds ``M`` vertices, a data-dependent number between about ``P / 2**d``
and ``P * (d + 1)`` for ``P`` points (noise reaches the upper end). Filtering ``C`` channels
keeps two ``(M + 1, C)`` float32 buffers plus ``P * (d + 1) * (C + 3)`` words of splat/slice
state, so :func:`build_lattice` takes a ``max_vertices`` cap and fails with a clear error
before allocating any vertex buffer when the cap is exceeded.

Example:
    >>> feats = tf.random.uniform((1000, 2)) * 10.0
    >>> lat = build_lattice(feats)
    >>> smoothed = lattice_filter(lat, tf.ones((1000, 3)))
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import tensorflow as tf

#: Keys are packed into signed int64; stay one bit below so differences never overflow.
KEY_BITS = 62

#: Default cap on the number of lattice vertices (about 2 x 4.2M x C float32 of blur buffers;
#: 0.7 GB for 21 classes). A 500x375 photo needs about 0.2M vertices with the VOC presets.
DEFAULT_MAX_VERTICES = 2**22


class Lattice(NamedTuple):
    """A built permutohedral lattice.

    Attributes:
        offsets: int32 (P, d+1), the vertex id of each point's simplex corners.
        weights: float32 (P, d+1), barycentric weights (splat weights).
        neighbours: int32 (d+1, 2, M+1), vertex ids of the two blur neighbours along each
            lattice direction; missing neighbours (and the padding row M) point to row M,
            which always holds zeros.
        num_vertices: int32 scalar M.
        dim: the feature dimension d (Python int).
    """

    offsets: tf.Tensor
    weights: tf.Tensor
    neighbours: tf.Tensor
    num_vertices: tf.Tensor
    dim: int


def scale_factors(d: int) -> np.ndarray:
    """The diagonal of the elevation matrix, computed as the reference does.

    ``float(1 / sqrt((i + 1)(i + 2)) * float(sqrt(2/3) (d + 1)))`` with the products in double.

    Args:
        d: feature dimension.

    Returns:
        float32 array of shape (d,).
    """
    inv_std_dev = np.float32(math.sqrt(2.0 / 3.0) * (d + 1))
    return np.array(
        [1.0 / math.sqrt((i + 2) * (i + 1)) * float(inv_std_dev) for i in range(d)],
        dtype=np.float32,
    )


def elevate(features: tf.Tensor) -> tf.Tensor:
    """Elevates (P, d) features onto the d-dimensional hyperplane in R^(d+1).

    Uses the reference recurrence (``elevated[j] = sm - j*cf; sm += cf`` for ``j = d..1``) in
    float32 and the same operation order, which a MatMul would not keep.

    Args:
        features: float32 (P, d).

    Returns:
        float32 (P, d+1).
    """
    return tf.transpose(_elevate_t(tf.transpose(features)))


def _elevate_t(features_t):
    """:func:`elevate` on the transposed layout: (d, P) -> (d+1, P). The lattice build works
    coordinate-major, where rows are contiguous (column slices and stacks of (P, d+1)
    arrays are per-element copies in TF)."""
    d = int(features_t.shape[0])
    sf = scale_factors(d)
    cols = tf.unstack(features_t, axis=0)
    elevated = [None] * (d + 1)
    sm = None
    for j in range(d, 0, -1):
        cf = cols[j - 1] * sf[j - 1]
        jcf = cf * np.float32(j)
        elevated[j] = -jcf if sm is None else sm - jcf
        sm = cf if sm is None else sm + cf
    elevated[0] = sm
    return tf.stack(elevated, axis=0)


def elevation_bounds(lo, hi) -> tuple[np.ndarray, np.ndarray]:
    """Interval bounds of the elevated coordinates for features within [lo, hi].

    Args:
        lo: (d,) lower bounds of the features.
        hi: (d,) upper bounds of the features.

    Returns:
        (lower, upper) float64 arrays of shape (d+1,).
    """
    lo = np.asarray(lo, np.float64)
    hi = np.asarray(hi, np.float64)
    d = lo.shape[0]
    sf = scale_factors(d).astype(np.float64)
    coef = np.zeros((d + 1, d))
    for j in range(d + 1):
        coef[j, j:] = sf[j:]
        if j > 0:
            coef[j, j - 1] -= j * sf[j - 1]
    a, b = coef * lo, coef * hi
    return np.minimum(a, b).sum(1), np.maximum(a, b).sum(1)


def key_bits_for_bounds(lo, hi, batch: int = 1) -> float:
    """Bits needed to pack the vertex keys of features bounded by [lo, hi].

    This is a static (trace-time) version of the in-graph budget: each key coordinate ranges
    over the elevated range plus the rounding, simplex and +-(d+1) neighbour margins.

    Args:
        lo: (d,) lower feature bounds.
        hi: (d,) upper feature bounds.
        batch: number of independent lattices packed together (one key digit).

    Returns:
        The number of bits (float) of the packed key.
    """
    elo, ehi = elevation_bounds(lo, hi)
    d = elo.shape[0] - 1
    # |rem0 - elevated| <= 1.5 (d+1) after the wrap, canonical offsets within [-d, d], plus
    # the (d+1) neighbour margin on both sides and one for the inclusive range.
    spans = (ehi - elo)[:d] + 2 * (1.5 * (d + 1) + d + (d + 1)) + 2
    return float(np.sum(np.log2(spans)) + math.log2(max(int(batch), 1)))


def _round_half_even_like_reference(elevated, d):
    """rem0 = round(elevated / (d+1)) * (d+1) with half to even, as SSE's _mm_round_ps."""
    v = tf.round(elevated * np.float32(1.0 / (d + 1)))
    return v * np.float32(d + 1), v


def _simplex(elevated: tf.Tensor, d: int):
    """Rounding, ranking and barycentric weights for (d+1, P) elevated points (transposed).

    Returns the wrapped remainder-0 point (float (d+1, P)), ``inv_rank`` (int32 (d+1, P):
    the coordinate with rank r) and the (d+1, P) barycentric weights.
    """
    dp1 = np.float32(d + 1)
    rem0, v = _round_half_even_like_reference(elevated, d)
    total = tf.reduce_sum(v, axis=0, keepdims=True)  # integer-valued float (1, P)
    residual = elevated - rem0
    # The reference loop: for i < j, rank[i] += (r_i < r_j), rank[j] += !(r_i < r_j). So
    # rank[i] = i + sum_{a < b} [r_a < r_b] ([a == i] - [b == i]): one broadcast compare and
    # an exact small-integer MatMul over the (a, b) pairs.
    signs = np.zeros((d + 1, (d + 1) * (d + 1)), np.float32)
    for pa in range(d + 1):
        for pb in range(pa + 1, d + 1):
            signs[pa, pa * (d + 1) + pb] = 1.0
            signs[pb, pa * (d + 1) + pb] = -1.0
    less = tf.cast(residual[:, None, :] < residual[None, :, :], tf.float32)  # (a, b, P)
    rank = tf.matmul(signs, tf.reshape(less, [(d + 1) * (d + 1), -1]))
    rank = rank + (np.arange(d + 1, dtype=np.float32)[:, None] + total)
    add = tf.cast(rank < 0.0, tf.float32) * dp1
    sub = tf.cast(rank >= dp1, tf.float32) * dp1
    rank = rank + (add - sub)
    rem0 = rem0 + (add - sub)
    vres = (elevated - rem0) * np.float32(1.0 / (d + 1))
    # v_by_rank[r] = vres[i] with rank[i] == r (a permutation: exactly one term is non-zero).
    ranks = np.arange(d + 1, dtype=np.float32)[None, :, None]
    onehot = tf.cast(tf.equal(rank[:, None, :], ranks), tf.float32)  # (i, r, P)
    v_by_rank = tf.reduce_sum(vres[:, None, :] * onehot, axis=0)  # (r, P)
    # inv_rank[r] = i with rank[i] == r, as an exact small-integer MatMul over (i, r) pairs.
    pick = np.zeros((d + 1, (d + 1) * (d + 1)), np.float32)
    for i in range(d + 1):
        for r in range(d + 1):
            pick[r, i * (d + 1) + r] = i
    inv_rank = tf.matmul(pick, tf.reshape(onehot, [(d + 1) * (d + 1), -1]))
    inv_rank = tf.cast(inv_rank, tf.int32)
    vr = tf.unstack(v_by_rank, axis=0)
    # barycentric[p] = v_by_rank[d-p] - v_by_rank[d-p+1]; slot 0 += 1 + slot d+1.
    bary = [vr[d] + (1.0 - vr[0])] + [vr[d - p] - vr[d - p + 1] for p in range(1, d + 1)]
    weights = tf.stack(bary, axis=0)
    return rem0, inv_rank, weights


def _packed_keys(rem0, inv_rank, d, batch_index):
    """Packed int64 keys (d+1, P) of every simplex corner (transposed layout), the
    mixed-radix strides and the bits the packing needs.

    Corner ``r`` of a point has coordinates ``key_i = rem0_i + r - (d+1) [rank_i > d - r]``
    (the reference's canonical simplex); packing is linear, so the packed key is
    ``base + r * sum(strides) - (d+1) * sum_{i: rank_i >= d-r+1} stride_i``.
    """
    rem0_i = tf.cast(rem0[:d], tf.int64)  # (d, P)
    margin = d + 1
    lo = tf.reduce_min(rem0_i, axis=1) - d - margin  # (d,)
    hi = tf.reduce_max(rem0_i, axis=1) + d + margin
    span = hi - lo + 1
    strides = _exclusive_cumprod(span, d)
    base = tf.reduce_sum((rem0_i - lo[:, None]) * strides[:, None], axis=0)  # (P,)
    # stride of the coordinate that has rank k (coordinate d has no key digit).
    by_rank = tf.gather(tf.concat([strides, tf.zeros([1], tf.int64)], 0), inv_rank)
    suffix = tf.cumsum(by_rank, axis=0, reverse=True)  # (d+1, P): sum_{k' >= k}
    wrap = tf.concat([tf.zeros_like(suffix[:1]), tf.reverse(suffix[1:], axis=[0])], 0)
    corner = tf.range(d + 1, dtype=tf.int64) * tf.reduce_sum(strides)
    packed = base[None, :] + (corner[:, None] - wrap * (d + 1))
    total_span = strides[d - 1] * span[d - 1]
    bits = tf.reduce_sum(tf.math.log(tf.cast(span, tf.float64))) / math.log(2.0)
    if batch_index is not None:
        bidx = tf.cast(batch_index, tf.int64)
        packed = packed + bidx[None, :] * total_span
        nb = tf.cast(tf.reduce_max(bidx) + 1, tf.float64)
        bits = bits + tf.math.log(nb) / math.log(2.0)
    return packed, strides, span, bits


def build_lattice(
    features: tf.Tensor,
    batch_index: tf.Tensor | None = None,
    max_vertices: int | None = DEFAULT_MAX_VERTICES,
    check_key_budget: bool = True,
    impl: str = "sparse",
) -> Lattice:
    """Builds the permutohedral lattice of (P, d) float32 features.

    Args:
        features: float32 (P, d), already divided by their standard deviations.
        batch_index: optional int (P,) tensor; points with different values get independent
            lattices (the index becomes the most significant digit of the packed key).
        max_vertices: cap on the number of lattice vertices; None for no cap. When the static
            worst case ``P * (d + 1)`` is within the cap no check is added to the graph;
            otherwise an eager call raises ValueError and a graph raises
            InvalidArgumentError before the vertex buffers are allocated.
        check_key_budget: add an in-graph check that the packed keys fit in 62 bits (callers
            that proved it statically with :func:`key_bits_for_bounds` pass False).
        impl: ``"sparse"`` (hashes with partitioned ``tf.unique`` calls, numbers the vertices
            in key order and finds blur neighbours with ``tf.searchsorted``: the fastest on
            CPU) or
            ``"builtin"`` (one ``tf.unique`` for the vertices and two for the neighbours: ops
            with TFLite builtin kernels only). Both give the same lattice up to the vertex
            numbering.

    Returns:
        A :class:`Lattice`.

    Raises:
        ValueError: for features that are not rank 2 with a static last dimension >= 1, for an
            unknown ``impl``, or, eagerly, for a vertex count or a key budget over the limit.
    """
    if impl not in ("sparse", "builtin"):
        raise ValueError(f"impl must be 'sparse' or 'builtin'. Received: impl={impl!r}")
    features = tf.convert_to_tensor(features)
    if features.shape.rank != 2 or features.shape[-1] is None or features.shape[-1] < 1:
        raise ValueError(
            f"features must be (points, d) with a static d >= 1. Received: shape={features.shape}"
        )
    if features.dtype != tf.float32:
        features = tf.cast(features, tf.float32)
    d = int(features.shape[-1])
    elevated = _elevate_t(tf.transpose(features))  # (d+1, P)
    rem0, inv_rank, weights = _simplex(elevated, d)
    packed, strides, span, bits = _packed_keys(rem0, inv_rank, d, batch_index)
    checks = []
    if check_key_budget:
        checks.append(
            _check(
                bits <= KEY_BITS,
                lambda: (
                    f"the permutohedral lattice keys need {float(bits):.1f} bits, more than the "
                    f"{KEY_BITS}-bit int64 budget (features span too wide a range for their "
                    f"standard deviations). Received: d={d}, key spans={span.numpy().tolist()}"
                ),
                "the permutohedral lattice keys need more than 62 bits (features span too wide "
                "a range for their standard deviations)",
            )
        )
    with tf.control_dependencies([c for c in checks if c is not None]):
        flat = tf.reshape(packed, [-1])
    if impl == "builtin":
        unique_keys, offsets = tf.unique(flat, out_idx=tf.int32)
    else:
        unique_keys, offsets = _partitioned_unique(flat, UNIQUE_PARTITIONS)
    num_vertices = tf.shape(unique_keys, out_type=tf.int32)[0]
    static_p = features.shape[0]
    if max_vertices is not None and (static_p is None or static_p * (d + 1) > max_vertices):
        check = _check(
            num_vertices <= max_vertices,
            lambda: (
                f"the permutohedral lattice has {int(num_vertices)} vertices, over the cap "
                f"max_vertices={max_vertices} (memory grows as vertices x channels). Use a "
                "smaller image, larger standard deviations or a larger max_vertices. "
                f"Received: points={int(tf.shape(features)[0])}, d={d}"
            ),
            f"{OVERFLOW_MESSAGE}{max_vertices}",
            LatticeOverflowError,
        )
        if check is not None:
            with tf.control_dependencies([check]):
                num_vertices = tf.identity(num_vertices)
                unique_keys = tf.identity(unique_keys)

    # Neighbour keys differ from a vertex's key by a constant along each direction j:
    # n1 = key - 1 (all coords) with key[j] + d instead; n2 = key + 1 with key[j] - d, i.e.
    # n2 is n1's inverse: only n1 is looked up and n2 is recovered with unsorted_segment_max
    # (n2(u) = v where n1(v) = u).
    deltas = []
    for j in range(d + 1):
        e1 = np.full(d, -1, np.int64)
        if j < d:
            e1[j] = d
        deltas.append(tf.reduce_sum(tf.constant(e1) * strides))
    shift = tf.stack(deltas)
    if impl == "builtin":
        n1 = _neighbours_by_unique(unique_keys, shift, num_vertices)
    else:
        unique_keys, offsets = _sort_vertices(unique_keys, offsets, num_vertices)
        n1 = _neighbours_by_search(unique_keys, shift, num_vertices)
    # Invert all directions with one segment max: segment j * (M+1) + n1[j, v] gets v.
    m1 = num_vertices + 1
    vertex_ids = tf.tile(tf.range(num_vertices), [d + 1])
    segments = tf.reshape(n1 + tf.range(d + 1)[:, None] * m1, [-1])
    inv = tf.math.unsorted_segment_max(vertex_ids, segments, (d + 1) * m1)
    inv = tf.reshape(inv, [d + 1, m1])  # column M: the (ignored) missing-neighbour slot
    n2 = tf.where(inv < 0, num_vertices, inv)[:, :num_vertices]
    nb = tf.stack([n1, n2], axis=1)  # (d+1, 2, M)
    pad = tf.fill([d + 1, 2, 1], num_vertices)
    neighbours = tf.concat([nb, pad], axis=-1)
    return Lattice(
        offsets=tf.transpose(tf.reshape(offsets, [d + 1, -1])),
        weights=tf.transpose(weights),
        neighbours=neighbours,
        num_vertices=num_vertices,
        dim=d,
    )


#: Number of hash partitions of the vertex keys in the ``"sparse"`` build: ``tf.unique``
#: reserves a table of twice its input, so smaller independent tables stay in cache.
UNIQUE_PARTITIONS = 8


def _partitioned_unique(keys, parts):
    """``tf.unique(keys)`` as ``parts`` independent calls over ``key mod parts`` classes.

    The ids number the unique keys partition by partition (first-occurrence order within
    each); equal keys always fall into the same partition, so the result is a valid unique.
    """
    n = tf.shape(keys)[0]
    part = tf.cast(tf.math.floormod(keys, parts), tf.int32)
    positions = tf.dynamic_partition(tf.range(n), part, parts)
    uniques, ids, start = [], [], tf.constant(0, tf.int32)
    for pos in positions:
        uniq, local = tf.unique(tf.gather(keys, pos), out_idx=tf.int32)
        uniques.append(uniq)
        ids.append(local + start)
        start = start + tf.shape(uniq, out_type=tf.int32)[0]
    return tf.concat(uniques, 0), tf.dynamic_stitch(positions, ids)


def _neighbours_by_unique(keys, shift, num_vertices):
    """n1 ids (d+1, M) by hashing [keys, shifted keys] with tf.unique (TFLite builtins).

    Two independent calls over half the directions each (a graph runs them side by side);
    the unique keys come first, so an id below M is an existing vertex.
    """
    dp1 = int(shift.shape[0])
    half = (dp1 + 1) // 2
    parts = []
    for lo, hi in ((0, half), (half, dp1)):
        if hi <= lo:
            continue
        shifted = keys[None, :] + shift[lo:hi, None]
        _, ids = tf.unique(tf.concat([keys, tf.reshape(shifted, [-1])], 0), out_idx=tf.int32)
        parts.append(tf.reshape(ids[num_vertices:], [hi - lo, -1]))
    return tf.minimum(tf.concat(parts, 0), num_vertices)


def _sort_vertices(keys, offsets, num_vertices):
    """Renumbers the vertices in ascending key order.

    Neighbours along a lattice direction then sit a few mixed-radix "slabs" apart in memory
    instead of anywhere in the table, which makes the blur's gathers faster than in
    first-occurrence order (benchmarks/README.md) and lets the neighbour look-up search sorted
    runs.

    Returns:
        (sorted keys, offsets renumbered).
    """
    neg_sorted, order = tf.math.top_k(-keys, k=num_vertices, sorted=True)
    new_ids = tf.math.invert_permutation(order)
    return -neg_sorted, tf.gather(new_ids, offsets)


def _neighbours_by_search(sorted_keys, shift, num_vertices):
    """n1 ids (d+1, M) of vertices numbered in ascending key order, by binary search of the
    shifted keys (each direction's queries form an ascending run: cache-friendly searches;
    one search per direction, which a graph runs side by side); missing neighbours get id
    M."""
    dp1 = int(shift.shape[0])
    last = num_vertices - 1
    rows = []
    for j in range(dp1):
        queries = sorted_keys + shift[j]
        pos = tf.minimum(tf.searchsorted(sorted_keys, queries, out_type=tf.int32), last)
        found = tf.equal(tf.gather(sorted_keys, pos), queries)
        rows.append(tf.where(found, pos, num_vertices))
    return tf.stack(rows)


def _exclusive_cumprod(span, d):
    """Exclusive cumulative product of a short static-length vector (``cumprod`` has no
    TFLite builtin)."""
    out, acc = [], tf.constant(1, tf.int64)
    for i in range(d):
        out.append(acc)
        acc = acc * span[i]
    return tf.stack(out)


#: The text the graph-mode vertex-cap assertion carries (LatticeOverflowError recognises it).
OVERFLOW_MESSAGE = "the permutohedral lattice has more vertices than max_vertices="


class LatticeOverflowError(ValueError):
    """The lattice needs more vertices than ``max_vertices`` allows (a large, detailed image)."""


def sum_tensors(tensors):
    """``t0 + t1 + ...`` left to right, as chained adds rather than one ``AddN``.

    Grappler's memory optimizer rewrites a many-input ``AddN`` whose inputs arrive at different
    times into an in-place accumulator (a ``TemporaryVariable`` named ``<AddN>/tmp_var``). A
    step aborted by an assertion never destroys it, so every later call in the process then
    fails with ``AlreadyExistsError`` (one over-cap image poisoned a whole ``predict`` batch).
    """
    total = tensors[0]
    for t in tensors[1:]:
        total = total + t
    return total


def _check(condition, eager_message, graph_message, error=ValueError):
    """Raises ``error`` eagerly; returns an Assert op to depend on in a graph."""
    if tf.executing_eagerly():
        if not bool(condition):
            raise error(eager_message())
        return None
    return tf.debugging.Assert(condition, [graph_message])


def make_filter(
    lattice: Lattice,
    impl: str = "sparse",
    reverse: bool = False,
    pre: tf.Tensor | None = None,
    post: tf.Tensor | None = None,
    plan=None,
):
    """Returns ``f(values) -> filtered`` for (P, C) float32 values on ``lattice``.

    Computes ``sum_j k(f_i, f_j) v_j`` (including ``j = i``) up to the lattice approximation,
    as the reference ``Permutohedral::compute`` does (splat, blur along directions 0..d,
    slice, scale by ``1 / (1 + 2^-d)``). The index structures are built once, so calling the
    returned function in a mean-field loop only does the arithmetic. Optional per-point
    scales are folded into the splat and slice weights: ``f(v) = post * K(pre * v)``.

    Args:
        lattice: from :func:`build_lattice`.
        impl: ``"sparse"`` (``tf.sparse.sparse_dense_matmul`` for splat, blur and slice; the
            fastest on CPU, standard TF ops for SavedModel / TF Serving) or ``"builtin"``
            (``unsorted_segment_sum``, ``gather`` and ``batch_matmul``; converts to TFLite with
            builtin ops only).
        reverse: blur the directions in reverse order (the transposed filter).
        pre: optional float32 (P,) scale of the values before splatting.
        post: optional float32 (P,) scale of the filtered values.
        plan: for ``impl="sparse"``, the index structures from :func:`sparse_plan` (shared by
            several filters on one lattice); built here when None.

    Returns:
        A function mapping float32 (P, C) to float32 (P, C).

    Raises:
        ValueError: for an unknown ``impl``.
    """
    if impl not in ("sparse", "builtin"):
        raise ValueError(f"impl must be 'sparse' or 'builtin'. Received: impl={impl!r}")
    d = lattice.dim
    order = list(range(d, -1, -1) if reverse else range(d + 1))
    m1 = lattice.num_vertices + 1
    splat_w, slice_w = _scaled_weights(lattice, pre, post)
    if impl == "builtin":
        flat_offsets = tf.reshape(lattice.offsets, [-1])
        slice_w = slice_w[:, None, :]  # (P, 1, d+1)

        def apply(values):
            values = tf.convert_to_tensor(values, tf.float32)
            channels = tf.shape(values)[-1]
            splat_in = tf.reshape(values[:, None, :] * splat_w[:, :, None], [-1, channels])
            grid = tf.math.unsorted_segment_sum(splat_in, flat_offsets, m1)
            for j in order:
                both = tf.gather(grid, lattice.neighbours[j])  # (2, M+1, C)
                grid = grid + 0.5 * (both[0] + both[1])
            sliced = tf.gather(grid, lattice.offsets)  # (P, d+1, C)
            return tf.squeeze(tf.matmul(slice_w, sliced), 1)

        return apply

    plan = plan if plan is not None else sparse_plan(lattice, reverse)
    split = _sparse_split_filter(plan, splat_w, slice_w)

    sizes = tf.stack([block[1][0] for block in plan[0]])

    def apply(values):
        values = tf.convert_to_tensor(values, tf.float32)
        if len(plan[0]) == 1:
            return split([values])[0]
        blocks = tf.split(values, tf.cast(sizes, tf.int32), axis=0, num=len(plan[0]))
        return tf.concat(split(blocks), axis=0)

    return apply


def make_split_filter(
    lattice: Lattice,
    pre: tf.Tensor | None = None,
    post: tf.Tensor | None = None,
    plan=None,
):
    """The ``"sparse"`` filter of :func:`make_filter` on points split into row blocks.

    ``f([v_0, ..., v_k]) -> [out_0, ..., out_k]`` where the blocks are the consecutive point
    ranges of ``plan`` (see :func:`sparse_plan`'s ``parts``): their splats and slices are
    independent ops that a graph runs side by side, and a mean-field loop can keep its
    per-point state in blocks without concatenating.

    Args:
        lattice: from :func:`build_lattice`.
        pre: optional float32 (P,) scale of the values before splatting.
        post: optional float32 (P,) scale of the filtered values.
        plan: from :func:`sparse_plan`; built (one part) when None.

    Returns:
        A function mapping a list of float32 (P_i, C) blocks to a list of (P_i, C) blocks.
    """
    plan = plan if plan is not None else sparse_plan(lattice)
    return _sparse_split_filter(plan, *_scaled_weights(lattice, pre, post))


def _scaled_weights(lattice, pre, post):
    """(P, d+1) splat weights scaled by ``pre`` and slice weights scaled by the reference's
    ``1 / (1 + 2^-d)`` and ``post`` (per-point scales folded into the filter)."""
    alpha = np.float32(1.0) / np.float32(1.0 + 2.0 ** (-lattice.dim))
    splat_w = lattice.weights
    if pre is not None:
        splat_w = splat_w * tf.convert_to_tensor(pre, tf.float32)[:, None]
    slice_w = lattice.weights * alpha
    if post is not None:
        slice_w = slice_w * tf.convert_to_tensor(post, tf.float32)[:, None]
    return splat_w, slice_w


def _sparse_split_filter(plan, splat_w, slice_w):
    parts, blur_ops = plan
    splat_values = tf.reshape(splat_w, [-1])
    slice_values = tf.reshape(slice_w, [-1])
    pieces = [
        (idx, shape, splat_values[start:stop], slice_values[start:stop])
        for idx, shape, start, stop in parts
    ]

    def apply_block(blocks):
        grids = [
            _spmm(idx, sv, shape, v, adjoint_a=True)
            for (idx, shape, sv, _), v in zip(pieces, blocks)
        ]
        grid = sum_tensors(grids)
        for op in blur_ops:
            grid = _spmm(*op, grid)
        return [_spmm(idx, lv, shape, grid) for idx, shape, _, lv in pieces]

    def apply(blocks):
        if len(blocks) != len(pieces):
            raise ValueError(
                f"expected {len(pieces)} blocks of points. Received: {len(blocks)} blocks"
            )
        blocks = [tf.convert_to_tensor(v, tf.float32) for v in blocks]
        channels = blocks[0].shape[-1]
        if channels is not None and channels < SPARSE_MAX_COLUMNS:
            return apply_block(blocks)
        if channels is None:
            # Unknown width: blocks of a static width over a zero-padded copy.
            width = tf.shape(blocks[0])[-1]
            count = (width + SPARSE_BLOCK - 1) // SPARSE_BLOCK

            def to_stack(v):
                padded = tf.pad(v, [[0, 0], [0, count * SPARSE_BLOCK - width]])
                return tf.transpose(tf.reshape(padded, [-1, count, SPARSE_BLOCK]), [1, 0, 2])

            def from_stack(v):
                v = tf.reshape(tf.transpose(v, [1, 0, 2]), [-1, count * SPARSE_BLOCK])
                return v[:, :width]

            out = tf.map_fn(
                apply_block,
                [to_stack(v) for v in blocks],
                fn_output_signature=[tf.float32] * len(blocks),
            )
            return [from_stack(v) for v in out]
        splits = [SPARSE_BLOCK] * (channels // SPARSE_BLOCK)
        if channels % SPARSE_BLOCK:
            splits.append(channels % SPARSE_BLOCK)
        columns = [tf.split(v, splits, axis=-1) for v in blocks]
        outs = [apply_block([c[k] for c in columns]) for k in range(len(splits))]
        return [tf.concat([o[i] for o in outs], axis=-1) for i in range(len(blocks))]

    return apply


def sparse_plan(lattice: Lattice, reverse: bool = False, parts: int = 1):
    """Index structures of the ``"sparse"`` filter, to share between filters on one lattice.

    TF's CPU SparseTensorDenseMatMul runs a tight scalar loop below 32 dense columns (and a
    much slower vectorised path from 32 up, so the filters feed wide inputs in column
    blocks); int32 indices halve the index traffic of its loop. Blur entries of missing
    neighbours (about half of them) are dropped rather than pointed at a zero row.

    Args:
        lattice: from :func:`build_lattice`.
        reverse: blur the directions in reverse order.
        parts: number of consecutive point blocks the splat and slice are split into (see
            :func:`make_split_filter`).

    Returns:
        (list of (indices (n_i, 2) int32, dense shape (P_i, M+1) int64, start, stop) point
        blocks, where start:stop is the block's range of the flattened (P, d+1) weights;
        list of (indices, values, dense shape) of the blur matrices).
    """
    d = lattice.dim
    m = lattice.num_vertices
    m1 = m + 1
    points = tf.shape(lattice.offsets)[0]
    blocks = []
    for i in range(parts):
        lo, hi = points * i // parts, points * (i + 1) // parts
        rows = tf.repeat(tf.range(hi - lo), d + 1)
        idx = tf.transpose(tf.stack([rows, tf.reshape(lattice.offsets[lo:hi], [-1])]))
        shape = tf.cast(tf.stack([hi - lo, m1]), tf.int64)
        blocks.append((idx, shape, lo * (d + 1), hi * (d + 1)))
    ids = tf.range(m)
    pattern = tf.tile(tf.constant([[1.0, 0.5, 0.5]], tf.float32), tf.stack([m, 1]))
    blur_rows = tf.broadcast_to(ids[:, None], tf.stack([m, 3]))
    blur_shape = tf.cast(tf.stack([m1, m1]), tf.int64)
    blur_ops = []
    for j in range(d, -1, -1) if reverse else range(d + 1):
        nb = lattice.neighbours[j, :, :m]  # (2, M)
        blur_cols = tf.transpose(tf.stack([ids, nb[0], nb[1]]))  # (M, 3)
        keep = tf.reshape(blur_cols < m, [-1])  # missing neighbours point at the zero row M
        both = tf.stack([tf.reshape(blur_rows, [-1]), tf.reshape(blur_cols, [-1])])
        blur_idx = tf.transpose(tf.boolean_mask(both, keep, axis=1))
        blur_ops.append((blur_idx, tf.boolean_mask(tf.reshape(pattern, [-1]), keep), blur_shape))
    return blocks, blur_ops


def _spmm(indices, values, shape, dense, adjoint_a=False):
    """SparseTensorDenseMatMul with int32 indices (``tf.sparse`` insists on int64)."""
    return tf.raw_ops.SparseTensorDenseMatMul(
        a_indices=indices, a_values=values, a_shape=shape, b=dense, adjoint_a=adjoint_a
    )


#: Dense columns below which TF's sparse-dense MatMul uses its fast scalar loop.
SPARSE_MAX_COLUMNS = 32
#: Column block of wide inputs (a batch's classes side by side).
SPARSE_BLOCK = 24


def lattice_filter(
    lattice: Lattice, values: tf.Tensor, reverse: bool = False, impl: str = "sparse"
) -> tf.Tensor:
    """Gaussian-filters (P, C) values on the lattice (see :func:`make_filter`).

    Args:
        lattice: from :func:`build_lattice`.
        values: float32 (P, C).
        reverse: blur the directions in reverse order (the transposed filter).
        impl: ``"sparse"`` or ``"builtin"`` (see :func:`make_filter`).

    Returns:
        float32 (P, C).
    """
    return make_filter(lattice, impl=impl, reverse=reverse)(values)
