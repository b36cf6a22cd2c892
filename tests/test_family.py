"""The dropout family on the backend under test: each formula against an independent reference
computed from the same mask (or the same stream words), statistics, edge cases and errors."""

from __future__ import annotations

import inspect
import math
import warnings

import numpy as np
import pytest

import xdrop
from xdrop import reference, spec
from xdrop.family import ALPHA_PRIME
from xdrop.protocol import Staging

SELU_ALPHA, SELU_SCALE = 1.6732632423543772, 1.0507009873554805


def mask_of(host, xp, x, p, seed, noise=None):
    """dropout's keep mask for x (broadcast to x's shape), on the host."""
    _, keep = xdrop.dropout(x, p, seed=seed, noise_shape=noise, return_mask=True)
    return host(keep).astype(bool)


# -- alpha dropout ---------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_alpha_dropout_is_the_formula_on_dropouts_mask_bit_for_bit(xp, array, host, p):
    x = array(np.random.default_rng(1).normal(size=(5, 37)))
    keep = mask_of(host, xp, x, p, seed=9)
    q = 1 - p
    a = (q + ALPHA_PRIME**2 * q * p) ** -0.5
    b = -a * ALPHA_PRIME * p
    f32 = np.float32
    expected = np.where(keep, host(x), f32(ALPHA_PRIME)) * f32(a) + f32(b)
    np.testing.assert_array_equal(host(xdrop.alpha_dropout(x, p, seed=9)), expected)


