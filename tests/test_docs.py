"""The examples in README.md and in the docstrings run as written (on the NumPy backend)."""

from __future__ import annotations

import ast
import doctest
import importlib
import importlib.util
import json
import pkgutil
import re
from pathlib import Path

import pytest

import xdrop

pytestmark = pytest.mark.backend_independent  # CI runs it once, not per backend

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(xdrop.__path__, "xdrop.")
    if info.name != "xdrop.__main__"
)


def python_blocks(path: Path) -> list[str]:
    """The page's Python blocks that run in this process: all but those marked to be launched
    otherwise (``<!-- launch: torchrun 2 -->`` and the like, run by their own launcher)."""
    found = re.findall(
        r"(?:<!-- launch: ([^>]*?) -->\n)?```python\n(.*?)```", path.read_text(), flags=re.DOTALL
    )
    return [block for launch, block in found if launch in ("", "python")]


@pytest.mark.parametrize(
    "document", ["README.md", *sorted(p.name for p in (ROOT / "docs").glob("*.md"))]
)
def test_markdown_python_examples_run(document):
    path = ROOT / document if document == "README.md" else ROOT / "docs" / document
    with xdrop.use_backend("numpy"):
        for block in python_blocks(path):
            for framework in re.findall(
                r"^(?:import|from) (torch|tensorflow|jax|keras_hub|keras|flax|optax|transformers)\b",
                block,
                flags=re.MULTILINE,
            ):
                pytest.importorskip(framework)
                if framework == "transformers":
                    _transformers_importable()
            exec(compile(block, str(path), "exec"), {})


def _transformers_importable() -> None:
    """Skip unless Hugging Face's ``Trainer`` can be imported here: it needs ``accelerate``,
    and ``transformers`` imports torchvision, which needs tests/torchvision_cpu.py beside the
    CPU torch."""
    pytest.importorskip("accelerate")
    from torchvision_cpu import define_torchvision_operators

    define_torchvision_operators()


# The modules with a page of their own in the API reference (docs/api/), and those pages.
API_PAGES = {
    "xdrop.layers.torch": "api/layers-torch.md",
    "xdrop.layers.keras": "api/layers-keras.md",
    "xdrop.layers.flax": "api/layers-flax.md",
    "xdrop.integrations.transformers": "api/integrations-transformers.md",
    "xdrop.protocol": "api/protocol.md",
    "xdrop.typing": "api/typing.md",
}


def prose(path: Path) -> str:
    """The text of a Markdown page without its fenced code blocks."""
    return re.sub(r"^\s*```.*?^\s*```", "", path.read_text(), flags=re.DOTALL | re.MULTILINE)


@pytest.mark.parametrize("document", sorted(p.name for p in (ROOT / "docs").glob("*.md")))
def test_pages_link_the_pages_and_modules_they_name(document):
    """A page names another page of the site, or a module with an API page, as a link a reader
    can follow: never as a path (``docs/spec.md``, ``xdrop/protocol.py``) alone."""
    text = prose(ROOT / "docs" / document)
    targets = {link.split("#")[0] for link in re.findall(r"\]\(([^)\s]+)\)", text)}
    unlinked = re.sub(r"\[[^\]]*\]\([^)]*\)", "", text)
    paths = sorted(set(re.findall(r"\bdocs/[\w/-]+\.md\b", unlinked)))
    assert not paths, f"{document} names {paths} without linking them"
    for module, page in API_PAGES.items():
        path = module.replace(".", "/") + ".py"
        if re.search(rf"`{re.escape(module)}\b|`{re.escape(path)}`", text):
            assert page in targets, f"{document} names {module} but never links {page}"


# The widest code line the site shows without a scrollbar: Material's page is 61rem, less two
# 12.1rem sidebars and 1.2rem margins, less the code block's padding, at 0.68rem monospace
# (0.6em a character) is 80 characters. tests/test_site.py holds every page of the built
# site to it, indented code blocks and the API pages included.
CODE_WIDTH = 80


