"""Seeds: validation, the stateful :class:`Generator`, and the global generator behind ``seed=None``."""

from __future__ import annotations

import secrets
import threading

from xdrop import spec
from xdrop.errors import XdropError
from xdrop.validation import check_fold_data, check_seed


class Generator:
    """A stream of seeds: the ``k``-th use yields ``fold_in(seed, k)``.

    Pass it as ``seed=`` to draw a fresh, reproducible seed on every call; it is thread-safe.

    >>> g = xdrop.Generator(42)
    >>> first, second = g.next_seed(), g.next_seed()
    >>> first == xdrop.fold_in(42, 0) and second == xdrop.fold_in(42, 1)
    True
    """

    def __init__(self, seed: int) -> None:
        self._seed = check_seed(seed)
        self._count = 0
        self._lock = threading.Lock()

    @property
    def seed(self) -> int:
        """The seed this generator was started from."""
        return self._seed

    @property
    def draws(self) -> int:
        """How many seeds it has yielded so far."""
        return self._count

    def next_seed(self) -> int:
        """The next seed of the stream."""
        with self._lock:
            count = self._count
            if count >= spec.WORD_COUNT:
                raise XdropError(f"{self!r} has yielded all 2**32 seeds of its stream")
            self._count = count + 1
        return spec.fold_in(self._seed, count)

    def __repr__(self) -> str:
        return f"xdrop.Generator(seed={self._seed}, draws={self._count})"


_global = Generator(secrets.randbits(64))


def manual_seed(seed: int) -> Generator:
    """Restart the global generator used by ``seed=None`` from ``seed`` and return it.

    >>> xdrop.manual_seed(0)
    xdrop.Generator(seed=0, draws=0)
    """
    global _global
    _global = Generator(seed)
    return _global


def global_generator() -> Generator:
    """The generator that ``seed=None`` draws from (seeded from the OS until ``manual_seed``)."""
    return _global


SeedLike = int | Generator | None


def resolve_seed(seed: object) -> int:
    """The host seed a call uses: ``None`` and generators yield their next seed."""
    if seed is None:
        return _global.next_seed()
    if isinstance(seed, Generator):
        return seed.next_seed()
    return check_seed(seed)


def validate_seed(seed: object) -> None:
    """Reject a bad seed without drawing one (used where no mask is drawn, e.g. in eval)."""
    if seed is not None and not isinstance(seed, Generator):
        check_seed(seed)


def fold_in(seed: int, data: int) -> int:
    """Derive an independent seed from ``seed`` and a 32-bit integer ``data`` (e.g. a step).

    ``fold_in(s, d)`` is the seed ``(y0 << 32) | y1`` where ``(y0, y1)`` is Threefry-2x32-20 of the
    key of ``s`` at counter ``(0, d)``: exactly ``jax.random.fold_in``.

    Args:
        seed: an integer in ``[0, 2**64)``.
        data: an integer in ``[0, 2**32)``.

    >>> xdrop.fold_in(0, 1) != xdrop.fold_in(0, 2)
    True
    """
    return spec.fold_in(check_seed(seed), check_fold_data(data))
