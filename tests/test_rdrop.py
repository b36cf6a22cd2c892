"""R-Dropout: ``rdrop_kl``, ``rdrop_loss`` and ``rdrop_forward``, on the backend under test.

The suite runs on the default backend (``XDROP_BACKEND=<name> pytest``): inputs are made with
``xp.asarray`` and results read back with ``xp.to_numpy``. Expected values come from NumPy
formulas written out here, from the published R-Drop code (re-derived in PyTorch), and from the
float64 reference of the golden cases.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import xdrop
from xdrop import reference, registry
from xdrop.conformance import golden
from xdrop.conformance.runner import run_backend

LN3 = math.log(3.0)
GOLDEN_KL = 0.137327  # logits [0, 0] vs [ln 3, 0]: P = (1/2, 1/2), Q = (3/4, 1/4)


# -- the backend under test ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def xp() -> Any:
    return registry.default_backend()


@pytest.fixture(scope="module")
def array(xp: Any) -> Callable[..., Any]:
    def make(values: Any, dtype: str = "float32") -> Any:
        try:
            return xp.asarray(np.asarray(values), dtype=dtype)
        except TypeError as error:  # float64 on JAX without x64
            pytest.skip(f"{xp.name} makes no {dtype} arrays here: {error}")

    return make


@pytest.fixture(scope="module")
def host(xp: Any) -> Callable[[Any], np.ndarray]:
    def read(y: Any) -> np.ndarray:
        return np.asarray(xp.to_numpy(y))

    return read


@pytest.fixture(scope="module")
def float64(xp: Any) -> str:
    """``"float64"``, or a skip where the backend computes no float64 (JAX without x64)."""
    try:
        made = xp.asarray(np.zeros(1), dtype="float64")
    except TypeError:  # JAX refuses float64 without x64 rather than give float32
        made = None
    if made is None or xp.dtype_name(made) != "float64":
        pytest.skip(f"the {xp.name} backend has no float64 here")
    return "float64"


def logit_pair(shape: tuple[int, ...], seed: int = 0, spread: float = 0.3) -> tuple[Any, Any]:
    """Two NumPy float64 logit arrays of ``shape``, the second a perturbation of the first, as two
    dropout passes give."""
    generator = np.random.default_rng(seed)
    first = generator.normal(0, 2, shape)
    return first, first + generator.normal(0, spread, shape)


# -- formulas the tests compare against, in NumPy float64 ------------------------------------------
def log_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = z - z.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def kl_rows(z1: np.ndarray, z2: np.ndarray) -> np.ndarray:
    """``(KL(P1||P2) + KL(P2||P1)) / 2`` per row of finite logits, from the definition."""
    log_p, log_q = log_softmax(z1), log_softmax(z2)
    p, q = np.exp(log_p), np.exp(log_q)
    return ((p * (log_p - log_q)).sum(-1) + (q * (log_q - log_p)).sum(-1)) / 2


def cross_entropy_rows(z: np.ndarray, labels: np.ndarray, smoothing: float = 0.0) -> np.ndarray:
    log_p = log_softmax(z)
    nll = -np.take_along_axis(log_p, labels[..., None], -1)[..., 0]
    return (1 - smoothing) * nll - smoothing * log_p.mean(-1)


# -- rdrop_kl: the value ---------------------------------------------------------------------------
def test_golden_value_of_the_symmetric_kl(array, host):
    kl = xdrop.rdrop_kl(array([0.0, 0.0]), array([LN3, 0.0]))
    assert host(kl) == pytest.approx(GOLDEN_KL, abs=1e-6)


def test_kl_is_the_average_of_both_directions(array, host):
    z1, z2 = logit_pair((8, 10), spread=1.0)
    expected = kl_rows(z1, z2)
    got = xdrop.rdrop_kl(array(z1), array(z2), reduction="none")
    np.testing.assert_allclose(host(got), expected, rtol=1e-5, atol=1e-7)


def test_default_reduction_is_the_sum_over_positions(array, host):
    z1, z2 = logit_pair((4, 3, 7))
    expected = kl_rows(z1, z2).sum()
    np.testing.assert_allclose(host(xdrop.rdrop_kl(array(z1), array(z2))), expected, rtol=1e-5)


def test_identical_logits_give_exactly_zero(array, host):
    z, _ = logit_pair((6, 9))
    assert host(xdrop.rdrop_kl(array(z), array(z), reduction="none")).tolist() == [0.0] * 6


def test_kl_is_exactly_symmetric(array, host):
    z1, z2 = logit_pair((5, 7), spread=2.0)
    forward = host(xdrop.rdrop_kl(array(z1), array(z2), reduction="none"))
    backward = host(xdrop.rdrop_kl(array(z2), array(z1), reduction="none"))
    assert (forward == backward).all()


def test_adding_a_constant_to_a_row_changes_nothing(array, host):
    z1, z2 = logit_pair((5, 6), spread=1.0)
    shift = np.array([[-40.0], [-3.0], [0.0], [2.5], [60.0]])
    plain = host(xdrop.rdrop_kl(array(z1), array(z2), reduction="none"))
    shifted = host(xdrop.rdrop_kl(array(z1 + shift), array(z2 - shift), reduction="none"))
    np.testing.assert_allclose(shifted, plain, rtol=1e-4, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(np.float64, (3, 5), elements=st.floats(-30, 30)),
    hnp.arrays(np.float64, (3, 5), elements=st.floats(-30, 30)),
)
def test_kl_is_non_negative_and_symmetric_for_any_logits(z1, z2):
    xp = registry.default_backend()
    forward = xp.to_numpy(xdrop.rdrop_kl(xp.asarray(z1), xp.asarray(z2), reduction="none"))
    backward = xp.to_numpy(xdrop.rdrop_kl(xp.asarray(z2), xp.asarray(z1), reduction="none"))
    assert (forward >= 0).all()
    assert (forward == backward).all()


# -- rdrop_kl: reductions and pad_mask -------------------------------------------------------------
@pytest.fixture(scope="module")
def padded_case():
    """Logits of 3 sequences of 4 tokens over 6 classes; True marks padded tokens."""
    z1, z2 = logit_pair((3, 4, 6), seed=3, spread=0.8)
    pad = np.array(
        [[False, False, True, True], [False, False, False, False], [False, True, True, True]]
    )
    return z1, z2, pad


def test_padded_positions_contribute_exactly_zero(array, host, padded_case):
    z1, z2, pad = padded_case
    per_position = host(xdrop.rdrop_kl(array(z1), array(z2), pad_mask=pad, reduction="none"))
    assert per_position.shape == (3, 4)
    assert (per_position[pad] == 0).all()
    assert (per_position[~pad] > 0).all()


def test_true_in_pad_mask_means_ignore(array, host, padded_case):
    z1, z2, pad = padded_case
    masked = host(xdrop.rdrop_kl(array(z1), array(z2), pad_mask=pad))
    real_tokens_only = kl_rows(z1[~pad], z2[~pad]).sum()
    np.testing.assert_allclose(masked, real_tokens_only, rtol=1e-5)


def test_mean_divides_by_the_number_of_real_positions(array, host, padded_case):
    z1, z2, pad = padded_case
    total = host(xdrop.rdrop_kl(array(z1), array(z2), pad_mask=pad, reduction="sum"))
    mean = host(xdrop.rdrop_kl(array(z1), array(z2), pad_mask=pad, reduction="mean"))
    np.testing.assert_allclose(mean * np.count_nonzero(~pad), total, rtol=1e-6)


def test_batchmean_divides_by_the_size_of_the_first_axis(array, host, padded_case):
    z1, z2, pad = padded_case
    total = host(xdrop.rdrop_kl(array(z1), array(z2), pad_mask=pad, reduction="sum"))
    batchmean = host(xdrop.rdrop_kl(array(z1), array(z2), pad_mask=pad, reduction="batchmean"))
    np.testing.assert_allclose(batchmean * 3, total, rtol=1e-6)


def test_none_sums_to_sum(array, host, padded_case):
    z1, z2, pad = padded_case
    per_position = host(xdrop.rdrop_kl(array(z1), array(z2), pad_mask=pad, reduction="none"))
    total = host(xdrop.rdrop_kl(array(z1), array(z2), pad_mask=pad, reduction="sum"))
    np.testing.assert_allclose(per_position.sum(), total, rtol=1e-5)


def test_without_pad_mask_mean_is_over_all_positions(array, host):
    z1, z2 = logit_pair((4, 5, 3))
    mean = host(xdrop.rdrop_kl(array(z1), array(z2), reduction="mean"))
    np.testing.assert_allclose(mean, kl_rows(z1, z2).mean(), rtol=1e-5)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_all_positions_padded_gives_zero_not_nan(array, host, reduction):
    z1, z2 = logit_pair((2, 3, 4))
    pad = np.ones((2, 3), bool)
    assert host(xdrop.rdrop_kl(array(z1), array(z2), pad_mask=pad, reduction=reduction)) == 0.0


@pytest.mark.parametrize("reduction", ["sum", "mean", "batchmean"])
def test_no_positions_at_all_gives_zero(array, host, reduction):
    empty = np.zeros((0, 4))
    assert host(xdrop.rdrop_kl(array(empty), array(empty), reduction=reduction)) == 0.0


def test_padded_positions_may_hold_garbage(array, host, padded_case):
    z1, z2, pad = padded_case
    dirty1, dirty2 = z1.copy(), z2.copy()
    dirty1[pad] = -np.inf  # e.g. fully masked rows
    dirty2[pad] = np.nan
    clean = host(xdrop.rdrop_kl(array(z1), array(z2), pad_mask=pad, reduction="none"))
    dirty = host(xdrop.rdrop_kl(array(dirty1), array(dirty2), pad_mask=pad, reduction="none"))
    assert (dirty == clean).all()


def test_class_axis_may_be_any_axis(array, host):
    z1, z2 = logit_pair((3, 7, 4))  # classes on axis 1
    pad = np.array([[False, True, False, False]] * 3)
    moved = host(
        xdrop.rdrop_kl(
            array(np.moveaxis(z1, 1, -1)),
            array(np.moveaxis(z2, 1, -1)),
            pad_mask=pad,
            reduction="none",
        )
    )
    got = host(xdrop.rdrop_kl(array(z1), array(z2), axis=1, pad_mask=pad, reduction="none"))
    np.testing.assert_allclose(got, moved, rtol=1e-6, atol=1e-9)


def test_a_single_distribution_has_no_batch_axis(array, host):
    kl = xdrop.rdrop_kl(array([0.0, 0.0]), array([LN3, 0.0]), reduction="none")
    assert host(kl).shape == ()
    with pytest.raises(xdrop.ArgumentValueError, match="without a batch axis"):
        xdrop.rdrop_kl(array([0.0, 0.0]), array([LN3, 0.0]), reduction="batchmean")


# -- numerics: masked classes and dtypes -----------------------------------------------------------
def test_classes_masked_in_both_passes_contribute_zero(array, host):
    z1, z2 = logit_pair((4, 6), spread=1.0)
    masked1, masked2 = z1.copy(), z2.copy()
    masked1[:, [1, 4]] = masked2[:, [1, 4]] = -np.inf  # vocabulary masking
    kept = [0, 2, 3, 5]
    got = host(xdrop.rdrop_kl(array(masked1), array(masked2), reduction="none"))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, kl_rows(z1[:, kept], z2[:, kept]), rtol=1e-5)


def test_a_class_impossible_in_one_pass_only_gives_infinity(array, host):
    z1, z2 = logit_pair((2, 3))
    z2[0, 1] = -np.inf
    got = host(xdrop.rdrop_kl(array(z1), array(z2), reduction="none"))
    assert got[0] == np.inf
    assert np.isfinite(got[1])


def test_probabilities_that_underflow_stay_finite(array, host):
    z1 = np.array([[0.0, -200.0, -1000.0], [50.0, -50.0, 0.0]])
    z2 = np.array([[0.0, -300.0, -900.0], [50.0, -49.0, 0.0]])
    got = host(xdrop.rdrop_kl(array(z1), array(z2), reduction="none"))
    assert np.isfinite(got).all() and (got >= 0).all()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_inputs_are_computed_and_returned_in_float32(xp, array, host, dtype):
    z1, z2 = (np.round(z * 8) / 8 for z in logit_pair((4, 8), spread=1.0))  # exact in half
    try:
        half1, half2 = array(z1, dtype), array(z2, dtype)
    except (ImportError, TypeError):
        pytest.skip(f"no {dtype} on the {xp.name} backend here")
    kl = xdrop.rdrop_kl(half1, half2, reduction="none")
    assert xp.dtype_name(kl) == "float32"
    np.testing.assert_allclose(host(kl), kl_rows(z1, z2), rtol=1e-5, atol=1e-7)
    loss = xdrop.rdrop_loss(half1, half2, array([0, 1, 2, 3], "int64"))
    assert xp.dtype_name(loss) == "float32"


def test_float32_stays_float32(xp, array):
    z1, z2 = logit_pair((2, 3))
    assert xp.dtype_name(xdrop.rdrop_kl(array(z1), array(z2))) == "float32"


def test_float64_stays_float64_and_matches_the_reference(xp, array, host, float64):
    z1, z2 = logit_pair((3, 5), spread=1.0)
    kl = xdrop.rdrop_kl(array(z1, float64), array(z2, float64), reduction="none")
    assert xp.dtype_name(kl) == "float64"
    expected = [
        reference.symmetric_kl(r1, r2) for r1, r2 in zip(z1.tolist(), z2.tolist(), strict=True)
    ]
    np.testing.assert_allclose(host(kl), expected, rtol=1e-12)


# -- rdrop_loss ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def classification():
    z1, z2 = logit_pair((8, 5), seed=5, spread=0.7)
    labels = np.array([0, 4, 2, 2, 1, 3, 0, 4])
    return z1, z2, labels


def test_loss_is_the_sum_of_both_cross_entropies_plus_alpha_kl(array, host, classification):
    z1, z2, labels = classification
    expected = (
        cross_entropy_rows(z1, labels) + cross_entropy_rows(z2, labels) + 0.7 * kl_rows(z1, z2)
    )
    got = xdrop.rdrop_loss(
        array(z1), array(z2), array(labels, "int64"), alpha=0.7, reduction="none"
    )
    np.testing.assert_allclose(host(got), expected, rtol=1e-5)


def test_loss_default_reduction_is_the_mean(array, host, classification):
    z1, z2, labels = classification
    expected = (
        cross_entropy_rows(z1, labels) + cross_entropy_rows(z2, labels) + kl_rows(z1, z2)
    ).mean()
    got = xdrop.rdrop_loss(array(z1), array(z2), array(labels, "int64"))
    np.testing.assert_allclose(host(got), expected, rtol=1e-5)


def test_alpha_zero_leaves_the_two_cross_entropies(array, host, classification):
    z1, z2, labels = classification
    got = xdrop.rdrop_loss(array(z1), array(z2), array(labels, "int64"), alpha=0, reduction="sum")
    expected = cross_entropy_rows(z1, labels).sum() + cross_entropy_rows(z2, labels).sum()
    np.testing.assert_allclose(host(got), expected, rtol=1e-5)


def test_alpha_weighs_the_kl_of_rdrop_kl(array, host, classification):
    z1, z2, labels = classification
    y = array(labels, "int64")
    base = host(xdrop.rdrop_loss(array(z1), array(z2), y, alpha=0, reduction="sum"))
    with_kl = host(xdrop.rdrop_loss(array(z1), array(z2), y, alpha=3.0, reduction="sum"))
    kl = host(xdrop.rdrop_kl(array(z1), array(z2), reduction="sum"))
    np.testing.assert_allclose(with_kl - base, 3.0 * kl, rtol=1e-4)


def test_ignore_index_drops_positions_from_both_terms(array, host, classification):
    z1, z2, labels = classification
    ignored = labels.copy()
    ignored[[1, 6]] = -100
    keep = ignored != -100
    per_position = host(
        xdrop.rdrop_loss(
            array(z1), array(z2), array(ignored, "int64"), ignore_index=-100, reduction="none"
        )
    )
    assert (per_position[~keep] == 0).all()
    mean = host(xdrop.rdrop_loss(array(z1), array(z2), array(ignored, "int64"), ignore_index=-100))
    z1k, z2k, yk = z1[keep], z2[keep], labels[keep]
    expected = (
        cross_entropy_rows(z1k, yk) + cross_entropy_rows(z2k, yk) + kl_rows(z1k, z2k)
    ).mean()
    np.testing.assert_allclose(mean, expected, rtol=1e-5)


def test_pad_mask_drops_positions_and_their_labels_are_not_looked_at(array, host):
    z1, z2 = logit_pair((2, 3, 4), seed=8)
    labels = np.array([[1, 3, 999], [0, -7, -7]])  # garbage where padded
    pad = np.array([[False, False, True], [False, True, True]])
    got = host(xdrop.rdrop_loss(array(z1), array(z2), array(labels, "int64"), pad_mask=pad))
    z1k, z2k, yk = z1[~pad], z2[~pad], labels[~pad]
    expected = (
        cross_entropy_rows(z1k, yk) + cross_entropy_rows(z2k, yk) + kl_rows(z1k, z2k)
    ).mean()
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_all_positions_ignored_gives_zero_not_nan(array, host):
    z1, z2 = logit_pair((3, 4))
    labels = array([-1, -1, -1], "int64")
    assert host(xdrop.rdrop_loss(array(z1), array(z2), labels, ignore_index=-1)) == 0.0


def test_label_smoothing_follows_pytorch_semantics(array, host, classification):
    z1, z2, labels = classification
    y = array(labels, "int64")
    got = host(
        xdrop.rdrop_loss(array(z1), array(z2), y, alpha=0, label_smoothing=0.1, reduction="none")
    )
    # target (1 - e) * onehot + e / C
    expected = cross_entropy_rows(z1, labels, 0.1) + cross_entropy_rows(z2, labels, 0.1)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_masked_classes_give_a_finite_loss(array, host, classification):
    z1, z2, labels = classification
    z1, z2 = z1.copy(), z2.copy()
    z1[:, 3] = z2[:, 3] = -np.inf
    y = np.where(labels == 3, 0, labels)
    got = host(xdrop.rdrop_loss(array(z1), array(z2), array(y, "int64"), reduction="none"))
    kept = [0, 1, 2, 4]
    a, b = z1[:, kept], z2[:, kept]
    y_kept = np.searchsorted(kept, y)
    expected = cross_entropy_rows(a, y_kept) + cross_entropy_rows(b, y_kept) + kl_rows(a, b)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_the_official_code_variant_from_these_arguments(array, host, classification):
    """The published code: ``0.5 * (CE1 + CE2) + alpha * kl_sum`` with mean cross entropies."""
    z1, z2, labels = classification
    alpha, n = 4.0, len(labels)
    official = 0.5 * (cross_entropy_rows(z1, labels).mean() + cross_entropy_rows(z2, labels).mean())
    official += alpha * kl_rows(z1, z2).sum()
    l1, l2, y = array(z1), array(z2), array(labels, "int64")
    two_calls = 0.5 * host(xdrop.rdrop_loss(l1, l2, y, alpha=0)) + alpha * host(
        xdrop.rdrop_kl(l1, l2)
    )
    one_call = 0.5 * host(xdrop.rdrop_loss(l1, l2, y, alpha=2 * alpha * n))
    np.testing.assert_allclose(two_calls, official, rtol=1e-5)
    np.testing.assert_allclose(one_call, official, rtol=1e-5)


def test_loss_over_a_sequence_batch_with_batchmean(array, host):
    z1, z2 = logit_pair((2, 5, 3), seed=2)
    labels = np.array([[0, 1, 2, 0, 1], [2, 2, 1, 0, 0]])
    total = host(xdrop.rdrop_loss(array(z1), array(z2), array(labels, "int64"), reduction="sum"))
    batchmean = host(
        xdrop.rdrop_loss(array(z1), array(z2), array(labels, "int64"), reduction="batchmean")
    )
    np.testing.assert_allclose(batchmean, total / 2, rtol=1e-6)


# -- rdrop_forward ---------------------------------------------------------------------------------
def test_forward_calls_the_model_once_on_the_doubled_batch(array, host):
    calls = []

    def model(x):
        calls.append(host(x))
        return x

    x = np.arange(6.0).reshape(3, 2)
    out1, out2 = xdrop.rdrop_forward(model, array(x))
    assert len(calls) == 1
    assert (calls[0] == np.concatenate([x, x])).all()
    assert (host(out1) == x).all() and (host(out2) == x).all()


def test_forward_gives_each_copy_its_own_dropout_mask(array, host):
    def model(x):
        return xdrop.dropout(x, 0.5, seed=7)

    out1, out2 = xdrop.rdrop_forward(model, array(np.ones((4, 32))))
    assert host(out1).shape == (4, 32)
    assert ((host(out1) == 0) != (host(out2) == 0)).any()


def test_forward_along_another_axis(array, host):
    x = np.arange(12.0).reshape(2, 3, 2)

    def model(doubled):
        assert host(doubled).shape == (2, 6, 2)
        return xdrop.dropout(doubled, 0.0)

    out1, out2 = xdrop.rdrop_forward(model, array(x), axis=1)
    assert (host(out1) == x).all() and (host(out2) == x).all()


def test_forward_output_may_change_the_feature_axes(array, host):
    out1, out2 = xdrop.rdrop_forward(
        lambda x: xdrop.rdrop_kl(x, x, reduction="none")[:, None], array(np.ones((3, 4)))
    )
    assert host(out1).shape == (3, 1) and host(out2).shape == (3, 1)


# -- bad input -------------------------------------------------------------------------------------
def test_logits_of_different_shapes(array):
    with pytest.raises(
        xdrop.ArgumentValueError, match=r"logits2 must be an array of logits1's shape \(2, 3\)"
    ):
        xdrop.rdrop_kl(array(np.zeros((2, 3))), array(np.zeros((2, 4))))


def test_logits_of_different_dtypes(xp, array, float64):
    with pytest.raises(
        xdrop.ArgumentTypeError, match=r"logits2 must be an array of logits1's dtype \(float32\)"
    ):
        xdrop.rdrop_kl(array(np.zeros((2, 3))), array(np.zeros((2, 3)), float64))


def test_integer_logits(array):
    ints = array(np.zeros((2, 3)), "int64")
    with pytest.raises(
        xdrop.ArgumentTypeError,
        match="logits1 must be an array of float16, bfloat16, float32 or float64",
    ):
        xdrop.rdrop_kl(ints, ints)
    with pytest.raises(TypeError):
        xdrop.rdrop_loss(ints, ints, array([0, 1], "int64"))


def test_zero_dimensional_logits(array):
    with pytest.raises(
        xdrop.ArgumentValueError, match="logits1 must be an array with a class axis"
    ):
        xdrop.rdrop_kl(array(1.0), array(1.0))


def test_no_classes(array):
    with pytest.raises(xdrop.ArgumentValueError, match="at least one class"):
        xdrop.rdrop_kl(array(np.zeros((3, 0))), array(np.zeros((3, 0))))


@pytest.mark.parametrize("axis", [2, -3, 1.0])
def test_class_axis_out_of_range(array, axis):
    with pytest.raises(xdrop.XdropError, match=r"axis must be an integer in \[-2, 2\)"):
        xdrop.rdrop_kl(array(np.zeros((2, 3))), array(np.zeros((2, 3))), axis=axis)


@pytest.mark.parametrize(
    ("reduction", "kind"),
    [("avg", xdrop.ArgumentValueError), ("Sum", xdrop.ArgumentValueError),
     (None, xdrop.ArgumentTypeError)],
)  # fmt: skip
def test_unknown_reduction(array, reduction, kind):
    with pytest.raises(
        kind,
        match='reduction must be one of "sum", "mean", "batchmean", "none"',
    ):
        xdrop.rdrop_kl(array(np.zeros((2, 3))), array(np.zeros((2, 3))), reduction=reduction)


def test_pad_mask_of_the_wrong_shape(array):
    z = array(np.zeros((2, 5, 3)))
    with pytest.raises(
        xdrop.ArgumentValueError,
        match=r"pad_mask must be None or a boolean array .* of shape \(2, 5\)",
    ):
        xdrop.rdrop_kl(z, z, pad_mask=np.zeros((2, 5, 1), bool))  # the official code's shape


def test_pad_mask_that_is_not_boolean(array):
    z = array(np.zeros((2, 3)))
    with pytest.raises(xdrop.ArgumentTypeError, match="pad_mask must be None or a boolean array"):
        xdrop.rdrop_kl(z, z, pad_mask=np.array([0, 1]))


@pytest.mark.parametrize("labels", [[0, 3], [-1, 0]])
def test_labels_out_of_range(array, labels):
    z = array(np.zeros((2, 3)))
    with pytest.raises(xdrop.ArgumentValueError, match=r"labels must be class indices in \[0, 3\)"):
        xdrop.rdrop_loss(z, z, array(labels, "int64"))


def test_labels_out_of_range_names_the_position_and_ignore_index(array):
    z = array(np.zeros((2, 2, 3)))
    labels = array([[0, -100], [1, 7]], "int64")
    with pytest.raises(
        xdrop.ArgumentValueError, match=r"or ignore_index \(-100\), got 7 at position \(1, 1\)"
    ):
        xdrop.rdrop_loss(z, z, labels, ignore_index=-100)


def test_an_array_of_another_framework_is_shown_by_its_dtype_shape_and_type_not_its_values():
    torch = pytest.importorskip("torch")
    jnp = pytest.importorskip("jax.numpy")
    logits, foreign = torch.zeros(30, 30), jnp.zeros((30, 30))
    labels = torch.zeros(30, dtype=torch.int64)
    shown = f"got <float32 array of shape (30, 30)> of type {type(foreign).__name__}"
    allowed = "an array of logits1's framework (torch), or numbers in (nested) lists"
    with pytest.raises(xdrop.ArgumentTypeError) as info:
        xdrop.rdrop_loss(logits, foreign, labels)
    assert str(info.value) == f"logits2 must be {allowed}, {shown}"
    with pytest.raises(xdrop.ArgumentTypeError, match="targets must be an array of pred1's"):
        xdrop.rdrop_regression_loss(logits, logits, foreign)


def test_a_first_input_that_is_no_array_is_refused_naming_what_is_allowed():
    with pytest.raises(xdrop.ArgumentTypeError) as info:
        xdrop.rdrop_loss("abc", "abc", [0])
    assert str(info.value) == (
        "logits1 must be an array, or numbers in (nested) lists, got 'abc' of type str"
    )


def test_labels_that_are_not_integers(array):
    z = array(np.zeros((2, 3)))
    with pytest.raises(xdrop.ArgumentTypeError, match="labels must be an integer array of shape"):
        xdrop.rdrop_loss(z, z, array([0.0, 1.0]))


def test_labels_of_the_wrong_shape(array):
    z = array(np.zeros((2, 3)))
    with pytest.raises(
        xdrop.ArgumentValueError, match=r"labels must be an integer array of shape \(2,\)"
    ):
        xdrop.rdrop_loss(z, z, array([[0, 1]], "int64"))


@pytest.mark.parametrize("alpha", [-0.5, math.nan, math.inf])
def test_alpha_must_be_finite_and_non_negative(array, alpha):
    z = array(np.zeros((2, 3)))
    with pytest.raises(
        xdrop.ArgumentValueError, match="alpha must be a real number >= 0 that is finite in"
    ):
        xdrop.rdrop_loss(z, z, array([0, 1], "int64"), alpha=alpha)


def test_alpha_must_be_a_number(array):
    z = array(np.zeros((2, 3)))
    with pytest.raises(xdrop.ArgumentTypeError, match="alpha must be"):
        xdrop.rdrop_loss(z, z, array([0, 1], "int64"), alpha="1")


@pytest.mark.parametrize("smoothing", [-0.1, 1.5, math.nan])
def test_label_smoothing_outside_the_unit_interval(array, smoothing):
    z = array(np.zeros((2, 3)))
    with pytest.raises(
        xdrop.ArgumentValueError, match=r"label_smoothing must be a real number in \[0, 1\]"
    ):
        xdrop.rdrop_loss(z, z, array([0, 1], "int64"), label_smoothing=smoothing)


def test_ignore_index_must_be_an_integer(array):
    z = array(np.zeros((2, 3)))
    with pytest.raises(xdrop.ArgumentTypeError, match="ignore_index must be an integer or None"):
        xdrop.rdrop_loss(z, z, array([0, 1], "int64"), ignore_index=1.5)


def test_forward_needs_a_callable(array):
    with pytest.raises(xdrop.ArgumentTypeError, match="model_fn must be a callable"):
        xdrop.rdrop_forward("model", array(np.ones((2, 3))))


def test_forward_needs_a_batch_to_double(array):
    with pytest.raises(xdrop.ArgumentTypeError, match="x must be an array, or a rectangular"):
        xdrop.rdrop_forward(lambda x: x, [[1.0], [2.0, 3.0]])
    with pytest.raises(xdrop.XdropError, match="x must be an array"):  # NumPy makes it 0-d
        xdrop.rdrop_forward(lambda x: x, None)
    for batchless in (3.0, array(3.0)):
        with pytest.raises(xdrop.ArgumentValueError, match="x must be an array with a batch axis"):
            xdrop.rdrop_forward(lambda x: x, batchless)


def test_forward_output_must_keep_the_doubled_batch(array):
    with pytest.raises(
        xdrop.ArgumentValueError,
        match="the output of model_fn must be an array with 4 entries along axis 0",
    ):
        xdrop.rdrop_forward(lambda x: xdrop.rdrop_kl(x, x), array(np.ones((2, 3))))


def test_errors_are_value_and_type_errors_too(array):
    z = array(np.zeros((2, 3)))
    with pytest.raises(ValueError):
        xdrop.rdrop_kl(z, z, reduction="avg")
    with pytest.raises(TypeError):
        xdrop.rdrop_kl(array(np.zeros((2, 3)), "int32"), z)


# -- against the published code and the golden cases -----------------------------------------------
def official_compute_kl_loss(torch: Any, p: Any, q: Any, pad_mask: Any = None) -> Any:
    """``compute_kl_loss`` of the R-Drop repository's README, as published."""
    functional = torch.nn.functional
    p_loss = functional.kl_div(
        functional.log_softmax(p, dim=-1), functional.softmax(q, dim=-1), reduction="none"
    )
    q_loss = functional.kl_div(
        functional.log_softmax(q, dim=-1), functional.softmax(p, dim=-1), reduction="none"
    )
    if pad_mask is not None:
        p_loss.masked_fill_(pad_mask, 0.0)
        q_loss.masked_fill_(pad_mask, 0.0)
    return (p_loss.sum() + q_loss.sum()) / 2


