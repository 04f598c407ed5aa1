"""Nested leave-one-group-out check of a std band with a spread exponent (not adopted).

The std band of :mod:`popsdask.calibration.conformal` is ``t·(σ + γ)``. This script tries
``t·(σ + γ)^p · m^(1−p)`` (m = the calibration rows' median σ, so units are kept). p and
γ = β·m are chosen as the library chooses β: the narrowest mean band at the worst group's
conformal quantile. Each held-out group is calibrated from the *other* groups' fold
predictions of a ``popsdask crossval`` run, force rows, symmetry zeros left out::

    python benchmarks/calibration_forms.py crossval --exponents 1,0.9,0.8,0.7,0.6,0.5
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import xarray as xr
from scipy.stats import norm

from popsdask.calibration.conformal import OFFSETS, conformal_quantile
from popsdask.calibration.metrics import symmetry_zeros
from popsdask.io.store import KIND_CODES


def fold_rows(crossval: Path, kind: str) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """|error|, std and tolerance of each left-out group's rows of ``kind`` (symmetry zeros out)."""
    out = {}
    for path in sorted(crossval.glob("*/predictions.zarr")):
        if path.parent.name.startswith("_"):  # the random split is not a group
            continue
        p = xr.open_zarr(path, consolidated=False)
        k = p["kind"].values == KIND_CODES[kind]
        y, mle, s, lo, hi, tol = (p[v].values[k] for v in ("y", "mle", "std", "min", "max", "tolerance"))
        keep = ~symmetry_zeros(y, mle, lo, hi, tol)
        if keep.any():
            out[path.parent.name] = (np.abs(y - mle)[keep], s[keep], tol[keep])
    return out


def fit(rows: dict, groups: list[str], exponents: tuple[float, ...], level: float):
    """(t, γ, p, m) with the narrowest group-averaged band at the worst group's quantile."""
    m = float(np.median(np.concatenate([rows[g][1] for g in groups])))
    best = (np.inf, 0.0, 0.0, 1.0)
    for p in exponents:
        for beta in OFFSETS:
            bands = {g: (rows[g][1] + beta * m) ** p * m ** (1 - p) for g in groups}
            q = [
                conformal_quantile(np.where(bands[g] > 0, rows[g][0] / np.maximum(bands[g], 1e-300), np.inf), level)
                for g in groups
                if (len(rows[g][0]) + 1) * level <= len(rows[g][0])
            ]
            width = max(q) * np.mean([b.mean() for b in bands.values()])
            if width < best[0]:
                best = (width, max(q), beta * m, p)
    return best[1] / norm.ppf((1 + level) / 2), best[2], best[3], m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("crossval", type=Path, help="output directory of popsdask crossval --group-by group")
    ap.add_argument("--exponents", default="1,0.9,0.8,0.7,0.6,0.5")
    ap.add_argument("--level", type=float, default=0.95)
    ap.add_argument("--kind", default="force")
    ap.add_argument("--min-rows", type=int, default=1000)
    args = ap.parse_args()
    rows = fold_rows(args.crossval, args.kind)
    print("| exponents tried | left out | rows | chosen p | β | ±4σ | mean \\|err\\|/σ |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for exponents in ((1.0,), tuple(float(v) for v in args.exponents.split(","))):
        for g, (e, s, tol) in rows.items():
            if len(e) < args.min_rows:
                continue
            t, gamma, p, m = fit(rows, [h for h in rows if h != g], exponents, args.level)
            band = t * (s + gamma) ** p * m ** (1 - p)
            cover, ratio = np.mean(e <= 4 * band + tol), np.mean(e / band)
            label = ",".join(f"{v:g}" for v in exponents)
            print(f"| {label} | {g} | {len(e)} | {p:g} | {gamma / m:.2g} | {cover:.2%} | {ratio:.3g} |")


if __name__ == "__main__":
    main()
