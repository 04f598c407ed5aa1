"""Report of a prediction store: metrics table (markdown) and PNG figures like the paper's Fig. 3."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..core.validation import InputError
from ..engine.predictions import (
    band_arrays,
    config_values,
    configuration_variables,
    load_row_variables,
    open_predictions,
    prediction_metrics,
)

MAX_PARITY_POINTS = 20000

METRIC_LABELS = {
    "n": "rows",
    "n_symmetry_zeros": "symmetry zeros (excluded below)",
    "n_fixed": "fixed rows (every member predicts alike)",
    "mae_mle": "MAE (MLE)",
    "rmse_mle": "RMSE (MLE)",
    "envelope_violation": "envelope violation",
    "n_violations_below_floor": "… violations within the stated floor (not counted)",
    "floor": "stated floor (the references' precision)",
    "fixed_violation": "… of which fixed rows (no θ brackets them)",
    "box_violation": "exact-box violation",
    "mean_std": "mean ensemble std",
    "mean_envelope_width": "mean envelope width",
    "mean_box_width": "mean exact-box width",
    "mean_abs_error_over_std": "mean \\|error\\|/std",
    "coverage_2sigma": "within ±2σ",
    "coverage_4sigma": "within ±4σ",
    "miscalibration_area": "miscalibration area",
    "interval_score": "interval score (α = 0.05)",
    "nll": "Gaussian NLL (floored)",
}
PERCENT = ("envelope_violation", "fixed_violation", "box_violation", "coverage_2sigma", "coverage_4sigma")
COUNTS = ("n", "n_symmetry_zeros", "n_fixed", "n_violations_below_floor")


def kind_units(units: str | None) -> dict[str, str]:
    """Units of each row kind from a store's ``units`` attribute (LAMMPS ``metal``: eV, Å)."""
    if not units:
        return {}
    text = str(units).lower()
    if "metal" in text or "ev" in text:
        return {"energy": "eV", "energy_per_atom": "eV/atom", "force": "eV/Å", "stress": "eV"}
    return {}


def metrics_table(metrics: dict[str, dict[str, float]], units: dict[str, str] | None = None) -> str:
    """Markdown table: one column per row kind (with its unit), one line per metric."""
    kinds = list(metrics)
    units = units or {}
    head = [f"{k} ({units[k]})" if k in units else k for k in kinds]
    lines = ["| metric | " + " | ".join(head) + " |", "|---|" + "---:|" * len(kinds)]
    for key, label in METRIC_LABELS.items():
        if not any(key in metrics[k] for k in kinds):
            continue
        cells = [_format(key, metrics[k].get(key, float("nan"))) for k in kinds]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _format(key: str, v: float | None) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    if key in COUNTS:
        return f"{int(v)}"
    if key in PERCENT:
        return f"{100 * v:.2f} %"
    return f"{v:.4g}"


GROUP_COLUMNS = (
    "n",
    "mae_mle",
    "rmse_mle",
    "envelope_violation",
    "n_violations_below_floor",
    "box_violation",
    "coverage_2sigma",
    "coverage_4sigma",
    "mean_abs_error_over_std",
    "mean_std",
    "mean_envelope_width",
    "miscalibration_area",
    "nll",
)


#: metrics in the units of their row kind (the others are counts, fractions or unit-free)
DIMENSIONED = ("mae_mle", "rmse_mle", "mean_std", "mean_envelope_width", "mean_box_width", "floor")


