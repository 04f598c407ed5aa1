"""``compute_score``: the log marginal likelihood per iteration, as scikit-learn's BayesianRidge.

popsregression's own suite (``test_compute_score``) expects ``scores_`` after
``compute_score=True``, as ``BayesianRidge`` has; here the values are checked against
``BayesianRidge(compute_score=True).scores_`` itself.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import BayesianRidge

from popsdask import POPSRegressor
from popsdask.core.evidence import EvidenceParams, maximise_evidence
from popsdask.core.stats import block_stats
from tests.conftest import misspecified


def reference(X, y, w=None, **params):
    return BayesianRidge(fit_intercept=False, compute_score=True, **params).fit(X, y, sample_weight=w)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("noise", [1e-1, 1e-3])
@pytest.mark.parametrize("params", [{}, {"alpha_init": 3.0, "lambda_init": 1e-3, "tol": 1e-8}, {"lambda_1": 1.0}])
def test_scores_match_bayesian_ridge(weighted, noise, params):
    X, y, w = misspecified(3000, 15, seed=41, noise=noise)
    w = w if weighted else None
    ref = reference(X, y, w, **params)
    ev = maximise_evidence(block_stats(X, y, w), EvidenceParams(compute_score=True, **params))
    assert ev.scores.shape == ref.scores_.shape == (ref.n_iter_ + 1,)
    np.testing.assert_allclose(ev.scores, ref.scores_, rtol=1e-10)


def test_scores_rank_deficient():
    """Duplicate and zero columns: zero eigenvalues of G enter log|Σ| as log λ."""
    X, y, _ = misspecified(2000, 8, seed=42)
    X = np.column_stack([X, X[:, 2], np.zeros(len(y))])
    ref = reference(X, y)
    ev = maximise_evidence(block_stats(X, y, None), EvidenceParams(compute_score=True))
    np.testing.assert_allclose(ev.scores, ref.scores_, rtol=1e-10)


def test_no_scores_unless_asked():
    X, y, _ = misspecified(500, 4, seed=43)
    assert maximise_evidence(block_stats(X, y, None)).scores.size == 0
    est = POPSRegressor().fit(X, y)
    assert not hasattr(est, "scores_")
    est.set_params(compute_score=True).fit(X, y)
    assert est.scores_.shape == (est.n_iter_ + 1,)
    est.set_params(compute_score=False).fit(X, y)
    assert not hasattr(est, "scores_")  # no stale scores from the earlier fit


@pytest.mark.parametrize("weighted", [False, True])
def test_estimator_scores_through_the_passes(weighted):
    """POPSRegressor on several row chunks (the Gram tree reduction) gives sklearn's scores_."""
    X, y, w = misspecified(6000, 12, seed=44, noise=1e-2)
    w = w if weighted else None
    ref = reference(X, y, w)
    est = POPSRegressor(compute_score=True, chunk_rows=700).fit(X, y, sample_weight=w)
    np.testing.assert_allclose(est.scores_, ref.scores_, rtol=1e-8)
    assert est.n_iter_ == ref.n_iter_
