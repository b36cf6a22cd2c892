"""Run by tests/test_distributed_data_parallel.py, in three fresh processes:

- ``python torch_data_parallel.py reference OUT``: one process (no ``torch.distributed``) draws
  each layer over the global batch and trains the models 5 steps on the global batch; saves the
  results, and the state after step 3, to ``OUT``.
- ``torchrun --nproc-per-node 2 torch_data_parallel.py ranks REF CKPT``: 2 ranks (gloo on
  127.0.0.1) check the data-parallel modes against the formulas and against ``REF``, under DDP
  with its default flags, ``forward_sync_buffers`` and ``join()``, FSDP2 and ``convert``; train
  3 steps and save the state to ``CKPT``; resume ``REF``'s state of step 3 for steps 4 and 5.
- ``python torch_data_parallel.py resume REF CKPT``: one process resumes the 2 ranks' ``CKPT``
  for steps 4 and 5 and compares with ``REF``.

Each prints one line ending in ``ok``.
"""

from __future__ import annotations

import copy
import datetime
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import xdrop
from xdrop.layers.torch import (
    AlphaDropout,
    DropBlock2d,
    Dropout,
    Dropout1d,
    Dropout2d,
    Dropout3d,
    DropPath,
    FeatureAlphaDropout,
    GaussianDropout,
    convert,
)

SEED, P = 20240613, 0.3
WORLD, LOCAL = 2, 4  # ranks, rows per rank
STEPS, RESUME_AT = 5, 3

# each layer class in global_batch mode, and an input of its kind (the global batch)
LAYERS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "Dropout": (lambda: Dropout(P, seed=SEED, data_parallel="global_batch"), (8, 6)),
    "Dropout noise_shape": (
        lambda: Dropout(P, seed=SEED, noise_shape=(None, 1, None), data_parallel="global_batch"),
        (8, 3, 4),
    ),
    "Dropout1d": (lambda: Dropout1d(P, seed=SEED, data_parallel="global_batch"), (8, 3, 5)),
    "Dropout2d": (lambda: Dropout2d(P, seed=SEED, data_parallel="global_batch"), (8, 3, 2, 2)),
    "Dropout3d": (lambda: Dropout3d(P, seed=SEED, data_parallel="global_batch"), (8, 2, 2, 2, 2)),
    "AlphaDropout": (lambda: AlphaDropout(P, seed=SEED, data_parallel="global_batch"), (8, 6)),
    "FeatureAlphaDropout": (
        lambda: FeatureAlphaDropout(P, seed=SEED, data_parallel="global_batch"),
        (8, 3, 4),
    ),
    "GaussianDropout": (
        lambda: GaussianDropout(P, seed=SEED, data_parallel="global_batch"),
        (8, 6),
    ),
    "DropPath row": (lambda: DropPath(0.5, seed=SEED, data_parallel="global_batch"), (8, 3)),
    "DropPath batch": (
        lambda: DropPath(0.5, mode="batch", seed=SEED, data_parallel="global_batch"),
        (8, 3),
    ),
    "DropBlock2d": (
        lambda: DropBlock2d(0.2, 3, seed=SEED, data_parallel="global_batch"),
        (8, 2, 6, 6),
    ),
}
UNEVEN = (3, 2)  # an uneven last batch: rank 0 holds 3 rows, rank 1 holds 2


def global_input(shape: tuple[int, ...], step: int) -> torch.Tensor:
    """The same global batch in every process."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(1000 * step + len(shape)))


class Layers(nn.Module):
    """xdrop's layers, each in global_batch mode."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 32)
        self.drop = Dropout(P, seed=SEED, data_parallel="global_batch")
        self.hidden = nn.Linear(32, 32)
        self.path = DropPath(0.25, seed=SEED + 1, data_parallel="global_batch")
        self.out = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(torch.relu(self.inp(x)))
        h = h + self.path(torch.tanh(self.hidden(h)))
        return self.out(h).squeeze(-1)


