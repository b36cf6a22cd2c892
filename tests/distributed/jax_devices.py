"""Run by tests/test_distributed_jax.py: ``python jax_devices.py`` on 8 host devices.

Checks that ``xdrop.dropout`` under ``jax.jit`` on a sharded array gives the unsharded mask, keeps
the input's sharding and compiles to no collective (with an int offset, and with ``xdrop.Block``,
where each device draws only its shard), and that ``xdrop.shard_map_block`` makes per-shard calls
under ``shard_map`` reproduce the global mask.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"  # before JAX is imported

import functools
import itertools
import re

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import xdrop

COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")
SEED, RATE = 7, 0.3


def partitions(mesh_axes: tuple[str, ...], rank: int) -> list[P]:
    """Every PartitionSpec of an array of ``rank`` axes over ``mesh_axes`` (each axis used once)."""
    choices: list[object] = [None, *mesh_axes]
    if len(mesh_axes) == 2:
        choices += [mesh_axes, mesh_axes[::-1]]
    specs = []
    for entries in itertools.product(choices, repeat=rank):
        used = [name for entry in entries if entry for name in np.atleast_1d(entry)]
        if len(used) == len(set(used)):
            specs.append(P(*entries))
    return specs


def iota_sizes(hlo: str) -> list[int]:
    """The element counts of the iotas in compiled HLO text."""
    shapes = re.findall(r"u32\[([0-9,]*)\]\S* iota", hlo)
    return [int(np.prod([int(n) for n in shape.split(",") if n])) for shape in shapes]


def check_jit(mesh: jax.sharding.Mesh, x: jax.Array) -> int:
    expected = np.asarray(xdrop.dropout(x, RATE, seed=SEED))
    checked = 0
    for spec in partitions(mesh.axis_names, x.ndim):
        sharded = jax.device_put(x, NamedSharding(mesh, spec))
        for offset in (0, xdrop.Block(x.shape)):
            step = jax.jit(
                lambda v, offset=offset: xdrop.dropout(v, RATE, seed=SEED, offset=offset)
            )
            y = step(sharded)
            where = f"mesh {dict(mesh.shape)}, {spec}, offset {offset}"
            assert np.array_equal(np.asarray(y), expected), where
            assert y.sharding.is_equivalent_to(sharded.sharding, x.ndim), where
            hlo = step.lower(sharded).compile().as_text()
            assert not [name for name in COLLECTIVES if name in hlo], where
            if isinstance(offset, xdrop.Block):  # each device draws its shard, not the whole
                local = sharded.addressable_shards[0].data.size
                assert max(iota_sizes(hlo)) <= local, (where, iota_sizes(hlo), local)
            checked += 1
    return checked


def check_shard_map(mesh: jax.sharding.Mesh, x: jax.Array) -> int:
    expected = np.asarray(xdrop.dropout(x, RATE, seed=SEED, offset=3))
    checked = 0
    for spec in partitions(mesh.axis_names, x.ndim):

        @functools.partial(jax.shard_map, mesh=mesh, in_specs=spec, out_specs=spec)
        def step(v: jax.Array, spec: P = spec) -> jax.Array:
            block = xdrop.shard_map_block(v.shape, spec, offset=3)
            return xdrop.dropout(v, RATE, seed=SEED, offset=block)

        y = jax.jit(step)(jax.device_put(x, NamedSharding(mesh, spec)))
        assert np.array_equal(np.asarray(y), expected), f"shard_map {dict(mesh.shape)} {spec}"
        checked += 1
        if any(spec):  # a block that leaves out the mesh axes x is split over is refused
            wrong = functools.partial(jax.shard_map, mesh=mesh, in_specs=spec, out_specs=spec)(
                lambda v: xdrop.dropout(
                    v, RATE, seed=SEED, offset=xdrop.shard_map_block(v.shape, P())
                )
            )
            try:
                jax.jit(wrong)(jax.device_put(x, NamedSharding(mesh, spec)))
            except xdrop.ArgumentValueError as error:
                assert "x varies over" in str(error), error
            else:
                raise AssertionError(f"shard_map {dict(mesh.shape)} {spec} with P() ran")
    return checked


def main() -> None:
    assert len(jax.devices()) == 8, jax.devices()
    x2 = jax.random.normal(jax.random.key(0), (16, 24))
    x1 = jax.random.normal(jax.random.key(1), (64,))
    checked = 0
    for shape, names in (((8,), ("d",)), ((2, 4), ("a", "b"))):
        mesh = jax.make_mesh(shape, names)
        for x in (x1, x2):
            checked += check_jit(mesh, x) + check_shard_map(mesh, x)
    print(f"{checked} shardings: ok")


if __name__ == "__main__":
    main()
