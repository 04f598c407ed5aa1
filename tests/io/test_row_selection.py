"""Row selection by ``minimum_relative_error`` (popsregression ≥ 0.5), against dense numpy.

The dense reference below is written from the description of popsregression's main branch
(POPS-UQ/popsregression, ``popsregression/_pops.py`` at commits 6d61264 and 907efb9, and its
``test_minimum_relative_error_is_relative_to_rmse``): on the √w-rescaled data, e = √w (y - Xθ),
h = w xᵀA⁻¹x, δθ = A⁻¹x √w · e / max(h, 1e-6), RMSE = √(mean e²) over all rows, and a row is
kept when |e| ≥ ε · RMSE (every row if none is). popsregression 0.5 ignores
``leverage_percentile``; popsdask applies both criteria, so ``leverage_percentile=0`` is the
reference's selection. None of its code is used here.
"""

from __future__ import annotations

import dask
import numpy as np
import pytest
from sklearn.linear_model import BayesianRidge

from popsdask import POPSRegressor, fit
from popsdask.core.pops import LEVERAGE_FLOOR, block_leverage, relative_error_cutoff, selected_rows
from popsdask.core.validation import InputError
from popsdask.engine.design import design_from
from tests.conftest import misspecified


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def dense_selection(X, y, w, coef, a_inv, eps, leverage_percentile, floor=LEVERAGE_FLOOR):
    """Kept-row mask and the kept corrections δθᵢ (n_kept × P), all rows in memory."""
    sw = np.ones(len(y)) if w is None else np.sqrt(w)
    Xs, ys = X * sw[:, None], y * sw
    e = ys - Xs @ coef
    proj = Xs @ a_inv
    h = np.sum(proj * Xs, axis=1)
    delta = proj * (e / np.maximum(h, floor))[:, None]
    rmse = np.sqrt(np.mean(e**2))
    keep = (np.abs(e) >= eps * rmse) & (h >= np.percentile(h, leverage_percentile))
    if not keep.any():
        keep[:] = True
    return keep, delta[keep]


def dense_hypercube(delta, mode_threshold=1e-8, clip=0.0):
    vals, vecs = np.linalg.eigh(delta.T @ delta)
    U = vecs[:, vals > mode_threshold * vals.max()]
    z = delta @ U
    return U, np.percentile(z, clip, axis=0), np.percentile(z, 100 - clip, axis=0)


def aligned(basis, lower, upper, ref_basis):
    s = np.sign(np.sum(basis * ref_basis, axis=0))
    return basis * s, np.where(s > 0, lower, -upper), np.where(s > 0, upper, -lower)


def bayesian_ridge(X, y, w):
    ref = BayesianRidge(fit_intercept=False).fit(X, y, sample_weight=w)
    return ref.coef_, ref.alpha_ * ref.sigma_


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.01, 0.5, 1.5])
def test_selected_rows_match_dense_mask(weighted, eps):
    """The pass-2 block columns and the cutoff select exactly the dense reference's rows."""
    X, y, w = misspecified(3000, 8, seed=21)
    w = w if weighted else None
    coef, a_inv = bayesian_ridge(X, y, w)
    hc = block_leverage(X, y, w, coef, a_inv, leverage_floor=LEVERAGE_FLOOR)
    cutoff = relative_error_cutoff(float(hc[:, 2] @ hc[:, 2]), len(y), eps)
    keep, delta = dense_selection(X, y, w, coef, a_inv, eps, 0.0)
    np.testing.assert_array_equal(selected_rows(hc, -np.inf, cutoff), keep)
    np.testing.assert_allclose((X[keep] @ a_inv) * hc[keep, 1:2], delta, rtol=1e-10, atol=1e-14)
    if eps in (0.0, 0.5):  # ε = 0 keeps every row; 0.5 drops some (popsregression's own tests)
        assert keep.all() == (eps == 0.0)


