"""PyTorch layers: ``Dropout`` and the channel forms ``Dropout1d``, ``Dropout2d``, ``Dropout3d``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

import xdrop
from xdrop.errors import bad_value
from xdrop.layers.common import (
    check_layer_rate,
    check_noise_shape_entries,
    initial_seed,
    signed,
    spatial_noise_shape,
)
from xdrop.validation import check_mode

__all__ = ["Dropout", "Dropout1d", "Dropout2d", "Dropout3d"]


class Dropout(torch.nn.Module):
    """``torch.nn.Dropout`` with a seeded, portable mask stream that lives in ``state_dict()``.

    On its ``t``-th call in training mode (``t = 0, 1, ...``) the module returns exactly::

        xdrop.dropout(x, p, seed=xdrop.fold_in(seed, t), mode=mode, noise_shape=noise_shape)

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
        >>> bool((y0 == xdrop.dropout(torch.ones(8), 0.5, seed=xdrop.fold_in(0, 0))).all())
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
        self.p = check_layer_rate("p", p)
        self.mode = check_mode(mode)
        self.noise_shape = check_noise_shape_entries(noise_shape)
        start = initial_seed(seed)
        self.register_buffer("seed", torch.tensor(signed(start, 64), dtype=torch.int64))
        self.register_buffer("step", torch.tensor(0, dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return xdrop.dropout(x, self.p, training=False, mode=self.mode)
        seed = xdrop.fold_in(self.seed, self.step)
        y = xdrop.dropout(x, self.p, seed=seed, mode=self.mode, noise_shape=self._noise_shape(x))
        self.step.add_(1)
        return y

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
                f"<tensor of shape {tuple(x.shape)}>",
                f"a tensor of {spatial + 1} (C, *spatial) or {spatial + 2} (N, C, *spatial) "
                f"dimensions for {type(self).__name__}",
            )
        return spatial_noise_shape(ndim, range(-spatial, 0))


class Dropout1d(_ChannelDropout):
    """:class:`Dropout` of whole channels of ``(N, C, L)`` or ``(C, L)`` inputs, as
    ``torch.nn.Dropout1d``: the mask is drawn at ``(N, C, 1)``. Same arguments, without
    ``noise_shape``.

    Example:
        >>> y = Dropout1d(0.5, seed=0)(torch.ones(2, 3, 4))  # each of the 6 channels all 0 or all 2
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
