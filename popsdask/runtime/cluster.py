"""Dask clients for popsdask: the one place that creates them.

``connect(None)`` or ``connect("local")`` starts a :class:`distributed.LocalCluster` on this
machine; ``connect("threads")`` runs on Dask's threaded scheduler in this process (no cluster to
start, for small inputs; ``connect(None, nbytes=...)`` chooses it below :data:`SMALL_INPUT_BYTES`);
``connect("slurm" | "pbs" | "lsf")`` starts a :mod:`dask_jobqueue` cluster whose workers
are batch jobs; any other string is the address of a running scheduler. Every cluster created
here listens on the loopback interface unless the caller names an interface: nothing binds to
all interfaces by default. ``dask_jobqueue`` is an optional dependency (``popsdask[hpc]``) and is
imported only when a batch-system cluster is requested.

Examples
--------
>>> from popsdask.runtime.cluster import connect
>>> with connect(n_workers=2, threads_per_worker=1, quiet=True) as client:  # doctest: +SKIP
...     posterior = popsdask.fit("train.zarr")
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import sys
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask

from ..core.validation import InputError
from .client import current_client
from .options import SMALL_INPUT_BYTES
from .preflight import check_cluster_options

if TYPE_CHECKING:
    import distributed

__all__ = [
    "JOBQUEUE_CLUSTERS",
    "connect",
    "connect_from_args",
    "current_client",
    "jobqueue_cluster",
    "load_cluster_config",
    "SMALL_INPUT_BYTES",
    "THREADS",
]

#: ``--cluster`` names served by dask-jobqueue, mapped to their cluster class.
JOBQUEUE_CLUSTERS = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "lsf": "LSFCluster"}
#: ``--cluster`` name of Dask's threaded scheduler in this process (no worker processes)
THREADS = "threads"
LOOPBACK_INTERFACE = "lo"
_ADDRESS = re.compile(r"^([a-z0-9+]+://)?[^\s:/]+:\d+$|^[a-z0-9+]+://\S+$", re.IGNORECASE)
_HPC_HINT = "pip install 'popsdask[hpc]'  (or: pip install dask-jobqueue)"


def _import_jobqueue() -> Any:
    """Import :mod:`dask_jobqueue` or fail with the install command."""
    try:
        return importlib.import_module("dask_jobqueue")
    except ImportError as exc:
        raise ImportError(
            f"batch-system clusters (slurm, pbs, lsf) need dask-jobqueue, which is not installed: {_HPC_HINT}"
        ) from exc


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into dotted dask-config keys (leaves and empty mappings)."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def load_cluster_config(path: str | Path, cluster: str | None = None) -> dict[str, Any]:
    """Read a dask-config YAML file (such as ``deploy/slurm.yaml``) as dotted keys.

    Parameters
    ----------
    path : str or Path
        YAML file in dask's configuration format (top-level keys such as ``jobqueue``).
    cluster : str, optional
        Batch system the file must configure (``"slurm"``, ``"pbs"`` or ``"lsf"``); the file
        must then hold a ``jobqueue.<cluster>`` section.

    Returns
    -------
    dict
        Dotted keys (``"jobqueue.slurm.cores"``) to values, ready for ``dask.config.set``;
        setting leaves one by one keeps dask-jobqueue's defaults for fields the file omits.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not a YAML mapping or lacks the requested ``jobqueue`` section.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cluster config {str(path)!r} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"cluster config {str(path)!r} is not valid YAML: {exc}") from exc
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, Mapping):
        raise ValueError(
            f"cluster config {str(path)!r} must be a YAML mapping (dask config format, "
            f"e.g. 'jobqueue: {{slurm: {{cores: 4}}}}'), got {type(loaded).__name__}"
        )
    if cluster in JOBQUEUE_CLUSTERS:
        sections = loaded.get("jobqueue") or {}
        if not isinstance(sections, Mapping) or cluster not in sections:
            found = sorted(sections) if isinstance(sections, Mapping) else []
            raise ValueError(
                f"cluster config {str(path)!r} has no 'jobqueue.{cluster}' section "
                f"(found jobqueue sections: {found or 'none'})"
            )
    return _flatten(loaded)


