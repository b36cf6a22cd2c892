"""xdrop on JAX arrays: what a JAX user expects, and equality with jax.random and Flax."""

from __future__ import annotations

import math

import numpy as np
import pytest

import xdrop
from xdrop import reference

jax = pytest.importorskip("jax")
jnp = jax.numpy


def test_result_keeps_type_dtype_and_shape():
    for dtype in (jnp.float16, jnp.bfloat16, jnp.float32):
        x = jnp.ones((3, 4), dtype)
        y = xdrop.dropout(x, 0.5, seed=0)
        assert isinstance(y, jax.Array) and y.dtype == dtype and y.shape == (3, 4)


def test_masks_are_jax_bernoulli_and_outputs_are_flax_dropout():
    for seed in (0, 1, 2**31 - 1):
        for p in (0.1, 0.5, 0.9):
            for shape in ((7,), (3, 5), (2, 3, 4)):
                key = jax.random.key(seed)
                expected_keep = jax.random.bernoulli(key, 1 - p, shape)
                x = jax.random.normal(jax.random.key(seed + 1), shape)
                expected = jax.lax.select(expected_keep, x / (1 - p), jnp.zeros_like(x))
                y, keep = xdrop.dropout(x, p, seed=key, return_mask=True)
                assert (keep == expected_keep).all()
                assert (y == expected).all()


def test_gradient_is_the_scaled_mask_and_finite_at_p_one():
    x = jnp.array([1.0, -2.0, jnp.inf, 4.0] * 25)
    grad = jax.grad(lambda v: xdrop.dropout(v, 0.25, seed=3).sum())(x)
    _, keep = xdrop.dropout(x, 0.25, seed=3, return_mask=True)
    assert (grad == jnp.where(keep, np.float32(1) / np.float32(0.75), 0.0)).all()
    assert (jax.grad(lambda v: xdrop.dropout(v, 1.0, seed=0).sum())(x) == 0).all()


def test_jit_with_a_traced_seed_traces_once_and_matches_eager():
    traces = []

    @jax.jit
    def step(x, seed):
        traces.append(1)
        return xdrop.dropout(x, 0.3, seed=seed)

    x = jnp.arange(500.0)
    for seed in (1, 2, 3):
        assert (step(x, seed) == xdrop.dropout(x, 0.3, seed=seed)).all()
    assert len(traces) == 1


def test_mc_dropout_of_a_jitted_predict_traces_once_and_matches_numpy():
    """Its integer seed reaches the compiled predict as key words in an array (a 64-bit Python
    int is no argument jax.jit takes)."""
    weights = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    traces = []

    @jax.jit
    def predict(x, seed):
        traces.append(1)
        return xdrop.dropout(x, 0.5, seed=seed) @ weights

    x = np.random.default_rng(1).normal(size=(4, 8)).astype(np.float32)
    result = xdrop.mc_dropout(predict, jnp.asarray(x), samples=5)
    expected = xdrop.mc_dropout(lambda x, seed: predict.__wrapped__(x, seed), x, samples=5)
    np.testing.assert_allclose(np.asarray(result.mean), expected.mean, rtol=1e-6)
    assert len(traces) == 1 + 5  # the one trace, then NumPy's five eager calls


def test_a_traced_rate_with_a_concrete_x_closed_over_matches_eager():
    # x is a constant of the function JAX transforms; only p is traced (a rate schedule)
    x = jnp.arange(1.0, 41.0).reshape(5, 8)
    for mode in ("inverted", "classic"):
        eager, eager_keep = xdrop.dropout(x, 0.3, seed=2, mode=mode, return_mask=True)

        def drop(p, mode=mode):
            return xdrop.dropout(x, p, seed=2, mode=mode, return_mask=True)

        y, keep = jax.jit(drop)(0.3)
        assert (keep == eager_keep).all() and (y == eager).all()
    rows = jax.vmap(lambda p: xdrop.dropout(x[0], p, seed=2))(jnp.array([0.3, 0.3]))
    assert (rows == xdrop.dropout(x[0], 0.3, seed=2)).all()
    slope = jax.grad(lambda p: xdrop.dropout(x, p, seed=2).sum())(0.5)
    assert math.isfinite(float(slope))


def test_jit_with_fold_in_per_step_and_jax_keys():
    step = jax.jit(lambda x, n: xdrop.dropout(x, 0.5, seed=xdrop.fold_in(jax.random.key(4), n)))
    x = jnp.ones(64)
    for number in range(3):
        assert (step(x, number) == xdrop.dropout(x, 0.5, seed=xdrop.fold_in(4, number))).all()


def test_fold_in_on_traced_values_is_jax_fold_in():
    folded = jax.jit(xdrop.fold_in)(jnp.uint32(7), jnp.uint32(11))
    assert folded.dtype == jnp.uint32 and folded.shape == (2,)
    expected = jax.random.key_data(jax.random.fold_in(jax.random.key(7), 11))
    assert (folded == expected).all()
    assert (int(folded[0]) << 32 | int(folded[1])) == reference.fold_in(7, 11)


def test_vmap_over_seeds_gives_each_seed_its_mask():
    masks = jax.vmap(lambda s: xdrop.dropout_mask((16,), 0.5, seed=s))(jnp.arange(4))
    for seed in range(4):
        assert (masks[seed] == xdrop.dropout_mask((16,), 0.5, seed=seed, like=masks)).all()