class Encoder(nn.Module):
    """A model written without xdrop (torch's dropout modules, attention dropout and
    ``F.dropout``), made xdrop's by ``convert``."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.2, batch_first=True)
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(self.block(x), 0.1, training=self.training)
        return self.head(h).mean(dim=(1, 2))


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "layers":
        return Layers()
    return convert(Encoder(), seed=SEED, data_parallel="global_batch")


MODELS = {"layers": (8,), "encoder": (5, 16)}  # each model's example shape


def batch(name: str, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    x = torch.randn((WORLD * LOCAL, *MODELS[name]), generator=g)
    return x, torch.randn(WORLD * LOCAL, generator=g)


def train(model: nn.Module, name: str, steps: range, rows: slice) -> None:
    """SGD on the mean squared error over ``rows`` of each step's global batch (DDP averages
    the ranks' gradients: the global batch's mean)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in steps:
        x, target = batch(name, step)
        loss = F.mse_loss(model(x[rows]), target[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.named_parameters()}


def snapshot(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state_dict's values as they are now (training goes on updating them in place)."""
    return {key: value.detach().clone() for key, value in state.items()}


def reference(out: str) -> None:
    assert not dist.is_initialized()
    results: dict[str, Any] = {"layers": {}, "uneven": {}}
    for kind, (make, shape) in LAYERS.items():
        layer = make()
        results["layers"][kind] = [layer(global_input(shape, step)) for step in range(2)]
        uneven = make()
        results["uneven"][kind] = uneven(global_input((sum(UNEVEN), *shape[1:]), 0))
    for name in MODELS:
        model = build(name).train()
        train(model, name, range(RESUME_AT), slice(None))
        results[f"{name} state {RESUME_AT}"] = snapshot(model.state_dict())
        results[f"{name} {RESUME_AT}"] = parameters(model)
        train(model, name, range(RESUME_AT, STEPS), slice(None))
        results[f"{name} {STEPS}"] = parameters(model)
    torch.save(results, out)
    print("reference: ok")


def assert_close(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], where: str):
    assert got.keys() == expected.keys(), where
    for key in got:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6, msg=where)


def gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return parts


def check_ddp_default_flags_keep_ranks_apart(rank: int) -> None:
    """``Dropout(p, seed=s)`` with no distributed argument under DDP, with its default flags
    (which broadcast rank 0's buffers at wrapping and before each forward), with
    ``forward_sync_buffers`` on and off, and with ``data_parallel="per_rank"``: rank ``r``
    draws ``fold_in(fold_in(s, t), r)`` at step ``t``, so no two ranks share a mask."""
    variants: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({}, {}),
        ({}, {"forward_sync_buffers": True}),
        ({}, {"forward_sync_buffers": False}),
        ({"data_parallel": "per_rank"}, {}),
    ]
    for layer_arguments, flags in variants:
        where = f"rank {rank}, {layer_arguments}, DDP {flags}"
        # rank-dependent seeds in the buffers, as a per-rank recipe would build them: DDP
        # replaces them by rank 0's, which is what every rank draws from
        built = Dropout(P, seed=SEED + rank, **layer_arguments)
        model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(6, 6), built), **flags)
        layer = model.module[1]
        captured: list[tuple[torch.Tensor, torch.Tensor]] = []
        layer.register_forward_hook(lambda m, args, y, into=captured: into.append((args[0], y)))
        x = torch.ones(4, 6)
        for step in range(2):
            model(x).sum().backward()
            inputs, y = captured[step]
            stream = xdrop.fold_in(xdrop.fold_in(SEED, step), rank)  # rank 0's seed: SEED
            expected = xdrop.dropout(inputs.detach(), P, seed=stream)
            assert torch.equal(y.detach(), expected), where
            masks = gather((y != 0).to(torch.int8))
            assert not torch.equal(masks[0], masks[1]), where
        state = torch.stack([layer.seed, layer.step])
        assert all(torch.equal(part, state) for part in gather(state)), where  # one state


