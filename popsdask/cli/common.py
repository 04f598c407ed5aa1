"""What the commands share: the parser and help classes, the overwrite rule,
store opening, and the options several commands add the same way.

Kept light (no Dask, xarray or engine import): ``popsdask --help`` and the refusals of bad options
run on this module alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, NoReturn

from ..calibration.metrics import EV_CURVE_SAMPLES
from ..core.pops import SAMPLING_METHODS
from ..core.validation import InputError, number
from ..runtime.options import add_cluster_arguments

#: ``--ev-curve``'s default: the sample counts of the envelope-violation-vs-S curve
EV_CURVE = ",".join(str(v) for v in EV_CURVE_SAMPLES)

SPLIT_HELP = (
    "use only the rows of the store's {which} configurations (its per-configuration 'split' variable, "
    "written by popsdask descriptors); default: all rows"
)


class Parser(argparse.ArgumentParser):
    """Usage errors as one line (exit 2), like the commands' own input errors."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Help(argparse.ArgumentDefaultsHelpFormatter):
    """Append "(default: X)" to every option with a default; flags and options whose default is
    None say in their help what the default means."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        if flag or "%(default)" in text or action.default in (None, argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def refuse_existing(path: str | Path, overwrite: bool, *inputs: str | Path) -> Path:
    """The same rule and wording for every command that writes; an output that is one of the
    command's ``inputs`` (or holds or lies inside one) is refused even with ``--overwrite``."""
    p = Path(path)
    for i in inputs:
        a, b = p.absolute(), Path(i).absolute()
        if a == b or a in b.parents or b in a.parents or (p.exists() and Path(i).exists() and p.samefile(i)):
            raise InputError(f"{p}: it is the input {i}; write the output elsewhere")
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p} exists; pass --overwrite to replace it")
    return p


def require_existing(path: str | Path, what: str) -> Path:
    """Refuse a missing input at once, in the API's words, before the modules that read it load."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such {what}")
    return p


def open_rows(path: str, split: str | None, *, require_y: bool) -> Any:
    """Open (metadata only, arrays lazy) and check a descriptor store, then select its split."""
    from ..io.store import open_store, select_split

    ds = open_store(path, require_y=require_y)
    return ds if split is None else select_split(ds, split)


def ev_curve(text: str) -> tuple[int, ...] | None:
    """``--ev-curve``: comma-separated sample counts, or None for ``none``/``0``/empty."""
    if text.strip().lower() in ("", "none", "0"):
        return None
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError as err:
        raise InputError(f"--ev-curve {text!r}: give comma-separated sample counts, e.g. 50,500,5000") from err
    if min(sizes) < 1:
        raise InputError(f"--ev-curve {text!r}: sample counts must be positive")
    return sizes


def tolerance(text: str) -> dict[str, float]:
    """``--tolerance energy=EV_PER_ATOM,force=EV_PER_A``: the references' own precision per row kind."""
    from ..calibration.metrics import parse_tolerance

    try:
        return parse_tolerance(text)
    except InputError as err:
        # argparse names the option itself
        raise argparse.ArgumentTypeError(str(err).removeprefix("--tolerance").lstrip(": ")) from None


def add_tolerance(parser: argparse.ArgumentParser, use: str) -> None:
    """``--tolerance``: the references' precision (energy per atom in eV/atom, force in eV/Å)."""
    parser.add_argument(
        "--tolerance",
        type=tolerance,
        default=None,
        metavar="energy=E,force=F",
        help="the references' own precision (e.g. the DFT's convergence), energy in eV/atom and force in eV/Å "
        f"(stress=S in the store's unit): {use}",
    )


def add_split(parser: argparse.ArgumentParser, which: str) -> None:
    """``--split train|test``: the rows of one split of the store (default: all)."""
    parser.add_argument("--split", choices=("train", "test"), default=None, help=SPLIT_HELP.format(which=which))


def add_sampling(parser: argparse.ArgumentParser, *flags: str, help: str = "how the hypercube is sampled") -> None:
    """``--method`` (or ``flags``): how the posterior hypercube is sampled."""
    parser.add_argument(*(flags or ("--method",)), choices=SAMPLING_METHODS, default="uniform", help=help)


def add_n_samples(parser: argparse.ArgumentParser) -> None:
    """``--n-samples``: the posterior's members, as ``popsdask predict`` draws them."""
    parser.add_argument(
        "--n-samples",
        type=number(1, kind=int),
        default=None,
        help="posterior samples (ensemble members); default: 500 (ensemble posterior: all its corrections)",
    )


def add_seed(parser: argparse.ArgumentParser, help: str) -> None:
    """``--seed``: a non-negative integer, 0 by default."""
    parser.add_argument("--seed", type=number(0, kind=int), default=0, help=help)


def add_cluster(parser: argparse.ArgumentParser) -> None:
    """The Dask cluster options and ``--quiet``, for the commands that compute on a cluster."""
    add_cluster_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars or dashboard link")


def add_overwrite(parser: argparse.ArgumentParser) -> None:
    """``--overwrite``, for the commands whose output is refused when it exists."""
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output; default: refuse")