@pytest.mark.parametrize("chunk_rows", [6000, 700])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize(("eps", "percentile"), [(0.01, 0.0), (0.3, 0.0), (0.3, 50.0), (0.0, 90.0)])
def test_ensemble_moment_matches_dense(tmp_path, chunk_rows, weighted, eps, percentile):
    """Kept rows, corrections and their second moment: one and several chunks, threaded scheduler."""
    X, y, w = misspecified(6000, 12, seed=22)
    w = w if weighted else None
    with dask.config.set(scheduler="threads"):
        post = fit(
            X,
            y,
            weight=w,
            posterior="ensemble",
            leverage_percentile=percentile,
            minimum_relative_error=eps,
            chunk_rows=chunk_rows,
            corrections_path=tmp_path / "c.zarr",
        )
    keep, delta = dense_selection(X, y, w, post.coef_, post.alpha_ * post.sigma_, eps, percentile)
    assert post.n_selected_ == int(keep.sum())
    np.testing.assert_allclose(np.asarray(post.corrections_), delta, rtol=1e-10, atol=1e-14)
    assert rel(post.misspecification_sigma_, delta.T @ delta / len(delta)) < 1e-10
    coef, a_inv = bayesian_ridge(X, y, w)  # the same rows from scikit-learn's fit
    np.testing.assert_array_equal(dense_selection(X, y, w, coef, a_inv, eps, percentile)[0], keep)
    assert post.settings["minimum_relative_error"] == eps
    assert post.settings["leverage_floor"] == LEVERAGE_FLOOR
    sw = np.ones(6000) if w is None else w
    rmse = np.sqrt(np.mean(sw * (y - X @ post.coef_) ** 2))
    assert post.settings["residual_threshold"] == pytest.approx(eps * rmse, rel=1e-10, abs=0)


@pytest.mark.parametrize("chunk_rows", [6000, 700])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("clip", [0.0, 5.0])
def test_hypercube_matches_dense(chunk_rows, weighted, clip):
    """Principal basis and box bounds (min/max and percentile routes) of the kept corrections."""
    X, y, w = misspecified(6000, 12, seed=23)
    w = w if weighted else None
    eps = 0.2
    with dask.config.set(scheduler="threads"):
        post = fit(
            X, y, weight=w, leverage_percentile=0.0, minimum_relative_error=eps, percentile_clipping=clip,
            chunk_rows=chunk_rows,
        )  # fmt: skip
    keep, delta = dense_selection(X, y, w, post.coef_, post.alpha_ * post.sigma_, eps, 0.0)
    U, lo, hi = dense_hypercube(delta, clip=clip)
    assert post.n_selected_ == int(keep.sum())
    basis, lower, upper = aligned(post.basis_, post.lower_, post.upper_, U)
    assert rel(basis, U) < 1e-10
    assert rel(lower, lo) < 1e-10
    assert rel(upper, hi) < 1e-10


def test_disabled_is_the_leverage_selection():
    """None keeps popsregression 0.4.0's path: (n, 2) pass-2 blocks, no floor, no cutoff."""
    X, y, w = misspecified(3000, 8, seed=24)
    coef, a_inv = bayesian_ridge(X, y, w)
    assert block_leverage(X, y, w, coef, a_inv).shape == (3000, 2)
    post = fit(X, y, weight=w, chunk_rows=500)
    assert post.settings["minimum_relative_error"] is None
    assert post.settings["leverage_floor"] is None and post.settings["residual_threshold"] is None
    assert post.n_selected_ == 1500