@pytest.mark.parametrize("with_pad", [False, True])
def test_matches_the_official_compute_kl_loss(array, host, float64, with_pad):
    torch = pytest.importorskip("torch")
    z1, z2 = logit_pair((4, 7, 11), seed=9, spread=1.5)
    pad = np.random.default_rng(1).random((4, 7)) < 0.3 if with_pad else None
    official = official_compute_kl_loss(
        torch,
        torch.from_numpy(z1),
        torch.from_numpy(z2),
        None if pad is None else torch.from_numpy(pad)[..., None],  # theirs keeps the class axis
    )
    ours = xdrop.rdrop_kl(array(z1, float64), array(z2, float64), pad_mask=pad)
    np.testing.assert_allclose(host(ours), official.item(), rtol=1e-6, atol=1e-6)


def test_the_official_golden_value_in_pytorch():
    torch = pytest.importorskip("torch")
    official = official_compute_kl_loss(
        torch, torch.tensor([[0.0, 0.0]]), torch.tensor([[LN3, 0.0]])
    )
    assert official.item() == pytest.approx(GOLDEN_KL, abs=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.15])
def test_cross_entropies_match_pytorch_cross_entropy(array, host, float64, smoothing):
    torch = pytest.importorskip("torch")
    z1, z2 = logit_pair((6, 5), seed=4, spread=1.0)
    labels = np.array([0, 4, -100, 2, 1, -100])
    expected = sum(
        torch.nn.functional.cross_entropy(
            torch.from_numpy(z),
            torch.from_numpy(labels),
            ignore_index=-100,
            label_smoothing=smoothing,
        ).item()
        for z in (z1, z2)
    )
    ours = xdrop.rdrop_loss(
        array(z1, float64), array(z2, float64), array(labels, "int64"),
        alpha=0, ignore_index=-100, label_smoothing=smoothing,
    )  # fmt: skip
    np.testing.assert_allclose(host(ours), expected, rtol=1e-10)


