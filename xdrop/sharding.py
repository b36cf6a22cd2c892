"""Masks of a block of a larger tensor: each element draws the counter it has in the whole.

Mask stream v1 gives the element at row-major index ``i`` of a tensor the counter ``offset + i``,
so a mask does not depend on how the tensor is split. A :class:`Block` says where an array lies in
a larger logical tensor of ``global_shape``; its element at local index ``(j_0, ..., j_{n-1})``
draws counter ``offset + sum_k (start_k + j_k) * stride_k``, with ``stride_k`` the product of
``global_shape[k + 1:]``. The block need not be contiguous in row-major order (a column slice is
not), and ``start`` may hold traced values (``jax.lax.axis_index`` under ``shard_map``).

The counters are built from one iota per axis, in 32-bit words with carries, so that they need
nothing of a backend but its word operations, and a compiler that partitions the array (XLA's
SPMD partitioner) partitions them along with it. ``docs/distributed.md`` shows the recipes.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from xdrop import seeds, spec
from xdrop.errors import Shown, TensorParallelError, bad_type, bad_value
from xdrop.protocol import (
    Array,
    Backend,
    Dim,
    FamilyBackend,
    Key,
    SeedBackend,
    WordArithmetic,
    Words,
    require,
)
from xdrop.validation import (
    as_integer,
    check_noise_shape,
    check_offset,
    holds_values_here,
    is_integer_dtype,
)

AXIS_LIMIT = spec.WORD_COUNT
"""The largest size of one axis of a logical tensor: an axis index is one 32-bit word."""
Start = Any  # a block's start on one axis: a Python int, or a 0-d integer array (maybe traced)


@dataclasses.dataclass(frozen=True)
class Block:
    """Where an array lies in a larger logical tensor, for ``xdrop.dropout(x, offset=block)``.

    The array's element at local index ``j`` draws counter
    ``offset + sum_k (start[k] + j[k]) * prod(global_shape[k + 1:])``: its row-major index in the
    logical tensor, plus ``offset``. So the array's mask is exactly its slice of the logical
    tensor's mask, ``dropout_mask(global_shape, p, seed=s, offset=offset)[start : start + shape]``,
    however the tensor is split, contiguous in memory or not.

    Args:
        global_shape: the logical tensor's shape (each size below ``2**32``).
        start: the index in the logical tensor of the array's first element, one entry per axis:
            Python or NumPy integers, or 0-d integer arrays of the array's framework (traced
            values are fine, such as ``jax.lax.axis_index(name) * local_size``). An array whose
            value is known (NumPy's at once, a framework's when the block is used) is checked as
            the integer it holds; a traced one only for its dtype.
        offset: added to every counter, as ``offset`` of :func:`xdrop.dropout`.

    Example:
        >>> import numpy as np, xdrop
        >>> whole = xdrop.dropout_mask((4, 6), 0.5, seed=0)
        >>> block = xdrop.Block((4, 6), (0, 3))  # columns 3 to 5 of a 4 x 6 tensor
        >>> right = xdrop.dropout_mask((4, 3), 0.5, seed=0, offset=block)
        >>> bool((right == whole[:, 3:]).all())
        True
    """

    global_shape: tuple[int, ...]
    start: tuple[Start, ...]
    offset: int = 0
    mesh_axes: frozenset[str] | None = dataclasses.field(default=None, repr=False, compare=False)
    """The mesh axes of ``shard_map`` that :func:`shard_map_block` placed the block by (None for
    other blocks): an array used with it must vary over exactly these."""

    def __init__(
        self, global_shape: Sequence[int], start: Sequence[Start] | None = None, offset: int = 0
    ) -> None:
        shape = _check_global_shape(global_shape)
        starts = (0,) * len(shape) if start is None else _check_start(start, shape)
        first = check_offset(offset)
        if first + math.prod(shape) > spec.SEED_COUNT:
            raise bad_value(
                "offset", offset, f"at most 2**64 - {math.prod(shape)} so that the counters fit"
            )
        object.__setattr__(self, "global_shape", shape)
        object.__setattr__(self, "start", starts)
        object.__setattr__(self, "offset", first)
        object.__setattr__(self, "mesh_axes", None)

    def resolve(self, xp: Backend, like: Array | None = None, name: str = "x") -> Block:
        """This block as ``xp`` runs it beside ``like`` (the array called ``name``): each start
        held in a concrete array of ``xp`` read as the integer it holds, so it goes through the
        checks of a Python int (a value past the axis would draw another element's counter); a
        traced start is checked for its dtype only, and so is one that holds no value beside a
        ``like`` that holds none either (torch's meta device)."""
        if all(isinstance(first, int) for first in self.start):
            return self
        allowed = f"integers or 0-d integer arrays of {name}'s framework"
        starts: list[Start] = []
        for first in self.start:
            if isinstance(first, int):
                starts.append(first)
                continue
            if not xp.is_array(first) or not is_integer_dtype(xp.dtype_name(first)):
                shown = Shown(_describe_start(xp, first), type(first).__name__)
                raise bad_type("start", shown, allowed)
            if xp.is_tracing(first) or not xp.holds_values(first):
                if not holds_values_here(xp, first, like):
                    shown = Shown(f"<{xp.dtype_name(first)} array that holds no value>")
                    raise bad_value("start", shown, f"{allowed} whose values can be read")
                starts.append(first)
                continue
            starts.append(int(xp.to_numpy(first)))
        resolved = Block(self.global_shape, starts, self.offset)
        object.__setattr__(resolved, "mesh_axes", self.mesh_axes)
        return resolved

    @property
    def strides(self) -> tuple[int, ...]:
        """The counters one step along each axis of the logical tensor moves (row-major)."""
        shape = self.global_shape
        return tuple(math.prod(shape[axis + 1 :]) for axis in range(len(shape)))

    def check_fits(self, shape: tuple[int | None, ...], argument: str = "x") -> None:
        """Raise unless an array of ``shape`` fits in the logical tensor at ``start``."""
        if len(shape) != len(self.global_shape):
            raise bad_value(
                "offset",
                self,
                f"a Block of the rank of {argument} ({len(shape)}), not {len(self.global_shape)}",
            )
        for axis, (size, first, whole) in enumerate(
            zip(shape, self.start, self.global_shape, strict=True)
        ):
            if size is not None and isinstance(first, int) and first + size > whole:
                raise bad_value(
                    "offset",
                    self,
                    f"a Block that holds {argument}: on axis {axis}, start {first} + size {size} "
                    f"is past the logical size {whole}",
                )


def chunk_block(
    global_shape: Sequence[int], dim: int, index: int, parts: int, offset: int = 0
) -> Block:
    """The :class:`Block` of chunk ``index`` of ``parts`` along ``dim``, as ``torch.chunk`` and
    DTensor's ``Shard(dim)`` split: chunks of ``ceil(n / parts)`` elements, the last ones smaller
    or empty. A tensor-parallel rank holding columns ``[a, b)`` of a weight is
    ``chunk_block(shape, dim=1, index=rank, parts=world_size)``.

    Args:
        global_shape: the logical tensor's shape.
        dim: the axis that is split (negative counts from the end).
        index: which chunk, in ``[0, parts)`` (a rank).
        parts: how many chunks (a world size), at least 1.
        offset: added to every counter.

    Example:
        >>> import xdrop
        >>> xdrop.chunk_block((4, 6), dim=1, index=1, parts=2).start
        (0, 3)
    """
    shape = _check_global_shape(global_shape)
    axis = _check_dim(dim, len(shape))
    count = _check_count("parts", parts, 1, None)
    rank = _check_count("index", index, 0, count)
    first, _ = chunk_bounds(shape[axis], count, rank)
    start = tuple(first if k == axis else 0 for k in range(len(shape)))
    return Block(shape, start, offset)


def chunk_bounds(size: int, parts: int, index: int) -> tuple[int, int]:
    """``[first, stop)`` of chunk ``index`` when ``size`` is cut as ``torch.chunk`` does."""
    step = -(-size // parts)
    first = min(index * step, size)
    return first, min(first + step, size)


# -- counters and mask of a block -------------------------------------------------------------------
def times_constant(ops: WordArithmetic, words: Words, factor: int) -> tuple[Words, Words]:
    """``words * factor mod 2**64`` as words ``(high, low)``, for a host integer ``factor``:
    doubling and adding over the bits of ``factor`` (Horner), with only ``add`` and shifts."""
    zero = ops.word_xor(words, words)  # zeros of the words' shape
    if factor == 0:
        return zero, zero
    high, low = zero, words
    for bit in reversed(range(factor.bit_length() - 1)):
        high = ops.word_add(ops.word_add(high, high), ops.word_shift_right(low, 31))
        low = ops.word_add(low, low)
        if factor >> bit & 1:
            high, low = add_pairs(ops, (high, low), (zero, words))
    return high, low


def add_pairs(
    ops: WordArithmetic, a: tuple[Words, Words], b: tuple[Words, Words]
) -> tuple[Words, Words]:
    """``a + b mod 2**64`` of words ``(high, low)``, broadcasting: the low word carries."""
    low = ops.word_add(a[1], b[1])
    carry = ops.word_from_bool(ops.word_less_than(low, a[1]))
    return ops.word_add(ops.word_add(a[0], b[0]), carry), low


def block_counter_words(
    xp: Backend, block: Block, shape: tuple[Dim, ...], like: Array | None
) -> tuple[Words, Words]:
    """The counter words ``(c >> 32, c & 0xFFFFFFFF)`` of each element of an array of ``shape``
    at ``block``: ``c = offset + sum_k (start_k + iota_k) * stride_k``, each term one iota along
    its axis, broadcast against the others."""
    rank = len(shape)
    total = spec.key_words(xp, block.offset, like)
    for axis, (size, first, stride) in enumerate(
        zip(shape, block.start, block.strides, strict=True)
    ):
        index = xp.iota(size, like)
        if not isinstance(first, int):
            first_word = require(xp, SeedBackend, *seeds.SEED_IN_AN_ARRAY).seed_words(first)[1]
            index = xp.word_add(index, first_word)  # a 0-d integer array: its low word
        elif first:
            index = xp.word_add(index, xp.word(first, like))
        along = (1,) * axis + (size,) + (1,) * (rank - axis - 1)
        term = times_constant(xp, index, stride)
        total = add_pairs(xp, (xp.reshape(term[0], along), xp.reshape(term[1], along)), total)
    return total  # both words have the full shape: every term was added to the running total


def block_keep_mask(
    xp: Backend,
    key: Key,
    block: Block,
    shape: tuple[Dim, ...],
    kept_count: Words | int,
    like: Array | None = None,
) -> Array:
    """The boolean keep mask of an array of ``shape`` at ``block``: element ``j`` is kept when
    ``bits(c_j) >> 9 < C`` with ``c_j`` its counter in the logical tensor (``block_counter_words``)."""
    if isinstance(kept_count, int) and kept_count in (0, spec.ALL_KEPT):
        return xp.full_mask(shape, kept_count == spec.ALL_KEPT, like)
    y0, y1 = spec.threefry2x32(xp, key, block_counter_words(xp, block, shape, like))
    keep = spec.kept(xp, xp.word_ixor(y0, y1), kept_count)
    return xp.reshape(keep, shape)  # a 0-d array stays 0-d; others already have the shape


def block_normals(
    xp: FamilyBackend, key: Key, block: Block, shape: tuple[Dim, ...], like: Array | None = None
) -> Array:
    """The standard normals of an array of ``shape`` at ``block`` (``gaussian_dropout``): element
    ``j`` from the two words of its counter in the logical tensor, as :func:`xdrop.spec.normals`
    draws them for the whole."""
    y0, y1 = spec.threefry2x32(xp, key, block_counter_words(xp, block, shape, like))
    return xp.reshape(spec.box_muller(xp, y0, y1), shape)


# -- the engines' layouts -----------------------------------------------------------------------------
def shard_map_block(local_shape: Sequence[int], partition: Sequence[Any], offset: int = 0) -> Block:
    """The :class:`Block` of this shard inside ``jax.shard_map``, so that
    ``xdrop.dropout(x, p, seed=s, offset=shard_map_block(x.shape, spec))`` on each shard gives
    the shards of ``xdrop.dropout`` on the whole array.

    Axis ``k`` of the logical array is ``local_shape[k] * n_k`` long, ``n_k`` the product of the
    sizes of the mesh axes ``partition[k]`` names, and the shard starts at
    ``local_shape[k] * i_k``, ``i_k`` this device's index over those mesh axes (row-major, as
    ``PartitionSpec`` orders them), from ``jax.lax.axis_index``. Call it inside the function
    ``shard_map`` maps.

    ``partition`` must be the one ``in_specs`` gives ``x``: with another, shards that differ
    would draw the same mask (a missing mesh axis) or copies of one shard different masks (an
    extra one). Where JAX tracks the mesh axes a value varies over (``shard_map``'s
    ``check_vma=True``, the default), every function that takes a Block (:func:`xdrop.dropout`,
    :func:`xdrop.dropout_mask` with ``like``, the dropout family) checks that its array varies
    over exactly the mesh axes ``partition`` names, and refuses the block otherwise. JAX tracks
    only the set of those axes, so two mistakes cannot be checked: which of ``x``'s axes each
    name splits (``P("d", None)`` and ``P(None, "d")`` vary alike), and the order of the names
    inside one entry (``P(("a", "b"))`` and ``P(("b", "a"))`` vary alike, but number the shards
    in another order: each shard would draw another shard's mask).

    Args:
        local_shape: the shard's shape (``x.shape`` inside the mapped function).
        partition: the ``PartitionSpec`` of ``x`` in ``in_specs`` (or a sequence of its
            entries): per axis ``None``, a mesh axis name, or a tuple of names, in the order
            ``in_specs`` gives them; missing trailing entries are ``None``. Each name must be a
            mesh axis of the enclosing ``shard_map``.
        offset: added to every counter.

    Example::

        @functools.partial(jax.shard_map, mesh=mesh, in_specs=P("data", "model"),
                           out_specs=P("data", "model"))
        def step(x):
            block = xdrop.shard_map_block(x.shape, P("data", "model"))
            return xdrop.dropout(x, 0.1, seed=seed, offset=block)
    """
    import jax
    import jax.numpy as jnp

    shape = tuple(_check_global_shape(local_shape, "local_shape"))
    entries = _check_partition(partition, jax.sharding.PartitionSpec)
    if len(entries) > len(shape):
        raise bad_value(
            "partition", partition, f"at most one entry per axis of the shard ({len(shape)})"
        )
    entries += (None,) * (len(shape) - len(entries))
    manual = manual_axes()
    global_shape, start = [], []
    for size, names in zip(shape, entries, strict=True):
        axes = () if names is None else _names(names)
        if manual is not None and not set(axes) <= manual:
            allowed = f"mesh axes of the enclosing shard_map {sorted(manual)} and None"
            if not manual:
                allowed += " (call it inside the function that jax.shard_map maps)"
            raise bad_value("partition", partition, allowed)
        count, index = 1, jnp.zeros((), jnp.int32)
        for name in axes:
            axis_size = int(jax.lax.axis_size(name))
            index = index * axis_size + jax.lax.axis_index(name)
            count *= axis_size
        global_shape.append(size * count)
        start.append(index * size if axes else 0)
    block = Block(global_shape, start, offset)
    named = frozenset(name for names in entries if names is not None for name in _names(names))
    object.__setattr__(block, "mesh_axes", named)
    return block


def _names(entry: Any) -> tuple[str, ...]:
    """The mesh axis names of one entry of a ``PartitionSpec``."""
    return (entry,) if isinstance(entry, str) else tuple(entry)


def _check_partition(partition: object, spec_type: type) -> tuple[Any, ...]:
    """The entries of a ``PartitionSpec`` (``spec_type``, which is no ``Sequence`` in every JAX)
    or of a sequence like one: each None, a mesh axis name, or a sequence of names."""
    allowed = (
        "a PartitionSpec (or a sequence) whose entries are None, a mesh axis name or a tuple of "
        "mesh axis names"
    )
    if isinstance(partition, (str, bytes)) or not isinstance(partition, (spec_type, Sequence)):
        raise bad_type("partition", partition, allowed)
    for entry in partition:  # type: ignore[attr-defined]
        names = () if entry is None or isinstance(entry, str) else entry
        if isinstance(names, bytes) or not isinstance(names, Sequence):
            raise bad_type("partition", partition, allowed)
        if not all(isinstance(name, str) for name in names):
            raise bad_type("partition", partition, allowed)
    return tuple(partition)  # type: ignore[arg-type]


def manual_axes() -> frozenset[str] | None:
    """The mesh axes ``shard_map`` maps over here (empty outside it), or None where this JAX
    does not say."""
    import jax

    get_mesh = getattr(jax.sharding, "get_abstract_mesh", None)
    axes = getattr(get_mesh(), "manual_axes", None) if get_mesh is not None else None
    return None if axes is None else frozenset(axes)


def _varying_axes(value: Any) -> frozenset[str] | None:
    """The mesh axes a JAX value varies over inside ``shard_map``, as JAX tracks them
    (``check_vma``), or None where this JAX does not say."""
    import jax

    typeof = getattr(jax, "typeof", None)
    if typeof is None:
        return None
    aval = typeof(value)
    manual_type = getattr(aval, "manual_axis_type", None)  # JAX 0.10
    varying = getattr(manual_type, "varying", getattr(aval, "vma", None))
    return None if varying is None else frozenset(varying)


def check_shard_map_axes(block: Block, x: Any, name: str = "x") -> None:
    """Raise unless ``x`` (the array called ``name``) varies over the mesh axes that ``block``
    (a :func:`shard_map_block`) was placed by. Unchecked where JAX does not track them
    (``check_vma=False``), and for a call without an array (``dropout_mask`` without ``like``),
    whose mask varies over no mesh axis."""
    if block.mesh_axes is None or x is None:
        return
    import jax

    if not isinstance(x, (jax.Array, jax.core.Tracer)):
        return
    varying = _varying_axes(x)
    manual = manual_axes()
    if varying is None or not manual:
        return
    # an axis index varies over its axis only where JAX tracks variation (check_vma=True)
    probe = _varying_axes(jax.lax.axis_index(next(iter(sorted(manual)))))
    if not probe or varying == block.mesh_axes:
        return
    shown = Shown(f"<shard_map_block of a partition naming mesh axes {sorted(block.mesh_axes)}>")
    allowed = (
        f"the Block of {name}'s own PartitionSpec in shard_map's in_specs, naming the mesh axes "
        f"{name} varies over {sorted(varying)}: otherwise shards that differ draw the same mask, "
        "or copies of one shard different masks"
    )
    raise bad_value("offset", shown, allowed)


def is_dtensor(x: object) -> bool:
    """Whether ``x`` is a PyTorch DTensor (without importing torch)."""
    module = sys.modules.get("torch.distributed.tensor")
    kind = getattr(module, "DTensor", None)
    return kind is not None and isinstance(x, kind)


def dtensor_global_shape(x: Any) -> tuple[int, ...]:
    """The global shape of the DTensor ``x``, read where ``torch.compile`` guards it.

    Dynamo guards a DTensor by its local tensor and by its spec *without* its shape, and reads
    ``x.shape`` as constants: a graph traced for one global shape would be reused for another
    whose local shards have the same sizes (``(8, 5)`` and ``(7, 5)`` split over 2 ranks give
    rank 0 four rows each), and would draw the other shape's counters. Read from the spec's own
    tensor metadata, the sizes become values of a guarded object, so a new global shape traces
    anew (or runs with the sizes as symbols)."""
    spec = getattr(x, "_spec", None)
    meta = getattr(spec, "tensor_meta", None)
    shape = getattr(meta, "shape", None)
    return tuple(x.shape if shape is None else shape)


def dtensor_block(x: Any, offset: int) -> Block:
    """The :class:`Block` of this rank's local tensor of the DTensor ``x``: ``Shard(d)`` splits
    axis ``d`` as ``torch.chunk`` does, in the order of the mesh's axes (a later mesh axis splits
    the chunk an earlier one left); ``Replicate()`` and ``Partial()`` hold the whole axis (dropout
    is linear in ``x`` for a fixed mask, so a partial sum's mask is the sum's)."""
    from torch.distributed.tensor import Shard

    shape = list(dtensor_global_shape(x))
    size, start = list(shape), [0] * len(shape)
    coordinate = x.device_mesh.get_coordinate()
    for mesh_axis, placement in enumerate(x.placements):
        if not isinstance(placement, Shard):
            continue
        if type(placement) is not Shard:  # a strided or other custom layout of shards
            raise bad_value("x", placement, "a DTensor of Shard, Replicate or Partial placements")
        dim = placement.dim
        first, stop = chunk_bounds(size[dim], x.device_mesh.size(mesh_axis), coordinate[mesh_axis])
        start[dim] += first
        size[dim] = stop - first
    return Block(shape, start, offset)


def dtensor_mask_block(
    x: Any, offset: int, noise_shape: Sequence[int | None] | None
) -> tuple[Block, tuple[int, ...] | None]:
    """The :class:`Block` that this rank's local tensor of the DTensor ``x`` passes as
    ``offset``, and the local noise shape, for a call with ``noise_shape`` (given against ``x``'s
    global shape, as for a tensor in one process).

    Without a noise shape (or with ``x``'s own) the Block places the local tensor in ``x``. With
    one that shares axes, the whole tensor's mask is drawn at the global noise shape, so the Block
    places the local mask there: 1 (start 0) on each shared axis, the local tensor's place on
    the others; every rank then draws the same decision for a shared axis, split or not."""
    block = dtensor_block(x, offset)
    whole = block.global_shape
    noise = check_noise_shape(noise_shape, whole)
    if noise == whole:
        return block, None
    local = tuple(x.to_local().shape)
    shared = [entry == 1 and size != 1 for entry, size in zip(noise, whole, strict=True)]
    placed = Block(
        tuple(1 if share else size for share, size in zip(shared, whole, strict=True)),
        tuple(0 if share else first for share, first in zip(shared, block.start, strict=True)),
        block.offset,
    )
    return placed, tuple(1 if share else size for share, size in zip(shared, local, strict=True))


def is_dtensor_local(x: Any) -> bool:
    """Whether the plain torch tensor ``x`` is a DTensor's ``to_local()``, as a tensor-parallel
    plan hands on its output by default: global data, the same on each rank of the DTensor's
    mesh or placed by it. Known from the autograd record (:func:`_autograd_node`)."""
    return "torch.distributed.tensor" in sys.modules and _is_to_local(_autograd_node(x))


def _autograd_node(x: Any) -> Any:
    """``x.grad_fn`` where it can tell a tensor-parallel plan's plain output apart, else None:
    eagerly, with a process group; inside ``torch.compile`` only while a plan that hands on
    shards as plain tensors exists, where reading it breaks the graph so that the draw runs
    eagerly (a trace keeps no autograd record, and other programs keep their whole graphs)."""
    import torch
    import torch.distributed as dist

    if torch.compiler.is_compiling():
        if not _plans_hand_on_shards():
            return None
    elif not (dist.is_available() and dist.is_initialized()):
        return None  # no process group: no sharded DTensor
    return getattr(x, "grad_fn", None)


def _plans_hand_on_shards() -> bool:
    """Whether a tensor-parallel plan (``ColwiseParallel()``, ``PrepareModuleOutput``...) that
    hands on a ``Shard`` as a plain tensor (``use_local_output=True``) is alive. Asked while
    ``torch.compile`` traces, once per trace, so the scan of the live objects costs no step."""
    global _COMPILED_WITH_PLANS
    parallel = sys.modules.get("torch.distributed.tensor.parallel")
    import torch.distributed as dist

    _COMPILED_WITH_PLANS = (
        parallel is not None
        and dist.is_available()
        and dist.is_initialized()
        and any(
            _hands_on_shards(candidate, parallel.ParallelStyle) for candidate in gc.get_objects()
        )
    )
    return _COMPILED_WITH_PLANS


_COMPILED_WITH_PLANS = False
"""Whether such a plan existed when ``torch.compile`` last traced a draw: the draw then runs
eagerly after a graph break, on a tensor whose autograd record a compiled graph may hide."""


def _hands_on_shards(candidate: object, style: type) -> bool:
    """Whether ``candidate`` is a tensor-parallel plan that hands on a ``Shard`` as a plain
    tensor: a style object (``ColwiseParallel()`` kept in a variable), or the hook a plan applied
    to a module leaves (``functools.partial(style._prepare_output_fn, layouts,
    use_local_output)``), which lives as long as the module does."""
    if type(candidate) is functools.partial:
        function = candidate.func
        if not (
            getattr(function, "__name__", "") == "_prepare_output_fn"
            and getattr(function, "__module__", "").startswith("torch.distributed.tensor")
            and len(candidate.args) >= 2
        ):
            return False
        layouts, use_local_output = candidate.args[:2]
    elif issubclass(type(candidate), style):  # type(): a dead weak proxy's isinstance raises
        layouts = getattr(candidate, "output_layouts", ())
        use_local_output = getattr(candidate, "use_local_output", False)
    else:
        return False
    from torch.distributed.tensor import Shard

    layouts = tuple(layouts) if isinstance(layouts, (tuple, list)) else (layouts,)
    return bool(use_local_output) and any(isinstance(layout, Shard) for layout in layouts)


# what torch.compiler.assume_constant_result marks: Dynamo runs the function while it traces and
# keeps its result as a constant (set here, where torch may not be imported)
_plans_hand_on_shards._dynamo_marked_constant = True  # type: ignore[attr-defined]


TENSOR_PARALLEL_SEARCH = 8
"""Autograd nodes above a plain tensor searched for the local shard of a sharded DTensor."""


def local_shard_of(x: Any, offset: object) -> Any:
    """The DTensor whose local shard the plain torch tensor ``x`` is, or None.

    ``DTensor.to_local()`` (which ``ColwiseParallel()`` and the other plans run on their output
    by default, ``use_local_output=True``) records the DTensor's spec on the autograd node of
    its result. When ``x`` is that result, it is rebuilt as the DTensor (no communication), so
    its mask is the unsharded tensor's. When the node lies a few operations further up
    (``Linear -> GELU -> dropout``), the shard cannot be placed, and :class:`TensorParallelError`
    says so rather than draw another mask than the unsharded model's. Only a tensor that
    records autograd can be recognised (not under ``torch.no_grad``; under ``torch.compile``
    see :func:`_autograd_node`); a caller that passes a :class:`Block` offset has placed ``x``
    itself and is left alone."""
    if isinstance(offset, Block) or "torch.distributed.tensor" not in sys.modules:
        return None
    node = _autograd_node(x)
    if node is None or is_dtensor(x):
        return None
    if _is_to_local(node):
        spec = _sharded_spec(node)
        if spec is None:  # a replicated or partial DTensor's local tensor: the whole tensor
            return None
        if _spec_local_shape(spec) == tuple(x.shape):
            from torch.distributed.tensor import DTensor

            return DTensor.from_local(
                x,
                spec.mesh,
                spec.placements,
                run_check=False,
                shape=spec.tensor_meta.shape,
                stride=spec.tensor_meta.stride,
            )
    _refuse_if_compiled(node)
    seen, todo = 0, [parent for parent, _ in node.next_functions if parent is not None]
    while todo and seen < TENSOR_PARALLEL_SEARCH:
        above = todo.pop(0)
        seen += 1
        _refuse_if_compiled(above)
        if not _is_to_local(above):
            todo += [parent for parent, _ in above.next_functions if parent is not None]
            continue
        spec = _sharded_spec(above)
        if spec is not None:
            raise TensorParallelError(
                f"x is computed from the local shard of a DTensor placed {tuple(spec.placements)}"
                " (a tensor-parallel layer's output with use_local_output=True, the default of "
                "ColwiseParallel()): as a plain tensor its mask would differ from the unsharded "
                "model's. Build that layer's plan with use_local_output=False (e.g. "
                "ColwiseParallel(use_local_output=False)) so that dropout gets a DTensor, or "
                "pass offset=xdrop.Block(global_shape, start) placing x"
            )
        # a replicated DTensor's local tensor: what came before it is the same on every rank
    return None


def global_noise_shape(
    noise_shape: Sequence[int | None] | None, local: Any, shard: Any
) -> tuple[int, ...] | None:
    """A noise shape given against the local tensor ``local`` of the DTensor ``shard``, given
    against its global shape instead: an axis it does not share (its entry is the local size)
    takes the global size, a shared one (1) stays 1."""
    if noise_shape is None:
        return None
    local_shape = tuple(local.shape)
    noise = check_noise_shape(noise_shape, local_shape)
    return tuple(
        whole if entry == size else 1
        for entry, size, whole in zip(noise, local_shape, dtensor_global_shape(shard), strict=True)
    )


def _refuse_if_compiled(node: Any) -> None:
    """Refuse a tensor computed by a graph that ``torch.compile`` compiled while a plan hands on
    shards as plain tensors: the graph's one autograd record hides any ``to_local()`` in it."""
    if _COMPILED_WITH_PLANS and type(node).__name__ == "CompiledFunctionBackward":
        raise TensorParallelError(
            "x comes from a graph torch.compile compiled ahead of time (inductor, aot_eager) "
            "while a tensor-parallel plan hands on shards as plain tensors (use_local_output="
            "True, the default of ColwiseParallel()): the compiled graph hides whether x is "
            "such a shard, whose mask would differ from the unsharded model's, so every "
            "dropout of such a graph's output is refused. Build those plans with "
            "use_local_output=False so that dropout gets DTensors, compile with "
            'backend="eager", or pass offset=xdrop.Block(global_shape, start) placing x'
        )


def _is_to_local(node: Any) -> bool:
    """Whether the autograd ``node`` is the record of a ``DTensor.to_local()``."""
    return type(node).__name__ == "_ToTorchTensorBackward"


def _sharded_spec(node: Any) -> Any:
    """The DTensor spec that ``to_local()`` recorded on ``node``, if it places a ``Shard``."""
    spec = getattr(node, "dtensor_spec", None)
    placements = getattr(spec, "placements", ())
    if getattr(spec, "tensor_meta", None) is None:
        return None
    return spec if any(hasattr(placement, "dim") for placement in placements) else None


def _spec_local_shape(spec: Any) -> tuple[int, ...]:
    """This rank's local shape of a DTensor of ``spec``, as :func:`dtensor_block` splits it."""
    size = list(spec.tensor_meta.shape)
    coordinate = spec.mesh.get_coordinate()
    for mesh_axis, placement in enumerate(spec.placements):
        dim = getattr(placement, "dim", None)
        if dim is not None:
            first, stop = chunk_bounds(size[dim], spec.mesh.size(mesh_axis), coordinate[mesh_axis])
            size[dim] = stop - first
    return tuple(size)


def dtensor_result(x: Any, local: Any) -> Any:
    """This rank's result (a tensor, or a tuple of them) as DTensors of ``x``'s mesh, placements,
    shape and stride: ``from_local`` without communication."""
    from torch.distributed.tensor import DTensor

    if isinstance(local, tuple):
        return tuple(dtensor_result(x, part) for part in local)
    return DTensor.from_local(
        local, x.device_mesh, x.placements, run_check=False, shape=x.shape, stride=x.stride()
    )


# -- argument checks ----------------------------------------------------------------------------------
def _check_global_shape(shape: object, argument: str = "global_shape") -> tuple[int, ...]:
    allowed = "a sequence of integers in [0, 2**32)"
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise bad_type(argument, shape, allowed)
    sizes = tuple(as_integer(size) for size in shape)
    if any(size is None for size in sizes):
        raise bad_type(argument, shape, allowed)
    if not all(0 <= size < AXIS_LIMIT for size in sizes):  # type: ignore[operator]
        raise bad_value(argument, shape, allowed)
    return sizes  # type: ignore[return-value]


def _check_start(start: object, shape: tuple[int, ...]) -> tuple[Start, ...]:
    allowed = (
        f"{len(shape)} entries (one per axis of global_shape {shape}): integers or 0-d integer "
        "arrays"
    )
    if isinstance(start, (str, bytes)) or not isinstance(start, Sequence):
        raise bad_type("start", start, allowed)
    if len(start) != len(shape):
        raise bad_value("start", start, allowed)
    starts: list[Start] = []
    for axis, (first, size) in enumerate(zip(start, shape, strict=True)):
        if isinstance(first, (np.ndarray, np.generic)) and first.shape == ():
            # its value is known now: checked as the number it holds, like np.int32(5)
            if first.dtype.kind not in "iu":
                raise bad_type("start", start, allowed)
            first = int(first)
        value = as_integer(first)
        if value is None:
            if getattr(first, "shape", None) != () or isinstance(first, (bool, float)):
                raise bad_type("start", start, allowed)
            starts.append(first)
        elif not 0 <= value <= size:
            raise bad_value("start", start, f"entries in [0, size]: axis {axis} has size {size}")
        else:
            starts.append(value)
    return tuple(starts)


def _describe_start(xp: Backend, first: object) -> str:
    """A start that is not an integer array of ``xp``, as an error message shows it."""
    if not xp.is_array(first):
        return f"<{type(first).__name__}, not an array of {xp.name}>"
    return f"<{xp.dtype_name(first)} array>"


def _check_dim(dim: object, rank: int) -> int:
    value = as_integer(dim)
    if value is None:
        raise bad_type("dim", dim, f"an integer in [-{rank}, {rank})")
    if not -rank <= value < rank:
        raise bad_value("dim", dim, f"an integer in [-{rank}, {rank})")
    return value % rank


def _check_count(argument: str, value: object, low: int, high: int | None) -> int:
    allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high})"
    number = as_integer(value)
    if number is None:
        raise bad_type(argument, value, allowed)
    if number < low or (high is not None and number >= high):
        raise bad_value(argument, value, allowed)
    return number
