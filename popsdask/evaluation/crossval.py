"""Leave-one-group-out: fit on every other group, predict the left-out one, tabulate its band.

The honest out-of-distribution check of an uncertainty band: each group (a per-configuration
variable of the store, e.g. the kind of cell) is predicted by a posterior that never saw it.
A random split by configuration gives the in-distribution row of the same table.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..calibration.conformal import Calibration
from ..calibration.metrics import EV_CURVE_SAMPLES
from ..core.validation import InputError
from ..engine.posterior import Posterior
from ..engine.predictions import open_predictions, predict_ensemble, prediction_metrics
from ..io.store import SPLIT_CODES, open_store, select_split

RANDOM_SPLIT = "(random split)"
#: the per-configuration variable that holds :func:`random_folds` labels inside ``calibrate``
RANDOM_FOLD = "random_fold"

__all__ = [
    "RANDOM_SPLIT",
    "check_groups",
    "crossval_table",
    "leave_one_group_out",
    "random_folds",
    "rows_of_configurations",
]


def random_folds(n_configurations: int, k: int, seed: int = 0) -> np.ndarray:
    """Seeded fold labels 0 .. k-1 of ``n_configurations``: a random permutation dealt round
    robin, so fold sizes differ by at most one."""
    labels = np.empty(n_configurations, dtype=np.int64)
    labels[np.random.default_rng(seed).permutation(n_configurations)] = np.arange(n_configurations) % k
    return labels


def rows_of_configurations(ds: xr.Dataset, keep: np.ndarray, label: str) -> xr.Dataset:
    """The rows of the configurations where ``keep`` (per configuration) is true."""
    rows = np.flatnonzero(np.asarray(keep)[np.asarray(ds["config"].values)])
    if rows.size == 0:
        raise InputError(f"{ds.attrs.get('source', '<store>')}: {label} has no rows")
    out = ds.isel(row=rows)
    out.attrs["source"] = f"{ds.attrs.get('source', '<store>')}[{label}]"
    return out


def check_groups(ds: xr.Dataset, group_by: str, min_rows: int = 1) -> tuple[np.ndarray, list[str]]:
    """Per-configuration group labels and the groups that have rows; one-line errors otherwise."""
    where = ds.attrs.get("source", "<store>")
    if group_by not in ds or ds[group_by].dims != ("configuration",):
        per_config = sorted(str(k) for k, v in ds.data_vars.items() if v.dims == ("configuration",))
        raise InputError(
            f"{where}: no per-configuration variable {group_by!r} (available: {', '.join(per_config) or 'none'})"
        )
    if "config" not in ds.coords:
        raise InputError(f"{where}: rows have no 'config' coordinate, so they cannot be grouped")
    labels = np.asarray(ds[group_by].values).astype(str)
    counts = np.bincount(np.asarray(ds["config"].values), minlength=labels.size)
    groups = sorted(set(labels.tolist()))
    for g in groups:
        n = int(counts[labels == g].sum())
        if n < min_rows:
            raise InputError(f"{where}: group {group_by}={g!r} has {n} rows")
    if len(groups) < 2:
        raise InputError(f"{where}: {group_by} has one group ({groups[0]!r}); leave-one-group-out needs two")
    return labels, groups


def leave_one_group_out(
    store: str | os.PathLike | xr.Dataset,
    output: str | os.PathLike,
    *,
    group_by: str = "group",
    random_split: bool = True,
    test_fraction: float = 0.3,
    n_samples: int | None = None,
    ev_curve: tuple[int, ...] | None = EV_CURVE_SAMPLES,
    seed: int = 0,
    fit: Callable[[xr.Dataset], Any] | None = None,
    overwrite: bool = False,
    progress: bool = False,
    **fit_kwargs: Any,
) -> dict[str, Any]:
    """Fit on all groups but one, predict it, for every group (plus a random split).

    Parameters
    ----------
    store : descriptor store (path or Dataset) with a per-configuration ``group_by`` variable
    output : directory for ``<fold>/predictions.zarr``, ``crossval.json`` and ``crossval.md``
    random_split : also fit on a random split by configuration (the store's ``split`` variable
        when present, 0 train / 1 test, else a seeded ``test_fraction`` split)
    n_samples, ev_curve, seed : passed to :func:`predict_ensemble`
    fit : callable ``Dataset -> Posterior`` (default :func:`popsdask.fit` with ``fit_kwargs``)

    Returns
    -------
    dict with ``folds``: {left-out group: {"n_configurations", "metrics" (per kind), ...}} and
    ``table`` (markdown).
    """
    from ..engine.estimator import fit as default_fit

    ds = store if isinstance(store, xr.Dataset) else open_store(store)
    labels, groups = check_groups(ds, group_by)
    out = Path(output)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    fitter = fit or (lambda d: default_fit(d, **fit_kwargs))
    scale = reference_scales(ds)
    folds: dict[str, Any] = {}
    plan = [(g, labels != g, labels == g) for g in groups]
    if random_split:
        plan.append((RANDOM_SPLIT, *_random_split(ds, test_fraction, seed)))
    for i, (name, train, test) in enumerate(plan):
        t0 = time.perf_counter()
        if progress:
            print(f"[popsdask] crossval {i + 1}/{len(plan)}: left out {group_by}={name}", flush=True)
        post = fitter(rows_of_configurations(ds, train, f"{group_by}!={name}"))
        fold_dir = out / _safe(name)
        pred = predict_ensemble(
            post,
            rows_of_configurations(ds, test, f"{group_by}={name}"),
            fold_dir / "predictions.zarr",
            n_samples=n_samples,
            seed=seed,
            ev_curve=ev_curve,
            overwrite=True,
            reference_scale=scale,
        )
        metrics = prediction_metrics(pred)["kinds"]
        folds[name] = {
            "n_train_configurations": int(np.count_nonzero(train)),
            "n_configurations": int(np.count_nonzero(test)),
            "n_selected": int(post.n_selected_),
            "seconds": time.perf_counter() - t0,
            "predictions": str(fold_dir / "predictions.zarr"),
            "metrics": metrics,
        }
    result: dict[str, Any] = {"group_by": group_by, "source": str(ds.attrs.get("source", store)), "folds": folds}
    result["table"] = crossval_table(result)
    _write_text(out / "crossval.json", json.dumps(result, indent=2, default=str) + "\n")
    _write_text(out / "crossval.md", result["table"] + "\n")
    return result


def reference_scales(ds: xr.Dataset) -> dict[int, float]:
    """RMS reference of each row kind over the whole store: the tolerance scale of every fold."""
    y = np.asarray(ds["y"].values, dtype=np.float64)
    kind = np.asarray(ds["kind"].values) if "kind" in ds.coords else np.zeros(y.size, dtype=int)
    return {int(k): float(np.sqrt(np.mean(y[kind == k] ** 2))) for k in np.unique(kind)}


def load_folds(output: str | os.PathLike) -> dict[str, xr.Dataset]:
    """The prediction stores of a finished leave-one-group-out run, by left-out group."""
    info = json.loads((Path(output) / "crossval.json").read_text())
    return {name: open_predictions(fold["predictions"]) for name, fold in info["folds"].items()}


def _random_split(ds: xr.Dataset, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    n_cfg = ds.sizes["configuration"]
    if "split" in ds and ds["split"].dims == ("configuration",):
        split = np.asarray(ds["split"].values)
    else:
        split = np.zeros(n_cfg, dtype=np.int8)
        perm = np.random.default_rng(seed).permutation(n_cfg)
        split[perm[: int(round(test_fraction * n_cfg))]] = SPLIT_CODES["test"]
    return split == SPLIT_CODES["train"], split == SPLIT_CODES["test"]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "_"


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


TABLE_COLUMNS = (
    ("n", "rows", "{:d}"),
    ("mae_mle", "MAE", "{:.4g}"),
    ("envelope_violation", "EV", "{:.2%}"),
    ("box_violation", "box EV", "{:.2%}"),
    ("coverage_4sigma", "±4σ", "{:.2%}"),
    ("mean_abs_error_over_std", "mean \\|err\\|/σ", "{:.3g}"),
    ("mean_std", "mean σ", "{:.3g}"),
    ("mean_envelope_width", "mean width", "{:.3g}"),
    ("mean_box_width", "box width", "{:.3g}"),
    ("miscalibration_area", "miscal. area", "{:.3f}"),
    ("interval_score", "interval score", "{:.3g}"),
    ("nll", "NLL", "{:.3g}"),
    ("n_symmetry_zeros", "sym. zeros", "{:d}"),
)


def crossval_table(result: dict[str, Any], columns=TABLE_COLUMNS) -> str:
    """Markdown: one table per row kind, one line per left-out group (and the random split)."""
    folds = result["folds"]
    kinds = sorted({k for f in folds.values() for k in f["metrics"]}, key=_kind_order)
    lines = []
    for kind in kinds:
        lines += [f"**{kind}**", "", "| left out | configs | " + " | ".join(c[1] for c in columns) + " |"]
        lines.append("|---|---:|" + "---:|" * len(columns))
        for name, fold in folds.items():
            m = fold["metrics"].get(kind)
            if m is None:
                continue
            cells = [_cell(m.get(key), fmt) for key, _, fmt in columns]
            lines.append(f"| {name} | {fold['n_configurations']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _cell(v: Any, fmt: str) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return fmt.format(int(v) if fmt.endswith("d}") else v)


def _kind_order(kind: str) -> tuple[int, str]:
    return ({"energy": 0, "energy_per_atom": 1, "force": 2, "stress": 3}.get(kind, 9), kind)


# ---------------------------------------------------------------------------- recalibration
def _fold_rows(pred: xr.Dataset, floors: dict[str, float] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Raw per-row y, mle, std, min, max, tolerance and stated floor of each kind of a prediction
    store, symmetry zeros out; energies per atom when the store knows each configuration's n_atoms."""
    from ..calibration.metrics import symmetry_zeros
    from ..engine.predictions import band_arrays

    views = band_arrays(pred, raw=True, floors=floors)
    if "energy_per_atom" in views:
        del views["energy"]
    out: dict[str, dict[str, np.ndarray]] = {}
    for kind, v in views.items():
        keep = ~symmetry_zeros(v["y"], v["mle"], v["min"], v["max"], v["tolerance"])
        out[kind] = {
            k: v[k][keep] for k in ("y", "mle", "std", "min", "max", "tolerance", "floor", "support") if k in v
        }
    return out