def group_table(groups: dict[str, dict[str, dict]], kind: str, group_by: str, unit: str | None = None) -> str:
    """Markdown: one line per group of one row kind; ``unit`` of the kind heads its dimensioned columns."""
    cols = [c for c in GROUP_COLUMNS if any(c in g.get(kind, {}) for g in groups.values())]
    head = [f"{METRIC_LABELS[c]} ({unit})" if unit and c in DIMENSIONED else METRIC_LABELS[c] for c in cols]
    lines = [f"| {group_by} | " + " | ".join(head) + " |", "|---|" + "---:|" * len(cols)]
    for name, g in groups.items():
        if kind in g:
            lines.append(f"| {_escape(name)} | " + " | ".join(_format(c, g[kind].get(c)) for c in cols) + " |")
    return "\n".join(lines)


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def write_report(
    predictions: xr.Dataset | str | os.PathLike,
    outdir: str | os.PathLike,
    *,
    group_by: str | None = None,
    extra_figures: Callable[[xr.Dataset, Path], dict[str, str]] | None = None,
    tolerance: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Write ``report.md``, ``metrics.json``, ``calibration.json`` and figures to ``outdir``.

    Per row kind: the distribution of |reference - MLE| against |sample - MLE| and the parity
    plot with the ensemble's min/max envelope (``<kind>.png``); the coverage curve
    (``coverage.png``) and, when the predictions recorded it, envelope violation against the
    number of samples (``ev_vs_samples.png``). ``group_by`` (default: ``group`` when the store
    has it) adds per-group tables. ``extra_figures(ds, outdir)`` may write more figures
    (returning {name: path}); they are linked from ``report.md`` too. ``tolerance``: the
    references' precision per kind (see :func:`popsdask.engine.predictions.prediction_metrics`;
    default: the one the predictions were made with).
    """
    ds = predictions if isinstance(predictions, xr.Dataset) else open_predictions(predictions)
    if "y" not in ds or "metrics" not in ds.attrs:
        raise InputError(
            f"{ds.attrs.get('source', predictions)}: the prediction store has no references y and no metrics, "
            "so there is nothing to report"
        )
    if group_by is None and "group" in configuration_variables(ds):
        group_by = "group"
    ds = load_row_variables(ds)  # the metrics (raw and calibrated) and the figures read them all
    calib = prediction_metrics(ds, group_by=group_by, tolerance=tolerance)
    metrics = _scalars(calib["kinds"])
    units = kind_units(ds.attrs.get("units"))
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    figures = _figures(ds, metrics, out, units)
    figures.update(_calibration_figures(calib, out, band_state(ds)))
    if extra_figures is not None:
        figures.update({k: Path(v) for k, v in extra_figures(ds, out).items()})
    table = metrics_table(metrics, units)
    text = [*_heading(ds), table, "", ENVELOPE_NOTE, "", *_floor_note(calib["tolerance"], units)]
    if "std_raw" in ds:
        before = _scalars(prediction_metrics(ds, raw=True, tolerance=tolerance)["kinds"])
        text += ["## Before calibration", "", "The same predictions with the raw (uncalibrated) std and envelope:", ""]
        text += [metrics_table(before, units), ""]
    if calib["groups"]:
        assert group_by is not None  # the groups are those of group_by
        for kind in calib["kinds"]:
            text += [f"## {kind} by {group_by}", "", group_table(calib["groups"], kind, group_by, units.get(kind)), ""]
    text += ["## Figures", ""] + [f"![{k}]({Path(p).name})" for k, p in figures.items()]
    (out / "report.md").write_text("\n".join(text) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "calibration.json").write_text(json.dumps(calib, indent=2) + "\n")
    return {
        "metrics": metrics,
        "calibration": calib,
        "table": table,
        "figures": {k: str(p) for k, p in figures.items()},
    }


#: how the report's tables count a reference as inside the band
ENVELOPE_NOTE = (
    "Envelope violation: fraction of references outside [min − tol, max + tol] of the ensemble; the exact "
    "box is the envelope over the whole posterior. tol per row = max(1e-8 × the kind's RMS reference, the "
    "round-off bound of the MLE product); rows whose reference, MLE and envelope are all within tol of zero "
    "(symmetry zeros) are counted and left out of the coverage and calibration rows, before and after "
    "calibration alike. The NLL floors the std at 0.01 × the kind's RMSE."
)


def _scalars(kinds: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each kind's metrics without the nested ones (curves, histograms)."""
    return {k: {key: v for key, v in m.items() if not isinstance(v, dict)} for k, m in kinds.items()}


