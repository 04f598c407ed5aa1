"""``popsdask demo``: the main job (store, fit, predict, report) on the embedded default problem."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..core.validation import number
from .common import add_cluster, add_seed

HELP = "the main job on the embedded default problem"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default="demo-output", help="output directory (its stores are replaced)")
    p.add_argument(
        "--configs",
        type=number(1, kind=int),
        default=None,
        help="configurations; default: 40000 training (--tungsten: 3000 in all)",
    )
    p.add_argument("--chunk-rows", type=number(1, kind=int), default=35000, help="rows per Zarr chunk")
    p.add_argument("--n-samples", type=number(1, kind=int), default=500, help="posterior samples")
    add_seed(p, "seed of the data and the samples")
    p.add_argument(
        "--tungsten", action="store_true", help="the tungsten qSNAP demo through LAMMPS (needs popsdask[atomistic])"
    )
    p.add_argument("--twojmax", type=int, default=4, help="--tungsten: the student's SNAP twojmax")
    add_cluster(p)


def run(args: argparse.Namespace) -> int:
    from ..runtime.cluster import connect_from_args

    if args.tungsten:
        try:
            from ..demo.tungsten import run_tungsten_demo
        except ImportError as err:
            raise SystemExit(f"popsdask demo --tungsten needs the atomistic extra: {err}") from err
        with connect_from_args(args) as client:
            extra = {} if args.configs is None else {"n_configs": args.configs}
            result = run_tungsten_demo(
                args.output, seed=args.seed, client=client, twojmax=args.twojmax, n_samples=args.n_samples, **extra
            )
        print(json.dumps(result, indent=2, default=str))
        return 0
    from ..demo.morse import ROWS_PER_CONFIG, write_demo_stores
    from ..engine.estimator import fit
    from ..engine.predictions import predict_ensemble
    from ..evaluation.report import write_report

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.memory_limit is None:
        args.memory_limit = "2GB"
    with connect_from_args(args):
        n_train = args.configs or 40000
        n_test = n_train // 4
        if not args.quiet:
            print(
                f"[popsdask] generating {n_train} + {n_test} configurations "
                f"({n_train * ROWS_PER_CONFIG} + {n_test * ROWS_PER_CONFIG} rows) in chunks",
                flush=True,
            )
        write_demo_stores(
            out / "train.zarr",
            out / "test.zarr",
            n_train=n_train,
            n_test=n_test,
            seed=args.seed,
            chunk_rows=args.chunk_rows,
        )
        post = fit(out / "train.zarr", progress=not args.quiet)
        post.save(out / "posterior.zarr", overwrite=True)
        predict_ensemble(
            post,
            out / "test.zarr",
            out / "predictions.zarr",
            n_samples=args.n_samples,
            seed=args.seed,
            overwrite=True,
            progress=not args.quiet,
        )
    result = write_report(out / "predictions.zarr", out / "report")
    print(result["table"])
    print(f"demo finished in {time.perf_counter() - t0:.1f} s; report: {out / 'report' / 'report.md'}")
    return 0
