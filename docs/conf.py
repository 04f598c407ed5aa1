"""Sphinx configuration of the popsdask documentation.

Build with ``python -m sphinx -W --keep-going -b html docs docs/_build/html`` (the ``docs`` extra).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import popsdask

# autosummary writes a page per module and object but never removes one whose object is gone
shutil.rmtree(Path(__file__).parent / "api" / "generated", ignore_errors=True)

project = "popsdask"
author = "popsdask developers"
copyright = "popsdask developers"
release = popsdask.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = ["_build"]

# the API reference follows the package tree: one page per module, found by recursion
autosummary_generate = True
autosummary_imported_members = False
autodoc_typehints = "none"  # numpydoc sections carry the types and shapes
autodoc_member_order = "bysource"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

html_theme = "pydata_sphinx_theme"
html_title = f"popsdask {release}"
html_static_path = ["_static"]
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}


def _benchmark_runs_page(root: Path) -> None:
    """validation/benchmark-runs.md: the tables of every committed benchmark JSON, rendered from the JSON by
    the benchmark driver's own functions (so no number in it is copied by hand)."""
    import importlib.util
    import json
    import shlex
    import warnings

    spec = importlib.util.spec_from_file_location("bench", root / "benchmarks" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    parts = [
        "# Benchmark runs\n",
        "Every JSON file in `benchmarks/results/`, rendered when the documentation is built by the functions "
        "`benchmarks/bench.py` writes its markdown with. The discussion of these numbers is in "
        "[performance](performance.md).\n",
    ]
    for path in sorted((root / "benchmarks" / "results").glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        meta = data.get("meta", {})
        parts.append(f"## `{path.name}`\n")
        if not data.get("summary"):  # the summary table states the run's date and machine itself
            parts.append(f"Run {meta.get('date', '(date not recorded)')} on {meta.get('machine', 'the 2-core VM')}.\n")
        if meta.get("argv"):
            parts.append(f"```bash\npython {shlex.join(meta['argv'])}\n```\n")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if data.get("summary"):
                parts.append(bench.markdown(data["summary"], meta))
            if data.get("runs"):
                parts.append(bench.ratios_markdown(data["runs"]))
            if data.get("ooc"):
                parts.append(bench.ooc_markdown(data["ooc"]))
    text = "\n".join(parts).replace("[Δᵀ|U]", "[Δᵀ \\| U]")
    (root / "docs" / "validation" / "benchmark-runs.md").write_text(text, encoding="utf-8")


_benchmark_runs_page(Path(__file__).resolve().parents[1])

# ``python -m popsdask.cli`` runs the command line on import; autosummary imports every module
autodoc_mock_imports = ["popsdask.cli.__main__"]

# Docstrings write absolute values and norms as |x| (|e|/σ, |y - MLE|); reStructuredText would
# read them as substitution references, so they are escaped outside inline literals.
_ABS = re.compile(r"(?<![|`\\\w])\|(?=[^\s|`])([^|`\n]*?[^\s|`\\])\|(?![|`])")


def _escape_bars(app, what, name, obj, options, lines):
    for i, line in enumerate(lines):
        row = line.strip()
        if row.startswith(("+-", "+=")) or (len(row) > 1 and row[0] == row[-1] == "|" and row.count("|") > 2):
            continue  # a table row
        lines[i] = _ABS.sub(r"\\|\1\\|", line)


def _skip_member(app, what, name, obj, skip, options):
    # scikit-learn's generated metadata-routing setters (set_fit_request, ...) are documented there
    if name.startswith("set_") and name.endswith("_request"):
        return True
    return None


def setup(app):
    app.connect("autodoc-process-docstring", _escape_bars)
    app.connect("autodoc-skip-member", _skip_member)
