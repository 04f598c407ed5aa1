"""Cluster options checked before anything starts, so that a bad one is one line, not a hang.

Dask accepts options it cannot honour and waits: a scheduler file that does not exist is polled
for ever, a cluster of zero workers never runs a task, a worker whose memory limit is below what
it holds when idle is restarted without end, and an unreachable scheduler is retried for the
whole connect timeout before a traceback. :func:`check_cluster_options` refuses each of these
with an :class:`~popsdask.core.validation.InputError` naming the option; :func:`connect
<popsdask.runtime.cluster.connect>` calls it first, and the command line calls it before it
reads any input.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from ..core.validation import InputError

__all__ = ["CONNECT_TIMEOUT", "MIN_WORKER_MEMORY", "check_cluster_args", "check_cluster_options", "parse_memory_limit"]

#: seconds to reach a running scheduler (its file's address or ``--scheduler``) before giving up
CONNECT_TIMEOUT = 10.0
#: the smallest memory limit of a worker: an idle popsdask worker holds about 0.3 GiB and dask
#: pauses a worker at 80 % of its limit and restarts it at 95 %
MIN_WORKER_MEMORY = 512 * 2**20
_BATCH = ("slurm", "pbs", "lsf")
#: names of clusters popsdask creates (anything else is a scheduler address)
_CREATED = (None, "local", "threads", *_BATCH)


def parse_memory_limit(value: str | float | None) -> int | None:
    """Bytes of a worker memory limit (``"4GB"``, ``"auto"``, bytes, or a fraction of this machine's
    memory); ``None`` for none or ``"auto"``.

    Raises
    ------
    InputError
        For text dask cannot parse, a non-positive value, or less than :data:`MIN_WORKER_MEMORY`.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    if isinstance(value, str):
        from dask.utils import parse_bytes

        try:
            nbytes = float(parse_bytes(value.strip()))
        except (ValueError, TypeError):
            raise InputError(f"--memory-limit {value!r}: not a size (e.g. 4GB, 512MiB)") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        import psutil

        nbytes = value * psutil.virtual_memory().total if 0 < value <= 1 else float(value)
    else:
        raise InputError(f"--memory-limit {value!r}: not a size (e.g. 4GB, 512MiB)")
    if not nbytes >= MIN_WORKER_MEMORY:
        raise InputError(
            f"--memory-limit {value!r}: a worker needs at least {MIN_WORKER_MEMORY // 2**20} MiB "
            "(an idle worker holds about 300 MiB; dask pauses it at 80 % of its limit)"
        )
    return int(nbytes)


def _check_interface(interface: str) -> None:
    import psutil

    addresses = psutil.net_if_addrs()
    if interface not in addresses:
        raise InputError(f"--interface {interface!r}: no such network interface (this machine has {sorted(addresses)})")
    if not any(a.family == socket.AF_INET for a in addresses[interface]):
        raise InputError(f"--interface {interface!r}: the interface has no IPv4 address")


def _reachable(address: str, where: str, timeout: float) -> None:
    """Open (and close) a TCP connection to a scheduler ``address`` within ``timeout`` seconds."""
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme not in ("tcp", "tls"):
        return  # inproc://, ucx://, ...: dask's own connect decides
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or port is None:
        return  # not an address: connect names the unknown cluster
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise InputError(f"{where}: no scheduler reachable at {address} within {timeout:g} s ({reason})") from None


def _scheduler_file_address(path: str) -> str:
    where = f"--scheduler-file {path}"
    if not os.path.isfile(path):
        raise InputError(f"{where}: no such file (dask scheduler --scheduler-file writes it)")
    try:
        with open(path, encoding="utf-8") as fh:
            address = json.load(fh)["address"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{where}: not a scheduler file ({type(err).__name__}: {err})") from None
    if not isinstance(address, str):
        raise InputError(f"{where}: its 'address' {address!r} is not a string")
    return address


def check_cluster_options(
    cluster: str | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | float | None = None,
    adapt: Sequence[int] | None = None,
    interface: str | None = None,
    config: str | os.PathLike[str] | None = None,
    scheduler_file: str | os.PathLike[str] | None = None,
    timeout: float = CONNECT_TIMEOUT,
) -> None:
    """Refuse cluster options that would hang or fail after the cluster starts (one line each).

    Parameters are those of :func:`popsdask.runtime.cluster.connect`; ``timeout`` bounds the
    check that a running scheduler (an address, or the one a scheduler file names) accepts a
    connection.

    Raises
    ------
    InputError
        Naming the option: zero workers without ``adapt``, a memory limit that is not a size or is
        below :data:`MIN_WORKER_MEMORY`, an interface this machine lacks, a cluster config for a
        local cluster, a scheduler file that is missing or unreadable, an unreachable scheduler.
    """
    name = cluster.strip().lower() if isinstance(cluster, str) else None
    if scheduler_file is not None:
        _reachable(_scheduler_file_address(os.fspath(scheduler_file)), f"--scheduler-file {scheduler_file}", timeout)
        return
    if name not in _CREATED:
        _reachable(str(cluster).strip(), f"--scheduler {str(cluster).strip()}", timeout)
        return
    if n_workers is not None and n_workers < 1 and adapt is None:
        raise InputError(f"--n-workers {n_workers}: a cluster needs at least one worker (or --adapt MIN MAX)")
    if threads_per_worker is not None and threads_per_worker < 1:
        raise InputError(f"--threads-per-worker {threads_per_worker}: need at least 1")
    parse_memory_limit(memory_limit)
    if interface is not None and name not in _BATCH:  # batch workers' interfaces are on their nodes
        _check_interface(interface)
    if config is not None and name not in _BATCH:
        raise InputError(
            f"--cluster-config {config}: applies to slurm, pbs and lsf clusters only (this is a local cluster)"
        )


def check_cluster_args(args: Any) -> None:
    """:func:`check_cluster_options` of the options of
    :func:`popsdask.runtime.options.add_cluster_arguments` (an :class:`argparse.Namespace`)."""
    check_cluster_options(
        getattr(args, "scheduler", None) or getattr(args, "cluster", None),
        n_workers=getattr(args, "n_workers", None),
        threads_per_worker=getattr(args, "threads_per_worker", None),
        memory_limit=getattr(args, "memory_limit", None),
        adapt=getattr(args, "adapt", None),
        interface=getattr(args, "interface", None),
        config=getattr(args, "cluster_config", None),
        scheduler_file=getattr(args, "scheduler_file", None),
    )
