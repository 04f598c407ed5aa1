"""The band of a few rows from the posterior's fixed matrices equals predict's and brute force's."""

import dataclasses

import dask
import numpy as np
import pytest

from popsdask.engine.linear_band import LinearBand
from popsdask.engine.predictions import predict_ensemble
from popsdask.engine.regressor import POPSRegressor


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 6))
    y = np.sin(X[:, 0]) + X[:, 1] ** 2 + 0.01 * rng.normal(size=400)
    return X, y


@pytest.mark.parametrize("kind", ["hypercube", "ensemble"])
def test_linear_band_equals_predict(problem, kind):
    X, y = problem
    post = POPSRegressor(posterior=kind).fit(X, y).posterior_
    with dask.config.set(scheduler="synchronous"):
        ds = predict_ensemble(post, X[:50]).compute()
    band = LinearBand.from_posterior(post)(X[:50])
    for name in ("mle", "mean", "std", "min", "max", "box_min", "box_max", "support"):
        np.testing.assert_allclose(band[name], ds[name].values, rtol=1e-12, atol=1e-12 * np.abs(band["mle"]).max())


def test_linear_band_std_is_the_members_std(problem):
    X, y = problem
    post = POPSRegressor().fit(X, y).posterior_
    band = LinearBand.from_posterior(post, n_samples=200, method="sobol", seed=3)
    members = X[:20] @ (post.coef_[None, :] + post.perturbations(200, "sobol", 3)).T  # brute force
    np.testing.assert_allclose(band.std(X[:20]), members.std(axis=1), rtol=1e-10)
    out = band(X[:20])
    np.testing.assert_allclose(out["min"], members.min(axis=1), rtol=1e-12)
    assert np.all(out["box_min"] <= out["min"] + 1e-12) and np.all(out["box_max"] >= out["max"] - 1e-12)


def test_triangular_roots_equal_the_dense_products():
    """std and support through the triangular roots (trmm) equal the dense products, for a
    square factor (S ≥ P draws), a trapezoidal one (S < P) and, without a root (a factor that is
    not triangular, a singular metric), through the dense products themselves."""
    rng = np.random.default_rng(1)
    P = 40
    scales = np.logspace(-3, 2, P)  # columns of different scales, as descriptors
    X = rng.normal(size=(600, P)) * scales
    y = np.tanh(X[:, :5] / scales[:5]).sum(axis=1) + 0.01 * rng.normal(size=600)
    post = POPSRegressor().fit(X[:400], y[:400]).posterior_
    rows = X[400:]
    for S in (60, 25):
        band = LinearBand.from_posterior(post, n_samples=S)
        assert band.std_root is not None and band.support_root is not None
        assert band.std_root.shape == (min(S, P), P)
        dense_std = np.linalg.norm(rows @ band.factor, axis=1)
        dense_support = np.einsum("ij,ij->i", rows @ band.metric, rows)
        np.testing.assert_allclose(band.std(rows), dense_std, rtol=1e-12)
        np.testing.assert_allclose(band.support(rows), dense_support, rtol=1e-9)
        np.testing.assert_allclose(band.std(rows[:1]), dense_std[:1], rtol=1e-12)  # one row
    Q = np.linalg.qr(rng.normal(size=(25, 25)))[0]  # orthogonal
    singular = band.metric.copy()
    singular[:, 0] = singular[0, :] = 0.0
    # the same C = LLᵀ with an L that is not triangular, and a metric without a Cholesky factor
    plain = dataclasses.replace(band, factor=band.factor @ Q, metric=singular)
    assert plain.std_root is None and plain.support_root is None
    np.testing.assert_allclose(plain.std(rows), dense_std, rtol=1e-12)
    np.testing.assert_array_equal(plain.support(rows), np.einsum("ij,ij->i", rows @ singular, rows))


@pytest.mark.parametrize("envelope", [True, False])
def test_with_sum_equals_the_sum_row_and_the_rows(problem, envelope):
    """A configuration's energy band from the sums of its per-atom products equals the band of its
    energy row (the sum of the rows, as an energy of n atoms), calibrated, and the rows' band is
    the band of each row as the energy of one atom."""
    from popsdask.calibration.conformal import Calibration

    X, y = problem
    post = POPSRegressor().fit(X, y).posterior_
    scales = {"std_scale": 1.7, "std_offset": 0.003, "envelope_scale": 1.3, "envelope_offset": 0.01}
    calibration = Calibration(0.9, {"energy_per_atom": scales}, "by hand").to_dict()
    band = dataclasses.replace(LinearBand.from_posterior(post), calibration=calibration)
    rows = X[:30]
    total, each = band.with_sum(rows, envelope=envelope)
    expected_total = band(rows.sum(axis=0), n_atoms=30)
    expected_each = band(rows, n_atoms=1, envelope=envelope)
    assert total.keys() == expected_total.keys() and each.keys() == expected_each.keys()
    for name, value in expected_total.items():
        np.testing.assert_allclose(total[name], value, rtol=1e-12, err_msg=name)
    for name, value in expected_each.items():
        np.testing.assert_array_equal(each[name], value, err_msg=name)
    assert not np.allclose(total["std"], total["std_raw"])  # the calibration is applied
