"""Mask stream v1: every mask the array implementation draws equals the scalar reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import xdrop
from xdrop import reference, spec

shapes = st.lists(st.integers(0, 6), min_size=0, max_size=4).map(tuple)
rates = st.one_of(st.sampled_from([0.0, 1.0, 0.5, 1e-12, 1 - 1e-12]), st.floats(0, 1))
seeds = st.one_of(st.sampled_from([0, 2**32 - 1, 2**32, 2**64 - 1]), st.integers(0, 2**64 - 1))
LAST_OFFSET = 2**64 - 6**4  # room for the largest shape drawn
offsets = st.one_of(st.sampled_from([0, 2**32 - 3, LAST_OFFSET]), st.integers(0, LAST_OFFSET))


@settings(max_examples=60, deadline=None)
@given(shape=shapes, p=rates, seed=seeds, offset=offsets)
def test_dropout_mask_equals_the_reference(host, shape, p, seed, offset):
    mask = host(xdrop.dropout_mask(shape, p, seed=seed, offset=offset))
    expected = reference.keep_mask(seed, p, math.prod(shape), offset)
    assert mask.dtype == np.bool_ and mask.shape == shape
    assert mask.ravel().tolist() == expected


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple),
    p=rates,
    seed=seeds,
    dtype=st.sampled_from(["float16", "float32", "float64"]),
    mode=st.sampled_from(["inverted", "classic"]),
    data=st.data(),
)
def test_dropout_output_equals_the_reference(array, host, shape, p, seed, dtype, mode, data):
    noise_shape = tuple(data.draw(st.sampled_from([1, size, None])) for size in shape)
    noise_shape = noise_shape[data.draw(st.integers(0, len(shape))) :]
    values = np.random.default_rng(seed % 2**32).standard_normal(shape)
    values = values.astype(dtype).astype(np.float64)
    if dtype == "float16" and mode == "inverted" and math.isinf(spec.inverted_scale(p, dtype)):
        return  # an overflowing scale is an error, tested in test_errors
    y, keep = xdrop.dropout(
        array(values, dtype), p, seed=seed, mode=mode, noise_shape=noise_shape, return_mask=True
    )
    expected, expected_keep = reference.dropout(
        values.ravel().tolist(), shape, p, seed, dtype=dtype, mode=mode, noise_shape=noise_shape
    )
    assert host(keep).ravel().tolist() == expected_keep
    assert host(y).astype(np.float64).ravel().tolist() == expected


@pytest.mark.parametrize("chunk_size", [1, 7, 1000, None])
def test_chunking_changes_nothing(xp, host, chunk_size, monkeypatch):
    whole = host(xdrop.dropout_mask((3000,), 0.4, seed=99))
    monkeypatch.setattr(type(xp), "chunk_size", chunk_size)
    assert (host(xdrop.dropout_mask((3000,), 0.4, seed=99)) == whole).all()


@pytest.mark.parametrize("boundary", [2**32, 2**33, 2**63])
def test_a_shard_draws_its_slice_of_the_whole_mask(host, boundary):
    start = boundary - 500
    whole = host(xdrop.dropout_mask((2000,), 0.5, seed=5, offset=start))
    for shard_start in range(0, 2000, 400):
        shard = host(xdrop.dropout_mask((400,), 0.5, seed=5, offset=start + shard_start))
        assert (shard == whole[shard_start : shard_start + 400]).all()


def test_counters_cross_the_32_bit_boundary(host):
    mask = host(xdrop.dropout_mask((8,), 0.5, seed=3, offset=2**32 - 4))
    assert mask.tolist() == reference.keep_mask(3, 0.5, 8, 2**32 - 4)


def test_noise_shape_broadcasts_one_decision(array, host):
    x = np.ones((4, 3, 5))
    _, keep = xdrop.dropout(array(x), 0.5, seed=8, noise_shape=(4, 1, 5), return_mask=True)
    keep = host(keep)
    assert keep.shape == (4, 3, 5)
    assert (keep == keep[:, :1, :]).all()
    drawn = host(xdrop.dropout_mask((4, 1, 5), 0.5, seed=8))
    assert (keep == np.broadcast_to(drawn, (4, 3, 5))).all()


def test_noise_shape_may_be_an_array_of_sizes_or_hold_0d_ones(xp, array, host):
    # tf.nn.dropout takes a tensor of sizes; Keras writes (ops.shape(x)[0], 1, ...)
    x = array(np.ones((4, 3, 5)))
    expected = host(xdrop.dropout(x, 0.5, seed=8, noise_shape=(4, 1, 5)))
    sizes = xp.asarray(np.array([4, 1, 5]))
    for noise_shape in (sizes, np.array([4, 1, 5]), (xp.asarray(np.int64(4)), 1, 5)):
        assert (host(xdrop.dropout(x, 0.5, seed=8, noise_shape=noise_shape)) == expected).all()
    for bad in (
        xp.asarray(np.array([4.0, 1.0, 5.0])),
        (xp.asarray(np.array([4, 1])), 1, 5),
        np.array(5),
        np.array([], np.float32),
        {4, 1, 5},
    ):
        with pytest.raises(xdrop.ArgumentTypeError, match="noise_shape must be"):
            xdrop.dropout(x, 0.5, seed=8, noise_shape=bad)


def test_missing_leading_noise_dims_are_shared(array, host):
    _, keep = xdrop.dropout(array(np.ones((4, 3))), 0.5, seed=8, noise_shape=(3,), return_mask=True)
    keep = host(keep)
    assert (keep == keep[0]).all()
    assert keep[0].tolist() == host(xdrop.dropout_mask((3,), 0.5, seed=8)).tolist()


def test_none_in_noise_shape_takes_the_input_size(array, host):
    _, full = xdrop.dropout(array(np.ones((2, 3))), 0.5, seed=4, return_mask=True)
    _, keep = xdrop.dropout(array(np.ones((2, 3))), 0.5, seed=4, noise_shape=(None, None),
                            return_mask=True)  # fmt: skip
    assert (host(full) == host(keep)).all()
