"""``popsdask export``: the MLE and posterior members as LAMMPS potential files, plus an ensemble driver."""

from __future__ import annotations

import argparse
import re

from ..core.validation import InputError, number
from .common import add_overwrite, add_sampling, add_seed, refuse_existing, require_existing

HELP = "the MLE and N posterior members as LAMMPS pair_style snap files, plus an ensemble driver input"
DESCRIPTION = (
    "Write DIR/mle.* and DIR/member-NNNN.* (.snapcoeff, .snapparam, .mod with the pair commands) "
    "for the same seeded draws as popsdask predict, and DIR/ensemble.lmp, which runs a LAMMPS input once "
    "per potential (the input says `include ${potential}` where its pair style goes) and appends the "
    "value of a thermo expression after it to a file."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("posterior", help="posterior (Zarr group written by popsdask fit)")
    p.add_argument("--members", type=number(1, kind=int), required=True, help="posterior members besides the MLE")
    p.add_argument("-o", "--output", required=True, help="directory to write")
    p.add_argument(
        "--descriptors",
        default=None,
        help="descriptor store whose attrs hold the SNAP settings; default: the posterior's input store",
    )
    add_sampling(p, help="hypercube sampling")
    add_seed(p, "seed of the posterior members")
    p.add_argument(
        "--quantity", default="pe/atoms", help="LAMMPS equal-style expression ensemble.lmp records after the input"
    )
    add_overwrite(p)


def run(args: argparse.Namespace) -> int:
    out = refuse_existing(args.output, args.overwrite)
    require_existing(args.posterior, "posterior")
    import numpy as np

    from ..engine.posterior import Posterior
    from ..io.store import open_store

    post = Posterior.load(args.posterior)
    desc = args.descriptors or re.sub(r"\[(train|test)\]$", "", str(post.provenance.get("input", "")))
    try:
        attrs = open_store(desc, require_y=False).attrs
    except InputError as err:
        raise InputError(f"{err} (the descriptor store of {args.posterior}; pass --descriptors STORE)") from err
    try:
        from ..atomistic.descriptors.base import backend_from_attrs
        from ..atomistic.members import ENSEMBLE_INPUT, export_members
    except ImportError as err:
        raise InputError(
            f"popsdask export needs the atomistic extra (pip install 'popsdask[atomistic]'): {err}"
        ) from err
    try:
        settings = backend_from_attrs(attrs, where=desc)  # the store's descriptor (SNAP, ...)
    except InputError as err:
        raise InputError(f"{err} (pass --descriptors STORE)") from err
    kind = post.kind_
    if args.method not in kind.methods:
        use = " or ".join(kind.methods)
        raise InputError(f"--method {args.method}: an {kind.name} posterior {kind.method_note} (use {use})")
    res = export_members(
        post,
        settings,
        out,
        n_members=args.members,
        method=args.method,
        seed=args.seed,
        quantity=args.quantity,
        overwrite=args.overwrite,
    )
    spread = res["theta"][1:] - res["theta"][0]
    print(
        f"wrote the MLE and {args.members} members ({args.method}, seed {args.seed}; member k = sample k-1 of "
        f"popsdask predict with the same options) -> {out}; |theta - MLE| max {np.abs(spread).max():.3g}\n"
        f"run (the files name each other relative to {out}): cd {out} && lmp -in {ENSEMBLE_INPUT} -var input "
        f"/path/to/YOUR.lmp [-var quantity {args.quantity}] [-var out ensemble.txt]"
    )
    return 0
