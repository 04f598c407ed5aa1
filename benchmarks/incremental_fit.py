"""Adding rows to a fit against fitting all rows from scratch, on the demo's training store.

The demo's training rows are written three ways: all of them (one store), and split by
configuration into an old store (the first ``1 - added`` of the configurations) and a new one.
The old store is fitted once; then, alternately, the fit of all rows from scratch and the fit that
adds the new store to the old posterior (``fit(new, previous=old_posterior)``), on Dask's threaded
scheduler. Prints the rows each pass read, the ratio of the median wall times (added / from
scratch), and the largest relative difference of the two posteriors beside that between two fits
from scratch of the same rows in other chunks (the round-off the fit's conditioning amplifies).

    python benchmarks/incremental_fit.py [--configs 40000] [--added 0.25] [--repeats 3]

With ``--snap TWOJMAX`` the rows are instead those of a W qSNAP of that 2J (the demo's student
settings) on ``--configs`` generated W configurations labelled by the reference potential: an
ill-conditioned design, where two fits from scratch differ far more than the demo's.

    python benchmarks/incremental_fit.py --snap 6 --configs 600 --repeats 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import dask
import numpy as np

from popsdask import fit, open_store, write_store
from popsdask.atomistic.descriptor_store import build_descriptor_store
from popsdask.atomistic.oracle import generate_tungsten_configurations
from popsdask.demo.morse import ROWS_PER_CONFIG, write_demo_stores
from popsdask.demo.tungsten import student_settings


def split_store(all_path: Path, old_path: Path, new_path: Path, n_old_rows: int) -> None:
    """The rows before ``n_old_rows`` to ``old_path``, the others to ``new_path``, with their weights."""
    ds = open_store(all_path)
    chunk = int(ds["X"].data.chunks[0][0])
    for path, rows, rows_per_chunk in (
        (old_path, slice(0, n_old_rows), chunk),
        (new_path, slice(n_old_rows, None), chunk),
        (all_path.with_name("rechunked.zarr"), slice(None), chunk // 3),
    ):
        part = ds.isel(row=rows)
        X, y, w = (part[k].data for k in ("X", "y", "weight"))
        write_store(path, X, y, weight=w, attrs=ds.attrs, chunk_rows=rows_per_chunk)


def relative_difference(post, reference) -> float:
    """The largest over coef_, sigma_, misspecification_sigma_ and the box of max |a - b| / max |b|."""
    names = ("coef_", "sigma_", "misspecification_sigma_", "lower_", "upper_")
    return max(
        float(np.max(np.abs(getattr(post, k) - getattr(reference, k))) / np.max(np.abs(getattr(reference, k))))
        for k in names
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", type=int, default=40_000, help="training configurations (the demo's)")
    ap.add_argument("--added", type=float, default=0.25, help="fraction of the configurations in the new store")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--snap", type=int, metavar="TWOJMAX", help="W qSNAP rows of this 2J instead of the demo's")
    args = ap.parse_args()
    n_old_configs = round(args.configs * (1 - args.added))
    with tempfile.TemporaryDirectory() as tmp, dask.config.set(scheduler="threads"):
        d = Path(tmp)
        if args.snap is None:
            write_demo_stores(d / "all.zarr", d / "test.zarr", n_train=args.configs, n_test=10)
            n_old_rows = n_old_configs * ROWS_PER_CONFIG
        else:
            configurations = generate_tungsten_configurations(args.configs, max_atoms=16)
            build_descriptor_store(d / "all.zarr", configurations, student_settings(args.snap))
            n_old_rows = int((open_store(d / "all.zarr")["config"].values < n_old_configs).sum())
        split_store(d / "all.zarr", d / "old.zarr", d / "new.zarr", n_old_rows)
        old = fit(d / "old.zarr").save(d / "old-posterior.zarr")
        times: dict[str, list[float]] = {"scratch": [], "added": []}
        for _ in range(args.repeats):
            for name in ("scratch", "added"):
                t0 = time.perf_counter()
                post = fit(d / "all.zarr") if name == "scratch" else fit(d / "new.zarr", previous=old)
                times[name].append(time.perf_counter() - t0)
                print(f"{name:8s} {times[name][-1]:.3f} s  rows read {post.provenance['rows read']}", flush=True)
                if name == "scratch":
                    reference = post
        diff = relative_difference(post, reference)
        rechunked = relative_difference(fit(d / "rechunked.zarr"), reference)
    scratch, added = (float(np.median(times[k])) for k in ("scratch", "added"))
    rows = post.provenance["rows read"]
    print(
        f"{rows['passes 2-4']} rows x {post.n_features} features ({args.configs} configurations, "
        f"{args.added:.0%} added): pass 1 read {rows['pass 1']} rows added against {rows['passes 2-4']} from "
        f"scratch; passes 2-4 read {rows['passes 2-4']} in both; median wall added / scratch "
        f"{added:.3f} / {scratch:.3f} s = {added / scratch:.3f}; largest relative difference {diff:.1e} "
        f"(from scratch in chunks a third as long: {rechunked:.1e}; condition number {reference.condition_number_:.1e})"
    )
    for name, p in (("scratch", reference), ("added", post)):
        print(
            f"{name}: lambda {p.lambda_:.6g}, alpha {p.alpha_:.6g}, {p.n_iter_} iterations, {p.n_selected_} rows kept"
        )


if __name__ == "__main__":
    main()