def jobqueue_cluster(
    kind: str,
    *,
    threads_per_worker: int | None = None,
    memory_limit: str | float | None = None,
    interface: str | None = None,
    **cluster_kwargs: Any,
) -> Any:
    """Build (not scale) a dask-jobqueue cluster for ``kind`` from the current dask config.

    Fields come, in increasing precedence, from dask-jobqueue's defaults, the active dask
    configuration (``~/.config/dask/*.yaml``, ``DASK_CONFIG``, ``dask.config.set``) and the
    keyword arguments. dask-jobqueue reads the configuration again whenever it submits a job,
    so settings from a file must stay active while the cluster runs:
    ``with dask.config.set(load_cluster_config(path, kind)): ...`` (as :func:`connect` does).

    The scheduler and the workers listen on the named interface (argument or
    ``jobqueue.<kind>.interface``), else on the loopback ``lo`` -- which only reaches workers on
    the same node; name the cluster network (``--interface ib0``) for multi-node jobs. The
    scheduler's dashboard listens on the same address; each worker's own diagnostics server
    on its node's loopback (``--dashboard-address 127.0.0.1:0``) unless ``worker_extra_args``
    sets ``--dashboard-address`` or ``--no-dashboard``.

    Parameters
    ----------
    kind : {"slurm", "pbs", "lsf"}
        Batch system.
    threads_per_worker : int, optional
        Threads per Dask worker; sets the job's ``cores`` to ``threads_per_worker * processes``.
    memory_limit : str or float, optional
        Memory per Dask worker; sets the job's ``memory`` to ``memory_limit * processes``.
    interface : str, optional
        Network interface for the scheduler and workers (overrides the config).
    **cluster_kwargs
        Passed to the dask-jobqueue cluster class (``queue``, ``account``, ``walltime``,
        ``security``, ``scheduler_options``, ``job_script_prologue``, ...).

    Returns
    -------
    dask_jobqueue.JobQueueCluster
        Not yet scaled; call ``scale`` or ``adapt``, or use :func:`connect`.

    Raises
    ------
    ImportError
        If dask-jobqueue is not installed.
    ValueError
        If ``kind`` is unknown.
    """
    if kind not in JOBQUEUE_CLUSTERS:
        raise ValueError(f"unknown batch system {kind!r}: expected one of {sorted(JOBQUEUE_CLUSTERS)}")
    from .local import LOOPBACK_HOST, dashboard_address, interface_host

    jobqueue = _import_jobqueue()
    cls = getattr(jobqueue, JOBQUEUE_CLUSTERS[kind])
    section = f"jobqueue.{kind}"
    iface = interface or dask.config.get(f"{section}.interface", None)
    if iface is None:
        iface = LOOPBACK_INTERFACE
        warnings.warn(
            f"{kind} cluster: no network interface named, so the scheduler and workers listen "
            "on the loopback 'lo' only and workers on other nodes cannot connect; pass "
            f"--interface (e.g. ib0) or set jobqueue.{kind}.interface",
            UserWarning,
            stacklevel=3,
        )
    options = dict(dask.config.get(f"{section}.scheduler-options", None) or {})
    options.update(cluster_kwargs.pop("scheduler_options", None) or {})
    if "dashboard_address" in cluster_kwargs:  # dask-jobqueue wants it in scheduler_options
        options["dashboard_address"] = cluster_kwargs.pop("dashboard_address")
    if "host" not in options and "interface" not in options:
        options["interface"] = iface
    if "dashboard_address" not in options:
        host = options.get("host") or interface_host(options["interface"])
        options["dashboard_address"] = dashboard_address(host)
    # `dask worker` serves its own dashboard on all interfaces by default (dask/distributed#3941),
    # whatever --interface says: bind it to the node's loopback unless the user chose otherwise.
    extra = list(
        cluster_kwargs.pop("worker_extra_args", None) or dask.config.get(f"{section}.worker-extra-args", None) or []
    )
    if not any(str(a).startswith(("--dashboard-address", "--no-dashboard")) for a in extra):
        extra += ["--dashboard-address", f"{LOOPBACK_HOST}:0"]
    kwargs: dict[str, Any] = {
        "interface": iface,
        "scheduler_options": options,
        "worker_extra_args": extra,
    }
    processes = cluster_kwargs.get("processes") or dask.config.get(f"{section}.processes", None)
    processes = int(processes or 1)
    if threads_per_worker is not None:
        kwargs["cores"] = int(threads_per_worker) * processes
    if memory_limit is not None:
        kwargs["memory"] = _scale_memory(memory_limit, processes)
    kwargs.update(cluster_kwargs)
    try:
        return cls(**kwargs)
    except ValueError as exc:
        if "cores and memory" not in str(exc):
            raise
        raise ValueError(
            f"{kind} jobs need a size: pass --threads-per-worker and --memory-limit "
            f"(threads_per_worker=, memory_limit=) or set cores and memory under "
            f"jobqueue.{kind} in --cluster-config (see deploy/{kind}.yaml)"
        ) from exc


