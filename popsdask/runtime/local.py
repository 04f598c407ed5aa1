"""popsdask's LocalCluster: worker processes on this machine, on the loopback interface unless
one is named, that exit without being killed and keep their nannies through worker deaths.

Apart from :mod:`popsdask.runtime.cluster` because it imports ``distributed``, which
:func:`popsdask.runtime.cluster.connect` loads only once it starts or joins a cluster: a command on
the threaded scheduler (small inputs) runs without that import.
"""

from __future__ import annotations

import logging
from typing import Any

import dask
import distributed

from .client import skip_exit_collection

__all__ = ["LOCAL_ALLOWED_FAILURES", "NannyLocalCluster", "QuickExit", "QuietTaskErrors", "local_cluster"]

LOOPBACK_HOST = "127.0.0.1"
DASHBOARD_PORT = 8787


def dashboard_address(host: str) -> str:
    """The dashboard's address on ``host``."""
    return f"{host}:{DASHBOARD_PORT}"


def interface_host(interface: str) -> str:
    """IPv4 address of a named network interface, with a clear error if it has none."""
    from distributed.utils import get_ip_interface

    try:
        return get_ip_interface(interface)
    except ValueError as exc:
        raise ValueError(f"network interface {interface!r}: {exc}") from exc


#: SpecCluster's lost-worker timer while a popsdask LocalCluster handles a worker's removal
NANNY_LOST_WORKER_TIMEOUT = "3650d"

#: workers a task may see die under it before it fails with KilledWorker, on a LocalCluster (at
#: least; a higher ``distributed.scheduler.allowed-failures`` is kept). The scheduler counts every
#: task *assigned* to a dying worker, queued or running (dask/distributed#5234), and passes 3-4
#: assign a third of a pass to each worker, so dask's 3 failed 2 of 7 chaos-soak fits while the
#: nannies restarted every killed worker (benchmarks/chaos_soak.py; 20: 6 of 6 finished)
LOCAL_ALLOWED_FAILURES = 20


class QuickExit(distributed.WorkerPlugin):
    """Worker plugin: the worker process skips the exit-time collection
    (:func:`popsdask.runtime.client.skip_exit_collection`), so that it exits within the nanny's
    close timeout instead of being killed."""

    name = "popsdask-quick-exit"

    def setup(self, worker: distributed.Worker) -> None:
        skip_exit_collection()


class _DropComputeFailed(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Compute Failed")


class QuietTaskErrors(distributed.WorkerPlugin):
    """Worker plugin: the worker does not log the "Compute Failed ... Traceback" of a task that
    raised. The task's exception reaches the client, which reports it (bad input as one line);
    the worker's copy printed tens of lines of traceback on the user's terminal before it."""

    name = "popsdask-quiet-task-errors"

    def setup(self, worker: distributed.Worker) -> None:
        log = logging.getLogger("distributed.worker")
        if not any(isinstance(f, _DropComputeFailed) for f in log.filters):
            log.addFilter(_DropComputeFailed())


class NannyLocalCluster(distributed.LocalCluster):
    """A :class:`distributed.LocalCluster` that leaves restarting killed workers to their nannies.

    On every worker removal SpecCluster starts a timer (``distributed.deploy.lost-worker-timeout``,
    15 s) that closes the worker's nanny for good if, when it fires, no worker of that *name* is
    registered. The timer is not cancelled when the nanny brings the worker back, so a worker
    killed twice within 15 s whose second restart is still running when the first timer fires
    loses its nanny: the nanny logs "Restarting worker", the new process registers and is told
    to close ("Closing Nanny ... Reason: nanny-close" exactly 15 s after the first removal),
    and with two workers the cluster ends with none and a fit waits for ever. distributed
    accepted that race when it added the check (dask/distributed#2990, dask/distributed#3088: "if the new worker
    has not spun up yet then this will delete the old worker"); it is still in 2026.8.0
    (``SpecCluster._update_worker_status``). Here the nannies live in this process and restart
    their own workers, so the timer is pushed out of reach; batch clusters keep it (a lost job
    must be closed to be replaced).
    """

    def _update_worker_status(self, op: str, msg: Any) -> None:
        # the timeout is read inside this call, on the event loop: set it for this call only
        with dask.config.set({"distributed.deploy.lost-worker-timeout": NANNY_LOST_WORKER_TIMEOUT}):
            super()._update_worker_status(op, msg)


def local_cluster(
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | float | None = None,
    interface: str | None = None,
    **cluster_kwargs: Any,
) -> distributed.LocalCluster:
    """Start a :class:`distributed.LocalCluster` of worker processes on loopback or ``interface``.

    Parameters
    ----------
    n_workers, threads_per_worker : int, optional
        Worker processes and threads in each; dask's defaults (about one worker per core)
        when omitted.
    memory_limit : str or float, optional
        Memory per worker (``"4GB"``, bytes, or a fraction of system memory); dask's default
        (system memory / workers) when omitted.
    interface : str, optional
        Network interface to listen on (e.g. ``"eth0"``); the loopback ``127.0.0.1`` when omitted.
    **cluster_kwargs
        Passed to :class:`distributed.LocalCluster` (e.g. ``security``, ``protocol``,
        ``dashboard_address``).

    Returns
    -------
    NannyLocalCluster
        A :class:`distributed.LocalCluster` whose killed workers are always restarted by their
        nannies (see :class:`NannyLocalCluster`), and whose tasks survive up to
        :data:`LOCAL_ALLOWED_FAILURES` worker deaths (``scheduler_kwargs`` overrides it).
    """
    kwargs: dict[str, Any] = {"processes": True}
    if interface is None:
        kwargs["host"] = LOOPBACK_HOST
        kwargs["dashboard_address"] = dashboard_address(LOOPBACK_HOST)
    else:
        kwargs["interface"] = interface
        kwargs["dashboard_address"] = dashboard_address(interface_host(interface))
    for key, value in (
        ("n_workers", n_workers),
        ("threads_per_worker", threads_per_worker),
        ("memory_limit", memory_limit),
    ):
        if value is not None:
            kwargs[key] = value
    scheduler = dict(cluster_kwargs.pop("scheduler_kwargs", None) or {})
    configured = int(dask.config.get("distributed.scheduler.allowed-failures"))
    scheduler.setdefault("allowed_failures", max(configured, LOCAL_ALLOWED_FAILURES))
    kwargs["scheduler_kwargs"] = scheduler
    kwargs["plugins"] = (QuickExit(), QuietTaskErrors())  # kept by each nanny for the workers it restarts
    kwargs.update(cluster_kwargs)
    return NannyLocalCluster(**kwargs)
