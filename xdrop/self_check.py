"""The self-check: one small mask drawn through a third-party backend before it counts as available.

Loading and dispatching a backend never run it; ``xdrop.available_backends()``, ``xdrop info`` and
``xdrop conformance`` do, through :func:`checked_backend`, so that they agree on what "available"
means, and a broken plugin is named once, with its problem, rather than found by wrong masks.

This module sits above the registry: it imports :mod:`xdrop.registry`, never the other way round,
so what "available" means (registered, installed and, for a plugin, checked) is decided here.
"""

from __future__ import annotations

import numpy as np

from xdrop import reference, registry, spec
from xdrop.errors import BackendError
from xdrop.protocol import Backend

SEED, RATE, COUNT = 20_14, 0.5, 16


def problem(backend: Backend) -> str | None:
    """What is wrong with a mask of ``COUNT`` elements drawn through ``backend`` (its dtype, its
    shape, its bits against mask stream v1); None when all is well."""
    try:
        dtype = backend.dtype_name(backend.asarray(np.zeros(2, np.float32)))
        mask = spec.keep_mask(
            backend, spec.key_words(backend, SEED), (COUNT,), spec.keep_count(RATE)
        )
        host = backend.to_numpy(mask)
    except Exception as error:
        return f"drawing a mask raised {type(error).__name__}: {error}"
    if dtype != "float32":
        return f"dtype_name of a float32 array gave {dtype!r}"
    if host.dtype != np.bool_ or host.shape != (COUNT,):
        return (
            f"a keep mask came back as {host.dtype} of shape {host.shape}, not bool of ({COUNT},)"
        )
    if host.tolist() != reference.keep_mask(SEED, RATE, COUNT):
        return "its masks differ from mask stream v1 (docs/spec.md)"
    return None


def checked_backend(name: str) -> Backend:
    """The backend registered as ``name``, loaded and, when it is a plugin, self-checked; a
    ``BackendError`` naming the backend, its package and the problem otherwise. xdrop's own
    backends are proven by the golden cases instead."""
    backend = registry.load(name)
    if registry.is_built_in(name):
        return backend
    found = problem(backend)
    if found:
        raise BackendError(
            f"xdrop backend {name!r} ({registry.origin(name)}) fails its self-check: {found}"
        )
    return backend


def is_available(name: str) -> bool:
    """Whether backend ``name`` can be used here, which is what ``xdrop conformance`` checks too.

    A built-in backend is available when its class implements the protocol and its framework is
    installed (its framework is not imported). A plugin is available when it loads and passes the
    self-check (a small mask drawn through it); using it never runs the check."""
    if registry.is_built_in(name):
        return registry.is_installed(name)
    try:
        checked_backend(name)
    except BackendError:
        return False
    return True


def available_backends() -> dict[str, bool]:
    """Each registered backend name mapped to whether it can be used here: for a built-in
    backend, its framework is installed (it is not imported); a plugin is loaded and passes the
    self-check of ``xdrop.conformance``, as ``xdrop conformance`` requires.

    >>> xdrop.available_backends()["numpy"]
    True
    """
    return {name: is_available(name) for name in registry.registered_names()}
