"""Validation of the property suite: propagate the tungsten POPS posterior to the paper's property suite.

Runs the seven properties (phases, transformation paths, phonons, self-interstitials, surfaces,
vacancy migration, and the rank statistics computed from them) for the MLE, ``--samples``
posterior members and the reference (oracle) potential on a Dask LocalCluster, then writes the
paper-format tables and figures. Equivalent to::

    popsdask properties RUN/posterior.zarr --descriptors RUN/descriptors.zarr --samples 100 \\
        --properties phases,paths,phonons,interstitials,surfaces,vacancy -o OUT --n-workers 2

Re-running with the same OUT resumes: finished (member, property) parts are not recomputed.
First measure the cost per member with ``--samples 2`` to size the cluster (printed at the end
and stored in ``OUT/run.json``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import xarray as xr

from popsdask.atomistic.descriptors.snap import SnapSettings
from popsdask.properties.catalogue import PROPERTIES
from popsdask.properties.runner import run_properties
from popsdask.properties.tables import write_report
from popsdask.runtime.cluster import connect


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="directory of `popsdask demo --tungsten` (posterior.zarr, descriptors.zarr)")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--properties", default=",".join(PROPERTIES))
    ap.add_argument("--n-workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    run = Path(args.run)
    settings = SnapSettings.from_attrs(xr.open_zarr(run / "descriptors.zarr", consolidated=False).attrs["snap"])
    t0 = time.perf_counter()
    with connect("local", n_workers=args.n_workers, threads_per_worker=1) as client:
        results = run_properties(
            run / "posterior.zarr", settings, args.properties.split(","), args.output,
            n_samples=args.samples, seed=args.seed, client=client,
        )  # fmt: skip
    rep = write_report(results, Path(args.output) / "report")
    print(rep["markdown"])
    summary = json.loads((Path(args.output) / "run.json").read_text())
    print(f"wall time {time.perf_counter() - t0:.0f} s; median cost per member (s): {summary['cost_per_member']}")


if __name__ == "__main__":
    main()
