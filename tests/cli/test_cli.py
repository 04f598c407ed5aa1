"""The popsdask command line, end to end on real stores and a real LocalCluster."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from popsdask import Posterior, write_store
from popsdask.cli import main
from tests.conftest import ROOT, misspecified

LOCAL = ["--n-workers", "1", "--threads-per-worker", "2", "--quiet"]


@pytest.mark.slow
def test_fit_predict_report(tmp_path, capsys):
    X, y, w = misspecified(5000, 7, seed=31)
    write_store(tmp_path / "train.zarr", X[:4000], y[:4000], weight=w[:4000], chunk_rows=800)
    write_store(tmp_path / "test.zarr", X[4000:], y[4000:], chunk_rows=300)
    assert main(["fit", str(tmp_path / "train.zarr"), "-o", str(tmp_path / "post.zarr"), *LOCAL]) == 0
    post = Posterior.load(tmp_path / "post.zarr")
    assert post.n_rows_ == 4000 and post.provenance["input"].endswith("train.zarr")
    assert (
        main(
            [
                "predict",
                str(tmp_path / "post.zarr"),
                str(tmp_path / "test.zarr"),
                "-o",
                str(tmp_path / "pred.zarr"),
                "--n-samples",
                "64",
                *LOCAL,
            ]
        )
        == 0
    )
    assert main(["report", str(tmp_path / "pred.zarr"), "-o", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "envelope violation" in out
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert metrics["energy"]["n"] == 1000
    # re-running without --overwrite refuses and leaves the posterior intact
    assert main(["fit", str(tmp_path / "train.zarr"), "-o", str(tmp_path / "post.zarr"), *LOCAL]) == 2
    assert "exists" in capsys.readouterr().err
    np.testing.assert_array_equal(Posterior.load(tmp_path / "post.zarr").coef_, post.coef_)


def test_ensemble_fit_keeps_corrections_in_the_posterior(tmp_path):
    X, y, _ = misspecified(3000, 5, seed=32)
    write_store(tmp_path / "s.zarr", X, y, chunk_rows=500)
    assert (
        main(["fit", str(tmp_path / "s.zarr"), "-o", str(tmp_path / "p.zarr"), "--posterior", "ensemble", *LOCAL]) == 0
    )
    post = Posterior.load(tmp_path / "p.zarr")
    assert post.corrections_.shape == (post.n_selected_, 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.zarr", "s.zarr"]


def test_bad_store_is_a_clear_error(tmp_path, capsys):
    X, y, _ = misspecified(100, 3)
    write_store(tmp_path / "s.zarr", X[:, :2], y)
    assert main(["fit", str(tmp_path / "missing.zarr"), "-o", str(tmp_path / "p.zarr"), *LOCAL]) == 2
    assert "missing.zarr: no such store" in capsys.readouterr().err
    assert not (tmp_path / "p.zarr").exists()


@pytest.mark.slow
def test_demo_small(tmp_path):
    """The README's main job, scaled down (the full default runs in CI's .ci/run)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "popsdask.cli",
            "demo",
            "-o",
            str(tmp_path / "demo"),
            "--configs",
            "6000",
            "--chunk-rows",
            "8000",
            "--n-samples",
            "100",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pass 4/4" in proc.stdout and "envelope violation" in proc.stdout
    metrics = json.loads((tmp_path / "demo" / "report" / "metrics.json").read_text())
    assert set(metrics) == {"energy", "force"}
    # the misspecified model's errors are bracketed most of the time (paper: 2-3 % violation)
    assert metrics["energy"]["envelope_violation"] < 0.05
    assert metrics["force"]["envelope_violation"] < 0.05
    assert (tmp_path / "demo" / "report" / "force.png").exists()


def test_demo_quiet_prints_no_progress_bars(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "popsdask.cli", "demo", "-o", str(tmp_path / "d"), "--configs", "2000"]
        + ["--chunk-rows", "4000", "--n-samples", "50", "--quiet", "--n-workers", "1", "--threads-per-worker", "2"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for bar in ("Completed", "[#", "pass 1/4", "dashboard", "generating"):
        assert bar not in proc.stdout + proc.stderr, bar
    assert "envelope violation" in proc.stdout and "demo finished" in proc.stdout
