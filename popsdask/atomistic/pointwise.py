"""Pointwise UQ on a held-out set (the paper's Fig. 3), energies per atom and forces.

The energy reference of a store with a reference pair style (ZBL) is the energy *minus* that
contribution, so the parity axes are shifted by it; the errors are unaffected.

Energy rows of a store sum over atoms; for reporting they are divided by the configuration's
atom count (row and target alike, so θ·row stays the prediction), which gives energies in
eV/atom; force rows are unchanged (eV/Å). Virial rows, when present, are reported as
``stress`` rows (eV).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..engine.posterior import Posterior
from ..engine.predictions import per_atom_energy_rows, predict_ensemble
from ..evaluation.report import band_state, write_report

__all__ = ["per_atom_energy_rows", "pointwise_report"]


def pointwise_report(
    posterior: Posterior,
    test: xr.Dataset,
    outdir: str | os.PathLike,
    *,
    n_samples: int = 500,
    seed: int = 0,
) -> dict[str, Any]:
    """Predict ``test`` with the posterior ensemble and write the Fig. 3 style report.

    Returns
    -------
    dict with ``metrics`` per row kind (MAE of the MLE, envelope violation, ...), the report
    paths and the predictions store path.
    """
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    pred_path = out / "predictions.zarr"
    predict_ensemble(
        posterior,
        per_atom_energy_rows(test),
        pred_path,
        n_samples=n_samples,
        seed=seed,
        overwrite=True,
    )
    rep = write_report(pred_path, out / "report", extra_figures=outlier_figures)
    return {
        "metrics": rep["metrics"],
        "figures": rep["figures"],
        "predictions": str(pred_path),
        "report": str(out / "report" / "report.md"),
    }


KIND_LABELS = {0: ("energy", "eV/atom"), 1: ("force", "eV/Å"), 2: ("stress", "eV")}


def outlier_figures(pred: xr.Dataset, outdir: str | os.PathLike) -> dict[str, str]:
    """Per kind: MLE error against the reference with the ensemble's [min, max] envelope as
    error bars; references outside the envelope (envelope violations) are marked in red.

    Writes ``<kind>_outliers.png`` and returns their paths.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    y, mle, lo, hi = (np.asarray(pred[k].values) for k in ("y", "mle", "min", "max"))
    kind = np.asarray(pred["kind"].values) if "kind" in pred.coords else np.zeros(y.size, int)
    paths = {}
    band = band_state(pred)
    for code in np.unique(kind):
        name, unit = KIND_LABELS.get(int(code), (str(code), ""))
        idx = np.flatnonzero(kind == code)
        if idx.size > 20000:
            idx = np.sort(np.random.default_rng(0).choice(idx, 20000, replace=False))
        err = mle[idx] - y[idx]
        bars = np.vstack([mle[idx] - lo[idx], hi[idx] - mle[idx]])
        outside = (y[idx] < lo[idx]) | (y[idx] > hi[idx])
        fig, ax = plt.subplots(figsize=(6, 4.5))
        ax.errorbar(
            y[idx], err, yerr=bars, fmt="none", ecolor="0.7", lw=0.6, label=f"{band} ensemble [min, max] − reference"
        )
        ax.plot(y[idx][~outside], err[~outside], ".", ms=2, color="tab:blue", label="MLE error")
        ax.plot(
            y[idx][outside],
            err[outside],
            "o",
            ms=3,
            mfc="none",
            color="tab:red",
            label=f"outside envelope ({100 * outside.mean():.1f} %)",
        )
        ax.axhline(0, color="k", lw=0.8)
        ax.set_title(f"{name}: MLE errors and the {band} band")
        ax.set_xlabel(f"reference {name} ({unit})")
        ax.set_ylabel(f"MLE − reference ({unit})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{name}_outliers.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths[f"{name}_outliers"] = str(path)
    return paths
