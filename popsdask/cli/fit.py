"""``popsdask fit``: a POPS posterior of a descriptor store."""

from __future__ import annotations

import argparse
import sys
import time

from ..core.parameters import add_arguments as add_pops_arguments
from ..core.parameters import check_arguments as check_pops_args
from ..core.validation import InputError
from .common import add_cluster, add_overwrite, add_split, open_rows, refuse_existing, require_existing

HELP = "fit a POPS posterior to a descriptor store"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "store", nargs="?", help="descriptor store (Zarr v3 group with X (row, feature) and y (row)); or --add"
    )
    p.add_argument("-o", "--output", required=True, help="posterior to write (Zarr group)")
    p.add_argument(
        "--add",
        metavar="NEW_STORE",
        help="add the rows of NEW_STORE to those the --from posterior was fitted to: pass 1 reads only NEW_STORE, "
        "passes 2-4 read the fitted stores again; the result equals a fit of all rows",
    )
    p.add_argument(
        "--from",
        dest="previous",
        metavar="POSTERIOR",
        help="the posterior whose rows --add adds to (its stores must be unchanged)",
    )
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


def _inputs(args: argparse.Namespace) -> tuple[str, str | None]:
    """The store whose rows pass 1 reads, and the posterior they add to (None: a fit of all rows)."""
    if args.add is None and args.previous is None:
        if args.store is None:
            raise InputError("give a STORE to fit, or --add NEW_STORE --from POSTERIOR")
        return args.store, None
    if args.store is not None:
        raise InputError(f"give either STORE ({args.store}) or --add NEW_STORE with --from POSTERIOR, not both")
    if args.add is None or args.previous is None:
        raise InputError("--add NEW_STORE and --from POSTERIOR go together (the rows to add, the fit they add to)")
    return args.add, args.previous


def run(args: argparse.Namespace) -> int:
    store, previous = _inputs(args)
    out = refuse_existing(args.output, args.overwrite, store, *([previous] if previous else []))
    check_pops_args(args)  # before any cluster starts
    require_existing(store, "store")
    if previous is not None:
        require_existing(previous, "posterior")
    import shutil

    from ..engine.design import design_from
    from ..engine.estimator import fit
    from ..engine.fit import check_enough_rows
    from ..io.store import output_lock
    from ..runtime.cluster import connect_from_args

    data = open_rows(store, args.split, require_y=True)
    design = design_from(data, fit_intercept=args.fit_intercept)
    if previous is not None:  # the fitted stores reopened and both checked, before any cluster starts
        from ..engine.incremental import added_design, fitted_stores
        from ..engine.posterior import Posterior

        post = Posterior.load(previous)
        design = added_design(post, design, previous)
        refuse_existing(args.output, args.overwrite, *fitted_stores(post))
    check_enough_rows(design.n_rows, design.n_features, design.source)  # before any cluster starts
    # every pass is checkpointed next to the output (the ensemble's corrections too), so a
    # killed fit continues with --resume; removed once the posterior is saved
    checkpoint = out.with_name(out.name + ".checkpoint")
    with output_lock(out):  # a second fit of the same output exits 2 at once
        refuse_existing(args.output, args.overwrite)  # again: another fit may have just finished it
        if checkpoint.exists() and not args.resume and not args.quiet:
            print(f"popsdask fit: starting over; --resume would continue the fit in {checkpoint}", file=sys.stderr)
        with connect_from_args(args, nbytes=design.X.nbytes):
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
                previous=previous,
            )
            post.save(out, overwrite=args.overwrite)
        shutil.rmtree(checkpoint, ignore_errors=True)
    read = post.provenance["rows read"]["pass 1"]
    print(
        f"fitted {post.n_rows_} rows x {post.n_features} features in {time.perf_counter() - t0:.1f} s "
        f"(pass 1 read {read} of them): "
        f"alpha={post.alpha_:.4g} lambda={post.lambda_:.4g} selected={post.n_selected_} "
        f"modes={0 if post.basis_ is None else post.basis_.shape[1]} -> {out}"
    )
    return 0
