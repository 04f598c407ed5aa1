"""Conformal recalibration of the ensemble's std and envelope, per row kind (pure numpy).

The POPS band is a shape, not a probability: on data unlike the training set its envelope
misses some references and its std is too small in some rows and far too large in others.
Recalibration keeps the shape and fixes the level, per row kind k:

    std'      = t_k · (std + γ_k)
    envelope' = [mle − h₋,  mle + h₊],  h± = max(u_k · (half-width± + δ_k),  z · std'),  u_k ≥ 1

with half-width₋ = mle − min, half-width₊ = max − mle and z = Φ⁻¹((1 + level)/2).

**One band at the level.** The envelope is never narrower than the calibrated std's central
interval mle ± z·std' at the same level: both claim to hold the reference with probability
``level``, so the band reported is the wider of the two on each side. The two scales are fitted
from the same scores, but t_k transfers to a harder kind of cell and u_k often does not: u_k is
a maximum of per-group quantiles of |e|/half-width, which sit near 1 whenever the raw envelope
already brackets most rows of every calibration group. On held-out cells whose errors are
larger than any calibration group's, the envelope then stayed at ~1.3 calibrated σ while the
std band had grown to z·σ'; taking the wider one keeps the envelope's shape where it is the
wider band (asymmetric, spread-shaped) and the std's level where it is not. Since the floor
only widens, the envelope's conformal guarantee is kept.

The offset γ_k (a multiple β of the kind's median spread, β from :data:`OFFSETS`) lets rows
whose spread is near zero get a band of the kind's typical size: on the held-out tungsten
groups most violations sit in such rows. For each candidate β, t_k is the conformal quantile
of the normalised scores |e| / (spread + γ) at the level; the β with the narrowest mean band
wins. Std and envelope are calibrated separately (the std to the Gaussian ±z interval).

Finite-sample guarantee (split conformal, Vovk et al. 2005; Lei et al. 2018): if the rows to
predict are exchangeable with the calibration rows, P(y inside the calibrated band) ≥ level.
With groups, the scale is the largest of the per-group conformal quantiles, so the level
holds (with the same guarantee) within every calibration group. Fitted on
leave-one-group-out folds (cross-conformal by group), each group's scores come from a model
that never saw it: the band then covers a *new* group at the level if that group is no harder
than the hardest calibration group. That is not a theorem about groups unlike all the others;
the nested leave-one-group-out table (:func:`popsdask.evaluation.crossval.calibrated_crossval`) is what
shows, group by group, where it holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import ndtri  # the normal quantile (scipy.stats.norm.ppf), without scipy.stats' import

from ..core.validation import InputError

OFFSETS = (0.0, 0.03, 0.1, 0.3, 1.0)
DEFAULT_LEVEL = 0.95

__all__ = ["DEFAULT_LEVEL", "Calibration", "conformal_quantile", "fit_kind", "fit_scale"]


def conformal_quantile(scores: np.ndarray, level: float, weights: np.ndarray | None = None) -> float:
    """The split-conformal quantile: the ⌈(n + 1)·level⌉-th smallest score (weighted: the
    smallest score whose cumulative weight, with one extra unit of mass at +∞, reaches level).

    Returns inf when the calibration set is too small for the level.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return float("inf")
    w = np.ones_like(s) if weights is None else np.asarray(weights, dtype=np.float64)
    order = np.argsort(s)
    s, w = s[order], w[order] / w.sum() * s.size  # weights normalised to n
    cum = np.cumsum(w) / (s.size + 1.0)
    idx = int(np.searchsorted(cum, level, side="left"))
    return float(s[idx]) if idx < s.size else float("inf")


def fit_scale(
    err: np.ndarray,
    spread: np.ndarray,
    level: float,
    groups: np.ndarray | None = None,
    offsets: tuple[float, ...] = OFFSETS,
    target: float = 1.0,
    worst_group: bool = True,
    minimum: float = 0.0,
    floor: float | np.ndarray = 0.0,
) -> tuple[float, float]:
    """(t, γ) with |err| ≤ t·(spread + γ) at ``level``, for the γ = β·median(spread) of
    ``offsets`` that gives the narrowest mean band (each group weighing the same).

    Without ``groups``, t is the split-conformal quantile of the scores. With ``groups`` and
    ``worst_group``, t is the largest of the groups' conformal quantiles, so that the level
    holds in every calibration group rather than on average over rows (on held-out groups the
    pooled quantile was set by the easy groups and shrank the band where it was already too
    narrow); without ``worst_group``, the quantile of all scores with each group weighing the
    same.
    ``target`` divides t (the Gaussian z for a std); ``minimum`` bounds t/target from below.
    ``floor`` (scalar or per row) is the references' stated precision: the band need only come
    within it of a reference, so the score is max(|err| − floor, 0) / (spread + γ).
    """
    err = np.maximum(np.abs(np.asarray(err, dtype=np.float64)) - np.asarray(floor, dtype=np.float64), 0.0)
    spread = np.asarray(spread, dtype=np.float64)
    labels = np.zeros(err.size, dtype=int) if groups is None else np.unique(groups, return_inverse=True)[1]
    weights = group_weights(labels)
    counts = np.bincount(labels)
    usable = (counts + 1.0) * level <= counts
    scale = float(np.median(spread)) if spread.size else 0.0
    best = (float("inf"), 1.0, 0.0)
    for beta in offsets:
        gamma = beta * scale
        denom = spread + gamma
        ok = denom > 0
        scores = np.where(ok, err / np.where(ok, denom, 1.0), np.where(err > 0, np.inf, 0.0))
        if worst_group:
            # a group with fewer than level/(1 - level) rows has no finite conformal quantile
            # at this level and cannot bound anything: it is left out of the maximum
            q = [conformal_quantile(scores[labels == g], level) for g in np.unique(labels) if usable[g]]
            t = max(q) if q else float("inf")
        else:
            t = conformal_quantile(scores, level, weights)
        t = max(t, minimum * target)
        width = t * float(np.average(denom, weights=weights)) if np.isfinite(t) else float("inf")
        if width < best[0]:
            best = (width, t, gamma)
    if not np.isfinite(best[0]):
        raise InputError(
            f"{err.size} calibration rows in groups of at most {counts.max(initial=0)}: too few for a "
            f"conformal quantile at level {level} (each group needs ≥ {int(np.ceil(level / (1 - level)))} rows)"
        )
    return best[1] / target, best[2]