def test_the_golden_rdrop_cases_pass_on_this_backend(xp):
    cases = [case for case in golden.load()["cases"] if case["kind"] in ("rdrop_kl", "rdrop_loss")]
    assert len(cases) > 40
    report = run_backend(xp.name, cases)
    assert not report.failed, [(failure.case_id, failure.detail) for failure in report.failed]


def test_the_shipped_golden_rdrop_cases_are_those_of_the_reference():
    shipped = [case for case in golden.load()["cases"] if case["kind"].startswith("rdrop")]
    generated = [case for case in golden.generate()["cases"] if case["kind"].startswith("rdrop")]
    assert shipped == generated


def test_the_reference_gives_the_golden_value():
    assert reference.symmetric_kl([0.0, 0.0], [LN3, 0.0]) == pytest.approx(GOLDEN_KL, abs=1e-6)
    assert reference.cross_entropy([0.0, 0.0], 1) == pytest.approx(math.log(2))


# -- autograd and compilation, on the frameworks that have them ------------------------------------
def framework_backend(name: str) -> Any:
    """The backend ``name`` with its framework, or a skip when either is missing here."""
    pytest.importorskip(name)
    if not xdrop.available_backends().get(name):
        pytest.skip(f"xdrop has no {name} backend installed here")
    return registry.load(name)