def check_data_parallel_groups(rank: int) -> None:
    """With data and tensor parallelism the data-parallel rank is not the global one: a group
    (or a 1-d DeviceMesh) names the data-parallel ranks. Tensor-parallel ranks (here both
    ranks, each alone in its data-parallel group) draw one mask; data-parallel ranks differ."""
    from torch.distributed.device_mesh import init_device_mesh

    alone, _ = dist.new_subgroups(group_size=1)
    tp_mesh = init_device_mesh("cpu", (1, WORLD), mesh_dim_names=("dp", "tp"))
    dp_mesh = init_device_mesh("cpu", (WORLD, 1), mesh_dim_names=("dp", "tp"))
    x = torch.ones(4, 8)
    stream = xdrop.fold_in(SEED, 0)  # the step's seed, step 0
    cases = [  # (group, the seed this rank draws with)
        (alone, stream),
        (tp_mesh["dp"], stream),
        (dp_mesh["dp"], xdrop.fold_in(stream, rank)),
    ]
    for mode in ("per_rank", None):
        for group, seed in cases:
            layer = Dropout(P, seed=SEED, data_parallel=mode, data_parallel_group=group)
            assert torch.equal(layer(x), xdrop.dropout(x, P, seed=seed)), f"{rank}, {group}"
    layer = Dropout(P, seed=SEED, data_parallel="global_batch", data_parallel_group=alone)
    assert torch.equal(layer(x), xdrop.dropout(x, P, seed=stream)), f"rank {rank}"


def check_dtensor_is_global(rank: int) -> None:
    """A DTensor carries its own placement: its global mask, with no rank folded in unless a
    data_parallel_group names data-parallel ranks beside its mesh."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (WORLD,))
    full = global_input((8, 6), 0)
    for mode in (None, "per_rank", "global_batch"):
        y = Dropout(P, seed=SEED, data_parallel=mode)(distribute_tensor(full, mesh, [Shard(0)]))
        expected = xdrop.dropout(full, P, seed=xdrop.fold_in(SEED, 0))
        assert torch.equal(y.full_tensor(), expected), f"rank {rank}, {mode}"
    # data and tensor parallelism: each rank a data-parallel rank of its own 1-rank tensor-
    # parallel mesh; the DTensor's mask, with the data-parallel rank folded in
    mesh = init_device_mesh("cpu", (WORLD, 1), mesh_dim_names=("dp", "tp"))
    x = distribute_tensor(full, mesh["tp"], [Shard(0)])
    for mode in (None, "per_rank"):
        layer = Dropout(P, seed=SEED, data_parallel=mode, data_parallel_group=mesh["dp"])
        expected = xdrop.dropout(full, P, seed=xdrop.fold_in(xdrop.fold_in(SEED, 0), rank))
        assert torch.equal(layer(x).full_tensor(), expected), f"rank {rank}, {mode}"
    layer = Dropout(P, seed=SEED, data_parallel="global_batch", data_parallel_group=mesh["dp"])
    try:
        layer(x)
    except xdrop.ArgumentValueError as error:
        assert "data_parallel_group" in str(error), error
    else:
        raise AssertionError("global_batch of a DTensor among data-parallel ranks ran")


def check_global_batch_layers(rank: int, ref: dict[str, Any]) -> None:
    """Each layer in global_batch mode draws, for its rows, what one process draws over the
    global batch, step after step; an uneven last batch too."""
    for kind, (make, shape) in LAYERS.items():
        layer = make()
        rows = slice(rank * LOCAL, (rank + 1) * LOCAL)
        for step in range(2):
            y = layer(global_input(shape, step)[rows])
            assert torch.equal(y, ref["layers"][kind][step][rows]), f"rank {rank}, {kind}"
        first = sum(UNEVEN[:rank])
        rows = slice(first, first + UNEVEN[rank])
        y = make()(global_input((sum(UNEVEN), *shape[1:]), 0)[rows])
        assert torch.equal(y, ref["uneven"][kind][rows]), f"rank {rank}, uneven {kind}"


class Padded(nn.Module):
    """A block as a converted model runs it: F.dropout on whatever length the batch has."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, P, training=self.training)


