"""``popsdask crossval``: leave-one-group-out fits and the left-out groups' bands."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..core.parameters import add_arguments as add_pops_arguments
from ..core.parameters import check_arguments as check_pops_args
from .common import EV_CURVE, add_cluster, add_overwrite, ev_curve, require_existing

HELP = "leave-one-group-out: fit on every other group, predict the left-out one, tabulate its band"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="descriptor store with a per-configuration group variable")
    p.add_argument("-o", "--output", required=True, help="directory for the folds' predictions and crossval.md/json")
    p.add_argument("--group-by", default="group", help="per-configuration variable (default: %(default)s)")
    p.add_argument("--no-random-split", action="store_true", help="skip the random-split row")
    p.add_argument(
        "--test-fraction", type=float, default=0.3, help="random split without a stored split (default: %(default)s)"
    )
    add_pops_arguments(p)
    p.add_argument("--n-samples", type=int, default=None, help="members (default: 500; ensemble: all corrections)")
    p.add_argument("--ev-curve", default=EV_CURVE, help="sample counts of the EV-vs-S curve, or none")
    p.add_argument("--seed", type=int, default=0)
    add_cluster(p)
    add_overwrite(p)


def run(args: argparse.Namespace) -> int:
    check_pops_args(args)  # inputs are checked before any cluster starts
    require_existing(args.store, "store")
    from ..evaluation.crossval import check_groups, leave_one_group_out
    from ..io.store import open_store
    from ..runtime.cluster import connect_from_args

    ds = open_store(args.store)
    check_groups(ds, args.group_by)
    out = Path(args.output)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    t0 = time.perf_counter()
    with connect_from_args(args, nbytes=ds["X"].nbytes):
        result = leave_one_group_out(
            ds,
            out,
            group_by=args.group_by,
            random_split=not args.no_random_split,
            test_fraction=args.test_fraction,
            n_samples=args.n_samples,
            ev_curve=ev_curve(args.ev_curve),
            seed=args.seed,
            overwrite=args.overwrite,
            progress=not args.quiet,
            posterior=args.posterior,
            leverage_percentile=args.leverage_percentile,
            mode_threshold=args.mode_threshold,
            percentile_clipping=args.percentile_clipping,
            minimum_relative_error=args.minimum_relative_error,
        )
    print(result["table"])
    print(f"leave-one-{args.group_by}-out in {time.perf_counter() - t0:.1f} s: {out / 'crossval.md'}")
    return 0
