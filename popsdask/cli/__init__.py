"""The ``popsdask`` command line: thin shells over the API, one module per command.

Every command module holds ``HELP`` (its line in ``popsdask --help``), optionally ``DESCRIPTION``
and ``PARSER_OPTIONS``, ``add_arguments(parser)`` and ``run(args) -> int``; :data:`COMMANDS`
lists them in the order ``--help`` shows. A command imports what it computes with (Dask, the
engine, LAMMPS) inside ``run``, so that ``--help`` and usage errors start at once.

Every command checks its inputs (paths, stores, options) before it starts a Dask cluster, and a
bad input ends with exit code 2 and one line naming the path, variable and reason.
"""

from __future__ import annotations

import sys
from types import ModuleType

from .. import __version__
from ..core.validation import InputError
from ..io.errors import one_line
from ..runtime.client import skip_exit_collection
from ..runtime.preflight import check_cluster_args
from . import bench, calibrate, crossval, demo, descriptors, export, fit, predict, properties, report, select
from .common import Help, Parser

__all__ = ["COMMANDS", "build_parser", "main"]

#: the commands, by name, in the order of ``popsdask --help``
COMMANDS: dict[str, ModuleType] = {
    "descriptors": descriptors,
    "fit": fit,
    "predict": predict,
    "report": report,
    "crossval": crossval,
    "calibrate": calibrate,
    "demo": demo,
    "properties": properties,
    "export": export,
    "select": select,
    "bench": bench,
}


def build_parser() -> Parser:
    """The ``popsdask`` parser: one subparser per entry of :data:`COMMANDS`."""
    parser = Parser(
        prog="popsdask",
        description="Out-of-core POPS regression: misspecification-aware UQ for linear models on Dask.",
        formatter_class=Help,
    )
    parser.add_argument("--version", action="version", version=f"popsdask {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        options = {"formatter_class": Help, **getattr(command, "PARSER_OPTIONS", {})}
        if hasattr(command, "DESCRIPTION"):
            options["description"] = command.DESCRIPTION
        command.add_arguments(sub.add_parser(name, help=command.HELP, **options))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``popsdask ARGV``; the exit code (2: bad input, one line on stderr)."""
    skip_exit_collection()  # the process ends with the command: its objects go with it
    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "n_workers"):  # a command that computes on a cluster: its options first
            check_cluster_args(args)
        import dask
        from dask.threaded import get as threaded_get

        # Dask's local scheduler given (a client a command starts sets its own): without it, or by
        # name, Dask imports distributed at every compute to look for a client
        with dask.config.set(scheduler=threaded_get):
            return COMMANDS[args.command].run(args)
    except (InputError, FileExistsError, FileNotFoundError) as err:
        return _refused(args.command, err)
    except Exception as err:  # a filesystem fault or an undecodable chunk, from wherever it came
        line = one_line(err)
        if line is None:
            raise
        return _refused(args.command, line)


def _refused(command: str, err: Exception) -> int:
    """Print ``err`` as the one line of a refusal; exit code 2."""
    # the API's wording names its keyword; on the command line it is the flag
    message = str(err).replace("pass overwrite=True", "pass --overwrite")
    print(f"popsdask {command}: error: {message}", file=sys.stderr)
    return 2
