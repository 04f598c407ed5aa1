"""scikit-learn scorers for the uncertainty band of a POPS fit, for searches over POPS settings.

POPS settings (``leverage_percentile``, ``minimum_relative_error``, ``mode_threshold``,
``percentile_clipping``) do not change ``coef_``, so the default R² cannot rank them: these
scorers rank the band instead. Each is a callable ``scorer(estimator, X, y) -> float``, usable
as ``scoring=`` in :class:`sklearn.model_selection.GridSearchCV` and
:class:`dask_ml.model_selection.GridSearchCV` (a dict of them for several metrics), and, as
scikit-learn's ``neg_*`` scorers, **greater is better** (losses are negated).

They call ``estimator.predict(X, return_std=True, return_bounds=True)``, which returns
``(y_mean, y_std, y_max, y_min)`` (the envelope over the estimator's ``n_posterior_samples``
posterior samples), and compute every metric with :func:`popsdask.calibration.metrics.band_metrics`,
so with the conventions of ``popsdask report`` and ``popsdask crossval``: symmetry zeros are
left out, a reference within the tolerance of the envelope is inside, and the NLL's std is
floored at 0.01 × the kind's RMSE of the MLE.

Scores (per row kind; averaged over kinds with equal weight when ``row_kind`` is given):

``neg_ev_gap`` (``envelope_violation``)
    ``-|EV - target|`` (``penalty="abs"``, the default), EV the fraction of references outside
    the envelope, ``target`` 0.05 by default: a band should miss the stated fraction, neither
    more (too narrow) nor much less (needlessly wide). Scale-free, so kinds in different units
    can be averaged. It cannot tell a needlessly wide band with EV = 0 from one missing
    ``2·target``; ``penalty="excess"`` is ``-max(EV - target, 0) - width_weight · W / RMSE``
    (W the mean envelope width, RMSE of the MLE on the same rows, both in the kind's units):
    below the target the narrowest band wins.
``neg_interval_score`` (``interval_score``)
    ``-`` the mean interval score of the envelope read as a central 95 % interval
    (Gneiting & Raftery 2007; ``popsdask.calibration.metrics.INTERVAL_ALPHA``), in the units of y;
    ``relative=True`` divides it by the kind's RMSE of the MLE (unchanged by POPS settings, so
    the ranking within a kind is the same) to average kinds in different units.
``neg_nll`` (``nll``)
    ``-`` the mean Gaussian negative log-likelihood of the errors under the std (floored).
    Kinds in different units shift it by a constant per kind, so their mean still ranks.
``neg_miscalibration_area`` (``miscalibration_area``)
    ``-`` ∫₀¹ |observed(p) − p| dp of the central Gaussian intervals of the std.

Rows of different kinds (energies, forces) share one design matrix; a scorer only sees X and
y, so ``row_kind`` (a callable X -> labels, e.g. :class:`KindByColumns`) tells them apart.
The calibration level is not a POPSRegressor setting: tune it with
:class:`popsdask.engine.regressor.CalibratedPOPSRegressor`, which recalibrates its band on held-out
configurations of its own training rows.

Group-aware cross-validation uses the per-configuration ``group`` of a store, per row
(:func:`row_groups`)::

    from sklearn.model_selection import GridSearchCV, LeaveOneGroupOut
    data = search_data(store)                # X, y, sample_weight, groups (per row), config
    search = GridSearchCV(POPSRegressor(reuse_statistics=True), {"leverage_percentile": [25, 50, 75]},
                          scoring=uq_scorers(row_kind=KindByColumns()), refit="neg_ev_gap",
                          cv=LeaveOneGroupOut())
    search.fit(data["X"], data["y"], groups=data["groups"], sample_weight=data["sample_weight"])

(``GroupKFold(n_splits=k)`` likewise). dask-ml's ``HyperbandSearchCV`` and ``Incremental``
are broken on current dask (dask/dask-ml#1016) and are not used.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import xarray as xr

from ..calibration.metrics import band_metrics, kind_tolerance, nll_floor
from ..engine.bands import kind_labels, predict_band
from ..engine.design import design_from
from ..io.store import open_store
from .crossval import check_groups

__all__ = [
    "METRICS",
    "UQ_SCORERS",
    "KindByColumns",
    "UQScorer",
    "band_by_kind",
    "make_uq_scorer",
    "row_groups",
    "search_data",
    "uq_scorers",
]

#: metric name -> scorer name (greater is better)
METRICS = {
    "envelope_violation": "neg_ev_gap",
    "interval_score": "neg_interval_score",
    "nll": "neg_nll",
    "miscalibration_area": "neg_miscalibration_area",
}
DEFAULT_TARGET = 0.05


class KindByColumns:
    """Row kinds of a design from columns that only one kind fills.

    A row whose ``columns`` are all zero is ``zero``, any other ``nonzero``. In popsdask's
    qSNAP stores column 0 of an element block is its atom count: energy rows count atoms, force
    (and virial) rows differentiate the count to 0, so the default labels energy and force rows
    (with several elements, give every element's count column).

    Parameters
    ----------
    columns : sequence of int, default (0,)
    nonzero, zero : str, default "energy", "force"
    """

    def __init__(self, columns: Sequence[int] = (0,), nonzero: str = "energy", zero: str = "force") -> None:
        self.columns = tuple(int(c) for c in columns)
        self.nonzero, self.zero = nonzero, zero

    def __call__(self, X: Any) -> np.ndarray:
        """(n,) labels of the rows of ``X`` (n, P)."""
        cols = np.asarray(X[:, list(self.columns)])
        return np.where((cols != 0).any(axis=1), self.nonzero, self.zero)

    def __repr__(self) -> str:
        return f"KindByColumns(columns={self.columns}, nonzero={self.nonzero!r}, zero={self.zero!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KindByColumns) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((self.columns, self.nonzero, self.zero))


# ---------------------------------------------------------------------------- the band
def band_by_kind(
    estimator: Any, X: Any, y: Any = None, row_kind: Callable[[Any], Any] | None = None
) -> dict[str, dict[str, Any]]:
    """:func:`popsdask.calibration.metrics.band_metrics` of each row kind of ``X`` (or of all rows).

    Parameters
    ----------
    estimator : fitted POPSRegressor (or anything with its ``predict`` and ``coef_``)
    X : (n, P) rows (numpy, dask, or a store path / Dataset, whose y is used when y is None)
    y : (n,) references
    row_kind : callable X -> (n,) labels, optional

    Returns
    -------
    {kind: metrics}; per kind the tolerance is max(1e-8 × the kind's RMS reference, the row's
    round-off) and the NLL floor 0.01 × the kind's RMSE of the MLE, as in ``popsdask report``.
    """
    if y is None:
        if not isinstance(X, (str, os.PathLike, xr.Dataset)):
            raise ValueError("y is required unless X is a store with references")
        y = design_from(X).y
    y = np.asarray(y, dtype=np.float64).ravel()
    band = predict_band(estimator, X)
    if band["mle"].shape != y.shape:
        raise ValueError(f"y has {y.size} rows, X has {band['mle'].size}")
    labels = kind_labels(X, y.size, row_kind)
    out = {}
    for kind in np.unique(labels):
        m = labels == kind
        yk, mle = y[m], band["mle"][m]
        tol = np.maximum(kind_tolerance(yk), band["roundoff"][m])
        floor = nll_floor(yk, mle)
        out[str(kind)] = band_metrics(
            yk, mle, band["std"][m], band["lo"][m], band["hi"][m], tol=tol, nll_floor=floor, curve=False
        )
    return out


# ---------------------------------------------------------------------------- scorers
class UQScorer:
    """A greater-is-better scorer of an uncertainty band (see the module docstring).

    Parameters
    ----------
    metric : {"envelope_violation", "interval_score", "nll", "miscalibration_area"}
    target : float in [0, 1), default 0.05
        Envelope violation aimed at (``envelope_violation`` only).
    penalty : {"abs", "excess"}, default "abs"
        ``-|EV - target|``, or ``-max(EV - target, 0) - width_weight · width / RMSE``.
    width_weight : float, default 1e-3
        Weight of the relative width with ``penalty="excess"`` (a tie-breaker below target).
    relative : bool, default False
        ``interval_score`` in units of the kind's RMSE of the MLE.
    row_kind : callable X -> (n,) labels, optional
        Score each kind separately (its own tolerance and NLL floor) and average the kinds.
    kinds : sequence of str, optional
        Only these kinds (default: every kind present in the scored rows).
    """

    def __init__(
        self,
        metric: str,
        *,
        target: float = DEFAULT_TARGET,
        penalty: str = "abs",
        width_weight: float = 1e-3,
        relative: bool = False,
        row_kind: Callable[[Any], Any] | None = None,
        kinds: Sequence[str] | None = None,
    ) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric={metric!r}: use one of {sorted(METRICS)}")
        if penalty not in ("abs", "excess"):
            raise ValueError(f"penalty={penalty!r}: use 'abs' or 'excess'")
        if not 0.0 <= target < 1.0:
            raise ValueError(f"target={target!r}: must be in [0, 1)")
        self.metric, self.target, self.penalty, self.width_weight = metric, float(target), penalty, width_weight
        self.relative, self.row_kind = bool(relative), row_kind
        self.kinds = None if kinds is None else tuple(str(k) for k in kinds)

    def __call__(self, estimator: Any, X: Any, y: Any = None) -> float:
        by_kind = band_by_kind(estimator, X, y, self.row_kind)
        if self.kinds is not None:
            by_kind = {k: v for k, v in by_kind.items() if k in self.kinds}
        scores = [self.score_of(m) for m in by_kind.values()]
        scores = [s for s in scores if np.isfinite(s) or s == -np.inf]
        return float(np.mean(scores)) if scores else float("nan")

    def _accept_sample_weight(self) -> bool:
        """scikit-learn ≥ 1.8 asks scorers whether GridSearchCV should pass them the fit's
        ``sample_weight``: these do not. The fit weights balance kinds for the regression;
        the band metrics count rows, as the report tables do, and ``row_kind`` separates kinds.
        """
        return False

    def score_of(self, m: dict[str, Any]) -> float:
        """The score of one kind's :func:`~popsdask.calibration.metrics.band_metrics`."""
        if self.metric == "envelope_violation":
            gap = m["envelope_violation"] - self.target
            if self.penalty == "abs":
                return -abs(gap)
            rmse = m["rmse_mle"]
            width = m["mean_envelope_width"] / rmse if rmse > 0 else m["mean_envelope_width"]
            return -max(gap, 0.0) - self.width_weight * width
        if self.metric == "interval_score":
            value = m["interval_score"]
            return -value / m["rmse_mle"] if self.relative and m["rmse_mle"] > 0 else -value
        return -float(m[self.metric])

    def __repr__(self) -> str:
        opts = {
            "envelope_violation": f"target={self.target}, penalty={self.penalty!r}",
            "interval_score": f"relative={self.relative}",
        }.get(self.metric, "")
        kind = f", row_kind={self.row_kind!r}" if self.row_kind is not None else ""
        return f"make_uq_scorer({self.metric!r}{', ' + opts if opts else ''}{kind})"


def make_uq_scorer(name: str, **kw: Any) -> UQScorer:
    """A :class:`UQScorer` by metric name (``envelope_violation``, ``interval_score``, ``nll``,
    ``miscalibration_area``) or scorer name (``neg_ev_gap``, ``neg_interval_score``,
    ``neg_nll``, ``neg_miscalibration_area``); keyword arguments as :class:`UQScorer`."""
    by_scorer = {v: k for k, v in METRICS.items()}
    metric = by_scorer.get(name, name)
    if metric not in METRICS:
        raise ValueError(f"unknown UQ scorer {name!r}: use one of {sorted(METRICS) + sorted(by_scorer)}")
    return UQScorer(metric, **kw)


def uq_scorers(**kw: Any) -> dict[str, UQScorer]:
    """All four scorers, by scorer name, sharing ``kw`` (e.g. ``row_kind``; ``target``,
    ``penalty`` and ``width_weight`` go to ``neg_ev_gap``, ``relative`` to
    ``neg_interval_score``): ``scoring=uq_scorers(...)`` with ``refit="neg_ev_gap"``."""
    only = {"envelope_violation": ("target", "penalty", "width_weight"), "interval_score": ("relative",)}
    private = {k for keys in only.values() for k in keys}
    common = {k: v for k, v in kw.items() if k not in private}
    return {
        name: UQScorer(metric, **common, **{k: kw[k] for k in only.get(metric, ()) if k in kw})
        for metric, name in METRICS.items()
    }


#: the four scorers with their defaults (all rows as one kind)
UQ_SCORERS: dict[str, UQScorer] = uq_scorers()


# ---------------------------------------------------------------------------- store helpers
def row_groups(ds: xr.Dataset, by: str = "group") -> np.ndarray:
    """The per-configuration variable ``by`` of a descriptor store at every row (via
    ``config``), as strings: ``groups=`` for LeaveOneGroupOut / GroupKFold.

    Returns
    -------
    (n_rows,) array of str
    """
    labels, _ = check_groups(ds, by)
    return labels[np.asarray(ds["config"].values)]


def search_data(ds: xr.Dataset | str | os.PathLike, group_by: str = "group", *, lazy: bool = False) -> dict[str, Any]:
    """A store's rows for a scikit-learn or dask-ml search.

    ``lazy``: ``X``, ``y`` and ``sample_weight`` stay dask arrays of the store. dask-ml's
    GridSearchCV then has its workers read them, instead of the client sending them in the
    task graph (a "large graph" warning, and the data once per search through the scheduler).

    Returns
    -------
    dict with ``X`` (n, P), ``y``, ``sample_weight`` (ones without weights), ``groups``
    (per-row ``group_by`` labels), ``config`` (per-row configuration index) and, when the
    store has one, ``kind`` (the row-kind codes :data:`popsdask.io.store.KIND_CODES`), each (n,)
    """
    if not isinstance(ds, xr.Dataset):
        ds = open_store(ds)
    n = ds.sizes["row"]
    w = ds["weight"].data if "weight" in ds else np.ones(n)
    arrays = {"X": ds["X"].data, "y": ds["y"].data.astype(np.float64), "sample_weight": w.astype(np.float64)}
    out: dict[str, Any] = arrays if lazy else {k: np.asarray(v) for k, v in arrays.items()}
    out |= {
        "groups": row_groups(ds, group_by),
        "config": np.asarray(ds["config"].values),
    }
    if "kind" in ds.coords:
        out["kind"] = np.asarray(ds["kind"].values)
    return out
