"""Which backend runs a call: the entry-point registry, the default backend and dispatch.

Backends are found only through the ``xdrop.backends`` entry-point group (the built-ins too), so
``XDROP_BACKEND`` can name nothing but a registered backend. A backend's framework is imported the
first time the backend is used, never by ``import xdrop``; an array's framework is recognised from
``sys.modules``, as einops and array-api-compat do, so dispatch imports nothing either.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import os
import sys
import threading
from collections.abc import Iterator
from importlib import metadata

import numpy as np

from xdrop.errors import BackendError
from xdrop.protocol import Backend
from xdrop.tracing import host_constant

ENTRY_POINT_GROUP = "xdrop.backends"
ENVIRONMENT_VARIABLE = "XDROP_BACKEND"
FALLBACK_BACKEND = "numpy"

_lock = threading.RLock()
_entry_points: dict[str, list[metadata.EntryPoint]] | None = None
_backends: dict[str, Backend] = {}
_owner_of_type: dict[type, str | None] = {}
_chosen_default: str | None = None
_context_default: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "xdrop_backend", default=None
)


def _registered() -> dict[str, list[metadata.EntryPoint]]:
    global _entry_points
    if _entry_points is None:
        found: dict[str, list[metadata.EntryPoint]] = {}
        for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
            claims = found.setdefault(entry_point.name, [])
            if all(entry_point.value != other.value for other in claims):
                claims.append(entry_point)  # one distribution seen twice on sys.path is one claim
        _entry_points = found
    return _entry_points


def registered_names() -> list[str]:
    """The names registered in the ``xdrop.backends`` entry-point group, sorted."""
    return sorted(_registered())


def _install_hint(name: str, entry_point: metadata.EntryPoint) -> str:
    distribution = entry_point.dist.name if entry_point.dist is not None else None
    if distribution in (None, "xdrop"):
        return f'pip install "xdrop[{name}]"'
    return f"reinstall {distribution!r} with its dependencies"


def _entry_point(name: str) -> metadata.EntryPoint:
    claims = _registered().get(name)
    if not claims:
        raise BackendError(
            f"unknown xdrop backend {name!r}; registered backends: {', '.join(registered_names())}"
        )
    if len(claims) > 1:
        owners = ", ".join(f"{claim.value} (from {_distribution(claim)})" for claim in claims)
        raise BackendError(f"xdrop backend name {name!r} is claimed by several packages: {owners}")
    return claims[0]


def _distribution(entry_point: metadata.EntryPoint) -> str:
    return entry_point.dist.name if entry_point.dist is not None else "an unknown distribution"


def load(name: str) -> Backend:
    """The backend registered as ``name``, created (and its framework imported) on first use."""
    backend = _backends.get(name)
    if backend is not None:
        return backend
    with _lock:
        if name not in _backends:
            _backends[name] = _create(name)
        return _backends[name]


def _create(name: str) -> Backend:
    entry_point = _entry_point(name)
    try:
        backend_class = entry_point.load()
        backend = backend_class()
    except ImportError as error:
        raise BackendError(
            f"xdrop backend {name!r} is registered but cannot be imported ({error}); "
            f"install what it needs: {_install_hint(name, entry_point)}"
        ) from error
    except Exception as error:
        raise BackendError(
            f"xdrop backend {name!r} ({entry_point.value}, from {_distribution(entry_point)}) "
            f"failed to load: {type(error).__name__}: {error}"
        ) from error
    if not isinstance(backend, Backend):
        raise BackendError(
            f"xdrop backend {name!r} ({entry_point.value}) is not an xdrop.protocol.Backend: "
            f"got {type(backend).__name__}"
        )
    if _distribution(entry_point) != "xdrop":
        problem = _self_check(backend)
        if problem:
            raise BackendError(
                f"xdrop backend {name!r} ({entry_point.value}, from {_distribution(entry_point)}) "
                f"fails its self-check: {problem}"
            )
    return backend


def _self_check(backend: Backend) -> str | None:
    """Draw one small mask through a third-party backend, so that a broken implementation fails
    once, here, with its name, rather than as wrong masks later. None when all is well."""
    from xdrop import reference, spec

    seed, p, count = 20_14, 0.5, 16
    try:
        dtype = backend.dtype_name(backend.asarray(np.zeros(2, np.float32)))
        mask = spec.keep_mask(backend, spec.key_words(backend, seed), (count,), p)
        host = backend.to_numpy(mask)
    except Exception as error:
        return f"drawing a mask raised {type(error).__name__}: {error}"
    if dtype != "float32":
        return f"dtype_name of a float32 array gave {dtype!r}"
    if host.dtype != np.bool_ or host.shape != (count,):
        return (
            f"a keep mask came back as {host.dtype} of shape {host.shape}, not bool of ({count},)"
        )
    if host.tolist() != reference.keep_mask(seed, p, count):
        return "its masks differ from mask stream v1 (docs/spec.md)"
    return None


def _backend_class(name: str) -> type[Backend] | None:
    """The class registered as ``name`` (its framework is not imported), or None if it is broken
    or ambiguous: a broken plugin must not stop dispatch to the others."""
    try:
        backend_class = _entry_point(name).load()
    except Exception:
        return None
    is_backend = isinstance(backend_class, type) and issubclass(backend_class, Backend)
    return backend_class if is_backend else None


def available_backends() -> dict[str, bool]:
    """Each registered backend name mapped to whether it can be used here: its class loads and
    implements the protocol, and its framework is installed. Imports no framework.

    >>> xdrop.available_backends()["numpy"]
    True
    """
    from importlib.util import find_spec

    available = {}
    for name in registered_names():
        backend_class = _backend_class(name)
        framework = None if backend_class is None else backend_class.framework
        available[name] = (
            backend_class is not None
            and not inspect.isabstract(backend_class)
            and (framework is None or find_spec(framework) is not None)
        )
    return available


# -- the default backend ----------------------------------------------------------------------------
@host_constant  # torch.compile cannot trace ContextVar.get
def default_name() -> str:
    """The default backend's name: ``use_backend`` > ``set_backend`` > ``XDROP_BACKEND`` > numpy."""
    return (
        _context_default.get()
        or _chosen_default
        or os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
        or FALLBACK_BACKEND
    )