def calibration_from_folds(
    folds: dict[str, xr.Dataset],
    level: float,
    method: str,
    exclude: str | None = None,
    tolerance: dict[str, float] | None = None,
) -> Calibration:
    """Conformal scales per kind from the pooled rows of prediction stores, each group weighted
    equally (``exclude``: leave one fold out, for a nested evaluation; ``tolerance``: the
    references' stated precision per kind, which the band need not resolve)."""
    from ..calibration.conformal import fit_kind

    pooled: dict[str, dict[str, list]] = {}
    for name, pred in folds.items():
        if name == exclude or name == RANDOM_SPLIT:
            continue
        for kind, v in _fold_rows(pred, tolerance).items():
            entry = pooled.setdefault(kind, {k: [] for k in ("y", "mle", "std", "min", "max", "floor", "group")})
            for k in ("y", "mle", "std", "min", "max", "floor"):
                entry[k].append(v[k])
            entry["group"].append(np.full(v["y"].size, name))
    kinds = {}
    for kind, entry in pooled.items():
        a = {k: np.concatenate(v) for k, v in entry.items()}
        if a["y"].size == 0:
            continue
        kinds[kind] = fit_kind(a["y"], a["mle"], a["std"], a["min"], a["max"], level, a["group"], a["floor"])
    info: dict[str, Any] = {"groups": sorted(n for n in folds if n not in (exclude, RANDOM_SPLIT))}
    if tolerance:
        info["tolerance"] = dict(tolerance)
    return Calibration(level, kinds, method, info)


