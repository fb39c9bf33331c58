"""The documentation: the README stays short and its example runs, the API reference lists
every public name, every public docstring has a one-line summary, and the built site opens in
a real browser with no broken internal link.

The site is the one CI builds (``docs/_build/html``, by ``.ci/run`` before pytest); where it
is missing, the test builds it itself, warnings as errors, into a temporary folder.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

import daskmri

from .browser import all_images_loaded, browser, console_errors  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README = REPO / "README.md"
BUILT = DOCS / "_build" / "html"

#: Submodules the API reference documents beside daskmri.__all__.
DOCUMENTED_MODULES = ("daskmri.synth", "daskmri.plot", "daskmri.testing", "daskmri.torch")


# -- The README ---------------------------------------------------------------------------------


def test_readme_is_short_and_names_no_machine_of_ours():
    text = README.read_text()
    assert len(text.splitlines()) <= 150, "the README holds at most 150 lines: move it to docs/"
    for machine in ("../shared", "/work", "torch==2.13.0"):
        assert machine not in text, f"the README names this project's machines: {machine!r}"


def test_readme_keeps_the_two_commands_that_ci_runs():
    text, ci = README.read_text(), (REPO / ".ci" / "run").read_text()
    demo = "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && daskmri demo"
    tests = (
        'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" '
        "&& python -m pytest"
    )
    assert demo in text and tests in text
    # CI runs the test command one step a line.
    for step in tests.split(" && "):
        assert step in ci, step


def test_readme_example_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) == 1, "the README has one Python example"
    script = tmp_path / "example.py"
    script.write_text(blocks[0])
    env = dict(os.environ, PYTHONPATH=str(REPO), TMPDIR=str(tmp_path))
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # The synthetic set of 2 patients has labelled records, and one epoch is served.
    assert "'record':" in done.stdout and "(4, 256, 256)" in done.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["example.py"]


# -- The API reference and the docstrings -------------------------------------------------------


def test_api_reference_lists_every_public_name():
    listed = set(re.findall(r"^\s{3}([A-Za-z_][\w.]*)\s*$", (DOCS / "api.rst").read_text(), re.M))
    missing = [n for n in daskmri.__all__ if n != "__version__" and n not in listed]
    assert missing == [], (
        f"add {missing} to docs/api.rst, in the autosummary of its stage, so that the API "
        "reference documents it"
    )


def _public_objects():
    for name in daskmri.__all__:
        if name != "__version__":
            yield f"daskmri.{name}", getattr(daskmri, name)
    for module_name in DOCUMENTED_MODULES:
        module = pytest.importorskip(module_name) if module_name == "daskmri.torch" else None
        module = module or __import__(module_name, fromlist=["_"])
        yield module_name, module
        for name in getattr(module, "__all__", ()):
            yield f"{module_name}.{name}", getattr(module, name)


def test_every_public_docstring_starts_with_a_one_line_summary():
    pytest.importorskip("torch", reason="daskmri.torch needs the torch extra")
    bad = []
    for name, obj in _public_objects():
        if not (callable(obj) or inspect.ismodule(obj)):
            continue  # a constant (a preset layout) shows its class's docstring
        lines = [*(inspect.getdoc(obj) or "").splitlines(), "", ""]
        if not lines[0].strip() or not lines[0].rstrip().endswith(".") or lines[1].strip():
            bad.append(f"{name}: {lines[0]!r} / {lines[1]!r}")
    assert bad == [], "a one-line summary ending in '.', then a blank line:\n" + "\n".join(bad)


# -- The built site -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The built site: CI's, or one built here with warnings as errors."""
    if (BUILT / "index.html").is_file():
        return BUILT
    pytest.importorskip("sphinx", reason="needs the docs extra (sphinx)")
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-d",
         str(out / ".doctrees"), str(DOCS), str(out / "html")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-5000:]
    return out / "html"


class _Links(HTMLParser):
    """The ids a page defines and the links it makes."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name"):
            if attrs.get(key) and (key == "id" or tag == "a"):
                self.ids.add(attrs[key])
        for key in ("href", "src"):
            if attrs.get(key) and not (tag == "link" and "preload" in (attrs.get("rel") or "")):
                self.links.append(attrs[key])


def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(errors="replace"))
    return parser


@pytest.mark.slow
def test_no_broken_internal_link(site):
    # The theme's own templates under _static/ are not pages (they hold Jinja, not links).
    pages = {
        path: _parse(path)
        for path in site.rglob("*.html")
        if "_static" not in path.relative_to(site).parts
    }
    assert len(pages) > 40, sorted(p.name for p in pages)
    broken = []
    for page, parsed in pages.items():
        for link in parsed.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith(("mailto:", "javascript:", "data:")):
                continue  # another site: not checked (no network here)
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            where = f"{page.relative_to(site)} -> {link}"
            if not target.is_file():
                broken.append(f"{where}: no such file")
            elif parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else _parse(target).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{where}: no id {parts.fragment!r} there")
    assert broken == []


@pytest.mark.slow
def test_site_renders_in_a_browser(site, browser):  # noqa: F811 (the fixture)
    by = pytest.importorskip("selenium.webdriver.common.by").By
    browser.get((site / "index.html").as_uri())
    assert "daskmri" in browser.title
    nav = browser.find_elements(by.CSS_SELECTOR, "nav a, .bd-header a")
    texts = {a.get_attribute("textContent").strip() for a in nav}
    assert {"User guide", "API reference"} <= texts, texts
    assert console_errors(browser) == []
    assert all_images_loaded(browser)[1] == []

    browser.get((site / "generated" / "daskmri.load_dataset.html").as_uri())
    assert "load_dataset" in browser.title
    body = browser.find_element(by.TAG_NAME, "main").text
    for parameter in ("root", "chunk_size", "source_options", "on_error", "spacing"):
        assert parameter in body, parameter
    assert "Parameters" in body and "Returns" in body
    assert console_errors(browser) == []

    for page in ("guide/mixed-geometry.html", "performance.html", "quickstart.html"):
        browser.get((site / page).as_uri())
        count, broken = all_images_loaded(browser)
        assert count > 0 and broken == [], (page, broken)
        assert console_errors(browser) == [], page