def default_backend() -> Backend:
    return load(default_name())


def get_backend() -> str:
    """The name of the default backend, which runs NumPy arrays and Python scalars.

    >>> xdrop.get_backend()
    'numpy'
    """
    return default_name()


def set_backend(name: str) -> None:
    """Make ``name`` the default backend for the whole process (it is loaded now, so a typo or a
    missing framework fails here).

    >>> xdrop.set_backend("numpy")  # doctest: +SKIP
    """
    global _chosen_default
    load(name)
    _chosen_default = name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[Backend]:
    """Make ``name`` the default backend inside a ``with`` block (thread- and async-safe; restores
    exactly what was there before).

    >>> with xdrop.use_backend("numpy"):
    ...     y = xdrop.dropout([1.0, 2.0], 0.5, seed=0)
    """
    backend = load(name)
    token = _context_default.set(name)
    try:
        yield backend
    finally:
        _context_default.reset(token)


# -- dispatch ---------------------------------------------------------------------------------------
def backend_for(x: object) -> Backend:
    """The backend that owns ``x``; NumPy arrays and Python values go to the default backend."""
    owner = owner_of_type(type(x))
    return default_backend() if owner is None else load(owner)


@host_constant
def owner_of_type(kind: type) -> str | None:
    """The name of the backend whose arrays are of type ``kind`` (None: the default backend's
    business), found once per type. Only frameworks already imported are considered."""
    try:
        return _owner_of_type[kind]
    except KeyError:
        pass
    owner = None
    if not issubclass(kind, (np.ndarray, np.generic, int, float, list, tuple)):
        owner = next((name for name in _candidates() if _owns(name, kind)), None)
    _owner_of_type[kind] = owner
    return owner


def _candidates() -> list[str]:
    """Backends whose framework is imported, then the generic ones (no framework of their own)."""
    dedicated, generic = [], []
    for name in registered_names():
        backend_class = _backend_class(name)
        if backend_class is None or backend_class.framework == "numpy":
            continue
        if backend_class.framework is None:
            generic.append(name)
        elif backend_class.framework in sys.modules:
            dedicated.append(name)
    return dedicated + generic


def imported_backends() -> list[Backend]:
    """The backends whose framework is imported (generic ones aside): the frameworks that could
    be tracing now. Cached per set of imported frameworks; imports nothing."""
    imported = tuple(name for name in _dedicated_frameworks() if name[1] in sys.modules)
    backends = _imported_cache.get(imported)
    if backends is None:
        backends = _imported_cache[imported] = [
            backend for backend in (_loaded_or_none(name) for name, _ in imported) if backend
        ]
    return backends


@host_constant
def int_tracing_backend() -> str | None:
    """The backend whose compiler is tracing now and may have made Python ints graph inputs."""
    tracing = (b.name for b in imported_backends() if b.traces_python_ints and b.in_trace())
    return next(tracing, None)


_imported_cache: dict[tuple[tuple[str, str], ...], list[Backend]] = {}


def _dedicated_frameworks() -> tuple[tuple[str, str], ...]:
    """``(backend name, framework)`` of every registered backend with a framework of its own."""
    global _frameworks
    if _frameworks is None:
        pairs = []
        for name in registered_names():
            backend_class = _backend_class(name)
            if backend_class is not None and backend_class.framework not in (None, "numpy"):
                pairs.append((name, str(backend_class.framework)))
        _frameworks = tuple(pairs)
    return _frameworks


_frameworks: tuple[tuple[str, str], ...] | None = None


def _loaded_or_none(name: str) -> Backend | None:
    try:
        return load(name)
    except BackendError:
        return None


def _owns(name: str, kind: type) -> bool:
    try:
        return load(name).owns_type(kind)
    except BackendError:
        return False
