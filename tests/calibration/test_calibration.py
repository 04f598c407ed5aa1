"""Exact envelopes, the complete ensemble, tolerances and calibration diagnostics (brute force)."""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm

from popsdask import fit, write_store
from popsdask.calibration.metrics import (
    band_metrics,
    coverage_curve,
    gaussian_nll,
    interval_score,
    miscalibration_area,
)
from popsdask.core.validation import InputError
from popsdask.engine.predictions import predict_ensemble, prediction_metrics
from popsdask.evaluation.crossval import leave_one_group_out
from tests.conftest import misspecified, no_cluster_started


@pytest.fixture
def grouped(tmp_path):
    """A store with 3 kinds of configuration, one energy and two force rows each."""
    X, y, w = misspecified(3600, 7, seed=31)
    n_cfg = 1200
    config = np.repeat(np.arange(n_cfg), 3)
    kind = np.tile([0, 1, 1], n_cfg)
    group = np.array(["bulk", "surface", "defect"])[np.arange(n_cfg) % 3]
    n_atoms = 1 + np.arange(n_cfg) % 5
    write_store(
        tmp_path / "s.zarr",
        X,
        y,
        weight=w,
        config=config,
        kind=kind,
        chunk_rows=700,
        configurations={"group": group, "n_atoms": n_atoms},
    )
    return tmp_path, X, y, config, kind, group, n_atoms


@pytest.fixture
def scratch(tmp_path, monkeypatch) -> Path:
    """The code under test's temporary directory (``tempfile`` and ``TMPDIR`` point here)."""
    d = tmp_path / "scratch"
    d.mkdir()
    monkeypatch.setenv("TMPDIR", str(d))
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


