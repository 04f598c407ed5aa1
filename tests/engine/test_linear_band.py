"""The band of a few rows from the posterior's fixed matrices equals predict's and brute force's."""

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
