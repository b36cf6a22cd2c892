"""torchvision importable beside the CPU torch the tests pin.

torchvision's wheels on PyPI are built against CUDA torch; beside the CPU torch the tests pin,
their C++ extension (``torchvision/_C.so``, which links ``libtorch_cuda.so``) does not load, and
``import torchvision`` then fails: torchvision 0.28 registers fake kernels for its ``nms`` and
``qnms`` operators whether or not the extension defined them ("operator torchvision::nms does not
exist"). timm and Hugging Face ``transformers`` import torchvision, so they fail too. Where the
extension does not load, :func:`define_torchvision_operators` defines the two operators' schemas
(without kernels: calling them still fails, as any C++ op of torchvision does without its
extension), so that torchvision's pure-Python parts import: the drop layers, ``torch.fx`` feature
extraction and the models.

Imported as ``torchvision_cpu`` (``tests/`` is on ``sys.path`` while pytest runs); scripts run in
a subprocess put ``tests/`` on ``sys.path`` themselves. Call it before anything imports
torchvision.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library: list[torch.library.Library] = []  # kept alive: a Library's definitions die with it


def define_torchvision_operators() -> None:
    """Load torchvision's C++ extension, or where it does not load, define the schemas of the
    operators its import registers fake kernels for. Idempotent."""
    if _library:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    (folder,) = spec.submodule_search_locations
    try:
        torch.ops.load_library(str(Path(folder) / "_C.so"))
        return  # the extension loads: it defines the operators itself
    except OSError:
        pass
    library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS.values():
        library.define(schema)
    _library.append(library)