def test_floor_bounds_the_box_of_near_zero_leverage_rows():
    """Rows of near-zero leverage give corrections ~ e/h: without selection the box explodes
    (the W DFT data at leverage_percentile 0: 10¹³ wide); the floor keeps it finite."""
    X, y, _ = misspecified(4000, 6, seed=25)
    X[:200] *= 1e-6  # tiny rows: h ~ 1e-12, residual ~ |y| = O(1)
    loose = fit(X, y, leverage_percentile=0.0)
    floored = fit(X, y, leverage_percentile=0.0, minimum_relative_error=0.0)
    width = lambda p: float(np.max(p.upper_ - p.lower_))  # noqa: E731
    assert width(loose) > 1e5 * width(floored)
    keep, delta = dense_selection(X, y, None, floored.coef_, floored.alpha_ * floored.sigma_, 0.0, 0.0)
    U, lo, hi = dense_hypercube(delta)
    _, lower, upper = aligned(floored.basis_, floored.lower_, floored.upper_, U)
    assert rel(lower, lo) < 1e-10 and rel(upper, hi) < 1e-10


def test_no_row_passes_keeps_every_row():
    X, y, _ = misspecified(2000, 5, seed=26)
    post = fit(X, y, leverage_percentile=0.0, minimum_relative_error=1e12)
    assert post.n_selected_ == 2000 and post.settings["residual_threshold"] is None


def test_scale_invariant():
    X, y, w = misspecified(2000, 5, seed=27)
    a = fit(X, y, weight=w, minimum_relative_error=0.5, posterior="ensemble")
    b = fit(X, 1000.0 * y, weight=w, minimum_relative_error=0.5, posterior="ensemble")
    assert a.n_selected_ == b.n_selected_
    # the prior λ is not rescaled with y, so θ is 1000× only to ~1e-8
    np.testing.assert_allclose(1000.0 * np.asarray(a.corrections_), np.asarray(b.corrections_), rtol=1e-6)


def test_estimator_parameter_and_fitted_state():
    X, y, w = misspecified(3000, 6, seed=28)
    est = POPSRegressor(minimum_relative_error=0.1, leverage_percentile=0.0).fit(X, y, sample_weight=w)
    assert est.get_params()["minimum_relative_error"] == 0.1
    post = fit(X, y, weight=w, minimum_relative_error=0.1, leverage_percentile=0.0)
    assert est.n_selected_ == post.n_selected_ < 3000
    assert est.residual_threshold_ == pytest.approx(post.settings["residual_threshold"], rel=1e-12)
    assert est.posterior_.settings["minimum_relative_error"] == 0.1
    assert POPSRegressor().fit(X, y).residual_threshold_ is None


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf"), "0.1", True])
def test_out_of_range_values_are_refused(value):
    X, y, _ = misspecified(500, 4, seed=29)
    with pytest.raises(InputError, match="minimum_relative_error"):
        fit(X, y, minimum_relative_error=value)
    with pytest.raises(ValueError, match="minimum_relative_error"):
        POPSRegressor(minimum_relative_error=value).fit(X, y)


def test_cli_option(tmp_path, capsys):
    from popsdask import Posterior, write_store
    from popsdask.cli import build_parser, main

    sub = build_parser()._subparsers._group_actions[0].choices["fit"]
    assert "--minimum-relative-error" in sub.format_help() and "default: None" in sub.format_help()
    X, y, w = misspecified(3000, 5, seed=30)
    write_store(tmp_path / "s.zarr", X, y, weight=w, chunk_rows=700)
    local = ["--n-workers", "1", "--threads-per-worker", "2", "--quiet"]
    args = ["fit", str(tmp_path / "s.zarr"), "-o", str(tmp_path / "p.zarr"), *local]
    assert main([*args, "--minimum-relative-error", "-1"]) == 2
    assert "minimum_relative_error=-1.0" in capsys.readouterr().err
    assert not (tmp_path / "p.zarr").exists()
    assert main([*args, "--minimum-relative-error", "0.2", "--leverage-percentile", "0"]) == 0
    post = Posterior.load(tmp_path / "p.zarr")
    assert post.settings["minimum_relative_error"] == 0.2
    expected = fit(design_from(tmp_path / "s.zarr").X, y, weight=w, leverage_percentile=0.0, minimum_relative_error=0.2)
    assert post.n_selected_ == expected.n_selected_
    assert rel(post.upper_, expected.upper_) < 1e-10
