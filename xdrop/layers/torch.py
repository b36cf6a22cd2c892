"""PyTorch layers: ``Dropout``, the channel forms ``Dropout1d``, ``Dropout2d``, ``Dropout3d``, and
the family ``AlphaDropout``, ``FeatureAlphaDropout``, ``GaussianDropout``, ``DropPath``
(``StochasticDepth``), ``DropBlock2D``, ``DropBlock2d``, ``DropBlock3d``; and :func:`convert`, which
makes a model written by anyone draw every dropout from xdrop."""

from __future__ import annotations

import copy
import itertools
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import torch
import torch.fx

import xdrop
from xdrop.errors import (
    InPlaceError,
    InputRankError,
    InputRankWarning,
    RecomputationError,
    Shown,
    TracingError,
    UnconvertedDropoutError,
    UnconvertedDropoutWarning,
    XdropWarning,
    bad_type,
    bad_value,
    describe,
)
from xdrop.layers import common
from xdrop.layers import torch_functional as functional
from xdrop.validation import as_integer, check_flag, check_mode

__all__ = [
    "AlphaDropout",
    "DropBlock2D",
    "DropBlock2d",
    "DropBlock3d",
    "DropPath",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "FeatureAlphaDropout",
    "GaussianDropout",
    "StochasticDepth",
    "convert",
    "set_mc_sampling",
    "stream_state_dict",
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
    From ``t = 2**32`` on, where ``fold_in`` would repeat the stream, the step's high word carries
    into the fold (:func:`xdrop.layers.common.step_seed`): no mask repeats within ``2**64`` calls.

    As ``torch.nn.Dropout``: the output has the input's memory format (channels_last, permuted,
    strided), while the mask is drawn over the elements in row-major (logical) order, so an input
    and its contiguous copy get the same output values; ``inplace=True`` writes the output into
    ``x`` and returns ``x``, and refuses (:class:`xdrop.InPlaceError`, a ``RuntimeError``) where
    autograd forbids it: a leaf that requires grad or a view of one. Under
    ``torch.fx.symbolic_trace`` (and tracers built on it, such as torchvision's
    ``create_feature_extractor``) the layer is a leaf, a ``call_module`` node, as ``nn.Dropout``
    is: the traced module draws the same masks and advances the same step.

    Args:
        p: the probability of zeroing an element, in ``[0, 1]``.
        inplace: overwrite ``x`` with the output.
        seed: an integer in ``[0, 2**64)``; ``None`` (default) draws one now from xdrop's global
            generator (reproducible after ``xdrop.manual_seed``); an :class:`xdrop.Generator`
            gives its next seed.
        mode: ``"inverted"`` (scale kept elements by ``1 / (1 - p)`` in training) or
            ``"classic"`` (scale by ``1 - p`` in evaluation).
        noise_shape: the shape the mask is drawn at, broadcast to the input (entries 1, None or
            the input's size; see :func:`xdrop.dropout`). None: one decision per element.
        data_parallel: how ranks of data parallelism draw, read from ``torch.distributed`` at
            each call (one process: no change). ``"per_rank"``: rank ``r`` draws with
            ``xdrop.fold_in(step's seed, r)``. ``"global_batch"``: the local batch (axis 0) is
            rank ``r``'s rows of the global batch (the ranks' batches in rank order) and draws
            their mask in it, so ``N`` ranks draw what one process draws over the global
            batch; the ranks' batch sizes are gathered each call (uneven ones are placed
            exactly). None (default): ``"per_rank"`` on several ranks. A DTensor input is
            global already: its own mask, in every mode. See ``docs/distributed.md``.
        data_parallel_group: the data-parallel ranks, where they are not all the ranks (data
            and tensor parallelism): a ``ProcessGroup`` or a 1-d ``DeviceMesh``; None: the
            default group.

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
    inplace = False  # layers pickled before the argument existed

    def __init__(
        self,
        p: float = 0.5,
        inplace: bool = False,
        *,
        seed: int | xdrop.Generator | None = None,
        mode: str = "inverted",
        noise_shape: Sequence[int | None] | None = None,
        data_parallel: str | None = None,
        data_parallel_group: Any = None,
    ) -> None:
        super().__init__()
        self.p = self._check_rate("p", p)
        self._data_parallel = functional.DataParallel(data_parallel, data_parallel_group)
        self.inplace = check_flag("inplace", inplace)
        self.mode = check_mode(mode)
        self.noise_shape = common.check_noise_shape_entries(noise_shape)
        start = common.initial_seed(seed)
        self._initial_seed = start
        self.register_buffer("seed", torch.tensor(common.signed(start, 64), dtype=torch.int64))
        self.register_buffer("step", torch.tensor(0, dtype=torch.int64))

    def reset_parameters(self) -> None:
        """Set the stream back to where the layer started: its first seed, step 0. A model made
        on the meta device and moved by ``to_empty`` has buffers without values, a ``Linear``'s
        weights alike; this gives the layer's theirs, as ``reset_parameters`` (which FSDP calls
        on materializing such a model) does for torch's modules."""
        start = getattr(self, "_initial_seed", None)  # none in a layer pickled before it was kept
        with torch.no_grad():
            if start is not None:
                self.seed.fill_(common.signed(start, 64))
            self.step.zero_()

    mc_sampling = False
    """Sample in eval mode too (Monte Carlo dropout); :func:`set_mc_sampling` sets it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.fx.Proxy):
            return _leaf_node(self, x)
        self._check_input_shape("x", x.shape)
        if not (self.training or self.mc_sampling):
            return self._write(x, self._evaluate(x, self.p))
        if functional.in_backward():
            raise RecomputationError(
                f"{type(self).__name__} cannot draw during a backward pass: activation "
                "checkpointing recomputes the forward there, and the layer's stream has advanced "
                "since, so it would draw another mask than the forward's. Leave xdrop's layers "
                "out of checkpointed blocks, or turn activation checkpointing off"
            )
        seed = common.step_seed(self.seed, self.step)
        logical = x if x.is_contiguous() else x.contiguous()
        noise = self._noise_shape(x)
        seed, offset = self._data_parallel.place(seed, logical, noise, self._has_batch(x.dim()))
        y = self._write(x, self._draw(logical, self.p, seed, noise, offset))
        functional.advance(self.step)
        return y

    _data_parallel = functional.DataParallel()  # layers pickled before the argument existed

    @property
    def data_parallel(self) -> str | None:
        """How the layer draws on several data-parallel ranks: ``"per_rank"``,
        ``"global_batch"`` or None (``"per_rank"`` there; see ``docs/distributed.md``)."""
        return self._data_parallel.mode

    def _has_batch(self, ndim: int) -> bool:
        """Whether axis 0 of an ``ndim``-d input is the batch (``"global_batch"`` splits it)."""
        return ndim > 0

    def _write(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The output ``y`` (computed in row-major order) as the layer returns it: written into
        ``x`` for ``inplace=True``, else in ``x``'s memory format."""
        if y is x:
            return x
        if self.inplace:
            try:
                x.copy_(y)
            except RuntimeError as error:
                raise InPlaceError(
                    f"{type(self).__name__}(inplace=True) cannot overwrite x: {error}"
                ) from error
            return x
        if x.is_contiguous() or not y.is_contiguous():
            return y  # already laid out as x (a non-contiguous y was computed from x itself)
        out = _empty_in_layout(x)
        out.copy_(y)
        return out

    def _check_input_shape(self, argument: str, shape: Sequence[int | None]) -> None:
        allowed = self._ranks_allowed(len(shape))
        if allowed is not None:
            message = describe(argument, Shown(f"<tensor of shape {tuple(shape)}>"), allowed)
            raise InputRankError(message)

    def _noise_shape(self, x: torch.Tensor) -> Sequence[int | None] | None:
        return self.noise_shape

    def __prepare_scriptable__(self) -> NoReturn:
        # torch.jit.script asks this first: its compiler would stop at xdrop's Python with an
        # error about a type annotation
        raise TracingError(
            f"torch.jit.script cannot compile {type(self).__name__}, whose forward is Python "
            "that TorchScript does not take; record it with torch.jit.trace, torch.export or "
            "torch.compile, which keep its masks and its step"
        )

    def _apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # Module.type(dtype) casts every buffer, integers too: a seed or step made float would
        # lose the stream. They move with the module, and stay int64 with their exact values
        stream = {name: getattr(self, name) for name in ("seed", "step")}
        result = super()._apply(fn, *args, **kwargs)  # type: ignore[no-untyped-call]
        for name, before in stream.items():
            after = getattr(self, name)
            if after.dtype != before.dtype:
                setattr(self, name, before.to(after.device))
        return result

    def _load_from_state_dict(
        self, state_dict: Any, prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        _check_loaded_stream(state_dict, prefix, ("seed", "step"))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"p={self.p}, inplace={self.inplace}, mode={self.mode!r}, seed={int(self.seed) % 2**64}"
        )


