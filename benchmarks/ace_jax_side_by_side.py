"""Linear ACE with POPS: popsdask against ace-jax on the same data, split and basis size.

Both tools start from the labelled configurations and end with test-split
predictions and their POPS bands; each step runs as its own process and is timed by wall clock, with
the peak resident memory of its whole process tree (Dask workers included) sampled every 0.2 s.

- **popsdask**: ``descriptors --descriptor ace`` (python-ace rows on Dask workers, with the seeded
  70/30 split), ``fit --split train``, ``predict --split test --per-atom`` and ``report``; then,
  each with its own test prediction, ``calibrate --split train`` cross-conformal by group (for
  data unlike the training set) and by 5 random folds of configurations (for data like it).
- **ace-jax** (``aj fit --uq pops``, in its own virtual environment, ``--ace-jax-python``): trained
  and tested on extxyz files holding exactly popsdask's train and test configurations (written
  untimed from the store's ``split``). ``aj fit`` has no flag for the POPS leverage percentile, so
  a small wrapper sets ``FitConfig.pops_leverage_pct`` (0, its default, and 50 by default here),
  and has ace-jax save its test arrays (the ``run`` output layout of its own pipeline). ace-jax
  evaluates its envelope on 2,000 random force rows (its default; all 130,683 would need 35 GB),
  so force EVs are given on those rows for both tools, and on all rows for popsdask.

Both sides' numbers come from one function (:func:`band_summary`) with popsdask's conventions
(per-atom energies; symmetry zeros left out of coverage; |error|/std over rows with spread)::

    python benchmarks/ace_jax_side_by_side.py --out ajside \\
        --ace-jax-python /path/to/venv/bin/python --ace-functions 120 --aj-max-degree 9

ace-jax is a peer measured against, not a dependency: install it in a separate venv
(``python -m venv aj && aj/bin/pip install ace-jax==0.4.1``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tungsten-dft" / "W_dft.extxyz.xz"

#: run inside ace-jax's venv: argv = leverage percentile, then ``aj fit`` arguments
AJ_WRAPPER = """
import dataclasses, sys
import ace_jax.cli as cli
import ace_jax.fit.pipeline as pipeline
lev = float(sys.argv[1])
make = cli._fit_config
cli._fit_config = lambda a: dataclasses.replace(make(a), pops_leverage_pct=lev)
write = pipeline.write_outputs
pipeline.write_outputs = lambda res, out, layout=("run",), **kw: write(res, out, layout=(*layout, "run"), **kw)
sys.exit(cli.main(["fit", *sys.argv[2:]]))
"""


def tree_memory(root: psutil.Process) -> dict[str, int] | None:
    """RSS and PSS (bytes) summed over ``root`` and its descendants; None once ``root`` is gone."""
    try:
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return None
    total = {"rss": 0, "pss": 0}
    for p in tree:
        try:
            m = p.memory_full_info()
        except psutil.NoSuchProcess:
            continue
        total["rss"] += m.rss
        total["pss"] += m.pss
    return total


def timed(cmd: list[str], log: Path) -> dict[str, float]:
    """Run ``cmd`` (output to ``log``); wall seconds and the peak RSS and PSS (GB) of its process
    tree. RSS summed over processes counts shared pages once per process; PSS shares them out."""
    peak = {"rss": 0.0, "pss": 0.0}
    with open(log, "w") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        root = psutil.Process(proc.pid)

        def sample() -> None:
            while proc.poll() is None:
                total = tree_memory(root)
                if total is None:
                    return
                for k, v in total.items():
                    peak[k] = max(peak[k], v / 1e9)
                time.sleep(0.2)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        rc = proc.wait()
        wall = time.perf_counter() - t0
        th.join()
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed (exit {rc}); see {log}")
    where = f"{log.parent.name}/{log.stem}"
    print(f"  {wall:7.1f} s  {peak['rss']:5.2f} GB RSS  {peak['pss']:5.2f} GB PSS  {where}", flush=True)
    return {"wall_s": round(wall, 2), "peak_rss_gb": round(peak["rss"], 3), "peak_pss_gb": round(peak["pss"], 3)}


def band_summary(
    y: np.ndarray, mle: np.ndarray, std: np.ndarray, lo: np.ndarray, hi: np.ndarray, subset: np.ndarray | None = None
) -> dict[str, float]:
    """MAE, envelope violation, |error|/std and ±4σ coverage of one row kind (``lo``/``hi``: the
    envelope in the same frame as ``y``, on the rows ``subset`` when given, else on all rows)."""
    from popsdask.calibration.metrics import band_metrics, kind_tolerance, nll_floor

    tol, floor = kind_tolerance(y), nll_floor(y, mle)
    idx = np.arange(y.size) if subset is None else subset
    env = band_metrics(y[idx], mle[idx], std[idx], lo, hi, tol=tol, nll_floor=floor, curve=False)
    # ±std as the band where the envelope is not known: symmetry zeros are then |y|, |mle|, std <= tol
    full = band_metrics(y, mle, std, mle - std, mle + std, tol=tol, nll_floor=floor, curve=False)
    keys = (
        "n",
        "n_symmetry_zeros",
        "mae_mle",
        "mean_abs_error_over_std",
        "median_abs_error_over_std",
        "coverage_4sigma",
        "mean_std",
    )
    out = {k: full[k] for k in keys}
    out |= {
        "n_envelope": int(idx.size),
        "envelope_violation": env["envelope_violation"],
        "mean_envelope_width": env["mean_envelope_width"],
    }
    return out


#: the popsdask command line of this interpreter
POPSDASK = [sys.executable, "-m", "popsdask.cli"]


def cluster_flags(args: argparse.Namespace) -> list[str]:
    """The same local cluster for every popsdask step: ``--n-workers`` one-thread workers."""
    return ["--n-workers", str(args.n_workers), "--threads-per-worker", "1", "--memory-limit", "4GB", "--quiet"]


def ev_on_rows(f: dict[str, np.ndarray], idx: np.ndarray) -> float:
    """popsdask's force EV on the rows ``idx`` (those ace-jax's envelope was evaluated on)."""
    env = band_summary(f["y"], f["mle"], f["std"], f["min"][idx], f["max"][idx], subset=idx)
    return env["envelope_violation"]


def run_popsdask(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """The four popsdask steps; per-step wall and peak RSS, and the test-split summaries."""
    d = out / "popsdask"
    d.mkdir(parents=True, exist_ok=True)
    c, pd = cluster_flags(args), POPSDASK
    store, post, pred = d / "descriptors.zarr", d / "posterior.zarr", d / "pred.zarr"
    steps = {
        "descriptors": [
            *pd,
            "descriptors",
            str(args.data),
            "-o",
            str(store),
            "--descriptor",
            "ace",
            "--ace-functions",
            str(args.ace_functions),
            "--ace-rcut",
            str(args.rcut),
            "--test-fraction",
            "0.3",
            "--seed",
            "0",
            *c,
            "--overwrite",
        ],
        "fit": [*pd, "fit", str(store), "-o", str(post), "--split", "train", *c, "--overwrite"],
        "predict": [
            *pd,
            "predict",
            str(post),
            str(store),
            "-o",
            str(pred),
            "--split",
            "test",
            "--per-atom",
            "--n-samples",
            "500",
            "--ev-curve",
            "none",
            *c,
            "--overwrite",
        ],
        "report": [*pd, "report", str(pred), "-o", str(d / "report"), "--overwrite"],
    }
    res: dict[str, Any] = {"steps": {k: timed(v, d / f"{k}.log") for k, v in steps.items()}}
    for q, v in popsdask_rows(pred).items():
        res[q] = band_summary(v["y"], v["mle"], v["std"], v["min"], v["max"])
    res["columns"] = int(xr_open(store).sizes["feature"])
    return res


#: the calibrations compared, each cross-conformal on the training configurations only:
#: label -> (``popsdask calibrate`` flags, table column suffix)
CALIBRATIONS = {
    "group": (["--group-by", "group", "--split", "train"], "calibrated by group"),
    "folds": (["--folds", "5", "--split", "train"], "calibrated by 5 random folds"),
}


def run_popsdask_calibrated(args: argparse.Namespace, out: Path, raw: dict[str, Any], label: str) -> dict[str, Any]:
    """The raw run plus ``calibrate`` with the flags of ``CALIBRATIONS[label]`` and a prediction
    of the test split with the calibrated band."""
    d = out / "popsdask"
    c, pd = cluster_flags(args), POPSDASK
    store, cal, pred = d / "descriptors.zarr", d / f"posterior-{label}.zarr", d / f"pred-{label}.zarr"
    flags = [*CALIBRATIONS[label][0], "--level", "0.95"]
    steps = {
        f"calibrate {label}": [*pd, "calibrate", str(d / "posterior.zarr"), str(store), *flags, "-o", str(cal), *c],
        f"predict {label}": [*pd, "predict", str(cal), str(store), "-o", str(pred), "--split", "test"]
        + ["--per-atom", "--n-samples", "500", "--ev-curve", "none", *c],
    }
    for path in (cal, pred):
        if path.exists():
            shutil.rmtree(path)
    res: dict[str, Any] = {"steps": {**raw["steps"], **{k: timed(v, d / f"{k}.log") for k, v in steps.items()}}}
    for q, v in popsdask_rows(pred).items():
        res[q] = band_summary(v["y"], v["mle"], v["std"], v["min"], v["max"])
    res["columns"] = raw["columns"]
    return res


def popsdask_rows(pred: Path) -> dict[str, dict[str, np.ndarray]]:
    """Per row kind, the prediction store's y, mle, std and sampled envelope (row order: the test
    configurations in order, each energy row then its atom-major force rows)."""
    ds = xr_open(pred)
    kind = ds["kind"].values
    return {
        q: {n: ds[n].values[kind == k] for n in ("y", "mle", "std", "min", "max")}
        for q, k in (("energy", 0), ("force", 1))
    }


def write_sets(store: Path, data: Path, sets: dict[Path, np.ndarray]) -> None:
    """extxyz files of the configurations where each per-configuration mask of the store is true
    (untimed data preparation); files that exist are kept."""
    from ase.io import write

    from popsdask.atomistic.configurations import read_configurations

    todo = {path: keep for path, keep in sets.items() if not path.exists()}
    if not todo:
        return
    n_atoms = xr_open(store)["n_atoms"].values
    cfgs = read_configurations([str(data)], elements=["W"]).configurations
    if len(cfgs) != len(n_atoms) or any(c.n_atoms != n for c, n in zip(cfgs, n_atoms, strict=True)):
        raise SystemExit(f"{data}: its configurations do not match the store {store}")
    atoms = [c.to_atoms(with_labels=True) for c in cfgs]
    for path, keep in todo.items():
        write(path, [a for a, k in zip(atoms, keep, strict=True) if k], format="extxyz")


def xr_open(store: Path) -> Any:
    import xarray as xr

    return xr.open_zarr(store, consolidated=False)


def run_acejax(args: argparse.Namespace, d: Path, train: Path, test: Path, leverage: float) -> dict[str, Any]:
    """One ``aj fit --uq pops`` at a leverage percentile into ``d``; wall, peak RSS and the test summaries."""
    cmd = [
        args.ace_jax_python,
        "-c",
        AJ_WRAPPER,
        str(leverage),
        "--train",
        str(train),
        "--test",
        str(test),
        "--order",
        str(args.aj_order),
        "--max-degree",
        str(args.aj_max_degree),
        "--rcut",
        str(args.rcut),
        "--uq",
        "pops",
        "--seed",
        "0",
        "--out",
        str(d),
    ]
    d.mkdir(parents=True, exist_ok=True)
    done = d / "steps.json"
    if args.reuse_acejax and done.exists() and (d / "pred_test_map.npz").exists():
        steps = json.loads(done.read_text())
    else:
        steps = {"aj fit": timed(cmd, d / "fit.log")}
        done.write_text(json.dumps(steps))
    res: dict[str, Any] = {"leverage_pct": leverage, "steps": steps}
    p = np.load(d / "pred_test_map.npz")
    env = np.load(d / "pops_envelope_test.npz")
    res["columns"] = int(json.loads((d / "config.json").read_text())["len_basis"])
    nat = p["nat"]
    # energies per atom (eV); the envelope file holds residuals y - φ·c* and its bounds in meV/atom
    ye, me, se = p["E"] / nat, p["E_mean"] / nat, np.sqrt(p["E_var"]) / nat
    res["energy"] = band_summary(ye, me, se, *envelope_frame(env, "E", ye, 1e-3))
    yf, mf, sf = p["F"].reshape(-1), p["F_mean"].reshape(-1), np.sqrt(p["F_var"]).reshape(-1)
    idx = env["F_index"]
    res["force"] = band_summary(yf, mf, sf, *envelope_frame(env, "F", yf[idx], 1.0), subset=idx)
    res["force_envelope_rows"] = idx.tolist()
    return res


def envelope_frame(env: Any, q: str, y: np.ndarray, unit: float) -> tuple[np.ndarray, np.ndarray]:
    """ace-jax's envelope (bounds on the residual about its c* prediction) as bounds on ``y``."""
    centre = y - env[f"{q}_resid"] * unit
    return centre + env[f"{q}_lo"] * unit, centre + env[f"{q}_hi"] * unit


