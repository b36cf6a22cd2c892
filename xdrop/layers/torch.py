"""PyTorch layers: ``Dropout``, the channel forms ``Dropout1d``, ``Dropout2d``, ``Dropout3d``, and
the family ``AlphaDropout``, ``GaussianDropout``, ``DropPath``, ``DropBlock2D``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

import xdrop
from xdrop.errors import Shown, bad_value
from xdrop.layers import common
from xdrop.validation import check_flag, check_mode

__all__ = [
    "AlphaDropout",
    "DropBlock2D",
    "DropPath",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "GaussianDropout",
    "set_mc_sampling",
]


class Dropout(common.DropoutDraws, torch.nn.Module):
    """``torch.nn.Dropout`` with a seeded, portable mask stream that lives in ``state_dict()``.

    On its ``t``-th call in training mode (``t = 0, 1, ...``) the module returns exactly::

        xdrop.dropout(x, p, seed=xdrop.fold_in(seed, t), mode=mode,
                      noise_shape=noise_shape)

    and then advances ``t``; in eval mode it returns ``xdrop.dropout(x, p, training=False,
    mode=mode)`` (``x`` itself for ``mode="inverted"``) and leaves ``t`` alone. The seed and ``t``
    are int64 buffers (``seed`` holds the seed's two's complement), so ``state_dict()`` /
    ``load_state_dict`` save and restore the stream, and ``.to(device)`` moves it. ``t`` is
    advanced in place, inside the graph, so ``torch.compile(model, fullgraph=True)`` compiles once.

    Args:
        p: the probability of zeroing an element, in ``[0, 1]``.
        seed: an integer in ``[0, 2**64)``; ``None`` (default) draws one now from xdrop's global
            generator (reproducible after ``xdrop.manual_seed``); an :class:`xdrop.Generator`
            gives its next seed.
        mode: ``"inverted"`` (scale kept elements by ``1 / (1 - p)`` in training) or
            ``"classic"`` (scale by ``1 - p`` in evaluation).
        noise_shape: the shape the mask is drawn at, broadcast to the input (entries 1, None or
            the input's size; see :func:`xdrop.dropout`). None: one decision per element.

    Example:
        >>> import torch, xdrop
        >>> from xdrop.layers.torch import Dropout
        >>> layer = Dropout(0.5, seed=0)
        >>> y0, y1 = layer(torch.ones(8)), layer(torch.ones(8))
        >>> first = xdrop.dropout(torch.ones(8), 0.5, seed=xdrop.fold_in(0, 0))
        >>> bool((y0 == first).all())
        True
        >>> layer.step.item()
        2
    """

    seed: torch.Tensor
    step: torch.Tensor

    def __init__(
        self,
        p: float = 0.5,
        *,
        seed: int | xdrop.Generator | None = None,
        mode: str = "inverted",
        noise_shape: Sequence[int | None] | None = None,
    ) -> None:
        super().__init__()
        self.p = self._check_rate("p", p)
        self.mode = check_mode(mode)
        self.noise_shape = common.check_noise_shape_entries(noise_shape)
        start = common.initial_seed(seed)
        self.register_buffer("seed", torch.tensor(common.signed(start, 64), dtype=torch.int64))
        self.register_buffer("step", torch.tensor(0, dtype=torch.int64))

    mc_sampling = False
    """Sample in eval mode too (Monte Carlo dropout); :func:`set_mc_sampling` sets it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training or self.mc_sampling):
            return self._evaluate(x, self.p)  # type: ignore[no-any-return]
        seed = xdrop.fold_in(self.seed, self.step)
        y = self._draw(x, self.p, seed, self._noise_shape(x))
        self.step.add_(1)
        return y  # type: ignore[no-any-return]

    def _noise_shape(self, x: torch.Tensor) -> Sequence[int | None] | None:
        return self.noise_shape

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode!r}, seed={int(self.seed) % 2**64}"


class _ChannelDropout(Dropout):
    """Zero whole channels: one decision per ``(sample, channel)``, shared over the last
    ``spatial_dims`` axes of inputs ``(N, C, *spatial)`` or ``(C, *spatial)``."""

    spatial_dims = 0

    def __init__(
        self,
        p: float = 0.5,
        *,
        seed: int | xdrop.Generator | None = None,
        mode: str = "inverted",
    ) -> None:
        super().__init__(p, seed=seed, mode=mode)

    def _noise_shape(self, x: torch.Tensor) -> Sequence[int | None] | None:
        ndim, spatial = x.dim(), self.spatial_dims
        if ndim not in (spatial + 1, spatial + 2):
            raise bad_value(
                "x",
                Shown(f"<tensor of shape {tuple(x.shape)}>"),
                f"a tensor of {spatial + 1} (C, *spatial) or {spatial + 2} (N, C, *spatial) "
                f"dimensions for {type(self).__name__}",
            )
        return common.spatial_noise_shape(ndim, range(-spatial, 0))


class Dropout1d(_ChannelDropout):
    """:class:`Dropout` of whole channels of ``(N, C, L)`` or ``(C, L)`` inputs, as
    ``torch.nn.Dropout1d``: the mask is drawn at ``(N, C, 1)``. Same arguments, without
    ``noise_shape``.

    Example:
        >>> y = Dropout1d(0.5, seed=0)(torch.ones(2, 3, 4))  # each channel all 0 or 2
    """

    spatial_dims = 1