def fit_kind(
    y: np.ndarray,
    mle: np.ndarray,
    std: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    level: float,
    groups: np.ndarray | None = None,
    floor: float | np.ndarray = 0.0,
) -> dict[str, float]:
    """Scale and offset of the std and of the envelope for one row kind (see :func:`fit_scale`;
    ``floor``: the references' stated precision, scalar or per row)."""
    e = np.asarray(y, dtype=np.float64) - mle
    # worst group for both: a group-weighted pooled quantile for the std left ±4σ below 99 % on
    # three of the eight held-out tungsten groups (the worst-group scale: none)
    z = float(ndtri((1.0 + level) / 2.0))
    t_std, g_std = fit_scale(e, std, level, groups, target=z, floor=floor)
    # one scale for both sides: the score of a row is its error over the half-width on its side
    half = np.where(e >= 0, hi - mle, mle - lo)
    # the envelope only widens: evidence from other groups never narrows a group's own bound (a
    # narrowing scale from the other groups raised the held-out EOS energies' violation 0 → 33 %)
    t_env, g_env = fit_scale(e, half, level, groups, minimum=1.0, floor=floor)
    return {
        "std_scale": t_std,
        "std_offset": g_std,
        "envelope_scale": t_env,
        "envelope_offset": g_env,
        "n": int(e.size),
    }


@dataclass
class Calibration:
    """Per-kind conformal scales, as stored in a posterior's ``calibration`` attribute.

    Attributes
    ----------
    level : target coverage of the std's ±z interval and of the envelope
    kinds : {kind name: {"std_scale", "std_offset", "envelope_scale", "envelope_offset", "n"}}
    method : how the scores were made ("split", "cross-conformal by <group>")
    info : provenance: store, groups, seed
    """

    level: float
    kinds: dict[str, dict[str, float]]
    method: str
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "kinds": self.kinds, "method": self.method, "info": self.info}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        return cls(float(d["level"]), dict(d["kinds"]), str(d["method"]), dict(d.get("info", {})))

    def apply(self, kind: str, mle, std, lo, hi):
        """Calibrated (std, lo, hi) of rows of one kind (numpy or dask arrays); unchanged when
        the kind was not calibrated."""
        c = self.kinds.get(kind)
        if c is None:
            return std, lo, hi
        return apply_scales(c, mle, std, lo, hi, self.level)


SCALE_KEYS = ("std_scale", "std_offset", "envelope_scale", "envelope_offset")


def apply_scales(c: dict[str, Any], mle, std, lo, hi, level: float):
    """(std', lo', hi') of the module docstring's form for scales ``c`` (:data:`SCALE_KEYS`;
    numbers, or per-row numpy or dask arrays): the envelope is the wider, on each side, of the
    scaled envelope and mle ± z·std' at ``level``.

    Parameters
    ----------
    c : {"std_scale", "std_offset", "envelope_scale", "envelope_offset"}: numbers or (n,) arrays
    mle, std, lo, hi : (n,) raw MLE, std and envelope
    level : the calibration's coverage level (sets z = Φ⁻¹((1 + level)/2))

    Returns
    -------
    std', lo', hi' : (n,) arrays of the input's type
    """
    t, g = c["envelope_scale"], c["envelope_offset"]
    calibrated_std = c["std_scale"] * (std + c["std_offset"])
    floor = float(ndtri((1.0 + level) / 2.0)) * calibrated_std
    below = np.maximum(t * (mle - lo + g), floor)
    above = np.maximum(t * (hi - mle + g), floor)
    return calibrated_std, mle - below, mle + above


def group_weights(labels: np.ndarray) -> np.ndarray:
    """Weights giving every group the same total weight."""
    _, inv, counts = np.unique(np.asarray(labels), return_inverse=True, return_counts=True)
    return 1.0 / counts[inv]
