"""Functional dropout inside a converted PyTorch model: while the model's forward runs, a
``TorchFunctionMode`` routes ``F.dropout`` and its relatives, the ``torch.dropout`` family and
``F.scaled_dot_product_attention(..., dropout_p > 0)`` through xdrop, each call site on a stream
of its own (:func:`xdrop.layers.torch.convert` installs it; ``docs/convert-torch.md`` gives the
derivation).

A call's site is ``"<module>#<k>"``: the qualified name of the innermost module whose forward
made the call, and ``k`` the index of the call among the intercepted calls that module's forward
made since the root's forward began. Its seed is ``step_seed(site_seed(seed, rename(site)),
step)`` with ``seed`` and ``step`` the root's ``xdrop_seed`` and ``xdrop_step`` buffers, computed
in the graph so that ``torch.compile`` and ``torch.export`` keep the buffers as inputs."""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import types
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple

import torch
import torch.fx
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack

import xdrop
from xdrop import sharding, spec, torch_kernel
from xdrop.errors import (
    ArgumentTypeError,
    RecomputationError,
    Shown,
    TracingError,
    UnconvertedDropoutError,
    XdropError,
    bad_type,
    bad_value,
)
from xdrop.layers import common
from xdrop.tracing import PerThread

_DROPOUT = "dropout"
_FEATURE = "feature"
_DROPOUT1D = "dropout1d"
_DROPOUT3D = "dropout3d"
_ALPHA = "alpha"
_FEATURE_ALPHA = "feature_alpha"

_VF = torch._C._VariableFunctions

# each intercepted function: (kind, names of (input, p, training) in its signature, in place)
_FUNCTIONS: dict[Callable[..., Any], tuple[str, tuple[str, str, str], bool]] = {
    F.dropout: (_DROPOUT, ("input", "p", "training"), False),
    F.dropout1d: (_DROPOUT1D, ("input", "p", "training"), False),
    F.dropout2d: (_FEATURE, ("input", "p", "training"), False),
    F.dropout3d: (_DROPOUT3D, ("input", "p", "training"), False),
    F.alpha_dropout: (_ALPHA, ("input", "p", "training"), False),
    F.feature_alpha_dropout: (_FEATURE_ALPHA, ("input", "p", "training"), False),
    _VF.dropout: (_DROPOUT, ("input", "p", "train"), False),
    _VF.dropout_: (_DROPOUT, ("input", "p", "train"), True),
    _VF.feature_dropout: (_FEATURE, ("input", "p", "train"), False),
    _VF.feature_dropout_: (_FEATURE, ("input", "p", "train"), True),
    _VF.alpha_dropout: (_ALPHA, ("input", "p", "train"), False),
    _VF.alpha_dropout_: (_ALPHA, ("input", "p", "train"), True),
    _VF.feature_alpha_dropout: (_FEATURE_ALPHA, ("input", "p", "train"), False),
    _VF.feature_alpha_dropout_: (_FEATURE_ALPHA, ("input", "p", "train"), True),
}
_DEFAULTS = {"p": 0.5, "training": True, "train": True, "inplace": False}
_NATIVE = _VF.native_dropout
_SDPA = F.scaled_dot_product_attention
_SDPA_ARGUMENTS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
_MHA = F.multi_head_attention_forward

SITE_FUNCTIONS: tuple[Callable[..., Any], ...] = (*_FUNCTIONS, _NATIVE, _SDPA)
"""The functions whose calls are sites: each call, drawing or not, takes the next index ``k``."""


@torch.compiler.assume_constant_result  # type: ignore[untyped-decorator]
def site_words(rename: Callable[[str], str] | None, site: str) -> tuple[int, int]:
    """The two 32-bit words ``(hi, lo)`` that :func:`xdrop.layers.common.site_seed` folds into
    the seed for the site ``site`` (after ``rename``). A constant to ``torch.compile``: the
    hash and ``rename`` run in Python when the graph is traced, not in it."""
    if isinstance(rename, Hashable):
        return _cached_words(rename, site)
    return common.site_words(renamed(rename, site))  # a callable object defining __eq__


@functools.lru_cache(maxsize=4096)
def _cached_words(rename: Callable[[str], str] | None, site: str) -> tuple[int, int]:
    return common.site_words(renamed(rename, site))


def renamed(rename: Callable[[str], str] | None, name: str) -> str:
    """``rename(name)``, checked to be a string (``name`` itself without ``rename``)."""
    if rename is None:
        return name
    result = rename(name)
    if not isinstance(result, str):
        raise ArgumentTypeError(
            f"rename must return a str for every site name, got {result!r} of type "
            f"{type(result).__name__} for {name!r}"
        )
    return result


