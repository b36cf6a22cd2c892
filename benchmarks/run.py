"""Run the dropout benchmark: ``python benchmarks/run.py [options]``, the same as ``xdrop bench``.

``python benchmarks/run.py --help`` lists the options; ``docs/performance.md`` has the results."""

from __future__ import annotations

import sys

from xdrop.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