def masked_batch() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Logits with a masked class and a padded position holding -inf and NaN garbage."""
    z1, z2 = logit_pair((3, 4, 5), seed=11, spread=0.5)
    z1[..., 2] = z2[..., 2] = -np.inf
    pad = np.zeros((3, 4), bool)
    pad[1, 3] = pad[2, 0] = True
    z1[1, 3] = -np.inf
    z2[2, 0] = np.nan
    labels = np.array([[0, 1, 3, 4], [4, 3, 1, -100], [0, 0, 1, 1]])
    return z1.astype(np.float32), z2.astype(np.float32), pad, labels


def loss_of(l1: Any, l2: Any, labels: Any, pad: Any) -> Any:
    return xdrop.rdrop_loss(l1, l2, labels, alpha=2.0, pad_mask=pad, ignore_index=-100)


def expected_gradients() -> tuple[float, np.ndarray, np.ndarray]:
    """The loss of :func:`masked_batch` and its gradients, by PyTorch autograd over the formulas
    written out (on the real positions and unmasked classes only)."""
    torch = pytest.importorskip("torch")
    z1, z2, pad, labels = masked_batch()
    keep = ~pad & (labels != -100)
    classes = [0, 1, 3, 4]
    t1 = torch.tensor(z1, dtype=torch.float64, requires_grad=True)
    t2 = torch.tensor(z2, dtype=torch.float64, requires_grad=True)
    a, b = t1[torch.from_numpy(keep)][:, classes], t2[torch.from_numpy(keep)][:, classes]
    y = torch.from_numpy(np.searchsorted(classes, labels[keep]))
    functional = torch.nn.functional
    ce = functional.cross_entropy(a, y, reduction="sum") + functional.cross_entropy(
        b, y, reduction="sum"
    )
    kl = official_compute_kl_loss(torch, a, b)
    loss = (ce + 2.0 * kl) / keep.sum()
    loss.backward()
    return loss.item(), np.nan_to_num(t1.grad.numpy()), np.nan_to_num(t2.grad.numpy())


def test_torch_gradients_are_finite_and_right():
    xp = framework_backend("torch")
    import torch

    z1, z2, pad, labels = masked_batch()
    l1 = torch.tensor(z1, requires_grad=True)
    l2 = torch.tensor(z2, requires_grad=True)
    loss = loss_of(l1, l2, torch.from_numpy(labels), torch.from_numpy(pad))
    loss.backward()
    value, grad1, grad2 = expected_gradients()
    assert xp.dtype_name(loss) == "float32"
    assert loss.item() == pytest.approx(value, rel=1e-5)
    np.testing.assert_allclose(l1.grad.numpy(), grad1, atol=1e-6)
    np.testing.assert_allclose(l2.grad.numpy(), grad2, atol=1e-6)


def test_torch_compile():
    framework_backend("torch")
    import torch

    z1, z2, pad, labels = masked_batch()
    args = (
        torch.from_numpy(z1),
        torch.from_numpy(z2),
        torch.from_numpy(labels),
        torch.from_numpy(pad),
    )
    eager = loss_of(*args).item()
    compiled = torch.compile(loss_of, backend="eager")  # dynamo's capture, without a C compiler
    assert compiled(*args).item() == pytest.approx(eager, rel=1e-6)


@pytest.mark.parametrize(("shape", "axis"), [((6,), 0), ((5, 4), -1), ((2, 4, 3), 1)])
def test_torch_compile_gives_the_eager_loss_and_gradients_on_any_class_axis(shape, axis):
    """Compiled, the labels' log-probabilities are picked another way (nll_loss, whose gradient
    fuses); the loss and both gradients are eager's to rounding, whatever the class axis."""
    framework_backend("torch")
    import torch

    generator = torch.Generator().manual_seed(0)
    logits = [torch.randn(shape, generator=generator, requires_grad=True) for _ in range(2)]
    positions = shape[: axis % len(shape)] + shape[axis % len(shape) + 1 :]
    labels = torch.randint(0, shape[axis], positions, generator=generator)

    def loss_and_gradients(loss_of):
        loss = loss_of(*logits, labels)
        return (loss, *torch.autograd.grad(loss, logits))

    for smoothing in (0.0, 0.1):  # both cross entropies picked at once, and one by one

        def loss_of(a, b, labels, smoothing=smoothing):
            return xdrop.rdrop_loss(a, b, labels, axis=axis, label_smoothing=smoothing)

        eager = loss_and_gradients(loss_of)
        compiled = loss_and_gradients(torch.compile(loss_of))
        for ours, expected in zip(compiled, eager, strict=True):
            torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-7)


