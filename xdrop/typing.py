"""The types of xdrop's public signatures, for annotating code that calls it.

The string arguments take these literal values; a type checker refuses any other:

>>> from xdrop.typing import Mode
>>> mode: Mode = "classic"

Functions on arrays are generic in the array type: ``dropout(x)`` returns the type of ``x``
(``torch.Tensor`` for a ``torch.Tensor``, ``jax.Array`` for a ``jax.Array``), and
``return_mask=True`` returns a pair. This module imports no framework.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, TypeVar

import numpy as np

Mode = Literal["inverted", "classic"]
"""How dropout scales: ``"inverted"`` while training (every framework's default) or ``"classic"``
at test time (Srivastava et al. 2014)."""

Rng = Literal["portable", "native"]
"""The generator: ``"portable"`` (mask stream v1, the same bits everywhere) or ``"native"`` (the
framework's own)."""

Reduction = Literal["sum", "mean", "batchmean", "none"]
"""How an R-Dropout loss reduces its values per position."""

ArrayT = TypeVar("ArrayT")
"""An array of any framework: the type a function returns for the type it is given."""

ShapeT = TypeVar("ShapeT", bound=tuple[int, ...])
"""A NumPy array's shape type: a NumPy mask has its input's shape."""

DTypeT = TypeVar("DTypeT", bound=np.dtype[Any])
"""A NumPy array's dtype type: ``dropout`` keeps it (its mask's is bool)."""

OutputT = TypeVar("OutputT")
"""The array type a model returns (:func:`xdrop.rdrop_forward`)."""

PythonValues = float | Sequence[Any]
"""Python numbers and (nested) lists or tuples: they run on the default backend, whose array type
a type checker cannot know, so calls on them return ``Any``."""

__all__ = ["ArrayT", "DTypeT", "Mode", "OutputT", "PythonValues", "Reduction", "Rng", "ShapeT"]