def test_seed_none_inside_jit_is_refused():
    with pytest.raises(xdrop.TracingError, match="seed=None"):
        jax.jit(lambda x: xdrop.dropout(x, 0.5))(jnp.ones(3))
    with pytest.raises(xdrop.TracingError):
        jax.jit(lambda x: xdrop.dropout(x, 0.5, seed=xdrop.Generator(1)))(jnp.ones(3))


SHARDED = """
import jax, jax.numpy as jnp, numpy as np, xdrop
devices = np.array(jax.devices())
assert len(devices) == 4
sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(devices, ("d",)), jax.sharding.PartitionSpec("d"))
x = jax.device_put(jnp.arange(64.0), sharding)
for y in (xdrop.dropout(x, 0.5, seed=1), jax.jit(lambda v, s: xdrop.dropout(v, 0.5, seed=s))(x, 1)):
    assert y.sharding.is_equivalent_to(x.sharding, x.ndim), y.sharding
    assert (np.asarray(y) == np.asarray(xdrop.dropout(np.arange(64.0, dtype=np.float32), 0.5, seed=1))).all()
print("ok")
"""


def test_a_sharded_array_keeps_its_sharding_and_its_mask():
    import os
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    result = subprocess.run(
        [sys.executable, "-c", SHARDED], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_native_mode_is_statistically_jax_bernoulli(p):
    count = 100_000
    values = np.asarray(xdrop.dropout(jnp.ones(count), p, rng="native", seed=1))
    q = 1 - p
    assert set(np.unique(values)) <= {0.0, np.float32(1) / np.float32(q)}
    assert abs(np.count_nonzero(values) - count * q) <= 4 * math.sqrt(count * p * q)


@pytest.mark.parametrize("impl", ["rbg", "unsafe_rbg"])
def test_keys_of_other_generators_than_threefry_are_refused(impl):
    key = jax.random.key(0, impl=impl)
    with pytest.raises(TypeError, match=r"a JAX key of the Threefry implementation") as raised:
        xdrop.dropout(jnp.ones(4), 0.5, seed=key)
    assert f"dtype {key.dtype}" in str(raised.value)
    with pytest.raises(TypeError, match="Threefry"):
        xdrop.dropout_mask(4, 0.5, seed=key)
    assert xdrop.dropout_mask(4, 0.5, seed=jax.random.key(0)).shape == (4,)  # Threefry is fine


X64_CHECK = """
import jax, jax.numpy as jnp, numpy as np, xdrop
same = []
for p in (0.5, 0.1, 0.3):
    ours = np.asarray(xdrop.dropout_mask((4096,), p, seed=7))
    key = jax.random.key(7)
    python_float = np.asarray(jax.random.bernoulli(key, 1 - p, (4096,)))
    float32 = np.asarray(jax.random.bernoulli(key, jnp.float32(1 - p), (4096,)))
    native = np.asarray(xdrop.dropout(jnp.ones(4096), p, rng="native", seed=7)) != 0
    same.append((bool((ours == python_float).all()), bool((ours == float32).all()),
                 bool((ours == native).all())))  # fmt: skip
print(jax.config.jax_enable_x64, *(all(column) for column in zip(*same)))
"""


@pytest.mark.parametrize(("x64", "python_float_equal"), [("0", True), ("1", False)])
def test_the_jax_equality_holds_exactly_as_the_spec_states(x64, python_float_equal):
    """docs/spec.md: equal to jax.random.bernoulli(key, 1 - p) with jax_enable_x64 off; with it
    on, only for a float32 probability (a Python float then draws float64 uniforms). rng="native"
    draws the float32 comparison either way: mask stream v1."""
    import os
    import subprocess
    import sys

    environment = {**os.environ, "JAX_ENABLE_X64": x64}
    result = subprocess.run([sys.executable, "-c", X64_CHECK], capture_output=True, text=True,
                            env=environment)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(x64 == "1"), str(python_float_equal), "True", "True"]


def test_the_edge_rates_are_checked_on_jax_without_x64():
    from xdrop.conformance import golden_cases, run_backend

    narrow = [case for case in golden_cases() if case["group"] == "edge_p_narrow"]
    for mode in ("eager", "compiled"):
        report = run_backend("jax", narrow, mode=mode)
        assert [result.status for result in report.results] == ["passed"] * len(narrow), mode


def test_a_traced_label_out_of_range_makes_the_rdrop_loss_nan():
    # a traced label cannot be checked: it picks NaN, never another class's log-probability
    z1 = jnp.array([[0.0, 1.0, 2.0], [1.0, 0.0, 0.0]])
    loss = jax.jit(lambda labels: xdrop.rdrop_loss(z1, z1 * 0.5, labels, ignore_index=-100))
    assert float(loss(jnp.array([0, 2]))) == pytest.approx(
        float(xdrop.rdrop_loss(z1, z1 * 0.5, np.array([0, 2]))), rel=1e-6
    )
    for wrong in (-1, 3, 5):
        assert math.isnan(float(loss(jnp.array([0, wrong]))))
    ignored = float(loss(jnp.array([0, -100])))
    assert ignored == pytest.approx(float(xdrop.rdrop_loss(z1[:1], z1[:1] * 0.5, [0])), rel=1e-6)