class Dropout2d(_ChannelDropout):
    """:class:`Dropout` of whole channels of ``(N, C, H, W)`` or ``(C, H, W)`` inputs, as
    ``torch.nn.Dropout2d``: the mask is drawn at ``(N, C, 1, 1)``.

    Example:
        >>> y = Dropout2d(0.5, seed=0)(torch.ones(2, 3, 4, 4))
    """

    spatial_dims = 2


class Dropout3d(_ChannelDropout):
    """:class:`Dropout` of whole channels of ``(N, C, D, H, W)`` or ``(C, D, H, W)`` inputs, as
    ``torch.nn.Dropout3d``: the mask is drawn at ``(N, C, 1, 1, 1)``.

    Example:
        >>> y = Dropout3d(0.5, seed=0)(torch.ones(2, 3, 2, 2, 2))
    """

    spatial_dims = 3


class AlphaDropout(common.AlphaDropoutDraws, Dropout):
    """:func:`xdrop.alpha_dropout` as a layer, for SELU networks (``torch.nn.AlphaDropout``): on its
    ``t``-th training call ``xdrop.alpha_dropout(x, p, seed=xdrop.fold_in(seed, t),
    noise_shape=noise_shape)``; ``x`` in eval mode. Arguments as for :class:`Dropout`, without
    ``mode``.

    Example:
        >>> y = AlphaDropout(0.2, seed=0)(torch.randn(4, 8))
    """

    def __init__(
        self,
        p: float = 0.5,
        *,
        seed: int | xdrop.Generator | None = None,
        noise_shape: Sequence[int | None] | None = None,
    ) -> None:
        super().__init__(p, seed=seed, noise_shape=noise_shape)

    def extra_repr(self) -> str:
        return f"p={self.p}, seed={int(self.seed) % 2**64}"


class GaussianDropout(common.GaussianDropoutDraws, AlphaDropout):
    """:func:`xdrop.gaussian_dropout` as a layer: on its ``t``-th training call
    ``xdrop.gaussian_dropout(x, p, seed=xdrop.fold_in(seed, t), noise_shape=noise_shape)``
    (``x * (1 + sqrt(p / (1 - p)) * z)``); ``x`` in eval mode. ``p`` in ``[0, 1)``.

    Example:
        >>> y = GaussianDropout(0.2, seed=0)(torch.ones(4, 8))
    """


class DropPath(common.DropPathDraws, Dropout):
    """:func:`xdrop.drop_path` (stochastic depth) as a layer, as timm's ``DropPath``: on its
    ``t``-th training call ``xdrop.drop_path(x, p, seed=xdrop.fold_in(seed, t), mode=mode,
    scale_by_keep=scale_by_keep)``; ``x`` in eval mode. Put it on a residual branch:
    ``x + drop_path(block(x))``.

    Args:
        p: the probability of dropping a sample's branch.
        mode: ``"row"`` (one draw per sample) or ``"batch"`` (one draw for the batch).
        scale_by_keep: scale kept samples by ``1 / (1 - p)``.
        seed: as for :class:`Dropout`.

    Example:
        >>> y = DropPath(0.1, seed=0)(torch.ones(4, 3, 8))
    """

    def __init__(
        self,
        p: float = 0.0,
        *,
        mode: str = "row",
        scale_by_keep: bool = True,
        seed: int | xdrop.Generator | None = None,
    ) -> None:
        super().__init__(p, seed=seed)
        self.path_mode, self.scale_by_keep = common.check_drop_path_options(mode, scale_by_keep)

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.path_mode!r}, seed={int(self.seed) % 2**64}"


class DropBlock2D(common.DropBlock2DDraws, Dropout):
    """:func:`xdrop.drop_block` as a layer for ``(N, C, H, W)`` inputs: on its ``t``-th training
    call ``xdrop.drop_block(x, p, block_size, seed=xdrop.fold_in(seed, t))``; ``x`` in eval mode.

    Args:
        p: the target fraction of dropped units.
        block_size: the side of a block (clipped to the map's smaller side).
        seed: as for :class:`Dropout`.

    Example:
        >>> y = DropBlock2D(0.1, block_size=3, seed=0)(torch.ones(2, 4, 8, 8))
    """

    data_format = "channels_first"  # torch's layout, (N, C, H, W)

    def __init__(
        self, p: float = 0.1, block_size: int = 7, *, seed: int | xdrop.Generator | None = None
    ) -> None:
        super().__init__(p, seed=seed)
        self.block_size = common.check_block_size(block_size)

    def extra_repr(self) -> str:
        return f"p={self.p}, block_size={self.block_size}, seed={int(self.seed) % 2**64}"


def set_mc_sampling(model: torch.nn.Module, enabled: bool = True) -> int:
    """Make every xdrop layer in ``model`` sample in eval mode too (Monte Carlo dropout), or stop.

    Only xdrop's layers change: ``model.eval()`` keeps BatchNorm on its running statistics, which
    ``model.train()`` would not. Each layer keeps its own stream (its step advances per sample).
    Returns the number of layers switched.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), Dropout(0.5, seed=0))
        >>> model = model.eval()
        >>> set_mc_sampling(model)
        1
        >>> bool((model(torch.ones(1, 4)) != model(torch.ones(1, 4))).any())
        True
    """
    flag = check_flag("enabled", enabled)
    switched = 0
    for module in model.modules():
        if isinstance(module, Dropout):
            module.mc_sampling = flag
            switched += 1
    return switched
