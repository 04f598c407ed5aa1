"""Evidence maximisation from the Gram against scikit-learn's BayesianRidge."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import BayesianRidge

from popsdask.core.evidence import maximise_evidence
from popsdask.core.stats import block_stats, combine_stats
from popsdask.engine.design import design_from
from popsdask.engine.passes import sufficient_statistics
from tests.conftest import misspecified


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def stats_in_chunks(X, y, w, rows):
    parts = [
        block_stats(X[i : i + rows], y[i : i + rows], None if w is None else w[i : i + rows])
        for i in range(0, len(y), rows)
    ]
    out = parts[0]
    for p in parts[1:]:
        out = combine_stats(out, p)
    return out


def test_block_stats_combine_equals_whole():
    X, y, w = misspecified(1000, 5)
    whole = block_stats(X, y, w)
    tree = stats_in_chunks(X, y, w, 137)
    np.testing.assert_allclose(tree.gram, (X * w[:, None]).T @ X, rtol=1e-12)
    np.testing.assert_allclose(tree.xty, whole.xty, rtol=1e-12)
    assert tree.sw == pytest.approx(w.sum(), rel=1e-14)
    mean = np.average(y, weights=w)
    assert tree.y_var == pytest.approx(np.average((y - mean) ** 2, weights=w), rel=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("noise", [1e-1, 1e-4])
def test_matches_bayesian_ridge(weighted, noise):
    X, y, w = misspecified(3000, 15, seed=3, noise=noise)
    w = w if weighted else None
    ref = BayesianRidge(fit_intercept=False).fit(X, y, sample_weight=w)
    ev = maximise_evidence(stats_in_chunks(X, y, w, 700))
    assert rel(ev.coef, ref.coef_) < 1e-6
    assert ev.alpha == pytest.approx(ref.alpha_, rel=1e-6)
    assert ev.lambda_ == pytest.approx(ref.lambda_, rel=1e-6)
    assert rel(ev.sigma, ref.sigma_) < 1e-6
    assert ev.n_iter == ref.n_iter_


def test_rank_deficient_duplicate_and_zero_columns():
    X, y, _ = misspecified(2000, 8, seed=4)
    X = np.column_stack([X, X[:, 2], np.zeros(len(y))])  # duplicate and all-zero column
    ref = BayesianRidge(fit_intercept=False).fit(X, y)
    ev = maximise_evidence(stats_in_chunks(X, y, None, 300))
    assert rel(ev.coef, ref.coef_) < 1e-6
    assert ev.alpha == pytest.approx(ref.alpha_, rel=1e-6)
    assert ev.lambda_ == pytest.approx(ref.lambda_, rel=1e-6)
    assert not np.isfinite(ev.condition_number)


def test_round_off_along_a_null_mode_does_not_run_away():
    """XᵀWy's round-off along a mode whose eigenvalue eigh returns as ≤ 0 (here an all-zero
    column) is dropped, as scikit-learn's SVD route drops it; kept, it grew as λ → 0 and a POD
    leave-one-group-out fold ended in NaN."""
    from dataclasses import replace

    X, y, _ = misspecified(2000, 8, seed=5)
    X = np.column_stack([X, np.zeros(len(y))])
    ref = BayesianRidge(fit_intercept=False).fit(X, y)
    stats = stats_in_chunks(X, y, None, 300)
    noisy = replace(stats, xty=np.append(stats.xty[:-1], 1e-7 * np.abs(stats.xty).max()))
    for st in (stats, noisy):
        ev = maximise_evidence(st)
        assert np.isfinite(ev.alpha) and np.isfinite(ev.lambda_)
        assert rel(ev.coef, ref.coef_) < 1e-6 and ev.coef[-1] == 0.0
        assert ev.lambda_ == pytest.approx(ref.lambda_, rel=1e-6)


def test_near_interpolating_fit_keeps_alpha_accurate():
    """sse from yᵀy - 2bᵀθ + θᵀGθ cancels when noise is 1e-9; the exact residual pass fixes it."""
    rng = np.random.default_rng(7)
    X = rng.normal(size=(5000, 12))
    y = X @ rng.normal(size=12) + 100.0 * X[:, 0] + 1e-9 * rng.normal(size=5000)
    ref = BayesianRidge(fit_intercept=False).fit(X, y)
    from popsdask.engine.fit import fit_pops_with_evidence

    post, _ = fit_pops_with_evidence(design_from(X, y, chunk_rows=1000))
    assert post.alpha_ == pytest.approx(ref.alpha_, rel=1e-6)
    assert rel(post.coef_, ref.coef_) < 1e-6


def test_float32_store_within_tolerance_of_float64():
    X, y, w = misspecified(3000, 10, seed=5)
    st64 = sufficient_statistics(design_from(X, y, w, chunk_rows=500))
    st32 = sufficient_statistics(design_from(X.astype(np.float32), y, w, chunk_rows=500))
    ev64, ev32 = maximise_evidence(st64), maximise_evidence(st32)
    # the only loss is the float32 rounding of X itself (2^-24 relative), not the accumulation
    assert rel(ev32.coef, ev64.coef) < 1e-5
    assert st32.gram.dtype == np.float64