class DataParallel:
    """Where a draw lies among data-parallel ranks: a layer's (or a converted model's)
    ``data_parallel`` and ``data_parallel_group``, applied to one call's seed and input by
    :meth:`place`. The rank and the world size are read at call time from ``torch.distributed``
    (the default group, or ``group``: a ``ProcessGroup`` or a 1-d ``DeviceMesh`` of the
    data-parallel ranks, as in hybrid data and tensor parallelism, where the global rank is not
    the data-parallel one)."""

    def __init__(self, data_parallel: object = None, group: object = None) -> None:
        self.mode = common.check_data_parallel(data_parallel)
        self.group = check_data_parallel_group(group)

    def rank_and_world(self) -> tuple[int, int]:
        """This process's rank in the data-parallel group and the group's size; ``(0, 1)``
        without an initialised ``torch.distributed``."""
        import torch.distributed as dist

        group = self.group
        if _is_device_mesh(group):
            return group.get_local_rank(), group.size()
        if not (dist.is_available() and dist.is_initialized()):
            return 0, 1
        return dist.get_rank(group), dist.get_world_size(group)

    def place(
        self,
        seed: Any,
        x: torch.Tensor,
        noise_shape: Sequence[int | None] | None = None,
        batched: bool = True,
    ) -> tuple[Any, int | xdrop.Block]:
        """``(seed, offset)`` for a draw on ``x`` with this step's ``seed``: ``"per_rank"``
        folds the rank in (``xdrop.fold_in(seed, rank)``); ``"global_batch"`` keeps the seed
        and places ``x`` at its rows of the global batch (:func:`common.batch_rows`,
        :func:`common.batch_block`), gathering the ranks' batch sizes so that an uneven last
        batch is placed exactly. One rank: as it is. A DTensor, or a tensor-parallel plan's
        local output, is global already (drawn as its DTensor): as it is, but for the
        data-parallel rank folded in where ``data_parallel_group`` names data-parallel ranks
        beside its mesh's. ``batched``: axis 0 of ``x`` is its batch (an unbatched input is
        refused with ``"global_batch"``)."""
        is_global = sharding.is_dtensor(x) or sharding.is_dtensor_local(x)
        if is_global and self.group is None:
            return seed, 0
        rank, world = self.rank_and_world()
        mode = common.data_parallel_mode(self.mode, world)
        if mode is None:
            return seed, 0
        if mode == "per_rank":
            return xdrop.fold_in(seed, rank), 0
        if is_global:
            allowed = (
                '"per_rank" or None for a DTensor or a tensor-parallel output among the '
                "data-parallel ranks of data_parallel_group"
            )
            raise bad_value("data_parallel", mode, allowed)
        if x.dim() == 0 or not batched:
            shown = Shown(f"<tensor of shape {tuple(x.shape)}>")
            allowed = 'a batched tensor (the batch on axis 0) for data_parallel="global_batch"'
            raise bad_value("x", shown, allowed)
        mask, shares_batch = common.placed_mask(tuple(x.shape), noise_shape)
        if shares_batch:  # one decision along the batch: the global batch's on every rank
            return seed, 0
        start, total = common.batch_rows(self.batch_sizes(x, world, mask), rank)
        return seed, common.batch_block(tuple(x.shape), start, total, noise_shape)

    def batch_sizes(
        self, x: torch.Tensor, world: int, mask_shape: Sequence[int | None]
    ) -> list[int]:
        """Every rank's local batch size (axis 0), in rank order: one all_gather of two integers
        per drawing call, the batch size and the decisions a row of the mask (of ``mask_shape``,
        known on torch) holds.
        The global batch is the ranks' rows one after the other, so every rank's rows must hold
        as many (else two ranks' counters would overlap: ranks that pad their batches to
        lengths of their own): an :class:`~xdrop.errors.ArgumentValueError` on every rank."""
        if torch.compiler.is_compiling():
            raise TracingError(  # torch.compile breaks the graph here and runs it eagerly
                'data_parallel="global_batch" gathers the ranks\' batch sizes on each call, '
                "which a compiled graph cannot hold: torch.compile runs the layer eagerly "
                '(a graph break), fullgraph=True cannot; use data_parallel="per_rank" in a '
                "full graph"
            )
        if _under_ddp_join():  # the ranks that joined would never answer the gather
            allowed = (
                '"per_rank" under DDP\'s join(): "global_batch" gathers the ranks\' batch sizes '
                "on each call, which ranks that have run out of batches do not answer (or leave "
                "join() out and give every rank as many batches: a DistributedSampler pads the "
                "last one)"
            )
            raise bad_value("data_parallel", "global_batch", allowed)
        import torch.distributed as dist

        group = self.group.get_group() if _is_device_mesh(self.group) else self.group
        # on x's device, where the backend communicates (NCCL: CUDA only), gloo alone: the CPU
        device = torch.device("cpu") if dist.get_backend(group) == "gloo" else x.device
        row_size = math.prod(size or 0 for size in mask_shape[1:])
        local = torch.tensor([x.shape[0], row_size], dtype=torch.int64, device=device)
        gathered = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(gathered, local, group=group)
        sizes, rows = zip(*(entry.tolist() for entry in gathered), strict=True)
        if len(set(rows)) > 1:
            raise bad_value(
                "x",
                Shown(f"<tensor of shape {tuple(x.shape)}>"),
                'for data_parallel="global_batch", rows (all but axis 0) of one size on every '
                f"rank, as one global batch has; the ranks' rows hold {list(rows)} mask "
                "elements. Pad every rank's batch to one length, or use "
                'data_parallel="per_rank"',
            )
        return list(sizes)

    def __getstate__(self) -> dict[str, Any]:
        # a process group lives in one process: a pickled model takes the default group
        return {"mode": self.mode, "group": None}

    def __deepcopy__(self, memo: dict[int, Any]) -> DataParallel:
        # a copy in the same process (an unsharded reference, an EMA model) keeps the group
        return DataParallel(self.mode, self.group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.mode, self.group = state["mode"], state["group"]


def check_data_parallel_group(group: object) -> Any:
    """None, a ``torch.distributed.ProcessGroup``, or a 1-d ``DeviceMesh`` (``mesh["dp"]``)."""
    allowed = (
        "None, a torch.distributed.ProcessGroup or a 1-d DeviceMesh of the data-parallel ranks"
    )
    if group is None:
        return None
    if _is_device_mesh(group):
        if getattr(group, "ndim", None) != 1:
            raise bad_value("data_parallel_group", group, allowed)
        return group
    import torch.distributed as dist

    if dist.is_available() and isinstance(group, dist.ProcessGroup):
        return group
    raise bad_type("data_parallel_group", group, allowed)


def _under_ddp_join() -> bool:
    """Whether this call runs in the forward of a DDP model with ``join()`` enabled: read from
    the module DDP records as running (for Dynamo) and the join configuration it holds, which
    torch leaves enabled after the ``join()`` context."""
    distributed = sys.modules.get("torch.nn.parallel.distributed")
    running = getattr(
        getattr(distributed, "DistributedDataParallel", None), "_active_ddp_module", None
    )
    return bool(getattr(getattr(running, "_join_config", None), "enable", False))


def _is_device_mesh(group: object) -> bool:
    mesh = sys.modules.get("torch.distributed.device_mesh")
    return mesh is not None and isinstance(group, mesh.DeviceMesh)


class ForwardState:
    """A converted root's state during one forward on one thread: the stack of modules whose
    forward is running (by qualified name), the number of site calls each made, the active
    mode, the re-entrancy counts of the root and of submodules run outside it, and the frame
    of the root's call (None while compiling)."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.stack: list[str] = []
        self.counts: dict[str, int] = {}
        self.mode: FunctionalDropout | None = None
        self.depth = 0
        self.outside = 0
        self.guard: OutsideForward | None = None
        self.frame: types.FrameType | None = None

    def interrupted(self) -> bool:
        """Whether the root's forward this state is in has ended without its forward hooks:
        torch runs those on an ``Exception`` alone, not on a ``KeyboardInterrupt`` (Ctrl+C in
        a notebook) or a ``SystemExit``. Asked only of a call of the root inside its own
        forward; the frame of that forward's call is then on the stack, unless it ended."""
        if self.depth == 0 or self.frame is None:
            return False
        frame: types.FrameType | None = sys._getframe(2)
        while frame is not None:
            if frame is self.frame:
                return False
            frame = frame.f_back
        return True

    def drop(self) -> None:
        """Forget an interrupted forward: its modes leave torch's stack (wherever they are in
        it: modes entered since stay), and the next call of the root is a forward of its own."""
        for mode in (self.mode, self.guard):
            if mode is not None:
                _remove_mode(mode)
        self.clear()


def _remove_mode(mode: TorchFunctionMode) -> None:
    stack = _get_current_function_mode_stack()  # type: ignore[no-untyped-call]
    index = next((i for i, entered in enumerate(stack) if entered is mode), None)
    if index is None:
        return
    above = stack[index + 1 :]
    for _ in range(len(stack) - index):
        torch._C._pop_torch_function_stack()
    for entered in above:
        torch._C._push_on_torch_function_stack(entered)


class Mirror(NamedTuple):
    """The root's seed and step buffers, their versions, and their values as host integers."""

    seed: torch.Tensor
    step: torch.Tensor
    versions: tuple[int, int]
    host: tuple[int, int]


READ_ON_EVERY_FORWARD = {"cpu"}
"""The devices whose tensors a converted model's forward reads on the host every time: reading
them waits for nothing."""


class SiteContext:
    """A converted root's Python state: its rename, its data-parallel placement, the running
    forward's state (:class:`ForwardState`) and a host mirror of its seed and step. Shared by
    the hooks :func:`xdrop.layers.torch.convert` puts on the root and its submodules."""

    def __init__(self, rename: Callable[[str], str] | None) -> None:
        self.rename = rename
        self.data_parallel = DataParallel()
        self._on_each_thread = PerThread(ForwardState)  # torch's modes are per thread too
        self.mirror: Mirror | None = None

    @property
    def forward(self) -> ForwardState:
        """This thread's forward of the root."""
        return self._on_each_thread.value

    def host_state(self, seed: torch.Tensor, step: torch.Tensor) -> tuple[int, int] | None:
        """The root's seed and step as host integers, in eager execution only (None when traced).
        On the CPU they are read on every forward. On an accelerator, where reading waits for
        the device, they are read when their version changed (a step, ``load_state_dict``,
        ``copy_``, ``.to()``), else remembered: a write through ``.data``, which torch does not
        count as a change, is not seen there. Under a ``torch.func`` transform the buffers may
        stand for a batch of values (``vmap`` over stacked models' states): they are not read
        either, nor where they hold no values (the meta device, ``FakeTensorMode``): the seeds
        are then computed from them."""
        if torch_kernel.recorded() or type(seed) is not torch.Tensor:
            return None
        if torch_kernel.transforms_active():
            return None
        if type(step) is not torch.Tensor:
            return None
        if seed.device.type in READ_ON_EVERY_FORWARD or seed.is_inference() or step.is_inference():
            return _read_on_host(seed, step)  # inference tensors keep no version
        mirror = self.mirror
        if (
            mirror is None
            or mirror.seed is not seed
            or mirror.step is not step
            or mirror.versions != (seed._version, step._version)
        ):
            host = _read_on_host(seed, step)
            if host is None:
                return None
            mirror = self.mirror = Mirror(seed, step, (seed._version, step._version), host)
        return mirror.host

    def advanced(self, step: torch.Tensor) -> None:
        """The step was advanced by one in place: the mirror follows without reading it. It is
        stamped with the version one advance makes, so that where forwards on other threads
        advanced it too the buffer's version differs, and the next forward reads it again."""
        mirror = self.mirror  # replaced whole, never changed: a thread sees one mirror or another
        if mirror is not None and mirror.step is step:
            seed_version, step_version = mirror.versions
            host = mirror.host[0], (mirror.host[1] + 1) % 2**64
            self.mirror = mirror._replace(versions=(seed_version, step_version + 1), host=host)

    def __getstate__(self) -> dict[str, Any]:
        # a forward's state, and the mirror, stay behind
        return {"rename": self.rename, "data_parallel": self.data_parallel}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["rename"])  # type: ignore[misc]
        self.data_parallel = state.get("data_parallel", DataParallel())