def ev_on_acejax_rows(r: dict[str, Any]) -> float:
    """Force EV on the rows ace-jax's envelope was evaluated on (ace-jax: its own)."""
    if r["force"]["n_envelope"] < r["force"]["n"]:
        return r["force"]["envelope_violation"]
    return next(v for k, v in r.items() if k.startswith("force_ev_on_acejax_rows"))


def table(results: dict[str, Any]) -> str:
    """The README's side-by-side table."""
    cols = list(results)
    rows = [
        ("columns", lambda r: f"{r['columns']}"),
        ("end to end (wall, s)", lambda r: f"{sum(s['wall_s'] for s in r['steps'].values()):.1f}"),
        ("peak RSS (GB)", lambda r: f"{max(s['peak_rss_gb'] for s in r['steps'].values()):.2f}"),
        ("peak PSS (GB)", lambda r: f"{max(s.get('peak_pss_gb', float('nan')) for s in r['steps'].values()):.2f}"),
        (
            "energy / force MAE (meV/atom, eV/Å)",
            lambda r: f"{1e3 * r['energy']['mae_mle']:.2f} / {r['force']['mae_mle']:.4f}",
        ),
        ("energy EV (all rows)", lambda r: f"{100 * r['energy']['envelope_violation']:.2f} %"),
        (
            "force EV, all rows",
            lambda r: (
                f"{100 * r['force']['envelope_violation']:.2f} %"
                if r["force"]["n_envelope"] == r["force"]["n"]
                else "not computed"
            ),
        ),
        ("force EV, ace-jax's 2,000 random rows", lambda r: f"{100 * ev_on_acejax_rows(r):.2f} %"),
        (
            "energy / force mean \\|error\\|/std",
            lambda r: f"{r['energy']['mean_abs_error_over_std']:.3g} / {r['force']['mean_abs_error_over_std']:.3g}",
        ),
        (
            "energy / force median \\|error\\|/std",
            lambda r: f"{r['energy']['median_abs_error_over_std']:.3g} / {r['force']['median_abs_error_over_std']:.3g}",
        ),
        (
            "energy / force within ±4σ",
            lambda r: f"{100 * r['energy']['coverage_4sigma']:.2f} % / {100 * r['force']['coverage_4sigma']:.2f} %",
        ),
        ("force mean std (eV/Å)", lambda r: f"{r['force']['mean_std']:.3g}"),
    ]
    lines = ["| test split | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    lines += [f"| {name} | " + " | ".join(f(results[c]) for c in cols) + " |" for name, f in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--ace-jax-python", required=True, help="python of a venv with ace-jax installed")
    p.add_argument("--ace-functions", type=int, default=120, help="popsdask ACE B-functions per element")
    p.add_argument("--aj-order", type=int, default=4, help="ace-jax correlation order")
    p.add_argument("--aj-max-degree", type=int, default=9, help="ace-jax total degree (9: 113 basis entries)")
    p.add_argument("--rcut", type=float, default=5.0)
    p.add_argument("--leverage", default="0,50", help="ace-jax POPS leverage percentiles")
    p.add_argument("--n-workers", type=int, default=2)
    p.add_argument("--reuse-popsdask", action="store_true", help="reuse OUT/popsdask.json of an earlier run")
    p.add_argument("--reuse-acejax", action="store_true", help="reuse ace-jax fits of an earlier run (steps.json)")
    p.add_argument("--logo", action="store_true", help="also leave one group out (ace-jax at the last leverage)")
    args = p.parse_args()
    if not args.data.exists():
        raise SystemExit(f"{args.data}: no such data file")
    args.out.mkdir(parents=True, exist_ok=True)
    pd_json = args.out / "popsdask.json"
    if args.reuse_popsdask and pd_json.exists():
        pd_res = json.loads(pd_json.read_text())
    else:
        print("popsdask", flush=True)
        pd_res = run_popsdask(args, args.out)
        pd_json.write_text(json.dumps(pd_res, indent=2))
    name = f"popsdask ACE {args.ace_functions}"
    results: dict[str, Any] = {name: pd_res}
    preds = [(pd_res, "pred")]
    for label, (_flags, suffix) in CALIBRATIONS.items():
        cal_json = args.out / f"popsdask-{label}.json"
        if args.reuse_popsdask and cal_json.exists():
            cal_res = json.loads(cal_json.read_text())
        else:
            cal_res = run_popsdask_calibrated(args, args.out, pd_res, label)
            cal_json.write_text(json.dumps(cal_res, indent=2))
        results[f"{name}, {suffix}"] = cal_res
        preds.append((cal_res, f"pred-{label}"))
    store = args.out / "popsdask" / "descriptors.zarr"
    split = xr_open(store)["split"].values
    train, test = args.out / "train.extxyz", args.out / "test.extxyz"
    write_sets(store, args.data, {train: split == 0, test: split == 1})
    forces = [(r, popsdask_rows(args.out / "popsdask" / f"{p}.zarr")["force"]) for r, p in preds]
    for lev in (float(x) for x in args.leverage.split(",")):
        print(f"ace-jax, leverage percentile {lev:g}", flush=True)
        aj = run_acejax(args, args.out / f"acejax-lev{lev:g}", train, test, lev)
        idx = np.asarray(aj.pop("force_envelope_rows"))
        for r, f in forces:
            if f["y"].size != aj["force"]["n"]:
                raise SystemExit(f"popsdask has {f['y'].size} test force rows, ace-jax {aj['force']['n']}")
            r[f"force_ev_on_acejax_rows_lev{lev:g}"] = ev_on_rows(f, idx)
        results[f"ace-jax, leverage {lev:g}"] = aj
    (args.out / "side_by_side.json").write_text(json.dumps(results, indent=2))
    md = table(results)
    (args.out / "side_by_side.md").write_text(md + "\n")
    print(md)
    if args.logo:
        leave_one_group_out(args, store, float(args.leverage.split(",")[-1]))