def _check_loaded_stream(state_dict: Any, prefix: str, names: tuple[str, ...]) -> None:
    """The seed and step that ``load_state_dict`` is given, refused unless 0-d integer tensors:
    copied into the int64 buffers, a float would be truncated to another stream silently."""
    for name in names:
        value = state_dict.get(prefix + name)
        if value is not None and not _is_integer_scalar(value):
            shown = Shown(f"<{type(value).__name__}>")
            if isinstance(value, torch.Tensor):
                shown = Shown(f"<tensor of {value.dtype} shape {tuple(value.shape)}>")
            raise bad_type(f"state_dict[{prefix + name!r}]", shown, "a 0-d integer tensor")


def _check_loaded_root_stream(
    module: torch.nn.Module, state_dict: Any, prefix: str, *_: Any
) -> None:
    """A converted model's ``load_state_dict`` pre-hook: its ``xdrop_seed`` and ``xdrop_step``."""
    _check_loaded_stream(state_dict, prefix, ("xdrop_seed", "xdrop_step"))


def _is_integer_scalar(value: object) -> bool:
    """A seed or step as ``load_state_dict`` may take it: a 0-d tensor of integers (a float
    would be truncated to another stream silently, a bool is no count)."""
    return (
        isinstance(value, torch.Tensor)
        and value.dim() == 0
        and not value.dtype.is_floating_point
        and not value.dtype.is_complex
        and value.dtype != torch.bool
    )


def _empty_in_layout(x: torch.Tensor) -> torch.Tensor:
    """An uninitialized dense tensor of ``x``'s shape, dtype and device whose dimensions lie in
    memory in the order of ``x``'s strides, as ``F.dropout`` lays out its output: ``x``'s exact
    strides for a dense ``x`` (channels_last, a permutation), the same order of dimensions for a
    sliced one."""
    strides = x.stride()
    order = sorted(range(x.dim()), key=lambda dim: (-strides[dim], dim))
    dense = torch.empty([x.shape[dim] for dim in order], dtype=x.dtype, device=x.device)
    inverse = [0] * x.dim()
    for position, dim in enumerate(order):
        inverse[dim] = position
    return dense.permute(inverse)


def _leaf_node(module: torch.nn.Module, x: torch.fx.Proxy) -> Any:
    """The layer as a leaf of an FX trace: one ``call_module`` node, as the default tracer
    records ``torch.nn.Dropout``. Tracing through ``forward`` instead would bake one step's seed
    and the training flag into the graph; the node calls the layer itself, so the traced module
    draws the layer's stream, advances its step and follows ``.train()`` / ``.eval()``."""
    tracer = x.tracer
    if not isinstance(tracer, torch.fx.Tracer):
        raise TracingError(
            f"{type(module).__name__} is traced as a torch.fx.Tracer's leaf module, by its "
            f"path in the traced module; got a proxy of {type(tracer).__name__}, which has none"
        )
    path = tracer.path_of_module(module)
    if not path:  # the trace's root: torch.fx traces a root's forward, never calls it
        raise TracingError(
            f"{type(module).__name__} cannot be the root of an FX trace: it is traced as a leaf "
            f"of the model that holds it; trace e.g. torch.nn.Sequential(layer)"
        )
    return tracer.create_proxy("call_module", path, (x,), {})