def _scale_memory(memory: str | float, factor: int) -> str:
    """``memory * factor`` as a string dask-jobqueue accepts (e.g. ``"8GiB"``)."""
    from dask.utils import format_bytes, parse_bytes

    if isinstance(memory, str):
        if factor == 1:
            return memory.replace(" ", "")
        nbytes = parse_bytes(memory)
    else:
        nbytes = int(memory)
        if memory <= 1:
            raise ValueError(
                f"memory_limit={memory!r}: batch jobs need an absolute size such as '4GB', "
                "not a fraction of a node's memory"
            )
    return format_bytes(nbytes * factor).replace(" ", "")


def _is_address(text: str) -> bool:
    return bool(_ADDRESS.match(text))


@contextlib.contextmanager
def connect(
    cluster: str | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | float | None = None,
    adapt: tuple[int, int] | None = None,
    interface: str | None = None,
    config: str | None = None,
    quiet: bool = False,
    scheduler_file: str | None = None,
    nbytes: int | None = None,
    **cluster_kwargs: Any,
) -> Iterator[distributed.Client | None]:
    """Open a Dask client for popsdask and close what was created on exit.

    Inside the ``with`` block the client is the default, so ``popsdask.fit`` and every other
    computation run on it. On the threaded scheduler there is no client: the block runs with
    ``dask.config`` set to it, and popsdask computes there when no client is current.

    Parameters
    ----------
    cluster : str, optional
        ``None``: a LocalCluster, or the threaded scheduler when ``nbytes`` is at most
        :data:`SMALL_INPUT_BYTES` and no option sizes a cluster.
        ``"local"``: a LocalCluster of worker processes on this machine.
        ``"threads"``: Dask's threaded scheduler in this process (``threads_per_worker`` threads;
        default one per core); nothing to start, no memory limit or spilling.
        ``"slurm"``, ``"pbs"``, ``"lsf"``: a dask-jobqueue cluster (workers are batch jobs).
        Anything else: the address of a running scheduler (``tcp://host:8786``, ``tls://...``).
    n_workers : int, optional
        Dask workers to start (batch clusters: submitted as jobs, ``processes`` workers per job).
    threads_per_worker : int, optional
        Threads per worker.
    memory_limit : str or float, optional
        Memory per worker, e.g. ``"4GB"``.
    adapt : (int, int), optional
        ``(minimum, maximum)`` workers for adaptive scaling (``cluster.adapt``); takes over
        from ``n_workers`` once running.
    interface : str, optional
        Network interface to listen on; loopback when omitted (never all interfaces).
    config : str, optional
        dask-config YAML file for batch clusters (``deploy/slurm.yaml`` etc.).
    quiet : bool
        Do not print the dashboard link to stderr.
    scheduler_file : str, optional
        Connect to the scheduler described by this file (``dask scheduler --scheduler-file``);
        exclusive with creating a cluster.
    nbytes : int, optional
        Size of the input the computation reads (bytes of its design rows), for the choice
        made when ``cluster`` is None.
    **cluster_kwargs
        Passed to the cluster class (created clusters) or to :class:`distributed.Client`
        (existing schedulers), e.g. ``security``, ``queue``, ``walltime``.

    Yields
    ------
    distributed.Client or None
        None on the threaded scheduler.

    Raises
    ------
    InputError (a ValueError)
        For an unknown cluster name or inconsistent options (one line on the command line).
    ImportError
        For batch clusters without dask-jobqueue (``pip install popsdask[hpc]``).
    """
    _check_counts(n_workers, threads_per_worker, adapt)
    name = cluster.strip() if isinstance(cluster, str) else cluster
    lname = name.lower() if isinstance(name, str) else None
    sizing = (n_workers, threads_per_worker, memory_limit, adapt, interface, config, scheduler_file)
    if lname is None and nbytes is not None and nbytes <= SMALL_INPUT_BYTES and all(o is None for o in sizing):
        lname = THREADS
    if lname == THREADS:
        _check_threads(n_workers, memory_limit, adapt, interface, config, scheduler_file, cluster_kwargs or None)
        yield from _threaded(threads_per_worker, quiet)
        return
    import distributed  # not before: the threaded scheduler runs without it

    external = scheduler_file is not None or (name is not None and lname != "local" and lname not in JOBQUEUE_CLUSTERS)
    if external:
        _check_external(name, scheduler_file, n_workers, threads_per_worker, memory_limit, adapt, interface, config)
        check_cluster_options(name, scheduler_file=scheduler_file)  # reachable within a deadline
        if scheduler_file is not None:
            client = distributed.Client(scheduler_file=str(scheduler_file), **cluster_kwargs)
        else:
            client = distributed.Client(name, **cluster_kwargs)
        yield from _serve(client, quiet, f"scheduler {client.scheduler.address}")
        return
    sized: dict[str, Any] = dict(
        threads_per_worker=threads_per_worker, memory_limit=memory_limit, interface=interface, config=config
    )
    check_cluster_options(lname, n_workers=n_workers, adapt=adapt, **sized)  # what would hang once started
    # dask-jobqueue reads the config again at every job submission: keep it active throughout.
    with dask.config.set(_cluster_settings(lname, config)):
        sizes: dict[str, Any] = dict(
            threads_per_worker=threads_per_worker, memory_limit=memory_limit, interface=interface
        )
        if lname in JOBQUEUE_CLUSTERS:
            created = jobqueue_cluster(lname, **sizes, **cluster_kwargs)  # scaled to n_workers below
        else:
            from .local import local_cluster

            created = local_cluster(n_workers=n_workers, **sizes, **cluster_kwargs)
        try:
            if lname in JOBQUEUE_CLUSTERS and n_workers:
                created.scale(n=n_workers)
            if adapt is not None:
                created.adapt(minimum=adapt[0], maximum=adapt[1])
            yield from _serve(distributed.Client(created), quiet, type(created).__name__)
        finally:
            created.close()


