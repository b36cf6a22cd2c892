"""What ``xdrop.dropout`` does, in both modes, on the backend under test."""

from __future__ import annotations

import math

import numpy as np
import pytest

import xdrop


def test_inverted_training_scales_kept_units_and_zeroes_the_rest(array, host):
    y, keep = xdrop.dropout(array(np.ones(1000)), 0.2, seed=1, return_mask=True)
    y, keep = host(y), host(keep)
    assert set(np.unique(y)) == {0.0, np.float32(1) / np.float32(0.8)}
    assert ((y != 0) == keep).all()


def test_classic_training_keeps_values_unscaled(array, host):
    x = np.arange(1.0, 101.0)
    y, keep = xdrop.dropout(array(x), 0.3, seed=2, mode="classic", return_mask=True)
    assert (host(y) == np.where(host(keep), x, 0.0)).all()


def test_both_modes_draw_the_same_mask(array, host):
    _, inverted = xdrop.dropout(array(np.ones(64)), 0.5, seed=3, return_mask=True)
    _, classic = xdrop.dropout(array(np.ones(64)), 0.5, seed=3, mode="classic", return_mask=True)
    assert (host(inverted) == host(classic)).all()


def test_inverted_eval_returns_the_input_itself(array):
    x = array(np.ones(5))
    assert xdrop.dropout(x, 0.5, training=False) is x


def test_classic_eval_scales_by_the_keep_probability(array, host):
    y = xdrop.dropout(array([1.0, 2.0, -4.0]), 0.25, training=False, mode="classic")
    assert host(y).tolist() == [0.75, 1.5, -3.0]


@pytest.mark.parametrize("mode", ["inverted", "classic"])
def test_mean_training_output_equals_the_eval_output(array, host, mode):
    x = array(np.linspace(-2, 2, 50))
    p = 0.4
    trials = 4000
    total = sum(
        host(xdrop.dropout(x, p, seed=s, mode=mode)).astype(np.float64) for s in range(trials)
    )
    eval_output = host(xdrop.dropout(x, p, training=False, mode=mode)).astype(np.float64)
    # per element: the mean of `trials` draws of c * Bernoulli(1 - p), with c the kept value
    kept_value = eval_output / (1 - p)
    tolerance = 4 * np.abs(kept_value) * math.sqrt(p * (1 - p) / trials) + 1e-6
    assert (np.abs(total / trials - eval_output) <= tolerance).all()


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9])
def test_kept_fraction_is_within_four_sigma(host, p):
    count = 200_000
    kept = int(np.count_nonzero(host(xdrop.dropout_mask((count,), p, seed=11))))
    assert abs(kept - count * (1 - p)) <= 4 * math.sqrt(count * p * (1 - p))


def test_p_zero_returns_the_input_itself(array):
    x = array(np.ones(5))
    assert xdrop.dropout(x, 0.0, seed=0) is x
    assert xdrop.dropout(x, 0.0, seed=0, mode="classic") is x
    assert xdrop.dropout(x, 0.0, training=False, mode="classic") is x


@pytest.mark.parametrize("mode", ["inverted", "classic"])
def test_p_one_gives_positive_zeros(array, host, mode):
    y = host(xdrop.dropout(array([1.0, -1.0, np.inf, np.nan]), 1.0, seed=0, mode=mode))
    assert y.tolist() == [0.0, 0.0, 0.0, 0.0] and not np.signbit(y).any()


def test_dropped_units_are_positive_zero_whatever_the_input_holds(array, host):
    x = np.tile([np.inf, -np.inf, np.nan, -0.0, -3.0], 40)
    y, keep = xdrop.dropout(array(x), 0.5, seed=6, return_mask=True)
    y, keep = host(y), host(keep)
    assert (y[~keep] == 0).all() and not np.signbit(y[~keep]).any()
    assert np.isnan(y[keep & np.isnan(x)]).all()
    assert (y[keep & np.isinf(x)] == 2 * x[keep & np.isinf(x)]).all()


def test_same_seed_same_mask_and_different_seeds_differ(array, host):
    x = array(np.ones(256))
    assert (host(xdrop.dropout(x, 0.5, seed=7)) == host(xdrop.dropout(x, 0.5, seed=7))).all()
    assert (host(xdrop.dropout(x, 0.5, seed=7)) != host(xdrop.dropout(x, 0.5, seed=8))).any()


