"""popsdask.runtime.client.submit_windowed: results in order, a bounded number of tasks on the
scheduler at any time, the first failure raised."""

from __future__ import annotations

import time

import pytest


def _scheduler_tasks(i: int) -> tuple[int, int]:
    """(i, tasks the scheduler knows of while this one runs)."""
    from distributed import get_client

    time.sleep(0.01)
    n = get_client().run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
    return i, n


def _fail_at(i: int, bad: int) -> int:
    if i == bad:
        raise ValueError(f"task {i} failed")
    return i


@pytest.fixture(scope="module")
def threads_client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            yield client


def test_results_in_order_with_at_most_the_window_on_the_scheduler(threads_client):
    from popsdask.runtime.client import submit_windowed

    out = submit_windowed(threads_client, _scheduler_tasks, [(i,) for i in range(40)], window=3)
    assert [i for i, _ in out] == list(range(40))
    assert max(n for _, n in out) <= 3  # all at once would put 40 tasks on the scheduler
    deadline = time.monotonic() + 5  # a release reaches the client on its event loop
    while threads_client.futures and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not threads_client.futures  # every future released


def test_first_failure_is_raised(threads_client):
    from popsdask.runtime.client import submit_windowed

    with pytest.raises(ValueError, match="task 5 failed"):
        submit_windowed(threads_client, _fail_at, [(i, 5) for i in range(20)], window=4)