def test_alpha_dropout_equals_torch_and_keras_formulas_given_the_same_mask(xp, array, host):
    p, x = 0.3, array(np.random.default_rng(2).normal(size=(8, 16)))
    keep = mask_of(host, xp, x, p, seed=4).astype(np.float64)
    values = host(x).astype(np.float64)
    alpha = -ALPHA_PRIME
    # torch's ATen _dropout_impl (alpha_dropout): a, b from p = the drop probability
    a = 1.0 / math.sqrt((alpha * alpha * p + 1) * (1 - p))
    torch_form = values * (keep * a) + (keep - 1) * alpha * a + alpha * a * p
    # keras.layers.AlphaDropout
    a_k = ((1 - p) * (1 + p * ALPHA_PRIME**2)) ** -0.5
    keras_form = a_k * (values * keep + ALPHA_PRIME * (1 - keep)) - a_k * ALPHA_PRIME * p
    y = host(xdrop.alpha_dropout(x, p, seed=4))
    np.testing.assert_allclose(y, torch_form, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(y, keras_form, rtol=1e-6, atol=1e-6)


def test_alpha_dropout_keeps_selu_activations_at_mean_0_and_variance_1(xp, array, host):
    z = np.random.default_rng(3).normal(size=200_000)
    selu = SELU_SCALE * np.where(z > 0, z, SELU_ALPHA * (np.exp(z) - 1))
    y = host(xdrop.alpha_dropout(array(selu), 0.2, seed=5)).astype(np.float64)
    assert abs(y.mean()) < 0.01 and abs(y.var() - 1) < 0.02


def test_alpha_dropout_edges(xp, array, host):
    x = array(np.arange(6.0).reshape(2, 3))
    assert xdrop.alpha_dropout(x, 0.5, training=False) is x
    assert xdrop.alpha_dropout(x, 0.0, seed=1) is x
    np.testing.assert_array_equal(host(xdrop.alpha_dropout(x, 1.0, seed=1)), np.zeros((2, 3)))
    rows = host(xdrop.alpha_dropout(array(np.zeros((4, 5, 3))), 0.5, seed=2, noise_shape=(4, 1, 3)))
    assert (rows == rows[:, :1, :]).all()  # one mask shared over time: locked dropout


def test_alpha_constants_that_overflow_the_dtype_are_refused_as_dropouts_scale_is(xp, array, host):
    """b = -a * alpha' * p passes float16's 65504 for p above about 1 - 1.8e-10: inf - inf would
    make every unit NaN."""
    half = array(np.ones((2, 8)), "float16")
    for training in (True, False):
        with pytest.raises(xdrop.ArgumentValueError, match=r"p must be small enough.* float16"):
            xdrop.alpha_dropout(half, 1 - 1e-10, seed=1, training=training)
    assert np.isfinite(host(xdrop.alpha_dropout(half, 1 - 1e-9, seed=1))).all()
    assert np.isfinite(host(xdrop.alpha_dropout(array(np.ones(16)), 1 - 1e-12, seed=1))).all()


# -- Gaussian dropout ------------------------------------------------------------------------------
NORMAL_ULPS = (
    2**-20
)  # |z_backend - z| <= 2**-20 * max(1, |z|): log and cos are not correctly rounded


def reference_normals(seed, count, offset=0):
    """Box-Muller in float64 on the words of the pure-Python reference Threefry."""
    key = reference.seed_key(seed)
    z = []
    for i in range(offset, offset + count):
        y0, y1 = reference.threefry2x32(key, (i >> 32, i & 0xFFFFFFFF))
        u1 = ((y0 >> 8) + 1) * 2.0**-24
        u2 = (y1 >> 8) * 2.0**-24
        z.append(math.sqrt(-2 * math.log(u1)) * math.cos(float(np.float32(2 * math.pi)) * u2))
    return np.array(z)


def test_normals_are_box_muller_of_the_stream_words_within_the_stated_bound(xp, array, host):
    like = array(np.zeros(3))
    for offset in (0, 2**32 - 5):
        z = host(spec.normals(xp, spec.key_words(xp, 77, like), (400,), offset, like=like))
        expected = reference_normals(77, 400, offset)
        assert np.all(np.abs(z - expected) <= NORMAL_ULPS * np.maximum(1, np.abs(expected)))


def test_gaussian_dropout_is_x_times_one_plus_sigma_z(xp, array, host):
    p, x = 0.3, array(np.random.default_rng(4).normal(size=(3, 50)))
    z = host(spec.normals(xp, spec.key_words(xp, 8, x), (3, 50), 0, like=x))
    sigma = np.float32(math.sqrt(p / (1 - p)))
    expected = host(x) * (np.float32(1) + sigma * z.astype(np.float32))
    np.testing.assert_array_equal(host(xdrop.gaussian_dropout(x, p, seed=8)), expected)


def test_gaussian_dropout_noise_has_mean_1_and_variance_p_over_1_minus_p(xp, array, host):
    factor = host(xdrop.gaussian_dropout(array(np.ones(200_000)), 0.4, seed=1)).astype(np.float64)
    assert abs(factor.mean() - 1) < 0.01 and abs(factor.var() - 0.4 / 0.6) < 0.01


def test_gaussian_dropout_edges(xp, array, host):
    x = array(np.ones((4, 6)))
    assert xdrop.gaussian_dropout(x, 0.5, training=False) is x
    assert xdrop.gaussian_dropout(x, 0.0, seed=1) is x
    shared = host(xdrop.gaussian_dropout(x, 0.5, seed=1, noise_shape=(4, 1)))
    assert (shared == shared[:, :1]).all()
    with pytest.raises(xdrop.ArgumentValueError, match=r"p must be a real number in \[0, 1\)"):
        xdrop.gaussian_dropout(x, 1.0, seed=1)


def test_gaussian_noise_that_overflows_the_dtype_is_refused_as_dropouts_scale_is(xp, array, host):
    """|z| reaches about 5.77, so float16's 65504 holds sigma up to about 11350: p = 1 - 7e-9."""
    half = array(np.ones(64), "float16")
    for refused in (xdrop.gaussian_dropout, xdrop.dropout):
        with pytest.raises(xdrop.ArgumentValueError, match=r"p must be small enough.* float16"):
            refused(half, 1 - 1e-12, seed=1)
    assert np.isfinite(host(xdrop.gaussian_dropout(half, 1 - 8e-9, seed=1))).all()
    assert np.isfinite(host(xdrop.gaussian_dropout(array(np.ones(64)), 1 - 1e-12, seed=1))).all()


def test_gaussian_dropout_takes_rng_as_dropout_does(xp, array, host):
    x = array(np.ones((4, 6)))
    portable = host(xdrop.gaussian_dropout(x, 0.5, seed=1))
    np.testing.assert_array_equal(
        host(xdrop.gaussian_dropout(x, 0.5, seed=1, rng="portable")), portable
    )
    native = host(xdrop.gaussian_dropout(x, 0.5, seed=1, rng="native"))
    assert (native != portable).any()
    with xdrop.use_rng("native"):  # the default generator, as for dropout
        np.testing.assert_array_equal(host(xdrop.gaussian_dropout(x, 0.5, seed=1)), native)
    with pytest.raises(xdrop.ArgumentValueError, match='rng must be one of "portable", "native"'):
        xdrop.gaussian_dropout(x, 0.5, seed=1, rng="fast")


def test_gaussian_dropout_native_draws_the_frameworks_normals(xp, array, host):
    """Mean 1 and variance p / (1 - p) from the framework's own generator, the same values for
    the same seed however it is given (an integer, a seed array, a generator), as dropout's
    native masks; not the portable stream's."""
    x = array(np.ones(100_000))
    factor = host(xdrop.gaussian_dropout(x, 0.4, seed=3, rng="native")).astype(np.float64)
    assert abs(factor.mean() - 1) < 0.01 and abs(factor.var() - 0.4 / 0.6) < 0.01
    assert not np.allclose(factor, host(xdrop.gaussian_dropout(x, 0.4, seed=3)))
    again = host(xdrop.gaussian_dropout(x, 0.4, seed=3, rng="native"))
    np.testing.assert_array_equal(again, factor.astype(np.float32))
    held = xp.seed_array(spec.key_words(xp, 3, x))
    np.testing.assert_array_equal(
        host(xdrop.gaussian_dropout(x, 0.4, seed=held, rng="native")), again
    )
    from_generators = [
        host(xdrop.gaussian_dropout(x, 0.4, seed=xdrop.Generator(5), rng="native"))
        for _ in range(2)
    ]
    np.testing.assert_array_equal(*from_generators)
    shared = host(xdrop.gaussian_dropout(array(np.ones((4, 6))), 0.5, seed=1, noise_shape=(4, 1),
                                         rng="native"))  # fmt: skip
    assert (shared == shared[:, :1]).all() and (shared[:, 0] != shared[0, 0]).any()
    with pytest.raises(xdrop.ArgumentValueError, match='offset must be 0 with rng="native"'):
        xdrop.gaussian_dropout(x, 0.4, seed=3, rng="native", offset=5)


def test_a_native_generator_without_normals_says_what_gaussian_dropout_needs(monkeypatch):
    """A backend written before native_normals joined the role keeps its native masks, and
    native Gaussian dropout names the method it lacks."""
    from xdrop import registry
    from xdrop.protocol import NativeGenerator

    numpy_backend = type(registry.load("numpy"))
    older = type("Older", (numpy_backend,), {"native_normals": NativeGenerator.native_normals})()
    monkeypatch.setitem(registry._backends, "numpy", older)
    with xdrop.use_backend("numpy"):
        x = np.ones(8, np.float32)
        assert xdrop.dropout(x, 0.5, seed=1, rng="native").shape == (8,)
        message = "does not implement xdrop.protocol.NativeGenerator.native_normals"
        with pytest.raises(xdrop.RoleNotImplementedError, match=message):
            xdrop.gaussian_dropout(x, 0.5, seed=1, rng="native")


SIGNATURE_ARGUMENTS = ("seed", "offset", "rng")


@pytest.mark.parametrize(
    "function",
    [xdrop.alpha_dropout, xdrop.gaussian_dropout, xdrop.drop_path, xdrop.drop_block,
     xdrop.dropout_mask],
)  # fmt: skip
def test_every_family_function_takes_dropouts_seed_offset_and_rng(function):
    reference = inspect.signature(xdrop.dropout).parameters
    parameters = inspect.signature(function).parameters
    for name in SIGNATURE_ARGUMENTS:
        ours, theirs = parameters[name], reference[name]
        assert (ours.kind, ours.default) == (theirs.kind, theirs.default), name
        assert str(ours.annotation) == str(theirs.annotation), name


@pytest.mark.parametrize(
    ("call", "counters"),
    [
        (lambda x, offset: xdrop.drop_path(x, 0.3, seed=1, offset=offset), 2),  # one per row
        (lambda x, offset: xdrop.drop_path(x, 0.3, seed=1, offset=offset, mode="batch"), 1),
        (lambda x, offset: xdrop.drop_block(x, 0.3, 3, seed=1, offset=offset), 2 * 2 * 4 * 4),
        (  # the corners, then a normal per unit
            lambda x, offset: xdrop.drop_block(x, 0.3, 3, seed=1, offset=offset, with_noise=True),
            2 * 2 * 4 * 4 + 2 * 2 * 6 * 6,
        ),
    ],
    ids=["drop_path rows", "drop_path batch", "drop_block corners", "drop_block with noise"],
)
def test_an_offset_leaves_room_for_exactly_the_counters_drawn(array, call, counters):
    x = array(np.ones((2, 2, 6, 6)))
    call(x, 2**64 - counters)  # the last counter is 2**64 - 1
    with pytest.raises(xdrop.ArgumentValueError, match="offset must be"):
        call(x, 2**64 - counters + 1)


# -- DropPath --------------------------------------------------------------------------------------
def test_drop_path_drops_whole_rows_as_dropout_with_a_row_noise_shape(xp, array, host):
    x = array(np.random.default_rng(5).normal(size=(64, 3, 4)))
    y = host(xdrop.drop_path(x, 0.5, seed=3))
    dropped = (y == 0).reshape(64, -1)
    assert (dropped.all(axis=1) | ~dropped.any(axis=1)).all() and 10 < dropped[:, 0].sum() < 54
    expected = xdrop.dropout(x, 0.5, seed=3, noise_shape=(64, 1, 1))
    np.testing.assert_array_equal(y, host(expected))
    unscaled = host(xdrop.drop_path(x, 0.5, seed=3, scale_by_keep=False))
    np.testing.assert_array_equal(unscaled, np.where(dropped.reshape(y.shape), 0, host(x)))
    assert xdrop.drop_path(x, 0.5, training=False, scale_by_keep=False) is x
    whole = host(xdrop.drop_path(x, 0.5, seed=3, mode="batch"))
    assert (whole == 0).all() or (whole != 0).all()


# -- DropBlock -------------------------------------------------------------------------------------
def reference_drop_block(x, corners, size):
    """DropBlock by loops over the corners: NCHW x, corners of (N, C, H - b + 1, W - b + 1)."""
    drop = np.zeros(x.shape, bool)
    for n, c, i, j in zip(*np.nonzero(corners), strict=True):
        drop[n, c, i : i + size, j : j + size] = True
    kept = (~drop).sum()
    scale = np.float32(x.size / kept) if kept else np.float32(0)
    return np.where(drop, np.float32(0), x * scale)


@pytest.mark.parametrize(
    ("shape", "block"),
    [((2, 3, 9, 9), 3), ((2, 2, 7, 12), 4), ((1, 2, 5, 8), 2), ((1, 1, 4, 6), 9)],
)
def test_drop_block_against_loops_over_the_same_corners(xp, array, host, shape, block):
    x = array(np.random.default_rng(6).normal(size=shape))
    height, width = shape[2:]
    size = min(block, height, width)
    gamma = min(1.0, 0.3 * height * width / (size**2 * (height - size + 1) * (width - size + 1)))
    corners_shape = (*shape[:2], height - size + 1, width - size + 1)
    corners = ~host(xdrop.dropout_mask(corners_shape, gamma, seed=11, like=x)).astype(bool)
    y = host(xdrop.drop_block(x, 0.3, block, seed=11))
    assert y.shape == shape
    np.testing.assert_allclose(y, reference_drop_block(host(x), corners, size), rtol=1e-6)


def test_drop_block_channels_last_is_channels_first_transposed(xp, array, host):
    values = np.random.default_rng(7).normal(size=(2, 3, 8, 10))
    first = host(xdrop.drop_block(array(values), 0.2, 3, seed=1))
    last_input = array(values.transpose(0, 2, 3, 1))
    last = host(xdrop.drop_block(last_input, 0.2, 3, seed=1, data_format="channels_last"))
    # the corners are drawn in each layout's own row-major order: the same rate, other units
    assert last.shape == (2, 8, 10, 3)
    assert abs((first == 0).mean() - (last == 0).mean()) < 0.1


@pytest.mark.parametrize("block", [3, 4])
def test_drop_block_drops_about_p(xp, array, host, block):
    y = host(xdrop.drop_block(array(np.ones((8, 16, 24, 20))), 0.1, block, seed=2))
    assert abs((y == 0).mean() - 0.1) < 0.02


def test_drop_block_edges(xp, array, host):
    x = array(np.ones((1, 1, 6, 6)))
    assert xdrop.drop_block(x, 0.3, 3, training=False) is x
    assert xdrop.drop_block(x, 0.0, 3, seed=1) is x
    np.testing.assert_array_equal(host(xdrop.drop_block(x, 1.0, 1, seed=1)), np.zeros((1, 1, 6, 6)))
    for empty in ((0, 2, 6, 6), (2, 0, 6, 6), (2, 2, 0, 6)):  # nothing to drop: x itself
        assert host(xdrop.drop_block(array(np.ones(empty)), 0.3, 3, seed=1)).shape == empty


@pytest.mark.parametrize(("shape", "block"), [((2, 3, 16, 16), 7), ((1, 2, 9, 12), 4)])
def test_drop_block_at_p_1_drops_every_unit(xp, array, host, shape, block):
    # the paper's gamma at p = 1 is well below 1 for blocks smaller than the map: it dropped ~59%
    x = array(np.ones(shape))
    np.testing.assert_array_equal(host(xdrop.drop_block(x, 1.0, block, seed=3)), np.zeros(shape))
    y = host(xdrop.drop_block(x, 0.999, block, seed=3))
    assert 0 < (y == 0).mean() < 1  # below 1, p is the paper's rate: blocks overlap


def test_drop_block_at_a_traced_p_of_1_drops_every_unit(xp, array, host):
    if xp.compiles_slowly:
        pytest.skip("one compilation takes seconds here; the layer tests compile")
    x = array(np.ones((2, 3, 16, 16)))
    seed = xp.seed_array(spec.key_words(xp, 3, x))
    compiled = xp.compile(lambda x, s, p: xdrop.drop_block(x, p, 7, seed=s))
    np.testing.assert_array_equal(host(compiled(x, seed, array(1.0))), np.zeros((2, 3, 16, 16)))
    assert 0 < (host(compiled(x, seed, array(0.5))) == 0).mean() < 1


def reference_drop_block_3d(x, corners, size):
    """DropBlock of (N, C, D, H, W) x by loops over the corners (N or 1, C or 1, D', H', W')."""
    drop = np.zeros(corners.shape[:2] + x.shape[2:], bool)
    for n, c, d, i, j in zip(*np.nonzero(corners), strict=True):
        drop[n, c, d : d + size, i : i + size, j : j + size] = True
    drop = np.broadcast_to(drop, x.shape)
    kept = (~drop).sum()
    scale = np.float32(x.size / kept) if kept else np.float32(0)
    return np.where(drop, np.float32(0), x * scale)


@pytest.mark.parametrize("couple", [False, True])
@pytest.mark.parametrize(("shape", "block"), [((2, 3, 5, 6, 7), 3), ((1, 2, 4, 9, 5), 2)])
def test_drop_block_3d_against_loops_over_the_same_corners(xp, array, host, shape, block, couple):
    x = array(np.random.default_rng(8).normal(size=shape))
    maps = shape[2:]
    size = min(block, *maps)
    rest = [length - size + 1 for length in maps]
    gamma = 0.3 * math.prod(maps) / (size**3 * math.prod(rest))
    corners_shape = (shape[0], 1 if couple else shape[1], *rest)
    corners = ~host(xdrop.dropout_mask(corners_shape, gamma, seed=12, like=x)).astype(bool)
    y = host(xdrop.drop_block(x, 0.3, block, seed=12, couple_channels=couple))
    np.testing.assert_allclose(y, reference_drop_block_3d(host(x), corners, size), rtol=1e-6)
    last = xdrop.drop_block(
        array(host(x).transpose(0, 2, 3, 4, 1)), 0.3, block, seed=12, data_format="channels_last"
    )
    assert host(last).shape == (shape[0], *maps, shape[1])


def test_coupled_channels_share_the_corners_drawn_once_per_sample(xp, array, host):
    x = array(np.random.default_rng(9).normal(size=(2, 4, 9, 8)))
    y = host(xdrop.drop_block(x, 0.3, 3, seed=5, couple_channels=True))
    gamma = 0.3 * 9 * 8 / (9 * 7 * 6)
    corners = ~host(xdrop.dropout_mask((2, 1, 7, 6), gamma, seed=5, like=x)).astype(bool)
    corners = np.broadcast_to(corners, (2, 4, 7, 6))
    np.testing.assert_allclose(y, reference_drop_block(host(x), corners, 3), rtol=1e-6)


def test_a_drop_block_factor_beyond_float16_makes_kept_units_inf_silently(xp, array, host):
    """count / kept is 90000 / 1 here, beyond float16's 65504: the factor rounds to inf (the
    draw decides it, so the rate cannot be refused), without a warning on any backend."""
    half = array(np.ones((1, 1, 300, 300)), "float16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = host(xdrop.drop_block(half, 0.99999, 1, seed=0)).astype(np.float64)
    assert (y != 0).sum() == 1 and np.isposinf(y).sum() == 1


def test_drop_block_options_scale_gamma_and_eps(xp, array, host):
    x = array(np.ones((2, 3, 10, 10)))
    plain = host(xdrop.drop_block(x, 0.2, 3, seed=4))
    unscaled = host(xdrop.drop_block(x, 0.2, 3, seed=4, scale_by_keep=False))
    np.testing.assert_array_equal(unscaled, (plain != 0).astype(np.float32))
    kept = (plain != 0).sum()
    with_eps = host(xdrop.drop_block(x, 0.2, 3, seed=4, eps=0.5))
    np.testing.assert_allclose(with_eps[plain != 0], np.float32(plain.size / (kept + 0.5)))
    # gamma_scale multiplies gamma: the corners are dropout's at the scaled rate
    scaled = host(xdrop.drop_block(x, 0.2, 3, seed=4, gamma_scale=0.5, scale_by_keep=False))
    gamma = 0.5 * 0.2 * 100 / (9 * 64)
    corners = ~host(xdrop.dropout_mask((2, 3, 8, 8), gamma, seed=4, like=x)).astype(bool)
    expected = reference_drop_block(np.ones((2, 3, 10, 10), np.float32), corners, 3) != 0
    np.testing.assert_array_equal(scaled, expected.astype(np.float32))


def test_drop_block_eps_scale_is_numpys_or_one_ulp_off_where_float64_is_missing(xp, array, host):
    """docs/family.md: count / (kept + eps) in float64, rounded once to x's dtype; a backend
    without float64 rounds kept + eps first, so its scale may be one ulp off; the mask is the
    same."""
    x = np.ones((1, 1, 3, 9), np.float32)
    for seed in range(40):
        expected = xdrop.drop_block(x, 0.5, 2, seed=seed, eps=1e-6)  # NumPy: float64
        got = host(xdrop.drop_block(array(x), 0.5, 2, seed=seed, eps=1e-6))
        np.testing.assert_array_equal(got != 0, expected != 0)
        if xp.has_float64():
            np.testing.assert_array_equal(got, expected)
        else:
            np.testing.assert_array_max_ulp(got, expected, maxulp=1)


def test_drop_block_with_noise_puts_the_streams_normals_after_the_corners_in_dropped_units(
    xp, array, host
):
    values = np.random.default_rng(10).normal(size=(2, 3, 8, 8)).astype(np.float32)
    y = host(xdrop.drop_block(array(values), 0.3, 3, seed=6, with_noise=True))
    dropped = host(xdrop.drop_block(array(values), 0.3, 3, seed=6)) == 0
    np.testing.assert_array_equal(y[~dropped], values[~dropped])  # kept: unscaled
    # the normals of counters 2 * 3 * 6 * 6 + i, read through Gaussian dropout at sigma = 1
    z = xdrop.gaussian_dropout(np.ones((2, 3, 8, 8), np.float32), 0.5, seed=6, offset=216) - 1
    np.testing.assert_allclose(y[dropped], z[dropped], atol=1e-5)


# -- errors ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda x: xdrop.alpha_dropout(x, 1.5), xdrop.ArgumentValueError, "p must be"),
        (lambda x: xdrop.alpha_dropout(x, 0.5, noise_shape=(3,)), xdrop.ArgumentValueError, "noise_shape"),
        (lambda x: xdrop.gaussian_dropout(x, "a"), xdrop.ArgumentTypeError, "p must be"),
        (lambda x: xdrop.gaussian_dropout(x, 1.5), xdrop.ArgumentValueError, r"p must be a real number in \[0, 1\)"),
        (lambda x: xdrop.gaussian_dropout(x, 0.5, offset=-1), xdrop.ArgumentValueError, "offset"),
        (lambda x: xdrop.drop_path(x, 0.5, mode="rows"), xdrop.ArgumentValueError, "mode must be"),
        (lambda x: xdrop.drop_path(x, 0.5, scale_by_keep=1), xdrop.ArgumentTypeError, "scale_by_keep"),
        (lambda x: xdrop.drop_block(x, 0.5, 3), xdrop.ArgumentValueError, "x must be a 4-d array"),
        (lambda x: xdrop.drop_block(x, 0.5, 0), xdrop.ArgumentValueError, "block_size must be"),
        (lambda x: xdrop.drop_block(x, 0.5, 2.0), xdrop.ArgumentTypeError, "block_size must be"),
        (lambda x: xdrop.drop_block(x, 0.5, 2, data_format="NCHW"), xdrop.ArgumentValueError, "data_format"),
        (lambda x: xdrop.alpha_dropout(x, 0.5, training="yes"), xdrop.ArgumentTypeError, "training"),
    ],
)  # fmt: skip
def test_bad_arguments_raise_xdrop_errors_naming_them(xp, array, call, error, message):
    with pytest.raises(error, match=message):
        call(array(np.ones((2, 4))))


