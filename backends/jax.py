"""JAX: words are ``uint32`` arrays; seeds may be JAX keys. Works on tracers, so under ``jit``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from xdrop.errors import ArgumentValueError
from xdrop.protocol import Backend, Key, NamespaceFunctions, NativeGenerator, SeedArrays


class JaxBackend(Backend, NamespaceFunctions, SeedArrays, NativeGenerator):
    # NamespaceFunctions is LossOps, RateOps and FamilyOps in NumPy's spelling
    name = "jax"
    framework = "jax"
    chunk_size = None  # each eager op is a dispatch: one fused pass beats many small ones

    def __init__(self) -> None:
        import jax
        import jax.numpy as jnp

        self.jax = jax
        self.jnp = self.namespace = jnp
        self.array_types = (jax.Array, jax.core.Tracer)  # tracers are Arrays by isinstance only
        try:  # jax.jit's context, with no tracer at hand; else: make an array, see if it is one
            from jax._src.core import trace_state_clean
        except ImportError:  # pragma: no cover - depends on the JAX version

            def trace_state_clean() -> bool:
                return not isinstance(jnp.zeros(()), jax.core.Tracer)

        self.trace_state_clean = trace_state_clean

    def asarray(self, x: object, dtype: str | None = None) -> Any:
        if dtype == "float64" and not self.has_float64():
            raise TypeError("float64 arrays need jax.config.update('jax_enable_x64', True)")
        return self.jnp.asarray(np.asarray(x), dtype=dtype)

    def in_host_memory(self, x: Any) -> bool:
        return all(device.platform == "cpu" for device in x.devices())

    def to_numpy(self, x: Any) -> np.ndarray:
        array = np.array(x)
        return array.astype(np.float32) if array.dtype.name == "bfloat16" else array

    def dtype_name(self, x: Any) -> str:
        return str(x.dtype)

    def shape(self, x: Any) -> tuple[int | None, ...]:
        return tuple(size if isinstance(size, int) else None for size in x.shape)  # symbolic: None

    def runtime_shape(self, x: Any) -> tuple[Any, ...]:
        return tuple(x.shape)  # symbolic dimensions work in shapes and in iota

    def dim_array(self, dim: Any, dtype: str) -> Any:
        return self.jnp.asarray(dim, dtype=dtype)  # a symbolic dimension becomes a value

    def scale(self, x: Any, factor: Any) -> Any:
        return x * factor  # a Python float is weakly typed: the product stays in x's dtype

    def select(self, keep: Any, x: Any) -> Any:
        return self.jnp.where(keep, x, self.jnp.zeros((), x.dtype))

    def broadcast_to(self, a: Any, shape: tuple[int, ...]) -> Any:
        return self.jnp.broadcast_to(a, shape)

    def take_along_axis(self, x: Any, indices: Any, axis: int) -> Any:
        # a traced label cannot raise: one outside [0, size) picks NaN, so the loss is NaN rather
        # than quietly wrong; a negative one too, which take_along_axis would count from the end
        jnp = self.jnp
        self._check_whole_axis(x, axis)
        indices = jnp.where(indices < 0, x.shape[axis], indices)
        return jnp.take_along_axis(x, indices, axis=axis, mode="fill", fill_value=jnp.nan)

    def _check_whole_axis(self, x: Any, axis: int) -> None:
        """Refuse ``x`` sharded along ``axis`` over explicit mesh axes (``jax.make_mesh``'s
        default): a gather along it needs an output sharding JAX will not choose, and it
        would raise its ``ShardingTypeError`` naming neither the logits nor a remedy."""
        typeof: Callable[[Any], Any] | None = getattr(self.jax, "typeof", None)  # JAX >= 0.6
        if typeof is None:
            return
        spec = getattr(getattr(typeof(x), "sharding", None), "spec", ())
        if len(spec) > axis and spec[axis] is not None:  # only explicit axes show in types
            raise ArgumentValueError(
                f"logits must hold their class axis (axis {axis}) whole on each device to "
                f"pick the labels' log-probabilities, got {typeof(x)}: sharded over the "
                f"explicit mesh axes {spec[axis]!r}; reshard them with that axis None "
                "(jax.sharding.reshard), or shard them over a mesh of AxisType.Auto axes"
            )

    def full_mask(self, shape: tuple[int, ...], value: bool, like: Any = None) -> Any:
        return self.jnp.full(shape, value, dtype=bool, device=self._placement(like, shape))

    def _placement(self, like: Any, shape: tuple[int, ...]) -> Any:
        """Where an array of ``shape`` made for ``like`` goes: ``like``'s sharding for its own
        shape; for another shape its device, or replicated over its mesh (an eager operation
        takes operands on one set of devices); JAX's default device (None) for no concrete
        ``like``, or one sharded otherwise than by a mesh."""
        if not isinstance(like, self.jax.Array) or isinstance(like, self.jax.core.Tracer):
            return None
        if like.shape == shape:
            return like.sharding
        devices = like.sharding.device_set
        if len(devices) == 1:
            return next(iter(devices))
        if isinstance(like.sharding, self.jax.sharding.NamedSharding):
            replicated = self.jax.sharding.PartitionSpec()  # type: ignore[no-untyped-call]
            return self.jax.sharding.NamedSharding(like.sharding.mesh, replicated)
        return None

    def reshape(self, a: Any, shape: tuple[int, ...]) -> Any:
        return self.jnp.reshape(a, shape)

    def concat(self, arrays: list[Any], axis: int = 0) -> Any:
        return self.jnp.concatenate(arrays, axis=axis)

    # constants are NumPy uint32 (a Python int >= 2**31 would overflow against uint32 without
    # x64), kept on the host: a jitted step takes them as arguments without a device transfer
    def word(self, value: int, like: Any = None) -> Any:
        return np.uint32(value)

    def iota(self, n: int, like: Any = None) -> Any:
        placement = self._placement(like, (n,))
        if placement is None:
            return self.jax.lax.iota(np.uint32, n)
        return self.jnp.arange(n, dtype=np.uint32, device=placement)

    def word_add(self, a: Any, b: Any) -> Any:
        return self.jnp.add(a, b)

    def word_xor(self, a: Any, b: Any) -> Any:
        return self.jnp.bitwise_xor(a, b)

    def word_rotate_left(self, a: Any, bits: int) -> Any:
        jnp = self.jnp
        return jnp.left_shift(a, np.uint32(bits)) | jnp.right_shift(a, np.uint32(32 - bits))

    def word_shift_right(self, a: Any, bits: int) -> Any:
        return self.jnp.right_shift(a, np.uint32(bits))

    def word_less_than(self, a: Any, b: Any) -> Any:
        return self.jnp.less(a, np.uint32(b) if isinstance(b, int) else b)

    def word_from_bool(self, mask: Any) -> Any:
        return self.jnp.asarray(mask, self.jnp.uint32)

    def compile(self, function: Callable[..., Any]) -> Callable[..., Any]:
        return self.jax.jit(function)

    def compile_runtime_sizes(self, function: Callable[..., Any]) -> Callable[..., Any]:
        from jax import export

        tree_util = self.jax.tree_util

        def call(items: list[Any], fixed: list[Any]) -> Any:  # symbolic batch sizes, per item
            groups = [tree_util.tree_flatten(item) for item in items]
            batches = [
                sorted({a.shape[0] for a in leaves if a.ndim >= 2 and a.shape[0] >= 2})
                for leaves, _ in groups
            ]
            names = [f"n{index}_{size}" for index, sizes in enumerate(batches) for size in sizes]
            symbols = iter(export.symbolic_shape(", ".join(names)) if names else ())
            abstract = []
            for (leaves, tree), sizes in zip(groups, batches, strict=True):
                symbol = {size: next(symbols) for size in sizes}

                def relaxed(a: Any, symbol: dict[int, Any] = symbol) -> Any:
                    batch = a.ndim and symbol.get(a.shape[0])
                    shape = (batch, *a.shape[1:]) if batch else a.shape
                    return self.jax.ShapeDtypeStruct(shape, a.dtype)

                abstract.append(tree_util.tree_unflatten(tree, [relaxed(a) for a in leaves]))
            exact = tree_util.tree_map(lambda a: self.jax.ShapeDtypeStruct(a.shape, a.dtype), fixed)
            exported = export.export(self.jax.jit(function))(abstract, exact)
            return exported.call(items, fixed)  # type: ignore[no-untyped-call]

        return call

    def stage(self, function: Callable[..., Any], returns_mask: bool = False) -> Callable[..., Any]:
        return self.jax.jit(function)  # eager calls: one dispatch instead of one per operation

    def is_tracing(self, x: Any) -> bool:
        return isinstance(x, self.jax.core.Tracer)

    def in_trace(self) -> bool:
        return not self.trace_state_clean()

    def is_compiling(self, x: Any) -> bool:
        # eager jax.grad, jax.vjp and jax.vmap wrap concrete arrays, whose calls gain from staging;
        # under jax.jit the innermost value is abstract (an unknown tracer counts as abstract)
        while isinstance(x, self.jax.core.Tracer):
            x = getattr(x, "primal", getattr(x, "val", None))
        return not isinstance(x, self.jax.Array)

    def seed_words(self, seed: Any) -> Key:
        jnp = self.jnp
        if self.jnp.issubdtype(seed.dtype, self.jax.dtypes.prng_key):
            seed = self.jax.random.key_data(seed)
        if seed.ndim == 1:  # uint32[2]: (hi, lo), the key data order
            return seed[0], seed[1]
        width = seed.dtype.itemsize * 8
        low = seed.astype(f"uint{width}").astype(jnp.uint32)  # unsigned reading of the width
        high = (seed >> 32).astype(jnp.uint32) if width == 64 else self.word(0)
        return high, low

    def seed_array(self, key: Key) -> Any:
        return self.jnp.stack(key)  # uint32[2] (hi, lo): JAX has no 64-bit integers without x64

    def native_keep_mask(
        self, shape: tuple[int, ...], keep_probability: float, seed: int | Key | None, like: Any
    ) -> Any:
        # a float32 probability: float32 uniforms, with x64 on too, which is xdrop's mask
        probability = self.jnp.asarray(keep_probability, self.jnp.float32)
        return self.jax.random.bernoulli(self._key(seed), probability, shape)

    def native_normals(self, shape: tuple[int, ...], seed: int | Key | None, like: Any) -> Any:
        return self.jax.random.normal(self._key(seed), shape, self.jnp.float32)

    def _key(self, seed: int | Key | None) -> Any:
        """The JAX key of a host or traced seed."""
        if isinstance(seed, int):
            seed = (self.word(seed >> 32), self.word(seed & 0xFFFF_FFFF))
        assert seed is not None  # no global generator: seed=None was resolved to an integer
        return self.jax.random.wrap_key_data(self.seed_array(seed))

    # -- losses: Python numbers are weakly typed, so they take the array operand's dtype ----------
    def astype(self, x: Any, dtype: str) -> Any:
        return self.jnp.asarray(x).astype(dtype)

    def log_softmax(self, x: Any, axis: int) -> Any:
        return self.jax.nn.log_softmax(x, axis=axis)

    # -- rates held in arrays -----------------------------------------------------------------------
    def has_float64(self) -> bool:
        return bool(self.jax.dtypes.canonicalize_dtype(np.float64) == np.float64)

    def word_from_float(self, x: Any) -> Any:
        return self.jnp.asarray(x).astype(self.jnp.uint32)

    # -- the dropout family -------------------------------------------------------------------------
    def max_pool_2d(self, x: Any, window: int, channels_last: bool) -> Any:
        axes = (1, 2) if channels_last else (2, 3)
        sizes = tuple(window if axis in axes else 1 for axis in range(4))
        pad = tuple((window - 1, window - 1) if axis in axes else (0, 0) for axis in range(4))
        zero = self.jnp.zeros((), x.dtype)  # reduce_window pads with its initial value
        return self.jax.lax.reduce_window(x, zero, self.jax.lax.max, sizes, (1,) * 4, pad)
