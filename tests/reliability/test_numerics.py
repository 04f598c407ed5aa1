"""Numerical robustness: float32 stores, ill-conditioned Gram matrices, rows of leverage zero.

Documented tolerances (checked here):
- a float32 store gives *bit-identical* results to a float64 store holding the same (rounded)
  values, because every pass accumulates in float64;
- against the unrounded float64 data, a float32 store's posterior (coef, sigma, box) is within
  1e-5 relative (normwise) for a well-conditioned Gram (condition number ~1): float32 rounding of
  X (6e-8 relative) amplified by the conditioning;
- Gram condition numbers >= 1e12 are fitted (BayesianRidge's λ/α regularises them), the
  condition number is reported as ``Posterior.condition_number_`` (inf when singular) and survives
  save/load, and predictions agree with scikit-learn's BayesianRidge to 1e-10;
- rows that are exactly zero (leverage exactly 0) give no division by zero and a zero correction.
"""

from __future__ import annotations

import warnings

import dask
import numpy as np
import pytest
from sklearn.linear_model import BayesianRidge

from popsdask import Posterior, fit, write_store
from popsdask.engine.predictions import predict_ensemble
from tests.conftest import misspecified

FIELDS = ("coef_", "sigma_", "misspecification_sigma_", "lower_", "upper_", "basis_")


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_float32_store_equals_float64_of_same_values_and_is_close_to_unrounded(tmp_path):
    X, y, w = misspecified(4000, 8, seed=91)
    X32 = X.astype(np.float32)
    s32 = write_store(tmp_path / "f32.zarr", X32, y, weight=w, chunk_rows=500)
    s64r = write_store(tmp_path / "f64r.zarr", X32.astype(np.float64), y, weight=w, chunk_rows=500)
    s64 = write_store(tmp_path / "f64.zarr", X, y, weight=w, chunk_rows=500)
    p32, p64r, p64 = fit(s32), fit(s64r), fit(s64)
    assert p64.condition_number_ < 10
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(p32, name), getattr(p64r, name), err_msg=name)
        assert _rel(getattr(p32, name), getattr(p64, name)) < 1e-5, name
    # predictions: a float32 prediction store rounds only the stored ensemble
    a = predict_ensemble(p32, s32, tmp_path / "a.zarr", n_samples=50, dtype=np.float32)
    b = predict_ensemble(p32, s64r, tmp_path / "b.zarr", n_samples=50)
    assert a["prediction"].dtype == np.float32
    np.testing.assert_array_equal(a["mle"].values, b["mle"].values)
    np.testing.assert_allclose(a["prediction"].values, b["prediction"].values, rtol=2e-7, atol=1e-7)


@pytest.mark.parametrize("eps", [1e-7, 0.0])
def test_ill_conditioned_gram_is_regularised_and_reported(tmp_path, eps):
    X, y, w = misspecified(3000, 8, seed=92)
    X[:, -1] = X[:, 0] + eps * np.random.default_rng(3).normal(size=len(X))  # near/exact duplicate
    post = fit(X, y, weight=w, chunk_rows=400)
    assert post.condition_number_ >= 1e12
    if eps == 0.0:  # exactly singular: inf, or the round-off floor of eigh (~1/eps)
        assert post.condition_number_ >= 1e14
    for name in ("coef_", "sigma_", "misspecification_sigma_", "lower_", "upper_"):
        assert np.all(np.isfinite(getattr(post, name))), name
    ref = BayesianRidge(fit_intercept=False).fit(X, y, sample_weight=w)
    assert _rel(X @ post.coef_, X @ ref.coef_) < 1e-10
    assert post.alpha_ == pytest.approx(ref.alpha_, rel=1e-8)
    back = Posterior.load(post.save(tmp_path / "post.zarr"))
    assert back.condition_number_ == post.condition_number_


def test_zero_rows_have_zero_leverage_and_no_division_by_zero():
    X, y, w = misspecified(1000, 5, seed=93)
    X[::2] = 0.0  # half the rows are exactly zero: the leverage percentile is exactly 0
    w[1::4] = 0.0  # and a quarter have zero weight
    with dask.config.set(scheduler="synchronous"), np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        hyper = fit(X, y, weight=w, leverage_percentile=60.0, chunk_rows=128)
        ens = fit(X, y, weight=w, posterior="ensemble", leverage_percentile=60.0, chunk_rows=128, corrections_path=None)
    assert hyper.leverage_threshold_ == 0.0
    assert hyper.n_selected_ == 1000  # every row has h >= 0, zero rows included
    for name in ("coef_", "misspecification_sigma_", "lower_", "upper_"):
        assert np.all(np.isfinite(getattr(hyper, name))), name
    corr = np.asarray(ens.corrections_)
    assert corr.shape == (1000, 5) and np.all(np.isfinite(corr))
    np.testing.assert_array_equal(corr[::2], 0.0)  # zero rows: zero correction, not 0/0
    np.testing.assert_array_equal(corr[1::4], 0.0)  # zero weight: leverage 0, zero correction
    assert np.all(np.abs(corr[3::4]).sum(axis=1) > 0)
