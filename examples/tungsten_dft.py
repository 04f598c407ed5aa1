"""qSNAP + POPS on the FitSNAP tungsten DFT set: pointwise UQ on a held-out 30 % (paper Fig. 3).

Reads ``../shared/data/tungsten-dft/W_dft.extxyz.xz`` (9,723 pure-W configurations from the
FitSNAP repository's ``examples/WBe_PRB2019/JSON``) relative to the project root, or any
extxyz / FitSNAP JSON files or directories given with ``--data``. To obtain the data yourself::

    git clone https://github.com/FitSNAP/FitSNAP.git
    python examples/tungsten_dft.py --data FitSNAP/examples/WBe_PRB2019/JSON

(W-Be and Be configurations are then skipped and reported: the descriptors here cover W only.)

    python examples/tungsten_dft.py --outdir tungsten-dft-run [--max-configs 2000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from popsdask import open_store
from popsdask.atomistic.configurations import read_configurations
from popsdask.atomistic.descriptor_store import build_descriptor_store
from popsdask.atomistic.descriptors.snap import SnapSettings, write_snap_potential
from popsdask.atomistic.pointwise import pointwise_report
from popsdask.atomistic.split import select_split
from popsdask.engine.estimator import fit
from popsdask.runtime.cluster import connect

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tungsten-dft" / "W_dft.extxyz.xz"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", default=[str(DEFAULT)])
    p.add_argument("--outdir", default="tungsten-dft-run")
    p.add_argument("--max-configs", type=int, default=None, help="every k-th configuration")
    p.add_argument("--twojmax", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-samples", type=int, default=500)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    if not all(Path(d).exists() for d in args.data):
        sys.exit(f"data not found: {args.data} (see this script's docstring for how to get it)")
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    t = {}
    t0 = time.perf_counter()
    res = read_configurations(args.data, elements=["W"])
    cfgs = res.configurations
    if args.max_configs and len(cfgs) > args.max_configs:
        cfgs = cfgs[:: int(np.ceil(len(cfgs) / args.max_configs))]
    print(f"{res.summary()}; using {len(cfgs)}", flush=True)
    t["read_s"] = time.perf_counter() - t0
    settings = SnapSettings(twojmax=args.twojmax)  # the DFT data carries the full energy
    with connect("local", n_workers=args.workers, threads_per_worker=1, memory_limit="4GB", quiet=True) as client:
        t0 = time.perf_counter()
        build = build_descriptor_store(
            out / "descriptors.zarr", cfgs, settings, test_fraction=0.3, seed=args.seed, client=client, overwrite=True
        )
        t["descriptors_s"] = time.perf_counter() - t0
        ds = open_store(out / "descriptors.zarr")
        t0 = time.perf_counter()
        post = fit(select_split(ds, "train"))
        post.save(out / "posterior.zarr", overwrite=True)
        t["fit_s"] = time.perf_counter() - t0
        write_snap_potential(post.coef_, settings, out / "potentials" / "mle", comment="MLE")
        t0 = time.perf_counter()
        rep = pointwise_report(post, select_split(ds, "test"), out, n_samples=args.n_samples, seed=args.seed)
        t["predict_and_report_s"] = time.perf_counter() - t0
    summary = {"store": build, "metrics": rep["metrics"], "timings": t, "report": rep["report"]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