@pytest.mark.parametrize("p", [4, 7, 10])
def test_box_bounds_equal_vertex_enumeration(tmp_path, p):
    X, y, w = misspecified(3000, p, seed=32 + p)
    post = fit(X[:2500], y[:2500], weight=w[:2500])
    k = post.basis_.shape[1]
    assert 1 <= k <= 10
    ds = predict_ensemble(post, X[2500:], n_samples=300, seed=1)
    vertices = np.array(list(itertools.product(*zip(post.lower_, post.upper_, strict=True))))  # (2^K, K)
    theta = post.coef_[None, :] + vertices @ post.basis_.T
    pred = X[2500:] @ theta.T
    np.testing.assert_allclose(ds["box_min"].values, pred.min(axis=1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ds["box_max"].values, pred.max(axis=1), rtol=1e-12, atol=1e-12)
    # the box contains every sampled prediction, and is strictly wider than the samples somewhere
    samples = ds["prediction"].values
    assert np.all(samples >= ds["box_min"].values - 1e-12) and np.all(samples <= ds["box_max"].values + 1e-12)
    assert np.any(ds["box_max"].values - ds["max"].values > 1e-9)


def test_complete_ensemble_equals_brute_force(grouped):
    tmp, X, y, *_ = grouped
    post = fit(tmp / "s.zarr", posterior="ensemble", corrections_path=tmp / "corr.zarr")
    corr = np.asarray(post.corrections_)
    assert corr.shape[0] > 1000
    from popsdask.engine import predictions as ensemble

    old = ensemble.CORRECTION_CHUNK, ensemble.RANGE_ROWS
    ensemble.CORRECTION_CHUNK, ensemble.RANGE_ROWS = 256, 300  # many (row × correction) blocks on a small problem
    try:
        ds = predict_ensemble(post, tmp / "s.zarr", tmp / "p.zarr")
    finally:
        ensemble.CORRECTION_CHUNK, ensemble.RANGE_ROWS = old
    dev = X @ corr.T  # (rows, all corrections)
    mle = X @ post.coef_
    np.testing.assert_allclose(ds["min"].values, mle + dev.min(axis=1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ds["max"].values, mle + dev.max(axis=1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ds["mean"].values, mle + dev.mean(axis=1), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ds["std"].values, dev.std(axis=1), rtol=1e-8, atol=1e-12)
    np.testing.assert_array_equal(ds["box_min"].values, ds["min"].values)
    assert ds.attrs["n_samples"] == corr.shape[0] and ds.attrs["n_prediction_samples"] == 500
    # subsampling only when asked, recorded
    sub = predict_ensemble(post, tmp / "s.zarr", n_samples=50, seed=2)
    assert sub.attrs["n_samples"] == 50
    assert np.all(sub["max"].values <= ds["max"].values + 1e-12)


def test_tolerance_and_symmetry_zeros(tmp_path):
    X, y, w = misspecified(2000, 6, seed=33)
    post = fit(X, y, weight=w)
    Xt, yt = X[:300].copy(), y[:300].copy()
    Xt[:40], yt[:40] = 0.0, 0.0  # rows zero by symmetry: reference, MLE and spread all vanish
    yt[40:50] = (Xt[40:50] @ post.coef_) + 1e-300  # inside by round-off only
    kind = np.ones(300, dtype=int)
    write_store(tmp_path / "t.zarr", Xt, yt, kind=kind)
    ds = predict_ensemble(post, tmp_path / "t.zarr", tmp_path / "p.zarr", n_samples=100)
    m = json.loads(ds.attrs["metrics"])["force"]
    assert m["n_symmetry_zeros"] == 40 and m["n"] == 300
    rest = slice(40, None)
    lo, hi, tol = (ds[k].values[rest] for k in ("min", "max", "tolerance"))
    assert np.all(tol >= 1e-8 * np.sqrt(np.mean(yt**2)))
    outside = (yt[rest] < lo - tol) | (yt[rest] > hi + tol)
    assert m["envelope_violation"] == pytest.approx(outside.mean())


def test_fixed_rows_are_violations_no_posterior_removes(tmp_path):
    X, y, w = misspecified(2000, 6, seed=34)
    post = fit(X, y, weight=w)
    Xt, yt = X[:300].copy(), y[:300].copy()
    Xt[:30] = 0.0  # a zero row: every member predicts 0 ...
    yt[:20], yt[20:30] = 0.05, 0.0  # ... off by 0.05 (fixed violations) or exactly (symmetry zeros)
    write_store(tmp_path / "t.zarr", Xt, yt, kind=np.ones(300, dtype=int))
    ds = predict_ensemble(post, tmp_path / "t.zarr", tmp_path / "p.zarr", n_samples=100)
    m = json.loads(ds.attrs["metrics"])["force"]
    assert m["n_symmetry_zeros"] == 10 and m["n_fixed"] == 20
    assert m["fixed_violation"] == pytest.approx(20 / 290)
    used = np.ones(300, dtype=bool)
    used[20:30] = False  # the symmetry zeros
    lo, hi, tol = (ds[k].values[used] for k in ("min", "max", "tolerance"))
    outside = (yt[used] < lo - tol) | (yt[used] > hi + tol)
    assert m["envelope_violation"] == pytest.approx(outside.mean())
    assert m["envelope_violation"] > m["fixed_violation"]  # the movable rows miss too


def test_calibration_functions_against_direct_formulas():
    rng = np.random.default_rng(0)
    std = rng.uniform(0.5, 2.0, 200_000)
    err = rng.normal(size=std.size) * std  # calibrated Gaussian errors
    obs, nominal = coverage_curve(err, std, np.array([0.0, 1.0, 2.0, 4.0]))
    np.testing.assert_allclose(obs, nominal, atol=4e-3)
    assert miscalibration_area(err, std) < 3e-3
    assert miscalibration_area(err, std * 10) > 0.35  # far too wide: covers everything early
    y = rng.normal(size=1000)
    lo, hi = -np.ones(1000), np.ones(1000)
    direct = np.mean(2 + 40 * (np.maximum(-1 - y, 0) + np.maximum(y - 1, 0)))
    assert interval_score(y, lo, hi, 0.05) == pytest.approx(direct)
    e, s = rng.normal(size=50), np.abs(rng.normal(size=50))
    floored = np.maximum(s, 0.3)
    assert gaussian_nll(e, s, 0.3) == pytest.approx(-np.mean(norm.logpdf(e, scale=floored)))


def test_ev_curve_matches_prefix_envelopes(grouped):
    tmp, X, y, config, kind, *_ = grouped
    post = fit(tmp / "s.zarr")
    sizes = (10, 40, 200)
    ds = predict_ensemble(post, tmp / "s.zarr", tmp / "p.zarr", n_samples=200, seed=4, ev_curve=sizes)
    assert ds.attrs["ev_curve_samples"] == list(sizes)
    theta = post.sample(200, seed=4).values
    pred = X @ theta.T
    tol = ds["tolerance"].values
    metrics = prediction_metrics(ds)["kinds"]
    for name, code in (("energy", 0), ("force", 1)):
        mask = kind == code
        expected = [
            np.mean(
                (y[mask] < pred[mask, :s].min(axis=1) - tol[mask]) | (y[mask] > pred[mask, :s].max(axis=1) + tol[mask])
            )
            for s in sizes
        ]
        got = metrics[name]["ev_vs_samples"]["envelope_violation"]
        np.testing.assert_allclose(got, expected)
        assert got[-1] == pytest.approx(metrics[name]["envelope_violation"])


def test_group_and_per_atom_metrics(grouped):
    tmp, X, y, config, kind, group, n_atoms = grouped
    post = fit(tmp / "s.zarr")
    ds = predict_ensemble(post, tmp / "s.zarr", tmp / "p.zarr", n_samples=100)
    res = prediction_metrics(ds, group_by="group")
    assert set(res["groups"]) == {"bulk", "surface", "defect"}
    mle = X @ post.coef_
    for g in ("bulk", "defect"):
        rows = (group[config] == g) & (kind == 1)
        assert res["groups"][g]["force"]["n"] == rows.sum()
        assert res["groups"][g]["force"]["mae_mle"] == pytest.approx(np.abs(y - mle)[rows].mean())
    e = kind == 0
    per_atom = np.abs(y - mle)[e] / n_atoms[config[e]]
    assert res["kinds"]["energy_per_atom"]["mae_mle"] == pytest.approx(per_atom.mean())
    with pytest.raises(InputError, match="no per-configuration variable 'phase'.*available: group, n_atoms"):
        prediction_metrics(ds, group_by="phase")


def test_band_metrics_bounds_and_sharpness():
    y = np.array([0.0, 1.0, 2.0, 3.0])
    m = band_metrics(y, y + 0.1, np.full(4, 0.5), y - 1, y + 1, tol=1e-12, nll_floor=1e-3)
    assert m["envelope_violation"] == 0 and m["mean_envelope_width"] == 2.0 and m["mean_std"] == 0.5


def test_leave_one_group_out_folds_never_see_their_group(grouped, tmp_path):
    tmp, X, y, config, kind, group, n_atoms = grouped
    res = leave_one_group_out(tmp / "s.zarr", tmp_path / "cv", group_by="group", ev_curve=(20, 100))
    assert set(res["folds"]) == {"bulk", "surface", "defect", "(random split)"}
    held = group[config] == "surface"
    post = fit(X[~held], y[~held], weight=_weights(tmp)[~held])
    fold = res["folds"]["surface"]
    mle = X[held] @ post.coef_
    assert fold["metrics"]["force"]["mae_mle"] == pytest.approx(np.abs(y[held] - mle)[kind[held] == 1].mean())
    assert "| surface |" in res["table"] and (tmp_path / "cv" / "crossval.md").exists()
    with pytest.raises(InputError, match="no per-configuration variable 'phase'"):
        leave_one_group_out(tmp / "s.zarr", tmp_path / "cv2", group_by="phase")
    assert not (tmp_path / "cv2").exists()


def _weights(tmp):
    import popsdask

    ds = popsdask.open_store(tmp / "s.zarr")
    return ds["weight"].values


def test_recalibration_round_trip_and_refusals(grouped, tmp_path):
    from popsdask import Posterior
    from popsdask.calibration.conformal import conformal_quantile
    from popsdask.cli import main
    from popsdask.evaluation.crossval import calibrate

    tmp, X, y, config, kind, group, n_atoms = grouped
    post = fit(tmp / "s.zarr")
    post.save(tmp_path / "post.zarr")
    cal = calibrate(post, tmp / "s.zarr", tmp_path / "cal.zarr", group_by="group", level=0.9, seed=1)
    back = Posterior.load(tmp_path / "cal.zarr")
    assert back.calibration == cal.calibration and set(back.calibration["kinds"]) == {"energy_per_atom", "force"}
    ds = predict_ensemble(back, tmp / "s.zarr", tmp_path / "p.zarr", n_samples=100)
    c = back.calibration["kinds"]["force"]
    f = kind == 1
    np.testing.assert_allclose(ds["std"].values[f], c["std_scale"] * (ds["std_raw"].values[f] + c["std_offset"]))
    assert ds.attrs["bounds"].startswith("calibrated") and "metrics_raw" in ds.attrs
    ce, e = back.calibration["kinds"]["energy_per_atom"], kind == 0  # offsets per atom: n_atoms of them
    atoms = n_atoms[config[e]]
    expected = ce["std_scale"] * (ds["std_raw"].values[e] + ce["std_offset"] * atoms)
    np.testing.assert_allclose(ds["std"].values[e], expected)
    again = calibrate(post, tmp / "s.zarr", group_by="group", level=0.9, seed=1)
    assert again.calibration["kinds"] == cal.calibration["kinds"]  # reproducible
    # the split-conformal quantile is the ceil((n+1) level)-th smallest score
    scores = np.arange(1.0, 20.0)
    assert conformal_quantile(scores, 0.9) == 18.0 and conformal_quantile(scores[:5], 0.9) == np.inf
    # refusals: twice without --replace, features that differ, a split with too few rows
    with pytest.raises(InputError, match="already calibrated"):
        calibrate(back, tmp / "s.zarr", group_by="group")
    write_store(tmp_path / "other.zarr", X[:, :5], y, config=config, kind=kind, configurations={"group": group})
    assert (
        main(
            [
                "calibrate",
                str(tmp_path / "post.zarr"),
                str(tmp_path / "other.zarr"),
                "--group-by",
                "group",
                "-o",
                str(tmp_path / "c2.zarr"),
            ]
        )
        == 2
    )
    assert (
        main(
            [
                "calibrate",
                str(tmp_path / "post.zarr"),
                str(tmp / "s.zarr"),
                "--group-by",
                "phase",
                "-o",
                str(tmp_path / "c3.zarr"),
            ]
        )
        == 2
    )
    assert not (tmp_path / "c2.zarr").exists() and not (tmp_path / "c3.zarr").exists()


@pytest.mark.slow
def test_cross_conformal_on_the_train_split_equals_a_train_only_store(grouped, tmp_path, scratch):
    """--group-by with --split train calibrates on the train configurations only: the same scales
    as a store written with those configurations alone, and different from all of them."""
    from popsdask.cli import main
    from popsdask.evaluation.crossval import calibrate

    tmp_path = _split_stores(grouped, tmp_path / "split")  # the fixture's store is in tmp_path
    post = fit(tmp_path / "train.zarr")
    post.save(tmp_path / "post.zarr")
    on_train = calibrate(post, tmp_path / "s.zarr", group_by="group", split="train", level=0.9, seed=1)
    assert not list(scratch.glob("popsdask-calibrate-*"))  # its folds are removed
    alone = calibrate(post, tmp_path / "train.zarr", group_by="group", level=0.9, seed=1)
    everything = calibrate(post, tmp_path / "s.zarr", group_by="group", level=0.9, seed=1)
    assert on_train.calibration["kinds"] == alone.calibration["kinds"]
    assert on_train.calibration["kinds"] != everything.calibration["kinds"]
    assert on_train.calibration["method"] == "cross-conformal by group on split=train"
    out = tmp_path / "c.zarr"
    argv = ["calibrate", str(tmp_path / "post.zarr"), str(tmp_path / "s.zarr"), "--group-by", "group", "--split"]
    assert main([*argv, "train", "-o", str(out), "--n-workers", "1", "--quiet"]) == 0 and out.exists()
    assert main([*argv, "nosuch", "-o", str(tmp_path / "c2.zarr")]) == 2 and not (tmp_path / "c2.zarr").exists()


def _split_stores(grouped, tmp_path: Path, train_configurations: dict | None = None) -> Path:
    """``s.zarr``: the fixture's rows with 30 % test configurations; ``train.zarr``: its train
    configurations alone (with ``train_configurations`` as extra per-configuration variables)."""
    _tmp, X, y, config, kind, group, n_atoms = grouped
    split = (np.arange(1200) % 10 >= 7).astype(np.int8)
    conf = {"group": group, "n_atoms": n_atoms, "split": split}
    write_store(tmp_path / "s.zarr", X, y, config=config, kind=kind, chunk_rows=700, configurations=conf)
    keep = np.flatnonzero(split == 0)
    rows = np.flatnonzero(split[config] == 0)
    new_config = np.searchsorted(keep, config[rows])
    conf = {"group": group[keep], "n_atoms": n_atoms[keep], **(train_configurations or {})}
    write_store(tmp_path / "train.zarr", X[rows], y[rows], config=new_config, kind=kind[rows], chunk_rows=700,
                configurations=conf)  # fmt: skip
    return tmp_path


def test_random_folds_are_seeded_and_balanced():
    from popsdask.evaluation.crossval import random_folds

    labels = random_folds(1000, 7, seed=3)
    assert np.array_equal(labels, random_folds(1000, 7, seed=3))
    assert not np.array_equal(labels, random_folds(1000, 7, seed=4))
    counts = np.bincount(labels)
    assert counts.size == 7 and counts.max() - counts.min() <= 1 and counts.sum() == 1000


@pytest.mark.slow
def test_cross_conformal_by_random_folds_on_the_train_split(grouped, tmp_path, scratch, capsys):
    """--folds K --split train is cross-conformal by K random folds of the train configurations:
    the same scales as --group-by on a train-only store holding those fold labels."""
    from popsdask.cli import main
    from popsdask.evaluation.crossval import calibrate, random_folds

    labels = random_folds(840, 3, seed=1)  # the split's 840 train configurations, in order
    tmp_path = _split_stores(grouped, tmp_path / "split", {"fold": labels})
    post = fit(tmp_path / "train.zarr")
    post.save(tmp_path / "post.zarr")
    by_folds = calibrate(post, tmp_path / "s.zarr", folds=3, split="train", level=0.9, seed=1)
    assert not list(scratch.glob("popsdask-calibrate-*"))
    by_labels = calibrate(post, tmp_path / "train.zarr", group_by="fold", level=0.9, seed=1)
    by_group = calibrate(post, tmp_path / "train.zarr", group_by="group", level=0.9, seed=1)
    assert by_folds.calibration["kinds"] == by_labels.calibration["kinds"]
    assert by_folds.calibration["kinds"] != by_group.calibration["kinds"]
    assert by_folds.calibration["method"] == "cross-conformal by 3 random folds of configurations on split=train"
    argv = ["calibrate", str(tmp_path / "post.zarr"), str(tmp_path / "s.zarr"), "--n-workers", "1", "--quiet"]
    out = tmp_path / "c.zarr"
    assert main([*argv, "--folds", "3", "--split", "train", "-o", str(out)]) == 0 and out.exists()
    bad = {"--folds 1": "must be >= 2", "--folds 3 --group-by group": "give one of them", "--folds 1201": "2 to 1200"}
    for flags, needle in bad.items():
        capsys.readouterr()
        try:
            rc = main([*argv, *flags.split(), "-o", str(tmp_path / "c2.zarr")])
        except SystemExit as exc:  # argparse's own errors
            rc = exc.code
        err = capsys.readouterr().err.strip()
        assert rc == 2 and needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "c2.zarr").exists()
    # a store written by plain xarray without a 'config' coordinate has nothing to deal
    import xarray as xr

    _tmp, X, y, *_ = grouped
    xr.Dataset({"X": (("row", "feature"), X), "y": ("row", y)}).to_zarr(tmp_path / "plain.zarr")
    with pytest.raises(InputError, match="no 'config' coordinate, so they cannot be dealt into folds"):
        calibrate(post, tmp_path / "plain.zarr", folds=3)


def test_crossval_cli_bad_group_exits_2_before_any_cluster(grouped, tmp_path, capsys):
    from popsdask.cli import main

    tmp = grouped[0]
    with no_cluster_started("popsdask crossval"):
        assert main(["crossval", str(tmp / "s.zarr"), "--group-by", "phase", "-o", str(tmp_path / "cv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "phase" in err[0] and not (tmp_path / "cv").exists()


def test_metrics_dataset_and_empty_group(grouped, tmp_path):
    from popsdask.engine.predictions import metrics_dataset
    from popsdask.evaluation.crossval import check_groups
    from popsdask.io.store import open_store

    tmp, X, y, config, kind, group, n_atoms = grouped
    post = fit(tmp / "s.zarr")
    ds = predict_ensemble(post, tmp / "s.zarr", tmp_path / "p.zarr", n_samples=50, ev_curve=(10, 50))
    res = prediction_metrics(ds, group_by="group")
    mds = metrics_dataset(res)
    assert mds["envelope_violation"].dims == ("kind", "group")
    assert (
        mds["envelope_violation"].sel(kind="force", group="bulk")
        == res["groups"]["bulk"]["force"]["envelope_violation"]
    )
    assert mds["ev_vs_samples"].sizes["n_samples"] == 2 and mds["coverage_observed"].sizes["k"] == 51
    # a group named by configurations but with no rows
    store = open_store(tmp / "s.zarr")
    rows = np.flatnonzero(group[config] != "defect")
    with pytest.raises(InputError, match="group='defect' has 0 rows"):
        check_groups(store.isel(row=rows), "group")


def test_calibration_split_with_fewer_rows_than_features(tmp_path, scratch):
    from popsdask.evaluation.crossval import calibrate

    X, y, w = misspecified(1500, 6, seed=40)
    config = np.arange(1500)
    split = np.zeros(1500, dtype=np.int8)
    split[:4] = 1  # 4 test rows for 6 features
    write_store(tmp_path / "s.zarr", X, y, config=config, configurations={"split": split})
    post = fit(X, y)
    with pytest.raises(InputError, match="split=test has 4 rows, fewer than the 6 features"):
        calibrate(post, tmp_path / "s.zarr", tmp_path / "c.zarr", split="test")
    assert not (tmp_path / "c.zarr").exists()
    cal = calibrate(post, tmp_path / "s.zarr", split="train", level=0.9)
    assert cal.calibration["method"].startswith("split conformal")
    assert not list(scratch.glob("popsdask-calibrate-*"))  # its prediction is removed


def test_worst_group_scale_skips_groups_too_small_for_the_level():
    from popsdask.calibration.conformal import conformal_quantile, fit_scale

    rng = np.random.default_rng(3)
    err = np.concatenate([rng.normal(size=400), 50 * rng.normal(size=400), [1e6, 1e6, 1e6]])
    spread = np.ones(err.size)
    groups = np.array(["easy"] * 400 + ["hard"] * 400 + ["tiny"] * 3)
    t, gamma = fit_scale(err, spread, 0.9, groups, offsets=(0.0,))
    assert gamma == 0.0 and t == conformal_quantile(np.abs(err[400:800]), 0.9)  # the hard group sets it
    with pytest.raises(InputError, match="too few for a conformal quantile"):
        fit_scale(err[-3:], spread[-3:], 0.9, groups[-3:])


def test_predict_per_atom_on_the_command_line(grouped, tmp_path):
    from popsdask.cli import main
    from popsdask.engine.predictions import open_predictions

    tmp, X, y, config, kind, group, n_atoms = grouped
    post = fit(tmp / "s.zarr")
    post.save(tmp_path / "post.zarr")
    args = ["predict", str(tmp_path / "post.zarr"), str(tmp / "s.zarr"), "-o", str(tmp_path / "p.zarr")]
    assert main(args + ["--per-atom", "--cluster", "nowhere"]) == 2  # a bad cluster: one line, nothing written
    assert not (tmp_path / "p.zarr").exists()
    assert main(args + ["--per-atom", "--n-samples", "50", "--ev-curve", "none", "--n-workers", "1"]) == 0
    ds = open_predictions(tmp_path / "p.zarr")
    scale = np.where(kind == 0, 1.0 / n_atoms[config], 1.0)
    np.testing.assert_allclose(ds["mle"].values, (X @ post.coef_) * scale, rtol=1e-12)
    np.testing.assert_allclose(ds["y"].values, y * scale, rtol=1e-12)
    assert "energy_per_atom" not in json.loads(ds.attrs["metrics"])  # energies already per atom


def test_block_mean_std_matches_numpy_also_when_the_mean_dwarfs_the_spread():
    from popsdask.engine.predictions import _mean_std

    rng = np.random.default_rng(5)
    dev = rng.normal(size=(500, 300))
    dev[:, :10] = 1e6 + 1e-4 * dev[:, :10]  # variance lost to cancellation in Σx² - n·mean²
    mean, std = _mean_std(dev)
    np.testing.assert_allclose(mean, dev.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(std, dev.std(axis=0), rtol=1e-9)


def _with_calibration(post, kinds: dict, level: float = 0.95):
    import dataclasses

    from popsdask.calibration.conformal import Calibration

    return dataclasses.replace(post, calibration=Calibration(level, kinds, "by hand").to_dict())


def test_calibrated_envelope_is_never_narrower_than_the_calibrated_std_band(grouped, tmp_path):
    """The envelope and mle ± z·std' claim the same level: the reported envelope is the wider of
    the two on each side, so a std scale that grew (t = 3) is never undercut by an envelope scale
    that did not (u = 1)."""
    from popsdask.calibration.conformal import Calibration

    rng = np.random.default_rng(7)
    mle, std = rng.normal(size=500), rng.uniform(0.1, 1.0, 500)
    lo, hi = mle - rng.uniform(0.5, 8.0, 500) * std, mle + rng.uniform(0.5, 8.0, 500) * std
    c = {"std_scale": 3.0, "std_offset": 0.0, "envelope_scale": 1.0, "envelope_offset": 0.0, "n": 1}
    for level in (0.9, 0.95):
        s2, lo2, hi2 = Calibration(level, {"force": c}, "by hand").apply("force", mle, std, lo, hi)
        z = norm.ppf((1 + level) / 2)
        np.testing.assert_allclose(s2, 3.0 * std)
        np.testing.assert_allclose(mle - lo2, np.maximum(mle - lo, z * s2))
        np.testing.assert_allclose(hi2 - mle, np.maximum(hi - mle, z * s2))
        assert np.any(hi - mle > z * s2)  # where the envelope is wider it keeps its own shape
    # the same rule where calibrated bands are stored: predict_ensemble
    tmp, X, y, config, kind, *_ = grouped
    post = _with_calibration(fit(tmp / "s.zarr"), {"force": c, "energy_per_atom": c})
    ds = predict_ensemble(post, tmp / "s.zarr", tmp_path / "p.zarr", n_samples=100)
    z = norm.ppf(0.975)
    mle, s2 = ds["mle"].values, ds["std"].values
    assert np.all(mle - ds["min"].values >= z * s2 * (1 - 1e-12))
    assert np.all(ds["max"].values - mle >= z * s2 * (1 - 1e-12))
    assert np.any(ds["max_raw"].values - mle < z * s2)  # the floor was needed


def test_raw_and_calibrated_metrics_are_on_the_same_rows(tmp_path):
    """Symmetry zeros and fixed rows are decided from the raw band: a calibrated offset lifts the
    band of an exact zero off zero, and the zero must not then count as a covered row."""
    from popsdask.engine.predictions import open_predictions

    X, y, w = misspecified(2000, 6, seed=35)
    post = fit(X, y, weight=w)
    Xt, yt = X[:300].copy(), y[:300].copy()
    Xt[:40], yt[:40] = 0.0, 0.0  # symmetry zeros
    Xt[40:60], yt[40:60] = 0.0, 0.05  # fixed rows that miss
    write_store(tmp_path / "t.zarr", Xt, yt, kind=np.ones(300, dtype=int))
    c = {"std_scale": 1.5, "std_offset": 0.01, "envelope_scale": 1.2, "envelope_offset": 0.02, "n": 1}
    ds = predict_ensemble(_with_calibration(post, {"force": c}), tmp_path / "t.zarr", tmp_path / "p.zarr")
    assert np.all(ds["max"].values[:40] > 1e-3)  # the calibrated band of a zero is not zero
    cal, raw = prediction_metrics(ds)["kinds"]["force"], prediction_metrics(ds, raw=True)["kinds"]["force"]
    for m in (cal, raw):
        assert m["n_symmetry_zeros"] == 40 and m["n_fixed"] == 20
    stored = json.loads(open_predictions(tmp_path / "p.zarr").attrs["metrics_raw"])["force"]
    assert stored["n_symmetry_zeros"] == 40
    used = slice(40, None)
    lo, hi, tol = (ds[k].values[used] for k in ("min", "max", "tolerance"))
    assert cal["envelope_violation"] == pytest.approx(np.mean((yt[used] < lo - tol) | (yt[used] > hi + tol)))


def test_a_stated_floor_forgives_violations_within_the_references_precision(grouped, tmp_path):
    from popsdask.calibration.metrics import check_tolerance, parse_tolerance

    y = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    mle, std = y.copy(), np.full(5, 0.1)
    lo, hi = y - 0.2, y + 0.2
    y_obs = y + np.array([0.0, 0.25, -0.3, 0.5, 0.205])  # outside by 0, 0.05, 0.1, 0.3, 0.005
    none = band_metrics(y_obs, mle, std, lo, hi, tol=1e-12, nll_floor=1e-3)
    some = band_metrics(y_obs, mle, std, lo, hi, tol=1e-12, nll_floor=1e-3, floor=0.06)
    assert none["envelope_violation"] == pytest.approx(4 / 5) and none["n_violations_below_floor"] == 0
    assert some["envelope_violation"] == pytest.approx(2 / 5) and some["n_violations_below_floor"] == 2
    assert some["floor"] == 0.06 and some["coverage_2sigma"] == pytest.approx(3 / 5)
    # on a store: energies per atom (a total energy's floor is n_atoms of them), forces as given
    tmp, X, yy, config, kind, group, n_atoms = grouped
    post = fit(tmp / "s.zarr")
    ds = predict_ensemble(post, tmp / "s.zarr", tmp_path / "p.zarr", n_samples=20, ev_curve=(10, 20))
    base = prediction_metrics(ds)["kinds"]
    floors = {"energy": 0.02, "force": 0.05}
    with_floor = prediction_metrics(ds, tolerance=floors)
    assert with_floor["tolerance"] == floors
    m = with_floor["kinds"]
    f = kind == 1
    gap = np.maximum(ds["min"].values - yy, yy - ds["max"].values) - ds["tolerance"].values
    assert m["force"]["n_violations_below_floor"] == np.count_nonzero((gap[f] > 0) & (gap[f] <= 0.05))
    assert m["force"]["envelope_violation"] == pytest.approx(np.mean(gap[f] > 0.05))
    assert base["force"]["envelope_violation"] > m["force"]["envelope_violation"]
    n_forgiven = m["energy"]["n_violations_below_floor"]
    assert n_forgiven > 0 and m["energy_per_atom"]["n_violations_below_floor"] == n_forgiven
    assert "ev_vs_samples" not in m["force"]  # recorded without the floor: its curve is left out
    # the floor given to predict is recorded, used by the stored metrics and by the EV curve
    args = (post, tmp / "s.zarr", tmp_path / "p2.zarr")
    ds2 = predict_ensemble(*args, n_samples=20, ev_curve=(10, 20), tolerance=floors)
    stored = json.loads(ds2.attrs["metrics"])["force"]
    assert stored["envelope_violation"] == pytest.approx(m["force"]["envelope_violation"])
    assert stored["ev_vs_samples"]["envelope_violation"][-1] == pytest.approx(stored["envelope_violation"])
    # refusals: one line each, naming the key
    assert parse_tolerance("energy=1e-3, force=0.01") == {"energy": 1e-3, "force": 0.01}
    bad = {"force": "force", "energy=-1": "must be a finite number >= 0", "forces=1": "unknown row kind 'forces'",
           "force=abc": "not a number", "force=1,force=2": "given twice", "energy=nan": "finite"}  # fmt: skip
    for text, needle in bad.items():
        with pytest.raises(InputError, match=needle) as info:
            parse_tolerance(text)
        assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="unknown row kind"):
        check_tolerance({"virial": 1.0})
    with pytest.raises(InputError, match="must be a finite"):
        predict_ensemble(post, tmp / "s.zarr", tmp_path / "p3.zarr", tolerance={"force": -1})
    assert not (tmp_path / "p3.zarr").exists()


def test_calibration_with_a_stated_floor_scores_the_error_beyond_it(grouped):
    """A floor f scores max(|e| − f, 0): the same scales as references moved f towards the MLE."""
    from popsdask.calibration.conformal import fit_kind
    from popsdask.evaluation.crossval import calibrate

    rng = np.random.default_rng(11)
    n = 3000
    mle, std = rng.normal(size=n), rng.uniform(0.01, 1.0, n)
    y = mle + rng.normal(size=n) * std * rng.uniform(0.5, 3.0, n)
    lo, hi = mle - 2 * std, mle + 2 * std
    groups = np.repeat(["a", "b", "c"], n // 3)
    f = 0.2
    e = y - mle
    moved = mle + np.sign(e) * np.maximum(np.abs(e) - f, 0.0)
    with_floor = fit_kind(y, mle, std, lo, hi, 0.9, groups, floor=f)
    assert with_floor == fit_kind(moved, mle, std, lo, hi, 0.9, groups)
    assert with_floor != fit_kind(y, mle, std, lo, hi, 0.9, groups)
    tmp, *_ = grouped
    post = fit(tmp / "s.zarr")
    with pytest.raises(InputError, match="unknown row kind 'forse'"):
        calibrate(post, tmp / "s.zarr", group_by="group", tolerance={"forse": 0.01})
    out = calibrate(post, tmp / "s.zarr", group_by="group", level=0.9, tolerance={"force": 0.01})
    assert out.calibration["info"]["tolerance"] == {"force": 0.01}


def test_tolerance_on_the_command_line(grouped, tmp_path, capsys):
    from popsdask.cli import main

    tmp, *_ = grouped
    post = fit(tmp / "s.zarr")
    post.save(tmp_path / "post.zarr")
    pred = tmp_path / "p.zarr"
    args = ["predict", str(tmp_path / "post.zarr"), str(tmp / "s.zarr"), "-o", str(pred), "--n-samples", "20"]
    for bad, needle in {"force=-1": "must be a finite number >= 0", "forse=1": "unknown row kind 'forse'"}.items():
        capsys.readouterr()
        try:
            rc = main([*args, "--tolerance", bad])
        except SystemExit as exc:
            rc = exc.code
        err = capsys.readouterr().err.strip()
        assert rc == 2 and needle in err and len(err.splitlines()) == 1, err
        assert not pred.exists()
    assert (
        main([*args, "--ev-curve", "none", "--n-workers", "1", "--quiet", "--tolerance", "energy=0.02,force=0.05"]) == 0
    )
    from popsdask.engine.predictions import open_predictions

    ds = json.loads(open_predictions(pred).attrs["metrics"])
    assert ds["force"]["floor"] == 0.05 and ds["force"]["n_violations_below_floor"] > 0
    assert main(["report", str(pred), "-o", str(tmp_path / "r"), "--tolerance", "force=0.1"]) == 0
    report = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert report["force"]["floor"] == 0.1 and "Stated floor" in (tmp_path / "r" / "report.md").read_text()


def test_support_score_is_the_regularised_leverage_and_is_tabulated_by_decile(grouped, tmp_path):
    from popsdask.calibration.metrics import support_deciles

    tmp, X, y, config, kind, group, n_atoms = grouped
    w = _weights(tmp)
    post = fit(tmp / "s.zarr")
    ds = predict_ensemble(post, tmp / "s.zarr", tmp_path / "p.zarr", n_samples=50)
    gram = (X * w[:, None]).T @ X + (post.lambda_ / post.alpha_) * np.eye(X.shape[1])
    direct = np.einsum("ij,ji->i", X, np.linalg.solve(gram, X.T))
    np.testing.assert_allclose(ds["support"].values, direct, rtol=1e-6)
    assert np.all(w * ds["support"].values <= 1 + 1e-9)  # a training row's leverage
    far = predict_ensemble(post, 10 * X[:50])  # rows outside the training span score higher
    assert np.all(far["support"].values > 99 * ds["support"].values[:50])
    m = prediction_metrics(ds)["kinds"]
    f = kind == 1
    d = m["force"]["support_deciles"]
    assert len(d["n"]) == 10 and sum(d["n"]) == f.sum()
    top = ds["support"].values[f] > np.quantile(ds["support"].values[f], 0.9)
    lo, hi, tol = (ds[k].values[f] for k in ("min", "max", "tolerance"))
    outside = (y[f] < lo - tol) | (y[f] > hi + tol)
    assert d["envelope_violation"][-1] == pytest.approx(outside[top].mean())
    assert d["mean_envelope_width"][-1] == pytest.approx((hi - lo)[top].mean())
    e = m["energy_per_atom"]["support_deciles"]  # per atom: the total's over n_atoms²
    assert e["upper"][-1] == pytest.approx(np.max(ds["support"].values[~f] / n_atoms[config[~f]] ** 2))
    empty = support_deciles(np.zeros(0), np.zeros(0, bool), np.zeros(0), np.zeros(0))
    assert empty["n"] == []
