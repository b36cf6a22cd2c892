"""One execution path of one backend, timed in this process: ``xdrop bench`` starts one such
process per path, so that no path inherits what another left behind.

``python -m xdrop.benchmarks.worker SPEC RESULT``: ``SPEC`` is JSON (the backend, the path and
the settings of :func:`xdrop.benchmarks.runner.run`); the measurements are written to the file
``RESULT`` as JSON, and each case is announced on stdout as it starts.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from xdrop.benchmarks import runner
from xdrop.benchmarks.suites import Case


def main(argv: Sequence[str] | None = None) -> int:
    """Time the path that ``SPEC`` names and write what was measured to ``RESULT``."""
    spec_text, result = argv if argv is not None else sys.argv[1:]
    spec = json.loads(spec_text)

    def announce(case: Case, done: int, total: int) -> None:
        if done < total:
            print(f"{runner.PROGRESS}{done}", flush=True)

    report = runner.run(
        backends=spec["backends"],
        sizes=spec["sizes"],
        rates=spec["rates"],
        repeats=spec["repeats"],
        min_sample=spec["min_sample_seconds"],
        paths=spec["paths"],
        directions=spec["directions"],
        contenders=spec["contenders"],
        dtypes=spec["dtypes"],
        shapes=spec["shapes"],
        progress=announce,
        fresh=False,
    )
    (backend,) = spec["backends"]
    document = {
        "unavailable": report.unavailable.get(backend),
        "measurements": [runner.to_document(m) for m in report.measurements],
    }
    Path(result).write_text(json.dumps(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
