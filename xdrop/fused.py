"""One fused dropout pass, described once: what :meth:`xdrop.protocol.Backend.fused_dropout`
receives and hands on, unchanged, to the kernel that runs it.

:func:`xdrop.kernel.dropout` plans the pass from the seed, the first counter, ``C`` and the
factor; the backend's hook, :mod:`xdrop.torch_kernel` (and torch's backward pass, which runs the
same pass on the gradient) and the compiled and Triton kernels all read this one value, so the
stream's parameters are named in one place rather than passed along as five loose numbers.

Imports nothing from xdrop: the protocol names it.
"""

from __future__ import annotations

from typing import NamedTuple


# a NamedTuple, not a frozen dataclass: made once per eager call, it costs half as much
class FusedCall(NamedTuple):
    """Training dropout of one array in one pass, for element ``i`` in row-major order::

        keep_i = bits(key, offset + i) < threshold
        y_i    = x_i * factor if keep_i else +0.0        (x_i itself for factor=None)

    with ``bits`` mask stream v1 (:mod:`xdrop.spec`): exactly the bits of the spec's operations.

    Attributes:
        key: the key words ``(k0, k1)`` as Python integers below ``2**32``.
        offset: the counter of element 0 (``0 <= offset <= 2**64 - size``).
        threshold: ``T = keep_threshold(p)``, a multiple of ``2**9`` up to ``2**32`` (keeps all).
        factor: the scale ``s``, or None for none (classic mode, and ``p == 1``).
        return_mask: whether the keep mask comes back with the output.

    Example:
        >>> from xdrop.fused import FusedCall
        >>> call = FusedCall(key=(0, 42), offset=0, threshold=2**31, factor=2.0,
        ...                  return_mask=True)
        >>> call.without_mask().return_mask
        False
    """

    key: tuple[int, int]
    offset: int
    threshold: int
    factor: float | None
    return_mask: bool

    def without_mask(self) -> FusedCall:
        """The same pass without the mask: what a derivative (the pass applied to a gradient or
        a tangent) needs."""
        return FusedCall(self.key, self.offset, self.threshold, self.factor, return_mask=False)
