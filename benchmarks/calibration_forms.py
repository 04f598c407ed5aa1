"""Nested leave-one-group-out comparison of calibration forms for the force band (none adopted).

Each left-out group is calibrated from the *other* groups' fold predictions of a ``popsdask
crossval --group-by group`` run only, force rows, symmetry zeros out, and tabulated against the
targets (EV ≤ 5 %, ±4σ ≥ 99 %, mean |err|/σ ≥ 0.3, mean width ≤ 2.5× raw). The forms:

- ``library``: :func:`popsdask.calibration.conformal.fit_kind` (worst group's conformal quantile,
  one offset γ = β·median spread);
- ``configuration``: the offset is β times the row's *configuration's* RMS force spread, so a row
  of small spread in a configuration of large spread gets that configuration's size;
- ``mondrian-std`` / ``mondrian-support``: four bins by the calibration rows' quartiles of the raw
  σ or of the support score, each with its own library scales;
- ``pooled-guard``: the group-weighted pooled quantile, raised where needed so that 99 % of every
  calibration group lies within 4σ′.

::

    python benchmarks/calibration_forms.py ta/crossval --tolerance energy=0.001,force=0.001
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.stats import norm

from popsdask.calibration.conformal import OFFSETS, apply_scales, conformal_quantile, fit_kind, fit_scale
from popsdask.calibration.metrics import band_metrics, nll_floor, parse_tolerance, symmetry_zeros
from popsdask.engine.predictions import band_arrays
from popsdask.evaluation.crossval import RANDOM_SPLIT, load_folds

FORMS = ("library", "configuration", "mondrian-std", "mondrian-support", "pooled-guard")
KEYS = ("y", "mle", "std", "min", "max", "tolerance", "floor", "support")


def fold_rows(crossval: str, floors: dict | None) -> dict[str, dict[str, np.ndarray]]:
    """Each left-out group's force rows (symmetry zeros out) with its configuration's RMS spread."""
    out = {}
    for name, pred in load_folds(crossval).items():
        if name == RANDOM_SPLIT:
            continue
        v = band_arrays(pred, raw=True, floors=floors)["force"]
        _, inv = np.unique(pred["config"].values[v["mask"]], return_inverse=True)
        rms = np.sqrt(np.bincount(inv, v["std"] ** 2) / np.bincount(inv))[inv]
        keep = ~symmetry_zeros(v["y"], v["mle"], v["min"], v["max"], v["tolerance"])
        out[name] = {k: v[k][keep] for k in KEYS} | {"rms": rms[keep]}
    return out


def worst_group(scores: np.ndarray, labels: np.ndarray, level: float) -> float:
    """The largest conformal quantile over the groups big enough to have one."""
    q = [conformal_quantile(scores[labels == g], level) for g in np.unique(labels)]
    return max((v for v in q if np.isfinite(v)), default=float("inf"))


def configuration_scale(err, spread, rms, labels, level, minimum, target):
    """(t, β): |err| ≤ t·(spread + β·rms) at the worst group's quantile, β narrowest on average."""
    w = 1.0 / np.unique(labels, return_inverse=True, return_counts=True)[2][np.unique(labels, return_inverse=True)[1]]
    best = (np.inf, 1.0, 0.0)
    for beta in OFFSETS:
        den = spread + beta * rms
        scores = np.where(den > 0, err / np.where(den > 0, den, 1.0), np.where(err > 0, np.inf, 0.0))
        t = max(worst_group(scores, labels, level), minimum * target)
        if t * np.average(den, weights=w) < best[0]:
            best = (t * np.average(den, weights=w), t / target, beta)
    return best[1], best[2]


