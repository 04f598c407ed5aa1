"""UQ scorers for POPS-setting searches, the calibrated wrapper and the reused pass 1."""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from dask.callbacks import Callback
from sklearn.model_selection import GridSearchCV, GroupKFold, LeaveOneGroupOut

from popsdask.calibration.metrics import (
    NLL_FLOOR_FACTOR,
    gaussian_nll,
    interval_score,
    kind_tolerance,
    miscalibration_area,
    outside,
    roundoff_tolerance,
)
from popsdask.core.stats import Stats
from popsdask.engine.cache import STATISTICS_CACHE, StatisticsCache
from popsdask.engine.regressor import CalibratedPOPSRegressor, POPSRegressor
from popsdask.evaluation.scoring import (
    UQ_SCORERS,
    KindByColumns,
    band_by_kind,
    make_uq_scorer,
    row_groups,
    search_data,
    uq_scorers,
)
from popsdask.io.store import open_store, write_store

TUNE = "tune extra (dask-ml) not installed"
# sklearn warns that the UQ scorers take no sample_weight: they count rows on purpose
pytestmark = pytest.mark.filterwarnings("ignore:The scoring .* does not support sample_weight")


def grouped(n_configs: int = 120, forces: int = 12, p: int = 8, seed: int = 0):
    """Misspecified energy-and-force-like rows: per configuration one "energy" row (column 0
    counts atoms) and ``forces`` rows with column 0 = 0; six groups of configurations, each
    shifted in descriptor space so that a left-out group is out of distribution."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=p - 1)
    rows, y, kind, config = [], [], [], []
    for c in range(n_configs):
        shift = 0.4 * (c % 6)
        e = np.concatenate([[4.0], rng.normal(shift, 1.0, size=p - 1) * 3.0])
        f = np.column_stack([np.zeros(forces), rng.normal(shift, 1.0, size=(forces, p - 1))])
        block = np.vstack([e, f])
        rows.append(block)
        y.append(np.sin(block[:, 1:] @ a / np.sqrt(p)) * 2 + 0.1 * block[:, 0] + 1e-3 * rng.normal(size=forces + 1))
        kind += ["energy"] + ["force"] * forces
        config += [c] * (forces + 1)
    X = np.vstack(rows)
    config = np.asarray(config)
    w = np.where(np.asarray(kind) == "energy", 2.0, 0.5)
    return X, np.concatenate(y), w, config, (config % 6).astype(str)


@pytest.fixture(scope="module")
def problem():
    return grouped()


def direct_scores(est, X, y, target=0.05):
    """The four scores from predict and the calibration functions, all rows as one kind."""
    mle, std, hi, lo = est.predict(X, return_std=True, return_bounds=True)
    tol = np.maximum(kind_tolerance(y), roundoff_tolerance(X, est.coef_, est.intercept_))
    zero = (np.abs(y) <= tol) & (np.abs(mle) <= tol) & (np.abs(lo) <= tol) & (np.abs(hi) <= tol)
    assert zero.sum() == (~X.any(axis=1)).sum()
    m = ~zero
    e = y - mle
    floor = NLL_FLOOR_FACTOR * np.sqrt(np.mean(e**2))
    ev = np.mean(outside(y[m], lo[m], hi[m], tol[m]))
    return (
        {
            "neg_ev_gap": -abs(ev - target),
            "neg_interval_score": -interval_score(y[m], lo[m], hi[m]),
            "neg_nll": -gaussian_nll(e[m], std[m], floor),
            "neg_miscalibration_area": -miscalibration_area(e[m], std[m]),
        },
        ev,
        (hi[m] - lo[m]).mean(),
        np.sqrt(np.mean(e**2)),
    )


def test_scorers_equal_the_calibration_functions(problem):
    X, y, w, _, _ = problem
    est = POPSRegressor(leverage_percentile=30).fit(X[:1000], y[:1000], sample_weight=w[:1000])
    # append symmetry zeros (zero rows, zero references): left out of every band metric
    Xt, yt = np.vstack([X[1000:], np.zeros((7, X.shape[1]))]), np.concatenate([y[1000:], np.zeros(7)])
    want, ev, width, rmse = direct_scores(est, Xt, yt)  # RMSE and NLL floor: over all rows
    for name, scorer in UQ_SCORERS.items():
        assert scorer(est, Xt, yt) == pytest.approx(want[name], rel=1e-12, abs=1e-15), name
    assert band_by_kind(est, Xt, yt)["all"]["n_symmetry_zeros"] == 7
    excess = make_uq_scorer("envelope_violation", target=0.01, penalty="excess", width_weight=0.1)
    assert excess(est, Xt, yt) == pytest.approx(-max(ev - 0.01, 0.0) - 0.1 * width / rmse, rel=1e-12)
    assert make_uq_scorer("neg_nll")(est, Xt, yt) == UQ_SCORERS["neg_nll"](est, Xt, yt)


def test_scorers_by_row_kind_average_the_kinds(problem):
    X, y, w, _, _ = problem
    est = POPSRegressor().fit(X[:1000], y[:1000], sample_weight=w[:1000])
    Xt, yt = X[1000:], y[1000:]
    kinds = KindByColumns()(Xt)
    assert set(kinds) == {"energy", "force"} and (kinds == "energy").sum() == (Xt[:, 0] != 0).sum()
    per_kind = {k: direct_scores(est, Xt[kinds == k], yt[kinds == k]) for k in ("energy", "force")}
    scorers = uq_scorers(row_kind=KindByColumns(), relative=True)
    for name in ("neg_ev_gap", "neg_nll", "neg_miscalibration_area"):
        want = np.mean([per_kind[k][0][name] for k in per_kind])
        assert scorers[name](est, Xt, yt) == pytest.approx(want, rel=1e-12), name
    # relative interval score: each kind in units of its RMSE of the MLE
    want = np.mean([per_kind[k][0]["neg_interval_score"] / per_kind[k][3] for k in per_kind])
    assert scorers["neg_interval_score"](est, Xt, yt) == pytest.approx(want, rel=1e-12)
    force_only = make_uq_scorer("nll", row_kind=KindByColumns(), kinds=["force"])
    assert force_only(est, Xt, yt) == pytest.approx(per_kind["force"][0]["neg_nll"], rel=1e-12)


def test_sklearn_leave_one_group_out_search_picks_a_setting(problem):
    """R² ties across POPS settings (coef_ does not change); the UQ scorers rank them, and the
    search's choice is the best mean over the left-out groups computed by hand."""
    X, y, w, _, groups = problem
    grid = {"leverage_percentile": [10.0, 50.0, 90.0], "percentile_clipping": [0.0, 5.0]}
    scoring = {**uq_scorers(row_kind=KindByColumns()), "r2": "r2"}
    search = GridSearchCV(POPSRegressor(), grid, scoring=scoring, refit="neg_ev_gap", cv=LeaveOneGroupOut())
    search.fit(X, y, groups=groups, sample_weight=w)
    res = search.cv_results_
    np.testing.assert_allclose(res["mean_test_r2"], res["mean_test_r2"][0], rtol=1e-12)
    assert np.ptp(res["mean_test_neg_ev_gap"]) > 0 and np.ptp(res["mean_test_neg_nll"]) > 0
    by_hand = []
    scorer = scoring["neg_ev_gap"]
    for params in res["params"]:
        fold = []
        for train, test in LeaveOneGroupOut().split(X, y, groups):
            est = POPSRegressor(**params).fit(X[train], y[train], sample_weight=w[train])
            fold.append(scorer(est, X[test], y[test]))
        by_hand.append(np.mean(fold))
    np.testing.assert_allclose(res["mean_test_neg_ev_gap"], by_hand, rtol=1e-12)
    assert search.best_params_ == res["params"][int(np.argmax(by_hand))]
    assert search.best_estimator_.leverage_percentile == search.best_params_["leverage_percentile"]


