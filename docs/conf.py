"""Sphinx configuration of rcukit's documentation.

Built with ``python -m sphinx -W -b html docs docs/_build`` (CI builds it so, warnings as
errors, from ``tests/docs/test_docs_build.py``). The pages are Markdown (MyST); the API
reference comes from the docstrings of the checkout beside this folder; every ``rcukit``
command's ``--help`` and a real run of it are produced while the pages build
(``_ext/rcukit_run.py``), so they never go stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
# the checkout's rcukit, not whichever one is installed: the reference describes this tree
sys.path[:0] = [str(ROOT), str(DOCS / "_ext")]

import rcukit  # noqa: E402

project = "rcukit"
author = "rcukit contributors"
copyright = "rcukit contributors, MIT licence"
release = rcukit.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "rcukit_run",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
# docs/figures/ holds generated PNGs (and maybe notes about them), not pages
exclude_patterns = ["_build", "figures/**.md", "figures/**.rst", "**/.pytest_cache"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# The reference: members in source order, signatures without the types (they go into the
# description, where long attrs signatures stay readable).
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_preserve_defaults = False
napoleon_google_docstring = False
napoleon_numpy_docstring = False

# No intersphinx: the build must not need the network.
html_theme = "furo"
html_title = f"rcukit {release}"
html_static_path: list[str] = []

# Every cross-reference to the public API (``rcukit.X``, ``rcukit.sim.X``) must resolve; the
# docstrings' references to implementation modules, type variables and the standard library
# (no intersphinx: the build must not need the network) are left as plain text.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(collections\.abc|enum|typing|contextlib)\..*"),
    (
        r"py:.*",
        r"rcukit\.(app|mm|locking|rcu|kernel|machine|sched|wq|trace|config|errors|scenarios|cli)"
        r"\..*",
    ),
    (r"py:.*", r"[A-Za-z_][\w]*(\.[\w]+)?"),  # unqualified names in docstrings
    (r"py:class", r"D\[k\] if k in D.*"),  # Mapping.get's docstring, inherited by RcuDict
]

# The commands run while building (see _ext/rcukit_run.py): a fixed width, no colour.
rcukit_run_columns = 120
rcukit_run_timeout = 120


def _no_type_docstring(
    app: object, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    """A constant without a doc comment is documented by its page's text, not by its type's
    docstring (autodoc would show ``float``'s or ``GFP``'s own under ``APP_DRAIN_DELAY``)."""
    if what == "data" and obj.__doc__ == type(obj).__doc__:
        lines.clear()


def setup(app: object) -> None:
    app.connect("autodoc-process-docstring", _no_type_docstring)  # type: ignore[attr-defined]
