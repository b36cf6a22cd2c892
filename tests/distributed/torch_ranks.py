"""Run by tests/test_distributed_torch.py: ``python torch_ranks.py WORLD_SIZE PORT``.

Starts ``WORLD_SIZE`` processes with ``torch.multiprocessing``, joined by the gloo backend on
127.0.0.1, and checks on every rank that xdrop gives each rank its part of the one-process mask:
DTensors (1-d and 2-d meshes, even and uneven shards, no communication for the mask), plain
tensor-parallel slices (``xdrop.chunk_block``) and per-rank streams (``xdrop.fold_in``).
"""

from __future__ import annotations

import datetime
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.debug import CommDebugMode

import xdrop

SEED, P = 20240613, 0.3
SHAPES = [(8, 12), (7, 5), (3, 10), (2, 3, 9)]  # even, uneven, fewer rows than ranks, 3-d


def placements_for(world: int) -> list[tuple[tuple[int, ...], list[object]]]:
    """(mesh shape, placements) to check for ``world`` ranks."""
    cases: list[tuple[tuple[int, ...], list[object]]] = [
        ((world,), [Shard(0)]),
        ((world,), [Shard(1)]),
        ((world,), [Shard(-1)]),
        ((world,), [Replicate()]),
    ]
    if world == 4:
        cases += [
            ((2, 2), [Shard(0), Shard(1)]),
            ((2, 2), [Shard(1), Shard(0)]),
            ((2, 2), [Replicate(), Shard(1)]),
            ((2, 2), [Shard(0), Shard(0)]),  # a mesh axis splits the chunk the first left
            ((2, 2), [Shard(1), Replicate()]),
        ]
    return cases


def check_dtensors(rank: int, world: int) -> None:
    for mesh_shape, placements in placements_for(world):
        names = ("dp", "tp")[: len(mesh_shape)]
        mesh = init_device_mesh("cpu", mesh_shape, mesh_dim_names=names)
        for shape in SHAPES:
            full = torch.randn(shape, generator=torch.Generator().manual_seed(len(shape)))
            expected, expected_keep = xdrop.dropout(full, P, seed=SEED, return_mask=True)
            x = distribute_tensor(full, mesh, placements)
            with CommDebugMode() as comm:
                y, keep = xdrop.dropout(x, P, seed=SEED, return_mask=True)
            where = f"rank {rank}, mesh {mesh_shape}, {placements}, shape {shape}"
            assert comm.get_total_counts() == 0, f"{where}: {comm.get_comm_counts()}"
            assert isinstance(y, DTensor) and isinstance(keep, DTensor), where
            assert tuple(y.placements) == tuple(x.placements), where
            assert y.shape == full.shape and y.to_local().shape == x.to_local().shape, where
            assert torch.equal(y.full_tensor(), expected), where
            assert torch.equal(keep.full_tensor(), expected_keep), where


def check_partial_and_grad(rank: int, world: int) -> None:
    """A Partial DTensor: each rank masks its summand with the same mask, so the sum is the
    sum's dropout. Gradients flow back to the local shards."""
    mesh = init_device_mesh("cpu", (world,))
    full = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    part = DTensor.from_local(full / world, mesh, [Partial()], run_check=False)
    y = xdrop.dropout(part, P, seed=SEED)
    expected = xdrop.dropout(full / world * world, P, seed=SEED)
    torch.testing.assert_close(y.full_tensor(), expected)  # a sum of world floats: not bitwise
    leaf = distribute_tensor(full, mesh, [Shard(1)]).detach().requires_grad_()
    xdrop.dropout(leaf, P, seed=SEED).sum().backward()
    _, keep = xdrop.dropout(full, P, seed=SEED, return_mask=True)
    scale = 1 / (1 - P)
    grad = leaf.grad.full_tensor()
    assert torch.equal(grad, torch.where(keep, torch.tensor(scale, dtype=grad.dtype), 0.0))


def check_tensor_parallel(rank: int, world: int) -> None:
    """Column and row slices of a weight held by plain tensors, as Megatron-LM holds them."""
    full = torch.randn(6, 10, generator=torch.Generator().manual_seed(2))
    expected = xdrop.dropout(full, P, seed=SEED)
    for dim in (0, 1):
        step = -(-full.shape[dim] // world)  # torch.chunk's (and Shard's) chunk size
        first = min(rank * step, full.shape[dim])
        local = full.narrow(dim, first, min(step, full.shape[dim] - first)).contiguous()
        block = xdrop.chunk_block(full.shape, dim=dim, index=rank, parts=world)
        y = xdrop.dropout(local, P, seed=SEED, offset=block)
        assert torch.equal(y, expected.narrow(dim, first, local.shape[dim])), f"rank {rank}"
        sizes = [torch.zeros((), dtype=torch.int64) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor(y.numel()))  # every element drawn by one rank
        assert sum(int(size) for size in sizes) == full.numel()


def check_data_parallel(rank: int, world: int) -> None:
    """Per-rank streams: ``fold_in(seed, rank)`` gives each rank its own mask."""
    x = torch.ones(64)
    keep = xdrop.dropout_mask(x.shape, P, seed=xdrop.fold_in(SEED, rank), like=x)
    gathered = [torch.empty_like(keep) for _ in range(world)]
    dist.all_gather(gathered, keep)
    for other, mask in enumerate(gathered):
        assert torch.equal(mask, xdrop.dropout_mask(64, P, seed=xdrop.fold_in(SEED, other), like=x))
        assert other == rank or not torch.equal(mask, keep)


def run(rank: int, world: int, port: int) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        check_dtensors(rank, world)
        check_partial_and_grad(rank, world)
        check_tensor_parallel(rank, world)
        check_data_parallel(rank, world)
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    world_size, port = int(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(1)
    mp.spawn(run, args=(world_size, port), nprocs=world_size, join=True)
    print(f"{world_size} ranks: ok")