def calibrated_crossval(
    output: str | os.PathLike, level: float = 0.95, tolerance: dict[str, float] | None = None
) -> dict[str, Any]:
    """Nested evaluation of cross-conformal calibration on a finished leave-one-group-out run:
    each left-out group is calibrated with the scales of the *other* groups' folds only
    (``tolerance``: the references' stated precision, in the calibration and in the metrics).

    Returns
    -------
    dict {group: {kind: {"raw": metrics, "calibrated": metrics, "width_ratio": float}}}
    """
    from ..calibration.metrics import band_metrics, nll_floor

    folds = load_folds(output)
    result: dict[str, Any] = {}
    for name, pred in folds.items():
        if name == RANDOM_SPLIT:
            continue
        cal = calibration_from_folds(folds, level, "cross-conformal by group (nested)", name, tolerance)
        result[name] = {}
        for kind, v in _fold_rows(pred, tolerance).items():
            common: dict[str, Any] = {
                "tol": v["tolerance"],
                "nll_floor": nll_floor(v["y"], v["mle"]),
                "floor": v["floor"],
            }
            common["support"] = v.get("support")
            raw = band_metrics(v["y"], v["mle"], v["std"], v["min"], v["max"], **common)
            std, lo, hi = cal.apply(kind, v["mle"], v["std"], v["min"], v["max"])
            new = band_metrics(v["y"], v["mle"], std, lo, hi, reference_band=(v["min"], v["max"]), **common)
            ratio = new["mean_envelope_width"] / raw["mean_envelope_width"] if raw["mean_envelope_width"] else np.nan
            result[name][kind] = {"raw": raw, "calibrated": new, "width_ratio": float(ratio)}
    return result