def test_the_mask_does_not_depend_on_the_dtype(array, host):
    masks = [
        host(xdrop.dropout(array(np.ones(300), dtype), 0.3, seed=9, return_mask=True)[1])
        for dtype in ("float16", "bfloat16", "float32")
    ]
    assert (masks[0] == masks[1]).all() and (masks[1] == masks[2]).all()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_dtype_and_shape_are_preserved(xp, array, dtype):
    pytest.importorskip("ml_dtypes") if dtype == "bfloat16" and xp.name == "numpy" else None
    x = array(np.ones((3, 4)), dtype)
    for training in (True, False):
        for mode in ("inverted", "classic"):
            y = xdrop.dropout(x, 0.5, seed=0, training=training, mode=mode)
            assert xp.dtype_name(y) == dtype and xp.shape(y) == (3, 4)


def test_inverted_scale_is_rounded_once_in_the_dtype(array, host):
    y = host(xdrop.dropout(array(np.ones(400), "float16"), 0.3, seed=1))
    assert set(np.unique(y).tolist()) == {0.0, float(np.float16(1) / np.float16(0.7))}


def test_the_input_is_never_modified(array, host):
    x = array(np.arange(12.0).reshape(3, 4))
    before = host(x).copy()
    for mode in ("inverted", "classic"):
        for training in (True, False):
            xdrop.dropout(x, 0.5, seed=0, mode=mode, training=training, return_mask=True)
    assert (host(x) == before).all()


def test_empty_and_zero_dimensional_inputs(array, host, xp):
    empty = xdrop.dropout(array(np.ones((0, 3))), 0.5, seed=0)
    assert xp.shape(empty) == (0, 3)
    y, keep = xdrop.dropout(array(3.0), 0.5, seed=0, return_mask=True)
    assert xp.shape(y) == () and host(y) in (0.0, 6.0) and bool(host(keep)) == (host(y) == 6.0)


def test_return_mask_is_all_true_when_nothing_is_dropped(array, host):
    x = array(np.ones((2, 3)))
    for kwargs in ({"training": False}, {"p": 0.0}):
        y, keep = xdrop.dropout(x, **{"p": 0.5, **kwargs}, seed=0, return_mask=True)
        assert y is x
        assert host(keep).dtype == np.bool_ and host(keep).shape == (2, 3) and host(keep).all()


def test_python_values_run_on_the_default_backend(xp):
    y = xdrop.dropout([1.0, 2.0, 3.0], 0.5, seed=0)
    assert xp.is_array(y) and xp.dtype_name(y) in ("float32", "float64")


def test_dropout_mask_accepts_an_integer_shape(host):
    assert host(xdrop.dropout_mask(10, 0.5, seed=1)).shape == (10,)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_native_generator_keeps_the_semantics(array, host, p):
    count = 100_000
    values = host(xdrop.dropout(array(np.ones(count)), p, seed=4, rng="native"))
    q = 1 - p
    assert set(np.unique(values)) <= {0.0, float(np.float32(1) / np.float32(q))}
    assert abs(np.count_nonzero(values) - count * q) <= 4 * math.sqrt(count * p * q)
    assert abs(values.mean() - 1.0) <= 4 * math.sqrt(p / q / count)


def test_native_generator_edge_cases_match_the_portable_ones(array, host):
    x = array([1.0, -1.0, np.inf, np.nan])
    assert xdrop.dropout(x, 0.0, seed=1, rng="native") is x
    zeros = host(xdrop.dropout(x, 1.0, seed=1, rng="native"))
    assert zeros.tolist() == [0.0] * 4 and not np.signbit(zeros).any()
    with pytest.raises(xdrop.ArgumentValueError, match="offset must be 0 with rng"):
        xdrop.dropout(x, 0.5, seed=1, rng="native", offset=3)
    with pytest.raises(xdrop.ArgumentValueError, match="rng must be one of"):
        xdrop.dropout(x, 0.5, seed=1, rng="numpy")


