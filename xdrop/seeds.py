"""Seeds: the stateful :class:`Generator`, the global generator behind ``seed=None``, seeds held in
arrays (traceable), ``fold_in``, and the choice between the portable and the native generator."""

from __future__ import annotations

import os
import secrets
import threading

import numpy as np

from xdrop import spec
from xdrop.errors import TracingError, XdropError, bad_type, bad_value
from xdrop.protocol import Array, Backend, Key
from xdrop.registry import backend_for, imported_backends, int_tracing_backend, load
from xdrop.tracing import called_as_is, host_constant
from xdrop.validation import as_integer, check_fold_data, check_seed

RNG_KINDS = ("portable", "native")
RNG_ENVIRONMENT_VARIABLE = "XDROP_RNG"
SEED_ALLOWED = (
    "an integer in [0, 2**64), an xdrop.Generator, None, a 0-d integer array, "
    "a uint32[2] array (hi, lo) or a JAX key"
)
INTEGER_DTYPES = frozenset(
    f"{sign}int{bits}" for sign in ("", "u") for bits in (8, 16, 32, 64)
)  # fmt: skip


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


SeedLike = int | Generator | Array | None


# -- resolving a call's seed ------------------------------------------------------------------------
def host_seed(seed: object) -> int | None:
    """``seed`` as a host integer if it is one (Python/NumPy integer, NumPy seed array), else None."""
    if isinstance(seed, np.ndarray):
        check_seed_array(seed.dtype.name, seed.shape, seed)
        if seed.shape == (2,):
            return (int(seed[0]) << 32) | int(seed[1])
        width = 8 * int(seed.dtype.itemsize)
        return int(seed) % (1 << width)  # a negative value: its two's complement of the width
    if as_integer(seed) is None:
        return None
    return check_seed(seed)


def check_seed_array(dtype: str, shape: tuple[int, ...], seed: object) -> None:
    is_integer_scalar = shape == () and dtype in INTEGER_DTYPES
    is_key_data = shape == (2,) and dtype == "uint32"
    is_jax_key = shape == () and dtype.startswith("key<")
    if not (is_integer_scalar or is_key_data or is_jax_key):
        raise bad_type("seed", seed, f"{SEED_ALLOWED} (got dtype {dtype}, shape {shape})")


def resolve(seed: object, xp: Backend, like: Array | None) -> int | Key:
    """The seed a call uses: a host integer, or the key words of a seed array of ``xp``.
    ``None`` and generators draw their next seed, which cannot happen inside a trace."""
    if seed is None or isinstance(seed, Generator):
        refuse_to_draw_in_a_trace()
        return (seed or _global).next_seed()
    host = host_seed(seed)
    if host is not None:
        return host
    if xp.is_array(seed):
        check_seed_array(xp.dtype_name(seed), xp.shape(seed), seed)
        return xp.seed_words(seed)
    raise bad_type("seed", seed, SEED_ALLOWED)


@host_constant
def refuse_to_draw_in_a_trace() -> None:
    """Raise :class:`TracingError` if any imported framework is tracing now. It looks at every
    framework, not just the one of the call's arrays (``dropout_mask`` may have none), and runs
    as plain Python under ``torch.compile``, so the user reads this message."""
    tracing = [backend.name for backend in imported_backends() if backend.in_trace()]
    if tracing:
        raise _drawn_seed_in_trace(tracing[0])


def seed_key(seed: object, xp: Backend, like: Array | None) -> Key:
    """The key words of the seed a call uses."""
    resolved = resolve(seed, xp, like)
    if not isinstance(resolved, int):
        return resolved
    array = xp.seed_from_int(resolved, like)
    return spec.key_words(xp, resolved, like) if array is None else xp.seed_words(array)


def native_seed(seed: object, xp: Backend, like: Array | None) -> int | Key | None:
    """The seed for the framework's own generator: ``None`` keeps the framework's global one."""
    if seed is None and xp.has_global_rng:
        return None
    return resolve(seed, xp, like)


def validate_seed(seed: object) -> None:
    """Reject a bad seed without drawing one (used where no mask is drawn, e.g. in eval)."""
    if seed is None or isinstance(seed, Generator) or host_seed(seed) is not None:
        return
    xp = backend_for(seed)
    if not xp.is_array(seed):
        raise bad_type("seed", seed, SEED_ALLOWED)
    check_seed_array(xp.dtype_name(seed), xp.shape(seed), seed)