def _heading(ds: xr.Dataset) -> list[str]:
    """The report's title and what was predicted, with which posterior and sampling."""
    return [
        "# popsdask prediction report",
        "",
        f"Predictions: `{ds.attrs.get('source', '')}` — {ds.attrs.get('summaries', '')} "
        f"({ds.attrs.get('n_samples')} members in the summaries; {ds.attrs.get('method')} sampling, "
        f"seed {ds.attrs.get('seed')}) of the {ds.attrs.get('posterior')} posterior; "
        f"bounds: {ds.attrs.get('bounds', 'sampled')}.",
        "",
    ]


def _floor_note(tolerance: dict[str, float], units: dict[str, str]) -> list[str]:
    """The stated floor per kind and what it forgives (nothing without one)."""
    if not tolerance:
        return []
    stated = ", ".join(
        f"{k} {v:g} {units.get('energy_per_atom' if k == 'energy' else k, '')}".rstrip() for k, v in tolerance.items()
    )
    return [
        f"Stated floor (the references' own precision): {stated}. A reference within it of the band counts "
        "as inside, in the EV, the exact-box EV and the ±kσ coverages; the violations it forgives are counted "
        "beside the EV.",
        "",
    ]


def _calibration_figures(calib: dict[str, Any], out: Path, band: str) -> dict[str, Path]:
    from matplotlib.figure import Figure  # no pyplot: nothing is shown, and it costs an import

    figures = {}
    # unit-free curves: a total energy and its per-atom view draw the same line
    kinds = {k: m for k, m in calib["kinds"].items() if not (k == "energy" and "energy_per_atom" in calib["kinds"])}
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.subplots()
    for kind, m in kinds.items():
        c = m.get("coverage_curve")
        if c:
            ax.plot(c["k"], c["observed"], label=f"{kind} (area {m['miscalibration_area']:.3f})")
    if ax.lines:
        c = next(m["coverage_curve"] for m in kinds.values() if "coverage_curve" in m)
        ax.plot(c["k"], c["nominal"], "k--", lw=0.8, label="Gaussian nominal")
        ax.set_title(f"coverage of the {band} band")
        figures["coverage"] = _save(
            fig, ax, "k (interval ±k·std)", "fraction of references within", out / "coverage.png"
        )
    curves = {k: m["ev_vs_samples"] for k, m in kinds.items() if "ev_vs_samples" in m}
    if curves:
        fig = Figure(figsize=(5.5, 4.5))
        ax = fig.subplots()
        for kind, c in curves.items():
            line = ax.plot(c["n_samples"], 100 * np.asarray(c["envelope_violation"]), "o-", label=kind)
            box = calib["kinds"][kind].get("box_violation")
            if box is not None:
                ax.axhline(100 * box, color=line[0].get_color(), ls=":", label=f"{kind}: exact box")
        ax.set_xscale("log")
        ax.set_title(f"envelope violation of the {band} band")
        path = out / "ev_vs_samples.png"
        figures["ev_vs_samples"] = _save(fig, ax, "posterior samples S", "envelope violation (%)", path)
    return figures


def _save(fig, ax, xlabel: str, ylabel: str, path: Path) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def band_state(ds: xr.Dataset) -> str:
    """Which band a prediction store's std and envelope are: ``calibrated`` when the predictions
    applied a calibration (they keep the raw band beside it), else ``raw``."""
    return "calibrated" if "std_raw" in ds else "raw"


