"""Parity with the reference implementation popsregression 0.4.0 (the test oracle)."""

from __future__ import annotations

import numpy as np
import pytest

popsregression = pytest.importorskip("popsregression", reason="test extra (popsregression 0.4.0) not installed")
from popsregression import POPSRegression  # noqa: E402

from popsdask import POPSRegressor, fit  # noqa: E402
from popsdask.core.pops import block_leverage  # noqa: E402
from popsdask.engine.design import design_from  # noqa: E402
from tests.conftest import misspecified  # noqa: E402


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def aligned(basis, lower, upper, ref_basis):
    """Flip our modes to the reference's sign convention (eigh's sign is arbitrary)."""
    s = np.sign(np.sum(basis * ref_basis, axis=0))
    return basis * s, np.where(s > 0, lower, -upper), np.where(s > 0, upper, -lower)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("percentile", [50.0, 0.0, 90.0])
def test_ensemble_posterior(tmp_path, weighted, percentile):
    X, y, w = misspecified(6000, 12, seed=11)
    w = w if weighted else None
    ref = POPSRegression(posterior="ensemble", leverage_percentile=percentile).fit(X, y, sample_weight=w)
    post = fit(
        X,
        y,
        weight=w,
        posterior="ensemble",
        leverage_percentile=percentile,
        chunk_rows=1000,
        corrections_path=tmp_path / "c.zarr",
    )
    assert rel(post.coef_, ref.coef_) < 1e-10
    assert rel(post.sigma_, ref.sigma_) < 1e-10
    assert post.alpha_ == pytest.approx(ref.alpha_, rel=1e-10)
    assert post.lambda_ == pytest.approx(ref.lambda_, rel=1e-10)
    assert post.n_selected_ == int(ref._leverage_mask.sum())
    np.testing.assert_allclose(np.asarray(post.corrections_), ref.posterior_samples_.T, rtol=1e-8, atol=1e-12)
    assert rel(post.misspecification_sigma_, ref.misspecification_sigma_) < 1e-10


@pytest.mark.parametrize("weighted", [False, True])
def test_leverage_scores_and_pointwise_corrections(weighted):
    X, y, w = misspecified(3000, 8, seed=12)
    w = w if weighted else None
    ref = POPSRegression(posterior="ensemble").fit(X, y, sample_weight=w)
    hc = block_leverage(X, y, w, ref.coef_, ref.alpha_ * ref.sigma_)
    np.testing.assert_allclose(hc[:, 0], ref._leverage_scores, rtol=1e-10)
    a_inv = ref.alpha_ * ref.sigma_
    np.testing.assert_allclose((X @ a_inv) * hc[:, 1:], ref._pointwise_correction, rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("clip", [0.0, 5.0])
def test_hypercube_basis_and_bounds(weighted, clip):
    X, y, w = misspecified(6000, 12, seed=13)
    w = w if weighted else None
    ref = POPSRegression(percentile_clipping=clip).fit(X, y, sample_weight=w)
    post = fit(X, y, weight=w, percentile_clipping=clip, chunk_rows=700)
    U, (lo, hi) = ref._hypercube_support, ref._hypercube_bounds
    assert post.basis_.shape == U.shape
    basis, lower, upper = aligned(post.basis_, post.lower_, post.upper_, U)
    assert rel(basis, U) < 1e-8
    assert rel(lower, lo) < 1e-8
    assert rel(upper, hi) < 1e-8
    # popsregression estimates the box's second moment from its (random) samples; ours is exact
    assert rel(post.misspecification_sigma_, ref.misspecification_sigma_) < 0.1


def test_fit_intercept_parity():
    X, y, w = misspecified(4000, 6, seed=14)
    ref = POPSRegression(fit_intercept=True, posterior="ensemble").fit(X, y + 5.0)
    est = POPSRegressor(fit_intercept=True, posterior="ensemble").fit(X, y + 5.0)
    np.testing.assert_allclose(np.r_[est.coef_, est.intercept_], ref.coef_, rtol=1e-9)
    m_ref, s_ref, hi_ref, lo_ref, e_ref = ref.predict(X[:200], True, True, True)
    m, s, hi, lo, e = est.predict(X[:200], True, True, True)
    for a, b in ((m, m_ref), (s, s_ref), (hi, hi_ref), (lo, lo_ref), (e, e_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-8)


def test_store_fit_equals_array_fit(tmp_path):
    from popsdask import write_store

    X, y, w = misspecified(5000, 9, seed=15)
    write_store(tmp_path / "s.zarr", X, y, weight=w, chunk_rows=600)
    a = fit(tmp_path / "s.zarr")
    b = fit(X, y, weight=w, chunk_rows=5000)
    assert rel(a.coef_, b.coef_) < 1e-12
    assert rel(a.upper_, b.upper_) < 1e-9
    d = design_from(tmp_path / "s.zarr")
    assert len(d.X.chunks[0]) == 9


def test_leverage_quadratic_form_routes_agree():
    """The GIL-free blocked matmul and the dtrmm route give the same leverage (float32 and float64)."""
    from popsdask.core.pops import leverage_factor

    rng = np.random.default_rng(3)
    X = rng.standard_normal((20000, 70))
    y = rng.standard_normal(20000)
    a_inv = np.linalg.inv(X.T @ X + np.eye(70))
    L = leverage_factor(a_inv)
    direct = np.einsum("ij,ij->i", X @ a_inv, X)
    for Xd in (X, X.astype(np.float32)):
        free = block_leverage(Xd, y, None, np.zeros(70), a_inv, L, release_gil=True)
        held = block_leverage(Xd, y, None, np.zeros(70), a_inv, L, release_gil=False)
        np.testing.assert_allclose(free, held, rtol=1e-10)
    np.testing.assert_allclose(block_leverage(X, y, None, np.zeros(70), a_inv, L)[:, 0], direct, rtol=1e-10)
    np.testing.assert_array_equal(Xd, X.astype(np.float32))  # the input is never overwritten
