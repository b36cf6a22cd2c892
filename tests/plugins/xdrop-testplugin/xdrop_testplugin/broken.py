"""Backends that are broken in the ways plugins break; xdrop must name them and carry on."""

from __future__ import annotations

from typing import Any

import numpy as np
from xdrop.backends.numpy import NumpyBackend

from xdrop.protocol import Backend


class NeedsAMissingFramework(NumpyBackend):
    name = "broken_import"
    framework = "xdrop_no_such_framework"

    def __init__(self) -> None:
        import xdrop_no_such_framework  # noqa: F401


class Incomplete(Backend):  # implements none of the protocol
    name = "incomplete"
    framework = "xdrop_testplugin"
    array_types = ()


class WrongTypes(NumpyBackend):
    """Compares words as integers rather than booleans: masks would come out as 0/1 ints."""

    name = "wrong_types"
    framework = "xdrop_testplugin"
    array_types = ()

    def less_than(self, a: Any, threshold: int) -> Any:
        return (a < np.uint32(threshold)).astype(np.int64)