def _drawn_seed_in_trace(framework: str) -> TracingError:
    return TracingError(
        f"seed=None and xdrop.Generator seeds are drawn on the host, so while {framework} traces "
        "(jax.jit, tf.function, torch.compile) one seed would be baked into the compiled graph "
        "and every call would drop the same units. Pass the seed as an argument of the compiled "
        "function, e.g. seed=xdrop.fold_in(base_seed, step) with step a traced integer."
    )


# -- fold_in ----------------------------------------------------------------------------------------
@called_as_is
def fold_in(seed: object, data: object) -> object:
    """Derive an independent seed from ``seed`` and a 32-bit integer ``data`` (e.g. a step).

    ``fold_in(s, d)`` is the seed ``(y0 << 32) | y1`` where ``(y0, y1)`` is Threefry-2x32-20 of the
    key of ``s`` at counter ``(0, d)``: exactly ``jax.random.fold_in``.

    Args:
        seed: an integer in ``[0, 2**64)``, or a seed array of a framework (traceable).
        data: an integer in ``[0, 2**32)``, or a 0-d integer array of a framework (traceable; its
            low 32 bits are used).

    Returns:
        An ``int`` for host integers. For arrays, a seed array of their framework: a 0-d int64
        (holding the seed's two's complement) where 64-bit integers are available, else a
        uint32[2] ``(hi, lo)`` as JAX key data. Either is accepted as ``seed=``.

    >>> xdrop.fold_in(0, 1) != xdrop.fold_in(0, 2)
    True
    """
    host = host_seed(seed)
    host_data = check_fold_data(data) if as_integer(data) is not None else None
    if host is not None and host_data is not None:
        compiler = int_tracing_backend()
        if compiler is None:
            return spec.fold_in(host, host_data)
        # the ints may be graph inputs: fold them in the graph, not on the host
        xp = load(compiler)
        key = seed_key(host, xp, like=None)
        return xp.seed_array(spec.fold_in_words(xp, key, xp.word(host_data)))
    if isinstance(seed, Generator) or seed is None:
        raise bad_type("seed", seed, "an integer in [0, 2**64) or a seed array")
    xp = backend_for(seed if host is None else data)
    key = seed_key(seed, xp, like=None if host is None else data)
    if host_data is not None:
        data_word = xp.word(host_data, key[0])
    else:
        if not xp.is_array(data):
            raise bad_type("data", data, "an integer in [0, 2**32) or a 0-d integer array")
        if xp.shape(data) != () or xp.dtype_name(data) not in INTEGER_DTYPES:
            raise bad_type("data", data, "an integer in [0, 2**32) or a 0-d integer array")
        data_word = xp.seed_words(data)[1]
    return xp.seed_array(spec.fold_in_words(xp, key, data_word))


# -- portable or native ---------------------------------------------------------------------------------
_chosen_rng: str | None = None


def check_rng(rng: object) -> str:
    if rng not in RNG_KINDS:
        raise bad_value("rng", rng, 'one of "portable", "native"')
    return str(rng)


def get_rng() -> str:
    """The generator used when a call passes no ``rng``: ``set_rng`` > ``XDROP_RNG`` > portable.

    >>> xdrop.get_rng()
    'portable'
    """
    if _chosen_rng is not None:
        return _chosen_rng
    from_environment = os.environ.get(RNG_ENVIRONMENT_VARIABLE, "").strip()
    if from_environment:
        if from_environment not in RNG_KINDS:
            raise bad_value(RNG_ENVIRONMENT_VARIABLE, from_environment, '"portable" or "native"')
        return from_environment
    return "portable"


def rng_kind(rng: object) -> str:
    """The generator a call uses: ``rng`` itself, or the default when it is None."""
    return get_rng() if rng is None else check_rng(rng)


def set_rng(rng: str | None) -> None:
    """Choose the default generator: ``"portable"`` (mask stream v1, bit-identical everywhere) or
    ``"native"`` (the framework's own generator); ``None`` goes back to ``XDROP_RNG``.

    >>> xdrop.set_rng("portable")
    """
    global _chosen_rng
    _chosen_rng = None if rng is None else check_rng(rng)
