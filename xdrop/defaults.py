"""Process defaults: the default backend and the default generator, held the same way.

Each is a :class:`Setting`: a value chosen for a ``with`` block (a ``contextvars.ContextVar``, so
threads and asyncio tasks each see their own), else one chosen for the whole process, else an
environment variable, else nothing (the caller's fallback). This module only stores and reads;
the modules that own a setting validate what goes in (``xdrop.registry`` checks backend names,
``xdrop.seeds`` generator kinds) and decide what an unset setting means.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator


class Setting:
    """One default: ``in a block`` > ``for the process`` > environment variable > unset (None)."""

    def __init__(self, name: str, environment_variable: str) -> None:
        self.name = name
        self.environment_variable = environment_variable
        self._process: str | None = None
        self._in_context: contextvars.ContextVar[str | None] = contextvars.ContextVar(
            f"xdrop_{name}", default=None
        )

    def get(self) -> str | None:
        """The value in force here: chosen in code, else from the environment; None if unset."""
        return self.chosen() or self.from_environment()

    def chosen(self) -> str | None:
        """The value chosen in code (a ``with`` block here, else the process-wide one), if any."""
        in_context = self._in_context.get()
        return self._process if in_context is None else in_context

    def from_environment(self) -> str | None:
        """The environment variable's value, stripped; None when it is unset or blank. Read on
        every call, so that a change to ``os.environ`` takes effect."""
        return os.environ.get(self.environment_variable, "").strip() or None

    def set(self, value: str | None) -> None:
        """Choose ``value`` for the whole process (every thread and task without a block of its
        own); None goes back to the environment variable."""
        self._process = value

    @contextlib.contextmanager
    def use(self, value: str) -> Iterator[None]:
        """Choose ``value`` inside a ``with`` block, for this thread or task only; restores exactly
        what was there before, even when blocks nest."""
        token = self._in_context.set(value)
        try:
            yield
        finally:
            self._in_context.reset(token)


BACKEND = Setting("backend", "XDROP_BACKEND")
"""The default backend's name, which runs NumPy arrays and Python values (``xdrop.registry``)."""

RNG = Setting("rng", "XDROP_RNG")
"""The default generator, ``"portable"`` or ``"native"`` (``xdrop.seeds``)."""
