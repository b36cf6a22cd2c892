"""Run by tests/test_distributed.py: ``python torch_compile_tp.py PORT``.

Two ranks joined by gloo on 127.0.0.1. Each check compares this rank's local result with its
part of the one-process result (no collective is needed to compare):

- DTensors under eager and ``torch.compile`` (default settings, ``dynamic=True``,
  ``dynamic=False``) over global shapes that change between calls, uneven shards included;
- noise shapes, ``drop_path``, ``drop_block``, ``alpha_dropout`` and ``gaussian_dropout`` of
  DTensors, and the typed errors where a placement cannot be served;
- tensor parallelism with the default ``ColwiseParallel()``, ``RowwiseParallel()`` and
  ``SequenceParallel()`` plans against the unsharded model, eager and compiled;
- Megatron-style column-parallel slices, whose masks do not change with the degree (1 vs 2).
"""

from __future__ import annotations

import copy
import datetime
import gc
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

import xdrop
from xdrop.layers.torch import Dropout

SEED, P = 20240613, 0.4
WORLD = 2
# Shard(0) over 2 ranks: (8, 5) and (9, 5) give rank 1 4 rows each, starting at row 4 and 5, so
# a graph traced for one global shape fits the other's local shard and would draw its counters;
# (7, 5) is uneven, (3, 5) and (1, 5) leave rank 1 fewer rows or none
SHAPES = [(8, 5), (9, 5), (7, 5), (6, 5), (3, 5), (1, 5), (9, 4)]


