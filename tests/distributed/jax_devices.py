"""Run by tests/test_distributed_jax.py: ``python jax_devices.py`` on 8 host devices.

Checks that ``xdrop.dropout`` under ``jax.jit`` on a sharded array gives the unsharded mask, keeps
the input's sharding and compiles to no collective (with an int offset, and with ``xdrop.Block``,
where each device draws only its shard), and that ``xdrop.shard_map_block`` makes per-shard calls
under ``shard_map`` reproduce the global mask.
"""

from __future__ import annotations

import math
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


FAMILY = {  # each as one jitted or per-shard function of a 3-d array
    "whole rows": lambda v, o: xdrop.dropout(v, RATE, seed=SEED, noise_shape=(v.shape[0], 1, 1)),
    "drop_path": lambda v, o: xdrop.drop_path(v, RATE, seed=SEED, offset=o),
    "alpha_dropout": lambda v, o: xdrop.alpha_dropout(v, RATE, seed=SEED, offset=o),
    "gaussian_dropout": lambda v, o: xdrop.gaussian_dropout(v, RATE, seed=SEED, offset=o),
}


def check_changing_shardings(mesh: jax.sharding.Mesh) -> int:
    """One jitted function of each kind, called on one array under shardings that change from
    call to call (jit compiles per input sharding): every call the unsharded result."""
    x = jax.random.normal(jax.random.key(2), (8, 4, 6))
    maps = jax.random.normal(jax.random.key(3), (8, 4, 8, 8))
    checked = 0
    for name, function in FAMILY.items():
        step = jax.jit(lambda v, function=function: function(v, 0))
        # jitted on one device: XLA may fuse alpha dropout's product and sum into an FMA
        expected = np.asarray(step(x))
        for spec in (P(), P("a"), P(None, "b"), P("a", "b"), P(("a", "b")), P(None, None, "a")):
            y = step(jax.device_put(x, NamedSharding(mesh, spec)))
            assert np.array_equal(np.asarray(y), expected), f"{name}, {spec}"
            checked += 1
    block = jax.jit(lambda v: xdrop.drop_block(v, RATE, 3, seed=SEED))
    expected = np.asarray(block(maps))
    for spec in (P(), P("a"), P("a", "b"), P(None, None, "b")):
        y = block(jax.device_put(maps, NamedSharding(mesh, spec)))
        assert np.array_equal(np.asarray(y), expected), f"drop_block, {spec}"
        checked += 1
    return checked


def check_family_shard_map(mesh: jax.sharding.Mesh) -> int:
    """The dropout family per shard with shard_map_block: the unsharded result; a noise shape
    with the Block of x is refused, naming noise_shape, and right with a Block of the mask."""
    x = jax.random.normal(jax.random.key(4), (8, 4, 6))
    maps = jax.random.normal(jax.random.key(5), (8, 4, 6, 6))
    spec = P("a", "b")
    checked = 0
    for name, function in FAMILY.items():
        if name == "whole rows":
            continue

        @functools.partial(jax.shard_map, mesh=mesh, in_specs=spec, out_specs=spec)
        def step(v: jax.Array, function: object = function) -> jax.Array:
            return function(v, xdrop.shard_map_block(v.shape, spec, offset=2))  # type: ignore[operator]

        y = jax.jit(step)(jax.device_put(x, NamedSharding(mesh, spec)))
        whole = jax.jit(lambda v, function=function: function(v, 2))(x)  # one device
        assert np.array_equal(np.asarray(y), np.asarray(whole)), name
        checked += 1

    @functools.partial(jax.shard_map, mesh=mesh, in_specs=spec, out_specs=spec)
    def block_step(v: jax.Array) -> jax.Array:
        return xdrop.drop_block(v, RATE, 3, seed=SEED, offset=xdrop.shard_map_block(v.shape, spec))

    y = jax.jit(block_step)(jax.device_put(maps, NamedSharding(mesh, spec)))
    assert np.array_equal(np.asarray(y), np.asarray(xdrop.drop_block(maps, RATE, 3, seed=SEED)))

    @functools.partial(jax.shard_map, mesh=mesh, in_specs=spec, out_specs=spec)
    def rows_of_x_block(v: jax.Array) -> jax.Array:
        block = xdrop.shard_map_block(v.shape, spec)
        return xdrop.dropout(v, RATE, seed=SEED, noise_shape=(v.shape[0], 1, 1), offset=block)

    try:
        jax.jit(rows_of_x_block)(jax.device_put(x, NamedSharding(mesh, spec)))
    except xdrop.ArgumentValueError as error:
        assert "noise_shape" in str(error), error
    else:
        raise AssertionError("a noise shape with the Block of x ran")

    @functools.partial(jax.shard_map, mesh=mesh, in_specs=spec, out_specs=spec)
    def rows(v: jax.Array) -> jax.Array:
        block = xdrop.shard_map_block(v.shape, spec)
        mask = xdrop.Block((block.global_shape[0], 1, 1), (block.start[0], 0, 0))
        return xdrop.dropout(v, RATE, seed=SEED, noise_shape=(v.shape[0], 1, 1), offset=mask)

    y = jax.jit(rows)(jax.device_put(x, NamedSharding(mesh, spec)))
    assert np.array_equal(np.asarray(y), np.asarray(FAMILY["whole rows"](x, 0)))
    return checked + 2


