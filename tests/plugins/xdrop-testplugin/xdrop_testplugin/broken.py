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

    def word_less_than(self, a: Any, b: Any) -> Any:
        return super().word_less_than(a, b).astype(np.int64)


class WrongSizes(NumpyBackend):
    """Loses the last word of every stream of counters longer than the self-check's 16: its
    chunks come out one element short, which must be an error, not uninitialised output."""

    name = "wrong_sizes"
    framework = "xdrop_testplugin"
    array_types = ()

    def iota(self, n: int, like: Any = None) -> Any:
        return np.arange(n if n <= 16 else n - 1, dtype=np.uint32)

    def fused_dropout(self, *arguments: Any) -> None:
        return None  # the word operations, not NumPy's compiled kernel, make its masks
