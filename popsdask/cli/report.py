"""``popsdask report``: the metrics table and figures of a prediction store."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..core.validation import InputError
from .common import add_overwrite, add_tolerance, refuse_existing, require_existing

HELP = "metrics table and figures of a prediction store"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("predictions", help="prediction store (written by popsdask predict from a store with y)")
    p.add_argument("-o", "--output", default=None, help="report directory; default: PREDICTIONS-report")
    p.add_argument(
        "--group-by",
        default=None,
        metavar="VAR",
        help="per-configuration variable for per-group tables; default: group when the store has it",
    )
    add_tolerance(p, "violations within it are counted beside the EV, not in it (default: predict's)")
    add_overwrite(p)


def check_predictions(path: Path) -> None:
    """Refuse what is not a complete prediction store with metrics, naming what it is instead."""
    require_existing(path, "prediction store")
    from ..engine.predictions import PREDICTION_FORMAT
    from ..io.store import STORE_FORMAT, check_safe_group, write_state

    check_safe_group(path)
    attrs = json.loads((path / "zarr.json").read_text()).get("attributes", {})
    fmt = attrs.get("format")
    if fmt != PREDICTION_FORMAT:
        what = "a descriptor store" if fmt == STORE_FORMAT or (path / "X").is_dir() else f"format {fmt!r}"
        raise InputError(
            f"{path}: not a prediction store ({what}); make one with popsdask predict POSTERIOR STORE -o PREDICTIONS"
        )
    if write_state(path) != "complete":
        raise InputError(f"{path}: prediction store is not marked complete (its write did not finish)")
    if "metrics" not in attrs:
        raise InputError(
            f"{path}: no metrics: the predicted store has no reference values y, so there is nothing to "
            "compare the predictions with"
        )


def run(args: argparse.Namespace) -> int:
    src = Path(args.predictions)
    out = Path(args.output) if args.output else Path(str(src.with_suffix("")) + "-report")
    refuse_existing(out, args.overwrite)
    check_predictions(src)
    from ..evaluation.report import write_report
    from ..io.store import atomic_directory, commit_directory, discard_directory

    final, staging = atomic_directory(out)  # a report appears whole or not at all
    try:
        result = write_report(src, staging, group_by=args.group_by, tolerance=args.tolerance)
        commit_directory(staging, final, args.overwrite)
    except BaseException:
        discard_directory(staging, settle=0.0, attempts=1)
        raise
    print(result["table"])
    print(f"report: {out / 'report.md'}")
    return 0
