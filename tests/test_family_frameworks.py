"""The family's layers for PyTorch and Flax NNX (Keras: tests/layers/keras_checks.py), Monte Carlo
sampling that leaves BatchNorm alone, DropBlock against torchvision's algorithm, and shapes known
only at run time. Each test uses its framework's own arrays."""

from __future__ import annotations

import numpy as np
import pytest

import xdrop

pytestmark = pytest.mark.backend_independent  # each framework's own arrays


# -- PyTorch -------------------------------------------------------------------------------------
def torch_layers():  # type: ignore[no-untyped-def]
    from xdrop.layers import torch as layers

    return [
        (layers.AlphaDropout(0.3, seed=5), lambda x, s: xdrop.alpha_dropout(x, 0.3, seed=s)),
        (layers.GaussianDropout(0.3, seed=5), lambda x, s: xdrop.gaussian_dropout(x, 0.3, seed=s)),
        (layers.DropPath(0.3, seed=5), lambda x, s: xdrop.drop_path(x, 0.3, seed=s)),
        (layers.DropBlock2D(0.3, 3, seed=5), lambda x, s: xdrop.drop_block(x, 0.3, 3, seed=s)),
    ]


def test_torch_layers_follow_the_step_contract():
    torch = pytest.importorskip("torch")
    x = torch.randn(4, 3, 8, 8)
    for layer, function in torch_layers():
        for step in range(3):
            expected = function(x, xdrop.fold_in(5, step))
            torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
        layer.eval()
        assert layer(x) is x and layer.step.item() == 3
        restored = type(layer)(0.3, seed=0) if not hasattr(layer, "block_size") else None
        if restored is not None:
            restored.load_state_dict(layer.state_dict())
            restored.train()
            torch.testing.assert_close(restored(x), function(x, xdrop.fold_in(5, 3)))


def test_torch_gradients_flow_through_the_family():
    torch = pytest.importorskip("torch")
    for layer, _ in torch_layers():
        x = torch.randn(2, 3, 6, 6, requires_grad=True)
        layer(x).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()


def test_torch_mc_sampling_leaves_batchnorm_in_eval():
    torch = pytest.importorskip("torch")
    from xdrop.layers.torch import Dropout, DropPath, set_mc_sampling

    model = torch.nn.Sequential(
        torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), Dropout(0.5, seed=1), DropPath(0.2, seed=2)
    ).eval()
    running = model[1].running_mean.clone()
    x = torch.randn(5, 6)
    assert set_mc_sampling(model) == 2
    assert not model[1].training
    first, second = model(x), model(x)
    assert not torch.equal(first, second)
    torch.testing.assert_close(model[1].running_mean, running, rtol=0, atol=0)
    result = xdrop.mc_dropout(lambda x, seed: model(x), x, samples=8)
    assert result.mean.shape == (5, 8) and result.mutual_information.shape == (5,)
    set_mc_sampling(model, False)
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    with pytest.raises(xdrop.ArgumentTypeError, match="enabled"):
        set_mc_sampling(model, "on")  # type: ignore[arg-type]


def test_mc_dropout_is_differentiable_in_torch():
    torch = pytest.importorskip("torch")
    weights = torch.randn(4, 3, requires_grad=True)
    x = torch.randn(6, 4)
    result = xdrop.mc_dropout(lambda x, seed: xdrop.dropout(x, 0.5, seed=seed) @ weights, x)
    (result.predictive_entropy.sum() + result.mutual_information.sum()).backward()
    assert weights.grad is not None and torch.isfinite(weights.grad).all()


