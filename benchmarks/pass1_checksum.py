"""What the per-chunk checksums add to pass 1 (the resume fingerprint).

Pass 1 with checksums (:func:`popsdask.engine.passes.statistics_pass`, what
every fit runs) against the same tasks without them, on one store, on Dask's threaded scheduler,
alternating the two so that machine load hits both alike; prints each run and the ratios of the
medians of wall time and of this process's CPU time (all threads; less sensitive to other load).

    python benchmarks/pass1_checksum.py [--rows 400000] [--features 120] [--repeats 7]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import dask
import numpy as np
from dask.delayed import delayed

from popsdask import write_store
from popsdask.core.stats import combine_stats
from popsdask.engine.design import design_from, reading
from popsdask.engine.execution import compute, tree_reduce
from popsdask.engine.passes import _checked_stats, statistics_pass


def without_checksums(design) -> None:
    parts = [
        delayed(reading(_checked_stats), pure=True)(xb, yb, wb, start=s, source=design.source)
        for (xb, yb, wb), s in zip(design.blocks(), design.row_starts, strict=True)
    ]
    compute(tree_reduce(parts, combine_stats, "gram"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--features", type=int, default=120)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp, dask.config.set(scheduler="threads"):
        X = rng.normal(size=(args.rows, args.features))
        store = write_store(Path(tmp) / "s.zarr", X, X[:, 0] + rng.normal(size=args.rows), weight=np.ones(args.rows))
        del X
        design = design_from(store)
        runs: dict[str, list[tuple[float, float]]] = {"with": [], "without": []}
        for _ in range(args.repeats):
            for name, run in (("without", without_checksums), ("with", statistics_pass)):
                t0, c0 = time.perf_counter(), time.process_time()
                run(design)
                runs[name].append((time.perf_counter() - t0, time.process_time() - c0))
                print(f"{name:8s} wall {runs[name][-1][0]:.3f} s  cpu {runs[name][-1][1]:.3f} s", flush=True)
    wall = {k: float(np.median([r[0] for r in v])) for k, v in runs.items()}
    cpu = {k: float(np.median([r[1] for r in v])) for k, v in runs.items()}
    print(
        f"{args.rows} x {args.features} float64, {len(design.blocks())} chunks, pass 1 medians without / with "
        f"checksums: wall {wall['without']:.3f} / {wall['with']:.3f} s (ratio {wall['with'] / wall['without']:.4f}), "
        f"cpu {cpu['without']:.3f} / {cpu['with']:.3f} s (ratio {cpu['with'] / cpu['without']:.4f})"
    )


if __name__ == "__main__":
    main()
