"""array-api-strict through xdrop's generic Array API backend: the namespace is all it adds."""

from __future__ import annotations

from xdrop.backends.array_api import ArrayApiBackend


class StrictBackend(ArrayApiBackend):
    name = "strict"
    framework = "array_api_strict"

    def __init__(self) -> None:
        import array_api_strict

        self.namespace = array_api_strict
        self.array_types = (type(array_api_strict.asarray(0)),)

    def owns_type(self, kind: type) -> bool:
        return issubclass(kind, self.array_types)
