"""Ensemble predictions, posterior persistence and sampling."""

from __future__ import annotations

import json

import numpy as np
import pytest

from popsdask import Posterior, fit, write_store
from popsdask.engine.predictions import predict_ensemble
from popsdask.evaluation.report import write_report
from tests.conftest import misspecified


@pytest.fixture
def stores(tmp_path):
    X, y, w = misspecified(6000, 8, seed=21)
    n = 4800
    kind = np.tile([0, 1, 1], 2000)
    write_store(tmp_path / "train.zarr", X[:n], y[:n], weight=w[:n], kind=kind[:n], chunk_rows=900)
    write_store(tmp_path / "test.zarr", X[n:], y[n:], kind=kind[n:], chunk_rows=400)
    return tmp_path, X[n:], y[n:]


@pytest.mark.parametrize("method", ["uniform", "sobol", "latin", "halton"])
def test_posterior_save_load_and_sampling(tmp_path, method):
    X, y, w = misspecified(3000, 6, seed=22)
    post = fit(X, y, weight=w)
    post.save(tmp_path / "post.zarr")
    back = Posterior.load(tmp_path / "post.zarr")
    for name in ("coef_", "sigma_", "basis_", "lower_", "upper_", "misspecification_sigma_"):
        np.testing.assert_array_equal(getattr(back, name), getattr(post, name))
    assert back.alpha_ == post.alpha_ and back.provenance["version"]
    a = back.sample(500, method=method, seed=5)
    b = post.sample(500, method=method, seed=5)
    assert a.dims == ("sample", "feature") and a.shape == (500, 6)
    np.testing.assert_array_equal(a.values, b.values)
    assert not np.array_equal(a.values, post.sample(500, method=method, seed=6).values)
    # every sample lies in the box: coordinates in the basis are within [lower, upper]
    coords = (a.values - post.coef_) @ post.basis_
    assert np.all(coords >= post.lower_ - 1e-12) and np.all(coords <= post.upper_ + 1e-12)


def test_ensemble_posterior_round_trip(tmp_path):
    X, y, _ = misspecified(3000, 6, seed=23)
    post = fit(X, y, posterior="ensemble")
    post.save(tmp_path / "post.zarr")
    back = Posterior.load(tmp_path / "post.zarr")
    np.testing.assert_array_equal(np.asarray(back.corrections_), np.asarray(post.corrections_))
    s = back.sample(100, seed=1)
    assert s.shape == (100, 6)


def test_predictions_match_direct_products_and_metrics(stores):
    tmp, Xt, yt = stores
    post = fit(tmp / "train.zarr")
    ds = predict_ensemble(post, tmp / "test.zarr", tmp / "pred.zarr", n_samples=200, seed=3)
    assert ds["prediction"].dims == ("sample", "row") and ds.sizes["sample"] == 200
    theta = post.sample(200, seed=3).values
    pred = Xt @ theta.T
    np.testing.assert_allclose(ds["prediction"].values, pred.T, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ds["mle"].values, Xt @ post.coef_, rtol=1e-12)
    np.testing.assert_allclose(ds["std"].values, pred.std(axis=1), rtol=1e-8)
    np.testing.assert_allclose(ds["min"].values, pred.min(axis=1), rtol=1e-10)
    metrics = json.loads(ds.attrs["metrics"])
    assert set(metrics) == {"energy", "force"}
    e = ds["kind"].values == 0
    outside = (yt < pred.min(axis=1)) | (yt > pred.max(axis=1))
    assert metrics["energy"]["envelope_violation"] == pytest.approx(outside[e].mean())
    assert metrics["force"]["mae_mle"] == pytest.approx(np.abs(yt - Xt @ post.coef_)[~e].mean())
    edges = ds["error_bin_edges"].values[0]
    dev = np.abs(pred - (Xt @ post.coef_)[:, None])[e]
    np.testing.assert_array_equal(ds["hist_abs_sample_minus_mle"].values[0], np.histogram(dev, edges)[0])
    np.testing.assert_array_equal(
        ds["hist_abs_reference_minus_mle"].values[0], np.histogram(np.abs(yt - Xt @ post.coef_)[e], edges)[0]
    )
    report = write_report(tmp / "pred.zarr", tmp / "report")
    assert (tmp / "report" / "energy.png").stat().st_size > 10_000
    assert "envelope violation" in report["table"]


def test_configuration_dimension_for_energy_only_stores(tmp_path):
    X, y, _ = misspecified(2000, 5, seed=24)
    write_store(tmp_path / "e.zarr", X, y)
    post = fit(X, y)
    ds = predict_ensemble(post, tmp_path / "e.zarr", n_samples=50)
    assert ds["prediction"].dims == ("sample", "configuration")
    again = predict_ensemble(post, tmp_path / "e.zarr", n_samples=50)
    np.testing.assert_array_equal(ds["prediction"].values, again["prediction"].values)
