"""A second package registering the backend name ``twin``."""

from xdrop.backends.numpy import NumpyBackend


class TwinBackend(NumpyBackend):
    name = "twin"
