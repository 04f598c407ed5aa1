"""Resumable fits: SIGKILL the client process in pass 3, resume, and get the uninterrupted fit.

The fit runs in a real subprocess on Dask's threaded scheduler (the client is the process), with
every pass checkpointed. A dask callback in that process makes each pass-3 task take 50 ms, so
the test can kill it once pass 2's checkpoint is committed and pass 3 is running. The resumed fit
in this process counts the tasks it runs by function: none of passes 1–2, every chunk's of 3–4.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from dask.callbacks import Callback
from dask.utils import key_split

from popsdask import InputError, Posterior, fit, write_store
from popsdask.cli import main
from popsdask.io.store import is_complete
from tests.conftest import misspecified

ROOT = Path(__file__).resolve().parents[2]
N_ROWS, N_FEATURES, CHUNK_ROWS = 6000, 8, 200  # 30 chunks
N_CHUNKS = N_ROWS // CHUNK_ROWS

KILLED_FIT = textwrap.dedent(
    """
    import sys, time
    import dask
    from dask.callbacks import Callback
    from popsdask import fit

    class SlowPass3(Callback):  # 50 ms per pass-3 task: a window to kill the process in
        def _pretask(self, key, dsk, state):
            name = str(key[0] if isinstance(key, tuple) else key)
            if name.startswith(("block_correction_moment", "block_corrections")):
                time.sleep(0.05)

    dask.config.set(scheduler="threads", num_workers=1)
    with SlowPass3():
        fit(sys.argv[1], checkpoint=sys.argv[2], posterior=sys.argv[3])
    """
)


class TaskCounter(Callback):
    """Tasks run on the local scheduler, by the name in their key (dask's ``key_split``)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def _pretask(self, key, dsk, state) -> None:
        self.counts[key_split(key)] += 1

    def __getitem__(self, function: str) -> int:
        """Tasks of ``function`` (key_split drops its leading underscore; blocks fused into
        other names, e.g. ``block_corrections-from-value-concatenate``, count too)."""
        prefix = function.lstrip("_")
        return sum(n for name, n in self.counts.items() if name.startswith(prefix))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    X, y, w = misspecified(N_ROWS, N_FEATURES, seed=23)
    return write_store(tmp_path_factory.mktemp("resume") / "train.zarr", X, y, weight=w, chunk_rows=CHUNK_ROWS)


def _same(a, b) -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * float(np.max(np.abs(b), initial=0.0)))


def _kill_in_pass_3(store: Path, checkpoint: Path, posterior: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_FIT, str(store), str(checkpoint), posterior],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if is_complete(checkpoint / "leverage"):  # pass 2 committed: pass 3 runs (30 × 50 ms)
                os.kill(proc.pid, signal.SIGKILL)
                break
            if proc.poll() is not None:
                pytest.fail(f"the fit ended before pass 3:\n{proc.stdout.read().decode()}")
            time.sleep(0.01)
        else:
            pytest.fail("the fit never finished pass 2")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (checkpoint / "moment").exists(), "killed too late: pass 3 had finished"


@pytest.mark.parametrize("posterior", ["hypercube", "ensemble"])
def test_a_fit_killed_in_pass_3_resumes_without_recomputing_passes_1_and_2(store, tmp_path, posterior):
    checkpoint = tmp_path / "post.zarr.checkpoint"
    _kill_in_pass_3(store, checkpoint, posterior)
    assert sorted(p.name for p in checkpoint.iterdir() if not p.name.startswith(".")) == ["evidence", "leverage"]

    with TaskCounter() as counter:
        post = fit(store, checkpoint=checkpoint, resume=True, posterior=posterior)
    counts = counter  # counts[prefix]: tasks of that block function
    for recomputed in ("_stats_and_checksum", "block_residual_stats", "block_leverage", "_column", "_count_selected"):
        assert counts[recomputed] == 0, (recomputed, counts.counts)
    assert counts["_load_block"] == N_CHUNKS  # pass 2's blocks, read back once
    assert counts["block_correction_moment"] == N_CHUNKS
    if posterior == "ensemble":
        assert counts["block_corrections"] == N_CHUNKS, counts.counts
    else:
        assert counts["block_projection_range"] == N_CHUNKS

    reference = fit(store, posterior=posterior, corrections_path=tmp_path / "ref-corrections.zarr")
    for name in ("coef_", "sigma_", "misspecification_sigma_", "basis_", "lower_", "upper_"):
        if getattr(reference, name) is not None:
            _same(getattr(post, name), getattr(reference, name))
    if posterior == "ensemble":
        _same(post.corrections_, reference.corrections_)
    assert (post.alpha_, post.lambda_, post.n_selected_, post.leverage_threshold_) == (
        reference.alpha_,
        reference.lambda_,
        reference.n_selected_,
        reference.leverage_threshold_,
    )
    # a checkpoint holding every pass gives the posterior without computing anything but the fingerprint
    with TaskCounter() as counter:
        again = fit(store, checkpoint=checkpoint, resume=True, posterior=posterior)
    assert set(counter.counts) <= {"block_checksum"}, counter.counts
    _same(again.misspecification_sigma_, reference.misspecification_sigma_)


