"""The generic Array API backend, proven on array-api-strict, which rejects anything non-standard."""

from __future__ import annotations

import numpy as np
import pytest

import xdrop
from xdrop import conformance, reference

strict = pytest.importorskip("array_api_strict")


def test_strict_arrays_go_to_an_array_api_backend_and_come_back_strict():
    x = strict.ones((4, 5), dtype=strict.float32)
    y, keep = xdrop.dropout(x, 0.5, seed=7, return_mask=True)
    assert type(y) is type(x) and y.dtype == strict.float32
    assert np.asarray(keep).ravel().tolist() == reference.keep_mask(7, 0.5, 20)


def test_numpy_and_jax_arrays_still_go_to_their_own_backends():
    assert xdrop.registry.owner_of_type(np.ndarray) is None  # the default backend
    jax = pytest.importorskip("jax")
    assert xdrop.registry.owner_of_type(type(jax.numpy.ones(2))) == "jax"


def test_every_golden_case_passes_on_the_generic_backend():
    conformance.assert_conforms("array_api")


def test_every_golden_case_passes_on_array_api_strict():
    pytest.importorskip("xdrop_testplugin", reason="install tests/plugins/xdrop-testplugin")
    report = conformance.assert_conforms("strict")
    passed = {result.group for result in report.results if result.status == "passed"}
    assert {"inverted", "classic", "mask", "offset", "noise_shape", "fold_in"} <= passed


def test_seed_arrays_of_the_namespace():
    x = strict.ones(16)
    seed = strict.asarray(-1, dtype=strict.int64)  # read as 2**64 - 1
    assert (np.asarray(xdrop.dropout(x, 0.5, seed=seed)) == np.asarray(
        xdrop.dropout(x, 0.5, seed=2**64 - 1))).all()  # fmt: skip


def test_arrays_on_another_device_get_masks_on_that_device():
    device = strict.Device("device1")
    x = strict.ones((4, 5), dtype=strict.float32, device=device)
    y, keep = xdrop.dropout(x, 0.5, seed=7, return_mask=True)
    assert y.device == device and keep.device == device
    cpu = strict.Device("CPU_DEVICE")
    here = xdrop.dropout_mask((4, 5), 0.5, seed=7, like=strict.ones(1))
    assert bool(strict.all(keep.to_device(cpu) == here))
    seed = strict.asarray(7, dtype=strict.int64, device=device)
    assert xdrop.dropout(x, 0.5, seed=seed).device == device
    mask = xdrop.dropout_mask((4, 5), 0.5, seed=7, like=x)
    assert mask.device == device


def test_r_dropout_runs_on_the_standard_alone():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(2, 6, 5)), rng.normal(size=(2, 6, 5))
    labels, pad = rng.integers(0, 5, (2, 6)), rng.random((2, 6)) < 0.3
    on_strict = [strict.asarray(value) for value in (z1, z2, labels, pad)]
    with xdrop.use_backend("numpy"):  # the expectations in float64, whatever XDROP_BACKEND
        for reduction in ("sum", "mean", "none"):
            expected = xdrop.rdrop_loss(z1, z2, labels, pad_mask=pad, alpha=0.5, reduction=reduction,
                                        label_smoothing=0.1)  # fmt: skip
            got = xdrop.rdrop_loss(*on_strict[:3], pad_mask=on_strict[3], alpha=0.5,
                                   reduction=reduction, label_smoothing=0.1)  # fmt: skip
            assert type(got) is type(on_strict[0])
            np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-12, atol=1e-12)
            kl = xdrop.rdrop_kl(
                on_strict[0], on_strict[1], pad_mask=on_strict[3], reduction=reduction
            )
            np.testing.assert_allclose(np.asarray(kl), xdrop.rdrop_kl(z1, z2, pad_mask=pad,
                                       reduction=reduction), rtol=1e-12, atol=1e-12)  # fmt: skip
    out1, out2 = xdrop.rdrop_forward(lambda x: x * 2.0, strict.ones((3, 2)))
    assert out1.shape == out2.shape == (3, 2)


@pytest.mark.parametrize("label", [-1, 5, -100])
def test_r_dropout_refuses_labels_outside_the_classes_as_on_numpy(label):
    # the labels are in host memory (DLPack says so), so they are read and checked
    z = strict.zeros((2, 5))
    labels = strict.asarray([0, label])
    with pytest.raises(
        xdrop.ArgumentValueError, match=rf"in \[0, 5\), got {label} at position \(1,\)"
    ):
        xdrop.rdrop_loss(z, z, labels)


