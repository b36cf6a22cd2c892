"""xdrop's torch layers with timm's and torchvision's arguments: ``DropPath`` (timm's order),
``StochasticDepth`` (torchvision's), ``DropBlock2d`` and ``DropBlock3d`` (both libraries'
spellings and defaults), each still the functional form on the step's seed."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")

import xdrop  # noqa: E402
from xdrop.layers.torch import (  # noqa: E402
    DropBlock2D,
    DropBlock2d,
    DropBlock3d,
    DropPath,
    StochasticDepth,
)

pytestmark = pytest.mark.backend_independent


# -- DropPath and StochasticDepth ------------------------------------------------------------------
def test_drop_path_takes_timms_order_and_torchvisions_keywords():
    assert DropPath(0.2, False).scale_by_keep is False  # timm: DropPath(drop_prob, scale_by_keep)
    layer = DropPath(drop_prob=0.3, scale_by_keep=True, seed=1)
    assert (layer.p, layer.drop_prob) == (0.3, 0.3)
    assert DropPath(p=0.4, mode="batch").path_mode == "batch"
    assert DropPath().p == 0.0
    with pytest.raises(xdrop.ArgumentTypeError, match="scale_by_keep"):
        DropPath(0.2, "row")  # torchvision's order belongs to StochasticDepth
    with pytest.raises(xdrop.ArgumentValueError, match="drop_prob"):
        DropPath(0.2, drop_prob=0.3)


def test_drop_prob_is_p_and_checked_when_set():
    layer = DropPath(drop_prob=0.1, seed=0)
    layer.drop_prob = 0.25  # timm's schedules set it
    assert layer.p == 0.25
    with pytest.raises(xdrop.ArgumentValueError, match="drop_prob must be"):
        layer.drop_prob = 1.5


@pytest.mark.parametrize("mode", ["row", "batch"])
def test_stochastic_depth_is_torchvisions_order_on_drop_paths_stream(mode):
    layer = StochasticDepth(0.5, mode, seed=3)
    x = torch.ones(6, 3, 4)
    for t in range(3):
        expected = xdrop.drop_path(x, 0.5, mode=mode, seed=xdrop.fold_in(3, t))
        assert torch.equal(layer(x), expected)
    assert torch.equal(StochasticDepth(1.0, mode)(x), torch.zeros_like(x))
    with pytest.raises(TypeError):
        StochasticDepth(0.5)  # type: ignore[call-arg]  # both required, as in torchvision


@pytest.mark.parametrize(
    ("arguments", "argument"), [((1.5, "row"), "p"), ((-0.1, "row"), "p"), ((0.5, "rows"), "mode")]
)
def test_bad_p_and_mode_are_value_errors_as_in_torchvision(arguments, argument):
    with pytest.raises(ValueError, match=f"{argument} must be") as info:
        StochasticDepth(*arguments)
    assert isinstance(info.value, xdrop.XdropError)


# -- DropBlock2d and DropBlock3d -------------------------------------------------------------------
def test_the_rates_name_picks_the_librarys_defaults():
    torchvision = DropBlock2d(0.1, 5)
    assert (torchvision.couple_channels, torchvision.eps) == (False, 1e-6)
    timm = DropBlock2d(drop_prob=0.1, block_size=5)
    assert (timm.couple_channels, timm.eps, timm.drop_prob) == (True, 1e-7, 0.1)
    assert DropBlock2d().p == 0.1 and DropBlock2d().block_size == 7  # timm's defaults
    assert DropBlock2d(drop_prob=0.1, couple_channels=False).couple_channels is False
    # torchvision's positional order: (p, block_size, inplace, eps)
    layer = DropBlock3d(0.2, 3, True, 0.0)
    assert (layer.p, layer.block_size, layer.inplace, layer.eps) == (0.2, 3, True, 0.0)


@pytest.mark.parametrize(
    ("layer", "shape", "options"),
    [
        (lambda: DropBlock2d(0.3, 3, seed=5), (2, 3, 9, 8), {"eps": 1e-6}),
        (
            lambda: DropBlock2d(drop_prob=0.3, block_size=3, gamma_scale=0.5, seed=5),
            (2, 3, 9, 8),
            {"couple_channels": True, "eps": 1e-7, "gamma_scale": 0.5},
        ),
        (
            lambda: DropBlock2d(drop_prob=0.3, block_size=3, with_noise=True, seed=5),
            (2, 3, 9, 8),
            {"couple_channels": True, "eps": 1e-7, "with_noise": True},
        ),
        (lambda: DropBlock3d(0.3, 3, seed=5), (2, 3, 5, 6, 7), {"eps": 1e-6}),
        (lambda: DropBlock2D(0.3, 3, seed=5), (2, 3, 9, 8), {}),
    ],
)
def test_each_training_call_is_drop_block_on_the_steps_seed(layer, shape, options):
    module = layer()
    x = torch.randn(shape)
    for t in range(3):
        expected = xdrop.drop_block(x, 0.3, 3, seed=xdrop.fold_in(5, t), **options)
        assert torch.equal(module(x), expected)
    module.eval()
    assert module(x) is x


def test_inplace_writes_the_output_into_the_input_as_torch_does():
    source = torch.randn(2, 3, 8, 8, requires_grad=True)
    expected_layer = DropBlock2d(0.3, 3, seed=2)
    x = source * 1  # not a leaf: in place is allowed and tracked
    y = DropBlock2d(0.3, 3, inplace=True, seed=2)(x)
    assert y is x
    expected = expected_layer(source * 1)
    assert torch.equal(y, expected)
    y.sum().backward()
    grad = source.grad.clone()
    source.grad = None
    expected_layer.step.zero_()
    expected_layer(source * 1).sum().backward()
    assert torch.equal(grad, source.grad)
    with pytest.raises(RuntimeError, match="leaf Variable"):  # as torch.nn.Dropout(inplace=True)
        DropBlock2d(0.3, 3, inplace=True)(torch.ones(1, 1, 4, 4, requires_grad=True))


def test_timms_removed_keywords_pass_silently_and_unknown_ones_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert DropBlock2d(drop_prob=0.1, batchwise=True, fast=False).drop_prob == 0.1
    with pytest.warns(xdrop.XdropWarning, match="unexpected keyword argument 'sed'"):
        DropBlock2d(drop_prob=0.1, sed=3)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: DropBlock2d(1.5, 3), xdrop.ArgumentValueError, "p must be"),
        (lambda: DropBlock2d(drop_prob=-1), xdrop.ArgumentValueError, "p must be"),
        (lambda: DropBlock2d(0.1, 0), xdrop.ArgumentValueError, "block_size must be"),
        (lambda: DropBlock2d(0.1, 3, "yes"), xdrop.ArgumentTypeError, "inplace must be"),
        (lambda: DropBlock2d(0.1, 3, eps=-1.0), xdrop.ArgumentValueError, "eps must be"),
        (lambda: DropBlock2d(0.1, gamma_scale=0), xdrop.ArgumentValueError, "gamma_scale must be"),
        (lambda: DropBlock2d(0.1, couple_channels=1), xdrop.ArgumentTypeError, "couple_channels"),
        (lambda: DropBlock2d(0.1)(torch.ones(2, 3, 4, 4, 4)), xdrop.ArgumentValueError, r"4-d tensor \(N, C, H, W\)"),
        (lambda: DropBlock3d(0.1)(torch.ones(2, 3, 4, 4)), xdrop.ArgumentValueError, r"5-d tensor \(N, C, D, H, W\)"),
    ],
)  # fmt: skip
def test_bad_arguments_raise_errors_naming_them(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_a_checkpoint_resumes_the_stream():
    model = torch.nn.Sequential(DropBlock3d(0.3, 2, seed=8), DropPath(0.2, seed=9))
    x = torch.ones(2, 2, 4, 4, 4)
    for _ in range(2):
        model(x)
    restored = torch.nn.Sequential(DropBlock3d(0.3, 2), DropPath(0.2))
    restored.load_state_dict(model.state_dict())
    assert torch.equal(restored(x), model(x))
