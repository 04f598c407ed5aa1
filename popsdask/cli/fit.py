"""``popsdask fit``: a POPS posterior of a descriptor store."""

from __future__ import annotations

import argparse
import sys
import time

from ..core.parameters import add_arguments as add_pops_arguments
from ..core.parameters import check_arguments as check_pops_args
from .common import add_cluster, add_overwrite, add_split, open_rows, refuse_existing, require_existing

HELP = "fit a POPS posterior to a descriptor store"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="descriptor store (Zarr v3 group with X (row, feature) and y (row))")
    p.add_argument("-o", "--output", required=True, help="posterior to write (Zarr group)")
    add_split(p, "train")
    add_pops_arguments(p)  # --posterior, --leverage-percentile, ...: one table with fit() and POPSRegressor
    p.add_argument("--fit-intercept", action="store_true", help="append a constant column; default: off")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed fit from its last finished pass (OUTPUT.checkpoint, written by every fit); "
        "refused when the store or the settings changed; default: start over",
    )
    add_cluster(p)
    add_overwrite(p)


def run(args: argparse.Namespace) -> int:
    out = refuse_existing(args.output, args.overwrite, args.store)
    check_pops_args(args)  # before any cluster starts
    require_existing(args.store, "store")
    import shutil

    from ..engine.estimator import fit
    from ..engine.fit import check_enough_rows
    from ..io.store import output_lock
    from ..runtime.cluster import connect_from_args

    data = open_rows(args.store, args.split, require_y=True)
    n, p = data.sizes["row"], data.sizes["feature"] + int(args.fit_intercept)
    check_enough_rows(n, p, str(data.attrs.get("source", args.store)))  # before any cluster starts
    # every pass is checkpointed next to the output (the ensemble's corrections too), so a
    # killed fit continues with --resume; removed once the posterior is saved
    checkpoint = out.with_name(out.name + ".checkpoint")
    with output_lock(out):  # a second fit of the same output exits 2 at once
        refuse_existing(args.output, args.overwrite)  # again: another fit may have just finished it
        if checkpoint.exists() and not args.resume and not args.quiet:
            print(f"popsdask fit: starting over; --resume would continue the fit in {checkpoint}", file=sys.stderr)
        with connect_from_args(args, nbytes=data["X"].nbytes):
            t0 = time.perf_counter()
            post = fit(
                data,
                posterior=args.posterior,
                leverage_percentile=args.leverage_percentile,
                minimum_relative_error=args.minimum_relative_error,
                mode_threshold=args.mode_threshold,
                percentile_clipping=args.percentile_clipping,
                fit_intercept=args.fit_intercept,
                progress=not args.quiet,
                checkpoint=checkpoint,
                resume=args.resume,
            )
            post.save(out, overwrite=args.overwrite)
        shutil.rmtree(checkpoint, ignore_errors=True)
    print(
        f"fitted {post.n_rows_} rows x {post.n_features} features in {time.perf_counter() - t0:.1f} s: "
        f"alpha={post.alpha_:.4g} lambda={post.lambda_:.4g} selected={post.n_selected_} "
        f"modes={0 if post.basis_ is None else post.basis_.shape[1]} -> {out}"
    )
    return 0