def test_torch_compile_raises_on_a_label_out_of_range():
    """Labels are not read back under the compiler; the compiled gather checks its indices, so a
    wrong label raises rather than giving a loss."""
    framework_backend("torch")
    import torch

    logits1, logits2 = torch.zeros(4, 3), torch.ones(4, 3)
    loss = torch.compile(lambda a, b, labels: xdrop.rdrop_loss(a, b, labels))
    assert torch.isfinite(loss(logits1, logits2, torch.tensor([0, 1, 2, 2])))
    with pytest.raises(RuntimeError, match="out of bounds"):
        loss(logits1, logits2, torch.tensor([0, 1, 3, 2]))


def test_jax_gradients_under_jit_are_finite_and_right():
    framework_backend("jax")
    import jax
    import jax.numpy as jnp

    z1, z2, pad, labels = masked_batch()
    loss_and_grads = jax.jit(jax.value_and_grad(loss_of, argnums=(0, 1)))
    loss, (grad1, grad2) = loss_and_grads(
        jnp.asarray(z1), jnp.asarray(z2), jnp.asarray(labels), jnp.asarray(pad)
    )
    value, expected1, expected2 = expected_gradients()
    assert float(loss) == pytest.approx(value, rel=1e-5)
    np.testing.assert_allclose(np.asarray(grad1), expected1, atol=1e-6)
    np.testing.assert_allclose(np.asarray(grad2), expected2, atol=1e-6)


