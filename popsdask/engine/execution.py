"""The Dask wiring of the passes: which scheduler runs them (the current client, synchronously
inside a worker task, or Dask's threaded scheduler with one BLAS thread per task), computing and
persisting on it, and tree reductions of per-chunk partial results."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import dask
from dask.delayed import Delayed, delayed

from ..runtime.client import current_client

SPLIT_EVERY = 8
#: features up to which the client's P×P algebra runs on one BLAS thread (:func:`client_blas`)
ONE_BLAS_THREAD_FEATURES = 1024


def active_client():
    """The client the passes run on: :func:`popsdask.runtime.client.current_client`, or None
    inside a task on a distributed worker (see :func:`in_worker_task`)."""
    return None if in_worker_task() else current_client()


def in_worker_task() -> bool:
    """Whether this runs inside a task on a distributed worker, e.g. a fit in a dask-ml search.

    There the passes run synchronously in the task: its rows are already in this worker's
    memory, the search's parallelism is across its tasks, and submitting the passes to the
    cluster from a task would block the worker thread that the passes' tasks need (with one
    thread per worker, a deadlock).
    """
    if "distributed" not in sys.modules:  # a worker has imported it; do not import it to find out
        return False
    try:
        from distributed import get_worker

        get_worker()
        return True
    except (ImportError, ValueError):
        return False


def _local_scheduler(objs: Sequence[Any]) -> contextlib.AbstractContextManager:
    """How the passes run without a client: synchronously inside a worker task, else on Dask's
    threaded scheduler with one BLAS thread per task (:func:`_local_blas_limit`)."""
    if in_worker_task():
        return dask.config.set(scheduler="sync")
    return _local_blas_limit(objs)


def _local_threads(objs: Sequence[Any] = ()) -> int:
    """Threads of Dask's local threaded scheduler when it would run ``objs``, else 0."""
    from dask.base import get_scheduler
    from dask.threaded import get as threaded_get

    collections = [o for o in objs if dask.is_dask_collection(o)] or [delayed(None)]
    if get_scheduler(collections=collections) is not threaded_get:
        return 0
    return dask.config.get("num_workers", None) or os.cpu_count() or 1


def _local_blas_limit(objs: Sequence[Any]) -> contextlib.AbstractContextManager:
    """One BLAS thread per task when Dask's local thread pool already runs tasks in parallel.

    With the threaded scheduler on P cores, P tasks each calling a P-threaded BLAS
    oversubscribe the cores; on a busy 2-core machine that made the Gram pass several times
    slower than with one BLAS thread per task. Distributed workers already set
    ``OPENBLAS_NUM_THREADS=1`` etc., so this only applies without a client.
    """
    if _local_threads(objs) > 1:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=1, user_api="blas")
    return contextlib.nullcontext()


def client_blas(n_features: int) -> contextlib.AbstractContextManager:
    """One BLAS thread for the P×P algebra of this process (the evidence's eigendecomposition,
    A⁻¹, the principal basis) when P ≤ :data:`ONE_BLAS_THREAD_FEATURES`.

    At such sizes OpenBLAS's thread hand-off costs more than a second thread saves: a 496 × 496
    ``eigh`` took 0.04–0.1 s on one thread against 0.1–0.7 s on two, the most when other
    processes share the cores. The block tasks already run with one BLAS thread each
    (:func:`_local_blas_limit`, or the workers' own setting), so only the client's work changes.
    """
    if n_features > ONE_BLAS_THREAD_FEATURES:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def tasks_share_a_process() -> bool:
    """Whether block tasks may run in several threads of one Python process (the GIL)."""
    if in_worker_task():  # other tasks of this worker (e.g. other fits of a search) run beside
        from distributed import get_worker

        return get_worker().state.nthreads > 1
    client = active_client()
    if client is not None:
        return any(n > 1 for n in client.nthreads().values())
    return _local_threads() > 1


def compute(*objs: Any, label: str = "", progress: bool = False) -> tuple:
    """Compute Dask objects on the current client (with a text progress bar if asked)."""
    client = active_client()
    if client is None:
        with _local_scheduler(objs):
            if progress:
                from dask.diagnostics import ProgressBar

                print(f"[popsdask] {label}", flush=True)
                with ProgressBar(minimum=0.5):
                    return dask.compute(*objs)
            return dask.compute(*objs)
    futures = client.compute(list(objs))
    if progress:
        from distributed import progress as dprogress

        print(f"[popsdask] {label}", flush=True)
        dprogress(futures, notebook=False)
        print(flush=True)
    return tuple(client.gather(futures))


def persist(*objs: Any) -> tuple:
    client = active_client()
    if client is None:
        with _local_scheduler(objs):
            return dask.persist(*objs)
    return tuple(client.persist(list(objs)))


def tree_reduce(parts: Sequence[Delayed], combine: Callable, label: str) -> Delayed:
    """Combine partial results pairwise-ish in a tree of fan-in ``SPLIT_EVERY``."""
    level = list(parts)
    depth = 0
    while len(level) > 1:
        groups = [level[i : i + SPLIT_EVERY] for i in range(0, len(level), SPLIT_EVERY)]
        level = [
            delayed(_reduce_group, pure=True)(
                combine, *group, dask_key_name=f"{label}-combine-{depth}-{j}-{dask.base.tokenize(*group)}"
            )
            for j, group in enumerate(groups)
        ]
        depth += 1
    return level[0]


def _reduce_group(combine: Callable, *parts: Any) -> Any:
    return functools.reduce(combine, parts)