def check_ddp_join(rank: int) -> None:
    """DDP's ``join()`` (uneven inputs): ``"global_batch"`` refuses at the first forward on every
    rank, saying to use ``"per_rank"`` (its gather of the batch sizes would wait for ranks that
    joined until the timeout); ``"per_rank"`` trains rank 0's extra batch after rank 1 joined."""
    for mode in ("global_batch", "per_rank"):
        layer = Dropout(P, seed=SEED, data_parallel=mode)
        model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(6, 6), layer))
        batches = 2 if rank == 0 else 1
        try:
            with model.join():
                for _ in range(batches):
                    model(torch.ones(LOCAL, 6)).sum().backward()
        except xdrop.ArgumentValueError as error:
            assert mode == "global_batch", f"rank {rank}, {mode}: {error}"
            assert '"per_rank" under DDP\'s join()' in str(error), str(error)
            assert int(layer.step) == 0, f"rank {rank}: a refused call took a step"
        else:
            assert mode == "per_rank", f"rank {rank}: global_batch ran under join()"
            # DDP's join hook ends with every rank holding the last joiner's buffers
            assert int(layer.step) == 2, f"rank {rank}, per_rank steps: {int(layer.step)}"
    # join(enable=False) joins nothing: the gather runs as without it
    model = nn.parallel.DistributedDataParallel(
        nn.Sequential(nn.Linear(6, 6), Dropout(P, seed=SEED, data_parallel="global_batch"))
    )
    with model.join(enable=False):
        model(torch.ones(LOCAL, 6)).sum().backward()
    # torch leaves a model's join configuration enabled after its join() context: documented
    with model.join():
        pass  # no forward: every rank joins at once
    try:
        model(torch.ones(LOCAL, 6))
    except xdrop.ArgumentValueError:
        pass
    else:
        raise AssertionError(f"rank {rank}: global_batch ran after join() on a joined model")


def check_global_batch_refuses_rows_of_other_sizes(rank: int) -> None:
    """Ranks padding their batches to lengths of their own (a collator's dynamic padding) have
    no one global batch: global_batch refuses them on every rank, naming x; per_rank draws.
    A mask shared along the padded axis has rows of one size: placed as one process places it."""
    length = 8 if rank == 0 else 6
    x = torch.ones(2, 4, length)
    for draw in (
        Dropout(P, seed=SEED, data_parallel="global_batch"),
        convert(Padded(), seed=SEED, data_parallel="global_batch"),
    ):
        try:
            draw(x)
        except xdrop.ArgumentValueError as error:
            assert "global_batch" in str(error) and "[32, 24]" in str(error), str(error)
        else:
            raise AssertionError(f"rank {rank}: rows of other sizes were placed")
    Dropout(P, seed=SEED, data_parallel="per_rank")(x)
    noise = (None, None, 1)  # Dropout1d's first call, over the global batch in one process
    whole = xdrop.dropout(
        torch.ones(2 * WORLD, 4, length), P, seed=xdrop.fold_in(SEED, 0), noise_shape=noise
    )
    rows = slice(2 * rank, 2 * rank + 2)
    placed = Dropout1d(P, seed=SEED, data_parallel="global_batch")(x)
    assert torch.equal(placed, whole[rows]), f"rank {rank}: Dropout1d over padded lengths"


