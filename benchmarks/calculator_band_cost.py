"""Cost per call of the posterior's bands in the ASE calculator, against the MLE potential's calculator.

A small posterior is fitted on tungsten configurations labelled by the oracle's teacher (a W SNAP
shipped with LAMMPS); then on rattled bcc W cells of 128 and 1024 atoms three calculators are
called in turn, each ``--calls`` times with the atoms moved before every call:

- **mle**: the backend's calculator of the MLE (LAMMPS ``pair_style snap``/``pod``): energy,
  forces, stress;
- **bands**: :class:`~popsdask.atomistic.band_calculator.PosteriorCalculator`: the same plus the
  energy band and the per-atom bands and support (what it computes at every call);
- **bands+forces_std**: the same plus ``forces_std``, asked for (its 3N force rows);
- **mle+atom computes**: the MLE's calculator running the per-atom descriptor computes that
  **bands** reads (``compute sna/atom`` or ``pod/atom``) in its run, without the band's numpy
  work: the part of the bands' cost that is LAMMPS's.

The calls are interleaved, so every ratio compares calls made under the same machine load; the
figures are medians of the process CPU time per call (LAMMPS runs in this process, one thread)::

    python benchmarks/calculator_band_cost.py --backend snap --twojmax 4 --calls 31
    python benchmarks/calculator_band_cost.py --backend snap --twojmax 6 --calls 31
    python benchmarks/calculator_band_cost.py --backend pod --calls 31
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from ase.build import bulk
from ase.calculators.calculator import all_changes

from popsdask import fit
from popsdask.atomistic.band_calculator import PosteriorCalculator
from popsdask.atomistic.descriptors.base import RowBlock
from popsdask.atomistic.descriptors.pod import PodSettings
from popsdask.atomistic.lammps_backend import potentials_dir
from popsdask.atomistic.oracle import generate_tungsten_configurations
from popsdask.demo.tungsten import student_settings


def backend_of(args: argparse.Namespace):
    if args.backend == "snap":
        return student_settings(args.twojmax)  # qSNAP with the ZBL reference
    param = open(os.path.join(potentials_dir(), "Ta_param.pod")).read()
    return PodSettings(param=param.replace("species Ta", "species W"))


def cpu_per_call(calc, atoms, properties, rng) -> float:
    """Process CPU seconds of one fresh call (the atoms moved first, so nothing is cached)."""
    atoms.positions += rng.normal(scale=1e-3, size=atoms.positions.shape)
    calc.reset()
    t0 = time.process_time()
    calc.calculate(atoms, properties, all_changes)
    return time.process_time() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=("snap", "pod"), default="snap")
    p.add_argument("--twojmax", type=int, default=4, help="qSNAP 2J_max (4: 120 columns)")
    p.add_argument("--posterior", choices=("hypercube", "ensemble"), default="hypercube")
    p.add_argument("--configurations", type=int, default=40, help="training configurations")
    p.add_argument("--repeats", type=int, nargs="+", default=[4, 8], help="bcc cubic cells repeated (2 n^3 atoms)")
    p.add_argument("--calls", type=int, default=31)
    p.add_argument("--out", default=None, help="write the results as JSON")
    args = p.parse_args()

    backend = backend_of(args)
    cfgs = generate_tungsten_configurations(args.configurations, seed=0, max_atoms=64)
    rows = RowBlock.concat([backend.rows(c, config_index=i) for i, c in enumerate(cfgs)])
    post = fit(rows.X, rows.y, posterior=args.posterior)
    calcs = {
        "mle": (backend.calculator(post.coef_), ["energy", "forces", "stress"]),
        "bands": (PosteriorCalculator(post, backend), ["energy", "forces", "stress", "energy_std"]),
        "bands+forces_std": (PosteriorCalculator(post, backend), ["energy", "forces", "stress", "forces_std"]),
        "mle+atom computes": (backend.calculator(post.coef_), ["energy", "forces", "stress"]),
    }
    calcs["mle+atom computes"][0].atom_computes = backend.atom_computes()
    rng = np.random.default_rng(0)
    out = {"backend": args.backend, "features": backend.n_features, "posterior": args.posterior, "cells": []}
    for n in args.repeats:
        atoms = bulk("W", "bcc", a=3.165, cubic=True).repeat(n)
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        times: dict[str, list[float]] = {name: [] for name in calcs}
        for calc, props in calcs.values():  # warm-up: potential files, LAMMPS styles
            cpu_per_call(calc, atoms, props, rng)
        for _ in range(args.calls):
            for name, (calc, props) in calcs.items():
                times[name].append(cpu_per_call(calc, atoms, props, rng))
        med = {name: float(np.median(t)) for name, t in times.items()}
        cell = {
            "atoms": len(atoms),
            "cpu_s_per_call": {k: round(v, 5) for k, v in med.items()},
            "ratio_bands": round(med["bands"] / med["mle"], 3),
            "ratio_bands_forces_std": round(med["bands+forces_std"] / med["mle"], 3),
            "ratio_atom_computes": round(med["mle+atom computes"] / med["mle"], 3),
        }
        out["cells"].append(cell)
        print(
            f"{len(atoms)} atoms, {backend.n_features} features: mle {med['mle'] * 1e3:.1f} ms, "
            f"bands {cell['ratio_bands']:.2f}x, bands+forces_std {cell['ratio_bands_forces_std']:.2f}x, "
            f"mle+atom computes {cell['ratio_atom_computes']:.2f}x",
            flush=True,
        )
    print(json.dumps(out, indent=2))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
