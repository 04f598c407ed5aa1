"""``popsdask calibrate``: conformal recalibration of a posterior's std and envelope."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.validation import number
from .common import add_cluster, add_overwrite, add_tolerance, require_existing

HELP = "conformal recalibration of a posterior's std and envelope"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("posterior", help="fitted posterior (Zarr group)")
    p.add_argument("store", help="descriptor store with references to calibrate on")
    p.add_argument("-o", "--output", required=True, help="calibrated posterior to write")
    p.add_argument("--group-by", default=None, help="cross-conformal by this per-configuration variable (refits)")
    p.add_argument(
        "--folds",
        type=number(2, kind=int),
        default=None,
        metavar="K",
        help="cross-conformal by K seeded random folds of configurations (refits): for data like the "
        "training set, where --group-by is for data unlike it",
    )
    p.add_argument(
        "--split",
        default=None,
        help="split conformal on this split of the store (train, test, code); with --group-by or --folds: "
        "cross-conformal on this split's configurations only (train or test)",
    )
    p.add_argument("--level", type=float, default=0.95, help="target coverage (default: %(default)s)")
    p.add_argument("--replace", action="store_true", help="recalibrate an already calibrated posterior")
    p.add_argument("--seed", type=int, default=0)
    add_tolerance(p, "scores are the error beyond it (default: none)")
    add_cluster(p)
    add_overwrite(p)


def run(args: argparse.Namespace) -> int:
    require_existing(args.posterior, "posterior")
    from ..engine.posterior import Posterior
    from ..evaluation.crossval import calibrate, check_calibration_inputs
    from ..io.store import open_store
    from ..runtime.cluster import connect_from_args

    post = Posterior.load(args.posterior)  # inputs are checked before any cluster starts
    ds = open_store(args.store)
    check_calibration_inputs(post, ds, args.group_by, args.split, args.level, args.replace, args.folds)
    if Path(args.output).exists() and not args.overwrite:
        raise FileExistsError(f"{args.output} exists; pass --overwrite to replace it")
    with connect_from_args(args, nbytes=ds["X"].nbytes):
        out = calibrate(
            post,
            ds,
            args.output,
            group_by=args.group_by,
            folds=args.folds,
            split=args.split,
            level=args.level,
            seed=args.seed,
            replace=args.replace,
            tolerance=args.tolerance,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    from ..evaluation.report import kind_units

    units = kind_units(ds.attrs.get("units"))
    assert out.calibration is not None  # calibrate returns a calibrated posterior
    for kind, c in out.calibration["kinds"].items():
        unit = units.get(kind, "in the units of y")  # offsets per atom for energy_per_atom
        print(
            f"{kind}: std x {c['std_scale']:.4g} (+{c['std_offset']:.3g} {unit}), "
            f"envelope x {c['envelope_scale']:.4g} (+{c['envelope_offset']:.3g} {unit}) from {c['n']} rows"
        )
    print(f"calibrated ({out.calibration['method']}, level {args.level}) -> {args.output}")
    return 0
