"""Report of a prediction store: metrics table (markdown) and PNG figures like the paper's Fig. 3."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .ensemble import open_predictions

MAX_PARITY_POINTS = 20000

METRIC_LABELS = {
    "n": "rows",
    "mae_mle": "MAE (MLE)",
    "rmse_mle": "RMSE (MLE)",
    "envelope_violation": "envelope violation",
    "mean_std": "mean ensemble std",
    "mean_abs_error_over_std": "mean |error|/std",
    "coverage_2sigma": "within ±2σ",
    "coverage_4sigma": "within ±4σ",
}


def metrics_table(metrics: dict[str, dict[str, float]]) -> str:
    """Markdown table: one column per row kind."""
    kinds = list(metrics)
    lines = ["| metric | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
    for key, label in METRIC_LABELS.items():
        cells = []
        for k in kinds:
            v = metrics[k].get(key, float("nan"))
            if key == "n":
                cells.append(f"{int(v)}")
            elif key in ("envelope_violation", "coverage_2sigma", "coverage_4sigma"):
                cells.append(f"{100 * v:.2f} %")
            else:
                cells.append(f"{v:.4g}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(predictions: xr.Dataset | str | os.PathLike, outdir: str | os.PathLike) -> dict[str, Any]:
    """Write ``report.md``, ``metrics.json`` and one ``<kind>.png`` per row kind to ``outdir``.

    Each figure has the distribution of |reference - MLE| against |sample - MLE| (left) and
    the parity plot of reference vs MLE with the ensemble's min/max envelope (right).
    """
    ds = predictions if isinstance(predictions, xr.Dataset) else open_predictions(predictions)
    if "metrics" not in ds.attrs:
        raise ValueError("the prediction store has no references y, so there is nothing to report")
    metrics = json.loads(ds.attrs["metrics"])
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    figures = _figures(ds, metrics, out)
    table = metrics_table(metrics)
    text = [
        "# popsdask prediction report",
        "",
        f"Predictions: `{ds.encoding.get('source', ds.attrs.get('source', ''))}` — "
        f"{ds.attrs.get('n_samples')} samples ({ds.attrs.get('method')}, seed {ds.attrs.get('seed')}) "
        f"of the {ds.attrs.get('posterior')} posterior.",
        "",
        table,
        "",
        "Envelope violation: fraction of references outside the [min, max] of the ensemble.",
        "",
    ] + [f"![{k}]({p.name})" for k, p in figures.items()]
    (out / "report.md").write_text("\n".join(text) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return {"metrics": metrics, "table": table, "figures": {k: str(p) for k, p in figures.items()}}


def _figures(ds: xr.Dataset, metrics: dict, out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = {}
    kinds = [str(k) for k in ds["kind_name"].values]
    kind_codes = ds["kind"].values if "kind" in ds.coords else None
    y, mle, lo, hi = (ds[k].values for k in ("y", "mle", "min", "max"))
    from .ensemble import KIND_NAMES

    for i, kind in enumerate(kinds):
        if kind_codes is None:
            mask = np.ones(y.shape[0], dtype=bool)
        else:
            mask = np.array([KIND_NAMES.get(int(c), str(c)) == kind for c in kind_codes])
        edges = ds["error_bin_edges"].values[i]
        h_ref = ds["hist_abs_reference_minus_mle"].values[i].astype(float)
        h_smp = ds["hist_abs_sample_minus_mle"].values[i].astype(float)
        centers = np.sqrt(edges[:-1] * edges[1:])
        widths = np.diff(np.log10(edges))
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.5))
        a.step(centers, h_ref / max(h_ref.sum(), 1) / widths, where="mid", color="k", label="|reference − MLE|")
        a.step(centers, h_smp / max(h_smp.sum(), 1) / widths, where="mid", color="tab:green", label="|sample − MLE|")
        a.set_xscale("log")
        a.set_xlabel("absolute error")
        a.set_ylabel("density per decade")
        m = metrics[kind]
        a.set_title(f"{kind}: MAE {m['mae_mle']:.3g}, EV {100 * m['envelope_violation']:.1f} %")
        a.legend()
        idx = np.flatnonzero(mask)
        if idx.size > MAX_PARITY_POINTS:
            idx = np.sort(np.random.default_rng(0).choice(idx, MAX_PARITY_POINTS, replace=False))
        order = idx[np.argsort(y[idx])]
        b.fill_between(y[order], lo[order], hi[order], color="0.75", label="ensemble min/max", step="mid")
        b.plot(y[order], mle[order], ".", ms=2, color="tab:blue", label="MLE")
        span = [np.min(y[idx]), np.max(y[idx])]
        b.plot(span, span, "k--", lw=0.8)
        b.set_xlabel("reference")
        b.set_ylabel("predicted")
        b.legend()
        fig.tight_layout()
        path = out / f"{kind}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        figures[kind] = path
    return figures