def calibrate(
    posterior: Posterior | str | os.PathLike,
    store: str | os.PathLike | xr.Dataset,
    output: str | os.PathLike | None = None,
    *,
    group_by: str | None = None,
    folds: int | None = None,
    split: str | int | None = None,
    level: float = 0.95,
    seed: int = 0,
    folds_dir: str | os.PathLike | None = None,
    replace: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    tolerance: dict[str, float] | None = None,
) -> Posterior:
    """Conformal recalibration of a posterior's std and envelope, stored in the posterior.

    Parameters
    ----------
    posterior : the fitted posterior (or its path)
    store : descriptor store with references
    output : where to save the calibrated posterior, optional
    group_by : cross-conformal by group: refit with the posterior's settings on every group but
        one (leave-one-group-out), and pool the left-out scores with each group weighted equally
    folds : cross-conformal by ``folds`` seeded random folds of configurations (see
        :func:`random_folds`) instead of groups: in distribution, for data like the training set
    split : split conformal on the configurations of the store's ``split`` ("train" 0, "test" 1,
        or another code) predicted by ``posterior`` itself; with ``group_by``: cross-conformal on
        the ``"train"`` (or ``"test"``) configurations only, e.g. those the posterior was fitted on
    level : target coverage (of the std's ±z interval and of the envelope)
    replace : recalibrate a posterior that is already calibrated (otherwise refused)
    tolerance : {"energy": eV/atom, "force": eV/Å, "stress": ...}, optional
        The references' own precision: a score is the error beyond it (see
        :func:`popsdask.calibration.conformal.fit_scale`); recorded in the calibration's info

    Returns
    -------
    Posterior with ``calibration`` set (see :mod:`popsdask.calibration.conformal`)
    """
    import dataclasses
    import tempfile

    from ..calibration.metrics import check_tolerance

    floors = check_tolerance(tolerance)
    post = posterior if isinstance(posterior, Posterior) else Posterior.load(posterior)
    ds = store if isinstance(store, xr.Dataset) else open_store(store)
    where = ds.attrs.get("source", str(store))
    check_calibration_inputs(post, ds, group_by, split, level, replace, folds)
    if output is not None and Path(output).exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it")
    by = group_by
    if folds is not None:  # dealt among the configurations that have rows (in the split)
        has = _configurations_with_rows(ds, split)
        labels = np.zeros(has.size, dtype=np.int64)
        labels[has] = random_folds(int(has.sum()), folds, seed)
        ds, by = ds.assign({RANDOM_FOLD: ("configuration", labels)}), RANDOM_FOLD
    # the folds or the prediction are scratch unless folds_dir asks to keep them
    with tempfile.TemporaryDirectory(prefix="popsdask-calibrate-") as scratch:
        if by is not None:
            if split is not None:
                ds = select_split(ds, split)
            folds_path = Path(folds_dir or scratch)
            leave_one_group_out(
                ds,
                folds_path,
                group_by=by,
                random_split=False,
                ev_curve=None,
                seed=seed,
                overwrite=True,
                progress=progress,
                **refit_settings(post),
            )
            on = f" on split={split}" if split is not None else ""
            what = f"{folds} random folds of configurations" if folds is not None else group_by
            cal = calibration_from_folds(load_folds(folds_path), level, f"cross-conformal by {what}{on}", None, floors)
        else:
            assert split is not None  # check_calibration_inputs refused no group_by, folds or split
            rows = rows_of_configurations(ds, _split_mask(ds, split), f"split={split}")
            pred = predict_ensemble(post, rows, Path(scratch) / "p.zarr", seed=seed)
            cal = calibration_from_folds({str(split): pred}, level, f"split conformal on split={split}", None, floors)
    cal.info.update(store=str(where), seed=seed)
    out = dataclasses.replace(post, calibration=cal.to_dict())
    if output is not None:
        out.save(output, overwrite=overwrite)
    return out