def code_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, line)`` of each line inside a fenced code block of a Markdown page."""
    lines, inside = [], False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            inside = not inside
        elif inside:
            lines.append((number, line))
    return lines


@pytest.mark.parametrize(
    "document", ["README.md", *sorted(p.name for p in (ROOT / "docs").glob("*.md"))]
)
def test_code_blocks_fit_the_page(document):
    path = ROOT / document if document == "README.md" else ROOT / "docs" / document
    wide = [
        f"{document}:{n} ({len(line)})" for n, line in code_lines(path) if len(line) > CODE_WIDTH
    ]
    assert not wide, f"code lines wider than {CODE_WIDTH} characters: {wide}"


def test_the_monte_carlo_page_quotes_its_figure():
    """docs/mc-dropout.md states the k at which Monte Carlo averaging reaches weight scaling that
    make_figures.py found when it drew the committed figure (and wrote beside it)."""
    record = json.loads((ROOT / "docs" / "figures" / "mc-vs-weight-scaling.json").read_text())
    k = record["reaches_weight_scaling_at_k"]
    page = (ROOT / "docs" / "mc-dropout.md").read_text()
    assert re.findall(r"reaches weight scaling at (?:about )?`k = (\d+)`", page) == [str(k)]


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples_run(module_name):
    if module_name.startswith("xdrop.layers."):  # a layer module imports its framework
        framework = module_name.rsplit(".", 1)[1].split("_")[0]  # torch_functional: torch
        if framework != "common":
            pytest.importorskip(framework)
    if module_name == "xdrop.integrations.transformers":
        pytest.importorskip("torch")
        pytest.importorskip("transformers")
        _transformers_importable()
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:  # xdrop.torch_kernel and xdrop.triton_kernel import theirs
        if error.name not in ("torch", "triton"):
            raise
        pytest.skip(f"{module_name} needs {error.name}")
    with xdrop.use_backend("numpy"):
        failures, _ = doctest.testmod(
            module, extraglobs={"xdrop": xdrop}, optionflags=doctest.NORMALIZE_WHITESPACE
        )
    assert failures == 0


def emitted_warnings(source: str) -> list[tuple[str, str]]:
    """``(category, message start)`` of each ``warnings.warn``/``warn`` call in ``source``: the
    category's name (UserWarning by default) and the literal text the message begins with."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        if name not in ("warnings.warn", "warn", "warnings.warn_explicit"):
            continue
        category = node.args[1] if len(node.args) > 1 else None
        for keyword in node.keywords:
            if keyword.arg == "category":
                category = keyword.value
        message = node.args[0] if node.args else None
        if isinstance(message, ast.JoinedStr):  # an f-string: its leading literal text
            first = message.values[0] if message.values else None
            message = first if isinstance(first, ast.Constant) else None
        start = message.value if isinstance(message, ast.Constant) else ""
        label = ast.unparse(category).rsplit(".", 1)[-1] if category else "UserWarning"
        found.append((label, str(start)[:30]))
    return found


def test_every_warning_xdrop_can_emit_is_documented_with_how_to_silence_it():
    page = (ROOT / "docs" / "warnings.md").read_text()
    sources = [*(ROOT / "xdrop").rglob("*.py"), *(ROOT / "backends").rglob("*.py")]
    for path in sources:
        for category, start in emitted_warnings(path.read_text()):
            rows = [line for line in page.splitlines() if line.startswith(f"| `{category}`")]
            assert any(start in row for row in rows), (
                f"{path.relative_to(ROOT)} warns {category}({start!r}...): docs/warnings.md "
                "needs a row for it (category, message, when, how to silence it)"
            )


def test_the_warning_scan_finds_warnings_however_they_are_written():
    source = (
        "import warnings\n"
        "from warnings import warn\n"
        "warnings.warn('p is tiny', RuntimeWarning)\n"
        "warn(f'seed {s} reused', category=xdrop.SeedWarning)\n"
        "warnings.warn('plain')\n"
    )
    assert emitted_warnings(source) == [
        ("RuntimeWarning", "p is tiny"),
        ("SeedWarning", "seed "),
        ("UserWarning", "plain"),
    ]


def test_the_performance_chart_reads_every_table_of_the_performance_page():
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location(
        "site_figures", ROOT / "docs" / "figures" / "site_figures.py"
    )
    assert spec is not None and spec.loader is not None
    figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures)
    page = (ROOT / "docs" / "performance.md").read_text()
    tables = page.split("## The tables", 1)[1].split("\n## ", 1)[0]
    titles = [line.strip("*") for line in tables.splitlines() if line.startswith("**")]
    # backend · path · direction · dtype · shapes, every variant of every path
    assert all(title.count(" · ") == 4 for title in titles)
    variants = {tuple(title.split(" · ")[2:]) for title in titles}
    assert variants == {
        (direction, dtype, f"{shapes} shapes")
        for direction in ("forward", "forward+backward")
        for dtype in ("float32", "bfloat16")
        for shapes in ("fixed", "changing")
    }
    ratios = figures.performance_ratios(page)
    assert list(ratios) == titles  # one bar group per table, in the page's order
    # p = 0.5, as the table says
    assert ratios["numpy · numpy · forward · float32 · fixed shapes"][10**6] == 0.09  # its row
