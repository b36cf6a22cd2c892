"""Which backend runs a call: the entry-point registry, the default backend and dispatch.

Backends are found only through the ``xdrop.backends`` entry-point group (the built-ins too, from
``BUILT_IN_BACKENDS`` where xdrop is not installed), so ``XDROP_BACKEND`` can name nothing but a
registered backend. A backend's framework is imported the
first time the backend is used, never by ``import xdrop``; an array's framework is recognised from
``sys.modules``, as einops and array-api-compat do, so dispatch imports nothing either.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import inspect
import sys
import threading
import warnings
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import numpy as np

from xdrop import defaults
from xdrop.errors import BackendError, BackendWarning, bad_type
from xdrop.protocol import Backend
from xdrop.tracing import host_constant

ENTRY_POINT_GROUP = "xdrop.backends"
ENVIRONMENT_VARIABLE = defaults.BACKEND.environment_variable
FALLBACK_BACKEND = "numpy"
BUILT_IN_DISTRIBUTION = "xdrop"
BUILT_IN_BACKENDS = {
    "numpy": "xdrop.backends.numpy:NumpyBackend",
    "torch": "xdrop.backends.torch:TorchBackend",
    "tensorflow": "xdrop.backends.tensorflow:TensorflowBackend",
    "jax": "xdrop.backends.jax:JaxBackend",
    "array_api": "xdrop.backends.array_api:ArrayApiBackend",
}
"""xdrop's own backends, as ``pyproject.toml`` registers them: registered from here when no
installed xdrop provides them (a checkout on ``PYTHONPATH`` has no entry points)."""
ALIASES = {"pytorch": "torch", "tf": "tensorflow", "np": "numpy", "array-api": "array_api"}
"""Names people type for a built-in backend, offered as "did you mean"."""

_lock = threading.RLock()
_entry_points: dict[str, list[metadata.EntryPoint]] | None = None
_backends: dict[str, Backend] = {}
_owner_of_type: dict[type, str | tuple[str, ...] | None] = {}
_warned_lost: set[tuple[str, type]] = set()
"""The ``(plugin, array type)`` pairs already warned about: a built-in backend took the type."""


def _adopt_source_backends() -> None:
    """Make ``backends/`` the package ``xdrop.backends`` when xdrop is imported from a checkout.

    ``pyproject.toml`` installs the top-level folder ``backends/`` as ``xdrop.backends``. From the
    checkout root, ``import xdrop`` finds the source folder ``xdrop/`` first, which has no
    ``backends``: the installed entry points (``xdrop.backends.numpy:NumpyBackend``) would then
    name modules that do not exist. This gives the source tree the installed layout, with one
    module per backend file (``backends/__init__.py`` refuses the name ``backends``)."""
    package = Path(__file__).resolve().parent
    source = package.parent / "backends" / "__init__.py"
    if "xdrop.backends" in sys.modules or (package / "backends").is_dir() or not source.is_file():
        return
    try:
        if importlib.util.find_spec("xdrop.backends") is not None:
            return  # an editable install's finder maps it already
    except (ImportError, ValueError):
        pass
    spec = importlib.util.spec_from_file_location(
        "xdrop.backends", source, submodule_search_locations=[str(source.parent)]
    )
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["xdrop.backends"] = module
    spec.loader.exec_module(module)


_adopt_source_backends()


def forget_entry_points() -> None:
    """Read the entry points again on next use (after ``sys.path`` changed); loaded backends stay."""
    global _entry_points
    with _lock:
        _entry_points = None
        _owner_of_type.clear()


def _registered() -> dict[str, list[metadata.EntryPoint]]:
    global _entry_points
    if _entry_points is None:
        found: dict[str, list[metadata.EntryPoint]] = {}
        for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
            claims = found.setdefault(entry_point.name, [])
            if all(entry_point.value != other.value for other in claims):
                claims.append(entry_point)  # one distribution seen twice on sys.path is one claim
        for name, value in BUILT_IN_BACKENDS.items():
            claims = found.setdefault(name, [])
            if not any(distribution(claim) == BUILT_IN_DISTRIBUTION for claim in claims):
                claims.append(metadata.EntryPoint(name, value, ENTRY_POINT_GROUP))
        _entry_points = found
    return _entry_points


def claims(name: str) -> list[metadata.EntryPoint]:
    """The entry points that register a backend under ``name`` (more than one is an error)."""
    return list(_registered().get(name, []))


def registered_names() -> list[str]:
    """The names registered in the ``xdrop.backends`` entry-point group, sorted."""
    return sorted(_registered())


def _install_hint(name: str, entry_point: metadata.EntryPoint) -> str:
    distribution = entry_point.dist.name if entry_point.dist is not None else None
    if distribution in (None, "xdrop"):
        # xdrop's extras are named after its backends; no package index serves xdrop yet
        return f'pip install ".[{name}]" from a checkout of xdrop'
    return f"reinstall {distribution!r} with its dependencies"


def unknown_backend(name: object, origin: str = "") -> BackendError:
    """The error for a name that no backend is registered under, with the likely one."""
    names = registered_names()
    guess = None
    if isinstance(name, str):
        lowered = name.strip().lower()
        guess = ALIASES.get(lowered, lowered if lowered in names else None)
        if guess is None:
            close = difflib.get_close_matches(lowered, names, n=1, cutoff=0.6)
            guess = close[0] if close else None
    hint = f"; did you mean {guess!r}?" if guess in names else ""
    return BackendError(
        f"unknown xdrop backend {name!r}{origin}{hint}; registered backends: {', '.join(names)}"
    )


def _entry_point(name: str) -> metadata.EntryPoint:
    claims = _registered().get(name) if isinstance(name, str) else None
    if not claims:
        raise unknown_backend(name)
    if len(claims) > 1:
        owners = ", ".join(f"{claim.value} (from {distribution(claim)})" for claim in claims)
        raise BackendError(f"xdrop backend name {name!r} is claimed by several packages: {owners}")
    return claims[0]


def distribution(entry_point: metadata.EntryPoint) -> str:
    """The package that registers ``entry_point`` (``"xdrop"`` for a built-in backend)."""
    if entry_point.dist is not None:
        return entry_point.dist.name
    if BUILT_IN_BACKENDS.get(entry_point.name) == entry_point.value:
        return BUILT_IN_DISTRIBUTION  # registered from the table, by xdrop itself
    return "an unknown distribution"


def origin(name: str) -> str:
    """Where the backend ``name`` comes from, for messages: ``"module:Class, from package"``."""
    entry_point = _entry_point(name)
    return f"{entry_point.value}, from {distribution(entry_point)}"


def is_built_in(name: str) -> bool:
    """Whether ``name`` is registered by xdrop itself (not by a plugin)."""
    claims = _registered().get(name, [])
    return len(claims) == 1 and distribution(claims[0]) == BUILT_IN_DISTRIBUTION


def load(name: str) -> Backend:
    """The backend registered as ``name``, created (and its framework imported) on first use."""
    if not isinstance(name, str):
        raise bad_type("backend name", name, f"a str, one of: {', '.join(registered_names())}")
    backend = _backends.get(name)
    if backend is not None:
        return backend
    with _lock:
        if name not in _backends:
            _backends[name] = _create(name)
        return _backends[name]


def load_triton_before_tensorflow() -> None:
    """Import Triton now if it is installed and TensorFlow is not imported yet.

    TensorFlow and Triton each link their own LLVM: Triton loaded after TensorFlow (as
    ``torch.compile`` loads it wherever it is installed, and CUDA builds of torch install it)
    ends the process with a segmentation fault, while loaded before, the two share the process.
    xdrop calls this where it imports TensorFlow itself (the conformance suite, the benchmark,
    ``XDROP_BACKEND=tensorflow``); a program that imports both frameworks can call it first."""
    if "tensorflow" in sys.modules or "triton" in sys.modules:
        return
    if importlib.util.find_spec("triton") is None:
        return
    with contextlib.suppress(Exception):  # a broken Triton is torch.compile's to report, not ours
        import triton  # noqa: F401


def _create(name: str) -> Backend:
    entry_point = _entry_point(name)
    try:
        backend_class = entry_point.load()
        if getattr(backend_class, "framework", None) == "tensorflow":
            load_triton_before_tensorflow()
        backend = backend_class()
    except ImportError as error:
        raise BackendError(
            f"xdrop backend {name!r} is registered but cannot be imported ({error}); "
            f"install what it needs: {_install_hint(name, entry_point)}"
        ) from error
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # SystemExit from a plugin's import must not end the caller
        raise BackendError(
            f"xdrop backend {name!r} ({entry_point.value}, from {distribution(entry_point)}) "
            f"failed to load: {type(error).__name__}: {error}"
        ) from error
    if not isinstance(backend, Backend):
        raise BackendError(
            f"xdrop backend {name!r} ({entry_point.value}) is not an xdrop.protocol.Backend: "
            f"got {type(backend).__name__}"
        )
    return backend


def _backend_class(name: str) -> type[Backend] | None:
    """The class registered as ``name`` (its framework is not imported), or None if it is broken
    or ambiguous: a broken plugin must not stop dispatch to the others."""
    try:
        backend_class = _entry_point(name).load()
    except KeyboardInterrupt:
        raise
    except BaseException:  # SystemExit too: a broken plugin must not end the caller
        return None
    is_backend = isinstance(backend_class, type) and issubclass(backend_class, Backend)
    return backend_class if is_backend else None


def is_installed(name: str) -> bool:
    """Whether the backend registered as ``name`` could run here, as far as the registry can tell
    without running it: its class loads, implements the protocol and its framework is installed
    (the framework is not imported). Plugins must also pass a self-check before they count as
    available: see ``xdrop.self_check.is_available``, which sits above the registry."""
    if name in _backends:
        return True
    backend_class = _backend_class(name)
    framework = None if backend_class is None else backend_class.framework
    return (
        backend_class is not None
        and not inspect.isabstract(backend_class)
        and (framework is None or importlib.util.find_spec(framework) is not None)
    )


# -- the default backend ----------------------------------------------------------------------------
@host_constant  # torch.compile cannot trace ContextVar.get: it calls this as it is
def default_name() -> str:
    """The default backend's name: ``use_backend`` > ``set_backend`` > ``XDROP_BACKEND`` > numpy."""
    return selected_name() or FALLBACK_BACKEND


