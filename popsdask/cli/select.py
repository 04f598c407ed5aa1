"""``popsdask select``: the configurations of a pool most worth labelling next."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.validation import InputError, number
from .common import add_n_samples, add_overwrite, add_sampling, add_seed, refuse_existing, require_existing

HELP = "pick the N configurations of a pool most worth labelling (band per atom, support score, diversity)"
DESCRIPTION = (
    "Pick N configurations of POOL by the posterior's predictive variance of their energy per atom (the "
    "members' band plus the support score's epistemic part), greedily maximising the picked set's joint "
    "variance so that near-copies of one event do not fill the batch; with --rows forces (or both), by the "
    "information gain of each configuration's force rows (block D-optimal: greedy log-determinant); with "
    "--criterion variance, by how much each pick lowers the pool's summed predictive variance. POOL is "
    "configurations (extxyz, a "
    "LAMMPS text dump, any file ASE reads, directories of them; labels not needed) or a descriptor store. "
    "Configurations are written to OUTPUT (.extxyz/.xyz) with their bands in each frame's info; a store "
    "records no positions, so its picks go to a table (OUTPUT .csv, also accepted for configurations)."
)

TABLE_SUFFIXES = (".csv",)
FRAME_SUFFIXES = (".extxyz", ".xyz")
#: ``--rows`` (popsdask.atomistic.selection.ROW_KINDS; spelt out so that --help imports no numpy)
ROW_KINDS = ("energy", "forces", "both")
#: ``--criterion`` (popsdask.atomistic.selection.CRITERIA)
CRITERIA = ("information", "variance")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("posterior", help="posterior (Zarr group written by popsdask fit)")
    p.add_argument("pool", nargs="+", help="configurations (files, directories, globs) or one descriptor store")
    p.add_argument("-n", "--n", dest="n", type=number(1, kind=int), required=True, help="configurations to pick")
    p.add_argument("-o", "--output", required=True, help="picked configurations (.extxyz/.xyz) or a table (.csv)")
    p.add_argument(
        "--descriptors",
        default=None,
        help="descriptor store whose attrs hold the posterior's descriptor settings; default: the store the "
        "posterior was fitted on",
    )
    p.add_argument(
        "--support-weight",
        type=number(0.0),
        default=1.0,
        help="weight of the epistemic covariance (support score) beside the band; 0: the band alone",
    )
    p.add_argument(
        "--rows",
        choices=ROW_KINDS,
        default="energy",
        help="what each configuration contributes: its per-atom energy row (greedy max-determinant), its force "
        "rows, or both (greedy log-determinant gain of the picked set's rows)",
    )
    p.add_argument(
        "--criterion",
        choices=CRITERIA,
        default="information",
        help="information: the labels' information gain (greedy determinants); variance: the largest cut in the "
        "pool's summed predictive variance of the same rows (picks like much of the pool over outliers)",
    )
    p.add_argument(
        "--noise",
        type=number(0.0),
        default=None,
        help="with --rows forces/both or --criterion variance: noise std of a labelled row (eV/Å; eV/atom for the "
        "energy row); default: 1/sqrt(alpha), the fit's noise for a row of unit weight",
    )
    add_n_samples(p)
    add_sampling(p)
    add_seed(p, "seed of the posterior samples (the selection itself is deterministic)")
    add_overwrite(p)


def _is_store(path: str) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "zarr.json").exists()


def run(args: argparse.Namespace) -> int:
    out = refuse_existing(args.output, args.overwrite, args.posterior, *args.pool)
    suffix = out.suffix.lower()
    if suffix not in TABLE_SUFFIXES + FRAME_SUFFIXES:
        raise InputError(f"{out}: write picks as .extxyz or .xyz (configurations) or .csv (a table)")
    if args.noise is not None and args.noise <= 0:
        raise InputError(f"--noise {args.noise:g}: must be above 0")
    require_existing(args.posterior, "posterior")
    stores = [p for p in args.pool if _is_store(p)]
    if stores and len(args.pool) > 1:
        raise InputError(f"{stores[0]}: a descriptor store is a pool on its own; give it alone")
    if stores and suffix not in TABLE_SUFFIXES:
        raise InputError(
            f"{out}: the store {stores[0]} records no positions, so its picks are a table: write -o PICKS.csv"
        )
    if stores and args.descriptors:
        raise InputError("--descriptors: a store pool carries its own descriptor settings; leave it out")
    from ..atomistic import selection
    from ..engine.posterior import Posterior

    post = Posterior.load(args.posterior)
    kind = post.kind_
    if args.method not in kind.methods:
        raise InputError(f"--method {args.method}: an {kind.name} posterior {kind.method_note}")
    options = dict(
        seed=args.seed,
        n_samples=args.n_samples,
        method=args.method,
        support_weight=args.support_weight,
        rows=args.rows,
        noise=args.noise,
        criterion=args.criterion,
    )
    if stores:
        table = selection.select_from_store(post, stores[0], args.n, **options)
        selection.write_picks(table, out, overwrite=args.overwrite)
        names = list(table["name"]) if "name" in table else list(table["configuration"])
    else:
        backend = selection.posterior_backend(post, args.descriptors)
        pool = selection.read_pool(args.pool, backend.elements)
        if args.n > len(pool):
            raise InputError(f"-n {args.n}: the pool holds {len(pool)} configurations")
        picks = selection.select_configurations(post, pool, args.n, backend=backend, **options)
        selection.write_picks(picks, out, overwrite=args.overwrite)
        names = [c.name for c in picks]
    shown = ", ".join(str(n) for n in names[:5]) + (", ..." if len(names) > 5 else "")
    print(f"picked {len(names)} configurations ({shown}) -> {out}")
    return 0
