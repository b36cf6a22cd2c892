"""Shard invariance on every installed backend, in this process: an array that is a block of a
larger tensor (``xdrop.Block``) draws exactly its slice of the larger tensor's mask, however the
tensor is split, contiguous in memory or not; per-axis counters carry across 2**32.

The same checks on many devices and processes are in ``tests/test_distributed.py``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import xdrop
from xdrop import registry, sharding

pytestmark = pytest.mark.backend_independent  # it runs every installed backend itself

BUILT_IN = ("numpy", "torch", "jax", "tensorflow")
BACKENDS = [name for name in BUILT_IN if xdrop.available_backends().get(name)]
SEED, RATE = 99, 0.35


def as_numpy(backend: str, array: object) -> np.ndarray:
    return registry.load(backend).to_numpy(array)


def splits(shape: tuple[int, ...], parts: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Every block of ``shape`` cut into ``parts`` chunks (torch.chunk's way) on every axis."""
    bounds = [
        [sharding.chunk_bounds(size, parts, index) for index in range(parts)] for size in shape
    ]
    return [
        (tuple(first for first, _ in block), tuple(stop - first for first, stop in block))
        for block in itertools.product(*bounds)
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(10,), (5, 7), (3, 4, 5), (1, 9, 2)])
def test_blocks_draw_their_slice_of_the_whole_mask(backend: str, shape: tuple[int, ...]) -> None:
    with xdrop.use_backend(backend):
        whole = as_numpy(backend, xdrop.dropout_mask(shape, RATE, seed=SEED, offset=17))
        for start, size in splits(shape, 3):
            block = xdrop.Block(shape, start, offset=17)
            mask = as_numpy(backend, xdrop.dropout_mask(size, RATE, seed=SEED, offset=block))
            index = tuple(slice(first, first + n) for first, n in zip(start, size, strict=True))
            assert np.array_equal(mask, whole[index]), (start, size)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_of_a_column_slice_is_the_slice_of_dropout(backend: str) -> None:
    x = np.arange(1.0, 49.0, dtype=np.float32).reshape(6, 8)
    xp = registry.load(backend)
    whole = as_numpy(backend, xdrop.dropout(xp.asarray(x), RATE, seed=SEED))
    for rank in range(3):
        block = xdrop.chunk_block(x.shape, dim=1, index=rank, parts=3)
        first, stop = sharding.chunk_bounds(8, 3, rank)
        local = xp.asarray(np.ascontiguousarray(x[:, first:stop]))
        y, keep = xdrop.dropout(local, RATE, seed=SEED, offset=block, return_mask=True)
        assert np.array_equal(as_numpy(backend, y), whole[:, first:stop])
        assert np.array_equal(as_numpy(backend, keep), whole[:, first:stop] != 0)


def test_counters_carry_into_the_high_word() -> None:
    shape = (3, 1 << 11, 5)
    offset = (1 << 32) - 7000  # the rows cross 2**32 inside the tensor
    whole = xdrop.dropout_mask(shape, RATE, seed=SEED, offset=offset, like=np.zeros(1))
    block = xdrop.Block(shape, (1, 3, 2), offset)
    part = xdrop.dropout_mask((2, 2000, 3), RATE, seed=SEED, offset=block, like=np.zeros(1))
    assert np.array_equal(part, whole[1:, 3:2003, 2:])


def test_times_constant_is_the_64_bit_product() -> None:
    words = np.array([0, 1, 7, 2**31 + 5, 2**32 - 1], np.uint32)
    for factor in (0, 1, 2, 3, 4096, 2**32 - 1, 2**32 + 3, 2**63 + 12345):
        high, low = sharding.times_constant(registry.load("numpy"), words.copy(), factor)
        got = [(int(h) << 32) | int(lo) for h, lo in zip(high, low, strict=True)]
        assert got == [int(w) * factor % 2**64 for w in words], factor


def test_start_may_be_traced_under_jax_jit() -> None:
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    whole = np.asarray(xdrop.dropout_mask((4, 6), RATE, seed=SEED, like=jnp.zeros(1)))

    @jax.jit
    def column_block(column: object) -> object:
        block = xdrop.Block((4, 6), (0, column))
        return xdrop.dropout_mask((4, 3), RATE, seed=SEED, offset=block, like=jnp.zeros(1))

    for column in (0, 3):
        assert np.array_equal(np.asarray(column_block(jnp.int32(column))), whole[:, column:][:, :3])