class _ChannelDropout(Dropout):
    """Zero whole channels: one decision per ``(sample, channel)``, shared over the spatial axes,
    reading each rank as ``torch.nn.Dropout{1,2,3}d`` reads it (:meth:`_batched`)."""

    spatial_dims = 0

    def __init__(
        self,
        p: float = 0.5,
        inplace: bool = False,
        *,
        seed: int | xdrop.Generator | None = None,
        mode: str = "inverted",
        data_parallel: str | None = None,
        data_parallel_group: Any = None,
    ) -> None:
        super().__init__(
            p,
            inplace,
            seed=seed,
            mode=mode,
            data_parallel=data_parallel,
            data_parallel_group=data_parallel_group,
        )

    def _batched(self, ndim: int) -> bool:
        """Whether axis 0 of an ``ndim``-d input is the batch (else it is the channel axis)."""
        return ndim == self.spatial_dims + 2

    def _has_batch(self, ndim: int) -> bool:
        return self._batched(ndim)

    def _noise_shape(self, x: torch.Tensor) -> Sequence[int | None] | None:
        ndim = x.dim()
        decisions = 2 if self._batched(ndim) else 1
        return (None,) * decisions + (1,) * (ndim - decisions)

    def _warn_rank(self, ndim: int) -> None:
        """Torch's deprecation warning for a rank outside ``(C, *spatial)`` / ``(N, C, *spatial)``
        (its words ``Received a N-D input to dropoutKd`` kept, which code filters on)."""
        spatial = self.spatial_dims
        if ndim not in (spatial + 1, spatial + 2):
            name = type(self).__name__
            warnings.warn(
                f"{name}: Received a {ndim}-D input to dropout{spatial}d; {name} takes "
                f"{spatial + 1}-D (C, *spatial) or {spatial + 2}-D (N, C, *spatial) inputs, as "
                f"torch's does. Read as torch reads it; use Dropout for element-wise dropout.",
                InputRankWarning,
                stacklevel=4,
            )


class Dropout1d(_ChannelDropout):
    """:class:`Dropout` of whole channels of ``(N, C, L)`` or ``(C, L)`` inputs, as
    ``torch.nn.Dropout1d``: the mask is drawn at ``(N, C, 1)`` (``(C, 1)``). Same arguments,
    without ``noise_shape``. Other ranks: :class:`xdrop.InputRankError` (a ``RuntimeError``), as
    torch raises.

    Example:
        >>> y = Dropout1d(0.5, seed=0)(torch.ones(2, 3, 4))  # each channel all 0 or 2
    """

    spatial_dims = 1

    def _ranks_allowed(self, ndim: int) -> str | None:
        if ndim in (2, 3):
            return None
        return (
            "a tensor of 2 (C, L) or 3 (N, C, L) dimensions for Dropout1d (as torch says: "
            f"Expected 2D or 3D input, but received a {ndim}D input)"
        )


class Dropout2d(_ChannelDropout):
    """:class:`Dropout` of whole channels of ``(N, C, H, W)`` inputs, as ``torch.nn.Dropout2d``:
    the mask is drawn at ``(N, C, 1, 1)``.

    Other ranks are read as torch reads them, with its warnings (:class:`xdrop.InputRankWarning`,
    a ``UserWarning``): a 3-d input as ``(N, C, L)`` (not ``(C, H, W)``), a 2-d one as
    ``(N, C)``, a 5-d or larger one as ``(N, C, *spatial)``; axis 0 is always the batch. Inputs
    of fewer than 2 dimensions: :class:`xdrop.InputRankError`.

    Example:
        >>> y = Dropout2d(0.5, seed=0)(torch.ones(2, 3, 4, 4))
    """

    spatial_dims = 2

    def _batched(self, ndim: int) -> bool:
        return True  # torch reads axis 0 as the batch at every rank

    def _ranks_allowed(self, ndim: int) -> str | None:
        if ndim >= 2:
            self._warn_rank(ndim)
            if ndim == 3:
                warnings.warn(
                    "Dropout2d: Received a 3-D input, assuming that channel-wise 1D dropout "
                    "behavior is desired, as torch does: read as (N, C, L), one decision per "
                    "(N, C). Dropout1d says so without this warning; a (C, H, W) input needs "
                    "unsqueeze(0).",
                    InputRankWarning,
                    stacklevel=3,
                )
            return None
        return "a tensor of at least 2 dimensions (N, C, *spatial) for Dropout2d"


class Dropout3d(_ChannelDropout):
    """:class:`Dropout` of whole channels of ``(N, C, D, H, W)`` or ``(C, D, H, W)`` inputs, as
    ``torch.nn.Dropout3d``: the mask is drawn at ``(N, C, 1, 1, 1)`` (``(C, 1, 1, 1)``).

    Other ranks are read as torch reads them, with its warning (:class:`xdrop.InputRankWarning`):
    as ``(C, *spatial)`` unless 5-d, so a 6-d input has its channels on axis 0 and a 1-d input
    is dropped element-wise. 0-d inputs: :class:`xdrop.InputRankError`.

    Example:
        >>> y = Dropout3d(0.5, seed=0)(torch.ones(2, 3, 2, 2, 2))
    """

    spatial_dims = 3

    def _ranks_allowed(self, ndim: int) -> str | None:
        if ndim >= 1:
            self._warn_rank(ndim)
            return None
        return "a tensor of at least 1 dimension (C, *spatial) for Dropout3d"


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
        inplace: bool = False,
        *,
        seed: int | xdrop.Generator | None = None,
        noise_shape: Sequence[int | None] | None = None,
        data_parallel: str | None = None,
        data_parallel_group: Any = None,
    ) -> None:
        super().__init__(
            p,
            inplace,
            seed=seed,
            noise_shape=noise_shape,
            data_parallel=data_parallel,
            data_parallel_group=data_parallel_group,
        )

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}, seed={int(self.seed) % 2**64}"


class FeatureAlphaDropout(AlphaDropout):
    """:class:`AlphaDropout` of whole channels, as ``torch.nn.FeatureAlphaDropout``: one decision
    per ``(N, C)`` of an ``(N, C, *spatial)`` input (axis 0 is the batch at every rank, as in
    torch). Inputs of fewer than 2 dimensions: :class:`xdrop.InputRankError`.

    Example:
        >>> y = FeatureAlphaDropout(0.2, seed=0)(torch.randn(2, 3, 4, 4))
    """

    def __init__(
        self,
        p: float = 0.5,
        inplace: bool = False,
        *,
        seed: int | xdrop.Generator | None = None,
        data_parallel: str | None = None,
        data_parallel_group: Any = None,
    ) -> None:
        super().__init__(
            p,
            inplace,
            seed=seed,
            data_parallel=data_parallel,
            data_parallel_group=data_parallel_group,
        )

    def _ranks_allowed(self, ndim: int) -> str | None:
        if ndim >= 2:
            return None
        return "a tensor of at least 2 dimensions (N, C, *spatial) for FeatureAlphaDropout"

    def _noise_shape(self, x: torch.Tensor) -> Sequence[int | None] | None:
        return (None, None) + (1,) * (x.dim() - 2)


