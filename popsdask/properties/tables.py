"""The property suite's UQ tables in the paper's format and figures like its Figs. 4-10.

For every item of a property (a phase, an SIA, a surface, a path point, ...), with ``ref`` the
reference (oracle) value, ``mle`` the MLE's and the ensemble values ``x_s``:

* MLE error = mle − ref; Std = ensemble standard deviation; Low error = min_s x_s − ref;
  High error = max_s x_s − ref; bracketed = Low ≤ 0 ≤ High (min ≤ ref ≤ max);
* |MLE error|/Std per item, and its mean over the items (the paper's "Mean Error/Std");
  mean |MLE error|/(High − Low) (the paper's "Mean Error/(High−Low)").

Items exact by construction (bcc relative to itself: zero spread and zero error) show "–" and
are left out of the means and the bracketing count. Members whose value is NaN (non-converged,
see ``status``) are left out of the statistics and counted in ``n_failed``.
Properties with many items (phonon bands, path points) get one
summary row per variable. Published DFT/experimental values for tungsten are listed beside for
context (:data:`PUBLISHED`), each with its source.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .ranks import rank_table

__all__ = ["PUBLISHED", "TABLES", "summary", "uq_table", "write_report"]

#: property -> variables tabulated (default: every float variable with _mle and _reference)
TABLES: dict[str, tuple[str, ...]] = {
    "phases": ("energy", "volume_ratio", "bulk_modulus"),
    "paths": ("energy",),
    "phonons": ("frequency", "max_frequency", "dos"),
    "interstitials": ("formation_energy",),
    "surfaces": ("surface_energy",),
    "vacancy": ("formation_energy", "barrier", "energy"),
    "solutes": ("formation_energy", "compound_formation_energy"),
}

#: variables never tabulated (coordinates stored as data)
SKIP = {"coordinate", "n_atoms", "distance"}

#: published values per element (sources cited), for context only (not the reference of the
#: statistics); an element without an entry gets none
PUBLISHED: dict[str, dict[str, list[dict[str, Any]]]] = {"W": {
    "bcc": [
        {"quantity": "lattice constant (Å)", "value": 3.165, "source": "experiment, room temperature (Kittel, "
         "Introduction to Solid State Physics, 8th ed., Table 1.4)"},
        {"quantity": "bulk modulus (GPa)", "value": 314.0, "source": "(C11+2C12)/3 from the elastic constants "
         "C11=532.6, C12=205.0 GPa of Featherston & Neighbours, Phys. Rev. 130, 1324 (1963)"},
    ],
    "interstitials": [
        {"quantity": f"{k} SIA formation energy (eV)", "value": v, "source": "DFT-PBE, Nguyen-Manh, Horsfield & "
         "Dudarev, Phys. Rev. B 73, 020101(R) (2006)"}
        for k, v in (("<111>", 9.55), ("<110>", 9.84), ("tetrahedral", 11.05), ("<100>", 11.49), ("octahedral", 11.68))
    ],
    "vacancy": [
        {"quantity": "vacancy formation energy (eV)", "value": 3.67, "source": "experiment, Rasch, Siegel & Schultz, "
         "Phil. Mag. A 41, 91 (1980)"},
    ],
}}  # fmt: skip


def _variables(ds: xr.Dataset, prop: str) -> list[str]:
    names = TABLES.get(prop)
    if names is None:
        names = tuple(
            str(v)
            for v in ds.data_vars
            if f"{v}_mle" in ds and f"{v}_reference" in ds and v not in SKIP and "sample" in ds[v].dims
        )
    return [v for v in names if v in ds and ds[v].dtype.kind == "f"]


def _reference(ds: xr.Dataset, variable: str) -> xr.DataArray:
    """The reference values of ``variable``; NaN like its MLE when run without a reference."""
    name = f"{variable}_reference"
    return ds[name] if name in ds else xr.full_like(ds[f"{variable}_mle"], np.nan, dtype=float)


def uq_table(ds: xr.Dataset, variable: str) -> list[dict[str, Any]]:
    """One row per item of ``variable`` (dims sample + item dims): the paper's statistics."""
    x = ds[variable]
    item_dims = [d for d in x.dims if d != "sample"]
    xs = np.asarray(x.transpose("sample", *item_dims).values, dtype=float).reshape(x.sizes["sample"], -1)
    mle = np.asarray(ds[f"{variable}_mle"].transpose(*item_dims).values, dtype=float).ravel()
    ref = np.asarray(_reference(ds, variable).transpose(*item_dims).values, dtype=float).ravel()
    if item_dims:
        idx = x.isel(sample=0, drop=True).stack(item=item_dims)["item"].values if len(item_dims) > 1 else None
        labels = [str(v) for v in (idx if idx is not None else ds[item_dims[0]].values)]
    else:
        labels = [variable]
    rows = []
    for k, lab in enumerate(labels):
        col = xs[:, k]
        ok = np.isfinite(col)
        n_ok = int(ok.sum())
        std = float(np.std(col[ok], ddof=0)) if n_ok else float("nan")
        lo = float(np.min(col[ok])) - ref[k] if n_ok else float("nan")
        hi = float(np.max(col[ok])) - ref[k] if n_ok else float("nan")
        err = mle[k] - ref[k]
        scale = max(1.0, abs(ref[k])) if np.isfinite(ref[k]) else 1.0
        exact = n_ok > 0 and std <= 1e-6 * scale and abs(err) <= 1e-6 * scale  # e.g. bcc relative to itself
        if exact:
            std, lo, hi = 0.0, 0.0, 0.0
        rows.append(
            {
                "item": lab,
                "reference": float(ref[k]),
                "mle": float(mle[k]),
                "mle_error": float(err),
                "std": std,
                "low_error": lo,
                "high_error": hi,
                "error_over_std": float(abs(err) / std) if std > 0 else float("nan"),
                "bracketed": None if exact or not (np.isfinite(lo) and np.isfinite(hi)) else bool(lo <= 0.0 <= hi),
                "n_members": n_ok,
                "n_failed": int(col.size - n_ok),
            }
        )
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean |MLE error|/Std, mean |MLE error|/(High − Low) and the bracketing count of a table.

    Items whose reference equals the MLE and every member (e.g. bcc relative to itself: Std = 0)
    are left out of the means.
    """
    ratio = [r["error_over_std"] for r in rows if np.isfinite(r["error_over_std"])]
    span = [
        abs(r["mle_error"]) / (r["high_error"] - r["low_error"])
        for r in rows
        if np.isfinite(r["high_error"]) and r["high_error"] - r["low_error"] > 0
    ]
    br = [r["bracketed"] for r in rows if r["bracketed"] is not None and r["std"] > 0]
    return {
        "mean_error_over_std": float(np.mean(ratio)) if ratio else float("nan"),
        "mean_error_over_range": float(np.mean(span)) if span else float("nan"),
        "n_bracketed": int(sum(br)),
        "n_items": len(br),
        "all_bracketed": bool(all(br)) if br else None,
        "n_failed_values": int(sum(r["n_failed"] for r in rows if np.isfinite(r["reference"]))),
        "no_reference": [r["item"] for r in rows if not np.isfinite(r["reference"])],
    }


def _grouped(ds: xr.Dataset, variable: str) -> dict[str, dict[str, Any]]:
    """Summaries per label of the first item dimension (e.g. per path or per phonon band)."""
    dims = [d for d in ds[variable].dims if d != "sample"]
    if len(dims) < 2 and not (dims and dims[0] in ("path", "band")):
        return {}
    first = dims[0] if dims[0] != "qpoint" else dims[-1]
    out = {}
    for lab in ds[first].values:
        sub = ds[[v for v in (variable, f"{variable}_mle", f"{variable}_reference") if v in ds]].sel({first: lab})
        out[str(lab)] = summary(uq_table(sub, variable))
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return {True: "yes", False: "**no**", None: "–"}[v]
    if isinstance(v, (int, np.integer)):
        return str(v)
    if isinstance(v, float):
        return "nan" if not np.isfinite(v) else f"{v:.3g}"
    return str(v)


def _markdown(rows: list[dict[str, Any]], summ: dict[str, Any], title: str, units: str) -> str:
    cols = ["item", "reference", "mle", "mle_error", "std", "low_error", "high_error", "error_over_std", "bracketed"]
    head = ["item", "reference", "MLE", "MLE error", "Std", "Low error", "High error", "\\|error\\|/Std", "bracketed"]
    lines = [f"### {title}" + (f" ({units})" if units else ""), "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]  # fmt: skip
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    lines += [
        "",
        f"Mean \\|error\\|/Std = {_fmt(summ['mean_error_over_std'])}; mean \\|error\\|/(High−Low) = "
        f"{_fmt(summ['mean_error_over_range'])}; bracketed {summ['n_bracketed']}/{summ['n_items']}; "
        f"failed member values: {summ['n_failed_values']}"
        + (f"; no reference value: {', '.join(summ['no_reference'])}" if summ["no_reference"] else ""),
        "",
    ]
    return "\n".join(lines)


def _open(results: Any, properties: list[str] | None) -> dict[str, xr.Dataset]:
    if isinstance(results, dict):
        return {k: v for k, v in results.items() if properties is None or k in properties}
    root = Path(results)
    out = {}
    for p in sorted(root.glob("*.zarr")):
        if properties is None or p.stem in properties:
            out[p.stem] = xr.open_zarr(p, consolidated=False).load()
    return out


def write_report(
    results: dict[str, xr.Dataset] | str | os.PathLike,
    output: str | os.PathLike,
    *,
    properties: list[str] | None = None,
    figures: bool = True,
    max_rows: int = 40,
) -> dict[str, Any]:
    """Write ``report.md``, ``report.json`` and figures for the property results.

    Parameters
    ----------
    results : property -> combined Dataset, or the results directory of :func:`run_properties`
    output : report directory
    properties : subset to report (default: all present)
    figures : draw the figures (matplotlib, Agg)
    max_rows : items beyond which a variable gets one summary row instead of a full table

    Returns
    -------
    dict with ``tables`` (property -> variable -> rows and summary), ``ranks`` and ``markdown``.
    """
    data = _open(results, properties)
    # the results' element (recorded by the runner) selects the published values
    element = next((str(ds.attrs["element"]) for ds in data.values() if ds.attrs.get("element")), None)
    published = PUBLISHED.get(element, {}) if element else {}
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    md = ["# Property uncertainty report", ""]
    tables: dict[str, Any] = {}
    for prop, ds in data.items():
        md += [f"## {prop}", ""]
        n_s = ds.sizes.get("sample", 0)
        cost = ds["wall_time"].values if "wall_time" in ds else np.array([np.nan])
        md.append(f"{n_s} members; wall time per member: median {np.nanmedian(cost):.2f} s, "
                  f"max {np.nanmax(cost):.2f} s")  # fmt: skip
        md.append("")
        tables[prop] = {}
        for var in _variables(ds, prop):
            rows = uq_table(ds, var)
            summ = summary(rows)
            tables[prop][var] = {"rows": rows, "summary": summ, "units": ds[var].attrs.get("units", "")}
            if len(rows) > max_rows:
                md += [f"### {var}: {len(rows)} items — bracketed {summ['n_bracketed']}/{summ['n_items']}, "
                       f"mean \\|error\\|/Std {_fmt(summ['mean_error_over_std'])}, mean \\|error\\|/(High−Low) "
                       f"{_fmt(summ['mean_error_over_range'])}", ""]  # fmt: skip
                groups = _grouped(ds, var)
                tables[prop][var]["groups"] = groups
                if groups:
                    md += ["| group | items | bracketed | mean \\|error\\|/Std | mean \\|error\\|/(High−Low) |",
                           "|---|---|---|---|---|"]  # fmt: skip
                    md += [f"| {g} | {v['n_items']} | {v['n_bracketed']}/{v['n_items']} | "
                           f"{_fmt(v['mean_error_over_std'])} | {_fmt(v['mean_error_over_range'])} |"
                           for g, v in groups.items()]  # fmt: skip
                    md.append("")
            else:
                md.append(_markdown(rows, summ, var, ds[var].attrs.get("units", "")))
        if prop in published:
            md += [f"Published values for {element}, for context (not used in the statistics):", ""]
            md += [f"- {p['quantity']}: {p['value']} — {p['source']}" for p in published[prop]]
            md.append("")
    ranks = rank_table(data)
    if ranks:
        md += ["## Rank correlations with the MLE (Spearman)", "",
               "| quantity | reference vs MLE | members: mean | std | reference within 1 std |",
               "|---|---|---|---|---|"]  # fmt: skip
        for name, r in ranks.items():
            md.append(f"| {name} | {_fmt(r['reference'])} | {_fmt(r['mean'])} | {_fmt(r['std'])} | "
                      f"{_fmt(r['within_one_std'])} |")  # fmt: skip
        md.append("")
    text = "\n".join(md)
    (out / "report.md").write_text(text)
    js = {"tables": tables, "ranks": {k: {**v, "members": [float(x) for x in v["members"]]} for k, v in ranks.items()},
          "element": element, "published": published}  # fmt: skip
    (out / "report.json").write_text(json.dumps(js, indent=1, default=float))
    if figures:
        _figures(data, ranks, out)
    return {"tables": tables, "ranks": ranks, "markdown": text}


# ------------------------------------------------------------------------------------ figures
def _items_figure(ds: xr.Dataset, variables: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(variables), 1, figsize=(8, 2.6 * len(variables)), squeeze=False)
    for ax, var in zip(axes[:, 0], variables, strict=True):
        x = ds[var]
        (dim,) = [d for d in x.dims if d != "sample"]
        labels = [str(v) for v in ds[dim].values]
        pos = np.arange(len(labels))
        vals = np.asarray(x.transpose("sample", dim).values, dtype=float)
        for k in range(len(labels)):
            col = vals[:, k][np.isfinite(vals[:, k])]
            ax.scatter(np.full(col.size, pos[k]) + np.random.default_rng(k).uniform(-0.15, 0.15, col.size), col,
                       s=4, color="0.6", alpha=0.5, lw=0)  # fmt: skip
        ax.scatter(pos, ds[f"{var}_mle"].values, color="tab:blue", marker="_", s=300, label="MLE", zorder=3)
        ax.scatter(pos, _reference(ds, var).values, color="tab:red", marker="o", s=18, label="reference", zorder=4)
        ax.set_xticks(pos, labels, rotation=45, fontsize=8)
        ax.set_ylabel(f"{var} ({x.attrs.get('units', '')})", fontsize=8)
    axes[0, 0].legend(fontsize=8)
    axes[0, 0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _paths_figure(ds: xr.Dataset, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [str(p) for p in ds["path"].values]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
    for ax, p in zip(axes[0], names, strict=True):
        x = ds["coordinate_reference"].sel(path=p).values if "coordinate_reference" in ds else ds["fraction"].values
        e = np.asarray(ds["energy"].sel(path=p).transpose("sample", "point").values, dtype=float)
        ax.fill_between(x, np.nanmin(e, axis=0), np.nanmax(e, axis=0), color="0.8", label="ensemble")
        ax.plot(x, ds["energy_mle"].sel(path=p), color="tab:blue", label="MLE")
        ax.plot(x, _reference(ds, "energy").sel(path=p), "--", color="tab:red", label="reference")
        ax.set_title(p)
        ax.set_xlabel(ds["coordinate"].attrs.get("long_name", "coordinate")[:30], fontsize=7)
    axes[0, 0].set_ylabel("E − E_bcc (eV/atom)")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _phonon_figure(ds: xr.Dataset, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5), gridspec_kw={"width_ratios": [3, 1]})
    d = ds["distance"].values
    f = np.asarray(ds["frequency"].transpose("sample", "qpoint", "band").values, dtype=float)
    for b in range(f.shape[2]):
        a1.fill_between(d, np.nanmin(f[:, :, b], axis=0), np.nanmax(f[:, :, b], axis=0), color="0.8")
        a1.plot(d, ds["frequency_mle"].isel(band=b), color="tab:blue", lw=1)
        a1.plot(d, _reference(ds, "frequency").isel(band=b), "--", color="tab:red", lw=1)
    if "label" in ds.coords:
        lab = [str(v) for v in ds["label"].values]
        ticks = [(d[i], s) for i, s in enumerate(lab) if s]
        a1.set_xticks([t[0] for t in ticks], [t[1] for t in ticks])
    a1.set_ylabel("frequency (THz)")
    if "dos" in ds:
        g = ds["dos_frequency"].values
        dos = np.asarray(ds["dos"].transpose("sample", ...).values, dtype=float)
        a2.fill_betweenx(g, np.nanmin(dos, axis=0), np.nanmax(dos, axis=0), color="0.8")
        a2.plot(ds["dos_mle"], g, color="tab:blue")
        a2.plot(_reference(ds, "dos"), g, "--", color="tab:red")
        a2.set_xlabel("DOS")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _profile_figure(ds: xr.Dataset, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    e = np.asarray(ds["energy"].transpose("sample", "image").values, dtype=float)
    x = np.arange(e.shape[1])
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.fill_between(x, np.nanmin(e, axis=0), np.nanmax(e, axis=0), color="0.8", label="ensemble")
    ax.plot(x, ds["energy_mle"], "o-", color="tab:blue", label="MLE")
    ax.plot(x, _reference(ds, "energy"), "s--", color="tab:red", label="reference")
    ax.set_xlabel("NEB image")
    ax.set_ylabel("E − E_initial (eV)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _rank_figure(ranks: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ranks), figsize=(3.2 * len(ranks), 2.8), squeeze=False)
    for ax, (name, r) in zip(axes[0], ranks.items(), strict=True):
        m = np.asarray(r["members"], dtype=float)
        m = m[np.isfinite(m)]
        ax.axvspan(r["mean"] - r["std"], r["mean"] + r["std"], color="tab:blue", alpha=0.15)
        ax.hist(m, bins=20, range=(-1, 1), color="tab:blue")
        if np.isfinite(r["reference"]):
            ax.axvline(r["reference"], color="k")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("Spearman ρ with the MLE", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _figures(data: dict[str, xr.Dataset], ranks: dict[str, Any], out: Path) -> None:
    for prop, ds in data.items():
        try:
            if prop == "vacancy" and "energy" in ds and "image" in ds["energy"].dims:
                _profile_figure(ds, out / "vacancy_neb.png")
            if prop == "paths":
                _paths_figure(ds, out / "paths.png")
            elif prop == "phonons":
                _phonon_figure(ds, out / "phonons.png")
            else:
                one_d = [v for v in _variables(ds, prop) if ds[v].ndim == 2]
                if one_d:
                    _items_figure(ds, one_d, out / f"{prop}.png", prop)
        except Exception as err:  # a figure never stops the report
            (out / f"{prop}.figure-error.txt").write_text(f"{type(err).__name__}: {err}\n")
    if ranks:
        _rank_figure(ranks, out / "ranks.png")
