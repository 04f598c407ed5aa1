"""``popsdask export``: the MLE and posterior members as LAMMPS potential files, plus an ensemble driver."""

from __future__ import annotations

import argparse
import re
from typing import Any

from ..core.validation import InputError, number
from .common import add_overwrite, add_sampling, add_seed, refuse_existing, require_existing

HELP = "the MLE and N posterior members as LAMMPS pair_style snap files, or a LAMMPS monitor of the band"
DESCRIPTION = (
    "With --members N: write DIR/mle.* and DIR/member-NNNN.* (.snapcoeff, .snapparam, .mod with the pair "
    "commands) for the same seeded draws as popsdask predict, and DIR/ensemble.lmp, which runs a LAMMPS input "
    "once per potential (the input says `include ${potential}` where its pair style goes) and appends the "
    "value of a thermo expression after it to a file. With --monitor: write DIR/mle.* and DIR/monitor.lmp, "
    "which a LAMMPS input includes before its run to compute, every N steps, the configuration's energy band "
    "(equal to popsdask predict's), a per-atom grade, print and dump them, and halt the run (fix halt) when "
    "the calibrated energy std per atom exceeds a threshold (SNAP or POD descriptors)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("posterior", help="posterior (Zarr group written by popsdask fit)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--members", type=number(1, kind=int), help="posterior members besides the MLE")
    what.add_argument("--monitor", action="store_true", help="write the LAMMPS monitor DIR/monitor.lmp")
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
    mon = p.add_argument_group("monitor (with --monitor)")
    mon.add_argument("--every", type=number(1, kind=int), default=100, help="output interval in steps")
    mon.add_argument(
        "--halt-above",
        type=number(0),
        default=None,
        metavar="EV_PER_ATOM",
        help="halt when the calibrated energy std per atom exceeds this; default: its largest value over the "
        "energy rows of the descriptor store (LAMMPS -var pops_halt X overrides either at run time)",
    )
    mon.add_argument(
        "--modes", type=number(0, kind=int), default=4, help="directions of the per-atom grade (support score)"
    )
    mon.add_argument(
        "--n-samples",
        type=number(1, kind=int),
        default=None,
        help="members of the band's min/max, as popsdask predict's --n-samples (default: predict's)",
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
        from ..atomistic.monitor import MONITORED_BACKENDS
    except ImportError as err:
        raise InputError(
            f"popsdask export needs the atomistic extra (pip install 'popsdask[atomistic]'): {err}"
        ) from err
    backend = str((attrs.get("descriptor") or {}).get("backend", "snap"))
    if args.monitor and backend not in MONITORED_BACKENDS:  # before its settings: ACE's need python-ace
        raise InputError(
            f"--monitor: the {backend} descriptors of {desc} have no LAMMPS per-atom compute the monitor can sum "
            "(it needs SNAP's compute sna/atom or POD's compute pod/atom)"
        )
    try:
        settings = backend_from_attrs(attrs, where=desc)  # the store's descriptor (SNAP, ...)
    except InputError as err:
        raise InputError(f"{err} (pass --descriptors STORE)") from err
    kind = post.kind_
    if args.method not in kind.methods:
        use = " or ".join(kind.methods)
        raise InputError(f"--method {args.method}: an {kind.name} posterior {kind.method_note} (use {use})")
    if args.monitor:
        return _monitor(args, post, settings, desc, out)
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


def _monitor(args: argparse.Namespace, post: Any, settings: Any, desc: str, out: Any) -> int:
    """``--monitor``: the threshold's and the grade's training rows read, then the directory written."""
    from ..atomistic.monitor import MONITOR_INPUT, energy_rows, write_monitor
    from ..io.store import open_store

    if post.n_features != settings.n_features + int(bool(post.settings.get("fit_intercept", False))):
        raise InputError(
            f"{args.posterior}: {post.n_features} parameters, the descriptors of {desc} {settings.n_features} columns"
        )
    intercept = bool(post.settings.get("fit_intercept", False))
    training = energy_rows(open_store(desc), intercept)  # the default threshold and the grade's directions
    res = write_monitor(
        args.posterior,
        settings,
        out,
        training=training,
        halt=args.halt_above,
        every=args.every,
        modes=args.modes,
        n_samples=args.n_samples,
        method=args.method,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    print(
        f"wrote the monitor (every {args.every} steps; halt above {res['halt']:.6g} eV/atom calibrated energy std "
        f"per atom, {res['halt_source']}) -> {out}\n"
        f"use (in {out}): include mle.mod, then include {MONITOR_INPUT} before run; "
        "lmp ... -var pops_halt X -var pops_every N to override"
    )
    return 0