@pytest.fixture
def P() -> object:  # PartitionSpec, as JAX's users spell it
    return pytest.importorskip("jax.sharding").PartitionSpec


def shard_mapped(partition: object, check_vma: bool = True) -> object:
    """A jitted shard_map over a 1-device mesh ("d",) of (4, 6) arrays split by P("d", None),
    whose body draws dropout with ``shard_map_block(v.shape, partition)``."""
    jax = pytest.importorskip("jax")
    sharding_api = jax.sharding
    mesh = jax.make_mesh((1,), ("d",))

    def body(v: object) -> object:
        block = xdrop.shard_map_block(v.shape, partition)  # type: ignore[attr-defined]
        return xdrop.dropout(v, RATE, seed=SEED, offset=block)

    spec = sharding_api.PartitionSpec("d")
    mapped = jax.shard_map(body, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=check_vma)
    x = jax.device_put(jax.numpy.ones((4, 6)), sharding_api.NamedSharding(mesh, spec))
    return lambda: np.asarray(jax.jit(mapped)(x))


def test_shard_map_block_draws_the_whole_mask_with_the_partition_of_in_specs(P) -> None:
    whole = xdrop.dropout(np.ones((4, 6), np.float32), RATE, seed=SEED)
    np.testing.assert_array_equal(shard_mapped(P("d"))(), whole)  # type: ignore[operator]


@pytest.mark.parametrize("entries", [(), (None, None), ((),)])
def test_shard_map_block_missing_a_mesh_axis_x_varies_over_is_refused(P, entries) -> None:
    # before: the shards split over "d" all drew the first shard's mask, silently
    with pytest.raises(xdrop.ArgumentValueError, match=r"x varies over \['d'\]"):
        shard_mapped(P(*entries))()  # type: ignore[operator]
    # where JAX does not track what varies (check_vma=False) there is nothing to compare
    shard_mapped(P(*entries), check_vma=False)()  # type: ignore[operator]


def test_shard_map_block_naming_an_axis_of_no_enclosing_shard_map_is_refused(P) -> None:
    # before: JAX's own NameError ("unbound axis name")
    message = r"partition must be mesh axes of the enclosing shard_map \['d'\]"
    with pytest.raises(xdrop.ArgumentValueError, match=message):
        shard_mapped(P("model"))()  # type: ignore[operator]
    with pytest.raises(xdrop.ArgumentValueError, match=r"inside the function that jax\.shard_map"):
        xdrop.shard_map_block((4, 6), P("d"))


SHARD_MAP_CALLS = {  # every function that takes a Block, on a shard v of (N, C, H, W)
    "dropout": lambda v, b: xdrop.dropout(v, RATE, seed=SEED, offset=b),
    "dropout_mask": lambda v, b: v * xdrop.dropout_mask(v.shape, RATE, seed=SEED, offset=b, like=v),
    "alpha_dropout": lambda v, b: xdrop.alpha_dropout(v, RATE, seed=SEED, offset=b),
    "gaussian_dropout": lambda v, b: xdrop.gaussian_dropout(v, RATE, seed=SEED, offset=b),
    "drop_path": lambda v, b: xdrop.drop_path(v, RATE, seed=SEED, offset=b),
    "drop_block": lambda v, b: xdrop.drop_block(v, RATE, 2, seed=SEED, offset=b),
}


@pytest.mark.parametrize("name", SHARD_MAP_CALLS)
def test_every_function_that_takes_a_block_checks_a_shard_map_block(P, name) -> None:
    # before: dropout_mask(like=v) took the Block of another partition and silently drew the
    # same mask on shards that differ
    jax = pytest.importorskip("jax")
    mesh = jax.make_mesh((1, 1), ("a", "b"))
    spec = P("a", "b")  # batch and channels split
    call = SHARD_MAP_CALLS[name]

    def mapped(partition: object) -> object:
        def body(v: object) -> object:
            return call(v, xdrop.shard_map_block(v.shape, partition))  # type: ignore[attr-defined]

        run = jax.shard_map(body, mesh=mesh, in_specs=spec, out_specs=spec)
        x = jax.device_put(jax.numpy.ones((2, 2, 4, 4)), jax.sharding.NamedSharding(mesh, spec))
        return jax.jit(run)(x)

    whole = np.asarray(call(jax.numpy.ones((2, 2, 4, 4)), xdrop.Block((2, 2, 4, 4))))
    if name == "gaussian_dropout":  # normals may differ by the ulps of log and cos under jit
        np.testing.assert_allclose(np.asarray(mapped(spec)), whole, rtol=1e-6, atol=1e-6)
    else:
        np.testing.assert_array_equal(np.asarray(mapped(spec)), whole)
    with pytest.raises(xdrop.ArgumentValueError, match=r"varies over \['a', 'b'\]"):
        mapped(P("a"))


