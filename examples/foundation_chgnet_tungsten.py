"""POPS linear corrector on CHGNet for the W and W-Be DFT sets (paper section III.G, Fig. 12).

CHGNet (pretrained on MPtrj, weights bundled with the ``chgnet`` wheel, no download) is the
base model. Its per-atom features are summed per configuration, per-element atom counts are
appended, and ``E_DFT - E_CHGNet`` (per atom) is fitted with POPS on a random 50 % of the
configurations; the other 50 % are the test set. Reported on the test set:

* MAE of raw CHGNet, of CHGNet plus per-element constant shifts only (least squares on the
  training half: what a DFT-setup offset alone explains), and of CHGNet plus the POPS corrector;
* envelope violation (references outside the ensemble's min/max) and coverage of the errors
  by ±2σ / ±4σ of the ensemble;
* Fig. 12-style figures: distribution of test errors (reference - MLE) against the ensemble's
  spread (sample - MLE), and the parity plot with the ensemble's min/max band.

Usage (the data are read from ``../shared/data/tungsten-dft`` relative to the project root,
or ``--data-dir`` / ``$POPSDASK_TUNGSTEN_DFT``; nothing is copied)::

    python examples/foundation_chgnet_tungsten.py --n-w 2000 --n-wbe 3000 --out chgnet-demo
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("POPSDASK_TUNGSTEN_DFT", ROOT.parent / "shared" / "data" / "tungsten-dft"))
SETS = {"W": "W_dft.extxyz.xz", "WBe": "WBe_dft.extxyz.xz"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DATA, help="directory holding W_dft.extxyz.xz and WBe_dft.extxyz.xz"
    )
    p.add_argument("--n-w", type=int, default=2000, help="random W configurations to use (0: none, -1: all 9,723)")
    p.add_argument(
        "--n-wbe", type=int, default=3000, help="random W-Be/Be configurations to use (0: none, -1: all 15,520)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the subsets and the split")
    p.add_argument(
        "--features",
        default="atom_fea",
        choices=["atom_fea", "readout"],
        help="CHGNet per-atom features (see CHGNetExtractor)",
    )
    p.add_argument(
        "--total-energy", action="store_true", help="fit total energies (eV) instead of energies per atom (eV/atom)"
    )
    p.add_argument("--n-samples", type=int, default=500, help="posterior samples")
    p.add_argument("--workers", type=int, default=2, help="Dask worker processes")
    p.add_argument("--batch-size", type=int, default=32, help="structures per Dask task")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("foundation-chgnet-demo"),
        help="output directory (stores, posterior, report, figures)",
    )
    return p.parse_args(argv)


def load_subsets(args: argparse.Namespace) -> tuple[list, np.ndarray]:
    """Seeded random subsets of both sets; returns structures and their set label."""
    from popsdask.foundation import read_structures

    rng = np.random.default_rng(args.seed)
    structures, labels = [], []
    for name, n in (("W", args.n_w), ("WBe", args.n_wbe)):
        if n == 0:
            continue
        path = args.data_dir / SETS[name]
        if not path.is_file():
            raise SystemExit(f"{path} not found: pass --data-dir or set POPSDASK_TUNGSTEN_DFT")
        images = read_structures(path)
        take = (
            np.arange(len(images)) if n < 0 or n >= len(images) else np.sort(rng.choice(len(images), n, replace=False))
        )
        structures += [images[i] for i in take]
        labels += [name] * len(take)
        print(
            f"{name}: {len(take)} of {len(images)} configurations, {sum(len(images[i]) for i in take)} atoms",
            flush=True,
        )
    return structures, np.array(labels)


def offsets_only_mae(X, y, n_desc, train, test) -> float:
    """MAE of CHGNet plus per-element constants fitted by least squares on the training half."""
    C = X[:, n_desc:]
    coef, *_ = np.linalg.lstsq(C[train], y[train], rcond=None)
    return float(np.mean(np.abs(y[test] - C[test] @ coef)))


def fig12(pred, outdir: Path, units: str) -> Path:
    """Fig. 12 style: signed error distributions (left) and parity with min/max band (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y, mle = pred["y"].values, pred["mle"].values
    lo, hi = pred["min"].values, pred["max"].values
    err = y - mle
    dev = (pred["prediction"] - pred["mle"]).values.ravel()
    lim = np.percentile(np.abs(np.concatenate([err, dev])), 99.9)
    bins = np.linspace(-lim, lim, 121)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.5))
    a.hist(err, bins=bins, density=True, histtype="step", color="k", label="reference − MLE")
    a.hist(dev, bins=bins, density=True, histtype="step", color="tab:green", label="POPS sample − MLE")
    a.set_yscale("log")
    a.set_xlabel(f"energy error ({units})")
    a.set_ylabel("density")
    ev = np.mean((y < lo) | (y > hi))
    a.set_title(f"test MAE {np.mean(np.abs(err)):.4f} {units}, EV {100 * ev:.1f} %")
    a.legend()
    rng = np.random.default_rng(0)
    idx = rng.choice(y.size, min(y.size, 400), replace=False)
    order = idx[np.argsort(y[idx])]
    b.errorbar(
        y[order],
        mle[order],
        yerr=[mle[order] - lo[order], hi[order] - mle[order]],
        fmt=".",
        ms=3,
        color="tab:blue",
        ecolor="0.6",
        elinewidth=1,
        label="MLE, ensemble min/max",
    )
    span = [y[idx].min(), y[idx].max()]
    b.plot(span, span, "k--", lw=0.8)
    b.set_xlabel(f"E_DFT − E_CHGNet ({units})")
    b.set_ylabel(f"corrector prediction ({units})")
    b.set_title(f"parity, {order.size} random test configurations")
    b.legend()
    fig.tight_layout()
    path = outdir / "fig12_chgnet_corrector.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import popsdask
    from popsdask.engine.predictions import predict_ensemble
    from popsdask.evaluation.report import write_report
    from popsdask.foundation import CHGNetExtractor, build_store
    from popsdask.runtime.cluster import connect

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    structures, labels = load_subsets(args)
    t_read = time.perf_counter() - t0
    per_atom = not args.total_energy
    units = "eV/atom" if per_atom else "eV"
    extractor = CHGNetExtractor(features=args.features, torch_threads=1)
    with connect("local", n_workers=args.workers, threads_per_worker=1, quiet=True):
        t1 = time.perf_counter()
        store = build_store(
            out / "descriptors.zarr",
            structures,
            extractor,
            per_atom=per_atom,
            info_keys=("group",),
            batch_size=args.batch_size,
            overwrite=True,
        )
        t_build = time.perf_counter() - t1
        ds = popsdask.open_store(store)
        n = ds.sizes["row"]
        rng = np.random.default_rng(args.seed + 1)
        perm = rng.permutation(n)
        train, test = np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])
        t2 = time.perf_counter()
        post = popsdask.fit(ds.isel(row=train))
        post.save(out / "posterior.zarr", overwrite=True)
        pred = predict_ensemble(
            post, ds.isel(row=test), out / "predictions.zarr", n_samples=args.n_samples, seed=args.seed, overwrite=True
        )
        t_fit = time.perf_counter() - t2
        report = write_report(pred, out / "report")
    X, y = ds["X"].values, ds["y"].values
    n_desc = int(ds.attrs["n_descriptor_features"])
    err = pred["y"].values - pred["mle"].values
    std = pred["std"].values
    inside = (pred["y"].values >= pred["min"].values) & (pred["y"].values <= pred["max"].values)

    def block(mask: np.ndarray) -> dict:
        return {
            "n_test": int(mask.sum()),
            "mae_chgnet": float(np.mean(np.abs(y[test][mask]))),
            "mae_corrected": float(np.mean(np.abs(err[mask]))),
            "rmse_corrected": float(np.sqrt(np.mean(err[mask] ** 2))),
            "envelope_violation": float(1 - inside[mask].mean()),
            "coverage_2sigma": float(np.mean(np.abs(err[mask]) <= 2 * std[mask])),
            "coverage_4sigma": float(np.mean(np.abs(err[mask]) <= 4 * std[mask])),
            "mean_abs_error_over_std": float(np.mean(np.abs(err[mask]) / std[mask])),
        }

    results = {
        "units": units,
        "features": args.features,
        "n_structures": int(n),
        "n_atoms": int(ds["n_atoms"].values.sum()),
        "n_train": int(train.size),
        "n_test": int(test.size),
        "n_parameters": int(post.n_features),
        "all": {
            **block(np.ones(test.size, bool)),
            "mae_chgnet_plus_element_offsets": offsets_only_mae(X, y, n_desc, train, test),
        },
        "by_set": {name: block(labels[test] == name) for name in np.unique(labels)},
        "seconds": {"read": t_read, "descriptors": t_build, "fit_and_predict": t_fit},
        "chgnet_cpu_seconds_per_structure": ds.attrs["model_cpu_seconds_per_structure"],
        "chgnet_cpu_seconds_per_atom": ds.attrs["model_cpu_seconds_per_atom"],
        "chgnet_cpu_seconds_total": ds.attrs["model_cpu_seconds_total"],
        "chgnet_wall_seconds_in_model_total": ds.attrs["model_seconds_total"],
        "report_metrics": report["metrics"],
    }
    figure = fig12(pred, out, units)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    a = results["all"]
    print(json.dumps({k: v for k, v in results.items() if k != "report_metrics"}, indent=2))
    print(
        f"\nMAE ({units}): CHGNet {a['mae_chgnet']:.4f}, + element offsets "
        f"{a['mae_chgnet_plus_element_offsets']:.4f}, + POPS corrector {a['mae_corrected']:.4f};"
        f" EV {100 * a['envelope_violation']:.2f} %, within ±4σ "
        f"{100 * a['coverage_4sigma']:.2f} %\nfigures: {figure}, {out / 'report'}"
    )
    return results


if __name__ == "__main__":
    main()
