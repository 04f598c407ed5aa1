"""Interrupted writes: SIGKILL the client process in the middle of writing a descriptor store, a
posterior and a prediction store.

The writer runs in a real subprocess over a dask array whose blocks take a moment each, so the
kill lands while chunks are being written (the test waits until some chunk files exist in the
hidden staging directory). Afterwards: nothing exists at the target path (or the previous
complete version is untouched), the staging directory is refused by every reader as incomplete,
and running the same write again completes, reads back correctly and removes the staging
directory the killed write left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from popsdask import InputError, Posterior, fit, open_store, write_store
from popsdask.engine.predictions import open_predictions
from tests.conftest import misspecified

ROOT = Path(__file__).resolve().parents[2]

COMMON = textwrap.dedent(
    """
    import sys, time
    import dask, dask.array as da, numpy as np
    dask.config.set(scheduler="threads", num_workers=2)
    SLOW = float(sys.argv[2])
    N, P, CH = 4000, 5, 100

    def rows(block_id=None):
        time.sleep(SLOW)
        rng = np.random.default_rng(block_id[0])
        return rng.normal(size=(CH, P))

    X = da.map_blocks(rows, chunks=((CH,) * (N // CH), (P,)), dtype=np.float64)
    y = da.sin(X.sum(axis=1))
    target = sys.argv[1]
    """
)

WRITERS = {
    "store": COMMON
    + textwrap.dedent(
        """
        from popsdask import write_store
        write_store(target, X, y, chunk_rows=CH, overwrite=True, attrs={"run": sys.argv[3]})
        """
    ),
    "posterior": COMMON
    + textwrap.dedent(
        """
        from popsdask import Posterior
        P_ = P
        post = Posterior(
            coef_=np.ones(P_), sigma_=np.eye(P_), alpha_=1.0, lambda_=1.0,
            misspecification_sigma_=np.eye(P_), kind="ensemble", corrections_=X,
            n_rows_=N, n_selected_=N,
        )
        post.save(target, overwrite=True)
        """
    ),
    "predictions": COMMON
    + textwrap.dedent(
        """
        from popsdask.engine import predictions as ensemble
        ensemble.BLOCK_BYTES = 8 * 100 * 256  # 256-row blocks: many prediction chunks
        ensemble.predict_ensemble(sys.argv[3], X, target, n_samples=100, seed=2, overwrite=True)
        """
    ),
}


def _chunk_files(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file() and "c" in p.relative_to(root).parts[:-1])


def _staging(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.partial-*"))


def _run(kind: str, target: Path, *extra: str, slow: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", WRITERS[kind], str(target), str(slow), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _kill_mid_write(kind: str, target: Path, *extra: str, min_chunks: int = 3) -> Path:
    """Start a slow writer, SIGKILL it once ``min_chunks`` chunk files are staged; return staging."""
    before = set(_staging(target))
    proc = _run(kind, target, *extra, slow=0.15)
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            staged = [p for p in _staging(target) if p not in before]
            if staged and _chunk_files(staged[0]) >= min_chunks:
                os.kill(proc.pid, signal.SIGKILL)
                break
            if proc.poll() is not None:
                pytest.fail(f"writer finished before it could be killed:\n{proc.stdout.read().decode()}")
            time.sleep(0.02)
        else:
            pytest.fail("writer never started writing chunks")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    (staging,) = [p for p in _staging(target) if p not in before]
    return staging


def _complete(kind: str, target: Path, *extra: str) -> None:
    proc = _run(kind, target, *extra)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out.decode()


def test_killed_descriptor_store_write_is_never_opened_and_rerun_completes(tmp_path):
    target = tmp_path / "train.zarr"
    staging = _kill_mid_write("store", target, "first")
    assert not target.exists()
    with pytest.raises(InputError, match="no such store"):
        open_store(target)
    with pytest.raises(InputError, match="not marked complete"):
        open_store(staging)
    with pytest.raises(InputError, match="not marked complete"):
        fit(staging)
    _complete("store", target, "second")
    assert not staging.exists() and not _staging(target)
    ds = open_store(target)
    assert ds.attrs["run"] == "second" and ds.sizes["row"] == 4000
    X = ds["X"].values
    np.testing.assert_array_equal(X[:100], np.random.default_rng(0).normal(size=(100, 5)))
    np.testing.assert_array_equal(ds["y"].values, np.sin(X.sum(axis=1)))


@pytest.mark.slow
def test_killed_overwrite_leaves_the_previous_store_intact(tmp_path):
    target = tmp_path / "train.zarr"
    _complete("store", target, "old")
    old = open_store(target)["X"].values
    staging = _kill_mid_write("store", target, "new")
    ds = open_store(target)  # the previous, complete store: untouched
    assert ds.attrs["run"] == "old"
    np.testing.assert_array_equal(ds["X"].values, old)
    with pytest.raises(InputError, match="not marked complete"):
        open_store(staging)


@pytest.mark.slow
def test_killed_posterior_write_is_never_loaded_and_rerun_completes(tmp_path):
    target = tmp_path / "post.zarr"
    staging = _kill_mid_write("posterior", target)
    assert not target.exists()
    with pytest.raises(InputError, match="no such posterior"):
        Posterior.load(target)
    with pytest.raises(InputError, match="not marked complete"):
        Posterior.load(staging)
    _complete("posterior", target)
    assert not staging.exists() and not _staging(target)
    post = Posterior.load(target)
    assert post.kind == "ensemble" and post.corrections_.shape == (4000, 5)
    np.testing.assert_array_equal(np.asarray(post.corrections_[:100]), np.random.default_rng(0).normal(size=(100, 5)))


def test_killed_prediction_write_is_never_opened_and_rerun_completes(tmp_path):
    X, y, w = misspecified(2000, 5, seed=81)
    post_path = fit(X, y, weight=w).save(tmp_path / "post.zarr")
    target = tmp_path / "pred.zarr"
    staging = _kill_mid_write("predictions", target, str(post_path))
    assert not target.exists()
    with pytest.raises(InputError, match="not marked complete"):
        open_predictions(target)
    with pytest.raises(InputError, match="not marked complete"):
        open_predictions(staging)
    _complete("predictions", target, str(post_path))
    assert not staging.exists() and not _staging(target)  # the killed write's leftovers: removed
    ds = open_predictions(target)
    assert ds.attrs["popsdask_complete"] is True and ds["prediction"].shape == (100, 4000)
    Xr = np.concatenate([np.random.default_rng(i).normal(size=(100, 5)) for i in range(40)])
    theta = ds["theta"].values
    np.testing.assert_allclose(ds["prediction"].values, theta @ Xr.T, rtol=1e-10, atol=1e-12)


def test_a_store_written_in_place_is_refused_only_when_its_popsdask_mark_says_unfinished(tmp_path):
    """Another writer (plain xarray.to_zarr, no popsdask mark) gives a usable store; a group whose
    own popsdask_complete is false was started by popsdask and never finished."""
    X, y, _ = misspecified(300, 3)
    path = write_store(tmp_path / "s.zarr", X, y)
    ds = open_store(path)
    ds.attrs.pop("popsdask_complete")
    ds.attrs.pop("source")
    ds.to_zarr(tmp_path / "copy.zarr", zarr_format=3, consolidated=False)
    np.testing.assert_array_equal(open_store(tmp_path / "copy.zarr")["X"].values, X)
    ds.attrs["popsdask_complete"] = False
    ds.to_zarr(tmp_path / "unfinished.zarr", zarr_format=3, consolidated=False)
    with pytest.raises(InputError, match="not marked complete"):
        open_store(tmp_path / "unfinished.zarr")
