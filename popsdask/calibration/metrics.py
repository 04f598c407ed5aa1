"""Calibration diagnostics of an uncertainty band: pure numpy on per-row summaries.

Every function takes per-row arrays of one subset of rows (one row kind, optionally one group):
reference ``y``, ``mle``, ensemble ``std`` and an envelope ``[lo, hi]``. They are the
metrics that ``popsdask report`` and ``popsdask crossval`` tabulate.

Conventions
-----------
- **Tolerance.** A reference counts as inside an envelope when ``lo - tol <= y <= hi + tol``.
  ``tol`` is per row: the larger of :data:`TOLERANCE_FACTOR` (1e-8) times the row kind's RMS
  reference over the prediction set, and the worst-case float64 round-off of the MLE
  product, P·ε·Σⱼ|xⱼθⱼ|. Round-off of a P-term float64 sum is at most that bound (and in
  practice ~1e-14 relative), so 1e-8 is far above it and far below any physical error; the
  round-off term keeps the rule meaningful on subsets whose references are all zero.
- **Symmetry zeros.** Rows whose reference, MLE and envelope half-widths are all within ``tol``
  of zero (forces that vanish by symmetry) carry no information about the band: they are
  counted (``n_symmetry_zeros``) and left out of every coverage and calibration metric;
  accuracy (MAE, RMSE) is over all rows.
- **The same rows before and after calibration.** Symmetry zeros and fixed rows are properties
  of the reference and of the posterior, not of a band: a calibrated band is classified from
  the raw envelope it came from (``reference_band``), so the raw and calibrated metrics of one
  prediction are computed on the same rows (a calibrated offset would otherwise lift a
  symmetry zero out of its class and count it as covered).
- **A floor the user states.** ``floor`` (per row, :func:`check_tolerance`) is the reference's
  own precision, e.g. the DFT's force noise: a reference within ``max(tol, floor)`` of the band
  counts as inside, in the EV, the exact-box EV and the ±kσ coverages. The violations it
  forgives are counted beside the EV (``n_violations_below_floor``). Symmetry zeros and fixed
  rows are still decided with ``tol`` alone.
- **Fixed rows.** Rows, other than symmetry zeros, whose envelope is narrower than ``tol``: every
  posterior member predicts the same value (a force component whose descriptor gradient
  vanishes because the environment inside the cutoff is symmetric, while the reference, which
  sees beyond it, is not). No posterior of these descriptors can bracket them, so their share
  of the violations (``fixed_violation``) is reported beside the EV, which still counts them.
- **Support.** ``support`` (per row, optional) is how far a row lies from the training rows: the
  regularised leverage α·xᵀΣx of :func:`popsdask.engine.predictions.predict_ensemble`. The
  metrics then include the EV, mean width and mean |err|/σ by decile of it
  (``support_deciles``), a measurement of where the band misses, not a correction.
- **NLL floor.** The Gaussian negative log-likelihood uses ``max(std, floor)`` with
  ``floor`` = :data:`NLL_FLOOR_FACTOR` (0.01) × the kind's RMSE of the MLE, so that rows with
  (near-)zero spread give a large but finite penalty.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.validation import InputError

TOLERANCE_FACTOR = 1e-8
NLL_FLOOR_FACTOR = 0.01
INTERVAL_ALPHA = 0.05
COVERAGE_K = np.round(np.linspace(0.0, 5.0, 51), 10)
EV_CURVE_SAMPLES = (50, 100, 200, 500, 1000, 2000, 5000)
# numpy < 2 has only trapz, which numpy >= 2.4 no longer has (nor its type stubs)
_trapezoid = getattr(np, "trapezoid", None) or getattr(np, "trapz")  # noqa: B009

TOLERANCE_KINDS = {"energy": "eV/atom", "force": "eV/Å", "stress": "the store's stress unit"}

__all__ = [
    "COVERAGE_K",
    "EV_CURVE_SAMPLES",
    "TOLERANCE_KINDS",
    "band_metrics",
    "check_tolerance",
    "coverage_curve",
    "envelope_violation_curve",
    "gaussian_nll",
    "interval_score",
    "kind_tolerance",
    "miscalibration_area",
    "nll_floor",
    "parse_tolerance",
    "support_deciles",
    "symmetry_zeros",
]


def check_tolerance(tolerance: dict[str, Any] | None, where: str = "tolerance") -> dict[str, float]:
    """The per-kind floors of a ``tolerance`` mapping as floats; one-line ``InputError`` otherwise.

    Keys are row kinds of :data:`TOLERANCE_KINDS` (energy per atom, force, stress); values are
    finite and ≥ 0, in the kind's unit. ``None`` gives no floor.
    """
    if tolerance is None:
        return {}
    if not isinstance(tolerance, dict):
        raise InputError(f"{where}: {tolerance!r}: give a mapping such as {{'energy': 0.001, 'force': 0.01}}")
    out = {}
    for key, value in tolerance.items():
        if key not in TOLERANCE_KINDS:
            raise InputError(f"{where}: unknown row kind {key!r} (use {', '.join(TOLERANCE_KINDS)})")
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise InputError(f"{where}: {key}={value!r} is not a number") from None
        if isinstance(value, bool) or not np.isfinite(v) or v < 0:
            raise InputError(f"{where}: {key}={value!r}: must be a finite number >= 0 ({TOLERANCE_KINDS[key]})")
        out[key] = v
    return out


def parse_tolerance(text: str, where: str = "--tolerance") -> dict[str, float]:
    """``"energy=0.001,force=0.01"`` as :func:`check_tolerance`'s mapping (one-line errors)."""
    pairs = {}
    for item in str(text).split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise InputError(
                f"{where} {text!r}: give KIND=VALUE pairs separated by commas, e.g. energy=0.001,force=0.01"
            )
        if key.strip() in pairs:
            raise InputError(f"{where} {text!r}: {key.strip()} given twice")
        pairs[key.strip()] = value.strip()
    return check_tolerance(pairs, where)


