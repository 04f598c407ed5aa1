"""Cost of the complete-ensemble envelope against its numpy floor, in one run.

The envelope of an ``ensemble`` posterior over all its corrections is a (rows × corrections ×
features) product reduced to a min and a max per row. popsdask computes it blockwise on Dask
(``popsdask.engine.predictions.correction_range``, rows × 2048-correction blocks); the floor is the same
products by numpy, block by block, reduced in place, on the same threads.

    python benchmarks/complete_envelope.py --rows 30000 --corrections 50000 --features 120 --repeats 3

(``popsdask bench --cases envelope --envelope-sizes RxCxF`` runs the same two in separate
processes, for their own peak RSS.)

Prints one JSON line: medians of the two timings and their ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import dask.array as da
import numpy as np
from bench import envelope_floor  # benchmarks/bench.py: this script's directory is on sys.path


def numpy_floor(X: np.ndarray, C: np.ndarray, rows: int = 4096, cols: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    return envelope_floor(X, C, rows, cols)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=30000)
    p.add_argument("--corrections", type=int, default=50000)
    p.add_argument("--features", type=int, default=120)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    from popsdask import Posterior
    from popsdask.engine.predictions import correction_range

    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.rows, args.features))
    C = rng.normal(size=(args.corrections, args.features)) * 1e-3
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corr.zarr"
        da.from_array(C, chunks=(65536, args.features)).to_zarr(str(path), zarr_format=3)
        post = Posterior(
            coef_=np.zeros(args.features),
            sigma_=np.eye(args.features),
            alpha_=1.0,
            lambda_=1.0,
            misspecification_sigma_=np.eye(args.features),
            kind="ensemble",
            corrections_=da.from_zarr(str(path)),
        )
        Xd = da.from_array(X, chunks=(65536, args.features))
        t_dask, t_numpy = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            lo, hi = da.compute(*correction_range(Xd, post, Xd @ post.coef_))
            t_dask.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            flo, fhi = numpy_floor(X, C)
            t_numpy.append(time.perf_counter() - t0)
        assert np.allclose(lo, flo) and np.allclose(hi, fhi)
    flops = 2.0 * args.rows * args.corrections * args.features
    med_d, med_n = float(np.median(t_dask)), float(np.median(t_numpy))
    print(
        json.dumps(
            {
                "case": "complete_envelope",
                **vars(args),
                "popsdask_s": med_d,
                "numpy_floor_s": med_n,
                "ratio": med_d / med_n,
                "gflops_popsdask": flops / med_d / 1e9,
                # the process holds X and all corrections (numpy floor) besides the Dask run
                "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                "runs_popsdask_s": t_dask,
                "runs_numpy_s": t_numpy,
            }
        )
    )


if __name__ == "__main__":
    main()
