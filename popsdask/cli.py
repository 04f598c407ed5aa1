"""The ``popsdask`` command line: fit, predict, report, demo (thin shells over the API)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ._validate import InputError
from .cluster import add_cluster_arguments, connect_from_args


def _fit(args: argparse.Namespace) -> None:
    from .estimator import fit
    from .store import atomic_directory

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    corrections = None
    if args.posterior == "ensemble":
        # stream the corrections next to the output; save() moves them into the group
        corrections = atomic_directory(out)[1].with_suffix(".corrections.zarr")
    with connect_from_args(args):
        t0 = time.perf_counter()
        post = fit(
            args.store,
            posterior=args.posterior,
            leverage_percentile=args.leverage_percentile,
            mode_threshold=args.mode_threshold,
            percentile_clipping=args.percentile_clipping,
            fit_intercept=args.fit_intercept,
            corrections_path=corrections,
            progress=not args.quiet,
        )
        post.save(out, overwrite=args.overwrite)
    if corrections is not None:
        import shutil

        shutil.rmtree(corrections, ignore_errors=True)
    print(
        f"fitted {post.n_rows_} rows x {post.n_features} features in {time.perf_counter() - t0:.1f} s: "
        f"alpha={post.alpha_:.4g} lambda={post.lambda_:.4g} selected={post.n_selected_} "
        f"modes={0 if post.basis_ is None else post.basis_.shape[1]} -> {out}"
    )


def _predict(args: argparse.Namespace) -> None:
    from .ensemble import predict_ensemble

    with connect_from_args(args):
        ds = predict_ensemble(
            args.posterior,
            args.store,
            args.output,
            n_samples=args.n_samples,
            method=args.method,
            seed=args.seed,
            overwrite=args.overwrite,
            dtype="float32" if args.float32 else "float64",
            progress=not args.quiet,
        )
    print(f"wrote {dict(ds['prediction'].sizes)} predictions -> {args.output}")
    if "metrics" in ds.attrs:
        from .report import metrics_table

        print(metrics_table(json.loads(ds.attrs["metrics"])))


def _report(args: argparse.Namespace) -> None:
    from .report import write_report

    out = args.output or str(Path(args.predictions).with_suffix("")) + "-report"
    result = write_report(args.predictions, out)
    print(result["table"])
    print(f"report: {Path(out) / 'report.md'}")


def _demo(args: argparse.Namespace) -> None:
    if args.tungsten:
        try:
            from .atomistic.demo import run_tungsten_demo
        except ImportError as err:
            raise SystemExit(f"popsdask demo --tungsten needs the atomistic extra: {err}") from err
        with connect_from_args(args) as client:
            extra = {} if args.configs is None else {"n_configs": args.configs}
            result = run_tungsten_demo(
                args.output, seed=args.seed, client=client, twojmax=args.twojmax, n_samples=args.n_samples, **extra
            )
        print(json.dumps(result, indent=2, default=str))
        return
    from .demo import ROWS_PER_CONFIG, write_demo_stores
    from .ensemble import predict_ensemble
    from .estimator import fit
    from .report import write_report

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.memory_limit is None:
        args.memory_limit = "2GB"
    with connect_from_args(args):
        n_train = args.configs or 40000
        n_test = n_train // 4
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
        post = fit(out / "train.zarr", progress=True)
        post.save(out / "posterior.zarr", overwrite=True)
        predict_ensemble(
            post,
            out / "test.zarr",
            out / "predictions.zarr",
            n_samples=args.n_samples,
            seed=args.seed,
            overwrite=True,
            progress=True,
        )
    result = write_report(out / "predictions.zarr", out / "report")
    print(result["table"])
    print(f"demo finished in {time.perf_counter() - t0:.1f} s; report: {out / 'report' / 'report.md'}")


def _properties(args: argparse.Namespace) -> None:
    from .atomistic.snap import SnapSettings
    from .properties.report import write_report
    from .properties.runner import PROPERTIES, RUNNERS, run_properties

    props = [p.strip() for p in args.properties.split(",") if p.strip()]
    bad = [p for p in props if p not in PROPERTIES]
    if bad:
        raise InputError(f"unknown properties {bad}; use {','.join(PROPERTIES)}")
    if args.method not in RUNNERS:
        raise InputError(f"--method {args.method}: available {sorted(RUNNERS)}")
    if args.descriptors is None:
        desc = Path(args.posterior).parent / "descriptors.zarr"
        if not desc.exists():
            raise InputError("--descriptors STORE is needed (a descriptor store whose attrs hold the SNAP settings)")
        args.descriptors = str(desc)
    import xarray as xr

    attrs = xr.open_zarr(args.descriptors, consolidated=False).attrs
    if "snap" not in attrs:
        raise InputError(f"{args.descriptors}: no 'snap' attribute with the descriptor settings")
    settings = SnapSettings.from_attrs(attrs["snap"])
    options = json.loads(args.options) if args.options else {}
    out = Path(args.output)
    t0 = time.perf_counter()
    with connect_from_args(args) as client:
        results = run_properties(
            args.posterior,
            settings,
            props,
            out,
            n_samples=args.samples,
            seed=args.seed,
            reference=args.reference,
            client=client,
            options=options,
            progress=not args.quiet,
            method=args.method,
            sampling=args.sampling,
        )
    rep = write_report(results, out / "report")
    print(rep["markdown"])
    print(
        f"properties {','.join(props)} for {args.samples} members in {time.perf_counter() - t0:.1f} s; "
        f"results: {out}; report: {out / 'report' / 'report.md'}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="popsdask",
        description="Out-of-core POPS regression: misspecification-aware UQ for linear models on Dask.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="fit a POPS posterior to a descriptor store")
    p.add_argument("store", help="descriptor store (Zarr group)")
    p.add_argument("-o", "--output", required=True, help="posterior to write (Zarr group)")
    p.add_argument("--posterior", choices=("hypercube", "ensemble"), default="hypercube")
    p.add_argument("--leverage-percentile", type=float, default=50.0)
    p.add_argument("--mode-threshold", type=float, default=1e-8)
    p.add_argument("--percentile-clipping", type=float, default=0.0)
    p.add_argument("--fit-intercept", action="store_true")
    p.set_defaults(func=_fit)

    p = sub.add_parser("predict", help="ensemble predictions of a store with a posterior")
    p.add_argument("posterior")
    p.add_argument("store")
    p.add_argument("-o", "--output", required=True, help="prediction store to write (Zarr group)")
    p.add_argument("--n-samples", type=int, default=500)
    p.add_argument("--method", choices=("uniform", "sobol", "latin", "halton"), default="uniform")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--float32", action="store_true", help="store the prediction array as float32")
    p.set_defaults(func=_predict)

    p = sub.add_parser("report", help="metrics table and figures of a prediction store")
    p.add_argument("predictions")
    p.add_argument("-o", "--output", default=None, help="report directory")
    p.set_defaults(func=_report)

    p = sub.add_parser("demo", help="the main job on the embedded default problem")
    p.add_argument("-o", "--output", default="demo-output")
    p.add_argument(
        "--configs", type=int, default=None, help="configurations (default 40000 training; --tungsten: 3000 in all)"
    )
    p.add_argument("--chunk-rows", type=int, default=35000)
    p.add_argument("--n-samples", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--tungsten", action="store_true", help="the tungsten qSNAP demo through LAMMPS (needs popsdask[atomistic])"
    )
    p.add_argument("--twojmax", type=int, default=4, help="--tungsten: the student's SNAP twojmax")
    p.set_defaults(func=_demo)

    p = sub.add_parser("properties", help="propagate a posterior to material properties (tungsten suite)")
    p.add_argument("posterior", help="posterior store (Zarr group)")
    p.add_argument(
        "--descriptors",
        default=None,
        help="descriptor store whose attrs hold the SNAP settings (default: next to the posterior)",
    )
    p.add_argument("--samples", type=int, default=100, help="ensemble members besides the MLE")
    p.add_argument("--properties", default="phases,paths,phonons,interstitials,surfaces,vacancy")
    p.add_argument("-o", "--output", required=True, help="results directory (resumes if it exists)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", default="resample", help="resample (brute force) or implicit")
    p.add_argument("--sampling", choices=("uniform", "sobol", "latin", "halton"), default="uniform")
    p.add_argument("--reference", default="W_2940_2017_2", help="reference (oracle) potential")
    p.add_argument("--options", default=None, help='per-property options as JSON, e.g. \'{"phases": {"n_eos": 5}}\'')
    p.set_defaults(func=_properties)

    from .bench import add_bench_parser

    add_bench_parser(sub)  # its own options: each case runs in a child process

    for name, sp in sub.choices.items():
        if name == "bench":
            continue
        if name != "report":
            add_cluster_arguments(sp)
            sp.add_argument("--quiet", action="store_true", help="no progress bars or dashboard link")
        if name in ("fit", "predict"):
            sp.add_argument("--overwrite", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (InputError, FileExistsError, FileNotFoundError) as err:
        print(f"popsdask {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
