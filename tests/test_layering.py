"""The package's layering (issue 16): imports go core <- atomistic <- properties <- cli, no module
imports another package's private name, every writer goes through ``store.atomic_group``, and
the old import paths of moved modules keep working."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

ROOT = Path(__file__).resolve().parents[1] / "popsdask"
LAYER = {"atomistic": 1, "foundation": 1, "properties": 2}  # top-level modules: 0; cli.py: 3
ALIASES = {"popsdask.atomistic.implicit_properties"}  # lazy deprecated aliases of moved modules


def _layer(module: str) -> int:
    parts = module.split(".")
    if parts[1:2] == ["cli"]:
        return 3
    return LAYER.get(parts[1], 0) if len(parts) > 1 else 0


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(absolute module, imported names) of every ``from ... import`` in a popsdask file."""
    pkg = ".".join(("popsdask", *path.relative_to(ROOT).with_suffix("").parts[:-1]))
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("popsdask")):
            base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1] if node.level else []
            mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
            out.append((mod, [a.name for a in node.names]))
    return out


def _files() -> list[Path]:
    return [p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts]


def _module(path: Path) -> str:
    return ".".join(("popsdask", *path.relative_to(ROOT).with_suffix("").parts))


def test_imports_only_go_down_the_layers() -> None:
    up = []
    for path in _files():
        me = _module(path)
        if me in ALIASES or me.endswith("__init__"):
            continue
        for mod, _names in _imports(path):
            if _layer(mod) > _layer(me):
                up.append(f"{me} imports {mod}")
    assert not up, up


def test_no_private_name_is_imported_across_packages() -> None:
    bad = []
    for path in _files():
        me = _module(path)
        pkg = me.rsplit(".", 1)[0]
        for mod, names in _imports(path):
            other_pkg = mod.rsplit(".", 1)[0] if mod.count(".") > 1 else "popsdask"
            if other_pkg == pkg or me in ALIASES:
                continue  # same package
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            if private or mod.rsplit(".", 1)[-1].startswith("_") and not mod.endswith("__init__"):
                bad.append(f"{me}: from {mod} import {names}")
    assert not bad, bad


def test_importing_the_atomistic_layer_does_not_load_properties() -> None:
    code = (
        "import sys, popsdask.atomistic, popsdask.atomistic.implicit, popsdask.atomistic.implicit_properties; "
        "print(sorted(m for m in sys.modules if m.startswith('popsdask.properties')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out


def test_atomic_group_commits_complete_and_discards_on_error(tmp_path) -> None:
    from popsdask.store import atomic_group, is_complete

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


def test_moved_modules_keep_their_old_import_paths() -> None:
    from popsdask.atomistic import export
    from popsdask.atomistic.calculator import LammpsCalculator
    from popsdask.atomistic.snap_files import snap_calculator
    from popsdask.properties import _defects, cells, implicit, report, runner, status, tables

    assert export.LammpsCalculator is LammpsCalculator and export.snap_calculator is snap_calculator
    assert _defects.status_array is status.status_array and _defects.ground_state is cells.ground_state
    assert report.write_report is tables.write_report
    assert runner.RUNNERS is runner.ROUTES and runner.ROUTES["implicit"] is implicit.run_implicit
    with pytest.warns(DeprecationWarning, match="moved to popsdask.properties.implicit"):
        from popsdask.atomistic.implicit_properties import hop_neb
    assert hop_neb is implicit.hop_neb
    from popsdask.cluster import current_client as c1
    from popsdask.passes import _client
    from popsdask.runtime import current_client

    assert c1 is current_client and _client() is current_client()


def test_deprecated_method_keyword_still_selects_the_route(tmp_path, monkeypatch) -> None:
    from popsdask.properties import runner

    seen = {}

    def fake(*args, **kwargs):
        seen.update(kwargs)
        return {}

    monkeypatch.setitem(runner.ROUTES, "implicit", fake)
    with pytest.warns(DeprecationWarning, match="route="):
        runner.run_properties([], None, ["phases"], tmp_path, method="implicit", sampling="sobol")
    assert seen["sampling"] == "sobol"
    with pytest.raises(runner.InputError, match="route 'nope'"):
        runner.run_properties([], None, ["phases"], tmp_path, route="nope")


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