class GaussianDropout(common.GaussianDropoutDraws, AlphaDropout):
    """:func:`xdrop.gaussian_dropout` as a layer: on its ``t``-th training call
    ``xdrop.gaussian_dropout(x, p, seed=xdrop.fold_in(seed, t), noise_shape=noise_shape)``
    (``x * (1 + sqrt(p / (1 - p)) * z)``); ``x`` in eval mode. ``p`` in ``[0, 1)``.

    Example:
        >>> y = GaussianDropout(0.2, seed=0)(torch.ones(4, 8))
    """


class DropPath(common.DropPathDraws, Dropout):
    """:func:`xdrop.drop_path` (stochastic depth) as a layer, as timm's ``DropPath`` and
    torchvision's ``StochasticDepth``: on its ``t``-th training call ``xdrop.drop_path(x, p,
    seed=xdrop.fold_in(seed, t), mode=mode, scale_by_keep=scale_by_keep)``; ``x`` in eval mode.
    Put it on a residual branch: ``x + drop_path(block(x))``.

    The arguments are timm's, in timm's order (``DropPath(drop_prob, scale_by_keep)``), with
    torchvision's ``p`` and ``mode`` by keyword; :class:`StochasticDepth` takes torchvision's
    order ``(p, mode)``. Kept samples are scaled by ``1 / (1 - p)``; ``p == 1`` gives zeros.

    Args:
        p: the probability of dropping a sample's branch, in ``[0, 1]`` (torchvision's name).
        scale_by_keep: scale kept samples by ``1 / (1 - p)``.
        mode: ``"row"`` (one draw per sample) or ``"batch"`` (one draw for the batch).
        drop_prob: timm's name for ``p`` (give one of them; neither: 0).
        seed, data_parallel, data_parallel_group: as for :class:`Dropout`.

    Example:
        >>> y = DropPath(0.1, seed=0)(torch.ones(4, 3, 8))
        >>> DropPath(drop_prob=0.1).drop_prob
        0.1
    """

    def __init__(
        self,
        p: float | None = None,
        scale_by_keep: bool = True,
        *,
        mode: str = "row",
        drop_prob: float | None = None,
        seed: int | xdrop.Generator | None = None,
        data_parallel: str | None = None,
        data_parallel_group: Any = None,
    ) -> None:
        rate, _ = common.layer_rate(p, drop_prob, 0.0)
        super().__init__(
            rate,  # type: ignore[arg-type]  # checked there
            seed=seed,
            data_parallel=data_parallel,
            data_parallel_group=data_parallel_group,
        )
        self.path_mode, self.scale_by_keep = common.check_drop_path_options(mode, scale_by_keep)

    @property
    def drop_prob(self) -> float:
        """timm's name for ``p``; setting it checks the rate, as the constructor does."""
        return self.p

    @drop_prob.setter
    def drop_prob(self, value: float) -> None:
        self.p = self._check_rate("drop_prob", value)

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.path_mode!r}, seed={int(self.seed) % 2**64}"


class StochasticDepth(DropPath):
    """:class:`DropPath` with torchvision's ``StochasticDepth(p, mode)`` order of arguments (both
    required, as there): ``StochasticDepth(0.2, "row")`` is ``DropPath(0.2, mode="row")``.

    Example:
        >>> y = StochasticDepth(0.2, "batch", seed=0)(torch.ones(4, 3))
    """

    def __init__(
        self,
        p: float,
        mode: str,
        *,
        seed: int | xdrop.Generator | None = None,
        data_parallel: str | None = None,
        data_parallel_group: Any = None,
    ) -> None:
        super().__init__(
            p,
            mode=mode,
            seed=seed,
            data_parallel=data_parallel,
            data_parallel_group=data_parallel_group,
        )


class _TorchDropBlock(common.DropBlock2DDraws, Dropout):
    """A DropBlock layer of torch, in torch's layout ``(N, C, *spatial)``."""

    data_format = "channels_first"


class DropBlock2D(_TorchDropBlock):
    """:func:`xdrop.drop_block` as a layer for ``(N, C, H, W)`` inputs: on its ``t``-th training
    call ``xdrop.drop_block(x, p, block_size, seed=xdrop.fold_in(seed, t))`` (one mask per
    channel, kept units scaled exactly); ``x`` in eval mode. :class:`DropBlock2d` takes timm's
    and torchvision's arguments.

    Args:
        p: the target fraction of dropped units.
        block_size: the side of a block (clipped to the map's smaller side).
        seed, data_parallel, data_parallel_group: as for :class:`Dropout`.

    Example:
        >>> y = DropBlock2D(0.1, block_size=3, seed=0)(torch.ones(2, 4, 8, 8))
    """

    def __init__(
        self,
        p: float = 0.1,
        block_size: int = 7,
        *,
        seed: int | xdrop.Generator | None = None,
        data_parallel: str | None = None,
        data_parallel_group: Any = None,
    ) -> None:
        super().__init__(
            p, seed=seed, data_parallel=data_parallel, data_parallel_group=data_parallel_group
        )
        self.block_size = common.check_block_size(block_size)

    def extra_repr(self) -> str:
        return f"p={self.p}, block_size={self.block_size}, seed={int(self.seed) % 2**64}"


_TIMM_DEPRECATED = frozenset({"batchwise", "fast"})
"""timm's ``DropBlock2d`` arguments that it removed and still accepts, doing nothing."""