@pytest.mark.parametrize("partition", [None, (0, 1), ("d", 3), (("d", None),), "d"])
def test_a_partition_that_is_no_partition_spec_is_a_type_error(partition: object) -> None:
    # before: TypeError "'NoneType' object is not iterable", "'int' object is not iterable"
    pytest.importorskip("jax")
    with pytest.raises(xdrop.ArgumentTypeError, match="partition must be a PartitionSpec"):
        xdrop.shard_map_block((4, 6), partition)  # type: ignore[arg-type]


def test_zero_dimensional_and_empty_blocks() -> None:
    scalar = xdrop.dropout_mask((), RATE, seed=SEED, offset=5, like=np.zeros(()))
    block = xdrop.dropout_mask((), RATE, seed=SEED, offset=xdrop.Block((), (), 5))
    assert block.shape == () and bool(block) == bool(scalar)
    empty = xdrop.dropout_mask((0, 4), RATE, seed=SEED, offset=xdrop.chunk_block((3, 4), 0, 3, 4))
    assert empty.shape == (0, 4)


def test_chunk_block_splits_as_torch_chunk() -> None:
    assert [sharding.chunk_bounds(7, 4, i) for i in range(4)] == [(0, 2), (2, 4), (4, 6), (6, 7)]
    assert [sharding.chunk_bounds(3, 4, i) for i in range(4)] == [(0, 1), (1, 2), (2, 3), (3, 3)]
    assert [sharding.chunk_bounds(6, 4, i) for i in range(4)] == [(0, 2), (2, 4), (4, 6), (6, 6)]
    assert xdrop.chunk_block((5, 9), dim=-1, index=2, parts=4).start == (0, 6)
    assert xdrop.Block((5, 9)).strides == (9, 1)
    assert xdrop.Block((2, 3, 4)).strides == (12, 4, 1)
    assert math.prod(xdrop.Block((2, 3, 4)).global_shape) == 24


@pytest.mark.parametrize("make", [np.array, np.int32, np.uint8])
def test_a_numpy_start_is_checked_and_kept_as_the_integer_it_holds(make: object) -> None:
    block = xdrop.Block((4, 6), (0, make(3)))  # type: ignore[operator]
    assert block == xdrop.Block((4, 6), (0, 3)) and type(block.start[1]) is int
    with pytest.raises(xdrop.ArgumentValueError, match=r"start must be entries in \[0, size\]"):
        xdrop.Block((4, 6), (0, make(7)))  # type: ignore[operator]
    with pytest.raises(
        xdrop.ArgumentValueError, match="start 5 \\+ size 3 is past the logical size 6"
    ):
        xdrop.dropout_mask((4, 3), RATE, seed=SEED, offset=xdrop.Block((4, 6), (0, make(5))))  # type: ignore[operator]


@pytest.mark.parametrize(
    "start", [np.array(1.5), np.float64(1.0), np.float32(2.0), np.array(True), np.bool_(True)]
)
def test_a_numpy_start_that_is_not_an_integer_is_refused(start: object) -> None:
    with pytest.raises(xdrop.ArgumentTypeError, match="start must be"):
        xdrop.Block((4, 6), (0, start))