def test_tensorflow_gradients_under_tf_function_are_finite_and_right():
    framework_backend("tensorflow")
    import tensorflow as tf

    z1, z2, pad, labels = masked_batch()
    l1, l2 = tf.Variable(z1), tf.Variable(z2)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = loss_of(l1, l2, tf.constant(labels), tf.constant(pad))
        return loss, tape.gradient(loss, [l1, l2])

    loss, (grad1, grad2) = step()
    value, expected1, expected2 = expected_gradients()
    assert float(loss) == pytest.approx(value, rel=1e-5)
    np.testing.assert_allclose(grad1.numpy(), expected1, atol=1e-6)
    np.testing.assert_allclose(grad2.numpy(), expected2, atol=1e-6)


@pytest.mark.parametrize(
    ("dtype", "alpha", "computed_in"),
    [("float32", 1e39, "float32"), ("float16", 1e39, "float32"), ("float64", 1e309, "float64")],
)
def test_alpha_must_be_finite_in_the_compute_dtype(array, host, dtype, alpha, computed_in):
    # before: alpha=1e39 on float32 logits returned NaN
    z = array(np.zeros((2, 3)), dtype)
    labels = np.array([0, 1])
    with pytest.raises(xdrop.ArgumentValueError, match=f"finite in {computed_in}"):
        xdrop.rdrop_loss(z, z, labels, alpha=alpha)
    assert np.isfinite(host(xdrop.rdrop_loss(z, z, labels, alpha=3e38)))