def test_resume_is_refused_after_an_in_place_edit_of_any_chunk(store, tmp_path):
    """Chunk 5 of 30 multiplied by 3 with zarr between the kill and the resume: the old fingerprint
    checked the first, middle and last chunks only, and the resumed fit mixed both stores (exit 0,
    coef and sigma off a fresh fit). Every chunk's checksum from pass 1 is compared now."""
    import shutil

    import zarr

    copy = tmp_path / "train.zarr"
    shutil.copytree(store, copy)
    checkpoint = tmp_path / "post.zarr.checkpoint"
    _kill_in_pass_3(copy, checkpoint, "hypercube")
    X = zarr.open_array(str(copy / "X"), mode="r+")
    rows = slice(5 * CHUNK_ROWS, 6 * CHUNK_ROWS)
    X[rows] = X[rows] * 3.0
    with pytest.raises(InputError, match=rf"cannot resume: chunk 5 \(rows 1000-1199\) of {copy} changed") as err:
        fit(copy, checkpoint=checkpoint, resume=True)
    assert "\n" not in str(err.value)


def test_resume_is_refused_in_one_line_when_the_settings_or_the_store_changed(store, tmp_path):
    checkpoint = tmp_path / "ckpt"
    fit(store, checkpoint=checkpoint)
    with pytest.raises(InputError, match=r"cannot resume: setting leverage_percentile was 50\.0 .* is 30\.0 now"):
        fit(store, checkpoint=checkpoint, resume=True, leverage_percentile=30)
    fit(store, checkpoint=checkpoint, resume=True, leverage_percentile=50)  # 50 is 50.0

    # the same shape and chunks, one target changed in the first chunk
    X, y, w = misspecified(N_ROWS, N_FEATURES, seed=23)
    y[3] += 1.0
    edited = write_store(tmp_path / "edited.zarr", X, y, weight=w, chunk_rows=CHUNK_ROWS)
    renamed = checkpoint.with_name("ckpt-edited")
    checkpoint.rename(renamed)
    with pytest.raises(InputError, match="cannot resume: source") as err:
        fit(edited, checkpoint=renamed, resume=True)
    assert "\n" not in str(err.value)
    # moved in place of the original store, only the content tells them apart
    os.rename(store, tmp_path / "original.zarr")
    try:
        os.rename(edited, store)
        with pytest.raises(InputError, match=r"cannot resume: chunk 0 \(rows 0-\d+\) of .* changed"):
            fit(store, checkpoint=renamed, resume=True)
    finally:
        os.rename(store, edited)
        os.rename(tmp_path / "original.zarr", store)
    # without resume the checkpoint is replaced
    fit(edited, checkpoint=renamed)
    assert is_complete(renamed / "bounds")


@pytest.mark.slow
def test_cli_fit_resumes_and_removes_its_checkpoint(store, tmp_path, capsys):
    out = tmp_path / "post.zarr"
    checkpoint = tmp_path / "post.zarr.checkpoint"
    _kill_in_pass_3(store, checkpoint, "hypercube")
    common = ["fit", str(store), "-o", str(out), "--n-workers", "1", "--threads-per-worker", "1", "--quiet"]
    assert main([*common, "--resume", "--leverage-percentile", "30"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"popsdask fit: error: {checkpoint}: cannot resume: setting leverage_percentile")
    assert "\n" not in err and not out.exists()

    assert main([*common, "--resume"]) == 0
    assert not checkpoint.exists() and not (tmp_path / ".post.zarr.lock").exists()
    reference = fit(store)
    post = Posterior.load(out)
    for name in ("coef_", "misspecification_sigma_", "lower_", "upper_"):
        _same(getattr(post, name), getattr(reference, name))