def _threaded(threads: int | None, quiet: bool) -> Iterator[None]:
    """Run the ``with`` block on Dask's threaded scheduler with ``threads`` threads."""
    from dask.threaded import get as threaded_get

    threads = threads or os.cpu_count() or 1
    # the function, not its name, and the rechunk method Dask picks without a client: else Dask
    # imports distributed at every compute and rechunk to look for one, a fifth of a small command
    with dask.config.set({"scheduler": threaded_get, "num_workers": threads, "array.rechunk.method": "tasks"}):
        if not quiet:
            print(f"popsdask: Dask threaded scheduler, {threads} threads in this process", file=sys.stderr)
        yield None


def _check_threads(*options: Any) -> None:
    """Refuse the options that only a cluster of worker processes can take."""
    if any(option is not None for option in options):
        raise InputError(
            "the threaded scheduler (--cluster threads) runs in this process: --threads-per-worker sets its "
            "threads; n_workers, memory_limit, adapt, interface, cluster config, scheduler file and cluster "
            "keywords need a cluster (--cluster local)"
        )


def _serve(client: distributed.Client, quiet: bool, what: str) -> Iterator[distributed.Client]:
    """Announce ``client`` (``what`` it is connected to), yield it, and close it on the way out."""
    try:
        _announce(client, quiet, what=what)
        yield client
    finally:
        client.close()