def kind_tolerance(y: np.ndarray) -> float:
    """``TOLERANCE_FACTOR`` × RMS of the references (0 for an empty set)."""
    y = np.asarray(y, dtype=np.float64)
    return float(TOLERANCE_FACTOR * np.sqrt(np.mean(y**2))) if y.size else 0.0


def nll_floor(y: np.ndarray, mle: np.ndarray) -> float:
    """The NLL's std floor of a row kind: :data:`NLL_FLOOR_FACTOR` × its RMSE of the MLE."""
    y = np.asarray(y, dtype=np.float64)
    return NLL_FLOOR_FACTOR * float(np.sqrt(np.mean((y - mle) ** 2))) if y.size else 0.0


def outside(y: np.ndarray, lo: np.ndarray, hi: np.ndarray, tol: float | np.ndarray) -> np.ndarray:
    """Whether each reference lies outside ``[lo - tol, hi + tol]``."""
    return (y < lo - tol) | (y > hi + tol)


def symmetry_zeros(
    y: np.ndarray, mle: np.ndarray, lo: np.ndarray, hi: np.ndarray, tol: float | np.ndarray
) -> np.ndarray:
    """Rows whose reference, MLE and envelope are all within ``tol`` of zero."""
    return (np.abs(y) <= tol) & (np.abs(mle) <= tol) & (np.abs(lo) <= tol) & (np.abs(hi) <= tol)