def _error_histograms(
    ds: xr.Dataset, kind: str, view: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Bin edges and counts of |reference - MLE| and |sample - MLE| of one kind.

    The stored histograms (made by predict) serve every kind except energies per atom, which are
    binned here from the rows: the references' errors, and the stored samples' deviations over
    each configuration's atom count (None when the store holds no samples).
    """
    names = [str(k) for k in ds["kind_name"].values]
    if kind != "energy_per_atom" and kind in names:
        i = names.index(kind)
        edges = ds["error_bin_edges"].values[i]
        h_ref = ds["hist_abs_reference_minus_mle"].values[i].astype(float)
        return edges, h_ref, ds["hist_abs_sample_minus_mle"].values[i].astype(float)
    ref = np.abs(view["y"] - view["mle"])
    dev = None
    if "prediction" in ds:
        rows = np.flatnonzero(view["mask"])
        n_atoms = config_values(ds, "n_atoms").astype(np.float64)[rows]
        dev = np.abs(ds["prediction"].values[:, rows] - ds["mle"].values[rows]) / n_atoms
    values = np.concatenate([ref.ravel(), dev.ravel() if dev is not None else []])
    positive = values[values > 0]
    lo, hi = (positive.min(), positive.max()) if positive.size else (1e-12, 1.0)
    edges = np.logspace(np.log10(lo), np.log10(hi) + 1e-9, 61)
    h_smp = None if dev is None else np.histogram(np.clip(dev, lo, None), edges)[0].astype(float)
    return edges, np.histogram(np.clip(ref, lo, None), edges)[0].astype(float), h_smp


def _figures(ds: xr.Dataset, metrics: dict, out: Path, units: dict[str, str]) -> dict[str, Path]:
    """Per row kind, ``<kind>.png``: error histograms and the parity plot with the envelope;
    energies per atom when the store knows each configuration's atom count."""
    from matplotlib.figure import Figure  # no pyplot: nothing is shown, and it costs an import

    figures = {}
    band = band_state(ds)
    views = band_arrays(ds)
    for kind, view in views.items():
        if kind == "energy" and "energy_per_atom" in views:
            continue  # drawn per atom
        name = "energy" if kind == "energy_per_atom" else kind
        edges, h_ref, h_smp = _error_histograms(ds, kind, view)
        centers = np.sqrt(edges[:-1] * edges[1:])
        widths = np.diff(np.log10(edges))
        fig = Figure(figsize=(11, 4.5))
        a, b = fig.subplots(1, 2)
        a.step(centers, h_ref / max(h_ref.sum(), 1) / widths, where="mid", color="k", label="|reference − MLE|")
        if h_smp is not None:
            a.step(
                centers, h_smp / max(h_smp.sum(), 1) / widths, where="mid", color="tab:green", label="|sample − MLE|"
            )
        a.set_xscale("log")
        unit = f" ({units[kind]})" if kind in units else ""
        what = "energy per atom" if kind == "energy_per_atom" else kind
        a.set_xlabel(f"absolute error of the {what}{unit}")
        a.set_ylabel("density per decade")
        m = metrics[kind]
        a.set_title(f"{what}: MAE {m['mae_mle']:.3g}, EV {100 * m['envelope_violation']:.1f} % ({band} band)")
        a.legend()
        y, mle, lo, hi = (view[k] for k in ("y", "mle", "min", "max"))
        idx = np.arange(y.size)
        if idx.size > MAX_PARITY_POINTS:
            idx = np.sort(np.random.default_rng(0).choice(idx, MAX_PARITY_POINTS, replace=False))
        order = idx[np.argsort(y[idx])]
        b.fill_between(y[order], lo[order], hi[order], color="0.75", label=f"ensemble min/max, {band} band", step="mid")
        b.plot(y[order], mle[order], ".", ms=2, color="tab:blue", label="MLE")
        span = [np.min(y[idx]), np.max(y[idx])]
        b.plot(span, span, "k--", lw=0.8)
        b.set_xlabel(f"reference {what}{unit}")
        b.set_ylabel(f"predicted {what}{unit}")
        b.legend()
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110)
        figures[name] = path
    return figures