@pytest.mark.parametrize("backend", [name for name in BACKENDS if name != "numpy"])
def test_a_concrete_start_array_is_checked_as_the_integer_it_holds(backend: str) -> None:
    # before: a concrete 0-d array went unchecked, past the end of the axis or not an integer
    xp = registry.load(backend)
    like = xp.asarray(np.zeros((4, 3)), dtype="float32")

    def mask(start: object, shape: tuple[int, ...] = (4, 3)) -> np.ndarray:
        block = xdrop.Block((4, 6), (0, start))
        return as_numpy(
            backend, xdrop.dropout_mask(shape, RATE, seed=SEED, offset=block, like=like)
        )

    whole = as_numpy(backend, xdrop.dropout_mask((4, 6), RATE, seed=SEED, like=like))
    np.testing.assert_array_equal(mask(xp.asarray(np.array(3, np.int32))), whole[:, 3:])
    with pytest.raises(
        xdrop.ArgumentValueError, match="start 5 \\+ size 3 is past the logical size 6"
    ):
        mask(xp.asarray(np.array(5, np.int32)))
    with pytest.raises(xdrop.ArgumentValueError, match=r"start must be entries in \[0, size\]"):
        mask(xp.asarray(np.array(7, np.int32)), (4, 0))
    with pytest.raises(xdrop.ArgumentTypeError, match="start must be"):
        mask(xp.asarray(np.array(1.5), dtype="float32"))


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: xdrop.Block((4, -1)), "global_shape"),
        (lambda: xdrop.Block((4, 2**32)), "global_shape"),
        (lambda: xdrop.Block("ab"), "global_shape"),
        (lambda: xdrop.Block((4, 4), (1,)), "start"),
        (lambda: xdrop.Block((4, 4), (1, 5)), "start"),
        (lambda: xdrop.Block((4, 4), (1, 1.5)), "start"),
        (lambda: xdrop.Block((4, 4), offset=-1), "offset"),
        (lambda: xdrop.Block((2**31, 2**31), offset=2**64 - 2**61), "offset"),
        (lambda: xdrop.chunk_block((4, 4), dim=2, index=0, parts=2), "dim"),
        (lambda: xdrop.chunk_block((4, 4), dim=0, index=2, parts=2), "index"),
        (lambda: xdrop.chunk_block((4, 4), dim=0, index=0, parts=0), "parts"),
        (lambda: xdrop.dropout(np.ones((3, 3)), offset=xdrop.Block((4, 4), (2, 0))), "offset"),
        (lambda: xdrop.dropout(np.ones(3), offset=xdrop.Block((4, 4))), "offset"),
        (
            lambda: xdrop.dropout(np.ones((2, 2)), noise_shape=(2, 1), offset=xdrop.Block((2, 2))),
            "noise_shape",
        ),
        (lambda: xdrop.dropout(np.ones(2), rng="native", offset=xdrop.Block((2,))), "offset"),
    ],
)
def test_bad_blocks_name_the_argument(call: object, argument: str) -> None:
    with pytest.raises((xdrop.ArgumentValueError, xdrop.ArgumentTypeError), match=argument):
        call()  # type: ignore[operator]


# -- the dropout family: shards put together are the whole tensor's result --------------------------
FAMILY = {
    "alpha": lambda x, **kw: xdrop.alpha_dropout(x, RATE, seed=SEED, **kw),
    "gaussian": lambda x, **kw: xdrop.gaussian_dropout(x, RATE, seed=SEED, **kw),
    "path": lambda x, **kw: xdrop.drop_path(x, RATE, seed=SEED, **kw),
    "path_batch": lambda x, **kw: xdrop.drop_path(x, RATE, seed=SEED, mode="batch", **kw),
    "block": lambda x, **kw: xdrop.drop_block(x, 0.2, 3, seed=SEED, **kw),
    "block_last": lambda x, **kw: xdrop.drop_block(
        x, 0.2, 3, seed=SEED, data_format="channels_last", **kw
    ),
}
SHAPE = (6, 4, 7, 5)  # (N, C, H, W); drop_block's Blocks split only N and C