def torchvision_drop_block(x, corners, block_size):  # type: ignore[no-untyped-def]
    """torchvision.ops.drop_block2d (0.19) given its noise (the corners), transcribed: pad the
    corners by block_size // 2, max-pool with padding block_size // 2, normalise."""
    import torch

    functional = torch.nn.functional
    noise = functional.pad(corners, [block_size // 2] * 4, value=0)
    noise = functional.max_pool2d(
        noise, (block_size, block_size), stride=1, padding=block_size // 2
    )
    noise = 1 - noise
    normalize = noise.numel() / (1e-6 + noise.sum())
    return x * noise * normalize


@pytest.mark.parametrize(("shape", "block"), [((2, 3, 11, 11), 3), ((2, 2, 9, 13), 5)])
def test_drop_block_equals_torchvision_for_odd_blocks_given_the_same_corners(shape, block):
    torch = pytest.importorskip("torch")
    x = torch.randn(shape)
    height, width = shape[2:]
    gamma = 0.2 * height * width / (block**2 * (height - block + 1) * (width - block + 1))
    corners_shape = (*shape[:2], height - block + 1, width - block + 1)
    corners = (~xdrop.dropout_mask(corners_shape, gamma, seed=4, like=x)).float()
    expected = torchvision_drop_block(x, corners, block)
    torch.testing.assert_close(xdrop.drop_block(x, 0.2, block, seed=4), expected, rtol=2e-6, atol=0)


# -- Flax NNX ------------------------------------------------------------------------------------
def test_flax_layers_follow_the_step_contract_under_nnx_jit():
    pytest.importorskip("flax")
    import jax.numpy as jnp
    from flax import nnx

    from xdrop.layers import flax as layers

    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 3)), jnp.float32)
    cases = [
        (layers.AlphaDropout(0.3, seed=5), lambda x, s: xdrop.alpha_dropout(x, 0.3, seed=s)),
        (layers.GaussianDropout(0.3, seed=5), lambda x, s: xdrop.gaussian_dropout(x, 0.3, seed=s)),
        (layers.DropPath(0.3, seed=5), lambda x, s: xdrop.drop_path(x, 0.3, seed=s)),
        (
            layers.DropBlock2D(0.3, 3, seed=5),
            lambda x, s: xdrop.drop_block(x, 0.3, 3, seed=s, data_format="channels_last"),
        ),
    ]
    call = nnx.jit(lambda layer, x: layer(x))
    for layer, function in cases:
        for step in range(2):
            expected = np.asarray(function(x, xdrop.fold_in(5, step)))
            np.testing.assert_allclose(np.asarray(call(layer, x)), expected, rtol=1e-6, atol=1e-6)
        assert layer(x, deterministic=True) is x and layer.step_value == 2


def test_flax_mc_sampling_leaves_batchnorm_on_its_running_averages():
    pytest.importorskip("flax")
    import jax.numpy as jnp
    from flax import nnx

    from xdrop.layers.flax import Dropout, set_mc_sampling

    model = nnx.Sequential(
        nnx.Linear(6, 8, rngs=nnx.Rngs(0)), nnx.BatchNorm(8, rngs=nnx.Rngs(0)), Dropout(0.5, seed=1)
    )
    model.eval()
    assert set_mc_sampling(model) == 1
    x = jnp.ones((5, 6))
    mean = np.asarray(model.layers[1].mean[...])
    assert not np.array_equal(np.asarray(model(x)), np.asarray(model(x)))
    np.testing.assert_array_equal(np.asarray(model.layers[1].mean[...]), mean)
    set_mc_sampling(model, False)
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(model(x)))


# -- shapes known only at run time ----------------------------------------------------------------
def test_tensorflow_run_time_batch_and_channels():
    tf = pytest.importorskip("tensorflow")
    signature = [tf.TensorSpec((None, None, 8, 8), tf.float32), tf.TensorSpec((), tf.int64)]

    @tf.function(input_signature=signature)
    def family(x, seed):  # type: ignore[no-untyped-def]
        return (
            xdrop.alpha_dropout(x, 0.2, seed=seed),
            xdrop.gaussian_dropout(x, 0.2, seed=seed),
            xdrop.drop_path(x, 0.2, seed=seed),
            xdrop.drop_block(x, 0.2, 3, seed=seed),
        )

    x = tf.random.normal((3, 2, 8, 8))
    staged = family(x, tf.constant(7, tf.int64))
    eager = (
        xdrop.alpha_dropout(x, 0.2, seed=7),
        xdrop.gaussian_dropout(x, 0.2, seed=7),
        xdrop.drop_path(x, 0.2, seed=7),
        xdrop.drop_block(x, 0.2, 3, seed=7),
    )
    for got, want in zip(staged, eager, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-6)


def test_jax_jit_with_a_traced_rate_and_a_jax_key():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 6, 6)), jnp.float32)
    run = jax.jit(lambda x, key, p: xdrop.drop_block(x, p, 3, seed=key))
    np.testing.assert_array_equal(
        np.asarray(run(x, jax.random.key(3), jnp.float32(0.25))),
        np.asarray(xdrop.drop_block(x, 0.25, 3, seed=3)),
    )
    grad = jax.grad(lambda x: xdrop.gaussian_dropout(x, 0.3, seed=1).sum())(x)
    assert bool(jnp.isfinite(grad).all())