def test_family_traced_seed_and_rate_in_the_framework_compiler(xp, array, host):
    if xp.compiles_slowly:
        pytest.skip("one compilation takes seconds here; the layer tests compile")
    x = array(np.random.default_rng(8).normal(size=(2, 3, 6, 6)))
    seed = xp.seed_array(spec.key_words(xp, 21, x))
    p = array(0.25)
    functions = {
        "alpha": lambda x, s, p: xdrop.alpha_dropout(x, p, seed=s),
        "gaussian": lambda x, s, p: xdrop.gaussian_dropout(x, p, seed=s),
        "path": lambda x, s, p: xdrop.drop_path(x, p, seed=s),
        "block": lambda x, s, p: xdrop.drop_block(x, p, 3, seed=s),
    }
    for name, function in functions.items():
        eager = host(function(x, 21, 0.25))
        compiled = host(xp.compile(function)(x, seed, p))
        tolerance = 1e-6 if name in ("alpha", "gaussian") else 0  # a fused multiply-add
        np.testing.assert_allclose(compiled, eager, rtol=tolerance, atol=tolerance, err_msg=name)


def test_a_traced_rate_outside_0_1_makes_the_whole_output_nan_rather_than_quietly_wrong(
    xp, array, host
):
    """A graph cannot raise on a rate it holds: every family function poisons its output, as
    dropout does (docs/runtime.md)."""
    if xp.compiles_slowly or type(xp).compile is Staging.compile:
        pytest.skip("no fast compiler here: a rate array is read and refused eagerly")
    x = array(np.random.default_rng(8).normal(size=(2, 3, 6, 6)))
    seed = xp.seed_array(spec.key_words(xp, 21, x))
    for name, function in _FAMILY_WITH_TRACED_RATE.items():
        compiled = xp.compile(function)
        assert np.isfinite(host(compiled(x, seed, array(0.25)))).all(), name
        for p in (-0.1, 1.5, math.nan):
            assert np.isnan(host(compiled(x, seed, array(p)))).all(), (name, p)


