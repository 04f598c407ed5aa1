"""The package's architecture as a contract: imports go one way through the layers below, no
module imports another package's private name, there is no import cycle (function-local and
type-only imports included), and every writer goes through ``store.atomic_group``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

ROOT = Path(__file__).resolve().parents[1] / "popsdask"

# Lowest first. A module may import from its own layer and the layers below it; packages that
# share a layer (atomistic, foundation) are independent of each other.
LAYERS: list[tuple[str, ...]] = [
    ("core",),
    ("calibration",),
    ("io",),
    ("runtime",),
    ("engine",),
    ("evaluation",),
    ("atomistic", "foundation"),
    ("properties",),
    ("demo",),
    ("cli",),
]
LAYER = {pkg: i for i, pkgs in enumerate(LAYERS) for pkg in pkgs}


def _files() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(("popsdask", *(parts[:-1] if parts[-1] == "__init__" else parts)))


MODULES = {_module(p) for p in _files()}


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(absolute module, imported names) of every popsdask import in a file, at any depth
    (function-local and ``TYPE_CHECKING`` ones included); ``from pkg import module`` names the
    module itself."""
    me = _module(path)
    pkg = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("popsdask")):
            base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1] if node.level else []
            mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                out.append((sub, []) if sub in MODULES else (mod, [alias.name]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("popsdask")]
    return out


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_imports_only_go_down_the_layers() -> None:
    bad = []
    for path in _files():
        me = _module(path)
        if _package(me) not in LAYER:
            continue  # popsdask/__init__.py: the lazy public API
        for mod, _names in _imports(path):
            other = _package(mod)
            if other == _package(me) or mod in ("popsdask", "popsdask.__version__"):
                continue
            if other not in LAYER or LAYER[other] >= LAYER[_package(me)]:
                bad.append(f"{me} imports {mod}")
    assert not bad, bad


def test_every_package_is_in_a_layer() -> None:
    packages = {_package(m) for m in MODULES} - {""}
    assert packages == set(LAYER), packages ^ set(LAYER)


def test_there_is_no_import_cycle() -> None:
    """Tarjan's strongly connected components over every import, however deep in a function."""
    # the root package is the lazy public facade (its imports run on attribute access), so it is
    # left out: every module may read ``popsdask.__version__``
    graph = {
        _module(p): {m for m, _ in _imports(p) if m in MODULES and m not in (_module(p), "popsdask")}
        for p in _files()
        if _module(p) != "popsdask"
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                cycles.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_no_private_name_is_imported_across_packages() -> None:
    bad = []
    for path in _files():
        me = _module(path)
        pkg = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
        for mod, names in _imports(path):
            other_pkg = mod.rsplit(".", 1)[0] if mod not in ("popsdask",) else ""
            if mod.startswith(pkg + ".") and mod.count(".") == pkg.count(".") + 1:
                continue  # same package
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            if private or mod.rsplit(".", 1)[-1].startswith("_"):
                bad.append(f"{me}: from {mod} import {names}")
            del other_pkg
    assert not bad, bad


def test_importing_the_atomistic_layer_does_not_load_properties() -> None:
    code = (
        "import sys, popsdask.atomistic, popsdask.atomistic.implicit_diff; "
        "print(sorted(m for m in sys.modules if m.startswith('popsdask.properties')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out


def test_atomic_group_commits_complete_and_discards_on_error(tmp_path) -> None:
    from popsdask.io.store import atomic_group, is_complete

    ds = xr.Dataset({"a": ("x", np.arange(3.0))})
    target = tmp_path / "sub" / "g.zarr"
    with atomic_group(target) as staging:
        assert staging.parent == target.parent and staging.name.startswith(".g.zarr.partial-")
        ds.to_zarr(staging, zarr_format=3, consolidated=False)
    assert is_complete(target)
    with pytest.raises(FileExistsError, match="overwrite=True"), atomic_group(target):
        raise AssertionError("not entered")
    with pytest.raises(RuntimeError, match="boom"), atomic_group(target, overwrite=True, settle=0.0) as staging:
        ds.to_zarr(staging, zarr_format=3, consolidated=False)
        raise RuntimeError("boom")
    assert [p.name for p in target.parent.iterdir()] == ["g.zarr"]  # staging gone, old group kept
    assert is_complete(target)


def test_the_benchmark_driver_is_not_in_the_package(tmp_path) -> None:
    """``popsdask bench`` runs benchmarks/bench.py of the checkout; without one it exits 2."""
    import shutil

    from popsdask.cli import build_parser

    assert not (ROOT / "bench.py").exists() and (ROOT.parent / "benchmarks" / "bench.py").is_file()
    assert build_parser().parse_args(["bench", "--sizes", "10", "-o", "x"]).argv == ["--sizes", "10", "-o", "x"]
    shutil.copytree(ROOT, tmp_path / "popsdask", ignore=shutil.ignore_patterns("__pycache__"))
    code = "import sys, popsdask.cli; sys.exit(popsdask.cli.main(['bench', '--sizes', '10']))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == "", out
    driver = tmp_path / "benchmarks" / "bench.py"
    assert out.stderr.splitlines() == [
        f"popsdask bench: error: bench needs a source checkout: no benchmark driver at {driver}"
    ]
