"""Shared fixtures: seeded data and a small real LocalCluster."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
if not SHARED.exists():  # a clone beside the checkout, as in CI
    SHARED = Path(os.environ.get("POPSDASK_SHARED", ROOT.parent / "shared"))


@contextlib.contextmanager
def tmpfs_mount(where: Path, options: str) -> Iterator[Path]:
    """A real tmpfs mounted at ``where`` with mount ``options`` (root only: the test is skipped
    otherwise), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def misspecified(n: int = 4000, p: int = 10, seed: int = 0, noise: float = 1e-3):
    """Rows whose targets no linear model reproduces: y = sin(X a) + small noise."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    y = np.sin(X @ rng.normal(size=p) / np.sqrt(p)) * 2 + 0.3 + noise * rng.normal(size=n)
    w = rng.uniform(0.2, 3.0, size=n)
    return X, y, w


@contextlib.contextmanager
def no_cluster_started(what: str) -> Iterator[None]:
    """Fail if ``what`` starts a Dask cluster (local or jobqueue: both are ``SpecCluster``s) inside
    the block: bad input must be refused before any cluster starts."""
    from distributed.deploy.spec import SpecCluster

    started: list[str] = []

    def tripwire(cluster: SpecCluster, *args, **kwargs) -> None:
        started.append(type(cluster).__name__)
        raise AssertionError(f"{what} started a {started[0]} before refusing bad input")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SpecCluster, "__init__", tripwire)
        yield
    assert not started, f"{what} started a {started[0]} before refusing bad input"  # even if the code caught it


@pytest.fixture
def data():
    return misspecified()


@pytest.fixture(scope="module")
def local_client():
    from popsdask.runtime.cluster import connect

    with connect("local", n_workers=2, threads_per_worker=1, memory_limit="1GB", quiet=True) as client:
        yield client


LISTENING_BEFORE: list[tuple[int, str, int]] = []


@pytest.fixture(autouse=True)
def _listening_before():
    """What the test process listened on before the test (see test_cluster's loopback check)."""
    import psutil

    LISTENING_BEFORE[:] = [
        (os.getpid(), c.laddr.ip, c.laddr.port)
        for c in psutil.Process().net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    yield