def coverage_curve(err: np.ndarray, std: np.ndarray, k: np.ndarray = COVERAGE_K, tol: float | np.ndarray = 0.0):
    """Observed fraction of |error| ≤ k·std + tol and the Gaussian nominal fraction erf(k/√2).

    Returns
    -------
    observed, nominal : (len(k),) arrays
    """
    from scipy.special import erf  # scipy on first use: the CLI imports this module for its defaults

    a = np.abs(np.asarray(err, dtype=np.float64))
    s = np.asarray(std, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    if a.size == 0:
        return np.full(k.shape, np.nan), erf(k / np.sqrt(2.0))
    observed = np.array([np.mean(a <= kk * s + tol) for kk in k])
    return observed, erf(k / np.sqrt(2.0))


def miscalibration_area(err: np.ndarray, std: np.ndarray, n_levels: int = 101) -> float:
    """∫₀¹ |observed(p) − p| dp for central Gaussian intervals ±Φ⁻¹((1+p)/2)·std.

    0 for a perfectly calibrated Gaussian band, up to 0.5 for one that covers nothing or
    everything at every level.
    """
    from scipy.special import ndtri  # scipy.stats.norm.ppf

    a = np.abs(np.asarray(err, dtype=np.float64))
    if a.size == 0:
        return float("nan")
    p = np.linspace(0.0, 1.0, n_levels)
    z = ndtri((1.0 + p[:-1]) / 2.0)
    ratio = np.sort(np.divide(a, std, out=np.full(a.shape, np.inf), where=std > 0))
    ratio[(a == 0) & (std == 0)] = 0.0
    observed = np.append(np.searchsorted(ratio, z, side="right") / a.size, 1.0)
    return float(_trapezoid(np.abs(observed - p), p))


def interval_score(y: np.ndarray, lo: np.ndarray, hi: np.ndarray, alpha: float = INTERVAL_ALPHA) -> float:
    """Mean interval score (Gneiting & Raftery 2007, eq. 43) of ``[lo, hi]`` read as a central
    (1 − alpha) interval: width + (2/alpha)·(distance outside). Lower is better."""
    y, lo, hi = (np.asarray(a, dtype=np.float64) for a in (y, lo, hi))
    if y.size == 0:
        return float("nan")
    penalty = (2.0 / alpha) * (np.maximum(lo - y, 0.0) + np.maximum(y - hi, 0.0))
    return float(np.mean(hi - lo + penalty))


def gaussian_nll(err: np.ndarray, std: np.ndarray, floor: float) -> float:
    """Mean Gaussian negative log-likelihood of the errors with std floored at ``floor``."""
    e = np.asarray(err, dtype=np.float64)
    if e.size == 0:
        return float("nan")
    s = np.maximum(np.asarray(std, dtype=np.float64), floor)
    if not np.all(s > 0):
        return float("inf")
    return float(np.mean(0.5 * np.log(2.0 * np.pi * s**2) + e**2 / (2.0 * s**2)))


def envelope_violation_curve(bracket: np.ndarray, sizes: tuple[int, ...] | np.ndarray) -> np.ndarray:
    """Fraction of rows not bracketed by the first S samples, for each S in ``sizes``.

    ``bracket`` is each row's smallest sample count (of ``sizes``) whose envelope contains the
    reference, ``inf`` when none does.
    """
    b = np.asarray(bracket, dtype=np.float64)
    if b.size == 0:
        return np.full(len(sizes), np.nan)
    return np.array([np.mean(b > s) for s in sizes])


def band_metrics(
    y: np.ndarray,
    mle: np.ndarray,
    std: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    tol: float | np.ndarray,
    nll_floor: float,
    box: tuple[np.ndarray, np.ndarray] | None = None,
    bracket: np.ndarray | None = None,
    sizes: tuple[int, ...] = EV_CURVE_SAMPLES,
    curve: bool = True,
    reference_band: tuple[np.ndarray, np.ndarray] | None = None,
    floor: float | np.ndarray = 0.0,
    support: np.ndarray | None = None,
) -> dict[str, Any]:
    """Accuracy, coverage, calibration and sharpness of one subset of rows.

    Parameters
    ----------
    y, mle, std, lo, hi : (n,) references, MLE predictions, ensemble std, envelope
    tol, nll_floor : the kind's tolerance and NLL floor (see the module docstring)
    box : optional (n,) exact lower and upper bounds over the whole posterior
    bracket : optional (n,) smallest sample count that brackets each reference
    curve : include the coverage curve and the EV-vs-samples curve (lists)
    reference_band : optional (n,) raw envelope (lo, hi) that decides symmetry zeros and fixed
        rows, for a calibrated ``lo, hi`` (default: ``lo, hi`` themselves)
    floor : the reference's precision, scalar or (n,) (see the module docstring; default 0)
    support : optional (n,) distance of each row from the training rows (``support_deciles``)

    Returns
    -------
    dict of JSON-ready floats (and lists for the curves)
    """
    y, mle, std, lo, hi = (np.asarray(a, dtype=np.float64) for a in (y, mle, std, lo, hi))
    err = y - mle
    tol = np.broadcast_to(np.asarray(tol, dtype=np.float64), y.shape)
    rlo, rhi = (lo, hi) if reference_band is None else (np.asarray(a, dtype=np.float64) for a in reference_band)
    zero = symmetry_zeros(y, mle, rlo, rhi, tol)
    m = ~zero
    floor = np.broadcast_to(np.asarray(floor, dtype=np.float64), y.shape)
    e, s, t = err[m], std[m], tol[m]
    allowed = np.maximum(t, floor[m])  # within the reference's precision counts as inside
    n_used = int(m.sum())

    def mean(a: np.ndarray) -> float:
        return float(np.mean(a)) if a.size else float("nan")

    spread = s > t
    fixed = rhi[m] - rlo[m] <= t
    beyond = outside(y[m], lo[m], hi[m], allowed)
    out: dict[str, Any] = {
        "n": int(y.size),
        "n_symmetry_zeros": int(zero.sum()),
        "n_fixed": int(fixed.sum()),
        "tolerance": float(np.median(tol)) if np.size(tol) else 0.0,
        "floor": float(np.median(floor)) if np.size(floor) else 0.0,
        "mae_mle": mean(np.abs(err)),
        "rmse_mle": float(np.sqrt(np.mean(err**2))) if err.size else float("nan"),
        "envelope_violation": mean(beyond),
        "n_violations_below_floor": int(np.count_nonzero(outside(y[m], lo[m], hi[m], t) & ~beyond)),
        "fixed_violation": mean(fixed & beyond),
        "mean_std": mean(s),
        "mean_envelope_width": mean(hi[m] - lo[m]),
        "mean_abs_error_over_std": mean(np.abs(e[spread]) / s[spread]),
        "median_abs_error_over_std": float(np.median(np.abs(e[spread]) / s[spread])) if spread.any() else float("nan"),
        "coverage_2sigma": mean(np.abs(e) <= 2 * s + allowed),
        "coverage_4sigma": mean(np.abs(e) <= 4 * s + allowed),
        "miscalibration_area": miscalibration_area(e, s) if n_used else float("nan"),
        "interval_score": interval_score(y[m], lo[m], hi[m]),
        "nll": gaussian_nll(e, s, nll_floor),
    }
    if box is not None:
        blo, bhi = (np.asarray(a, dtype=np.float64)[m] for a in box)
        out["box_violation"] = mean(outside(y[m], blo, bhi, allowed))
        out["mean_box_width"] = mean(bhi - blo)
        out["box_interval_score"] = interval_score(y[m], blo, bhi)
    if support is not None:
        w = hi[m] - lo[m]
        ratio = np.where(s > t, np.abs(e) / np.where(s > t, s, 1.0), np.nan)
        out["support_deciles"] = support_deciles(np.asarray(support, dtype=np.float64)[m], beyond, w, ratio)
    if curve:
        observed, nominal = coverage_curve(e, s, COVERAGE_K, allowed)
        out["coverage_curve"] = {"k": COVERAGE_K.tolist(), "observed": observed.tolist(), "nominal": nominal.tolist()}
        if bracket is not None:
            b = np.asarray(bracket, dtype=np.float64)[m]
            ev = envelope_violation_curve(b, sizes)
            out["ev_vs_samples"] = {"n_samples": [int(v) for v in sizes], "envelope_violation": ev.tolist()}
    return out


def support_deciles(
    score: np.ndarray, violation: np.ndarray, width: np.ndarray, error_over_std: np.ndarray, n_bins: int = 10
) -> dict[str, list]:
    """EV, mean width and mean |err|/σ (rows without spread left out) by quantile bin of a support score.

    Parameters
    ----------
    score, violation, width, error_over_std : (n,) per row

    Returns
    -------
    dict of lists, one entry per bin (lowest score first): ``upper`` (the bin's upper edge),
    ``n``, ``envelope_violation``, ``mean_envelope_width``, ``mean_abs_error_over_std``
    """
    edges = np.quantile(score, np.linspace(0.0, 1.0, n_bins + 1)[1:]) if score.size else np.zeros(0)
    bins = np.minimum(np.searchsorted(edges, score, side="left"), max(edges.size - 1, 0))
    out: dict[str, list] = {k: [] for k in ("upper", "n", "envelope_violation", "mean_envelope_width",
                                            "mean_abs_error_over_std")}  # fmt: skip
    for b, upper in enumerate(edges):
        rows = bins == b
        r = error_over_std[rows]
        r = r[np.isfinite(r)]
        out["upper"].append(float(upper))
        out["n"].append(int(rows.sum()))
        out["envelope_violation"].append(float(np.mean(violation[rows])) if rows.any() else float("nan"))
        out["mean_envelope_width"].append(float(np.mean(width[rows])) if rows.any() else float("nan"))
        out["mean_abs_error_over_std"].append(float(np.mean(r)) if r.size else float("nan"))
    return out


def roundoff_tolerance(X: np.ndarray, coef: np.ndarray, intercept: float = 0.0) -> np.ndarray:
    """Per row: the worst-case float64 round-off P·ε·Σⱼ|xⱼθⱼ| of the MLE product x·θ (+ b),
    the second term of the tolerance convention above (P counts the intercept when there is one).

    Parameters
    ----------
    X : (n, P) rows; coef : (P,) coefficients; intercept : b

    Returns
    -------
    (n,) float64
    """
    X = np.asarray(X, dtype=np.float64)
    coef = np.asarray(coef, dtype=np.float64)
    p = coef.size + int(intercept != 0.0)
    return p * np.finfo(np.float64).eps * (np.abs(X) @ np.abs(coef) + abs(float(intercept)))
