"""The documentation site as a reader sees it: ``mkdocs build --strict`` passes (no broken link or
anchor), and headless Chromium, opening the built pages over HTTP, shows a title, the API's
entries and images that loaded. Skipped where mkdocs or Chromium is missing."""

from __future__ import annotations

import ast
import functools
import html
import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.backend_independent
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next(
    filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None
)
for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
    pytest.importorskip(module)

# A page of the site's own origin that opens another page in a frame and, once it has loaded,
# writes what a reader sees there into its own DOM, which ``chromium --dump-dom`` prints.
PROBE = """<!doctype html><html><head><meta charset="utf-8"></head><body>
<iframe id="page" src="{target}" width="1280" height="900"></iframe>
<script>
document.getElementById("page").addEventListener("load", () => {{
  const page = document.getElementById("page").contentDocument;
  const seen = {{
    title: page.title,
    heading: ((page.querySelector("h1") || {{}}).textContent || "").replace("\\u00b6", ""),
    text: page.body.innerText,
    anchors: [...page.querySelectorAll("[id]")].map((element) => element.id),
    images: [...page.querySelectorAll("article img")].map((image) => ({{
      src: image.getAttribute("src"),
      loaded: image.complete && image.naturalWidth > 0,
    }})),
  }};
  const result = document.createElement("pre");
  result.id = "seen";
  result.textContent = JSON.stringify(seen);
  document.body.appendChild(result);
}});
</script></body></html>"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(folder)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return folder


@pytest.fixture(scope="module")
def server(site: Path) -> Iterator[str]:
    handler = functools.partial(QuietHandler, directory=str(site))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
        httpd.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def chromium(*arguments: str) -> str:
    if CHROMIUM is None:
        pytest.skip("no Chromium (Debian: apt-get install chromium)")
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--virtual-time-budget=20000", *arguments],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def seen(site: Path, server: str, page: str) -> dict[str, Any]:
    """What a reader sees on ``page`` (a path in the site): title, heading, text, images."""
    probe = site / f"probe-{page.replace('/', '-')}.html"
    probe.write_text(PROBE.format(target=f"/{page}"))
    dom = chromium("--dump-dom", f"{server}/{probe.name}")
    found = re.search(r'<pre id="seen">(.*?)</pre>', dom, flags=re.DOTALL)
    assert found, f"{page} did not load in Chromium: {dom[-2000:]}"
    text = found.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return dict(json.loads(text))


def test_the_site_has_a_home_page(site):
    assert (site / "index.html").exists()  # the root of the site is not a 404
    assert (site / "api" / "xdrop" / "index.html").exists()


def test_the_home_page_shows_the_title_the_tour_and_a_picture(site, server):
    home = seen(site, server, "")
    assert home["title"].startswith("xdrop")
    assert home["heading"].strip() == "xdrop"
    assert "bit-identical masks" in home["text"]
    assert "xdrop.dropout(x, p=0.5, seed=0)" in home["text"]
    for tab in ("Getting started", "Guides", "Reference", "Performance"):
        assert tab in home["text"]
    assert home["images"] and all(image["loaded"] for image in home["images"]), home["images"]


def nav_pages(entries: list[Any]) -> list[str]:
    """The pages of the site's navigation (mkdocs.yml), each section's in order."""
    pages = []
    for entry in entries:
        for value in entry.values() if isinstance(entry, dict) else [entry]:
            pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_the_home_page_links_every_page_of_the_navigation(site):
    yaml = pytest.importorskip("yaml")
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    api = next(section["API"] for entry in nav for section in entry.get("Reference", []) if
               isinstance(section, dict) and "API" in section)  # fmt: skip
    others = nav_pages(api)[1:]  # the API's first page links the other API pages
    wanted = [page for page in nav_pages(nav) if page != "index.md" and page not in others]
    article = (site / "index.html").read_text().split("<article", 1)[1].split("</article>")[0]
    linked = {link.split("#")[0] for link in re.findall(r'href="([^"]+)"', article)}
    missing = [page for page in wanted if page.removesuffix(".md") + "/" not in linked]
    assert not missing, f"the home page's article links none of {missing}"


def test_the_api_page_shows_every_public_function_with_its_documentation(site, server):
    api = seen(site, server, "api/xdrop/")
    assert api["heading"].strip() == "xdrop"
    for name in ("dropout", "dropout_mask", "rdrop_loss", "rdrop_kl", "rdrop_forward",
                 "Generator", "fold_in", "use_backend", "XdropError"):  # fmt: skip
        assert f"xdrop.{name}" in api["anchors"], name
    text = api["text"]
    assert "Zero each element of x with probability p" in text  # a docstring, rendered
    assert "return_mask" in text and "Returns" in text and "Example" in text
    assert ":func:" not in text and "``" not in text  # no raw reStructuredText


# The modules whose public names (``__all__``) the API pages document, read without importing
# a framework.
PUBLIC_MODULES = {
    "xdrop": ROOT / "xdrop" / "__init__.py",
    "xdrop.layers.torch": ROOT / "xdrop" / "layers" / "torch.py",
    "xdrop.layers.keras": ROOT / "xdrop" / "layers" / "keras.py",
    "xdrop.layers.flax": ROOT / "xdrop" / "layers" / "flax.py",
    "xdrop.integrations.transformers": ROOT / "xdrop" / "integrations" / "transformers.py",
}


def public_names(path: Path) -> list[str]:
    """The literal ``__all__`` of the module at ``path``."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "__all__" for target in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise AssertionError(f"{path} has no __all__")