def _read_on_host(seed: torch.Tensor, step: torch.Tensor) -> tuple[int, int] | None:
    """The seed and the step as unsigned host integers; None where they hold no values (the
    meta device, torch's ``FakeTensorMode``)."""
    try:
        return int(seed) % 2**64, int(step) % 2**64
    except RuntimeError:
        return None


class EnterModule:
    """Forward pre-hook: the module named ``name`` starts its forward; on the root, the mode
    is entered. ``layer``: the module is an xdrop layer (its stream advances per call).

    A submodule run outside the root's forward is guarded (its draws refused), unless another
    converted model that holds it runs its forward on this thread, whose mode then draws: a
    submodule converted on its own and called alone, or a converted model inside this one."""

    def __init__(self, context: SiteContext, name: str, root: bool, layer: bool = False) -> None:
        self.context, self.name, self.root, self.layer = context, name, root, layer

    def __call__(self, module: torch.nn.Module, args: Any) -> None:
        if _fx_tracing():
            raise TracingError(
                "torch.fx cannot trace a converted model: it calls the model's forward without "
                "its hooks, through which the model's dropout draws xdrop's masks, so the traced "
                "module would draw torch's. Use torch.export or torch.compile, or trace the "
                "model before converting it and convert the traced module: "
                "convert(torch.fx.symbolic_trace(model), seed=...)"
            )
        forward = self.context.forward
        if self.root:
            if forward.interrupted():
                forward.drop()
            if forward.depth == 0:  # the root's forward, not a re-entrant call of the root
                seed, step = _root_state(module)  # refused before anything is entered
                forward.counts = {}
                mode = FunctionalDropout(
                    self.context, seed, step, self.context.host_state(seed, step)
                )
                forward.mode = mode
                mode.__enter__()  # type: ignore[no-untyped-call]
                forward.frame = None if torch.compiler.is_compiling() else sys._getframe(1)
            forward.depth += 1
        elif forward.depth == 0:  # a submodule run outside the root's forward
            inside_another = _inside_a_running_root(module, self.context)
            if self.layer and not inside_another and _would_draw(module):
                raise outside_forward(self.name)
            forward.outside += 1
            if forward.outside == 1 and not inside_another:
                guard = OutsideForward(self.context)
                forward.guard = guard
                guard.__enter__()  # type: ignore[no-untyped-call]
        forward.stack.append(self.name)


