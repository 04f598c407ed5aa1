"""The uncertainty band of a fitted estimator on some rows, and the rows' kinds: what
calibration (:class:`popsdask.engine.regressor.CalibratedPOPSRegressor`) and the band scorers
(:mod:`popsdask.evaluation.scoring`) measure."""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from ..calibration.metrics import roundoff_tolerance
from .design import content_token, design_from
from .execution import compute

__all__ = ["kind_labels", "predict_band"]

_memo = threading.local()


def predict_band(estimator: Any, X: Any) -> dict[str, np.ndarray]:
    """The band of ``estimator`` on the rows of ``X`` and each row's round-off tolerance.

    Parameters
    ----------
    estimator : fitted POPSRegressor or CalibratedPOPSRegressor
    X : (n, P) numpy or dask array, or a store path / Dataset

    Returns
    -------
    dict of (n,) float64 arrays: ``mle``, ``std``, ``lo``, ``hi`` (the envelope) and
    ``roundoff`` (:func:`popsdask.calibration.metrics.roundoff_tolerance`).

    The last result of each thread is kept for the same fitted estimator and the same rows
    (a SHA-256 of an in-memory X): dask-ml calls a dict of scorers one by one, and this way
    they share one prediction.
    """
    token = None if isinstance(X, (str, os.PathLike, xr.Dataset)) else content_token(X)
    # what a refit replaces: the posterior (POPSRegressor) or the inner estimator (calibrated)
    fitted = getattr(estimator, "posterior_", getattr(estimator, "estimator_", None))
    last = getattr(_memo, "last", None)
    if token is not None and last is not None:
        est_ref, fitted_ref, calibration, last_token, value = last
        if (
            est_ref() is estimator
            and fitted_ref() is fitted
            and calibration is getattr(estimator, "calibration_", None)
            and last_token == token
        ):
            return value
    mle, std, hi, lo = estimator.predict(X, return_std=True, return_bounds=True)
    rows = design_from(X, require_y=False).X if isinstance(X, (str, os.PathLike, xr.Dataset)) else X
    coef, intercept = np.asarray(estimator.coef_), float(getattr(estimator, "intercept_", 0.0))
    if isinstance(rows, da.Array):  # blockwise: one more pass over the rows, never all in memory
        rows = rows.rechunk({1: -1})
        (roundoff,) = compute(
            da.map_blocks(roundoff_tolerance, rows, coef, intercept, drop_axis=1, dtype=np.float64, meta=np.empty(0))
        )
    else:
        roundoff = roundoff_tolerance(rows, coef, intercept)
    value = {"mle": mle, "std": std, "lo": lo, "hi": hi, "roundoff": roundoff}
    value = {k: np.asarray(v, dtype=np.float64) for k, v in value.items()}
    if token is not None and fitted is not None:
        _memo.last = (
            weakref.ref(estimator),
            weakref.ref(fitted),
            getattr(estimator, "calibration_", None),
            token,
            value,
        )
    return value


def kind_labels(X: Any, n: int, row_kind: Callable[[Any], Any] | None) -> np.ndarray:
    """(n,) str labels of the rows of ``X``: ``row_kind(X)``, or ``"all"`` without one."""
    if row_kind is None:
        return np.full(n, "all")
    labels = np.asarray(row_kind(X)).astype(str)
    if labels.shape != (n,):
        raise ValueError(f"row_kind returned shape {labels.shape} for {n} rows")
    return labels
