"""``popsdask predict``: ensemble predictions of a store with a posterior."""

from __future__ import annotations

import argparse
import json

from ..core.validation import InputError
from .common import (
    EV_CURVE,
    add_cluster,
    add_n_samples,
    add_overwrite,
    add_sampling,
    add_seed,
    add_split,
    add_tolerance,
    ev_curve,
    open_rows,
    refuse_existing,
    require_existing,
)

HELP = "ensemble predictions of a store with a posterior"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("posterior", help="posterior (Zarr group written by popsdask fit)")
    p.add_argument("store", help="descriptor store to predict (y optional)")
    p.add_argument("-o", "--output", required=True, help="prediction store to write (Zarr group)")
    add_split(p, "test")
    add_n_samples(p)
    add_sampling(p)
    add_seed(p, "seed of the posterior samples")
    p.add_argument("--float32", action="store_true", help="store the prediction array as float32; default: float64")
    p.add_argument("--ev-curve", default=EV_CURVE, help="sample counts of the envelope-violation-vs-S curve, or none")
    p.add_argument("--per-atom", action="store_true", help="divide energy rows (X and y) by n_atoms: energies per atom")
    add_tolerance(p, "violations within it are counted beside the EV, not in it (default: none)")
    add_cluster(p)
    add_overwrite(p)


def run(args: argparse.Namespace) -> int:
    out = refuse_existing(args.output, args.overwrite, args.posterior, args.store)
    curve = ev_curve(args.ev_curve)  # before any cluster starts
    require_existing(args.posterior, "posterior")
    from ..engine.posterior import Posterior
    from ..engine.predictions import predict_ensemble
    from ..io.store import output_lock
    from ..runtime.cluster import connect_from_args

    post = Posterior.load(args.posterior)
    data = open_rows(args.store, args.split, require_y=False)
    if args.per_atom:
        from ..engine.predictions import per_atom_energy_rows

        data = per_atom_energy_rows(data)
    n_features = data.sizes["feature"] + int(bool(post.settings.get("fit_intercept", False)))
    if n_features != post.n_features:
        raise InputError(
            f"{args.store}/X: {data.sizes['feature']} features, but the posterior {args.posterior} has "
            f"{post.n_features} parameters"
        )
    # a second predict of the same output exits 2 at once
    with output_lock(out), connect_from_args(args, nbytes=data["X"].nbytes):
        ds = predict_ensemble(
            post,
            data,
            out,
            n_samples=args.n_samples,
            method=args.method,
            seed=args.seed,
            overwrite=args.overwrite,
            dtype="float32" if args.float32 else "float64",
            progress=not args.quiet,
            ev_curve=curve,
            tolerance=args.tolerance,
        )
    print(f"wrote {dict(ds['prediction'].sizes)} predictions -> {args.output}")
    if "metrics" in ds.attrs:
        from ..evaluation.report import metrics_table

        print(metrics_table(json.loads(ds.attrs["metrics"])))
    return 0
