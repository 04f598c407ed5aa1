"""Tune POPS settings with dask-ml's GridSearchCV, leave-one-group-out, on the W DFT store.

POPS settings do not change ``coef_``, so R² cannot rank them; the search ranks the
uncertainty band instead, with the scorers of :mod:`popsdask.evaluation.scoring` (greater is better):
``neg_ev_gap`` = -|EV - 5 %| (refit on it), ``neg_interval_score`` (in units of each kind's
RMSE), ``neg_nll`` and ``neg_miscalibration_area``, each the mean of the energy and the force
rows (told apart by the atom-count column, :class:`popsdask.evaluation.scoring.KindByColumns`). Every
candidate is fitted with one group of configurations left out (``LeaveOneGroupOut`` on the
store's per-configuration ``group``) and scored on it: the out-of-distribution question.

The store is built by ``examples/tungsten_dft.py``::

    python examples/tungsten_dft.py --outdir DIR
    python examples/tune_pops_settings.py DIR/descriptors.zarr [--max-configurations 1500]
        [--calibration] [--outdir tune-pops-run]
    python examples/tune_pops_settings.py DIR/descriptors.zarr --measure-reuse

1. The store's train split, thinned to ``--max-configurations`` configurations within each
   group (0: all); its test split is kept for a last check of the chosen settings.
2. ``dask_ml.model_selection.GridSearchCV`` on a LocalCluster (2 workers × 1 thread) over
   ``leverage_percentile`` / ``minimum_relative_error``, ``mode_threshold`` and
   ``percentile_clipping``, with ``POPSRegressor(reuse_statistics=True)``: the settings only
   change passes 2–4, so each fold's Gram is computed once per worker.
3. ``--calibration``: a second search over the calibration level of
   :class:`popsdask.engine.regressor.CalibratedPOPSRegressor` (split conformal on a quarter of the
   training configurations, per row kind) with the chosen POPS settings.
4. Prints the score table (mean ± std over the left-out groups), the best settings, and the
   best and default settings' scores on the test split; writes them to ``--outdir``.

``--measure-reuse`` instead times a grid of 6 POPS settings fitted on the whole train split
with and without ``reuse_statistics``, in the same run (cache cleared before each grid).

dask-ml's ``HyperbandSearchCV`` and ``Incremental`` are broken on current dask
(dask/dask-ml#1016) and not used.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tungsten-dft" / "descriptors.zarr"

# the selection rules: popsregression 0.4.0's leverage percentile, and 0.5's residual rule
SELECTION = [{"leverage_percentile": [25.0, 50.0, 75.0], "minimum_relative_error": [None]}] + [
    {"leverage_percentile": [0.0], "minimum_relative_error": [0.01]}
]
MODES = {"mode_threshold": [1e-8, 1e-5], "percentile_clipping": [0.0, 1.0]}
LEVELS = [0.9, 0.95, 0.99]
SCORE_NAMES = ("neg_ev_gap", "neg_interval_score", "neg_nll", "neg_miscalibration_area", "neg_force_ev")
REUSE_GRID = [
    {"leverage_percentile": 50.0},
    {"leverage_percentile": 25.0},
    {"leverage_percentile": 75.0},
    {"leverage_percentile": 0.0, "minimum_relative_error": 0.01},
    {"leverage_percentile": 50.0, "mode_threshold": 1e-5},
    {"leverage_percentile": 50.0, "percentile_clipping": 1.0},
]


def thin(ds, max_configurations: int, seed: int):
    """The rows of at most ~``max_configurations`` configurations of ``ds``, the same share of
    each group (at least 5 of a group, or all it has), seeded."""
    from popsdask.evaluation.crossval import rows_of_configurations

    used = np.unique(np.asarray(ds["config"].values))
    if not max_configurations or used.size <= max_configurations:
        return ds
    group = np.asarray(ds["group"].values).astype(str)
    keep = np.zeros(ds.sizes["configuration"], dtype=bool)
    rng = np.random.default_rng(seed)
    share = max_configurations / used.size
    for g in np.unique(group[used]):
        members = used[group[used] == g]
        n = min(members.size, max(5, int(round(share * members.size))))
        keep[rng.choice(members, n, replace=False)] = True
    return rows_of_configurations(ds, keep, f"{keep.sum()} configurations")


def scorers() -> dict[str, Any]:
    """The four UQ scorers by row kind, and -EV of the forces alone (target 0: the plain EV,
    to show on which side of the target a band is)."""
    from popsdask.evaluation.scoring import KindByColumns, make_uq_scorer, uq_scorers

    kinds = KindByColumns()
    force_ev = make_uq_scorer("envelope_violation", target=0.0, row_kind=kinds, kinds=["force"])
    return {**uq_scorers(row_kind=kinds, relative=True), "neg_force_ev": force_ev}


def score_table(cv: dict[str, Any], names=SCORE_NAMES) -> str:
    """Markdown: one line per candidate, best first."""
    cols = ["force EV" if n == "neg_force_ev" else n.removeprefix("neg_") for n in names]
    lines = ["| rank | " + " | ".join(cv["params"][0]) + " | " + " | ".join(cols) + " |"]
    lines.append("|---:|" + "---:|" * (len(cv["params"][0]) + len(cols)))
    order = np.argsort(cv[f"rank_test_{names[0]}"], kind="stable")
    for i in order:
        cells = [_fmt(v) for v in cv["params"][i].values()]
        cells += [_score_cell(cv, n, i) for n in names]
        lines.append(f"| {cv[f'rank_test_{names[0]}'][i]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _score_cell(cv: dict[str, Any], name: str, i: int) -> str:
    mean, std = cv[f"mean_test_{name}"][i], cv[f"std_test_{name}"][i]
    if name == "neg_force_ev":  # shown as the EV itself
        return f"{-mean:.1%} ± {std:.1%}"
    return f"{mean:.4g} ± {std:.2g}"


def _fmt(v: Any) -> str:
    return "None" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def search(estimator, grid, arrays, client, fit_params) -> Any:
    from dask_ml.model_selection import GridSearchCV
    from sklearn.model_selection import LeaveOneGroupOut

    gs = GridSearchCV(estimator, grid, scoring=scorers(), refit="neg_ev_gap", cv=LeaveOneGroupOut(), scheduler=client)
    gs.fit(arrays["X"], arrays["y"], groups=arrays["groups"], **fit_params)
    return gs


def test_scores(estimators: dict[str, Any], test) -> dict[str, dict[str, Any]]:
    """Per estimator and row kind: EV, ±4σ coverage, mean |err|/σ, widths and the scores."""
    from popsdask.evaluation.scoring import KindByColumns, band_by_kind

    X, y = test["X"], test["y"]
    out = {}
    for name, est in estimators.items():
        kinds = band_by_kind(est, X, y, KindByColumns())
        keys = ("n", "envelope_violation", "coverage_4sigma", "mean_abs_error_over_std", "mean_envelope_width", "nll")
        out[name] = {k: {key: m[key] for key in keys} for k, m in kinds.items()}
        out[name]["scores"] = {n: s(est, X, y) for n, s in scorers().items()}
    return out


def measure_reuse(train_ds, client, repeat: int) -> dict[str, Any]:
    """Seconds of fitting REUSE_GRID on the whole train split, without and with reuse."""
    from popsdask.engine.cache import STATISTICS_CACHE
    from popsdask.engine.regressor import POPSRegressor

    times: dict[str, list[list[float]]] = {"without": [], "with": []}
    for _ in range(repeat):
        for mode in ("without", "with"):
            STATISTICS_CACHE.clear()
            per_fit = []
            for settings in REUSE_GRID:
                t0 = time.perf_counter()
                POPSRegressor(reuse_statistics=mode == "with", **settings).fit(train_ds)
                per_fit.append(time.perf_counter() - t0)
            times[mode].append(per_fit)
            print(f"{mode:>7} reuse: {sum(per_fit):7.1f} s  ({', '.join(f'{t:.1f}' for t in per_fit)})", flush=True)
    total = {m: [sum(r) for r in runs] for m, runs in times.items()}
    return {
        "grid": REUSE_GRID,
        "rows": int(train_ds.sizes["row"]),
        "seconds_per_fit": times,
        "seconds_total": total,
        "ratio_with_over_without": [w / wo for w, wo in zip(total["with"], total["without"], strict=True)],
        "client": str(client),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("store", nargs="?", default=str(DEFAULT), help="descriptor store (examples/tungsten_dft.py)")
    p.add_argument("--max-configurations", type=int, default=1500, help="train configurations searched (0: all)")
    p.add_argument("--calibration", action="store_true", help="also tune the calibration level")
    p.add_argument("--measure-reuse", action="store_true", help="time 6 settings with/without pass-1 reuse")
    p.add_argument("--repeat", type=int, default=1, help="--measure-reuse repetitions")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--outdir", default="tune-pops-run")
    args = p.parse_args()
    if not Path(args.store).exists():
        sys.exit(f"{args.store}: no store; build one with python examples/tungsten_dft.py --outdir DIR")

    from popsdask import KIND_CODES, open_store
    from popsdask.atomistic.split import select_split
    from popsdask.engine.regressor import CalibratedPOPSRegressor, POPSRegressor
    from popsdask.evaluation.scoring import KindByColumns, search_data
    from popsdask.runtime.cluster import connect

    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    ds = open_store(args.store)
    with connect("local", n_workers=args.workers, threads_per_worker=1, memory_limit="3GB", quiet=True) as client:
        if args.measure_reuse:
            result = measure_reuse(select_split(ds, "train"), client, args.repeat)
            (out / "reuse.json").write_text(json.dumps(result, indent=2) + "\n")
            print(json.dumps({k: result[k] for k in ("rows", "seconds_total", "ratio_with_over_without")}, indent=2))
            return
        t0 = time.perf_counter()
        # lazy: the workers read the rows from the store (no large graph from the client)
        train = search_data(thin(select_split(ds, "train"), args.max_configurations, args.seed), lazy=True)
        test = search_data(select_split(ds, "test"), lazy=True)
        # the atom-count column tells energy rows from force rows: check it against the store
        kinds = KindByColumns()(train["X"])
        assert np.array_equal(kinds == "energy", train["kind"] == KIND_CODES["energy"])
        per_config = train["groups"][np.unique(train["config"], return_index=True)[1]]
        train["groups"] = np.unique(train["groups"], return_inverse=True)[1]  # int codes: a small graph
        groups, counts = np.unique(per_config, return_counts=True)
        print(
            f"train: {train['X'].shape[0]} rows, {per_config.size} configurations by group: "
            + ", ".join(f"{g} {c}" for g, c in zip(groups.tolist(), counts.tolist(), strict=True)),
            flush=True,
        )
        fit_params = {"sample_weight": train["sample_weight"]}
        grid = [{**sel, **MODES} for sel in SELECTION]
        gs = search(POPSRegressor(reuse_statistics=True), grid, train, client, fit_params)
        n_cand = len(gs.cv_results_["params"])
        t_search = time.perf_counter() - t0
        table = score_table(gs.cv_results_)
        print(f"\nPOPS settings, {n_cand} candidates × {gs.n_splits_} left-out groups ({t_search:.0f} s):\n")
        print(table + f"\n\nbest: {gs.best_params_}", flush=True)
        report = {"pops": {"best": gs.best_params_, "table": table, "seconds": t_search}}
        estimators = {
            "default": POPSRegressor().fit(train["X"], train["y"], **fit_params),
            "best": gs.best_estimator_,
        }
        if args.calibration:
            t0 = time.perf_counter()
            best = dict(gs.best_params_)
            cal = CalibratedPOPSRegressor(POPSRegressor(reuse_statistics=True, **best), row_kind=KindByColumns())
            gc = search(cal, {"level": LEVELS}, train, client, {**fit_params, "config": train["config"]})
            t_cal = time.perf_counter() - t0
            ctable = score_table(gc.cv_results_)
            print(f"\ncalibration level with {best} ({t_cal:.0f} s):\n\n{ctable}\n\nbest: {gc.best_params_}")
            report["calibration"] = {"best": gc.best_params_, "table": ctable, "seconds": t_cal}
            estimators["best, calibrated"] = gc.best_estimator_
        checks = test_scores(estimators, test)
        report["test_split"] = checks
        print("\ntest split (random 30 % of configurations; fitted on the searched train rows):\n")
        print("| settings | kind | EV | ±4σ | mean \\|err\\|/σ | mean width |")
        print("|---|---|---:|---:|---:|---:|")
        for name, per_kind in checks.items():
            for kind in ("energy", "force"):
                m = per_kind[kind]
                cells = [
                    f"{m['envelope_violation']:.2%}",
                    f"{m['coverage_4sigma']:.2%}",
                    f"{m['mean_abs_error_over_std']:.3g}",
                    f"{m['mean_envelope_width']:.3g}",
                ]
                print(f"| {name} | {kind} | " + " | ".join(cells) + " |")
        print("\n| settings | " + " | ".join(SCORE_NAMES) + " |\n|---|" + "---:|" * len(SCORE_NAMES))
        for name, per_kind in checks.items():
            print(f"| {name} | " + " | ".join(f"{per_kind['scores'][n]:.4g}" for n in SCORE_NAMES) + " |")
    (out / "tune.json").write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
