"""PyTorch: words are ``int32`` tensors read as unsigned (eager ``torch.uint32`` has no arithmetic)."""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any

import numpy as np

from xdrop.errors import TracingError
from xdrop.fused import FusedCall
from xdrop.protocol import (
    Backend,
    Key,
    NamespaceFunctions,
    NativeGenerator,
    OperatorArithmetic,
    SeedArrays,
)

_SIGN_BIT = 1 << 31
_LOW_WORD = (1 << 32) - 1
_NO_INDEX = -(1 << 63)
"""nll_loss's ignore_index where every index counts: no class index is the least int64."""


class TorchBackend(Backend, OperatorArithmetic, NamespaceFunctions, SeedArrays, NativeGenerator):
    # OperatorArithmetic takes Python numbers on either side; torch's functions do the rest
    name = "torch"
    framework = "torch"
    has_global_rng = True
    compiles_slowly = True  # inductor needs seconds per graph
    # at most torch's grain size (32768), so that each eager op runs on one thread: a parallel
    # region waits for the other core, a scheduler tick on a busy machine
    chunk_size = 1 << 15

    def __init__(self) -> None:
        import torch

        from xdrop import torch_kernel  # imports torch: only once torch is in use

        self.torch = self.namespace = torch
        self.kernels = torch_kernel
        self.array_types = (torch.Tensor,)
        # a 0-d zero that compiled graphs read as an input (an attribute), not as a constant
        self.opaque_zero = torch.zeros((), dtype=torch.int64)
        self.same_width_integers = {
            torch.float16: torch.int16,
            torch.bfloat16: torch.int16,
            torch.float32: torch.int32,
            torch.float64: torch.int64,
        }

    def owns_type(self, kind: type) -> bool:  # a SymInt seed or step belongs to torch too
        return issubclass(kind, (self.torch.Tensor, self.torch.SymInt))

    def asarray(self, x: object, dtype: str | None = None) -> Any:
        if dtype is None:
            return self.torch.as_tensor(x)
        # a copy: the source may be a read-only array, which torch cannot share
        return self.torch.tensor(np.asarray(x), dtype=self._dtype(dtype))

    def in_host_memory(self, x: Any) -> bool:
        # under a torch.func transform (vmap, grad) x wraps values that cannot be read back
        return bool(x.is_cpu) and not self.kernels.transforms_active()

    def holds_values(self, x: Any) -> bool:
        return bool(x.device.type != "meta")

    def to_numpy(self, x: Any) -> np.ndarray:
        x = x.detach().cpu()
        return (x.float() if x.dtype == self.torch.bfloat16 else x).numpy().copy()

    def dtype_name(self, x: Any) -> str:
        return str(x.dtype).removeprefix("torch.")

    def shape(self, x: Any) -> tuple[int | None, ...]:
        return tuple(size if isinstance(size, int) else None for size in x.shape)  # SymInt: None

    def runtime_shape(self, x: Any) -> tuple[Any, ...]:
        return tuple(x.shape)

    def dim_array(self, dim: Any, dtype: str) -> Any:
        return self.torch.tensor(dim, dtype=self._dtype(dtype))  # a SymInt stays symbolic

    def scale(self, x: Any, factor: Any) -> Any:
        return x * factor

    def select(self, keep: Any, x: Any) -> Any:
        return self.torch.where(keep, x, self.torch.zeros((), dtype=x.dtype, device=x.device))

    def fused_dropout(self, x: Any, call: FusedCall) -> tuple[Any, Any] | None:
        return self.kernels.dropout(x, call)

    def broadcast_to(self, a: Any, shape: tuple[int, ...]) -> Any:
        return a.expand(shape)

    def full_mask(self, shape: tuple[int, ...], value: bool, like: Any = None) -> Any:
        # not torch.full: torch.jit.trace records no fill with a Python bool
        fill = self.torch.ones if value else self.torch.zeros
        return fill(shape, dtype=self.torch.bool, device=_device(like))

    def reshape(self, a: Any, shape: tuple[int, ...]) -> Any:
        # sizes as arguments: torch parses them faster than one tuple (0.8 µs against 1.3)
        return a.reshape(*shape) if shape else a.reshape(shape)

    def concat(self, arrays: list[Any], axis: int = 0) -> Any:
        return self.torch.cat(arrays, dim=axis)

    def word(self, value: int, like: Any = None) -> Any:
        return self.torch.tensor(_signed(value), dtype=self.torch.int32, device=_device(like))

    def iota(self, n: int, like: Any = None) -> Any:
        return self.torch.arange(n, dtype=self.torch.int32, device=_device(like))

    def word_add(self, a: Any, b: Any) -> Any:
        return a + b  # int32 addition wraps around, as unsigned addition does

    def word_xor(self, a: Any, b: Any) -> Any:
        return a ^ b

    def word_rotate_left(self, a: Any, bits: int) -> Any:
        # >> is arithmetic on int32: mask off the copies of the sign bit it shifts in
        return (a << bits) | ((a >> (32 - bits)) & ((1 << bits) - 1))

    # in place where a can hold the result (a 0-d a cannot grow); inductor fuses either form
    def word_iadd(self, a: Any, b: Any) -> Any:
        return a.add_(b) if a.ndim else a + b

    def word_ixor(self, a: Any, b: Any) -> Any:
        return a.bitwise_xor_(b) if a.ndim else a ^ b

    def word_irotate_left(self, a: Any, bits: int) -> Any:
        if not a.ndim or self.kernels.recorded():  # no cached tensors in a recorded graph
            return self.word_rotate_left(a, bits)
        left, right, mask = _rotation(bits, a.device)  # tensors: a Python int costs a wrapping
        low = a << left
        return a.bitwise_right_shift_(right).bitwise_and_(mask).bitwise_or_(low)

    def word_shift_right(self, a: Any, bits: int) -> Any:
        return (a >> bits) & ((1 << (32 - bits)) - 1)  # >> is arithmetic on int32

    def word_less_than(self, a: Any, b: Any) -> Any:
        # flipping the sign bit maps unsigned order onto signed order
        flipped = b - _SIGN_BIT if isinstance(b, int) else b ^ -_SIGN_BIT
        return (a ^ -_SIGN_BIT) < flipped

    def word_from_bool(self, mask: Any) -> Any:
        return mask.to(self.torch.int32)

    def compile(self, function: Callable[..., Any]) -> Callable[..., Any]:
        return self.torch.compile(function, fullgraph=True, dynamic=False)

    def compile_runtime_sizes(self, function: Callable[..., Any]) -> Callable[..., Any]:
        # inductor skips the rounding of half-precision intermediates unless asked: a rate held
        # in a tensor gives its scale in the graph, which must be rounded to x's dtype
        return self.torch.compile(
            function, fullgraph=True, dynamic=True, options={"emulate_precision_casts": True}
        )

    def is_tracing(self, x: Any) -> bool:
        # under torch.func's transforms a tensor may stand for a batch of values (vmap), which
        # no read gives back: its value is used as a traced one's is
        return self.kernels.recorded() or self.kernels.transforms_active()

    def in_trace(self) -> bool:
        # torch.func's transforms run eagerly: a seed drawn on the host, a Python int folded
        # in, are what they are in the next call too, not constants of a graph
        return bool(self.kernels.recorded())

    traces_python_ints = True

    def seed_from_int(self, seed: int, like: Any) -> Any:
        if not self.torch.compiler.is_compiling():
            return None
        if seed >= 1 << 63:  # no graph input of inductor's holds it (int64): a constant, guarded
            seed = operator.index(seed)
        words = [seed // (1 << 32), seed % (1 << 32)]  # (hi, lo): each within int64's range
        tensor = self.torch.tensor(words, dtype=self.torch.int64, device=_device(like))
        # inductor's lowering grows exponentially on a Threefry chain whose every leaf is a
        # constant (a specialised int seed with a static shape); a key read through a buffer it
        # cannot fold keeps the compilation to seconds
        return tensor ^ self.opaque_zero.to(tensor.device)

    def seed_words(self, seed: Any) -> Key:
        torch = self.torch
        width = torch.iinfo(seed.dtype).bits
        if seed.ndim == 1:  # uint32[2]: (hi, lo)
            return self._word_of_int64(seed[0].to(torch.int64)), self._word_of_int64(
                seed[1].to(torch.int64)
            )
        value = seed.to(torch.int64)
        if width < 64:  # a negative value means its unsigned two's complement of the width
            value = value & ((1 << width) - 1)
        return self._word_of_int64(value >> 32), self._word_of_int64(value)

    def seed_array(self, key: Key) -> Any:
        high, low = (word.to(self.torch.int64) & _LOW_WORD for word in key)
        return (high << 32) | low  # int64, read as unsigned: the seed's two's complement

    def native_keep_mask(
        self, shape: tuple[int, ...], keep_probability: float, seed: int | Key | None, like: Any
    ) -> Any:
        uniform = self.torch.rand(shape, device=_device(like), **self._drawing(seed, like))
        return uniform < keep_probability

    def native_dropout(
        self, x: Any, keep_probability: float, seed: int | Key | None, factor: float | None
    ) -> Any:
        torch = self.torch
        integers = self.same_width_integers.get(x.dtype)
        # bits carry neither a gradient nor a tangent: autograd's path selects with the mask
        differentiated = x.requires_grad and torch.is_grad_enabled()
        differentiated = differentiated or self.kernels.forward_ad_level() >= 0
        if integers is None or differentiated or x.layout != torch.strided:
            return None
        if torch.compiler.is_compiling():
            return None
        # the uniforms of native_keep_mask, turned in place into words of all ones where kept
        # (0 <= u < q compares as its bits do) and anded with x's bits: +0.0 where dropped, and
        # no pass over a fresh output but rand's (a select costs 5 ns an element on CPU)
        uniform = torch.rand(x.shape, device=x.device, **self._drawing(seed, x))
        threshold = int(np.float32(keep_probability).view(np.int32))
        words = uniform.view(torch.int32).sub_(threshold).bitwise_right_shift_(31)
        if integers != torch.int32:
            words = words.to(integers)
        bits = x.resolve_neg().contiguous().view(integers)  # a lazily negated view has no bits view
        y = words.bitwise_and_(bits).view(x.dtype)
        return y if factor is None else y.mul_(factor)

    def native_normals(self, shape: tuple[int, ...], seed: int | Key | None, like: Any) -> Any:
        return self.torch.randn(
            shape, dtype=self.torch.float32, device=_device(like), **self._drawing(seed, like)
        )

    def _drawing(self, seed: int | Key | None, like: Any) -> dict[str, Any]:
        """The ``generator=`` argument of a draw, or none for the global generator:
        ``torch.compile`` fails on ``generator=None`` beside sizes it made symbolic."""
        generator = self._generator(seed, like)
        return {} if generator is None else {"generator": generator}

    def _generator(self, seed: int | Key | None, like: Any) -> Any:
        """A ``torch.Generator`` seeded with ``seed`` on ``like``'s device; None: the global one."""
        if isinstance(seed, tuple):  # a seed tensor's key words: torch.Generator takes an int
            if self.torch.compiler.is_compiling():
                raise TracingError(
                    'torch\'s own generator (rng="native") takes its seed as a Python int, which '
                    'a traced seed tensor is not under torch.compile; use rng="portable" there'
                )
            high, low = (int(word) & _LOW_WORD for word in seed)
            seed = high << 32 | low  # the same draws as the integer the tensor holds
        if seed is None:
            return None
        if self.kernels.jit_tracing():
            raise TracingError(
                "torch.jit.trace records no torch.Generator: the traced graph would draw from "
                'the global one, whatever the seed; use rng="portable" there'
            )
        return self.torch.Generator(device=_device(like) or "cpu").manual_seed(seed)

    # -- losses: operators take Python numbers on either side, in the tensor's dtype and device ----
    def astype(self, x: Any, dtype: str) -> Any:
        return x.to(self._dtype(dtype))

    def log_softmax(self, x: Any, axis: int) -> Any:
        return self.torch.log_softmax(x, dim=axis)

    def sum(self, x: Any, axis: int | None = None) -> Any:
        return x.sum() if axis is None else x.sum(axis)  # torch.sum's keywords cost more

    take_raises_out_of_range = True  # gather checks its indices, negative ones included

    def take_along_axis(self, x: Any, indices: Any, axis: int) -> Any:
        torch = self.torch
        if indices.dtype != torch.int64:  # what gather and nll_loss take
            indices = indices.long()
        if not torch.compiler.is_compiling():
            # indices have x's shape but at axis (the protocol's contract), so gather needs none
            # of take_along_dim's broadcasting, which doubles the cost of a small call
            return torch.gather(x, axis, indices)
        # compiled, gather's gradient is a scatter into a zeroed array, a kernel of its own;
        # nll_loss's is a select that Inductor fuses into the loss's other kernels (its forward
        # is the same gather, bounds check included). It picks -x[i, index[i]] from rows [P, C]
        rows, picks = x.movedim(axis, -1), indices.movedim(axis, -1)
        negated = torch.nn.functional.nll_loss(
            rows.reshape(-1, rows.shape[-1]),
            picks.reshape(-1),
            reduction="none",
            ignore_index=_NO_INDEX,
        )
        return (-negated).reshape(picks.shape).movedim(-1, axis)

    def split(self, x: Any, sections: int, axis: int) -> list[Any]:
        return list(self.torch.tensor_split(x, sections, dim=axis))  # chunk may give fewer parts

    # -- rates held in arrays -----------------------------------------------------------------------
    def word_from_float(self, x: Any) -> Any:
        return self._word_of_int64(x.to(self.torch.int64))

    def _word_of_int64(self, value: Any) -> Any:
        """The low 32 bits of an int64 tensor as a word (int32 read as unsigned)."""
        return (((value & _LOW_WORD) ^ _SIGN_BIT) - _SIGN_BIT).to(self.torch.int32)

    def _dtype(self, name: str) -> Any:
        dtype = getattr(self.torch, name, None)
        if not isinstance(dtype, self.torch.dtype):
            raise TypeError(f"torch has no dtype {name!r}")
        return dtype

    # -- the dropout family -------------------------------------------------------------------------
    def max_pool_2d(self, x: Any, window: int, channels_last: bool) -> Any:
        functional = self.torch.nn.functional  # NCHW only, and padding at most window // 2
        nchw = x.permute(0, 3, 1, 2) if channels_last else x
        padded = functional.pad(nchw, (window - 1,) * 4)
        pooled = functional.max_pool2d(padded, window, stride=1)
        return pooled.permute(0, 2, 3, 1) if channels_last else pooled


@functools.lru_cache
def _rotation(bits: int, device: Any) -> tuple[Any, Any, Any]:
    """The int32 scalars of a rotation left by ``bits``: the two shifts and the mask."""
    import torch

    return tuple(  # type: ignore[return-value]
        torch.tensor(value, dtype=torch.int32, device=device)
        for value in (bits, 32 - bits, (1 << bits) - 1)
    )


def _signed(value: int) -> int:
    return value - (1 << 32) if value >= _SIGN_BIT else value


def _device(like: Any) -> Any:
    return getattr(like, "device", None)
