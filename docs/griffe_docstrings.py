"""A Griffe extension for the API reference: docstrings written for ``help()`` read well on the site.

- Sphinx roles (``:func:`xdrop.dropout```) become code (``xdrop.dropout``).
- An argument entry naming several arguments (``logits1, logits2: ...``) becomes one entry per
  argument, the later ones pointing to the first, as Google-style sections list them.
- Doctest examples (``>>>`` lines and their output) become code blocks, except in an
  ``Examples:`` section, which Griffe reads itself; Markdown would read ``>>>`` as nested quotes.
- A page of this site named by its path (``docs/spec.md``) becomes a link to it.
- A reStructuredText literal block's ``::`` becomes ``:`` (the indented block is code anyway)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import griffe

ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|obj|exc):`~?([^`]+)`")
SHARED_ENTRY = re.compile(r"^(\s+)(\w+(?:, \w+)+): (.*)$")
LITERAL_BLOCK = re.compile(r"(?<=\S)::$", flags=re.MULTILINE)
SECTION = re.compile(r"^(\w+):\s*$")
PAGE = re.compile(r"``docs/([\w-]+)\.md``")  # a page of this site, named by its path


def page_link(match: re.Match[str]) -> str:
    """A link to the page ``docs/NAME.md`` (from an API page, one folder down), titled by its
    heading: a reader of the site follows it; ``help()`` still shows the path."""
    page = Path(__file__).resolve().parent / f"{match.group(1)}.md"
    title = page.read_text().splitlines()[0].lstrip("# ").replace("`", "")
    return f"[{title}](../{match.group(1)}.md)"


def split_shared_entries(text: str) -> str:
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = SHARED_ENTRY.match(lines[i])
        if match is None:
            out.append(lines[i])
            i += 1
            continue
        indent, names, description = match.groups()
        first, *others = names.split(", ")
        out.append(f"{indent}{first}: {description}")
        i += 1
        while i < len(lines) and lines[i].strip() and _indentation(lines[i]) > len(indent):
            out.append(lines[i])  # the description's continuation lines
            i += 1
        out.extend(f"{indent}{name}: as ``{first}``." for name in others)
    return "\n".join(out)


def fence_doctests(text: str) -> str:
    lines = text.splitlines()
    out: list[str] = []
    section = None
    i = 0
    while i < len(lines):
        heading = SECTION.match(lines[i])
        if heading:
            section = heading.group(1)
        if section == "Examples" or not lines[i].lstrip().startswith(">>>"):
            out.append(lines[i])
            i += 1
            continue
        indent = lines[i][: _indentation(lines[i])]
        out.append(f"{indent}```pycon")
        while i < len(lines) and lines[i].strip():  # the session runs to a blank line
            out.append(lines[i])
            i += 1
        out.append(f"{indent}```")
    return "\n".join(out)


def _indentation(line: str) -> int:
    return len(line) - len(line.lstrip())


class HelpDocstrings(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            text = LITERAL_BLOCK.sub(":", ROLE.sub(r"``\1``", obj.docstring.value))
            text = PAGE.sub(page_link, text)
            obj.docstring.value = fence_doctests(split_shared_entries(text))