class DropBlock2d(_TorchDropBlock):
    """:func:`xdrop.drop_block` as a layer with torchvision's ``DropBlock2d(p, block_size,
    inplace=False, eps=1e-6)`` and timm's ``DropBlock2d(drop_prob=0.1, block_size=7,
    gamma_scale=1.0, with_noise=False, inplace=False, couple_channels=True,
    scale_by_keep=True)`` arguments: on its ``t``-th training call ``xdrop.drop_block(x, p,
    block_size, seed=xdrop.fold_in(seed, t), ...)`` with the options below; ``x`` in eval mode.

    Positional arguments follow torchvision; timm's are taken by keyword. The name of the rate
    picks the library whose defaults apply where they differ: ``p`` torchvision's (one mask per
    channel, ``eps=1e-6``), ``drop_prob`` (or neither) timm's (one mask shared by a sample's
    channels, ``eps=1e-7``). Both compute ``gamma`` as ``gamma_scale * p * H * W / (b**2 * (H -
    b + 1) * (W - b + 1))`` with ``b = min(block_size, H, W)`` (see :func:`xdrop.drop_block`).
    timm's removed ``batchwise`` and ``fast`` are accepted and do nothing; another unknown
    keyword warns, as timm does.

    Args:
        p: the paper's drop rate, in ``[0, 1]`` (torchvision's name).
        block_size: the side of a block (clipped to the map's smaller side).
        inplace: write the output into the input (as ``x.mul_``), autograd-tracked.
        eps: added to the number of kept units when scaling (None: the library's default).
        drop_prob: timm's name for ``p`` (give one of them; neither: 0.1).
        gamma_scale: a factor of ``gamma`` above 0 (timm).
        with_noise: standard normals in the dropped units instead of 0, no scaling (timm).
        couple_channels: one mask for all channels of a sample (None: the library's default).
        scale_by_keep: scale kept units by ``count / (kept + eps)`` (timm; True).
        seed, data_parallel, data_parallel_group: as for :class:`Dropout`.

    Example:
        >>> x = torch.ones(2, 4, 8, 8)
        >>> y = DropBlock2d(0.1, 3, seed=0)(x)  # torchvision's spelling
        >>> y = DropBlock2d(drop_prob=0.1, block_size=3, seed=0)(x)  # timm's
    """

    spatial_dims = 2

    def __init__(
        self,
        p: float | None = None,
        block_size: int = 7,
        inplace: bool = False,
        eps: float | None = None,
        *,
        drop_prob: float | None = None,
        gamma_scale: float = 1.0,
        with_noise: bool = False,
        couple_channels: bool | None = None,
        scale_by_keep: bool = True,
        seed: int | xdrop.Generator | None = None,
        data_parallel: str | None = None,
        data_parallel_group: Any = None,
        **removed: object,
    ) -> None:
        rate, spelling = common.layer_rate(p, drop_prob, 0.1)
        super().__init__(
            rate,  # type: ignore[arg-type]  # checked there
            seed=seed,
            data_parallel=data_parallel,
            data_parallel_group=data_parallel_group,
        )
        self.block_size = common.check_block_size(block_size)
        self.inplace = check_flag("inplace", inplace)
        timm = spelling == "timm"
        self.eps = common.check_eps((1e-7 if timm else 1e-6) if eps is None else eps)
        self.gamma_scale = common.check_gamma_scale(gamma_scale)
        self.with_noise = check_flag("with_noise", with_noise)
        coupled = timm if couple_channels is None else couple_channels
        self.couple_channels = check_flag("couple_channels", coupled)
        self.scale_by_keep = check_flag("scale_by_keep", scale_by_keep)
        for name in removed:
            if name not in _TIMM_DEPRECATED:
                warnings.warn(
                    f"unexpected keyword argument {name!r} to {type(self).__name__}(): "
                    "ignored, as timm's DropBlock2d ignores it",
                    XdropWarning,
                    stacklevel=2,
                )

    @property
    def drop_prob(self) -> float:
        """timm's name for ``p``; setting it checks the rate, as the constructor does."""
        return self.p

    @drop_prob.setter
    def drop_prob(self, value: float) -> None:
        self.p = self._check_rate("drop_prob", value)

    def extra_repr(self) -> str:
        return (
            f"p={self.p}, block_size={self.block_size}, inplace={self.inplace}, "
            f"couple_channels={self.couple_channels}, seed={int(self.seed) % 2**64}"
        )


class DropBlock3d(DropBlock2d):
    """:class:`DropBlock2d` for ``(N, C, D, H, W)`` inputs, as torchvision's ``DropBlock3d(p,
    block_size, inplace=False, eps=1e-6)``: cubic blocks, ``gamma = gamma_scale * p * D * H * W
    / (b**3 * (D - b + 1) * (H - b + 1) * (W - b + 1))``. The same arguments as
    :class:`DropBlock2d`.

    Example:
        >>> y = DropBlock3d(0.1, 3, seed=0)(torch.ones(2, 4, 6, 6, 6))
    """

    spatial_dims = 3


def set_mc_sampling(model: torch.nn.Module, enabled: bool = True) -> int:
    """Make every xdrop layer in ``model`` sample in eval mode too (Monte Carlo dropout), or stop.

    Only xdrop's layers change: ``model.eval()`` keeps BatchNorm on its running statistics, which
    ``model.train()`` would not. Each layer keeps its own stream (its step advances per sample).
    Returns the number of layers switched. In a model made by :func:`convert`, functional calls
    (``F.dropout(x, p, training=self.training)``, SDPA's ``dropout_p``) follow the model's own
    training flag, as its code passes it: they do not sample in eval mode
    (``docs/mc-dropout.md``).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), Dropout(0.5, seed=0))
        >>> model = model.eval()
        >>> set_mc_sampling(model)
        1
        >>> bool((model(torch.ones(1, 4)) != model(torch.ones(1, 4))).any())
        True
    """
    if not isinstance(model, torch.nn.Module):
        raise bad_type("model", model, "a torch.nn.Module")
    flag = check_flag("enabled", enabled)
    switched = 0
    for module in model.modules():
        if isinstance(module, Dropout):
            module.mc_sampling = flag
            switched += 1
    return switched


