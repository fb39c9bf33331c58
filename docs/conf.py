"""Sphinx configuration for daskmri's documentation site.

Build it (warnings are errors, as in CI's ``.ci/run``)::

    sphinx-build -W --keep-going -q -b html docs docs/_build/html

The quickstart notebook executes during the build. Cross-references to xarray, dask,
distributed, numpy, pandas and pydicom resolve offline, through the inventories in
``docs/_inventories`` (generated from the installed packages by
``docs/make_inventories.py``, never downloaded).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
# The checkout's daskmri, whether or not it is installed (a fresh clone builds as is), here
# and in the kernel that executes the quickstart (it inherits PYTHONPATH).
sys.path.insert(0, str(DOCS.parent))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(DOCS.parent), *filter(None, [os.environ.get("PYTHONPATH")])]
)

import daskmri  # noqa: E402

project = "daskmri"
author = "the daskmri developers"
copyright = "the daskmri developers"
version = release = daskmri.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_nb",  # brings myst_parser: Markdown pages and the executed notebook
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
# `_*.md` are fragments that another page folds in, never pages of their own.
exclude_patterns = ["_build", "jupyter_execute", "**/_*.md", "_*.md", "**.ipynb_checkpoints"]
templates_path = ["_templates"]

# -- API reference: autosummary of daskmri.__all__, numpydoc docstrings -------------------------
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": False}
autodoc_typehints = "none"  # numpydoc's Parameters sections already give the types
# numpydoc lists class members itself only when asked; the API page lists them by autosummary,
# so leaving this on would describe every attribute twice (duplicate object warnings).
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
# Types in Parameters and Returns link to xarray, numpy, pandas, ... through intersphinx.
numpydoc_xref_param_type = True
numpydoc_xref_aliases = {
    "Dataset": "xarray.Dataset",
    "xr.Dataset": "xarray.Dataset",
    "DataArray": "xarray.DataArray",
    "DataFrame": "pandas.DataFrame",
    "pd.DataFrame": "pandas.DataFrame",
    "ndarray": "numpy.ndarray",
    "np.ndarray": "numpy.ndarray",
    "Generator": "numpy.random.Generator",
    "Client": "distributed.Client",
    "Path": "pathlib.Path",
    "PathLike": "os.PathLike",
    "os.PathLike": "os.PathLike",
    # numpydoc's own alias, python:None, would show as that text: the generated Python
    # inventory holds no py:data entry for None.
    "None": ":obj:`None`",
}
numpydoc_xref_ignore = {"of", "or", "optional", "default", "and", "the", "a", "an", "to"}
numpydoc_validation_checks: set[str] = set()
nitpicky = False

# -- Markdown and notebooks ---------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
# The quickstart runs on every build: a page that shows outputs the code no longer gives would
# be worse than none.
nb_execution_mode = "force"
nb_execution_timeout = 300
nb_execution_raise_on_error = True
nb_execution_show_tb = True

# -- Intersphinx, offline -----------------------------------------------------------------------
INVENTORIES = DOCS / "_inventories"
REMOTES = {
    "python": "https://docs.python.org/3",
    "numpy": "https://numpy.org/doc/stable",
    "xarray": "https://docs.xarray.dev/en/stable",
    "dask": "https://docs.dask.org/en/stable",
    "distributed": "https://distributed.dask.org/en/stable",
    "pandas": "https://pandas.pydata.org/docs",
    "pydicom": "https://pydicom.github.io/pydicom/stable",
}
# Each project's documented URL, with a local inventory (no network is needed or used).
intersphinx_mapping = {
    name: (url, str(INVENTORIES / f"{name}.inv"))
    for name, url in REMOTES.items()
    if (INVENTORIES / f"{name}.inv").is_file()
}
_missing = sorted(set(REMOTES) - set(intersphinx_mapping))
if _missing:
    print(
        f"intersphinx: no local inventory for {', '.join(_missing)}; links to them are plain "
        "text (python docs/make_inventories.py writes them)"
    )
intersphinx_timeout = 5

# -- HTML ---------------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"daskmri {release}"
html_static_path: list[str] = []
html_show_sourcelink = False
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "navbar_align": "left",
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_sidebars = {"index": [], "api": []}
# A mode from the start: with none, the theme logs a console error on its first visit.
html_context = {"default_mode": "light"}


# -- The command line's help, generated from its parser -----------------------------------------
def _cli_help(argv: list[str]) -> str:
    """What ``daskmri ARGV`` prints (argparse's help, at a fixed width)."""
    import contextlib
    import io

    from daskmri.cli import main

    out = io.StringIO()
    width = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "88"
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            main(argv)
    finally:
        if width is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = width
    return out.getvalue().rstrip()


def _cli_commands() -> list[str]:
    """The subcommands, in the order ``daskmri --help`` lists them."""
    import re

    usage = _cli_help(["--help"])
    return re.search(r"\{([a-z,-]+)\}", usage).group(1).split(",")


def setup(app):
    from docutils import nodes
    from sphinx.util.docutils import SphinxDirective

    class CliHelp(SphinxDirective):
        """``daskmri --help`` and each ``daskmri COMMAND --help``, as literal blocks."""

        def run(self):
            found = []
            for argv in (["--help"], *([c, "--help"] for c in _cli_commands())):
                title = "daskmri " + " ".join(argv)
                section = nodes.section(ids=[nodes.make_id(title)])
                section += nodes.title(text=title)
                text = _cli_help(argv)
                section += nodes.literal_block(text, text, language="text")
                found.append(section)
            return found

    app.add_directive("cli-help", CliHelp)
    return {"parallel_read_safe": True}
