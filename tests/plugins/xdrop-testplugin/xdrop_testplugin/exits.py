"""A plugin whose module ends the interpreter when imported (``sys.exit`` at module level)."""

from __future__ import annotations

import sys

from xdrop.backends.numpy import NumpyBackend

sys.exit("xdrop_testplugin.exits: a plugin that exits on import")


class ExitsOnImport(NumpyBackend):  # never reached
    name = "exits"