def selected_name() -> str | None:
    """The backend the user selected (``use_backend``, ``set_backend`` or ``XDROP_BACKEND``), if any."""
    return defaults.BACKEND.get()


def default_backend() -> Backend:
    name = _checked_default_name()
    backend = _backends.get(name)
    return load(name) if backend is None else backend


@host_constant  # run as it is under torch.compile, which cannot enter the loader's lock
def _checked_default_name() -> str:
    """The default backend's name, loaded; one that only ``XDROP_BACKEND`` names must be
    registered."""
    name = get_backend()
    load(name)
    return name


def _environment_name() -> str:
    """The backend ``XDROP_BACKEND`` names (numpy where unset), which must be registered."""
    name = defaults.BACKEND.from_environment() or FALLBACK_BACKEND
    if name not in _backends and name != FALLBACK_BACKEND and name not in _registered():
        raise unknown_backend(name, f" (from the environment variable {ENVIRONMENT_VARIABLE})")
    return name


def get_backend() -> str:
    """The name of the default backend, which runs NumPy arrays and Python scalars; a name
    that only ``XDROP_BACKEND`` gives must be registered (its framework is not imported).

    >>> xdrop.get_backend()
    'numpy'
    """
    return defaults.BACKEND.chosen() or _environment_name()


def set_backend(name: str) -> None:
    """Make ``name`` the default backend for the whole process (it is loaded now, so a typo or a
    missing framework fails here).

    >>> xdrop.set_backend("numpy")  # doctest: +SKIP
    """
    load(name)
    defaults.BACKEND.set(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[Backend]:
    """Make ``name`` the default backend inside a ``with`` block (thread- and async-safe; restores
    exactly what was there before).

    >>> with xdrop.use_backend("numpy"):
    ...     y = xdrop.dropout([1.0, 2.0], 0.5, seed=0)
    """
    backend = load(name)
    with defaults.BACKEND.use(name):
        yield backend


# -- dispatch ---------------------------------------------------------------------------------------
def backend_for(x: object) -> Backend:
    """The backend that owns ``x``; NumPy arrays and Python values go to the default backend, a
    Keras variable to the backend of its value."""
    owner = owner_of_type(type(x))
    if owner is None:
        if not isinstance(x, np.ndarray) and is_keras_variable(x):
            return backend_for(x.value)  # type: ignore[attr-defined]
        return default_backend()
    backend = _backends.get(owner)
    return load(owner) if backend is None else backend


def is_keras_variable(value: object) -> bool:
    """Whether ``value`` is a Keras variable: a wrapper on every Keras backend, whose ``value``
    is the framework's array (Keras' own ops read it so). Keras is only looked for once imported."""
    keras = sys.modules.get("keras")
    return keras is not None and isinstance(value, keras.Variable)


@host_constant
def owner_of_type(kind: type) -> str | None:
    """The name of the backend whose arrays are of type ``kind`` (None: the default backend's
    business), found once per type. Only frameworks already imported are considered.

    When several backends claim ``kind``, the one the user selected (``use_backend``,
    ``set_backend``, ``XDROP_BACKEND``) wins, else the one built into xdrop; two plugins, or two
    built-ins, claiming one type are an error naming both."""
    try:
        claims = _owner_of_type[kind]
    except KeyError:
        claims = None
        if not issubclass(kind, (np.ndarray, np.generic, int, float, list, tuple)):
            claims = _claimants(kind)
        _owner_of_type[kind] = claims
    if claims is None:
        return None
    if isinstance(claims, str):
        return claims
    return _settle(kind, claims)


def _claimants(kind: type) -> str | tuple[str, ...] | None:
    """Who claims ``kind``: the dedicated backends of imported frameworks, else the generic ones.
    One name when there is a single claim (or one clear winner); a tuple to settle per call."""
    dedicated, generic = _candidates()
    for names in (dedicated, generic):
        claims = tuple(name for name in names if _owns(name, kind))
        if len(claims) == 1:
            return claims[0]
        if claims:
            return claims
    return None


def _settle(kind: type, claims: tuple[str, ...]) -> str:
    selected = selected_name()
    if selected in claims:
        return selected
    built_in = [name for name in claims if is_built_in(name)]
    if len(built_in) == 1:
        _warn_lost(kind, claims, built_in[0])
        return built_in[0]
    owners = ", ".join(f"{name!r} ({origin(name)})" for name in claims)
    raise BackendError(
        f"arrays of type {_type_name(kind)} are claimed by several xdrop backends: {owners}; "
        f"select one with xdrop.use_backend, xdrop.set_backend or {ENVIRONMENT_VARIABLE}"
    )


def _warn_lost(kind: type, claims: tuple[str, ...], built_in: str) -> None:
    """Say once per plugin and type that the built-in backend runs arrays the plugin claims, and
    how to run them on the plugin instead: otherwise the plugin would seem to do nothing."""
    for name in claims:
        if name == built_in or (name, kind) in _warned_lost:
            continue
        _warned_lost.add((name, kind))
        warnings.warn(
            f"xdrop backend plugin {name!r} ({origin(name)}) claims arrays of type "
            f"{_type_name(kind)}, which the built-in backend {built_in!r} runs; to run them on "
            f"{name!r}, select it: with xdrop.use_backend({name!r}), xdrop.set_backend({name!r}) "
            f"or {ENVIRONMENT_VARIABLE}={name}",
            BackendWarning,
            stacklevel=1,  # attributed to xdrop.registry: a module=r"xdrop\." filter matches it
        )


def _type_name(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def _candidates() -> tuple[list[str], list[str]]:
    """Backends whose framework is imported, and the generic ones (no framework of their own)."""
    dedicated, generic = [], []
    for name in registered_names():
        backend_class = _backend_class(name)
        if backend_class is None or backend_class.framework == "numpy":
            continue
        if backend_class.framework is None:
            generic.append(name)
        elif backend_class.framework in sys.modules:
            dedicated.append(name)
    return dedicated, generic


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
