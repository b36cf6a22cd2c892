"""Plain-text tables, the one way ``xdrop info``, ``xdrop conformance`` and ``xdrop bench`` print
their results, and the same tables in Markdown (``xdrop bench --markdown``, for the site)."""

from __future__ import annotations

from collections.abc import Sequence

from xdrop.errors import bad_value

GAP = "  "  # between two columns


def render(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "<") -> str:
    """``header`` and ``rows`` as aligned columns of plain ASCII, a rule of dashes under the header.

    A column is as wide as its widest cell; columns are two spaces apart. A left-aligned last
    column is not padded (its lines end with their text, not with spaces).

    Args:
        header: the column names.
        rows: one sequence of cells (strings) per row, each as long as ``header``.
        align: each column's alignment, ``<`` (left) or ``>`` (right), as in :func:`format`; the
            last character holds for the columns after it, so ``"<"`` puts every column on the
            left and ``"<>"`` the first on the left and the others (numbers) on the right.

    Returns:
        The table's lines joined by newlines, with no newline at the end.

    Example:
        >>> print(render(("backend", "cases"), [("numpy", "12"), ("jax", "7")], align="<>"))
        backend  cases
        --------------
        numpy       12
        jax          7
    """
    sides = _sides(header, rows, align)
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    if sides and sides[-1] == "<":
        widths[-1] = 0  # nothing follows it: no trailing spaces
    lines = [
        GAP.join(
            cell.rjust(width) if side == ">" else cell.ljust(width)
            for cell, side, width in zip(row, sides, widths, strict=True)
        )
        for row in (header, *rows)
    ]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "<") -> str:
    """The table of :func:`render` as a Markdown (GitHub-flavoured) table: a site shows it as a
    table, wrapped and scrolled on its own, where the plain text would be a code block wider
    than the page. Arguments as for :func:`render`; a ``|`` in a cell is escaped.

    Example:
        >>> print(markdown(("backend", "cases"), [("numpy", "12"), ("jax", "7")], align="<>"))
        | backend | cases |
        | :-- | --: |
        | numpy | 12 |
        | jax | 7 |
    """
    sides = _sides(header, rows, align)
    rule = [":--" if side == "<" else "--:" for side in sides]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(header), "| " + " | ".join(rule) + " |", *map(line, rows)])


def _sides(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> list[str]:
    """Each column's alignment, ``<`` or ``>``, after checking ``align`` and the rows' lengths."""
    if not align or set(align) - {"<", ">"}:
        raise bad_value("align", align, "'<' or '>' for each column, e.g. '<>'")
    for row in rows:
        if len(row) != len(header):
            raise bad_value("each row", row, f"{len(header)} cells, one per header column")
    return [align[min(i, len(align) - 1)] for i in range(len(header))]


def ratio(value: float, limit: float) -> str:
    """``value`` with two decimals, or as many more as it takes for the text to stand on the same
    side of ``limit`` as the value: a ratio of 1.004 against a limit of 1 reads ``1.004``, not a
    ``1.00`` beside the word "missed".

    >>> ratio(0.4567, 0.6), ratio(1.004, 1.0), ratio(0.9996, 1.0)
    ('0.46', '1.004', '1.00')
    """
    for digits in range(2, 17):
        text = f"{value:.{digits}f}"
        if (float(text) <= limit) == (value <= limit):
            return text
    return repr(value)