# -- the common call: a Python float p and int seed, the other arguments as they are -------------
# It may take a shorter road (the fused kernel, without the general path's bookkeeping): what it
# returns and what it refuses must be exactly what the general path returns and refuses.
def _general_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Send every call down the general path, to compare the common call with it."""
    monkeypatch.setattr(xdrop.api, "_fused_common_call", lambda *arguments: None)


def _bits(xp: object, host: object, value: object) -> np.ndarray:
    array = host(value)  # type: ignore[operator]
    return array.view(f"u{array.dtype.itemsize}") if array.dtype.kind == "f" else array


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("shape", [(), (0,), (1000,), (3, 5)])
@pytest.mark.parametrize("return_mask", [False, True])
def test_the_common_call_gives_the_general_paths_bits(
    array, host, xp, monkeypatch, dtype, shape, return_mask
):
    x = array(np.random.default_rng(0).standard_normal(shape) * 100, dtype)
    for p, seed in [(0.5, 0), (0.1, 2**64 - 1), (0.9999, 12345)]:
        common = xdrop.dropout(x, p, seed=seed, return_mask=return_mask)
        with monkeypatch.context() as patch:
            _general_path(patch)
            general = xdrop.dropout(x, p, seed=seed, return_mask=return_mask)
        pairs = zip(common, general, strict=True) if return_mask else [(common, general)]
        for mine, theirs in pairs:
            assert type(mine) is type(theirs)
            assert xp.dtype_name(mine) == xp.dtype_name(theirs) and xp.shape(mine) == shape
            assert (_bits(xp, host, mine) == _bits(xp, host, theirs)).all()


@pytest.mark.parametrize(
    "call",
    [
        lambda array: xdrop.dropout(array([1, 2], "int32"), 0.5, seed=1),  # not a float array
        lambda array: xdrop.dropout(array([1.0]), 1.5, seed=1),
        lambda array: xdrop.dropout(array([1.0]), math.nan, seed=1),
        lambda array: xdrop.dropout(array([1.0]), 0.5, seed=2**64),
        lambda array: xdrop.dropout(array([1.0]), 0.5, seed=-1),
        lambda array: xdrop.dropout(array([1.0], "float16"), 0.99999, seed=1),  # 1e5: no float16
        lambda array: xdrop.dropout(array([1.0]), 0.5, seed=1, mode="inverse"),
        lambda array: xdrop.dropout(array([1.0]), 0.5, seed=1, rng="Portable"),
    ],
)
def test_the_common_call_refuses_what_the_general_path_refuses(array, monkeypatch, call):
    with pytest.raises(xdrop.XdropError) as common:
        call(array)
    _general_path(monkeypatch)
    with pytest.raises(xdrop.XdropError) as general:
        call(array)
    assert type(common.value) is type(general.value)
    assert str(common.value) == str(general.value)


@pytest.mark.parametrize("variable", ["XDROP_RNG", "XDROP_KERNEL"])
def test_the_common_call_meets_a_bad_setting_as_the_general_path_does(
    array, host, xp, monkeypatch, variable
):
    def outcome() -> object:  # the error's type and message, or the result's bits
        try:
            return _bits(xp, host, xdrop.dropout(array([1.0, 2.0]), 0.5, seed=1)).tolist()
        except xdrop.XdropError as error:
            return type(error), str(error)

    monkeypatch.setenv(variable, "fast")
    xdrop.kernel.refresh()
    common = outcome()
    _general_path(monkeypatch)
    assert common == outcome()
    if variable == "XDROP_RNG":  # XDROP_KERNEL is read only where there is a kernel
        assert common[0] is xdrop.ArgumentValueError and variable in common[1]


def test_the_common_call_follows_the_default_generator(array, host, monkeypatch):
    x = array(np.ones(1000))
    native = host(xdrop.dropout(x, 0.5, seed=7, rng="native"))
    with xdrop.use_rng("native"):
        assert (host(xdrop.dropout(x, 0.5, seed=7)) == native).all()
    monkeypatch.setenv("XDROP_RNG", "native")  # read at each call
    assert (host(xdrop.dropout(x, 0.5, seed=7)) == native).all()
    portable = host(xdrop.dropout(x, 0.5, seed=7, rng="portable"))
    monkeypatch.delenv("XDROP_RNG")
    assert (host(xdrop.dropout(x, 0.5, seed=7)) == portable).all()


def test_the_common_call_leaves_the_input_alone(array, host):
    values = np.random.default_rng(1).standard_normal(100)
    x = array(values)
    before = host(x).copy()
    xdrop.dropout(x, 0.5, seed=3)
    assert (host(x) == before).all()
