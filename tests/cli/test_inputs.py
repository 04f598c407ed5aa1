"""Bad command-line input: exit code 2 and one line naming the path, variable and reason, before
any Dask cluster starts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from popsdask import fit, write_store
from popsdask.cli import main
from popsdask.engine.predictions import predict_ensemble
from tests.conftest import misspecified, no_cluster_started

LOCAL = ["--n-workers", "1", "--threads-per-worker", "1", "--quiet"]
OVERWRITE = "{} exists; pass --overwrite to replace it"
ATOMISTIC = "atomistic extra (ase) not installed"


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own errors
        return int(exc.code or 0)


def _fails(capsys, argv: list[str], *needles: str) -> str:
    """Run ``popsdask ARGV``; it must exit 2 with one stderr line holding every needle, without
    starting a cluster."""
    capsys.readouterr()
    with no_cluster_started(f"popsdask {argv[0]}"):
        rc = _run(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    X, y, w = misspecified(600, 4, seed=3)
    train = write_store(d / "train.zarr", X, y, weight=w, chunk_rows=200)
    write_store(d / "five.zarr", np.hstack([X, X[:, :1]]), y, chunk_rows=200)
    write_store(d / "noy.zarr", X[:50], np.zeros(50), chunk_rows=50)
    post = fit(X, y, weight=w)
    post.save(d / "post.zarr")
    # predictions of a store without y: nothing to report
    import xarray as xr

    xr.Dataset({"X": (("row", "feature"), X[:40])}).to_zarr(d / "unlabelled.zarr", zarr_format=3)
    predict_ensemble(post, d / "unlabelled.zarr", d / "pred-noy.zarr", n_samples=8)
    predict_ensemble(post, train, d / "pred.zarr", n_samples=8)
    return {p.name.removesuffix(".zarr"): p for p in d.iterdir()} | {"dir": d}


def test_version_and_help_show_defaults(capsys):
    assert _run(["--version"]) == 0
    assert capsys.readouterr().out.strip().startswith("popsdask 0.")
    for cmd, default in (
        ("fit", "(default: 50.0)"),
        ("predict", "(default: uniform)"),
        ("descriptors", "(default: 0.25)"),
        ("demo", "(default: 35000)"),
    ):
        assert _run([cmd, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        assert default in text, (cmd, text)
        assert "--overwrite" in text or cmd == "demo"


def test_missing_paths(capsys, stores):
    d = stores["dir"]
    _fails(capsys, ["fit", str(d / "missing.zarr"), "-o", str(d / "p.zarr"), *LOCAL], "missing.zarr: no such store")
    _fails(
        capsys,
        ["predict", str(d / "nopost.zarr"), str(stores["train"]), "-o", str(d / "x.zarr"), *LOCAL],
        "nopost.zarr: no such posterior",
    )
    _fails(
        capsys,
        ["predict", str(stores["post"]), str(d / "missing.zarr"), "-o", str(d / "x.zarr"), *LOCAL],
        "missing.zarr: no such store",
    )
    _fails(capsys, ["report", str(d / "missing.zarr"), "-o", str(d / "r")], "missing.zarr: no such prediction store")
    assert not (d / "p.zarr").exists() and not (d / "x.zarr").exists()


def test_missing_configurations_and_existing_output_of_descriptors(capsys, stores):
    pytest.importorskip("ase", reason=ATOMISTIC)
    d = stores["dir"]
    _fails(
        capsys,
        ["descriptors", str(d / "nothing.extxyz"), "-o", str(d / "s.zarr"), *LOCAL],
        "nothing.extxyz: no such file or directory",
    )
    _fails(
        capsys,
        ["descriptors", str(d / "none-*.xyz"), "-o", str(d / "s.zarr"), *LOCAL],
        "none-*.xyz: no file matches this pattern",
    )
    assert not (d / "s.zarr").exists()
    existing = d / "exists-descriptors"
    existing.mkdir()
    _fails(capsys, ["descriptors", str(stores["train"]), "-o", str(existing), *LOCAL], OVERWRITE.format(existing))
    assert list(existing.iterdir()) == []  # untouched


def test_bad_option_values(capsys, stores):
    d, post, train = stores["dir"], str(stores["post"]), str(stores["train"])
    _fails(capsys, ["predict", post, train, "-o", str(d / "x.zarr"), "--n-samples", "0"], "--n-samples", "0: must be")
    _fails(capsys, ["predict", post, train, "-o", str(d / "x.zarr"), "--n-samples", "ten"], "--n-samples", "'ten'")
    _fails(capsys, ["fit", train, "-o", str(d / "p.zarr"), "--split", "validation"], "--split", "'validation'")
    _fails(capsys, ["fit", train, "-o", str(d / "p.zarr"), "--leverage-percentile", "150"], "--leverage-percentile")
    _fails(capsys, ["fit", train, "-o", str(d / "p.zarr"), "--percentile-clipping", "-1"], "--percentile-clipping")
    _fails(capsys, ["descriptors", train, "-o", str(d / "s.zarr"), "--weights", "a=2,c=3"], "--weights", "a=2,c=3")
    _fails(capsys, ["descriptors", train, "-o", str(d / "s.zarr"), "--test-fraction", "1.5"], "--test-fraction")
    _fails(capsys, ["demo", "--configs", "0"], "--configs")


def test_split_of_a_store_without_one(capsys, stores):
    d = stores["dir"]
    _fails(
        capsys,
        ["fit", str(stores["train"]), "-o", str(d / "p.zarr"), "--split", "train", *LOCAL],
        "train.zarr: no per-configuration 'split' variable",
    )
    _fails(
        capsys,
        ["predict", str(stores["post"]), str(stores["train"]), "-o", str(d / "x.zarr"), "--split", "test", *LOCAL],
        "train.zarr: no per-configuration 'split' variable",
    )


def test_wrong_kind_of_store(capsys, stores):
    d = stores["dir"]
    line = _fails(capsys, ["report", str(stores["train"]), "-o", str(d / "r")], "not a prediction store")
    assert "descriptor store" in line and "popsdask predict" in line
    _fails(capsys, ["report", str(stores["post"]), "-o", str(d / "r")], "post.zarr: not a prediction store")
    line = _fails(capsys, ["report", str(stores["pred-noy"]), "-o", str(d / "r")], "pred-noy.zarr: no metrics")
    assert "no reference values y" in line
    _fails(
        capsys,
        ["predict", str(stores["post"]), str(stores["five"]), "-o", str(d / "x.zarr"), *LOCAL],
        "five.zarr/X: 5 features, but the posterior",
    )
    _fails(
        capsys,
        ["fit", str(stores["noy"]) + "-absent", "-o", str(d / "p.zarr"), *LOCAL],
        "no such store",
    )
    assert not (d / "r").exists()


def test_unfinished_and_v2_stores(capsys, stores, tmp_path):
    staging = tmp_path / ".train.zarr.partial-0badc0de"
    shutil.copytree(stores["train"], staging)
    _fails(capsys, ["fit", str(staging), "-o", str(tmp_path / "p.zarr"), *LOCAL], "staging directory")
    unfinished = tmp_path / "unfinished.zarr"
    shutil.copytree(stores["train"], unfinished)
    meta = unfinished / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["popsdask_complete"] = False
    meta.write_text(json.dumps(doc))
    argv = ["fit", str(unfinished), "-o", str(tmp_path / "p.zarr"), *LOCAL]
    _fails(capsys, argv, "popsdask_complete attribute is false")
    import xarray as xr

    X, y, _ = misspecified(50, 2)
    xr.Dataset({"X": (("row", "feature"), X), "y": (("row",), y)}).to_zarr(tmp_path / "v2.zarr", zarr_format=2)
    _fails(
        capsys,
        ["fit", str(tmp_path / "v2.zarr"), "-o", str(tmp_path / "p.zarr"), *LOCAL],
        "a Zarr v2 group",
        "zarr_format=3",
    )


def test_overwrite_wording_is_the_same_everywhere(capsys, stores):
    d = stores["dir"]
    existing = d / "exists"
    existing.mkdir(exist_ok=True)
    wanted = OVERWRITE.format(existing)
    _fails(capsys, ["fit", str(stores["train"]), "-o", str(existing), *LOCAL], wanted)
    _fails(capsys, ["predict", str(stores["post"]), str(stores["train"]), "-o", str(existing), *LOCAL], wanted)
    _fails(capsys, ["report", str(stores["pred"]), "-o", str(existing)], wanted)
    assert list(existing.iterdir()) == []  # untouched
    # --overwrite replaces a report whole (written beside it, then renamed into place)
    (existing / "old.txt").write_text("old")
    assert _run(["report", str(stores["pred"]), "-o", str(existing), "--overwrite"]) == 0
    assert not (existing / "old.txt").exists() and (existing / "report.md").exists()
    assert not [p for p in d.iterdir() if p.name.startswith(".exists")]


def test_export_inputs(capsys, stores):
    d, post = stores["dir"], str(stores["post"])
    out = str(d / "members")
    _fails(capsys, ["export", str(d / "nopost.zarr"), "--members", "3", "-o", out], "nopost.zarr: no such posterior")
    _fails(capsys, ["export", post, "--members", "0", "-o", out], "--members", "0: must be >= 1")
    _fails(capsys, ["export", post, "--members", "3", "-o", out], "no such store", "pass --descriptors STORE")
    pytest.importorskip("ase", reason=ATOMISTIC)  # export reads the SNAP settings with the atomistic layer
    argv = ["export", post, "--members", "3", "-o", out, "--descriptors", str(stores["train"])]
    _fails(capsys, argv, "train.zarr: no 'snap' attribute with the SNAP settings")
    assert not (d / "members").exists()