def check_eager_family_on_sharded_arrays(mesh: jax.sharding.Mesh) -> int:
    """Eager calls on arrays sharded over the mesh: the one-device result, with x's sharding
    (drop_block's scale, a 0-d array made beside x, is replicated over x's mesh)."""
    maps = jax.random.normal(jax.random.key(3), (8, 4, 8, 8))
    expected = np.asarray(xdrop.drop_block(np.asarray(maps), RATE, 3, seed=SEED))
    checked = 0
    for spec in (P("a"), P("a", "b"), P(None, None, "a", "b")):
        sharded = jax.device_put(maps, NamedSharding(mesh, spec))
        y = xdrop.drop_block(sharded, RATE, 3, seed=SEED)
        assert np.array_equal(np.asarray(y), expected), f"eager drop_block, {spec}"
        assert y.sharding.is_equivalent_to(sharded.sharding, maps.ndim), f"{spec}: {y.sharding}"
        checked += 1
    return checked


def check_rdrop_loss_on_explicit_shardings(mesh: jax.sharding.Mesh) -> int:
    """jax.make_mesh's axes are explicit: logits sharded along the batch give the one-device
    loss, eagerly and jitted; along the classes, an xdrop error saying to reshard them."""
    assert set(mesh.axis_types) == {jax.sharding.AxisType.Explicit}, mesh.axis_types
    logits = np.random.default_rng(4).normal(size=(8, 16)).astype(np.float32)
    labels = np.arange(8) % 16
    expected = float(xdrop.rdrop_loss(logits, 2 * logits, labels))
    checked = 0
    for spec in (P("a", None), P(("a", "b"), None), P()):
        sharded = jax.device_put(logits, NamedSharding(mesh, spec))
        for loss in (xdrop.rdrop_loss, jax.jit(xdrop.rdrop_loss)):
            value = float(loss(sharded, 2 * sharded, jax.numpy.asarray(labels)))
            assert math.isclose(value, expected, rel_tol=1e-6), (spec, value, expected)
            checked += 1
    sharded = jax.device_put(logits, NamedSharding(mesh, P("a", "b")))
    try:
        xdrop.rdrop_loss(sharded, 2 * sharded, jax.numpy.asarray(labels))
    except xdrop.ArgumentValueError as error:
        assert "reshard them" in str(error), error
    else:
        raise AssertionError("logits sharded along the classes were not refused")
    return checked + 1


def check_masks_made_beside_like(mesh: jax.sharding.Mesh) -> int:
    """Masks made without drawing (evaluation, p == 0) and dropout_mask(like=x) lie where x
    does: on its device, with its sharding for its shape."""
    x = jax.device_put(jax.numpy.ones((8, 8)), jax.devices()[3])
    masks = [
        xdrop.dropout_mask((8, 8), RATE, seed=SEED, like=x),
        xdrop.dropout_mask((8, 1), RATE, seed=SEED, like=x),
        xdrop.dropout(x, RATE, seed=SEED, training=False, return_mask=True)[1],
        xdrop.dropout(x, 0.0, seed=SEED, return_mask=True)[1],
    ]
    assert all(mask.devices() == {jax.devices()[3]} for mask in masks), masks
    np.testing.assert_array_equal(masks[0], xdrop.dropout_mask((8, 8), RATE, seed=SEED))
    sharded = jax.device_put(x, NamedSharding(mesh, P("a", "b")))
    kept = xdrop.dropout(sharded, RATE, seed=SEED, training=False, return_mask=True)[1]
    assert kept.sharding == sharded.sharding, kept.sharding
    return len(masks) + 1


def main() -> None:
    assert len(jax.devices()) == 8, jax.devices()
    x2 = jax.random.normal(jax.random.key(0), (16, 24))
    x1 = jax.random.normal(jax.random.key(1), (64,))
    checked = 0
    for shape, names in (((8,), ("d",)), ((2, 4), ("a", "b"))):
        mesh = jax.make_mesh(shape, names)
        for x in (x1, x2):
            checked += check_jit(mesh, x) + check_shard_map(mesh, x)
    mesh = jax.make_mesh((2, 4), ("a", "b"))
    checked += check_changing_shardings(mesh) + check_family_shard_map(mesh)
    checked += check_masks_made_beside_like(mesh) + check_eager_family_on_sharded_arrays(mesh)
    checked += check_rdrop_loss_on_explicit_shardings(mesh)
    print(f"{checked} shardings: ok")


if __name__ == "__main__":
    main()