def leave_one_group_out(args: argparse.Namespace, store: Path, leverage: float) -> None:
    """``popsdask crossval --group-by group`` against one ace-jax fit per left-out group."""
    c = cluster_flags(args)
    cv = args.out / "popsdask" / "crossval"
    print("popsdask crossval", flush=True)
    cmd = [*POPSDASK, "crossval", str(store), "--group-by", "group", "--no-random-split"]
    res: dict[str, Any] = {"popsdask": timed([*cmd, "-o", str(cv), *c, "--overwrite"], args.out / "crossval.log")}
    groups = xr_open(store)["group"].values.astype(str)
    names = sorted(set(groups))
    d = args.out / "logo"
    d.mkdir(exist_ok=True)
    sets = {d / f"{g}-train.extxyz": groups != g for g in names} | {d / f"{g}-test.extxyz": groups == g for g in names}
    write_sets(store, args.data, sets)
    res["acejax_steps"], res["groups"] = {}, {}
    for g in names:
        print(f"ace-jax without {g}", flush=True)
        aj = run_acejax(args, d / f"acejax-{g}", d / f"{g}-train.extxyz", d / f"{g}-test.extxyz", leverage)
        res["acejax_steps"][g] = aj.pop("steps")["aj fit"]
        idx = np.asarray(aj.pop("force_envelope_rows"))
        f = popsdask_rows(cv / g / "predictions.zarr")["force"]
        mine = band_summary(f["y"], f["mle"], f["std"], f["min"], f["max"])
        mine["ev_on_acejax_rows"] = ev_on_rows(f, idx)
        res["groups"][g] = {"popsdask": mine, "ace-jax": aj["force"]}
    res["leverage_pct"] = leverage
    (args.out / "logo.json").write_text(json.dumps(res, indent=2))
    md = logo_table(res)
    (args.out / "logo.md").write_text(md + "\n")
    print(md)