PUBLIC = [(module, name) for module, path in PUBLIC_MODULES.items() for name in public_names(path)]


def search(index: dict[str, Any], query: str) -> list[str]:
    """The locations the site's search (Material for MkDocs over lunr) finds for ``query``: both
    split text at the index's separator and lower-case it, markup apart; each query term matches
    the tokens it begins (the search appends a wildcard); a document must match every term."""
    separator = re.compile(index["config"]["separator"])

    def tokens(text: str) -> set[str]:
        words = separator.split(html.unescape(re.sub(r"<[^>]*>", " ", text)))
        return {word.lower() for word in words if word}

    terms = tokens(query)
    found = []
    for document in index["docs"]:
        words = tokens(document["title"]) | tokens(document["text"])
        if all(any(word.startswith(term) for word in words) for term in terms):
            found.append(document["location"])
    return found


@pytest.fixture(scope="module")
def search_index(site: Path) -> dict[str, Any]:
    return dict(json.loads((site / "search" / "search_index.json").read_text()))


@pytest.mark.parametrize(("module", "name"), PUBLIC)
def test_every_public_name_has_an_api_entry_the_search_finds(search_index, module, name):
    anchor = f"#{module}.{name}"
    entries = [doc["location"] for doc in search_index["docs"] if doc["location"].endswith(anchor)]
    assert entries, f"{module}.{name} has no entry on the API pages"
    # the name alone, and xdrop's own names as users write them in code: xdrop.mc_dropout
    for query in (name, f"{module}.{name}") if module == "xdrop" else (name,):
        assert set(entries) & set(search(search_index, query)), f"searching {query!r} misses it"


def article_text(page: Path) -> str:
    """The text of a built page's article, markup removed."""
    article = page.read_text().split("<article", 1)[1].split("</article>")[0]
    return html.unescape(re.sub(r"<[^>]*>", "", article))


def test_the_api_pages_link_the_pages_their_docstrings_name(site):
    for page in sorted((site / "api").glob("*/index.html")):
        paths = re.findall(r"\bdocs/[\w-]+\.md\b", article_text(page))
        assert not paths, f"{page.parent.name} names {paths} without linking them"


def test_every_pages_code_fits_the_page(site):
    """Every code block the site shows (``<pre>``: fenced and indented blocks of the pages, the
    docstrings' examples and the signatures of the API pages) is no wider than the page
    (``CODE_WIDTH`` of tests/test_docs.py). Tables that need more room are Markdown tables,
    which the theme scrolls on their own."""
    from test_docs import CODE_WIDTH

    pages = sorted(site.rglob("*.html"))
    assert any(page.parent.name == "spec" for page in pages)
    wide = []
    for page in pages:
        for block in re.findall(r"<pre\b.*?</pre>", page.read_text(), flags=re.DOTALL):
            lines = html.unescape(re.sub(r"<[^>]*>", "", block)).splitlines()
            name = page.relative_to(site).as_posix()
            wide += [f"{name} ({len(line)}): {line}" for line in lines if len(line) > CODE_WIDTH]
    assert not wide, "code wider than the page:\n" + "\n".join(wide)


def test_the_performance_page_shows_its_chart(site, server):
    page = seen(site, server, "performance/")
    assert any(image["src"].endswith("performance.png") for image in page["images"])
    assert all(image["loaded"] for image in page["images"]), page["images"]


def test_a_screenshot_of_the_home_page_is_a_picture(site, server, tmp_path):
    picture = tmp_path / "home.png"  # a temporary folder: screenshots are never committed
    chromium(f"--screenshot={picture}", "--window-size=1280,900", f"{server}/")
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 10_000
