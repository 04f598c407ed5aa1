"""CPU cost of ``popsdask select`` on MD-sized frames: a frame's energy row from its per-atom rows
(what selection uses) against the full energy and force rows, and the greedy batch.

Rattled bcc W supercells of ``--atoms`` atoms; process CPU time (one process), so the figures
barely move with the load of a shared machine; the two row routes are interleaved::

    python benchmarks/selection_cost.py --atoms 2000 --frames 5 --pool 5000 --picks 50
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np
from ase.build import bulk

from popsdask.atomistic.configurations import Configuration
from popsdask.atomistic.descriptors.base import atom_rows
from popsdask.atomistic.descriptors.snap import SnapSettings
from popsdask.atomistic.selection import greedy_max_determinant


def frame(n_atoms: int, rng: np.random.Generator) -> Configuration:
    """A rattled bcc W supercell of at least ``n_atoms`` atoms, labelled with zeros (rows need labels)."""
    k = int(np.ceil((n_atoms / 2) ** (1 / 3)))
    atoms = bulk("W", "bcc", a=3.18, cubic=True).repeat(k)
    atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    cfg = Configuration.from_atoms(atoms, name=f"bcc{len(atoms)}")
    return replace(cfg, energy=0.0, forces=np.zeros((cfg.n_atoms, 3)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--atoms", type=int, default=2000)
    p.add_argument("--frames", type=int, default=5, help="frames timed per route")
    p.add_argument("--twojmax", type=int, default=4, help="qSNAP 2J_max (4: 120 columns)")
    p.add_argument("--pool", type=int, default=5000, help="pool size of the greedy timing")
    p.add_argument("--picks", type=int, default=50)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    settings = SnapSettings(twojmax=args.twojmax)
    cfgs = [frame(args.atoms, rng) for _ in range(args.frames)]
    atom_rows(settings, cfgs[0]), settings.rows(cfgs[0])  # warm-up: LAMMPS and its computes
    cpu = {"per_atom_rows": 0.0, "full_rows": 0.0}
    for c in cfgs:  # interleaved
        t0 = time.process_time()
        atom_rows(settings, c).X.sum(axis=0)
        t1 = time.process_time()
        settings.rows(c)
        cpu["per_atom_rows"] += t1 - t0
        cpu["full_rows"] += time.process_time() - t1
    V = rng.normal(size=(args.pool, settings.n_features))
    t0 = time.process_time()
    greedy_max_determinant(V, args.picks)
    greedy = time.process_time() - t0
    out = {
        "atoms": cfgs[0].n_atoms,
        "features": settings.n_features,
        "s_per_frame": {k: v / len(cfgs) for k, v in cpu.items()},
        "ratio_full_over_per_atom": cpu["full_rows"] / cpu["per_atom_rows"],
        f"greedy_s_{args.pool}x{settings.n_features}_{args.picks}_picks": greedy,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
