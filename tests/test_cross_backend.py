"""Every installed backend draws JAX's masks and computes Flax's outputs, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

import xdrop
from xdrop import registry

jax = pytest.importorskip("jax")
jnp = jax.numpy

BACKENDS = [
    name
    for name in ("numpy", "torch", "tensorflow", "jax", "array_api")
    if xdrop.available_backends().get(name)
]
SHAPES = [(1,), (33,), (4, 9), (2, 3, 5), (70_000,)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.95])
def test_masks_equal_jax_bernoulli(backend, p):
    xp = registry.load(backend)
    for seed in (0, 1, 12345, 2**31 - 1):
        for shape in SHAPES:
            expected = np.asarray(jax.random.bernoulli(jax.random.key(seed), 1 - p, shape))
            like = xp.asarray(np.zeros(1, np.float32))
            got = xp.to_numpy(xdrop.dropout_mask(shape, p, seed=seed, like=like))
            assert (got == expected).all(), (backend, seed, shape)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inverted_outputs_equal_flax_style_dropout(backend):
    xp = registry.load(backend)
    for seed in (3, 99):
        for p in (0.1, 0.5, 0.9):
            for shape in SHAPES[:4]:
                x = jax.random.normal(jax.random.key(seed + 1), shape)
                keep = jax.random.bernoulli(jax.random.key(seed), 1 - p, shape)
                flax_style = np.asarray(jax.lax.select(keep, x / (1 - p), jnp.zeros_like(x)))
                y = xdrop.dropout(xp.asarray(np.asarray(x), dtype="float32"), p, seed=seed)
                assert (xp.to_numpy(y) == flax_style).all(), (backend, seed, p, shape)