def _fx_tracing() -> bool:
    """Whether ``torch.fx.symbolic_trace`` (or a tracer built on it) runs: ``torch.export`` sets
    the same flag, while compiling."""
    return bool(torch.fx._symbolic_trace._is_fx_tracing_flag) and not torch.compiler.is_compiling()


def _inside_a_running_root(module: torch.nn.Module, context: SiteContext) -> bool:
    """Whether another converted model that holds ``module`` runs its forward on this thread: a
    block converted on its own inside a converted model, or a model converted inside a block
    converted in turn. That model's own hooks on ``module`` name the site, and its mode draws."""
    return any(
        isinstance(hook, EnterModule) and hook.context is not context and hook.context.forward.depth
        for hook in module._forward_pre_hooks.values()
    )


class ExitModule:
    """Forward hook (``always_call=True``): the module named ``name`` ended its forward, normally
    or not; on the root, the mode is left and the model's step advanced if the forward was a
    training one. Torch calls it also where a pre-hook raised before :class:`EnterModule` ran
    (one registered before ``convert``, or with ``prepend=True``, as FSDP's), or where
    EnterModule refused the call: nothing was entered then, and nothing is left. Calls are
    paired by the module's name, so a module called inside its own forward, whose inner call
    a pre-hook refused and whose forward went on, is not told apart from its outer call."""

    def __init__(self, context: SiteContext, name: str, root: bool) -> None:
        self.context, self.name, self.root = context, name, root

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("name", None)  # pickled before it was kept: read at first call

    def __call__(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        context = self.context
        forward = context.forward
        if self.name is None:
            self.name = next(
                hook.name
                for hook in module._forward_pre_hooks.values()
                if isinstance(hook, EnterModule) and hook.context is context
            )
        if not forward.stack or forward.stack[-1] != self.name:
            return  # this call was never entered (the innermost entered module is another)
        forward.stack.pop()
        if self.root:
            forward.depth -= 1
            mode = forward.mode
            if forward.depth == 0 and mode is not None:
                forward.mode = None
                forward.frame = None
                mode.__exit__(None, None, None)  # type: ignore[no-untyped-call]
                if module.training or mode.drew:
                    _, step = _root_state(module)
                    advance(step)
                    if mode.host is not None:
                        context.advanced(step)
        elif forward.depth == 0 and forward.outside > 0:
            forward.outside -= 1
            guard = forward.guard
            if forward.outside == 0 and guard is not None:
                forward.guard = None
                guard.__exit__(None, None, None)  # type: ignore[no-untyped-call]


def advance(step: torch.Tensor) -> None:
    """``step += 1`` in place: the stream's next forward. Under ``torch.func.grad`` (``vjp``,
    ``jacrev``...) a buffer the transformed function captures, rather than takes, cannot change,
    and torch's error says so in general terms: this one names the buffers."""
    try:
        step.add_(1)
    except RuntimeError as error:
        if not torch_kernel.transforms_active() or "captured" not in str(error):
            raise
        raise TracingError(
            "a layer or converted model in training advances its step buffer on every forward, "
            "which a torch.func transform refuses on a buffer its function captures: pass the "
            "model's buffers with its parameters, functional_call(model, (params, buffers), "
            "args), where buffers = dict(model.named_buffers()), as an argument of the "
            "transformed function; or evaluate without Monte Carlo sampling, which draws nothing"
        ) from error


def _root_state(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The root's ``xdrop_seed`` and ``xdrop_step`` buffers."""
    seed, step = module.xdrop_seed, module.xdrop_step
    assert isinstance(seed, torch.Tensor) and isinstance(step, torch.Tensor)
    for name, value in (("xdrop_seed", seed), ("xdrop_step", step)):
        if value.dtype != torch.int64:  # Module.type(dtype) casts every buffer, integers too
            raise bad_type(
                f"the model's {name} buffer",
                Shown(f"<tensor of {value.dtype}>"),
                "an int64 tensor, as convert made it (Module.type casts every buffer and loses "
                "the stream: cast a model's parameters with .to(dtype), .float() or .half(), "
                "which leave integer buffers alone)",
            )
    return seed, step


def _argument(
    args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str, default: Any
) -> Any:
    if index < len(args):
        return args[index]
    return kwargs.get(name, default)


class FunctionalDropout(TorchFunctionMode):
    """The mode entered around a converted root's forward: each dropout function in
    :data:`SITE_FUNCTIONS` is computed with xdrop on the call site's stream; every other function
    runs as it is."""

    def __init__(
        self,
        context: SiteContext,
        seed: torch.Tensor,
        step: torch.Tensor,
        host: tuple[int, int] | None,
    ) -> None:
        super().__init__()
        self.context = context
        self.seed = seed
        self.step = step
        self.host = host
        self.drew = False

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        spec = _FUNCTIONS.get(func)
        if spec is not None or func is _SDPA or func is _NATIVE:
            if _RUNNING.value.passed_on:
                return func(*args, **kwargs)  # a site of a converted model running inside this one
            if spec is not None:
                return self._dropout(func, spec, args, kwargs)
            return self._attention(args, kwargs) if func is _SDPA else self._native(args, kwargs)
        if func is _MHA and _MHA_BODY is not None:
            _RUNNING.value.attention_modes.append(self)
            try:
                return _MHA_BODY(*args, **kwargs)
            finally:
                _RUNNING.value.attention_modes.pop()
        return func(*args, **kwargs)

    def _site_seed(self) -> torch.Tensor | int:
        """The seed of this call: the next site of the innermost running module, at the
        model's step. Eagerly, a host integer (xdrop's fused kernel takes it as it is, and the
        site's seed is remembered); traced, computed in the graph from the root's buffers, also
        in a part of the model compiled on its own below the eager root (``block.compile()``),
        whose graph would otherwise hold the step as a constant and be compiled anew for each."""
        if in_backward():
            raise recomputed_in_backward()
        high, low = site_words(self.context.rename, self._next_site())
        self.drew = True
        host = None if torch.compiler.is_compiling() else self.host
        if host is not None and host[1] < 2**32:
            return spec.fold_in(_host_site_seed(host[0], high, low), host[1])
        site = xdrop.fold_in(xdrop.fold_in(self.seed, high), low)
        seed: torch.Tensor = common.step_seed(site, self.step)
        return seed

    def _next_site(self) -> str:
        """The next site of the innermost running module, ``"<module>#<k>"``, counted."""
        forward = self.context.forward
        module = forward.stack[-1] if forward.stack else ""
        index = forward.counts.get(module, 0)
        forward.counts[module] = index + 1
        return f"{module}#{index}"

    def _pass_on(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """torch's own answer for a site that draws nothing (or that torch refuses): the site is
        counted, and the call passed on to torch marked as this model's, so that the mode of a
        converted model whose forward runs this one (a teacher called in a student's forward)
        does not count it as a site of its own."""
        self._next_site()
        running = _RUNNING.value
        running.passed_on += 1
        try:
            return func(*args, **kwargs)
        finally:
            running.passed_on -= 1

    def _dropout(
        self,
        func: Callable[..., Any],
        spec: tuple[str, tuple[str, str, str], bool],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        kind, (x_name, p_name, training_name), inplace = spec
        x = _argument(args, kwargs, 0, x_name, None)
        p = _argument(args, kwargs, 1, p_name, 0.5)
        training = _argument(args, kwargs, 2, training_name, True)
        inplace = inplace or bool(_argument(args, kwargs, 3, "inplace", False))
        if (
            not isinstance(x, torch.Tensor)
            or not x.is_floating_point()
            or not training
            or _is_zero(p)
            or not _valid_rate(p)
            or not _valid_rank(kind, x.dim())
        ):  # torch's own answer: no draw, or torch's error
            return self._pass_on(func, args, kwargs)
        seed = self._site_seed()
        y = _draw(kind, x, p, seed, self.context.data_parallel)
        if inplace:
            x.copy_(y)
            return x
        return y

    def _native(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        x = _argument(args, kwargs, 0, "input", None)
        p = _argument(args, kwargs, 1, "p", 0.5)
        train = _argument(args, kwargs, 2, "train", None)
        if not isinstance(x, torch.Tensor) or train is False or _is_zero(p) or not _valid_rate(p):
            return self._pass_on(_NATIVE, args, kwargs)
        seed = self._site_seed()
        logical = x if x.is_contiguous() else x.contiguous()
        seed, offset = self.context.data_parallel.place(seed, logical)
        y, keep = xdrop.dropout(logical, _rate(p), seed=seed, offset=offset, return_mask=True)
        return y, keep

    def _attention(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        values = [
            _argument(args, kwargs, index, name, None) for index, name in enumerate(_SDPA_ARGUMENTS)
        ]
        query, key, value, attn_mask, dropout_p, is_causal, scale = values
        enable_gqa = bool(kwargs.get("enable_gqa", False))
        if dropout_p is None or _is_zero(dropout_p) or (is_causal and attn_mask is not None):
            # no dropout, or arguments SDPA refuses with its own error
            return self._pass_on(_SDPA, args, kwargs)
        seed = self._site_seed()
        return attention(
            query,
            key,
            value,
            attn_mask,
            _rate(dropout_p),
            bool(is_causal),
            scale,
            enable_gqa,
            seed,
            self.context.data_parallel,
        )


class OutsideForward(FunctionalDropout):
    """The mode entered while a submodule of a converted model runs outside the model's forward
    (called directly, or recomputed by activation checkpointing during the backward pass): a
    call that would draw a mask is refused, since it has no site in a forward of the model and
    torch's generator would give it a mask that no checkpoint resumes (and that a recomputation
    would not match)."""

    def __init__(self, context: SiteContext) -> None:
        super().__init__(context, torch.zeros((), dtype=torch.int64), torch.zeros(()), None)

    def _site_seed(self) -> torch.Tensor | int:
        stack = self.context.forward.stack
        raise outside_forward(stack[-1] if stack else "")


def outside_forward(module: str) -> XdropError:
    """The error for a draw outside the converted model's forward, by the module ``module``;
    in a backward pass, where activation checkpointing runs it again, the recomputation's."""
    if in_backward():
        return recomputed_in_backward()
    return UnconvertedDropoutError(
        f"dropout drawn by {module!r} of a converted model outside the model's forward: it "
        "has no site on the model's streams, as for a submodule called directly, a copy of one "
        "(copy.deepcopy; PEFT's modules_to_save) or a model taken out of the converted one "
        "(PEFT's merge_and_unload()). Call the converted model itself, convert the model or "
        "submodule that runs it (xdrop.layers.torch.convert(model, seed=...)), or stop it "
        "drawing: eval mode, and set_mc_sampling(model, False) where Monte Carlo sampling is on"
    )


def recomputed_in_backward() -> RecomputationError:
    """The error for a draw of a converted model in a backward pass."""
    return RecomputationError(
        "a converted model cannot draw dropout during a backward pass: activation "
        "checkpointing recomputes a forward there (of the model, of a block converted on its "
        "own, or of a submodule), and the model's step has advanced since, so it would draw "
        "other masks than the forward's. Checkpoint only what draws no dropout, or turn "
        "activation checkpointing off"
    )


def in_backward() -> bool:
    """Whether autograd's engine runs a backward pass on this thread (where activation
    checkpointing recomputes forwards). Not asked while compiling, where it would break the
    graph."""
    return not torch.compiler.is_compiling() and torch._C._current_graph_task_id() != -1


def _would_draw(module: torch.nn.Module) -> bool:
    """Whether an xdrop layer draws a mask when called now."""
    sampling = module.training or bool(getattr(module, "mc_sampling", False))
    return sampling and float(getattr(module, "p", 0.0)) > 0


@functools.lru_cache(maxsize=4096)
def _host_site_seed(seed: int, high: int, low: int) -> int:
    return spec.fold_in(spec.fold_in(seed, high), low)


def _running_mode() -> FunctionalDropout:
    return _RUNNING.value.attention_modes[-1]


def _never(*args: Any) -> bool:
    return False


def _attention_body() -> Callable[..., Any] | None:
    """``F.multi_head_attention_forward`` (which ``nn.MultiheadAttention`` calls) as it is, but
    with its calls of ``dropout`` and ``scaled_dot_product_attention`` routed through the running
    mode, and without its own dispatch to modes: inside a mode's ``__torch_function__`` the mode
    is off, so the function itself would draw from torch's generator. The same code object with
    three of its global names bound otherwise; None (MultiheadAttention then not converted)
    where torch's function no longer names them."""
    original = F.multi_head_attention_forward
    needed = {"has_torch_function", "dropout", "scaled_dot_product_attention"}
    if not needed <= set(original.__code__.co_names):
        return None
    namespace = dict(original.__globals__)
    namespace["has_torch_function"] = _never
    namespace["dropout"] = lambda *args, **kwargs: _running_mode()._dropout(
        F.dropout, _FUNCTIONS[F.dropout], args, kwargs
    )
    namespace["scaled_dot_product_attention"] = lambda *args, **kwargs: _running_mode()._attention(
        args, kwargs
    )
    if "_check_key_padding_mask" in namespace:  # Dynamo keeps torch's function as one op
        namespace["_check_key_padding_mask"] = _check_key_padding_mask
    body = types.FunctionType(
        original.__code__, namespace, original.__name__, original.__defaults__
    )
    body.__kwdefaults__ = original.__kwdefaults__
    return body


def _check_key_padding_mask(key_padding_mask: torch.Tensor, source_length: int, batch: int) -> None:
    """torch's check of a key padding mask's shape, in code Dynamo traces: the messages of
    torch's own check close over the mask, which Dynamo cannot trace (inside torch's function,
    which Dynamo puts in a graph whole, it never does)."""
    for size, expected in zip(key_padding_mask.shape[:2], (batch, source_length), strict=True):
        torch._check_with(
            AssertionError,
            size == expected,
            lambda: "Expected key_padding_mask of shape (batch, source length)",
        )


class _Running:
    """What runs on one thread: the modes running ``nn.MultiheadAttention``'s function body,
    innermost last, and the number of site calls that modes pass on to torch."""

    def __init__(self) -> None:
        self.attention_modes: list[FunctionalDropout] = []
        self.passed_on = 0


_RUNNING = PerThread(_Running)
_MHA_BODY = _attention_body()
MULTIHEAD_ATTENTION_CONVERTED = _MHA_BODY is not None
"""Whether ``nn.MultiheadAttention``'s attention dropout is routed through xdrop (it is where
torch's ``F.multi_head_attention_forward`` names ``dropout`` and ``scaled_dot_product_attention``
as globals, as torch 2.x does)."""


def _is_zero(p: Any) -> bool:
    return isinstance(p, (int, float)) and p == 0


def _valid_rate(p: Any) -> bool:
    """Rates torch takes (else torch raises its own error); a tensor rate is left to xdrop."""
    return not isinstance(p, (int, float)) or 0 <= p <= 1


def _valid_rank(kind: str, ndim: int) -> bool:
    """Ranks torch's function takes without an error (it raises its own on the others)."""
    if kind == _DROPOUT1D:
        return ndim in (2, 3)
    if kind in (_FEATURE, _FEATURE_ALPHA):
        return ndim >= 2
    if kind == _DROPOUT3D:
        return ndim >= 1
    return True


def _rate(p: Any) -> Any:
    return float(p) if isinstance(p, (int, float)) else p


def _draw(
    kind: str, x: torch.Tensor, p: Any, seed: torch.Tensor | int, data_parallel: DataParallel
) -> torch.Tensor:
    """What the function computes in training, with xdrop's mask for ``seed``: one decision per
    element, or per ``(N, C)`` channel (per ``C`` of an unbatched input) as torch reads the
    input's rank; placed among data-parallel ranks by ``data_parallel``."""
    logical = x if x.is_contiguous() else x.contiguous()
    ndim = x.dim()
    noise: tuple[int | None, ...] | None = None
    batched = True  # axis 0 is the batch (else the channels of an unbatched input)
    if kind in (_FEATURE, _FEATURE_ALPHA):
        noise = (None, None) + (1,) * (ndim - 2)
    elif kind == _DROPOUT1D:
        batched = ndim == 3
        noise = (None, None, 1) if batched else (None, 1)
    elif kind == _DROPOUT3D:
        batched = ndim == 5
        leading = 2 if batched else 1
        noise = (None,) * leading + (1,) * (ndim - leading)
    rate = _rate(p)
    placed, offset = data_parallel.place(seed, logical, noise, batched=batched)
    if kind in (_ALPHA, _FEATURE_ALPHA):
        y = xdrop.alpha_dropout(logical, rate, seed=placed, noise_shape=noise, offset=offset)
    else:
        y = xdrop.dropout(logical, rate, seed=placed, noise_shape=noise, offset=offset)
    assert isinstance(y, torch.Tensor)
    return y


def _autocast_enabled(device_type: str) -> bool:
    """Whether ``torch.autocast`` is on for ``device_type``; False where the device has none (the
    meta device, fake tensors), and on torch before 2.4, which cannot be asked by device."""
    available = getattr(torch.amp, "is_autocast_available", None)
    return (
        available is not None and available(device_type) and torch.is_autocast_enabled(device_type)
    )


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    dropout_p: Any,
    is_causal: bool,
    scale: float | None,
    enable_gqa: bool,
    seed: Any,
    data_parallel: DataParallel | None = None,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` computed explicitly, with xdrop's dropout on the
    attention probabilities::

        probs = softmax(query @ key^T * scale + bias)   (rows masked whole: 0)
        dropout(probs, dropout_p, seed) @ value

    ``bias`` is ``-inf`` above the diagonal for ``is_causal`` (top-left aligned, as torch),
    ``-inf`` where a boolean ``attn_mask`` is False, or a float ``attn_mask`` itself; ``scale``
    defaults to ``1 / sqrt(E)``; with ``enable_gqa`` each key/value head serves
    ``Hq / Hkv`` query heads, as torch repeats them. ``data_parallel`` places the dropout's
    draw among data-parallel ranks (axis 0 the batch), as a converted model's calls draw.

    Example:
        >>> import torch.nn.functional as F
        >>> q = k = v = torch.randn(1, 2, 4, 8)
        >>> out = attention(q, k, v, None, 0.0, True, None, False, seed=0)
        >>> sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        >>> torch.allclose(out, sdpa, atol=1e-6)
        True
    """
    if not isinstance(query, torch.Tensor):
        raise bad_type("query", query, "a tensor")
    device_type = query.device.type
    autocast_off: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if _autocast_enabled(device_type):
        # as autocast runs torch's attention: every input in its dtype, and the rest (float32
        # inside) as written, which autocast would otherwise put back in its dtype
        cast = torch.get_autocast_dtype(device_type)
        query, key, value = (tensor.to(cast) for tensor in (query, key, value))
        if attn_mask is not None and attn_mask.is_floating_point():
            attn_mask = attn_mask.to(cast)
        autocast_off = torch.autocast(device_type, enabled=False)
    with autocast_off:
        dtype = query.dtype
        if dtype in (torch.float16, torch.bfloat16):  # as torch's math attention: float32 inside
            query, key, value = query.float(), key.float(), value.float()
        length, source = query.size(-2), key.size(-2)
        factor = 1 / math.sqrt(query.size(-1)) if scale is None else scale
        if enable_gqa and query.dim() >= 3 and key.size(-3) != query.size(-3):
            key = key.repeat_interleave(query.size(-3) // key.size(-3), -3)
            value = value.repeat_interleave(query.size(-3) // value.size(-3), -3)
        root = math.sqrt(abs(factor))  # split between query and key, as torch's: smaller products
        scores = (query * math.copysign(root, factor)) @ (key * root).transpose(-2, -1)
        if is_causal:
            allowed = torch.ones(length, source, dtype=torch.bool, device=query.device).tril()
            scores = scores.masked_fill(~allowed, -math.inf)
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attn_mask, -math.inf)
            else:
                scores = scores + attn_mask
        # a row masked whole gives zeros, and zero gradients: its softmax would be NaN, and NaN
        # would reach the gradients of the scores through the softmax's backward pass
        blocked = (scores == -math.inf).all(dim=-1, keepdim=True)
        probs = torch.softmax(scores.masked_fill(blocked, 0.0), dim=-1).masked_fill(blocked, 0.0)
        offset: int | xdrop.Block = 0
        if data_parallel is not None:
            seed, offset = data_parallel.place(seed, probs)
        dropped: torch.Tensor = xdrop.dropout(probs, dropout_p, seed=seed, offset=offset)
        return (dropped @ value).to(dtype)