def piece(full: torch.Tensor, placement: object, rank: int) -> torch.Tensor:
    """This rank's part of ``full`` under ``placement`` (chunks as torch.chunk cuts them)."""
    if not isinstance(placement, Shard):
        return full
    dim = placement.dim % full.ndim
    step = -(-full.shape[dim] // WORLD)
    first = min(rank * step, full.shape[dim])
    return full.narrow(dim, first, min(step, full.shape[dim] - first))


def as_dtensor(full: torch.Tensor, mesh: DeviceMesh, placement: object, rank: int) -> DTensor:
    local = piece(full, placement, rank).contiguous()
    return DTensor.from_local(
        local, mesh, [placement], run_check=False, shape=full.shape, stride=full.stride()
    )


def check_compiled_dtensors(rank: int, mesh: DeviceMesh) -> None:
    """Every compile setting gives the eager masks while the global shape changes. Dynamo's
    guards are what is checked, so the graphs run on its "eager" backend (inductor would only
    add minutes of compilation)."""

    def step(v: DTensor) -> DTensor:
        return xdrop.dropout(v, P, seed=SEED)

    settings: dict[str, Callable[..., Any]] = {
        "eager": step,
        "default": torch.compile(step, backend="eager"),
        "dynamic=True": torch.compile(step, backend="eager", dynamic=True),
        "dynamic=False": torch.compile(step, backend="eager", dynamic=False),
    }
    for placement, names in ((Shard(0), list(settings)), (Shard(1), ["eager", "default"])):
        for name in names:
            function = settings[name]
            torch._dynamo.reset()
            for shape in SHAPES:
                full = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
                y = function(as_dtensor(full, mesh, placement, rank))
                expected = piece(xdrop.dropout(full, P, seed=SEED), placement, rank)
                where = f"rank {rank}, {name}, {placement}, shape {shape}"
                assert isinstance(y, DTensor), where
                assert torch.equal(y.to_local(), expected), where


FAMILY: dict[str, Callable[[Any], Any]] = {
    "whole rows": lambda v: xdrop.dropout(v, P, seed=SEED, noise_shape=(None, 1, 1)),
    "whole channels": lambda v: xdrop.dropout(v, P, seed=SEED, noise_shape=(v.shape[0], 1, None)),
    "noise shape of the last axis": lambda v: xdrop.dropout(v, P, seed=SEED, noise_shape=(1, 1, 4)),
    "drop_path": lambda v: xdrop.drop_path(v, P, seed=SEED, offset=5),
    "drop_path batch": lambda v: xdrop.drop_path(v, P, seed=SEED, mode="batch"),
    "alpha_dropout": lambda v: xdrop.alpha_dropout(v, P, seed=SEED),
    "alpha_dropout rows": lambda v: xdrop.alpha_dropout(v, P, seed=SEED, noise_shape=(None, 1, 1)),
    "gaussian_dropout": lambda v: xdrop.gaussian_dropout(v, P, seed=SEED, offset=3),
    "gaussian_dropout rows": lambda v: xdrop.gaussian_dropout(
        v, P, seed=SEED, noise_shape=(None, 1, 1)
    ),
}
BLOCKS: dict[str, Callable[[Any], Any]] = {
    "drop_block": lambda v: xdrop.drop_block(v, P, 3, seed=SEED),
    "drop_block coupled": lambda v: xdrop.drop_block(v, P, 3, seed=SEED, couple_channels=True),
    "drop_block with_noise": lambda v: xdrop.drop_block(v, P, 3, seed=SEED, with_noise=True),
}


def check_family(rank: int, mesh: DeviceMesh) -> None:
    """Noise shapes and the dropout family on DTensors: the whole tensor's result, split."""
    for shape in ((5, 3, 4), (1, 3, 4)):  # uneven rows; one row (rank 1 holds none of axis 0)
        full = torch.randn(shape, generator=torch.Generator().manual_seed(3))
        for placement in (Shard(0), Shard(1), Shard(2), Replicate()):
            x = as_dtensor(full, mesh, placement, rank)
            for name, function in FAMILY.items():
                y = function(x)
                where = f"rank {rank}, {name}, {placement}, shape {shape}"
                assert isinstance(y, DTensor), where
                assert torch.equal(y.to_local(), piece(function(full), placement, rank)), where
    maps = torch.randn(3, 5, 6, 7, generator=torch.Generator().manual_seed(4))
    for placement in (Shard(0), Shard(1), Replicate()):
        x = as_dtensor(maps, mesh, placement, rank)
        for name, function in BLOCKS.items():
            y = function(x)
            where = f"rank {rank}, {name}, {placement}"
            assert torch.equal(y.to_local(), piece(function(maps), placement, rank)), where
    try:  # a split of the maps cannot be served: refused, naming the DTensor
        xdrop.drop_block(as_dtensor(maps, mesh, Shard(2), rank), P, 3, seed=SEED)
    except xdrop.ArgumentValueError as error:
        assert "DTensor split only on its batch and channel axes" in str(error), error
    else:
        raise AssertionError("drop_block of a DTensor split on a spatial axis ran")
    check_partial_sums(rank, mesh, maps)


def check_partial_sums(rank: int, mesh: DeviceMesh, maps: torch.Tensor) -> None:
    """A Partial() DTensor's summands: what is linear in x (a mask and a factor) gives the
    sum's result; what adds constants or noise (alpha dropout, DropBlock's normals) would add
    them once per rank, and is refused."""
    part = DTensor.from_local(maps / WORLD, mesh, [Partial()], run_check=False)
    linear = {"dropout": lambda v: xdrop.dropout(v, P, seed=SEED)} | BLOCKS
    linear.pop("drop_block with_noise")
    for name, function in linear.items():
        y = function(part).full_tensor()
        torch.testing.assert_close(y, function(maps), msg=f"rank {rank}, Partial, {name}")
    affine = {
        "alpha_dropout": FAMILY["alpha_dropout"],
        "with_noise": BLOCKS["drop_block with_noise"],
        # a tensor rate's value is not read, 0 included
        "alpha_dropout at a tensor rate of 0": lambda v: xdrop.alpha_dropout(
            v, torch.tensor(0.0), seed=SEED
        ),
    }
    for name, function in affine.items():
        try:
            function(part)
        except xdrop.ArgumentValueError as error:
            assert "redistribute it to Replicate()" in str(error), error
        else:
            raise AssertionError(f"{name} of a Partial DTensor ran")
    # in evaluation, or at a rate of 0, nothing is drawn or added: x's summands, still Partial()
    for case, unchanged in {
        "evaluation": xdrop.alpha_dropout(part, P, seed=SEED, training=False),
        "evaluation with_noise": xdrop.drop_block(
            part, P, 3, seed=SEED, with_noise=True, training=False
        ),
        "rate 0": xdrop.alpha_dropout(part, 0.0, seed=SEED),
        "rate 0 as a NumPy number": xdrop.alpha_dropout(part, np.float32(0), seed=SEED),
        "rate 0 with_noise": xdrop.drop_block(part, 0, 3, seed=SEED, with_noise=True),
    }.items():
        assert unchanged.placements == part.placements, (case, unchanged.placements)
        assert torch.equal(unchanged.to_local(), part.to_local()), f"rank {rank}, {case}"


def models(dp: DeviceMesh) -> tuple[torch.nn.Sequential, torch.nn.Sequential]:
    """A 2-layer MLP with xdrop's Dropout after its first Linear, and one with a GELU between;
    ``dp``: the data-parallel ranks (this rank alone: the ranks are tensor-parallel ranks)."""
    torch.manual_seed(0)  # the same weights on every rank and in the unsharded model
    direct = torch.nn.Sequential(
        torch.nn.Linear(6, 16),
        Dropout(P, seed=SEED, data_parallel_group=dp),
        torch.nn.Linear(16, 6),
    )
    activated = torch.nn.Sequential(
        torch.nn.Linear(6, 16),
        torch.nn.GELU(),
        Dropout(P, seed=SEED, data_parallel_group=dp),
        torch.nn.Linear(16, 6),
    )
    return direct, activated


def hidden_mask(
    model: torch.nn.Sequential, x: torch.Tensor, call: Callable[..., Any] | None = None
) -> torch.Tensor:
    """The dropout layer's keep mask in ``(call or model)(x)``: where its output is 0 and its
    input is not (this rank's local part of a DTensor)."""
    seen: dict[str, torch.Tensor] = {}
    dropout = next(module for module in model if isinstance(module, Dropout))

    def hook(_: torch.nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        local = [t.to_local() if isinstance(t, DTensor) else t for t in (inputs[0], output)]
        seen["keep"] = ~((local[1] == 0) & (local[0] != 0))

    handle = dropout.register_forward_hook(hook)
    (call or model)(x).sum().backward()
    handle.remove()
    return seen["keep"]


def check_tensor_parallel(rank: int, mesh: DeviceMesh) -> None:
    """The default plans against the unsharded model, eager and compiled: the same hidden
    mask (this rank's columns) and the same output; a GELU between the plan's Linear and the
    dropout is refused, naming use_local_output=False, with which it is right."""
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(5))
    dp = init_device_mesh("cpu", (1, WORLD), mesh_dim_names=("dp", "tp"))["dp"]
    direct, activated = models(dp)
    for compiled in (False, True):
        for reference, local_output in ((direct, True), (activated, False)):
            model = copy.deepcopy(reference)
            last = str(len(reference) - 1)
            plan = {"0": ColwiseParallel(use_local_output=local_output), last: RowwiseParallel()}
            parallelize_module(model, mesh, plan)
            run = torch.compile(model, backend="eager") if compiled else model
            unsharded = copy.deepcopy(reference)
            expected = piece(hidden_mask(unsharded, x), Shard(1), rank)
            where = f"rank {rank}, compiled {compiled}, use_local_output={local_output}"
            assert torch.equal(hidden_mask(model, x, run), expected), where
            torch.testing.assert_close(run(x), unsharded(x), msg=where)
    check_functions_of_a_local_output(rank, mesh, direct, x)
    for compiled in (False, True):
        model = copy.deepcopy(activated)
        parallelize_module(model, mesh, {"0": ColwiseParallel(), "3": RowwiseParallel()})
        run = torch.compile(model, backend="eager") if compiled else model
        try:
            run(x)
        except xdrop.TensorParallelError as error:
            assert "use_local_output=False" in str(error), error
        else:
            raise AssertionError(f"a dropout of a shard behind a GELU ran (compiled {compiled})")
    # SequenceParallel hands on a DTensor Shard(1) of (batch, sequence, hidden)
    torch.manual_seed(1)
    reference = torch.nn.Sequential(
        torch.nn.LayerNorm(8), Dropout(P, seed=SEED, data_parallel_group=dp)
    )
    model = copy.deepcopy(reference)
    parallelize_module(model, mesh, {"0": SequenceParallel()})
    # an even sequence: SequenceParallel builds its DTensor assuming equal shards
    tokens = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(6))
    y = model(piece(tokens, Shard(1), rank).contiguous())
    assert isinstance(y, DTensor) and y.placements == (Shard(1),), y
    assert torch.equal(y.to_local(), piece(reference(tokens), Shard(1), rank)), f"rank {rank}"
    # the usual MLP: RowwiseParallel's replicated output after a sharded GELU is drawn whole
    torch.manual_seed(2)
    reference = torch.nn.Sequential(
        torch.nn.Linear(6, 16),
        torch.nn.GELU(),
        torch.nn.Linear(16, 6),
        Dropout(P, seed=SEED, data_parallel_group=dp),
    )
    model = copy.deepcopy(reference)
    parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
    torch.testing.assert_close(model(x), reference(x), msg=f"rank {rank}, Rowwise -> Dropout")


