"""Backends that live outside xdrop and register through the ``xdrop.backends`` entry points."""