def test_labels_on_an_accelerator_are_not_copied_to_the_host(monkeypatch):
    torch = pytest.importorskip("torch")
    from xdrop.backends.torch import TorchBackend

    def no_host_copies(self, x):
        raise AssertionError("rdrop_loss copied an array to the host")

    logits = torch.zeros((4, 3), requires_grad=True)
    labels, pad = torch.tensor([0, 1, 2, 0]), torch.tensor([False, True, False, False])
    expected = xdrop.rdrop_loss(logits, logits, labels, pad_mask=pad)
    monkeypatch.setattr(TorchBackend, "in_host_memory", lambda self, x: False)  # as on a GPU
    monkeypatch.setattr(TorchBackend, "to_numpy", no_host_copies)
    loss = xdrop.rdrop_loss(logits, logits, labels, pad_mask=pad)
    assert torch.equal(loss, expected)


def test_torch_labels_are_read_back_only_to_explain_an_index_error(monkeypatch):
    # torch.gather checks its indices itself: a valid call reads nothing back, and a label out of
    # range is still an error naming the label and its position, not gather's
    torch = pytest.importorskip("torch")
    from xdrop.backends.torch import TorchBackend

    read_back = []
    to_numpy = TorchBackend.to_numpy
    monkeypatch.setattr(
        TorchBackend, "to_numpy", lambda self, x: read_back.append(x) or to_numpy(self, x)
    )
    logits = torch.zeros((4, 3), requires_grad=True)
    pad = torch.tensor([False, True, False, False])  # a padded position's label may be anything
    xdrop.rdrop_loss(logits, logits, torch.tensor([0, 9, 2, 0]), pad_mask=pad).backward()
    assert read_back == []
    for label in (-1, 3):
        with pytest.raises(xdrop.ArgumentValueError, match=rf"got {label} at position \(2,\)"):
            xdrop.rdrop_loss(logits, logits, torch.tensor([0, 9, label, 0]), pad_mask=pad)
    assert read_back


