"""Fused dropout of ``torch.Tensor``\\ s, and an autograd function that saves nothing for backward.

Dropout is linear in ``x``: ``y = where(keep, x * s, +0.0)``, so the gradient with respect to
``x`` is the same map applied to the incoming gradient, ``where(keep, g * s, +0.0)`` — exactly
what the spec's path computes by differentiating ``select(keep, scale(x, s))``. The backward
pass therefore runs the kernel again from the pass's description (a
:class:`~xdrop.fused.FusedCall`: the key, the offset, the threshold and the scale, Python numbers)
instead of keeping the mask: no tensor is saved for backward (``F.dropout`` saves a
4-byte-per-element mask, the spec's path a 1-byte one). The backward is the same autograd function,
so higher derivatives work too; forward-mode AD applies the same map to the tangent.

CPU tensors run the compiled kernel on their buffers (:mod:`xdrop.kernel`), CUDA tensors the
Triton kernel (:mod:`xdrop.triton_kernel`) when Triton is installed. Anything else — other devices,
tensor subclasses, ``torch.func`` transforms — is left to the spec's operations (None).
Imported by the torch backend once torch is, never by ``import xdrop``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from xdrop import kernel
from xdrop.fused import FusedCall

# torch dtype -> (the name the kernels know, the integer dtype of the same width, to view bits)
_DTYPES = {
    torch.float16: ("float16", torch.int16),
    torch.bfloat16: ("bfloat16", torch.int16),
    torch.float32: ("float32", torch.int32),
    torch.float64: ("float64", torch.int64),
}
_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)

Write = Callable[[Any, Any, Any, FusedCall], None]
"""``write(source, y, keep, call)``: ``call``'s pass over the contiguous ``source`` into ``y`` and
``keep`` (None: no mask), all of one device — :func:`_write_on_cpu`, or
:func:`xdrop.triton_kernel.write` for CUDA tensors."""


def dropout(x: Any, call: FusedCall) -> tuple[Any, Any] | None:
    """:meth:`~xdrop.protocol.Backend.fused_dropout` for torch: ``(y, keep or None)``, with the
    autograd function where ``x`` needs a gradient; None where no kernel applies."""
    if type(x) not in _PLAIN_TYPES or x.dtype not in _DTYPES or x.layout != torch.strided:
        return None
    if transforms_active():  # torch.func wraps tensors: their buffers are not the values
        return None
    if x.device.type == "cpu":
        if not kernel.usable():
            return None
        write: Write = _write_on_cpu
    elif x.device.type == "cuda" and _triton() is not None and kernel.enabled():
        write = _triton().write
    else:
        return None
    if (x.requires_grad and torch.is_grad_enabled()) or forward_ad_level() >= 0:
        y, keep = _fused_dropout(x, write, call)
        return y, keep
    return one_pass(x, write, call)


def one_pass(x: Any, write: Write, call: FusedCall) -> tuple[Any, Any]:
    """``(y, keep or None)`` from ``write`` on ``x``'s buffer: a strided ``x`` is copied to
    row-major order first (the mask follows the logical row-major index); ``y`` and ``keep``
    are new contiguous tensors on ``x``'s device."""
    # a lazily negated (or conjugated) view holds the buffer of the values it negates: the
    # kernel reads buffers, so the bits are resolved first (no copy where none is set)
    source = x.detach().resolve_neg().resolve_conj()
    if not source.is_contiguous():
        source = source.contiguous()
    # empty_like: a quarter of torch.empty's cost, which matters at 1e3 elements
    y = torch.empty_like(source, memory_format=torch.contiguous_format)
    keep = None
    if call.return_mask:
        keep = torch.empty_like(source, dtype=torch.bool, memory_format=torch.contiguous_format)
    write(source, y, keep, call)
    return y, keep


class FusedDropout(torch.autograd.Function):
    """``y = one_pass(x)``, a linear map of ``x``; its derivative is the same pass over the
    gradient (or the tangent). Only ``write`` and ``call`` — a function and Python numbers — are
    kept for backward."""

    @staticmethod
    def forward(ctx: Any, x: Any, write: Write, call: FusedCall) -> tuple[Any, Any]:
        ctx.write, ctx.call = write, call.without_mask()
        y, keep = one_pass(x, write, call)
        if keep is not None:
            ctx.mark_non_differentiable(keep)
        return y, keep

    @staticmethod
    def backward(ctx: Any, gradient: Any, _keep_gradient: Any) -> tuple[Any, None, None]:
        # through the autograd function again: differentiable when create_graph=True
        gradient_x, _ = _fused_dropout(gradient, ctx.write, ctx.call)
        return gradient_x, None, None

    @staticmethod
    def jvp(ctx: Any, tangent: Any, _write: Any, _call: Any) -> tuple[Any, None]:
        return one_pass(tangent, ctx.write, ctx.call)[0], None


_fused_dropout: Callable[[Any, Write, FusedCall], tuple[Any, Any]] = FusedDropout.apply  # typed


def _write_on_cpu(source: Any, y: Any, keep: Any, call: FusedCall) -> None:
    """The compiled kernel on CPU tensors' buffers, shared with NumPy (zero-copy), on at most
    ``torch.get_num_threads()`` of torch's OpenMP threads."""
    name, words = _DTYPES[source.dtype]
    if name == "bfloat16":  # NumPy has no bfloat16: the kernel reads its 16-bit words
        source, y = source.view(words), y.view(words)
    # torch.set_num_threads limits all of a process's tensor work: the kernel's threads too.
    # torch.get_num_threads() also sets this thread's OpenMP team to torch's count, the team the
    # kernel's parallel region takes, so it is called here on every call, not cached
    kernel.host_dropout(
        source.numpy(),
        y.numpy(),
        None if keep is None else keep.numpy(),
        name,
        call,
        torch.get_num_threads(),
        openmp=True,
    )


def forward_ad_level() -> int:
    """The innermost ``forward_ad.dual_level`` open (-1: none), where ``x`` may carry a tangent;
    0 (one may be open) if torch no longer says."""
    return int(getattr(torch.autograd.forward_ad, "_current_level", 0))


def recorded() -> bool:
    """Whether ``torch.compile`` or ``torch.jit.trace`` records this call as a graph: a value
    read on the host would be baked into it, and a kernel writing into a buffer left out."""
    return torch.compiler.is_compiling() or _IS_JIT_TRACING()  # Dynamo never asks the second


def jit_tracing() -> bool:
    """Whether ``torch.jit.trace`` (which records torch's operations, no Python object) does."""
    return not torch.compiler.is_compiling() and _IS_JIT_TRACING()


_IS_JIT_TRACING = torch._C._is_tracing  # what torch.jit.is_tracing asks, without its checks


def transforms_active() -> bool:
    """Whether a ``torch.func`` transform (``grad``, ``vmap``...) is running; True if torch no
    longer says, which leaves every call to the spec's operations."""
    return True if _ARE_TRANSFORMS_ACTIVE is None else bool(_ARE_TRANSFORMS_ACTIVE())


_ARE_TRANSFORMS_ACTIVE = getattr(torch._C, "_are_functorch_transforms_active", None)


@functools.lru_cache(maxsize=1)
def _triton() -> Any:
    """:mod:`xdrop.triton_kernel`, or None where Triton is not installed."""
    try:
        from xdrop import triton_kernel
    except ImportError:
        return None
    return triton_kernel
