"""A plugin that claims arrays the built-in ``array_api`` backend claims too: the built-in runs
them unless the user selects the plugin, and xdrop warns that the plugin lost them."""

from __future__ import annotations

from typing import Any

import numpy as np

from xdrop_testplugin.boxed import BoxedBackend


class Standard:
    """An array that announces an Array API namespace, as CuPy's and Dask's arrays do: the
    generic built-in backend ``array_api`` claims every such type."""

    def __init__(self, values: Any) -> None:
        self.values = np.asarray(values)

    def __array_namespace__(self, api_version: str | None = None) -> Any:
        return np

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return np.asarray(self.values, dtype=dtype)


class ShadowedBackend(BoxedBackend):
    name = "shadowed"
    framework = None  # generic, as array_api is: both are asked about Standard
    array_types = (Standard,)