def stream_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The entries of ``model.state_dict()`` that hold xdrop's streams: each xdrop layer's
    ``seed`` and ``step``, and each converted model's ``xdrop_seed`` and ``xdrop_step``.

    A checkpoint of some of the weights leaves them out: PEFT saves only its adapters
    (``save_pretrained`` of a ``PeftModel``). Save these beside it, and after loading the
    adapters, ``model.load_state_dict(streams, strict=False)`` continues every stream where it
    stopped; its ``unexpected_keys`` must be empty (a model saved compiled or wrapped in DDP
    names its modules ``_orig_mod.*`` or ``module.*``: save the model itself).
    :class:`xdrop.integrations.transformers.RDropTrainer` does so in its checkpoints.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), Dropout(0.5, seed=0))
        >>> sorted(stream_state_dict(model))
        ['1.seed', '1.step']
    """
    if not isinstance(model, torch.nn.Module):
        raise bad_type("model", model, "a torch.nn.Module")
    streams: dict[str, torch.Tensor] = {}
    for prefix, module in model.named_modules(remove_duplicate=False):  # as state_dict names
        owned = ("seed", "step") if isinstance(module, Dropout) else ("xdrop_seed", "xdrop_step")
        for name in owned:
            value = module._buffers.get(name)
            if value is not None:
                streams[f"{prefix}.{name}" if prefix else name] = value.detach()
    return streams


# -- convert ----------------------------------------------------------------------------------------
_DROPOUT_LIKE = re.compile(r"dropout|droppath|dropblock|stochasticdepth", re.IGNORECASE)
"""Class names that say a module drops something: convert lists such modules it does not know."""


def _torch_replacements() -> dict[type, Callable[[Any, int], torch.nn.Module]]:
    """The dropout classes ``convert`` replaces, each with the xdrop layer of the same arguments:
    torch's always, timm's and torchvision's where those libraries are already imported (convert
    never imports them)."""
    nn = torch.nn
    table: dict[type, Callable[[Any, int], torch.nn.Module]] = {
        nn.Dropout: lambda m, s: Dropout(m.p, m.inplace, seed=s),
        nn.Dropout1d: lambda m, s: Dropout1d(m.p, m.inplace, seed=s),
        nn.Dropout2d: lambda m, s: Dropout2d(m.p, m.inplace, seed=s),
        nn.Dropout3d: lambda m, s: Dropout3d(m.p, m.inplace, seed=s),
        nn.AlphaDropout: lambda m, s: AlphaDropout(m.p, m.inplace, seed=s),
        nn.FeatureAlphaDropout: lambda m, s: FeatureAlphaDropout(m.p, m.inplace, seed=s),
    }
    timm = sys.modules.get("timm.layers.drop")
    if timm is not None:
        table[timm.DropPath] = lambda m, s: DropPath(
            drop_prob=m.drop_prob, scale_by_keep=m.scale_by_keep, seed=s
        )
        table[timm.DropBlock2d] = lambda m, s: DropBlock2d(
            drop_prob=m.drop_prob,
            block_size=m.block_size,
            gamma_scale=m.gamma_scale,
            with_noise=m.with_noise,
            inplace=m.inplace,
            couple_channels=m.couple_channels,
            scale_by_keep=m.scale_by_keep,
            seed=s,
        )
    depth = sys.modules.get("torchvision.ops.stochastic_depth")
    if depth is not None:
        table[depth.StochasticDepth] = lambda m, s: StochasticDepth(m.p, m.mode, seed=s)
    blocks = sys.modules.get("torchvision.ops.drop_block")
    if blocks is not None:
        table[blocks.DropBlock2d] = lambda m, s: DropBlock2d(
            m.p, m.block_size, m.inplace, m.eps, seed=s
        )
        table[blocks.DropBlock3d] = lambda m, s: DropBlock3d(
            m.p, m.block_size, m.inplace, m.eps, seed=s
        )
    return table


_MODULE_HOOKS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_pre_hooks",
    "_backward_hooks",
    "_is_full_backward_hook",
    "_state_dict_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)
"""The hooks a module registered on itself holds: a replacement takes them over."""


def _replacement(
    module: torch.nn.Module,
    name: str,
    seed: int,
    rename: Callable[[str], str] | None,
    table: dict[type, Callable[[Any, int], torch.nn.Module]],
    data_parallel: functional.DataParallel,
) -> torch.nn.Module | None:
    """The xdrop layer that replaces ``module`` (None: it stays), on the device and in the
    train/eval mode of the module, seeded for its site, drawing as ``data_parallel`` says."""
    build = table.get(type(module))
    if build is None:
        return None
    layer = build(module, common.site_seed(seed, functional.renamed(rename, name)))
    layer._data_parallel = data_parallel  # type: ignore[assignment]
    layer.train(module.training)
    for hooks in _MODULE_HOOKS:  # the tables themselves, so that their handles still remove them
        if hasattr(module, hooks):
            table = getattr(module, hooks)
            setattr(layer, hooks, table)
            # the module keeps copies: the hooks convert adds to the layer are not its own (it
            # may still run elsewhere, in a model that is not converted)
            setattr(module, hooks, copy.copy(table))
    device = next((t.device for t in module.buffers()), None)
    if device is not None:  # a torch dropout module holds no tensor: the layer stays on the CPU
        layer.to(device)
    return layer


def _unconverted(module: torch.nn.Module, table: dict[type, Any], configs: set[int]) -> str | None:
    """Why ``module`` draws masks that convert does not make xdrop's (shown after its class
    name), or None: a class (or base class below ``nn.Module``) whose name says dropout, drop
    path, drop block or stochastic depth, or a float ``drop_prob`` (timm's name); an
    ``nn.MultiheadAttention`` whose function body is not routed; LayerDrop (a float
    ``layerdrop``, ``*_layerdrop`` or ``layer_drop`` above 0: ``torch.rand`` skipping layers) and
    SpecAugment masks (Hugging Face's speech models, NumPy's generator), read from the module's
    own attributes and from its ``config``, once per config (``configs``: those read). xdrop's
    own layers excepted."""
    if isinstance(module, Dropout) or type(module) in table:
        return None
    classes = type(module).__mro__[: type(module).__mro__.index(torch.nn.Module)]
    if any(_DROPOUT_LIKE.search(cls.__name__) for cls in classes):
        return ""
    if isinstance(getattr(module, "drop_prob", None), float):
        return ""
    if (
        isinstance(module, torch.nn.MultiheadAttention)
        and module.dropout > 0
        and not functional.MULTIHEAD_ATTENTION_CONVERTED
    ):
        return (
            f" with dropout={module.dropout}: its attention dropout runs inside "
            "F.multi_head_attention_forward"
        )
    # Hugging Face's models copy a config's rate into a module's attribute (BART's encoder), or
    # read the config in the forward (Wav2Vec2's): both are read
    sources = [vars(module)]
    config = getattr(module, "config", None)
    if config is not None and id(config) not in configs:
        configs.add(id(config))
        sources.append(config if isinstance(config, dict) else getattr(config, "__dict__", {}))
    drawn = [_random_setting(name, value, settings) for settings in sources
             for name, value in settings.items()]  # fmt: skip
    found = [text for text in drawn if text is not None]
    return f": {'; '.join(found)}" if found else None


def _random_setting(name: object, value: object, settings: dict[Any, Any]) -> str | None:
    """What the setting ``name`` of ``settings`` draws, if it is a LayerDrop or SpecAugment
    rate above 0."""
    if not isinstance(name, str) or not isinstance(value, float) or not value > 0:
        return None
    if _LAYERDROP.search(name):
        return f"LayerDrop, {name}={value}: torch.rand skips layers"
    if (
        name in ("mask_time_prob", "mask_feature_prob")
        and settings.get("apply_spec_augment") is True
    ):
        return f"SpecAugment, {name}={value}: NumPy's generator masks the features"
    return None


_LAYERDROP = re.compile(r"(^|_)layer_?drop$")  # Hugging Face's layerdrop, torchaudio's layer_drop


def _compiled(model: torch.nn.Module) -> bool:
    """Whether ``model`` is ``torch.compile(module)``'s wrapper or was compiled in place
    (``module.compile()``)."""
    frames = sys.modules.get("torch._dynamo.eval_frame")  # imported by whatever compiled it
    wrapper = frames is not None and isinstance(model, frames.OptimizedModule)
    return wrapper or getattr(model, "_compiled_call_impl", None) is not None


def _check_convert_arguments(
    model: object, strict: object, rename: object
) -> tuple[torch.nn.Module, bool, Callable[[str], str] | None]:
    if not isinstance(model, torch.nn.Module):
        raise bad_type("model", model, "a torch.nn.Module")
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        raise bad_value(
            "model",
            Shown(f"<{type(model).__name__} on the meta device>"),
            "a model whose tensors hold values: convert adds the streams' seeds as buffers, "
            "which to_empty would leave without values; materialize the model first "
            "(model.to_empty(device=...) and its initialization), then convert it (a model "
            "that accelerate offloads: convert it before offloading)",
        )
    if _compiled(model):
        # its compiled code may already hold the model's dropout: convert what it compiles
        raise bad_value(
            "model",
            Shown(f"<compiled {type(getattr(model, '_orig_mod', model)).__name__}>"),
            "a model not compiled yet: convert it first, then compile it "
            "(torch.compile(convert(model, seed=...)), or model.compile() after convert)",
        )
    if rename is not None and not callable(rename):
        raise bad_type("rename", rename, "None or a callable taking a site's name to a str")
    return model, check_flag("strict", strict), rename


def _root_seed(model: torch.nn.Module, seed: object) -> int:
    """The seed the model is converted with: the one it holds if converted before (``seed`` must
    then be None or that seed), else ``seed`` resolved as a layer resolves it."""
    held = _own_buffer(model, "xdrop_seed")
    if held is not None and _own_buffer(model, "xdrop_step") is not None:
        current = int(held) % 2**64
        if seed is not None and (isinstance(seed, xdrop.Generator) or as_integer(seed) != current):
            raise bad_value(
                "seed",
                seed,
                f"None or {current}, the seed this model was converted with (its xdrop_seed "
                "buffer): converting again keeps every stream; load_state_dict sets another seed",
            )
        return current
    return common.initial_seed(seed)


def convert(
    model: torch.nn.Module,
    *,
    seed: int | xdrop.Generator | None,
    strict: bool = False,
    rename: Callable[[str], str] | None = None,
    data_parallel: str | None = None,
    data_parallel_group: Any = None,
) -> torch.nn.Module:
    """Make every dropout in a model written by anyone seeded, portable and resumable, in place.

    1. **Modules**: each ``nn.Dropout``, ``nn.Dropout1d/2d/3d``, ``nn.AlphaDropout``,
       ``nn.FeatureAlphaDropout``, timm's ``DropPath`` and ``DropBlock2d`` and torchvision's
       ``StochasticDepth`` and ``DropBlock2d/3d`` (where timm / torchvision are imported) is
       replaced by the xdrop layer with the same arguments, train/eval flag and device, seeded
       ``site_seed(seed, rename(name))`` (:func:`xdrop.layers.common.site_seed`) with ``name``
       its qualified name in ``model.named_modules()``. A module registered under several names
       stays one module: one layer, named after its first name. xdrop's layers stay as they are.
    2. **Functional dropout**: while ``model``'s forward runs, ``F.dropout``,
       ``F.dropout1d/2d/3d``, ``F.alpha_dropout``, ``F.feature_alpha_dropout``, the
       ``torch.dropout`` family (in-place forms, ``torch.native_dropout``) and
       ``F.scaled_dot_product_attention`` with ``dropout_p > 0`` are computed with xdrop. The
       call ``k`` (from 0) that the forward of the module named ``m`` makes, within one forward
       of ``model``, is the site ``f"{m}#{k}"`` and draws with the seed::

           step_seed(site_seed(xdrop_seed, rename(f"{m}#{k}")), xdrop_step)

       where ``m`` is the innermost module whose forward is running (``""`` for ``model``),
       and ``xdrop_step`` advances once per forward of ``model`` in training mode (or in which
       a functional call drew). A call that does not drop (``training=False``, ``p == 0``)
       takes its index and draws nothing: torch computes it. Attention with dropout is
       computed explicitly, softmax(q k^T * scale + mask), with xdrop's dropout on the
       probabilities; ``nn.MultiheadAttention``'s attention dropout likewise.
    3. **State**: ``model`` gets the int64 buffers ``xdrop_seed`` and ``xdrop_step``, beside each
       layer's ``seed`` and ``step``, so ``state_dict()`` / ``load_state_dict`` resume every
       stream, also into a model converted with another seed.
    4. **Data parallelism**: the layers it creates and the functional calls draw as
       ``data_parallel`` says (:class:`Dropout`; axis 0 of each dropped tensor is its batch
       for ``"global_batch"``): ``"per_rank"`` folds the rank into each call's seed,
       ``"global_batch"`` draws each example's mask of one process over the global batch.
       The default, None, is ``"per_rank"`` on several ranks. Converting again sets it for
       all of them, the layers converted before included.

    Modules that look like dropout but that convert does not know, and Hugging Face's LayerDrop
    and SpecAugment settings (see ``docs/convert-torch.md``), are listed in one
    :class:`xdrop.UnconvertedDropoutWarning` and left as they are; ``strict=True`` raises
    :class:`xdrop.UnconvertedDropoutError` instead, before changing anything. A model compiled
    already (``torch.compile(model)``) is refused: convert it first, then compile it.
    Converting again converts only what was added since, keeping every stream and state_dict
    key.

    Args:
        model: the ``torch.nn.Module`` to convert (changed in place). If it is itself a
            dropout module, the layer replacing it is returned.
        seed: an integer in ``[0, 2**64)``, an :class:`xdrop.Generator` (its next seed), or
            None: the seed the model already holds if converted before, else the next seed of
            xdrop's global generator (``xdrop.manual_seed``).
        strict: raise on dropout-like modules convert cannot convert, instead of warning.
        rename: maps each site's name (a module's qualified name, or ``"module#k"``) to the
            name its seed is derived from, e.g. to match another framework's names. Converting
            again keeps the first one (None, or the same callable).
        data_parallel: None, ``"per_rank"`` or ``"global_batch"``, as for :class:`Dropout`.
        data_parallel_group: the data-parallel ranks (a ``ProcessGroup`` or a 1-d
            ``DeviceMesh``), as for :class:`Dropout`; None: the default group.

    Returns:
        ``model``, converted.

    Example:
        >>> import torch, xdrop
        >>> from xdrop.layers.torch import convert
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.1))
        >>> model = convert(model, seed=0)
        >>> type(model[1]).__name__
        'Dropout'
        >>> sorted(k for k in model.state_dict() if "xdrop" in k)
        ['xdrop_seed', 'xdrop_step']
    """
    model, strict, rename = _check_convert_arguments(model, strict, rename)
    placement = functional.DataParallel(data_parallel, data_parallel_group)
    table = _torch_replacements()
    _report_unconverted(model, table, strict)  # before anything changes: strict leaves it as it is
    root_seed = _root_seed(model, seed)
    context = _site_context(model)
    if context is not None:  # converted before: the names keep deriving as they did
        # the one placement of the sites and of the layers convert made: all follow this call
        context.data_parallel.mode, context.data_parallel.group = placement.mode, placement.group
        placement = context.data_parallel
        if rename is not None and rename is not context.rename:
            raise bad_value(
                "rename",
                rename,
                f"None or {context.rename!r}, the rename this model was converted with: "
                "another would give the sites already converted other names",
            )
        rename = context.rename
    root = _replacement(model, "", root_seed, rename, table, placement)
    if root is not None:
        model = root
    first_names: dict[int, str] = {}
    replaced: dict[int, torch.nn.Module] = {}
    for parent_name, parent in list(model.named_modules(remove_duplicate=False)):
        for attribute, child in list(parent._modules.items()):
            if child is None:
                continue
            name = f"{parent_name}.{attribute}" if parent_name else attribute
            first_names.setdefault(id(child), name)
            if id(child) not in replaced:
                layer = _replacement(
                    child, first_names[id(child)], root_seed, rename, table, placement
                )
                if layer is None:
                    continue
                replaced[id(child)] = layer
            setattr(parent, attribute, replaced[id(child)])
    _install_sites(model, root_seed, rename, placement)
    return model


def _report_unconverted(model: torch.nn.Module, table: dict[type, Any], strict: bool) -> None:
    """Warn of what in ``model`` draws masks that convert does not make xdrop's (an
    :class:`xdrop.UnconvertedDropoutWarning`), or with ``strict`` refuse it."""
    configs: set[int] = set()
    unknown = [
        f"{name or '<model>'} ({type(module).__name__}{reason})"
        for name, module in model.named_modules()
        if (reason := _unconverted(module, table, configs)) is not None
    ]
    if not unknown:
        return
    listed = ", ".join(unknown)
    if strict:
        raise UnconvertedDropoutError(
            f"convert cannot convert these dropout-like modules, whose masks would still "
            f"come from torch's generator (or NumPy's, where said): {listed}. Replace them "
            "with xdrop's layers, or set their rate to 0 (see docs/convert-torch.md), or pass "
            "strict=False to leave them as they are"
        )
    warnings.warn(
        f"convert left these dropout-like modules as they are (their masks come from "
        f"torch's generator, or NumPy's where said, not xdrop's): {listed}. Replace them "
        "with xdrop's layers, or set their rate to 0, or filter "
        "xdrop.UnconvertedDropoutWarning",
        UnconvertedDropoutWarning,
        stacklevel=3,
    )


def _own_buffer(model: torch.nn.Module, name: str) -> torch.Tensor | None:
    """The buffer ``name`` of ``model`` itself, not one that a wrapper's ``__getattr__`` reads
    from the model it wraps (PEFT's ``PeftModel``): a wrapper converted around a converted
    model is a root of its own."""
    return model._buffers.get(name)


def _site_context(model: torch.nn.Module) -> functional.SiteContext | None:
    """The sites' context of a model converted before (None for a model never converted)."""
    for hook in model._forward_pre_hooks.values():
        if isinstance(hook, functional.EnterModule) and hook.root:
            return hook.context
    return None


def _install_sites(
    model: torch.nn.Module,
    seed: int,
    rename: Callable[[str], str] | None,
    placement: functional.DataParallel,
) -> None:
    """The root's seed and step buffers, and the hooks that name the running module and enter
    the functional mode around the root's forward; on a model converted before, hooks only on
    the modules added since."""
    if _own_buffer(model, "xdrop_seed") is None:
        device = next((t.device for t in model.parameters()), None)
        device = device or next((t.device for t in model.buffers()), torch.device("cpu"))
        value = torch.tensor(common.signed(seed, 64), dtype=torch.int64, device=device)
        step = torch.zeros((), dtype=torch.int64, device=device)
        for name, buffer in (("xdrop_seed", value), ("xdrop_step", step)):
            # a wrapper that reads them from a converted model it wraps seems to hold them
            # already, which register_buffer refuses: the name is made the wrapper's first
            model._buffers.setdefault(name, None)
            model.register_buffer(name, buffer)
        model.register_load_state_dict_pre_hook(_check_loaded_root_stream)  # type: ignore[no-untyped-call]
    context = _site_context(model)
    if context is None:
        context = functional.SiteContext(rename)
        context.data_parallel = placement
    for name, module in model.named_modules():
        hooked = any(
            isinstance(hook, functional.EnterModule) and hook.context is context
            for hook in module._forward_pre_hooks.values()
        )
        if hooked:
            continue
        root = module is model
        layer = isinstance(module, Dropout)
        module.register_forward_pre_hook(functional.EnterModule(context, name, root, layer))
        module.register_forward_hook(functional.ExitModule(context, name, root), always_call=True)
