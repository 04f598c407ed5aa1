"""Spearman rank statistics of ensemble orderings (the paper's Fig. 5).

For a property with one value per item (phase, SIA, surface), the MLE orders the items; each
ensemble member orders them too. :func:`rank_correlations` gives the Spearman coefficient
between the MLE's and every member's ordering, and the reference's coefficient with the MLE,
so users can judge how trustworthy a predicted ranking is without reference data: the paper
finds the reference-MLE coefficient within one standard deviation of the ensemble mean.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

__all__ = ["RANKED", "rank_correlations", "rank_table"]

#: (property, variable, items excluded) ranked by default: Fig. 5's panels
RANKED: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "phase energy": ("phases", "energy", ("bcc",)),
    "phase volume": ("phases", "volume_ratio", ("bcc",)),
    "SIA formation energy": ("interstitials", "formation_energy", ()),
    "surface energy": ("surfaces", "surface_energy", ()),
}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(spearmanr(a[ok], b[ok]).statistic)


def rank_correlations(ds: xr.Dataset, variable: str, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Spearman coefficients of each member's and the reference's ordering against the MLE.

    Parameters
    ----------
    ds : combined results of one property (``<variable>`` (sample, item), ``<variable>_mle`` and
        ``<variable>_reference`` (item)), one item dimension
    variable : the ranked variable
    exclude : item labels left out (e.g. bcc, zero by definition)

    Returns
    -------
    dict with ``members`` (per-sample coefficients, NaN where fewer than three items are
    finite), ``reference`` (reference vs MLE), ``mean``, ``std``, ``within_one_std`` and ``items``.
    """
    mle = ds[f"{variable}_mle"]
    (dim,) = mle.dims
    keep = [str(v) for v in ds[dim].values if str(v) not in set(exclude)]
    sel = {dim: keep}
    m = np.asarray(mle.sel(sel).values, dtype=float)
    members = np.array([_spearman(m, np.asarray(row, dtype=float)) for row in ds[variable].sel(sel).values])
    ref_name = f"{variable}_reference"
    ref = _spearman(m, np.asarray(ds[ref_name].sel(sel).values, dtype=float)) if ref_name in ds else float("nan")
    fin = members[np.isfinite(members)]
    mean, std = (float(fin.mean()), float(fin.std())) if fin.size else (float("nan"), float("nan"))
    return {
        "items": keep,
        "members": members,
        "reference": ref,
        "mean": mean,
        "std": std,
        "within_one_std": bool(abs(ref - mean) <= std) if np.isfinite(ref) else None,
    }


def rank_table(results: dict[str, xr.Dataset]) -> dict[str, dict[str, Any]]:
    """Rank statistics of every :data:`RANKED` quantity present in ``results`` (property -> Dataset)."""
    out = {}
    for name, (prop, var, excl) in RANKED.items():
        ds = results.get(prop)
        if ds is None or var not in ds or f"{var}_mle" not in ds:
            continue
        out[name] = rank_correlations(ds, var, excl)
    return out