def check_calibration_inputs(
    post: Posterior, ds: xr.Dataset, group_by, split, level, replace, folds: int | None = None
) -> None:
    """One-line errors before any work: the calibration store, the choice and the level."""
    where = ds.attrs.get("source", "<store>")
    if post.calibration and not replace:
        raise InputError(
            f"the posterior is already calibrated ({post.calibration.get('method')}, level "
            f"{post.calibration.get('level')}); pass --replace to recalibrate it"
        )
    if group_by is None and folds is None and split is None:
        raise InputError(
            "give --group-by or --folds (cross-conformal by group or by random folds), --split (split "
            "conformal) or one of the first two with --split (cross-conformal on that split)"
        )
    if group_by is not None and folds is not None:
        raise InputError(f"--group-by {group_by} and --folds {folds}: give one of them")
    if not 0.0 < float(level) < 1.0:
        raise InputError(f"--level {level}: must be in (0, 1)")
    p = int(ds["X"].shape[1]) + int(bool(post.settings.get("fit_intercept", False)))
    if p != post.n_features:
        raise InputError(f"{where}: {ds['X'].shape[1]} features, but the posterior has {post.n_features} parameters")
    if "y" not in ds:
        raise InputError(f"{where}: no references y to calibrate on")
    if folds is not None:
        if "config" not in ds.coords:
            raise InputError(f"{where}: rows have no 'config' coordinate, so they cannot be dealt into folds")
        n = int(np.count_nonzero(_configurations_with_rows(ds, split)))
        if not 2 <= int(folds) <= n:
            raise InputError(f"{where}: --folds {folds}: must be from 2 to {n}, the configurations with rows")
    elif group_by is not None:
        check_groups(ds if split is None else select_split(ds, split), group_by)
    else:
        n = int(np.count_nonzero(_split_mask(ds, split)[np.asarray(ds["config"].values)]))
        if n < post.n_features:
            raise InputError(f"{where}: split={split} has {n} rows, fewer than the {post.n_features} features")


def _configurations_with_rows(ds: xr.Dataset, split: str | int | None) -> np.ndarray:
    """Per configuration: whether it has rows (in the ``"train"`` or ``"test"`` split, when given)."""
    sub = ds if split is None else select_split(ds, split)
    return np.bincount(np.asarray(sub["config"].values), minlength=ds.sizes.get("configuration", 0)) > 0


def _split_mask(ds: xr.Dataset, split: str | int) -> np.ndarray:
    where = ds.attrs.get("source", "<store>")
    if "split" not in ds or ds["split"].dims != ("configuration",):
        raise InputError(f"{where}: no per-configuration 'split' variable")
    try:
        code = SPLIT_CODES[split] if split in SPLIT_CODES else int(split)
    except (TypeError, ValueError) as err:
        raise InputError(f"{where}: split {split!r}: use train, test or an integer code") from err
    return np.asarray(ds["split"].values) == code


def refit_settings(post: Posterior) -> dict[str, Any]:
    """The fit keyword arguments that reproduce ``post``'s settings."""
    import dataclasses
    import inspect

    from ..core.evidence import EvidenceParams
    from ..engine.estimator import fit as default_fit

    allowed = set(inspect.signature(default_fit).parameters) | {f.name for f in dataclasses.fields(EvidenceParams)}
    return {k: v for k, v in post.settings.items() if k in allowed and k not in ("data", "y", "weight")}
