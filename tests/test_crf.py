"""Dense CRF: parity with pydensecrf on real photos, limits, and input checks."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab_tf.crf import DenseCRF, build_lattice, lattice_filter
from deeplab_tf.crf import lattice as lattice_lib
from tests._crf_utils import PHOTOS, coarse_probs, load_photo

dcrf = pytest.importorskip("pydensecrf.densecrf")
eigen = pytest.importorskip("pydensecrf.eigen")


def _features(image, kind, xy_std, rgb_std=None):
    h, w, _ = image.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    pos = [xs.ravel() / np.float32(xy_std), ys.ravel() / np.float32(xy_std)]
    if kind == "pos":
        return np.stack(pos, 1)
    rgb = image.reshape(-1, 3).astype(np.float32) / np.float32(rgb_std)
    return np.concatenate([np.stack(pos, 1), rgb], 1)


def _reference_pass(image, values, kind, xy_std, rgb_std, normalization):
    """One normalised filtering pass of pydensecrf: stepInference with a zero unary and a
    single Potts kernel of weight 1 leaves -message in tmp2."""
    h, w, _ = image.shape
    n, c = values.shape
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(np.zeros((c, n), np.float32))
    norm = {"symmetric": dcrf.NORMALIZE_SYMMETRIC, "after": dcrf.NORMALIZE_AFTER}[normalization]
    if kind == "pos":
        crf.addPairwiseGaussian(sxy=xy_std, compat=1.0, normalization=norm)
    else:
        crf.addPairwiseBilateral(
            sxy=xy_std, srgb=rgb_std, rgbim=image, compat=1.0, normalization=norm
        )
    tmp1 = eigen.matrixXf(np.zeros((c, n), np.float32))
    tmp2 = eigen.matrixXf(np.zeros((c, n), np.float32))
    crf.stepInference(eigen.matrixXf(np.ascontiguousarray(values.T)), tmp1, tmp2)
    return -np.array(tmp2).T


@pytest.mark.parametrize("photo", PHOTOS)
@pytest.mark.parametrize(
    "kind,xy_std,rgb_std",
    [("pos", 1.0, None), ("pos", 3.0, None), ("bi", 67.0, 3.0), ("bi", 49.0, 5.0)],
)
@pytest.mark.parametrize("impl", ["sparse", "builtin"])
def test_single_filter_pass_matches_pydensecrf(photo, kind, xy_std, rgb_std, impl):
    image = load_photo(photo)
    probs, _ = coarse_probs(image)
    values = probs.reshape(-1, probs.shape[-1])
    feats = _features(image, kind, xy_std, rgb_std)
    lat = build_lattice(tf.constant(feats))
    for normalization in ("symmetric", "after"):
        k1 = lattice_filter(lat, tf.ones((values.shape[0], 1)), impl=impl).numpy()
        k1 = k1.astype(np.float64) + 1e-20
        if normalization == "symmetric":
            n = (1.0 / np.sqrt(k1)).astype(np.float32)
            ours = lattice_filter(lat, values * n, impl=impl).numpy() * n
        else:
            n = (1.0 / k1).astype(np.float32)
            ours = lattice_filter(lat, values, impl=impl).numpy() * n
        ref = _reference_pass(image, values, kind, xy_std, rgb_std, normalization)
        np.testing.assert_allclose(ours, ref, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize(
    "photo",
    # the larger photo (96x96, 12 s against pydensecrf) runs in the full suite only
    [pytest.param(p, marks=[pytest.mark.large] if p == PHOTOS[0] else []) for p in PHOTOS],
)
@pytest.mark.parametrize("preset", ["resnet101", "vgg16"])
def test_ten_iterations_agree_with_pydensecrf(photo, preset):
    image = load_photo(photo)
    probs, coarse = coarse_probs(image)
    ours = DenseCRF.from_preset(preset)(image, probs).numpy()
    ref = DenseCRF.from_preset(preset, backend="pydensecrf")(image, probs).numpy()
    agree = np.mean(ours.argmax(-1) == ref.argmax(-1))
    assert agree >= 0.999, agree
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    # The CRF really moved boundaries, so the agreement is not trivial.
    assert np.mean(ours.argmax(-1) != probs.argmax(-1)) > 0.01


@pytest.mark.large
def test_after_normalisation_and_logits_agree_with_pydensecrf():
    image = load_photo(PHOTOS[1])
    probs, _ = coarse_probs(image)
    ours = DenseCRF.from_preset("vgg16", normalization="after").labels(image, probs).numpy()
    ref = DenseCRF.from_preset("vgg16", normalization="after", backend="pydensecrf")
    assert np.mean(ours == ref.labels(image, probs).numpy()) >= 0.999
    # Logits give the same unary as unclipped probabilities.
    logits = np.log(probs) + 3.0
    from_logits = DenseCRF(from_logits=True, prob_clip=1e-5)(image, logits).numpy()
    from_probs = DenseCRF()(image, probs).numpy()
    np.testing.assert_allclose(from_logits, from_probs, atol=1e-4)
    assert np.mean(from_logits.argmax(-1) == from_probs.argmax(-1)) >= 0.999


@pytest.mark.large
def test_batched_equals_per_image_and_builtin_equals_sparse():
    a = load_photo(PHOTOS[0])[:64, :96]
    b = load_photo(PHOTOS[1])
    pa, _ = coarse_probs(a, seed=1)
    pb, _ = coarse_probs(b, seed=2)
    crf = DenseCRF.from_preset("resnet101", iterations=5)
    batched = crf(np.stack([a, b]), np.stack([pa, pb])).numpy()
    np.testing.assert_allclose(batched[0], crf(a, pa).numpy(), atol=1e-5)
    np.testing.assert_allclose(batched[1], crf(b, pb).numpy(), atol=1e-5)
    builtin = DenseCRF.from_preset("resnet101", iterations=5, impl="builtin")
    np.testing.assert_allclose(builtin(np.stack([a, b]), np.stack([pa, pb])), batched, atol=1e-5)


@pytest.mark.large
def test_dynamic_shapes_in_tf_function_match_eager():
    image = load_photo(PHOTOS[1])
    probs, _ = coarse_probs(image)
    crf = DenseCRF.from_preset("vgg16", iterations=3)
    fn = tf.function(
        crf.labels,
        input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.uint8),
            tf.TensorSpec([None, None, None, 21], tf.float32),
        ],
    )
    np.testing.assert_array_equal(fn(image[None], probs[None])[0], crf.labels(image, probs))


def test_elevation_keeps_reference_order():
    feats = np.random.default_rng(0).uniform(0, 80, size=(500, 5)).astype(np.float32)
    sf = lattice_lib.scale_factors(5)
    expected = np.zeros((500, 6), np.float32)
    sm = np.zeros(500, np.float32)
    for j in range(5, 0, -1):
        cf = feats[:, j - 1] * sf[j - 1]
        expected[:, j] = sm - np.float32(j) * cf
        sm = sm + cf
    expected[:, 0] = sm
    np.testing.assert_array_equal(lattice_lib.elevate(tf.constant(feats)).numpy(), expected)


def test_vertex_cap_error_eager_and_in_graph():
    image = load_photo(PHOTOS[1])
    probs, _ = coarse_probs(image)
    with pytest.raises(ValueError, match="max_vertices=100"):
        DenseCRF(max_vertices=100, pos_w=0.0)(image, probs)
    feats = tf.random.uniform((400, 5), maxval=50.0, seed=1)
    with pytest.raises(ValueError, match="vertices"):
        build_lattice(feats, max_vertices=50)
    fn = tf.function(
        lambda f: build_lattice(f, max_vertices=50).num_vertices,
        input_signature=[tf.TensorSpec([None, 5], tf.float32)],
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_vertices=50"):
        fn(feats)
    assert int(build_lattice(feats, max_vertices=None).num_vertices) > 50


def test_key_budget_errors():
    image = load_photo(PHOTOS[1])
    probs, _ = coarse_probs(image)
    # Colour std of 1e-4 puts every channel on a ~2.5M-wide axis: far over 62 bits.
    with pytest.raises(ValueError, match="62-bit int64 budget"):
        DenseCRF(bi_rgb_std=1e-4)(image, probs)
    feats = tf.constant([[0.0] * 5, [3e6] * 5, [1e6, 0, 2e6, 0, 3e6]], tf.float32)
    with pytest.raises(ValueError, match="bits"):
        build_lattice(feats)
    # The static bound is conservative: the presets on a 2048x1024 image fit comfortably.
    bits = lattice_lib.key_bits_for_bounds([0] * 5, [2047 / 67, 1023 / 67] + [85.0] * 3)
    assert bits < 62


def test_input_errors():
    image = load_photo(PHOTOS[1])
    probs, _ = coarse_probs(image)
    with pytest.raises(ValueError, match="Received"):
        DenseCRF()(image[..., :2], probs)
    with pytest.raises(ValueError, match="same batch and spatial size"):
        DenseCRF()(image[:32], probs)
    with pytest.raises(ValueError, match="rank"):
        DenseCRF()(image, probs[None])
    with pytest.raises(ValueError, match="normalization"):
        DenseCRF(normalization="before")
    with pytest.raises(ValueError, match="backend"):
        DenseCRF(backend="cuda")
    with pytest.raises(ValueError, match="bi_xy_std"):
        DenseCRF(bi_xy_std=0)
    with pytest.raises(ValueError, match="preset"):
        DenseCRF.from_preset("alexnet")


def test_presets_and_config_round_trip():
    from deeplab_tf.models import registry

    crf = DenseCRF.from_preset("vgg16")
    for key in ("iterations", "bi_w", "bi_xy_std", "bi_rgb_std", "pos_w", "pos_xy_std"):
        assert getattr(crf, key) == registry.CRF_VGG[key]
    assert DenseCRF.from_preset("deeplabv2_resnet101_aspp_l").bi_xy_std == 67.0
    clone = DenseCRF.from_config(crf.get_config())
    assert clone.get_config() == crf.get_config()


def _canonical_neighbours(lat):
    """Neighbour table with every vertex named by its first (point, corner) slot, so two
    builds that number their vertices differently compare equal."""
    offsets = lat.offsets.numpy().ravel()
    m = int(lat.num_vertices)
    first = np.full(m + 1, -1, np.int64)
    first[offsets[::-1]] = np.arange(offsets.size)[::-1]
    names = first[lat.neighbours.numpy()[..., :m]]  # (d+1, 2, M)
    order = np.argsort(first[:m])
    return names[..., order]


@pytest.mark.parametrize("kind,xy_std,rgb_std", [("pos", 1.0, None), ("bi", 49.0, 5.0)])
def test_sparse_and_builtin_builds_are_the_same_lattice(kind, xy_std, rgb_std):
    image = load_photo(PHOTOS[0])
    feats = tf.constant(_features(image, kind, xy_std, rgb_std))
    sparse = build_lattice(feats, impl="sparse")
    builtin = build_lattice(feats, impl="builtin")
    assert int(sparse.num_vertices) == int(builtin.num_vertices)
    np.testing.assert_array_equal(sparse.weights.numpy(), builtin.weights.numpy())
    np.testing.assert_array_equal(_canonical_neighbours(sparse), _canonical_neighbours(builtin))
    # Sorted build: vertex ids follow the packed keys, so every point's corners differ.
    assert (np.diff(np.sort(sparse.offsets.numpy(), axis=1), axis=1) > 0).all()
    with pytest.raises(ValueError, match="impl"):
        build_lattice(feats, impl="cuda")


def test_split_and_wide_filters_match_the_plain_filter():
    image = load_photo(PHOTOS[1])
    feats = tf.constant(_features(image, "bi", 49.0, 5.0))
    lat = build_lattice(feats)
    rng = np.random.default_rng(0)
    points = feats.shape[0]
    values = rng.uniform(size=(points, 40)).astype(np.float32)  # >= 32: column blocks
    pre = rng.uniform(0.5, 1.5, size=points).astype(np.float32)
    post = rng.uniform(0.5, 1.5, size=points).astype(np.float32)
    expected = lattice_filter(lat, values * pre[:, None], impl="builtin").numpy() * post[:, None]
    wide = lattice_lib.make_filter(lat, pre=pre, post=post)(values).numpy()
    np.testing.assert_allclose(wide, expected, rtol=1e-5, atol=1e-6)
    plan = lattice_lib.sparse_plan(lat, parts=3)
    split = lattice_lib.make_split_filter(lat, pre=pre, post=post, plan=plan)
    sizes = [int(block[1][0]) for block in plan[0]]
    assert sum(sizes) == points and len(sizes) == 3
    blocks = np.split(values[:, :21], np.cumsum(sizes)[:-1])
    out = np.concatenate([b.numpy() for b in split(blocks)])
    np.testing.assert_allclose(out, expected[:, :21], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="blocks"):
        split(blocks[:2])
    # Unknown channel count inside a graph: padded static blocks.
    fn = tf.function(
        lattice_lib.make_filter(lat, pre=pre, post=post),
        input_signature=[tf.TensorSpec([points, None], tf.float32)],
    )
    np.testing.assert_allclose(fn(values).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_eager_call_reuses_one_graph_across_sizes():
    image = load_photo(PHOTOS[1])
    probs, _ = coarse_probs(image)
    crf = DenseCRF.from_preset("vgg16", iterations=2)
    for crop in ((64, 96), (48, 80), (40, 72), (64, 96)):
        h, w = crop
        ours = crf(image[:h, :w], probs[:h, :w]).numpy()
        ref = DenseCRF.from_preset("vgg16", iterations=2, backend="pydensecrf")
        np.testing.assert_allclose(ours, ref(image[:h, :w], probs[:h, :w]).numpy(), atol=1e-4)
    # reduce_retracing: the first size, then one shape-generic trace.
    assert crf._compiled.fn.experimental_get_tracing_count() <= 2


def _small_inputs(h=24, w=20, classes=3):
    image = load_photo(PHOTOS[1])[:h, :w]
    probs, _ = coarse_probs(image, classes=classes)
    return image, probs


@pytest.mark.parametrize(
    "damage,match",
    [
        ("nan", "NaN or inf"),
        ("negative", r"must be in \[0, 1\].*from_logits=True"),
        ("logits", r"must be in \[0, 1\].*They look like logits"),
        ("zeros", "all zero at 480 pixel"),
    ],
)
@pytest.mark.parametrize("backend", ["tf", "pydensecrf"])
def test_bad_probabilities_are_refused(damage, match, backend):
    image, probs = _small_inputs()
    bad = {
        "nan": np.where(np.arange(probs.size).reshape(probs.shape) == 5, np.nan, probs),
        "negative": probs - 0.5,
        "logits": np.log(probs) * 3 + 4,
        "zeros": np.zeros_like(probs),
    }[damage].astype(np.float32)
    with pytest.raises(ValueError, match=match):
        DenseCRF(iterations=2, backend=backend)(image, bad)


def test_unnormalised_probabilities_are_normalised_with_a_warning():
    image, probs = _small_inputs()
    crf = DenseCRF(iterations=3)
    with pytest.warns(UserWarning, match="do not sum to 1"):
        scaled = crf(image, probs * 0.5).numpy()
    np.testing.assert_allclose(scaled, crf(image, probs).numpy(), atol=1e-5)


def test_bad_images_are_refused():
    image, probs = _small_inputs()
    with pytest.raises(ValueError, match=r"uint16.*scale 16-bit images to 0..255"):
        DenseCRF(iterations=1)(image.astype(np.uint16) * 257, probs)
    with pytest.raises(ValueError, match=r"values must be 0..255.*\[0.0, 1000.0\]"):
        DenseCRF(iterations=1)(np.where(image > 100, 1000.0, 0.0).astype(np.float32), probs)
    with pytest.raises(ValueError, match="probs must be floating point"):
        DenseCRF(iterations=1)(image, (probs * 100).astype(np.int32))
    with pytest.raises(ValueError, match="logits hold NaN"):
        DenseCRF(iterations=1, from_logits=True)(image, np.full_like(probs, np.nan))
    # whole-number float images 0..255 are fine
    ok = DenseCRF(iterations=1)(image.astype(np.float32), probs).numpy()
    np.testing.assert_allclose(ok, DenseCRF(iterations=1)(image, probs).numpy())


def test_graph_mode_clamps_bad_probabilities_instead():
    image, probs = _small_inputs()
    crf = DenseCRF(iterations=2)
    fn = tf.function(crf.__call__)
    bad = probs.copy()
    bad[0, 0] = np.nan
    bad[1, 1] = 0.0
    out = fn(tf.constant(image), tf.constant(bad * 2.0)).numpy()
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)
    ref = crf(image, probs).numpy()
    assert (out.argmax(-1) == ref.argmax(-1)).mean() > 0.95


def _over_cap_case():
    """A 1333x1000 noise image: its bilateral lattice exceeds the default vertex cap."""
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (1, 1000, 1333, 3), dtype=np.uint8)
    probs = rng.dirichlet(np.ones(3), size=(1, 1000, 1333)).astype(np.float32)
    return image, probs


@pytest.mark.large
def test_over_cap_image_fails_alone_with_its_cause_then_falls_back_when_asked():
    """An over-cap image raises LatticeOverflowError naming the cap, and the next calls still
    work: before, an AddN rewritten by grappler into a TemporaryVariable was left behind by the
    aborted step and every later call failed with AlreadyExistsError."""
    from deeplab_tf.crf.lattice import LatticeOverflowError

    crf = DenseCRF(iterations=2)
    image, probs = _over_cap_case()
    for _ in range(2):  # each time the cause, never AlreadyExistsError (measured before the fix)
        with pytest.raises(LatticeOverflowError, match=r"more vertices than max_vertices=4194304"):
            crf(image, probs)
    smooth = np.zeros_like(image)  # same size, few distinct colours: under the cap
    smooth[..., 0] = 100
    smooth[:, :, 600:, 1] = 200
    out = crf(smooth, probs).numpy()  # the same compiled graph, after two aborted steps
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-4)

    fallback = DenseCRF(iterations=2, overflow="downsample")
    with pytest.warns(UserWarning, match=r"1333x1000 image .* downsampled 2x \(667x500\)"):
        refined = fallback(image, probs).numpy()
    assert refined.shape == probs.shape and np.isfinite(refined).all()
    np.testing.assert_allclose(refined.sum(-1), 1.0, atol=1e-4)
    assert DenseCRF.from_config(fallback.get_config()).overflow == "downsample"
    with pytest.raises(ValueError, match=r"overflow must be one of \('error', 'downsample'\)"):
        DenseCRF(overflow="tile")


@pytest.mark.parametrize("channels", [1, 4])
def test_n_channel_bilateral_agrees_with_pydensecrf_generic_pairwise(channels):
    """A 1- or 4-channel image (the photo's RGB plus a derived band) with one standard deviation
    per channel: the TF lattice on 2 + N features against pydensecrf's
    create_pairwise_bilateral + addPairwiseEnergy on the same features."""
    rgb = load_photo(PHOTOS[1])
    probs, _ = coarse_probs(rgb)
    grey = rgb.mean(axis=-1, keepdims=True)
    extra = np.abs(rgb[..., :1].astype(np.float32) - rgb[..., 2:3])  # a fourth "band"
    image = grey if channels == 1 else np.concatenate([rgb, extra], axis=-1)
    image = np.round(image).astype(np.uint8)
    stds = (3.0,) if channels == 1 else (3.0, 3.0, 3.0, 6.0)
    ours = DenseCRF.from_preset("resnet101", bi_feature_std=stds)(image, probs).numpy()
    ref = DenseCRF.from_preset("resnet101", bi_feature_std=stds, backend="pydensecrf")
    ref = ref(image, probs).numpy()
    assert np.mean(ours.argmax(-1) == ref.argmax(-1)) >= 0.999
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    assert np.mean(ours.argmax(-1) != probs.argmax(-1)) > 0.01  # the CRF did move labels
    with pytest.raises(ValueError, match="bi_feature_std has 4 values; the image has 3"):
        DenseCRF(bi_feature_std=(3, 3, 3, 3))(rgb, probs)


def test_rgb_with_equal_feature_stds_is_the_rgb_kernel():
    image = load_photo(PHOTOS[1])
    probs, _ = coarse_probs(image)
    a = DenseCRF.from_preset("vgg16")(image, probs).numpy()
    b = DenseCRF.from_preset("vgg16", bi_feature_std=(5.0, 5.0, 5.0))(image, probs).numpy()
    np.testing.assert_allclose(a, b, atol=1e-6)  # the vgg16 preset's bi_rgb_std is 5
