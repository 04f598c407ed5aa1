"""Runtime helpers every layer shares: the current Dask client and the progress printer.

:func:`current_client` is the one way popsdask asks "is there a distributed client?" (the
passes, the property runner and the foundation-model store builder all call it), and
:func:`progress_bar` / :class:`ProgressCounter` are the one way it prints progress: a
``[popsdask] <label>`` header over Dask's bar for futures, or a counter line rewritten in place
for tasks the caller collects one by one.
"""

from __future__ import annotations

import atexit
import functools
import gc
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["ProgressCounter", "current_client", "progress_bar", "skip_exit_collection", "submit_windowed"]


def current_client() -> Any | None:
    """The process's current ``distributed.Client``, or None (no client, or no ``distributed``)."""
    if "distributed" not in sys.modules:  # no client without it; and its import costs a small command
        return None
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


@functools.cache
def skip_exit_collection() -> None:
    """Leave this process's objects to the operating system at exit (registered once per process).

    Interpreter shutdown runs a full garbage collection while it tears the modules down; with
    Dask, xarray, Zarr and LAMMPS loaded it took seconds on a busy 2-core machine, in each worker
    process and in the command's own. A nanny waits 4 s (0.8 x its 5 s close timeout) for its
    worker process to exit and then kills it ("Worker process still alive after 4.0 seconds,
    killing"). Freezing the heap in the last exit handler, after the worker or the command has
    finished and every other exit handler has run, skips that collection; nothing is left to
    write by then.
    """
    atexit.register(gc.freeze)  # exit handlers run last-registered first: this one runs last


def progress_bar(futures: Sequence[Any], label: str) -> None:
    """``[popsdask] <label>`` and Dask's text progress bar until ``futures`` finish."""
    from distributed import progress

    print(f"[popsdask] {label}", flush=True)
    progress(list(futures), notebook=False)
    print(flush=True)


class ProgressCounter:
    """A ``[popsdask] <label> i/n (elapsed s, detail)`` line rewritten in place.

    ``enabled=False`` prints nothing, so callers need no ``if progress:`` around each update.
    """

    def __init__(self, label: str, total: int, *, enabled: bool = True) -> None:
        self.label, self.total, self.enabled = label, int(total), enabled
        self.t0 = time.perf_counter()

    def update(self, done: int, detail: str = "") -> None:
        if not self.enabled:
            return
        el = time.perf_counter() - self.t0
        extra = f", {detail}" if detail else ""
        print(f"\r[popsdask] {self.label} {done}/{self.total} ({el:.0f} s{extra})" + " " * 8, end="", flush=True)

    def close(self) -> None:
        if self.enabled:
            print(flush=True)


def submit_windowed(
    client: Any,
    fn: Callable[..., Any],
    tasks: Sequence[tuple],
    *,
    label: str = "tasks",
    window: int | None = None,
    progress: bool = False,
) -> list[Any]:
    """``[fn(*t) for t in tasks]`` on ``client``, at most ``window`` tasks submitted at a time.

    Submitting every task at once would keep each task's arguments on the scheduler until it
    runs, and on the worker while its result is held: memory that grows with the input (a
    descriptor store of 250,000 configurations held 2 GB in the scheduler and 0.8 GB in each
    worker that way). Here a task's future is released as soon as its result is read, so memory
    stays that of ``window`` tasks. ``window`` defaults to twice the cluster's threads. The first
    failure cancels the tasks in flight and is raised.

    Returns
    -------
    list of the results, in the order of ``tasks``.
    """
    from distributed import as_completed

    if window is None:
        window = 2 * max(1, sum(client.nthreads().values()))
    counter = ProgressCounter(label, len(tasks), enabled=progress)
    results: list[Any] = [None] * len(tasks)
    pending = iter(enumerate(tasks))
    index: dict[Any, int] = {}

    def submit_next() -> Any | None:
        for i, args in pending:
            fut = client.submit(fn, *args, pure=False)
            index[fut.key] = i
            return fut
        return None

    running = as_completed([f for f in (submit_next() for _ in range(window)) if f is not None])
    done = 0
    for fut in running:
        try:
            results[index.pop(fut.key)] = fut.result()
        except BaseException:
            for other in list(running.futures):  # in flight: cancel them rather than wait
                other.cancel()
            raise
        fut.release()
        done += 1
        counter.update(done)
        nxt = submit_next()
        if nxt is not None:
            running.add(nxt)
    counter.close()
    return results