def _cluster_settings(lname: str | None, config: str | None) -> dict[str, Any]:
    """The dask config a created cluster runs under: a batch cluster's ``config`` file, if any."""
    if lname in JOBQUEUE_CLUSTERS:
        # import first: dask_jobqueue adds its defaults to the config on import, and a
        # dask.config.set made before that would delete them again on exit.
        _import_jobqueue()
        return load_cluster_config(config, lname) if config is not None else {}
    if config is not None:
        raise ValueError("config (--cluster-config) applies to slurm, pbs and lsf clusters only")
    return {}


def _check_counts(n_workers: int | None, threads_per_worker: int | None, adapt: tuple[int, int] | None) -> None:
    if n_workers is not None and n_workers < 0:
        raise InputError(f"n_workers must be >= 0, got {n_workers}")
    if threads_per_worker is not None and threads_per_worker < 1:
        raise InputError(f"threads_per_worker must be >= 1, got {threads_per_worker}")
    if adapt is not None:
        if len(adapt) != 2:
            raise InputError(f"adapt must be (minimum, maximum), got {adapt!r}")
        low, high = adapt
        if low < 0 or high < 1 or low > high:
            raise InputError(f"adapt=(minimum, maximum) needs 0 <= minimum <= maximum >= 1, got {adapt}")


def _check_external(name: str | None, scheduler_file: str | None, *creation_options: Any) -> None:
    if scheduler_file is not None and name not in (None, "local"):
        raise InputError(
            f"give either a cluster/scheduler address ({name!r}) or a scheduler file ({scheduler_file!r}), not both"
        )
    if name is not None and not _is_address(name):
        raise InputError(
            f"unknown cluster {name!r}: expected 'local', 'slurm', 'pbs', 'lsf', or the address "
            "of a running scheduler such as 'tcp://host:8786'"
        )
    if any(option is not None for option in creation_options):
        raise InputError(
            "n_workers, threads_per_worker, memory_limit, adapt, interface and config create a "
            "cluster; they cannot apply to an existing scheduler"
        )


def _announce(client: distributed.Client, quiet: bool, what: str) -> None:
    if not quiet:
        print(f"popsdask: Dask {what}, dashboard: {client.dashboard_link}", file=sys.stderr)


def connect_from_args(
    args: argparse.Namespace, **cluster_kwargs: Any
) -> contextlib.AbstractContextManager[distributed.Client | None]:
    """The :func:`connect` context manager for the options of
    :func:`popsdask.runtime.options.add_cluster_arguments`.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments; a ``quiet`` attribute, if present, silences the dashboard link.
    **cluster_kwargs
        Extra keywords for :func:`connect` (e.g. ``nbytes`` of the input, ``security``).

    Returns
    -------
    contextlib.AbstractContextManager
        Enter it to get the :class:`distributed.Client` (None on the threaded scheduler).
    """
    cluster = getattr(args, "scheduler", None) or getattr(args, "cluster", None)
    adapt = getattr(args, "adapt", None)
    memory = getattr(args, "memory_limit", None)
    return connect(
        cluster,
        n_workers=getattr(args, "n_workers", None),
        threads_per_worker=getattr(args, "threads_per_worker", None),
        memory_limit=memory,
        adapt=tuple(adapt) if adapt is not None else None,
        interface=getattr(args, "interface", None),
        config=getattr(args, "cluster_config", None),
        quiet=bool(getattr(args, "quiet", False)),
        scheduler_file=getattr(args, "scheduler_file", None),
        **cluster_kwargs,
    )
