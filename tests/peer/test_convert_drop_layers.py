"""convert replaces timm's and torchvision's drop layers (where those libraries are imported) by
xdrop's layers with the same arguments, each seeded for its qualified name."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
timm_layers = pytest.importorskip("timm.layers")
ops = pytest.importorskip("torchvision.ops")

import xdrop  # noqa: E402
from xdrop.layers import common  # noqa: E402
from xdrop.layers import torch as layers  # noqa: E402
from xdrop.layers.torch import convert  # noqa: E402

pytestmark = pytest.mark.backend_independent


def test_timm_and_torchvision_drop_layers_become_xdrop_layers_with_their_arguments():
    model = torch.nn.Sequential(
        timm_layers.DropPath(0.2, scale_by_keep=False),
        timm_layers.DropBlock2d(0.1, 3, gamma_scale=0.5, couple_channels=False),
        ops.StochasticDepth(0.3, "batch"),
        ops.DropBlock2d(0.2, 5, eps=1e-5),
        ops.DropBlock3d(0.1, 3),
    )
    convert(model, seed=8)
    path, timm_block, depth, block2d, block3d = model
    assert type(path) is layers.DropPath
    assert (path.p, path.scale_by_keep, path.path_mode) == (0.2, False, "row")
    assert type(timm_block) is layers.DropBlock2d
    assert (timm_block.p, timm_block.block_size, timm_block.gamma_scale) == (0.1, 3, 0.5)
    assert (timm_block.couple_channels, timm_block.eps) == (False, 1e-7)
    assert type(depth) is layers.StochasticDepth
    assert (depth.p, depth.path_mode) == (0.3, "batch")
    assert type(block2d) is layers.DropBlock2d
    assert (block2d.p, block2d.block_size, block2d.eps) == (0.2, 5, 1e-5)
    assert not block2d.couple_channels
    assert type(block3d) is layers.DropBlock3d
    for index, layer in enumerate(model):
        assert int(layer.seed) % 2**64 == common.site_seed(8, str(index))


def test_a_converted_timm_drop_path_draws_xdrop_drop_path_of_its_site():
    model = convert(torch.nn.Sequential(torch.nn.Identity(), timm_layers.DropPath(0.5)), seed=3)
    x = torch.ones(16, 4)
    expected = xdrop.drop_path(x, 0.5, seed=xdrop.fold_in(common.site_seed(3, "1"), 0))
    state = torch.get_rng_state()
    assert torch.equal(model(x), expected)
    assert torch.equal(torch.get_rng_state(), state)