def check_training(rank: int, ref: dict[str, Any], checkpoint: str) -> None:
    """3 optimiser steps on 2 ranks under DDP (default flags) and FSDP2, global_batch mode,
    match one process over the global batch; the 2 ranks' checkpoint is saved for a one-process
    resume, and one process's checkpoint resumes on the 2 ranks."""
    from torch.distributed.fsdp import fully_shard

    rows = slice(rank * LOCAL, (rank + 1) * LOCAL)
    states = {}
    for name in MODELS:
        ddp = nn.parallel.DistributedDataParallel(build(name).train())
        train(ddp, name, range(RESUME_AT), rows)
        assert_close(parameters(ddp.module), ref[f"{name} {RESUME_AT}"], f"DDP {name}, {rank}")
        states[name] = snapshot(ddp.module.state_dict())

        resumed = build(name).train()
        resumed.load_state_dict(ref[f"{name} state {RESUME_AT}"])
        ddp = nn.parallel.DistributedDataParallel(resumed)
        train(ddp, name, range(RESUME_AT, STEPS), rows)
        assert_close(parameters(resumed), ref[f"{name} {STEPS}"], f"resumed {name}, {rank}")

        sharded = build(name).train()
        fully_shard(sharded)
        train(sharded, name, range(RESUME_AT), rows)
        full = {key: value.full_tensor() for key, value in parameters(sharded).items()}
        assert_close(full, ref[f"{name} {RESUME_AT}"], f"FSDP2 {name}, {rank}")
    if rank == 0:
        torch.save(states, checkpoint)


def check_convert_per_rank_under_ddp(rank: int) -> None:
    """A converted model with the default data_parallel under DDP: every dropout of the two
    ranks differs for the same input and weights (the ranks' outputs differ), and the
    converted modules draw the per-rank formula."""
    torch.manual_seed(0)
    model = convert(Encoder(), seed=SEED).train()
    ddp = nn.parallel.DistributedDataParallel(model)
    layer = model.block.dropout1
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []
    layer.register_forward_hook(lambda m, args, y: captured.append((args[0], y)))
    y = ddp(global_input((2, 5, 16), 0))
    outputs = gather(y.detach())
    assert not torch.equal(outputs[0], outputs[1]), f"rank {rank}"
    inputs, z = captured[0]
    stream = xdrop.fold_in(xdrop.fold_in(int(layer.seed) % 2**64, 0), rank)
    assert torch.equal(z, xdrop.dropout(inputs, 0.2, seed=stream)), f"rank {rank}"


def check_compiled_as_eager(rank: int, ref: dict[str, Any]) -> None:
    """Under torch.compile (Dynamo's default guards and dynamic shapes) with a changing batch
    size, both modes draw the eager masks: per_rank in the graph, global_batch eagerly (a graph
    break at the gather). The aot_eager backend keeps the test fast: which graph runs is
    Dynamo's choice, not the backend's."""
    for mode in ("per_rank", "global_batch"):
        layer = Dropout(P, seed=SEED, data_parallel=mode)
        compiled = torch.compile(layer, backend="aot_eager")
        eager = Dropout(P, seed=SEED, data_parallel=mode)
        for rows in (LOCAL, LOCAL, LOCAL - 1):
            x = global_input((8, 6), 0)[rank * rows : (rank + 1) * rows]
            assert torch.equal(compiled(x), eager(x)), f"rank {rank}, {mode}, {rows} rows"
    first = ref["layers"]["Dropout"][0][rank * LOCAL : (rank + 1) * LOCAL]
    compiled = torch.compile(LAYERS["Dropout"][0](), backend="aot_eager")
    assert torch.equal(compiled(global_input((8, 6), 0)[rank * LOCAL : (rank + 1) * LOCAL]), first)
    # per_rank stays in the graph of a model that records autograd: fullgraph=True compiles it
    model = nn.Sequential(nn.Linear(6, 6), Dropout(P, seed=SEED))
    eager_model = copy.deepcopy(model)
    full_graph = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = global_input((8, 6), 0)[rank * LOCAL : (rank + 1) * LOCAL]
    assert torch.equal(full_graph(x), eager_model(x)), f"rank {rank}, fullgraph"