def family_splits(name: str, parts: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Every block of SHAPE cut into ``parts`` chunks on every axis; for drop_block, on the batch
    and channel axes only (the maps stay whole)."""
    if not name.startswith("block"):
        return splits(SHAPE, parts)
    split_axes = (0, 3) if name == "block_last" else (0, 1)
    bounds = [
        [sharding.chunk_bounds(size, parts if axis in split_axes else 1, index)
         for index in range(parts if axis in split_axes else 1)]
        for axis, size in enumerate(SHAPE)
    ]  # fmt: skip
    return [
        (tuple(first for first, _ in block), tuple(stop - first for first, stop in block))
        for block in itertools.product(*bounds)
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(FAMILY))
@pytest.mark.parametrize("parts", [2, 4])
def test_family_shards_put_together_are_the_whole(backend: str, name: str, parts: int) -> None:
    values = np.random.default_rng(4).normal(size=SHAPE).astype(np.float32)
    xp = registry.load(backend)
    function = FAMILY[name]
    whole = as_numpy(backend, function(xp.asarray(values), offset=11))
    assembled = np.full(SHAPE, np.nan, np.float32)
    blocks = family_splits(name, parts)
    assert len(blocks) >= parts
    for start, size in blocks:
        index = tuple(slice(first, first + n) for first, n in zip(start, size, strict=True))
        shard = xp.asarray(np.ascontiguousarray(values[index]))
        block = xdrop.Block(SHAPE, start, offset=11)
        assembled[index] = as_numpy(backend, function(shard, offset=block))
    if name == "gaussian":  # the same words; log and cos may round by shape (TensorFlow's do)
        np.testing.assert_allclose(assembled, whole, rtol=2**-20, atol=2**-20, err_msg=name)
    else:
        np.testing.assert_array_equal(assembled, whole, err_msg=name)


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_a_whole_block_is_the_integer_offset(name: str) -> None:
    values = np.random.default_rng(5).normal(size=SHAPE).astype(np.float32)
    with xdrop.use_backend("numpy"):
        by_block = FAMILY[name](values, offset=xdrop.Block(SHAPE, offset=3))
        np.testing.assert_array_equal(by_block, FAMILY[name](values, offset=3))


def test_drop_block_refuses_a_block_that_splits_the_maps() -> None:
    x = np.ones((2, 3, 4, 8), np.float32)
    message = "offset must be a Block that splits only the batch and channel axes"
    for block in (
        xdrop.Block((2, 3, 8, 8), (0, 0, 4, 0)),
        xdrop.Block((2, 3, 4, 16), (0, 0, 0, 8)),
    ):
        with pytest.raises(xdrop.ArgumentValueError, match=message):
            xdrop.drop_block(x, 0.2, 3, seed=1, offset=block)
    last = xdrop.Block((2, 3, 4, 16), (0, 0, 0, 8))  # channels_last: C is the last axis
    y = xdrop.drop_block(x, 0.2, 3, seed=1, offset=last, data_format="channels_last")
    assert y.shape == x.shape


def test_family_blocks_are_portable_and_checked_as_dropouts() -> None:
    x = np.ones((4, 6), np.float32)
    block = xdrop.Block((8, 6), (4, 0))
    for name, function in FAMILY.items():
        if name.startswith("block"):
            continue
        with pytest.raises(xdrop.ArgumentValueError, match=r"offset must be an integer with rng="):
            function(x, offset=block, rng="native")
        with pytest.raises(xdrop.ArgumentValueError, match="offset must be a Block that holds x"):
            function(x, offset=xdrop.Block((8, 6), (6, 0)))
    with pytest.raises(xdrop.ArgumentValueError, match="noise_shape must be"):
        xdrop.alpha_dropout(x, RATE, seed=SEED, noise_shape=(4, 1), offset=block)
    with pytest.raises(xdrop.ArgumentValueError, match=r"offset must be an integer with rng="):
        xdrop.drop_block(np.ones((2, 3, 4, 4), np.float32), 0.2, 2, seed=1, rng="native",
                         offset=xdrop.Block((4, 3, 4, 4), (2, 0, 0, 0)))  # fmt: skip


def test_drop_path_with_a_traced_start_under_jax_jit() -> None:
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    values = jnp.asarray(np.random.default_rng(6).normal(size=(8, 3)).astype(np.float32))
    whole = np.asarray(xdrop.drop_path(values, 0.5, seed=SEED))
    gaussian = np.asarray(xdrop.gaussian_dropout(values, 0.5, seed=SEED))

    @jax.jit
    def rows(shard: object, first: object) -> object:
        block = xdrop.Block((8, 3), (first, 0))
        path = xdrop.drop_path(shard, 0.5, seed=SEED, offset=block)
        return path, xdrop.gaussian_dropout(shard, 0.5, seed=SEED, offset=block)

    for first in (0, 4):
        path, noise = rows(values[first : first + 4], jnp.int32(first))
        assert np.array_equal(np.asarray(path), whole[first : first + 4])
        np.testing.assert_allclose(np.asarray(noise), gaussian[first : first + 4], rtol=1e-6)