def test_torch_func_transforms_run_the_loss_and_raise_torch_error_for_a_bad_label():
    # under vmap and grad labels are wrappers whose values cannot be read back: torch's own
    # index check is what catches a bad one, as for labels on an accelerator
    torch = pytest.importorskip("torch")
    from torch.func import grad, vmap

    generator = torch.Generator().manual_seed(0)
    logits1, logits2 = torch.randn((2, 5, 4, 3), generator=generator)
    labels = torch.randint(0, 3, (5, 4), generator=generator)
    batched = vmap(xdrop.rdrop_loss)(logits1, logits2, labels)
    one_by_one = torch.stack(
        [xdrop.rdrop_loss(logits1[i], logits2[i], labels[i]) for i in range(5)]
    )
    torch.testing.assert_close(batched, one_by_one)
    leaf = logits1[0].clone().requires_grad_()
    (expected,) = torch.autograd.grad(xdrop.rdrop_loss(leaf, logits2[0], labels[0]), leaf)
    torch.testing.assert_close(grad(xdrop.rdrop_loss)(logits1[0], logits2[0], labels[0]), expected)
    labels[2, 1] = 7
    with pytest.raises(RuntimeError, match="index 7 is out of bounds"):
        vmap(xdrop.rdrop_loss)(logits1, logits2, labels)


@pytest.mark.parametrize("as_given", [np.array, list])
def test_host_labels_are_checked_before_a_compiled_or_transformed_loss(as_given):
    # host values are at hand, and the compiled pick's own check may abort the process instead
    torch = pytest.importorskip("torch")
    from torch.func import grad

    logits = torch.zeros((4, 3))
    labels = as_given([0, 1, 3, 2])
    compiled = torch.compile(xdrop.rdrop_loss, backend="aot_eager")
    with pytest.raises(xdrop.ArgumentValueError, match=r"got 3 at position \(2,\)"):
        compiled(logits, logits, labels)
    with pytest.raises(xdrop.ArgumentValueError, match=r"got 3 at position \(2,\)"):
        grad(xdrop.rdrop_loss)(logits, logits, labels)


@pytest.mark.parametrize(
    ("dtype", "ignore_index", "label"),
    [("uint8", -100, 156), ("int8", 261, 5), ("int16", 65535, -1)],
)
def test_an_ignore_index_that_no_label_of_its_dtype_can_equal_ignores_none(
    array, dtype, ignore_index, label
):
    # compared in the labels' dtype, -100 would be 156 as uint8, and that label ignored
    z = array(np.zeros((2, 3)))
    with pytest.raises(xdrop.ArgumentValueError, match=rf"got {label} at position \(1,\)"):
        xdrop.rdrop_loss(z, z, array([0, label], dtype), ignore_index=ignore_index)
    labels = array([0, 1], "int8")
    expected = xdrop.rdrop_loss(z, array(np.eye(2, 3)), labels, reduction="none")
    ignoring = xdrop.rdrop_loss(
        z, array(np.eye(2, 3)), labels, ignore_index=2**40, reduction="none"
    )
    np.testing.assert_array_equal(np.asarray(ignoring), np.asarray(expected))


def test_an_error_inside_the_loss_that_is_not_a_label_passes_through(monkeypatch):
    torch = pytest.importorskip("torch")
    from xdrop.backends.torch import TorchBackend

    def out_of_memory(self, x, axis):
        raise RuntimeError("CPU out of memory")

    monkeypatch.setattr(TorchBackend, "log_softmax", out_of_memory)
    with pytest.raises(RuntimeError, match="CPU out of memory"):
        xdrop.rdrop_loss(torch.zeros((2, 3)), torch.zeros((2, 3)), torch.tensor([0, 2]))


def test_host_labels_are_still_checked(array):
    z = array(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="labels must be class indices in"):
        xdrop.rdrop_loss(z, z, np.array([0, 7]))