def check_keras_on_torch(rank: int) -> None:
    """Keras' torch backend reads the ranks from torch.distributed: per_rank folds the rank in;
    global_batch places an uneven split (3 + 2 rows) by the gathered batch sizes, as rank 0
    drawing the whole batch (rank 1 none) places it; rows of other sizes on the ranks are
    refused, and a mask shared along the batch is placed as one process places it."""
    import os

    os.environ["KERAS_BACKEND"] = "torch"
    from xdrop.layers.keras import Dropout as KerasDropout

    full = global_input((5, 6), 0)
    whole = KerasDropout(P, seed=SEED, data_parallel="global_batch")
    expected = whole(full if rank == 0 else full[:0], training=True).detach()
    if rank == 1:
        expected = torch.empty_like(full)
    dist.broadcast(expected, src=0)
    rows = slice(0, UNEVEN[0]) if rank == 0 else slice(UNEVEN[0], sum(UNEVEN))
    layer = KerasDropout(P, seed=SEED, data_parallel="global_batch")
    assert torch.equal(layer(full[rows], training=True), expected[rows]), f"rank {rank}"
    padded = torch.ones(2, 4, 8 if rank == 0 else 6)
    try:
        KerasDropout(P, seed=SEED, data_parallel="global_batch")(padded, training=True)
    except xdrop.ArgumentValueError as error:
        assert "global_batch" in str(error) and "[32, 24]" in str(error), str(error)
    else:
        raise AssertionError(f"Keras on torch, rank {rank}: rows of other sizes were placed")
    noise = (1, None, None)
    shared = KerasDropout(P, seed=SEED, noise_shape=noise, data_parallel="global_batch")
    whole = xdrop.dropout(
        padded.new_ones(2 * WORLD, 4, padded.shape[2]),
        P,
        seed=xdrop.fold_in(SEED, 0),
        noise_shape=noise,
    )
    assert torch.equal(shared(padded, training=True), whole[2 * rank : 2 * rank + 2]), rank
    y = KerasDropout(P, seed=SEED)(torch.ones(4, 8), training=True)
    ys = [torch.empty_like(y) for _ in range(WORLD)]
    dist.all_gather(ys, y.detach().contiguous())
    assert not torch.equal(ys[0], ys[1]), "Keras on torch: two ranks drew one mask"


def ranks(ref_path: str, checkpoint: str) -> None:
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank()
    assert dist.get_world_size() == WORLD
    try:
        ref = torch.load(ref_path, weights_only=False)
        for check in (
            check_ddp_default_flags_keep_ranks_apart,
            check_data_parallel_groups,
            check_dtensor_is_global,
            check_convert_per_rank_under_ddp,
            check_keras_on_torch,
            check_global_batch_refuses_rows_of_other_sizes,
            check_ddp_join,
        ):
            check(rank)
        check_global_batch_layers(rank, ref)
        check_compiled_as_eager(rank, ref)
        check_training(rank, ref, checkpoint)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    if rank == 0:
        print(f"{WORLD} ranks: ok")


def resume(ref_path: str, checkpoint: str) -> None:
    """The 2 ranks' checkpoint of step 3, resumed in one process, trains as one process."""
    ref = torch.load(ref_path, weights_only=False)
    states = torch.load(checkpoint, weights_only=False)
    for name in MODELS:
        model = build(name).train()
        model.load_state_dict(states[name])
        train(model, name, range(RESUME_AT, STEPS), slice(None))
        assert_close(parameters(model), ref[f"{name} {STEPS}"], f"resumed on 1: {name}")
    print("resume: ok")


if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    command, *paths = sys.argv[1:]
    {"reference": reference, "ranks": ranks, "resume": resume}[command](*paths)