def check_plans_given_inline_and_graphs_compiled_ahead(rank: int, mesh: DeviceMesh) -> None:
    """A plan written inline (``parallelize_module(model, mesh, {"0": ColwiseParallel()})``)
    leaves no style object alive, only the hooks it applied: compiled, its plain shard still
    reaches the dropout eagerly. A graph compiled ahead of time (AOT autograd: ``aot_eager``,
    inductor) records one autograd node that hides the shard: refused, naming
    use_local_output=False, with which the compiled model is the unsharded one."""
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(5))
    dp = init_device_mesh("cpu", (1, WORLD), mesh_dim_names=("dp", "tp"))["dp"]
    direct, _ = models(dp)
    gc.collect()  # no plan object of an earlier check left alive
    model = copy.deepcopy(direct)
    parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
    expected = piece(hidden_mask(copy.deepcopy(direct), x), Shard(1), rank)
    run = torch.compile(model, backend="eager")
    assert torch.equal(hidden_mask(model, x, run), expected), f"rank {rank}, inline plan"
    torch._dynamo.reset()  # each backend traces the forward anew, not from the cache of another
    model = copy.deepcopy(direct)
    plan = {"0": ColwiseParallel(use_local_output=False), "2": RowwiseParallel()}
    parallelize_module(model, mesh, plan)
    run, unsharded = torch.compile(model, backend="aot_eager"), copy.deepcopy(direct)
    for step in range(2):  # the output of each step holds its mask (P drops half the hidden units)
        torch.testing.assert_close(run(x), unsharded(x), msg=f"rank {rank}, aot_eager, {step}")
    torch._dynamo.reset()  # each backend traces the forward anew, not from the cache of another
    model = copy.deepcopy(direct)
    parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
    try:
        torch.compile(model, backend="aot_eager")(x)
    except xdrop.TensorParallelError as error:
        assert "use_local_output=False" in str(error), error
    else:
        raise AssertionError("a shard hidden by a compiled graph was drawn as a whole tensor")


