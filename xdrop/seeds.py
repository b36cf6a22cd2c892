"""Seeds: the stateful :class:`Generator`, the global generator behind ``seed=None``, seeds held in
arrays (traceable), ``fold_in``, and the choice between the portable and the native generator."""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from xdrop import defaults, spec
from xdrop.errors import Shown, TracingError, XdropError, bad_type, bad_value
from xdrop.protocol import Array, Backend, Key, NativeBackend, SeedBackend, require
from xdrop.registry import (
    backend_for,
    imported_backends,
    int_tracing_backend,
    load,
    owner_of_type,
)
from xdrop.tracing import called_as_is, host_constant
from xdrop.typing import Rng
from xdrop.validation import (
    as_integer,
    check_choice,
    check_fold_data,
    check_seed,
    holds_values_here,
    seed_value,
    shorten,
)

RNG_KINDS = ("portable", "native")
RNG_ENVIRONMENT_VARIABLE = defaults.RNG.environment_variable
SEED_ALLOWED = (
    "an integer in [0, 2**64), an xdrop.Generator, None, a 0-d integer array, "
    "a uint32[2] array (hi, lo) or a JAX key"
)
THREEFRY_KEY_DTYPE = "key<fry>"
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

    # pickling and copying keep the stream's position; the copy gets a lock of its own
    def __getstate__(self) -> dict[str, int]:
        return self.state_dict()

    def __setstate__(self, state: dict[str, int]) -> None:
        self._lock = threading.Lock()
        self._seed, self._count = 0, 0
        self.load_state_dict(state)

    def state_dict(self) -> dict[str, int]:
        """The generator's state, ``{"seed": ..., "draws": ...}``, to save with a checkpoint.

        >>> g = xdrop.Generator(7); _ = g.next_seed()
        >>> g.state_dict()
        {'seed': 7, 'draws': 1}
        """
        with self._lock:
            return {"seed": self._seed, "draws": self._count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the stream saved by :meth:`state_dict`: the next seed is the one that the
        saved generator would have yielded next."""
        if not isinstance(state, dict) or set(state) != {"seed", "draws"}:
            raise bad_type("state", state, 'a dict {"seed": int, "draws": int} from state_dict()')
        seed = check_seed(state["seed"], 'state["seed"]')
        draws = as_integer(state["draws"])
        if draws is None or not 0 <= draws <= spec.WORD_COUNT:
            raise bad_value('state["draws"]', state["draws"], "an integer in [0, 2**32]")
        with self._lock:
            self._seed, self._count = seed, draws

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
_manually_seeded = False


def manual_seed(seed: int) -> Generator:
    """Restart the global generator used by ``seed=None`` from ``seed`` and return it.

    A process forked afterwards continues the same stream (as ``torch.manual_seed`` and NumPy's
    global state do); until ``manual_seed`` is called, each forked child reseeds from the OS.

    >>> xdrop.manual_seed(0)
    xdrop.Generator(seed=0, draws=0)
    """
    global _global, _manually_seeded
    _global = Generator(seed)
    _manually_seeded = True
    return _global


def _after_fork_in_child() -> None:
    """A forked child (multiprocessing on Linux, DataLoader workers) must not draw its parent's
    ``seed=None`` masks: it reseeds from the OS, unless ``manual_seed`` asked for reproducible
    draws, which then continue the parent's stream. Either way its lock is new: another thread
    of the parent may have held the old one at the fork, and it would never be released."""
    global _global
    if _manually_seeded:
        _global._lock = threading.Lock()
    else:
        _global = Generator(secrets.randbits(64))


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


def global_generator() -> Generator:
    """The generator that ``seed=None`` draws from (seeded from the OS until ``manual_seed``)."""
    return _global


SeedLike = int | Generator | Array | None


# -- resolving a call's seed ------------------------------------------------------------------------
def host_seed(seed: object) -> int | None:
    """``seed`` as a host integer if it is one (Python/NumPy integer, NumPy seed array), else None.

    A value with an integer dtype (a NumPy scalar or an array of any framework) is read as the
    unsigned two's complement of its width, so that ``np.int64(-1)``, ``np.array(-1)`` and
    ``torch.tensor(-1)`` are all the seed ``2**64 - 1``; a Python int must be in ``[0, 2**64)``."""
    if isinstance(seed, np.ndarray):
        check_seed_array(seed.dtype.name, seed.shape, seed)
        return seed_value(seed)
    if as_integer(seed) is None:
        return None
    return check_seed(seed)


def check_seed_array(dtype: str, shape: tuple[int | None, ...], seed: object) -> None:
    is_integer_scalar = shape == () and dtype in INTEGER_DTYPES
    is_key_data = shape == (2,) and dtype == "uint32"
    is_jax_key = shape == () and dtype == THREEFRY_KEY_DTYPE
    if shape == () and dtype.startswith("key<") and not is_jax_key:
        raise bad_type(
            "seed",
            seed,
            f"a JAX key of the Threefry implementation (dtype {THREEFRY_KEY_DTYPE}, "
            f'jax.random.key(n, impl="threefry2x32")); mask stream v1 is Threefry, and a key of '
            f"dtype {dtype} holds other words",
        )
    if not (is_integer_scalar or is_key_data or is_jax_key):
        # the value, and what it holds: its repr may not say (a torch tensor's omits the shape)
        shown = Shown(f"{shorten(repr(seed))} (dtype {dtype}, shape {shape})", type(seed).__name__)
        raise bad_type("seed", shown, SEED_ALLOWED)


SEED_IN_AN_ARRAY = ("a seed held in an array", "pass the seed as a Python int")
"""What a seed held in an array needs, and what a backend without it can do instead."""


def seed_of_allowed(name: str) -> str:
    """The seeds a call on the array called ``name`` takes."""
    return (
        f"an integer in [0, 2**64), an xdrop.Generator, None, or a seed array of {name}'s "
        "framework (a 0-d integer array, a uint32[2] array (hi, lo) or a JAX key)"
    )


def resolve(seed: object, xp: Backend, like: Array | None, name: str = "x") -> int | Key:
    """The seed a call uses: a host integer, or the key words of a seed array of ``xp``.
    ``None`` and generators draw their next seed, which cannot happen inside a trace.
    ``like`` is the call's array, called ``name`` in messages."""
    if seed is None or isinstance(seed, Generator):
        refuse_to_draw_in_a_trace()
        return (seed or _global).next_seed()
    host = host_seed(seed)
    if host is not None:
        return host
    check_seed_of(seed, xp, like, name)
    return require(xp, SeedBackend, *SEED_IN_AN_ARRAY).seed_words(seed)


def check_seed_of(seed: object, xp: Backend, like: Array | None, name: str) -> None:
    """A seed that is no host integer, for a call of ``xp`` beside ``like`` (called ``name``):
    an array of ``xp``, of a seed's dtype and shape, holding a value where ``like`` does (a
    torch seed on the meta device cannot be read)."""
    if not xp.is_array(seed):
        # an array of another framework is told which one to use
        foreign = owner_of_type(type(seed)) is not None
        raise bad_type("seed", seed, seed_of_allowed(name) if foreign else SEED_ALLOWED)
    check_seed_owner(seed, xp, name)
    dtype = xp.dtype_name(seed)
    check_seed_array(dtype, xp.shape(seed), seed)
    if not xp.is_tracing(seed) and not holds_values_here(xp, seed, like):
        shown = Shown(f"<{dtype} array that holds no value>", type(seed).__name__)
        raise bad_value("seed", shown, f"a seed array whose value can be read, on {name}'s device")


def check_seed_owner(seed: Array, xp: Backend, name: str = "x") -> None:
    """A seed array must belong to ``xp``, the backend of the call's arrays. A generic backend
    takes every array with an Array API namespace for its own, but cannot compute with another
    namespace's (a JAX seed beside an array-api-strict ``x``): such a seed is refused by name."""
    if backend_for(seed) is not xp:
        raise bad_type("seed", seed, seed_of_allowed(name))


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
    return key_of(resolve(seed, xp, like), xp, like)


def key_of(resolved: int | Key, xp: Backend, like: Array | None) -> Key:
    """The key words of a resolved seed (a host integer, or key words already)."""
    if not isinstance(resolved, int):
        return resolved
    array = xp.seed_from_int(resolved, like)
    if array is None:
        return spec.key_words(xp, resolved, like)
    return require(xp, SeedBackend, *SEED_IN_AN_ARRAY).seed_words(array)


def native_seed(
    seed: object, xp: NativeBackend, like: Array | None, name: str = "x"
) -> int | Key | None:
    """The seed for the framework's own generator: ``None`` keeps the framework's global one."""
    if seed is None and xp.has_global_rng:
        return None
    return resolve(seed, xp, like, name)


def validate_seed(seed: object, xp: Backend, like: Array | None) -> None:
    """Reject a seed without drawing one (where no mask is drawn, e.g. in eval) exactly as a
    training call of backend ``xp`` beside ``like`` (called ``x``) would."""
    if seed is None or isinstance(seed, Generator) or host_seed(seed) is not None:
        return
    check_seed_of(seed, xp, like, "x")


def check_like(like: object, xp: Backend) -> None:
    """``like`` names where a mask is made: None, or an array (of ``xp``, or a NumPy array)."""
    if like is not None and not (xp.is_array(like) or isinstance(like, (np.ndarray, np.generic))):
        raise bad_type("like", like, "None or an array of a registered backend")


def _drawn_seed_in_trace(framework: str) -> TracingError:
    return TracingError(
        f"seed=None and xdrop.Generator seeds are drawn on the host, so while {framework} traces "
        "(jax.jit, tf.function, torch.compile, torch.jit.trace) one seed would be baked into the "
        "compiled graph and every call would drop the same units. Pass the seed as an argument "
        "of the compiled function, e.g. seed=xdrop.fold_in(base_seed, step) with step a traced "
        "integer."
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
        xp, like = load(compiler), None  # the ints may be graph inputs: fold them in the graph
    elif isinstance(seed, Generator) or seed is None:
        raise bad_type("seed", seed, "an integer in [0, 2**64) or a seed array")
    else:
        # the key's words go beside the array given (a seed on the meta device folds into one)
        like = seed if host is None else data
        xp = backend_for(seed if host is None else data)
    arrays = require(xp, SeedBackend, "fold_in of arrays", "pass Python ints to fold_in")
    key = seed_key(seed, xp, like)
    if host_data is not None:
        data_word = xp.word(host_data, key[0])
    elif xp.is_array(data) and xp.shape(data) == () and xp.dtype_name(data) in INTEGER_DTYPES:
        data_word = arrays.seed_words(data)[1]
    else:
        raise bad_type("data", data, "an integer in [0, 2**32) or a 0-d integer array")
    return arrays.seed_array(spec.fold_in_words(xp, key, data_word))


# -- portable or native ---------------------------------------------------------------------------------
def check_rng(rng: object) -> str:
    return check_choice("rng", rng, RNG_KINDS)


@host_constant  # torch.compile cannot trace ContextVar.get: the choice is baked into the graph
def get_rng() -> str:
    """The generator used when a call passes no ``rng``: ``use_rng`` > ``set_rng`` >
    ``XDROP_RNG`` > portable.

    >>> xdrop.get_rng()
    'portable'
    """
    chosen = defaults.RNG.chosen()  # checked when it was chosen
    if chosen is not None:
        return chosen
    from_environment = defaults.RNG.from_environment()
    if from_environment is None:
        return "portable"
    if from_environment not in RNG_KINDS:
        raise bad_value(RNG_ENVIRONMENT_VARIABLE, from_environment, '"portable" or "native"')
    return from_environment


def rng_kind(rng: object) -> str:
    """The generator a call uses: ``rng`` itself, or the default when it is None."""
    return get_rng() if rng is None else check_rng(rng)


def set_rng(rng: Rng | None) -> None:
    """Choose the default generator: ``"portable"`` (mask stream v1, bit-identical everywhere) or
    ``"native"`` (the framework's own generator); ``None`` goes back to ``XDROP_RNG``.

    >>> xdrop.set_rng("portable")
    """
    defaults.RNG.set(None if rng is None else check_rng(rng))


@contextlib.contextmanager
def use_rng(rng: Rng) -> Iterator[Rng]:
    """Make ``rng`` the default generator inside a ``with`` block (thread- and async-safe;
    restores exactly what was there before), as :func:`xdrop.use_backend` does for backends.

    >>> with xdrop.use_rng("native"):
    ...     xdrop.get_rng()
    'native'
    """
    with defaults.RNG.use(check_rng(rng)):
        yield rng
