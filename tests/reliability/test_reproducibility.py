"""Reproducibility: same seed, same posterior samples and predictions.

- Bit-identical: posterior samples from the same posterior and seed (all four sampling methods,
  and the ensemble posterior's draws); repeated fits with the same store and chunking on dask's
  local schedulers in one process, whatever the thread count (threaded 1 or 2 threads,
  synchronous): the task graph, and so the order of every tree reduction, is fixed by the
  chunking alone.
- Within 1e-12 relative (normwise; observed ~1e-16): repeated fits and predictions on a
  distributed cluster (block results computed in other processes may differ in the last bit:
  BLAS kernels depend on buffer alignment), and the same data with a different chunking (the
  Gram and moment sums are added in a different order; observed <1e-13).
"""

from __future__ import annotations

import dask
import numpy as np
import pytest

from popsdask import fit, write_store
from popsdask.engine.predictions import predict_ensemble
from tests.conftest import misspecified

FIELDS = ("coef_", "sigma_", "misspecification_sigma_", "basis_", "lower_", "upper_")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    X, y, w = misspecified(3000, 6, seed=101)
    root = tmp_path_factory.mktemp("repro")
    return {c: write_store(root / f"c{c}.zarr", X, y, weight=w, chunk_rows=c) for c in (250, 700, 3000)}


def _close(a, b) -> None:
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert np.abs(x - y).max() <= 1e-12 * np.abs(y).max(), name
    assert a.alpha_ == pytest.approx(b.alpha_, rel=1e-12) and a.lambda_ == pytest.approx(b.lambda_, rel=1e-12)


def _equal(a, b) -> None:
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert (a.alpha_, a.lambda_, a.leverage_threshold_) == (b.alpha_, b.lambda_, b.leverage_threshold_)


def test_bit_identical_without_a_cluster(stores):
    store = stores[250]
    from distributed import default_client

    with pytest.raises(ValueError):
        default_client()  # no client in this test: dask's local schedulers
    threaded = fit(store)
    with dask.config.set(scheduler="synchronous"):
        single = fit(store)
    _equal(threaded, single)
    with dask.config.set(scheduler="threads", num_workers=2):
        _equal(fit(store), single)
    a = predict_ensemble(single, store, n_samples=64, seed=9)["prediction"].values
    np.testing.assert_array_equal(a, predict_ensemble(single, store, n_samples=64, seed=9)["prediction"].values)


@pytest.mark.slow
def test_within_round_off_across_runs_on_a_cluster(stores, local_client, tmp_path):
    store = stores[250]
    on_cluster = fit(store)  # local_client: 2 worker processes
    on_cluster_again = fit(store)
    _close(on_cluster, on_cluster_again)
    pred = predict_ensemble(on_cluster, store, tmp_path / "a.zarr", n_samples=64, seed=9)["prediction"].values
    again = predict_ensemble(on_cluster, store, tmp_path / "b.zarr", n_samples=64, seed=9)["prediction"].values
    assert np.abs(pred - again).max() <= 1e-12 * np.abs(pred).max()
    # with a default client, dask's scheduler setting does not divert the passes from it
    with dask.config.set(scheduler="threads"):
        from popsdask.engine.execution import active_client

        client = active_client()
    assert client is local_client  # a default client takes precedence over dask.config


@pytest.mark.parametrize("method", ["uniform", "sobol", "latin", "halton"])
def test_samples_bit_identical_for_a_seed(stores, method):
    post = fit(stores[3000])
    a = post.sample(200, method=method, seed=13).values
    np.testing.assert_array_equal(a, post.sample(200, method=method, seed=13).values)
    assert not np.array_equal(a, post.sample(200, method=method, seed=14).values)


def test_ensemble_samples_bit_identical_for_a_seed(stores, tmp_path):
    post = fit(stores[700], posterior="ensemble", corrections_path=tmp_path / "c.zarr")
    np.testing.assert_array_equal(post.perturbations(100, seed=3), post.perturbations(100, seed=3))
    assert not np.array_equal(post.perturbations(100, seed=3), post.perturbations(100, seed=4))


@pytest.mark.slow
def test_within_1e12_across_chunkings(stores, tmp_path):
    posts = {c: fit(path) for c, path in stores.items()}
    ref = posts[3000]
    for c, post in posts.items():
        for name in FIELDS:
            a, b = getattr(post, name), getattr(ref, name)
            assert np.abs(a - b).max() <= 1e-12 * np.abs(b).max(), (c, name)
    preds = {
        c: predict_ensemble(posts[c], stores[c], tmp_path / f"p{c}.zarr", n_samples=64, seed=2)["prediction"].values
        for c in (250, 3000)
    }
    assert np.abs(preds[250] - preds[3000]).max() <= 1e-12 * np.abs(preds[3000]).max()