LOCAL_OUTPUT: dict[str, Callable[[Any], Any]] = {
    "dropout": lambda v: xdrop.dropout(v, P, seed=SEED),
    "whole rows": lambda v: xdrop.dropout(v, P, seed=SEED, noise_shape=(v.shape[0], 1)),
    "drop_path": lambda v: xdrop.drop_path(v, P, seed=SEED),
    "alpha_dropout": lambda v: xdrop.alpha_dropout(v, P, seed=SEED),
    "gaussian_dropout": lambda v: xdrop.gaussian_dropout(v, P, seed=SEED),
}


def check_functions_of_a_local_output(
    rank: int, mesh: DeviceMesh, reference: torch.nn.Sequential, x: torch.Tensor
) -> None:
    """xdrop's functions on ColwiseParallel()'s plain local output: the unsharded activation's
    result, this rank's columns. The reference holds this rank's own values in its columns, so
    that only the masks (or normals) can differ."""
    model = copy.deepcopy(reference)
    parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
    local = model[0](x)
    assert not isinstance(local, DTensor)
    whole = reference[0](x).detach()
    step = -(-whole.shape[1] // WORLD)
    whole[:, rank * step : rank * step + local.shape[1]] = local.detach()
    for name, function in LOCAL_OUTPUT.items():
        expected = piece(function(whole), Shard(1), rank)
        assert torch.equal(function(local), expected), f"rank {rank}, {name}"


def check_megatron_recipe(rank: int) -> None:
    """Column-parallel by hand: rank r holds columns chunk r of the weight; with chunk_block its
    dropout draws what one process (degree 1) draws for those columns."""
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(7))
    weight = torch.randn(6, 10, generator=torch.Generator().manual_seed(8))
    one_process = xdrop.dropout(x @ weight, P, seed=SEED)
    columns = weight.chunk(WORLD, dim=1)[rank]
    block = xdrop.chunk_block((4, 10), dim=1, index=rank, parts=WORLD)
    y = xdrop.dropout(x @ columns, P, seed=SEED, offset=block)
    assert torch.equal(y, one_process.chunk(WORLD, dim=1)[rank]), f"rank {rank}"


def run(rank: int, port: int) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        mesh = init_device_mesh("cpu", (WORLD,))
        check_plans_given_inline_and_graphs_compiled_ahead(rank, mesh)
        check_family(rank, mesh)
        check_megatron_recipe(rank)
        check_tensor_parallel(rank, mesh)
        check_compiled_dtensors(rank, mesh)
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    mp.spawn(run, args=(int(sys.argv[1]),), nprocs=WORLD, join=True)
    print(f"{WORLD} ranks: ok")
