"""The frameworks' own tests, ported to xdrop's layers (each file's header names its source).

torchvision's PyPI wheels are CUDA builds whose C++ operators do not load beside the CPU torch:
``tests/torchvision_cpu.py`` defines what torchvision's import needs, so that its pure-Python
parts (the drop layers, ``torch.fx`` feature extraction, the models) and timm import. The ported
scripts run in a subprocess import this file first.
"""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:  # a ported script run in a subprocess has only tests/peer on it
    sys.path.insert(0, _TESTS)

from torchvision_cpu import define_torchvision_operators  # noqa: E402

define_torchvision_operators()
