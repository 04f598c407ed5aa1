"""The command-line options that choose and size the Dask cluster, without importing Dask.

:func:`add_cluster_arguments` defines them and checks their values as they are parsed;
:func:`popsdask.runtime.cluster.connect_from_args` starts the cluster they describe. Kept apart
from :mod:`popsdask.runtime.cluster` (which imports distributed) so that a parser, its ``--help``
and its usage errors cost no Dask import.
"""

from __future__ import annotations

import argparse

__all__ = ["SMALL_INPUT_BYTES", "add_cluster_arguments"]

#: Design-row bytes (X of the rows a command reads) up to which a command given no ``--cluster``
#: runs on Dask's threaded scheduler in this process: a LocalCluster's start and close cost
#: seconds, more than the passes over such inputs; larger inputs keep the worker processes,
#: their memory limits and spilling.
SMALL_INPUT_BYTES = 256 * 2**20


def add_cluster_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options that choose and size the Dask cluster to a command-line parser.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        Parser (or subparser) to extend with a "Dask cluster" argument group.

    Returns
    -------
    argparse.ArgumentParser
        The same parser.
    """
    group = parser.add_argument_group("Dask cluster")
    where = group.add_mutually_exclusive_group()
    where.add_argument(
        "--cluster",
        metavar="KIND|ADDRESS",
        default=None,
        help="threads (Dask's threaded scheduler in this process), local (worker processes on this machine), "
        "slurm, pbs, lsf (workers as batch jobs, needs popsdask[hpc]), or the address of a running scheduler; "
        f"default: threads for inputs up to {SMALL_INPUT_BYTES // 2**20} MiB of design rows (fit, predict, "
        "calibrate, crossval) unless a cluster option is given, else local",
    )
    where.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        default=None,
        help="connect to a running scheduler, e.g. tcp://node001:8786 (same as --cluster ADDRESS)",
    )
    where.add_argument(
        "--scheduler-file",
        metavar="PATH",
        default=None,
        help="connect to the scheduler described by this file (dask scheduler --scheduler-file)",
    )
    group.add_argument(
        "--n-workers",
        type=_nonnegative_int,
        default=None,
        metavar="N",
        help="Dask workers to start (batch clusters: submitted as jobs)",
    )
    group.add_argument(
        "--threads-per-worker", type=_positive_int, default=None, metavar="N", help="threads in each worker"
    )
    group.add_argument("--memory-limit", default=None, metavar="SIZE", help="memory per worker, e.g. 4GB")
    group.add_argument(
        "--adapt",
        nargs=2,
        type=_nonnegative_int,
        default=None,
        metavar=("MIN", "MAX"),
        help="scale adaptively between MIN and MAX workers",
    )
    group.add_argument(
        "--interface",
        default=None,
        metavar="NAME",
        help="network interface to listen on, e.g. ib0 (default: loopback only)",
    )
    group.add_argument(
        "--cluster-config",
        default=None,
        metavar="YAML",
        help="dask-jobqueue config file for slurm/pbs/lsf (see deploy/)",
    )
    return parser


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = _nonnegative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value