def test_dask_ml_grid_search_threaded_equals_sklearn(problem):
    DaskGridSearchCV = pytest.importorskip("dask_ml.model_selection", reason=TUNE).GridSearchCV

    X, y, w, _, groups = problem
    grid = {"leverage_percentile": [20.0, 60.0], "minimum_relative_error": [None, 0.01]}
    scoring = uq_scorers(row_kind=KindByColumns())
    kw = dict(scoring=scoring, refit="neg_nll", cv=GroupKFold(n_splits=3))
    ours = DaskGridSearchCV(POPSRegressor(reuse_statistics=True), grid, scheduler="threads", **kw)
    ours.fit(X, y, groups=groups, sample_weight=w)
    ref = GridSearchCV(POPSRegressor(), grid, **kw).fit(X, y, groups=groups, sample_weight=w)
    for name in scoring:
        np.testing.assert_allclose(ours.cv_results_[f"mean_test_{name}"], ref.cv_results_[f"mean_test_{name}"], 1e-12)
    assert ours.best_params_ == ref.best_params_


class TaskCounter(Callback):
    """Counts the tasks of the local scheduler whose key starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix, self.count = prefix, 0

    def _pretask(self, key, dsk, state):
        name = key[0] if isinstance(key, tuple) else key
        self.count += str(name).startswith(self.prefix)


FITTED = ("coef_", "sigma_", "misspecification_sigma_", "posterior_samples_", "leverage_threshold_", "n_selected_")


def assert_same_fit(a: POPSRegressor, b: POPSRegressor) -> None:
    for name in FITTED:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for name in ("lower_", "upper_", "basis_"):
        np.testing.assert_array_equal(getattr(a.posterior_, name), getattr(b.posterior_, name), err_msg=name)


@pytest.mark.parametrize("source", ["numpy", "store"])
def test_second_fit_reuses_pass_one(problem, tmp_path, source):
    """Other POPS settings on the same rows: no Gram task runs, and the fit is bit-identical to
    a fresh one; other rows, another chunking or an intercept compute pass 1 again."""
    X, y, w, config, groups = problem
    if source == "store":
        write_store(tmp_path / "s.zarr", X, y, weight=w, chunk_rows=500)
        data, fit_args = open_store(tmp_path / "s.zarr"), ()
    else:
        data, fit_args = X, (y,)
    fit_kw = {} if source == "store" else {"sample_weight": w}
    STATISTICS_CACHE.clear()
    settings = [dict(leverage_percentile=50.0), dict(leverage_percentile=80.0, percentile_clipping=2.0)]
    settings.append(dict(leverage_percentile=0.0, minimum_relative_error=0.01, mode_threshold=1e-6))
    counts = []
    with dask.config.set(scheduler="threads"):
        for s in settings:
            with TaskCounter("_stats_and_checksum") as tc:
                reused = POPSRegressor(reuse_statistics=True, chunk_rows=400, **s).fit(data, *fit_args, **fit_kw)
            counts.append(tc.count)
            fresh = POPSRegressor(chunk_rows=400, **s).fit(data, *fit_args, **fit_kw)
            assert_same_fit(reused, fresh)
        n_chunks = -(-len(y) // (400 if source == "numpy" else 500))
        assert counts == [n_chunks, 0, 0]
        # a fitted attribute edited in place does not reach the cache
        reused.sigma_[:] = 0.0
        again = POPSRegressor(reuse_statistics=True, chunk_rows=400, **settings[-1]).fit(data, *fit_args, **fit_kw)
        assert_same_fit(again, fresh)
        if source == "store":  # rewritten in place by popsdask (atomically): new dask names
            write_store(tmp_path / "s.zarr", X, y * 1.5, weight=w, chunk_rows=500, overwrite=True)
            with TaskCounter("_stats_and_checksum") as tc:
                new = POPSRegressor(reuse_statistics=True, **settings[0]).fit(open_store(tmp_path / "s.zarr"))
            assert tc.count == n_chunks
            assert_same_fit(new, POPSRegressor(**settings[0]).fit(open_store(tmp_path / "s.zarr")))
        if source == "numpy":
            changed = X.copy()
            changed[1234, 3] += 1e-9  # one entry: a sampled checksum could miss it, the hash does not
            for kw, Xn in ((dict(chunk_rows=400), changed), (dict(chunk_rows=300), X), (dict(fit_intercept=True), X)):
                with TaskCounter("_stats_and_checksum") as tc:
                    POPSRegressor(reuse_statistics=True, **{"chunk_rows": 400, **kw}).fit(Xn, y, sample_weight=w)
                assert tc.count > 0, kw
            with TaskCounter("_stats_and_checksum") as tc:  # the same rows as a dask array (its own name)
                POPSRegressor(reuse_statistics=True).fit(da.from_array(X, chunks=(400, -1)), y, sample_weight=w)
            assert tc.count > 0


def test_statistics_cache_is_bounded_and_off_by_default(problem):
    X, y, w, _, _ = problem
    STATISTICS_CACHE.clear()
    POPSRegressor().fit(X, y, sample_weight=w)
    assert len(STATISTICS_CACHE) == 0
    cache = StatisticsCache(maxsize=2)
    for i in range(4):
        cache.get_or_compute(("k", i), lambda i=i: Stats(np.eye(2) * i, np.zeros(2), 0.0, 1, 1.0, 0.0, 0.0))
    assert len(cache) == 2 and cache.misses == 4
    value, hit = cache.get_or_compute(("k", 3), lambda: None)
    assert hit and value.gram[0, 0] == 3.0


def test_calibrated_wrapper_level_sets_coverage(problem):
    """A higher level covers more of a held-out group; the level is searchable
    with the configuration ids as a fit parameter."""
    X, y, w, config, groups = problem
    train, test = groups != "5", groups == "5"
    from scipy.stats import norm

    covered = {}
    for level in (0.5, 0.9):
        est = CalibratedPOPSRegressor(POPSRegressor(), level=level, row_kind=KindByColumns())
        est.fit(X[train], y[train], sample_weight=w[train], config=config[train])
        assert set(est.calibration_.kinds) == {"energy", "force"}
        mle, std = est.predict(X[test], return_std=True)
        np.testing.assert_array_equal(mle, est.estimator_.predict(X[test]))
        lazy = est.predict(da.from_array(X[test], chunks=(100, -1)), return_std=True, return_bounds=True)
        np.testing.assert_allclose(lazy[1], std, rtol=1e-12)
        np.testing.assert_allclose(lazy[2:], est.predict(X[test], return_bounds=True)[1:], rtol=1e-12)
        # the std is calibrated so that ±z(level)·std covers the level
        covered[level] = np.mean(np.abs(y[test] - mle) <= norm.ppf((1 + level) / 2) * std)
    assert covered[0.5] < covered[0.9]
    grid = {"level": [0.8, 0.95], "estimator__leverage_percentile": [50.0]}
    search = GridSearchCV(
        CalibratedPOPSRegressor(POPSRegressor(reuse_statistics=True), row_kind=KindByColumns()),
        grid,
        scoring=uq_scorers(row_kind=KindByColumns()),
        refit="neg_ev_gap",
        cv=LeaveOneGroupOut(),
    )
    search.fit(X, y, groups=groups, sample_weight=w, config=config)
    assert search.best_params_["level"] in (0.8, 0.95)


def test_row_groups_and_search_data_from_a_store(problem, tmp_path):
    X, y, w, config, groups = problem
    per_config = groups[np.unique(config, return_index=True)[1]]
    write_store(tmp_path / "g.zarr", X, y, weight=w, config=config, configurations={"group": per_config})
    ds = open_store(tmp_path / "g.zarr")
    np.testing.assert_array_equal(row_groups(ds), groups)
    data = search_data(ds)
    np.testing.assert_array_equal(data["X"], X)
    np.testing.assert_array_equal(data["sample_weight"], w)
    np.testing.assert_array_equal(data["config"], config)


def test_dask_ml_search_on_a_local_cluster_runs_fits_inside_workers(problem, local_client):
    """Fits in worker tasks run their passes in the task (no nested submission, no deadlock
    with one thread per worker); scores equal the threaded search's."""
    DaskGridSearchCV = pytest.importorskip("dask_ml.model_selection", reason=TUNE).GridSearchCV

    X, y, w, _, groups = problem
    grid = {"leverage_percentile": [20.0, 60.0]}
    kw = dict(scoring=uq_scorers(row_kind=KindByColumns()), refit="neg_ev_gap", cv=GroupKFold(n_splits=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dask's large-graph warning for the in-graph X
        on_cluster = DaskGridSearchCV(POPSRegressor(reuse_statistics=True), grid, scheduler=local_client, **kw)
        on_cluster.fit(X, y, groups=groups, sample_weight=w)
    threaded = DaskGridSearchCV(POPSRegressor(), grid, scheduler="threads", **kw)
    threaded.fit(X, y, groups=groups, sample_weight=w)
    for name in kw["scoring"]:
        np.testing.assert_allclose(
            on_cluster.cv_results_[f"mean_test_{name}"], threaded.cv_results_[f"mean_test_{name}"], rtol=1e-12
        )