def scales(form: str, cal: dict, labels: np.ndarray, new: dict, level: float) -> dict:
    """The four scales of :func:`popsdask.calibration.conformal.apply_scales` for ``new``'s rows."""
    e = cal["y"] - cal["mle"]
    half = np.where(e >= 0, cal["max"] - cal["mle"], cal["mle"] - cal["min"])
    z = float(norm.ppf((1 + level) / 2))
    if form == "library":
        return fit_kind(cal["y"], cal["mle"], cal["std"], cal["min"], cal["max"], level, labels, cal["floor"])
    if form == "configuration":
        err = np.maximum(np.abs(e) - cal["floor"], 0.0)
        ts, bs = configuration_scale(err, cal["std"], cal["rms"], labels, level, 0.0, z)
        te, be = configuration_scale(err, half, cal["rms"], labels, level, 1.0, 1.0)
        return {
            "std_scale": ts,
            "std_offset": bs * new["rms"],
            "envelope_scale": te,
            "envelope_offset": be * new["rms"],
        }
    if form.startswith("mondrian"):
        key = "std" if form == "mondrian-std" else "support"
        edges = np.quantile(cal[key], [0.25, 0.5, 0.75])
        here, there = np.searchsorted(edges, cal[key]), np.searchsorted(edges, new[key])
        out = {k: np.zeros(new["y"].size) for k in ("std_scale", "std_offset", "envelope_scale", "envelope_offset")}
        for b in range(4):
            m = here == b
            c = fit_kind(cal["y"][m], cal["mle"][m], cal["std"][m], cal["min"][m], cal["max"][m], level, labels[m],
                         cal["floor"][m])  # fmt: skip
            for k in out:
                out[k][there == b] = c[k]
        return out
    # pooled-guard
    ts, gs = fit_scale(e, cal["std"], level, labels, target=z, worst_group=False, floor=cal["floor"])
    err = np.maximum(np.abs(e) - cal["floor"], 0.0)
    den = cal["std"] + gs
    scores = np.where(den > 0, err / np.where(den > 0, den, 1.0), np.where(err > 0, np.inf, 0.0))
    te, ge = fit_scale(e, half, level, labels, minimum=1.0, worst_group=False, floor=cal["floor"])
    return {"std_scale": max(ts, worst_group(scores, labels, 0.99) / 4), "std_offset": gs,
            "envelope_scale": te, "envelope_offset": ge}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("crossval", help="output directory of popsdask crossval --group-by group")
    ap.add_argument("--level", type=float, default=0.95)
    ap.add_argument("--tolerance", default=None, help="the references' precision, e.g. energy=0.001,force=0.001")
    ap.add_argument("--forms", default=",".join(FORMS))
    args = ap.parse_args()
    rows = fold_rows(args.crossval, parse_tolerance(args.tolerance) if args.tolerance else None)
    print("| form | left out | rows | EV raw → cal | ±4σ cal | mean \\|err\\|/σ cal | width cal/raw | misses |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for form in args.forms.split(","):
        for g, new in rows.items():
            if new["y"].size == 0:
                continue
            others = [h for h in rows if h != g]
            cal = {k: np.concatenate([rows[h][k] for h in others]) for k in new}
            labels = np.concatenate([np.full(rows[h]["y"].size, h) for h in others])
            std, lo, hi = apply_scales(scales(form, cal, labels, new, args.level), new["mle"], new["std"], new["min"],
                                       new["max"], args.level)  # fmt: skip
            common = {"tol": new["tolerance"], "nll_floor": nll_floor(new["y"], new["mle"]), "floor": new["floor"]}
            raw = band_metrics(new["y"], new["mle"], new["std"], new["min"], new["max"], curve=False, **common)
            m = band_metrics(new["y"], new["mle"], std, lo, hi, curve=False, reference_band=(new["min"], new["max"]),
                             **common)  # fmt: skip
            ratio = m["mean_envelope_width"] / raw["mean_envelope_width"]
            misses = [
                label
                for label, miss in (
                    ("EV", m["envelope_violation"] > 0.05),
                    ("±4σ", m["coverage_4sigma"] < 0.99),
                    ("\\|err\\|/σ", m["mean_abs_error_over_std"] < 0.3),
                    ("width", ratio > 2.5),
                )
                if miss
            ]
            small = " †" if new["y"].size < 1000 else ""
            print(
                f"| {form} | {g}{small} | {new['y'].size} | {raw['envelope_violation']:.2%} → "
                f"{m['envelope_violation']:.2%} | {m['coverage_4sigma']:.2%} | {m['mean_abs_error_over_std']:.3g} "
                f"| {ratio:.3g} | {', '.join(misses)} |"
            )


if __name__ == "__main__":
    main()
