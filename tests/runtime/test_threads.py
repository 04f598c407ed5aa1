"""popsdask.runtime.cluster: the threaded scheduler for small inputs, and LocalClusters that close cleanly."""

from __future__ import annotations

import logging
import subprocess
import sys

import dask
import dask.array as da
import distributed
import numpy as np
import psutil
import pytest
from dask.threaded import get as threaded_get

from popsdask import write_store
from popsdask.runtime.client import current_client
from popsdask.runtime.cluster import SMALL_INPUT_BYTES, connect
from popsdask.runtime.local import QuickExit

SIZED = {"n_workers": 2, "threads_per_worker": 1, "memory_limit": "1GB", "quiet": True}


def test_threads_run_in_this_process_without_a_client(capsys):
    before = len(psutil.Process().children(recursive=True))
    with connect("threads", threads_per_worker=3) as client:
        assert client is None and current_client() is None
        assert (dask.config.get("scheduler"), dask.config.get("num_workers")) == (threaded_get, 3)
        assert float(da.ones((100, 4), chunks=(10, 4)).sum().compute()) == 400.0
        assert len(psutil.Process().children(recursive=True)) == before  # no worker processes
    assert dask.config.get("scheduler", None) is not threaded_get  # the setting ends with the block
    assert "Dask threaded scheduler, 3 threads in this process" in capsys.readouterr().err


def test_small_inputs_choose_threads_unless_a_cluster_is_asked_for():
    with connect(None, nbytes=SMALL_INPUT_BYTES, quiet=True) as client:
        assert client is None
    with connect("local", nbytes=1, n_workers=1, threads_per_worker=1, quiet=True) as client:
        assert isinstance(client, distributed.Client)


@pytest.mark.parametrize(
    "kwargs",
    [{"n_workers": 2}, {"memory_limit": "1GB"}, {"adapt": (0, 2)}, {"interface": "lo"}, {"scheduler_file": "s.json"}],
)
def test_threads_refuse_cluster_options(kwargs):
    with pytest.raises(ValueError, match="runs in this process"):
        with connect("THREADS", quiet=True, **kwargs):
            pass


def _read_store(path: str) -> float:
    import xarray as xr

    return float(xr.open_zarr(path)["X"].sum())


def test_local_cluster_workers_exit_without_being_killed(tmp_path):
    """A worker that loaded xarray and Zarr exits within its nanny's close timeout, not killed.

    The interpreter's exit-time collection in the worker process took longer than the 4 s the
    nanny waits on a busy machine; every LocalCluster worker now skips it.
    """
    rng = np.random.default_rng(0)
    write_store(tmp_path / "s.zarr", rng.normal(size=(200, 3)), rng.normal(size=200))
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    nanny = logging.getLogger("distributed.nanny")
    nanny.addHandler(handler)
    try:
        with connect(None, nbytes=SMALL_INPUT_BYTES + 1, **SIZED) as client:
            assert isinstance(client, distributed.Client)  # a large input keeps the cluster
            workers = list(client.scheduler_info()["workers"])
            has_plugin = client.run(lambda dask_worker: QuickExit.name in dask_worker.plugins)
            assert all(has_plugin.values()) and len(has_plugin) == 2
            sums = client.gather([client.submit(_read_store, str(tmp_path / "s.zarr"), workers=[w]) for w in workers])
            assert len(set(sums)) == 1
    finally:
        nanny.removeHandler(handler)
    killed = [r.getMessage() for r in records if "still alive" in r.getMessage()]
    assert not killed


def test_small_commands_import_neither_distributed_nor_scikit_learn(tmp_path):
    """fit, predict and report of a small store run without the imports that cost them most:
    distributed (no client to look for), scikit-learn and scipy.stats (not used by the
    commands), pyplot (figures are drawn without it)."""
    rng = np.random.default_rng(0)
    # chunks of 1000 rows: predict rechunks them, where Dask also looks for a client
    write_store(tmp_path / "s.zarr", rng.normal(size=(4000, 5)), rng.normal(size=4000), chunk_rows=1000)
    s, post, pred = (str(tmp_path / n) for n in ("s.zarr", "post.zarr", "pred.zarr"))
    script = (
        "import sys\n"
        "from popsdask.cli import main\n"
        f"assert main(['fit', {s!r}, '-o', {post!r}, '--quiet']) == 0\n"
        f"assert main(['predict', {post!r}, {s!r}, '-o', {pred!r}, '--quiet']) == 0\n"
        f"assert main(['report', {pred!r}, '-o', {str(tmp_path / 'report')!r}]) == 0\n"
        "print(sorted(m for m in ('distributed', 'sklearn', 'scipy.stats', 'matplotlib.pyplot') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "[]"
