"""The benchmark's figure: xdrop's time over the framework's own dropout's, per execution path
and size, one panel per direction, dtype and shape mode (``xdrop bench --figure FILE.png``;
``docs/figures/site_figures.py`` draws the site's from the tables of docs/performance.md)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import IO

from xdrop.benchmarks.report import title
from xdrop.benchmarks.runner import Report
from xdrop.benchmarks.suites import FRAMEWORK, XDROP

RATE = 0.5
"""The rate drawn (the first one measured where this one was not)."""
Ratios = dict[str, dict[int, float]]
"""``{table title: {size: xdrop / framework}}``; a title is ``backend · path · direction ·
dtype · shapes`` (:func:`xdrop.benchmarks.report.title`)."""
FORMATS = ("png", "pdf", "svg", "svgz", "eps", "ps", "jpg", "jpeg", "tif", "tiff", "webp", "raw",
           "rgba")  # fmt: skip
"""The formats :func:`draw` writes, each named by the file's suffix: matplotlib's since 3.8 but
pgf, which needs LaTeX. A fixed list, so that ``xdrop bench --figure`` can refuse another suffix
before it times anything, without importing matplotlib."""
VERSIONLESS = {
    "png": {"Software": None},
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
    "svg": {"Creator": None, "Date": None},
    "svgz": {"Creator": None, "Date": None},
}
"""The metadata that keeps matplotlib's version and the date out of a file, for the formats whose
writer can leave them out (PostScript's writes them whatever it is given; the raster formats but
PNG refuse any metadata)."""


def rate(report: Report) -> float:
    """The rate to draw: :data:`RATE`, or the first one measured where it was not."""
    rates = [m.case.p for m in report.measurements]
    return RATE if RATE in rates or not rates else rates[0]


def ratios(report: Report, p: float = RATE) -> Ratios:
    """The ratios xdrop / framework of ``report`` at rate ``p``."""
    found: Ratios = {}
    for measurement in report.measurements:
        value = measurement.ratio(XDROP, FRAMEWORK)
        if measurement.case.p == p and value is not None:
            found.setdefault(title(measurement.case), {})[measurement.case.size] = value
    return found


def draw(found: Ratios, path: Path, p: float = RATE, into: IO[bytes] | None = None) -> Path:
    """Draw ``found`` into ``path`` (or into the binary file ``into``), in the format the suffix
    of ``path`` names (one of :data:`FORMATS`): one panel per direction, dtype and shape mode, a
    bar per path and size, and a line at 1 (below it xdrop is faster). Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    panels: dict[str, dict[str, dict[int, float]]] = {}
    for heading, by_size in found.items():
        _, where, *variant = heading.split(" · ")  # the backend is in the path's name
        panels.setdefault(" · ".join(variant), {})[where] = by_size
    sizes = sorted({size for by_size in found.values() for size in by_size})
    columns = 1 if len(panels) == 1 else 2
    rows = max(1, math.ceil(len(panels) / columns))
    tallest = max((len(paths) for paths in panels.values()), default=1)
    figure, grid = plt.subplots(
        rows, columns, figsize=(6 * columns, (0.32 * tallest + 1.1) * rows), squeeze=False
    )
    height = 0.8 / max(1, len(sizes))
    for axes, (heading, paths) in zip(grid.flat, panels.items(), strict=False):
        names = list(paths)
        for i, size in enumerate(sizes):
            values = [paths[name].get(size, math.nan) for name in names]
            positions = [n + i * height for n in range(len(names))]
            axes.barh(positions, values, height, label=f"{size:.0e} elements")
        axes.axvline(1.0, color="black", linewidth=1)
        ticks = [n + height * (len(sizes) - 1) / 2 for n in range(len(names))]
        axes.set_yticks(ticks, names, fontsize=8)
        axes.invert_yaxis()
        axes.set_title(heading, fontsize=9)
        axes.tick_params(axis="x", labelsize=8)
    for axes in list(grid.flat)[len(panels) :]:
        axes.set_visible(False)
    grid.flat[0].legend(fontsize=7, loc="lower right")
    figure.suptitle(
        f"xdrop's time / the framework's dropout's, p = {p:g} (below 1: xdrop is faster)",
        fontsize=10,
    )
    figure.tight_layout(rect=(0, 0, 1, 0.98))  # the title above the panels' own
    suffix = Path(path).suffix[1:].lower()
    target = path if into is None else into
    # no version in the metadata: stable files
    figure.savefig(target, format=suffix, dpi=110, metadata=VERSIONLESS.get(suffix))
    plt.close(figure)
    return Path(path)