def logo_table(res: dict[str, Any]) -> str:
    """The leave-one-group-out table of :func:`leave_one_group_out`'s results (``logo.json``)."""
    lines = [
        f"leave-one-group-out, force rows; ace-jax at leverage percentile {res['leverage_pct']:g}; popsdask crossval "
        f"{res['popsdask']['wall_s']:.0f} s, ace-jax {sum(s['wall_s'] for s in res['acejax_steps'].values()):.0f} s",
        "",
        "| left out | force rows | EV popsdask (all / ace-jax's rows) | EV ace-jax | ±4σ popsdask / ace-jax "
        "| mean \\|err\\|/σ popsdask / ace-jax | mean σ eV/Å popsdask / ace-jax | MAE eV/Å popsdask / ace-jax |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for g, r in res["groups"].items():
        p, a = r["popsdask"], r["ace-jax"]
        lines.append(
            f"| {g} | {p['n'] - p['n_symmetry_zeros']:,} | {100 * p['envelope_violation']:.2f} % / "
            f"{100 * p['ev_on_acejax_rows']:.2f} % | {100 * a['envelope_violation']:.2f} % | "
            f"{100 * p['coverage_4sigma']:.2f} % / {100 * a['coverage_4sigma']:.2f} % | "
            f"{p['mean_abs_error_over_std']:.3g} / {a['mean_abs_error_over_std']:.3g} | "
            f"{p['mean_std']:.3g} / {a['mean_std']:.3g} | {p['mae_mle']:.3g} / {a['mae_mle']:.3g} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