_FAMILY_WITH_TRACED_RATE = {
    "dropout": lambda x, s, p: xdrop.dropout(x, p, seed=s),
    "alpha": lambda x, s, p: xdrop.alpha_dropout(x, p, seed=s),
    "gaussian": lambda x, s, p: xdrop.gaussian_dropout(x, p, seed=s),
    "path": lambda x, s, p: xdrop.drop_path(x, p, seed=s),
    "block": lambda x, s, p: xdrop.drop_block(x, p, 3, seed=s),
    "block with noise": lambda x, s, p: xdrop.drop_block(x, p, 3, seed=s, with_noise=True),
    "block unscaled": lambda x, s, p: xdrop.drop_block(x, p, 3, seed=s, scale_by_keep=False),
}


def test_inputs_of_more_than_8_dimensions_give_numpys_bits(xp, array, host):
    """TensorFlow's select kernel takes at most 8 dimensions; NumPy's arrays take 64."""
    values = np.random.default_rng(9).normal(size=(2,) * 9).astype(np.float32)
    functions = {
        "alpha": lambda x: xdrop.alpha_dropout(x, 0.3, seed=1),
        "path": lambda x: xdrop.drop_path(x, 0.3, seed=1),
        "dropout": lambda x: xdrop.dropout(x, 0.3, seed=1, noise_shape=(2,) + (1,) * 8),
    }
    for name, function in functions.items():
        np.testing.assert_array_equal(host(function(array(values))), function(values), name)
    gaussian = host(xdrop.gaussian_dropout(array(values), 0.3, seed=1))
    np.testing.assert_allclose(gaussian, xdrop.gaussian_dropout(values, 0.3, seed=1), rtol=1e-6)