def test_a_rate_of_another_namespace_is_refused_with_what_to_do():
    """The generic backend runs any namespace, but a rate must be of x's own (a JAX rate on a
    strict array cannot be computed with while traced): refused eagerly and under jax.jit alike."""
    jax = pytest.importorskip("jax")
    x = strict.ones(4)
    message = r"p must be a real number in \[0, 1\] or a 0-d float array of {}'s framework"
    calls = [  # each names the array whose framework the rate must be of
        ("x", lambda: xdrop.dropout(x, jax.numpy.asarray(0.5), seed=1)),
        ("x", lambda: jax.jit(lambda p: xdrop.dropout(x, p, seed=1))(jax.numpy.asarray(0.5))),
        ("like", lambda: xdrop.dropout_mask(4, jax.numpy.asarray(0.5), seed=1, like=x)),
        ("x", lambda: xdrop.alpha_dropout(x, jax.numpy.asarray(0.5), seed=1)),
        ("x", lambda: xdrop.drop_path(strict.ones((4, 2)), jax.numpy.asarray(0.5), seed=1)),
    ]
    for name, call in calls:
        with pytest.raises(xdrop.ArgumentTypeError, match=message.format(name)):
            call()
    same = xdrop.dropout(x, strict.asarray(0.5), seed=1)  # x's own namespace, and NumPy, are fine
    assert (np.asarray(same) == xdrop.dropout(x, np.asarray(0.5), seed=1)).all()


@pytest.mark.parametrize("backend", ["array_api", "strict"])
def test_the_family_runs_on_array_api_strict_as_on_numpy(monkeypatch, backend):
    """On the generic backend itself (whose own namespace is NumPy's) and on the plugin that
    gives it array-api-strict's namespace."""
    if backend == "strict":
        pytest.importorskip("xdrop_testplugin", reason="install tests/plugins/xdrop-testplugin")
    values = np.random.default_rng(3).normal(size=(2, 3, 8, 8)).astype(np.float32)
    x = strict.asarray(values)
    monkeypatch.setitem(xdrop.registry._owner_of_type, type(x), backend)
    calls = {
        "alpha": lambda x: xdrop.alpha_dropout(x, 0.3, seed=5),
        "gaussian": lambda x: xdrop.gaussian_dropout(x, 0.3, seed=5),
        "path": lambda x: xdrop.drop_path(x, 0.3, seed=5),
        "block": lambda x: xdrop.drop_block(x, 0.3, 3, seed=5),
    }
    for name, call in calls.items():
        got = call(x)
        assert type(got) is type(x), name
        with xdrop.use_backend("numpy"):
            expected = call(values)
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6, atol=1e-6, err_msg=name)


def test_a_seed_array_of_another_namespace_is_refused_with_what_to_do():
    """The generic backend claims every namespace, but a seed array must be of x's own (as a
    rate must): refused by name in training and evaluation, never a raw framework error."""
    jax = pytest.importorskip("jax")
    x = strict.ones(4)
    seeds = [jax.numpy.asarray(3), jax.numpy.asarray([0, 3], jax.numpy.uint32), jax.random.key(3)]
    calls = [  # each names the array whose framework the seed must be of
        ("x", lambda seed: xdrop.dropout(x, 0.5, seed=seed)),
        ("x", lambda seed: xdrop.dropout(x, 0.5, seed=seed, training=False)),
        ("like", lambda seed: xdrop.dropout_mask(4, 0.5, seed=seed, like=x)),
        ("x", lambda seed: xdrop.alpha_dropout(x, 0.5, seed=seed)),
        ("x", lambda seed: xdrop.gaussian_dropout(x, 0.5, seed=seed, training=False)),
    ]
    for seed in seeds:
        for name, call in calls:
            with pytest.raises(xdrop.ArgumentTypeError, match=f"seed must be .* of {name}'s fr"):
                call(seed)
    own = strict.asarray(3, dtype=strict.int64)  # x's own namespace, and NumPy, are fine
    assert (np.asarray(xdrop.dropout(x, 0.5, seed=own)) == np.asarray(
        xdrop.dropout(x, 0.5, seed=np.asarray(3)))).all()  # fmt: skip


def test_native_family_calls_say_the_generic_backend_has_no_native_generator():
    x = strict.ones((2, 3, 4, 4))
    message = 'does not implement xdrop.protocol.NativeGenerator.*use rng="portable"'
    for call in (
        lambda: xdrop.gaussian_dropout(x, 0.5, seed=1, rng="native"),
        lambda: xdrop.alpha_dropout(x, 0.5, seed=1, rng="native"),
        lambda: xdrop.drop_path(x, 0.5, seed=1, rng="native"),
        lambda: xdrop.drop_block(x, 0.5, 3, seed=1, rng="native"),
    ):
        with pytest.raises(xdrop.RoleNotImplementedError, match=message):
            call()


def test_a_jax_key_beside_a_strict_array_is_refused_by_name():
    """A JAX key declares ``__array_namespace__`` but cannot give one: the generic backend must
    not take it for an array of numbers (before: NotImplementedError, "Cannot call abstract
    method __array_namespace__")."""
    jax = pytest.importorskip("jax")
    x, key = strict.ones(4), jax.random.key(0)
    for training in (True, False):
        with pytest.raises(xdrop.ArgumentTypeError, match=r"p must be .* of x's framework"):
            xdrop.dropout(x, key, seed=0, training=training)
        with pytest.raises(xdrop.ArgumentTypeError, match=r"seed must be .* of x's framework"):
            xdrop.dropout(x, 0.5, seed=key, training=training)
        with pytest.raises(xdrop.ArgumentTypeError, match=r"start must be .* of x's framework"):
            xdrop.dropout(x, 0.5, seed=0, offset=xdrop.Block((8,), (key,)), training=training)
