"""Ensemble predictions: Ŷ = X (coef + Δ) for S posterior samples, blockwise, into Zarr.

The prediction Dataset has dims (sample, configuration) when every row is the energy of its
own configuration, else (sample, row) with the store's config/kind/atom/component coordinates.
Per-row summaries (MLE, mean, std, min, max) are reduced inside each row block, so the full
(sample × row) array is never held by one process; deviations from the MLE are computed as
X Δᵀ directly rather than as a difference of two large numbers.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from ..calibration.metrics import (
    TOLERANCE_FACTOR,
    band_metrics,
    check_tolerance,
    kind_tolerance,
    nll_floor,
    roundoff_tolerance,
)
from ..core.validation import InputError
from ..io.store import KIND_CODES, atomic_group, check_safe_group, is_complete, open_store
from .design import Design, design_from
from .execution import compute
from .posterior import DEFAULT_N_SAMPLES, Posterior
from .schema import check_prediction_dataset

PREDICTION_FORMAT = "popsdask.predictions/1"
BLOCK_BYTES = 64 * 2**20
RANGE_ROWS = 4096  # rows × CORRECTION_CHUNK float64 = 64 MiB per block of the complete envelope
CORRECTION_CHUNK = 2048
N_BINS = 60
KIND_NAMES = {v: k for k, v in KIND_CODES.items()}


def _row_coords(data: Any, n: int) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
    """Dimension name, row coordinates and 1-D per-configuration variables of the prediction set.

    Per-configuration variables (group, n_atoms, split, …) travel with the predictions so that
    metrics can be grouped by any of them; on a ``configuration`` dimension they are taken at
    each row's ``config``.
    """
    coords: dict[str, Any] = {}
    per_config: dict[str, np.ndarray] = {}
    if isinstance(data, xr.Dataset):
        for name in ("config", "kind", "atom", "component"):
            if name in data.coords:
                coords[name] = data[name].values
        for key, var in data.data_vars.items():
            if var.dims == ("configuration",) and var.dtype.kind in "biufU" and key not in coords:
                per_config[str(key)] = var.values
    dim = "row"
    if "config" in coords and "kind" in coords:
        cfg, kind = coords["config"], coords["kind"]
        if np.all(kind == KIND_CODES["energy"]) and np.unique(cfg).size == n:
            dim = "configuration"
            per_config = {k: v[cfg] for k, v in per_config.items() if v.shape[0] > int(cfg.max(initial=-1))}
    return dim, coords, per_config


def predict_ensemble(
    posterior: Posterior | str | os.PathLike,
    data: Any,
    output: str | os.PathLike | None = None,
    *,
    n_samples: int | None = None,
    method: str = "uniform",
    seed: int | None = 0,
    dtype: Any = np.float64,
    overwrite: bool = False,
    progress: bool = False,
    ev_curve: tuple[int, ...] | None = None,
    reference_scale: dict[int, float] | None = None,
    tolerance: dict[str, float] | None = None,
) -> xr.Dataset:
    """Predict every row of ``data`` with the posterior ensemble.

    Parameters
    ----------
    posterior : Posterior or path of a saved posterior
    data : descriptor store path, xarray Dataset, numpy or dask array (row, feature)
    output : path, optional
        Zarr group to write (atomically; metrics and error histograms are added when the data
        has references ``y``). Without it the lazy Dataset is returned unwritten.
    n_samples : int, optional
        Posterior members to draw. Hypercube: default 500. Ensemble: by default ``mean``,
        ``std``, ``min`` and ``max`` are over *all* stored corrections (exact, computed
        blockwise over rows × correction chunks) and ``prediction`` holds 500 of them; with
        ``n_samples`` every summary is over that many drawn corrections.
    method, seed : posterior sampling (see :meth:`Posterior.sample`)
    dtype : dtype of the stored ``prediction`` array (float32 halves its size)
    ev_curve : sample counts, optional
        Also record per row ``bracket_samples``, the smallest of these sample counts whose
        envelope (the first S draws) contains the reference (needs ``y``): envelope violation
        as a function of S, e.g. :data:`popsdask.calibration.metrics.EV_CURVE_SAMPLES`.
    reference_scale : {kind code: RMS reference}, optional
        The scale of each row kind for the tolerance (default: this set's RMS per kind). Pass
        the whole store's when ``data`` is a subset, e.g. one group whose forces all vanish.
    tolerance : {"energy": eV/atom, "force": eV/Å, "stress": ...}, optional
        The references' own precision (see :mod:`popsdask.calibration.metrics`): recorded in
        attrs ``tolerance_floor`` and used by the stored metrics and the EV-against-S curve.

    Returns
    -------
    xarray.Dataset with ``prediction`` (sample, row|configuration), ``mle``, ``mean``, ``std``,
    ``min``, ``max``, the exact envelope of the whole posterior ``box_min``/``box_max``,
    ``theta`` (sample, feature) and ``y`` when present; when written, the Dataset re-opened
    from ``output``. attrs ``n_samples`` (members in the summaries), ``n_prediction_samples``
    (members in ``prediction``) and ``bounds`` (what ``min``/``max`` are).
    """
    floors = check_tolerance(tolerance)
    post = posterior if isinstance(posterior, Posterior) else Posterior.load(posterior)
    data, design = _design(post, data, n_samples)
    n, p = design.n_rows, design.n_features
    support = post.kind_.support(post)  # a finite set of corrections: exact summaries over all of it
    complete = support is not None and n_samples is None
    delta = post.perturbations(DEFAULT_N_SAMPLES if n_samples is None else n_samples, method, seed)  # (S, P)
    s = delta.shape[0]
    rows = max(256, BLOCK_BYTES // (8 * max(s, p)))
    X = design.X.rechunk((rows, p)).astype(np.float64)
    dim, coords, per_config = _row_coords(data, n)

    mle = X @ post.coef_
    distance = support_score(X, post)
    dev = (X @ delta.T).T  # (S, rows), one chunk along sample
    (mean, std, lo, hi), box, roundoff, n_summary = _summaries(X, dev, post, support, complete)
    raw: dict[str, Any] = {}
    atoms = _row_atoms(data, dim, coords, per_config)
    floor = row_floor(floors, coords.get("kind"), atoms, n, design.source)
    if post.calibration:
        raw = {"std_raw": ((dim,), std), "min_raw": ((dim,), lo), "max_raw": ((dim,), hi)}
        std, lo, hi = _calibrated(post, coords.get("kind"), atoms, mle, std, lo, hi)
    data_vars: dict[str, Any] = {
        "prediction": (("sample", dim), (dev + mle[None, :]).astype(dtype)),
        "mle": ((dim,), mle),
        "mean": ((dim,), mean),
        "std": ((dim,), std),
        "min": ((dim,), lo),
        "max": ((dim,), hi),
        **raw,
        "box_min": ((dim,), box[0]),
        "box_max": ((dim,), box[1]),
        "support": ((dim,), distance),
        "theta": (("sample", "feature"), post.coef_[None, :] + delta),
    }
    if design.y is not None:
        y = design.y.rechunk((X.chunks[0],)).astype(np.float64)
        data_vars["y"] = ((dim,), y)
        tol = _row_tolerance(y, roundoff, coords.get("kind"), reference_scale)
        data_vars["tolerance"] = ((dim,), tol)
        if ev_curve:
            allowed = da.maximum(tol, da.from_array(floor, chunks=tol.chunks))
            data_vars["bracket_samples"] = ((dim,), _bracket(X, y, allowed, post, ev_curve, method, seed))
    per_dim = dim if dim == "configuration" else "configuration"
    data_vars.update({name: ((per_dim,), values) for name, values in per_config.items() if name not in data_vars})
    ds = xr.Dataset(data_vars, coords={k: ((dim,), v) for k, v in coords.items()})
    for name, text in DESCRIPTIONS.items():
        ds[name].attrs["description"] = text
    ds.attrs.update(_run_attrs(post, design.source, s, n_summary, complete, method, seed))
    if ev_curve:
        ds.attrs["ev_curve_samples"] = [int(v) for v in _curve_sizes(post, ev_curve)]
    if floors:
        ds.attrs["tolerance_floor"] = json.dumps(floors)
    if isinstance(data, xr.Dataset):
        for key in ("units", "energy_rows"):
            if key in data.attrs:
                ds.attrs[key] = data.attrs[key]
    if output is None:
        return ds
    return _write(ds, output, overwrite, progress)


SUPPORT_DESCRIPTION = (
    "distance of the row from the training rows: the regularised leverage alpha * x^T Sigma x = "
    "x^T (X^T W X + lambda/alpha I)^-1 x; a training row of weight w has w * support <= 1"
)


def _design(post: Posterior, data: Any, n_samples: int | None) -> tuple[Any, Design]:
    """``data`` (a store path opened) and its design, with the intercept column when the
    posterior has one; :class:`InputError` for an ``n_samples`` that is not a positive integer or
    rows whose feature count is not the posterior's."""
    if n_samples is not None and (isinstance(n_samples, bool) or int(n_samples) < 1):
        raise InputError(f"n_samples={n_samples!r}: must be a positive integer")
    fit_intercept = bool(post.settings.get("fit_intercept", False))
    if isinstance(data, (str, os.PathLike)):
        data = open_store(data, require_y=False)
    design = design_from(data, require_y=False, fit_intercept=fit_intercept)
    if design.n_features != post.n_features:
        raise InputError(
            f"{design.source}: {design.n_features} features, but the posterior has {post.n_features} parameters"
        )
    return data, design


#: descriptions of the prediction variables whose name does not say it all
DESCRIPTIONS = {
    "box_min": "exact lower bound of the prediction over the whole posterior",
    "box_max": "exact upper bound of the prediction over the whole posterior",
    "support": SUPPORT_DESCRIPTION,
}


def _summaries(
    X: da.Array, dev: da.Array, post: Posterior, support: da.Array | None, complete: bool
) -> tuple[tuple[da.Array, ...], tuple[da.Array, da.Array], da.Array, int]:
    """Per row (mean, std, min, max), the exact envelope of the whole posterior, the round-off
    bound of the MLE product, and how many members the summaries are over: every correction of
    the kind's ``support`` when ``complete`` (exact, blockwise), else the S members of ``dev``
    (S, rows)."""
    if complete:
        assert support is not None  # complete: a finite support
        mean, std, lo, hi = _complete_ensemble(X, post)
        return (mean, std, lo, hi), (lo, hi), _roundoff(X, post.coef_), int(support.shape[0])
    summary = _sampled_summaries(X, dev, post)
    box = _box_bounds(X, post) if support is not None else (summary[:, 5], summary[:, 6])
    return tuple(summary[:, k] for k in range(1, 5)), box, summary[:, 7], int(dev.shape[0])


def _run_attrs(
    post: Posterior, source: str, s: int, n_summary: int, complete: bool, method: str, seed: int | None
) -> dict[str, Any]:
    """What a prediction store records of how it was made: members, sampling, posterior, source."""
    return {
        "format": PREDICTION_FORMAT,
        "n_samples": int(n_summary),
        "n_prediction_samples": int(s),
        "summaries": "all corrections" if complete else f"{s} drawn members",
        "bounds": ("calibrated " if post.calibration else "") + ("complete ensemble" if complete else "sampled"),
        "method": method,
        "seed": -1 if seed is None else int(seed),
        "posterior": post.kind,
        "source": source,
    }


def support_score(X: da.Array, post: Posterior) -> da.Array:
    """(rows,) the regularised leverage α·xᵀΣx of each row: its Mahalanobis distance² from the
    training rows in the metric of their weighted Gram XᵀWX (+ λ/α·I), blockwise over row chunks
    from the posterior's epistemic covariance Σ and noise precision α. A training row of weight
    w has w·score ≤ 1 (its leverage); a new row with a score far above the training rows' is
    outside their span. It measures novelty of the *design row*, which for a force row is a
    descriptor gradient, so it does not say whether the band is wide enough there.
    """
    return post.alpha_ * ((X @ post.sigma_) * X).sum(axis=1)


def row_floor(
    floors: dict[str, float], kind: np.ndarray | None, n_atoms: np.ndarray | None, n: int, where: str
) -> np.ndarray:
    """(n,) the stated precision of each row: ``floors["energy"]`` per atom times the row's
    atoms for energies (1 where energies are already per atom), ``floors["force"]`` and
    ``floors["stress"]`` as given; 0 for kinds without one."""
    out = np.zeros(n)
    if not floors:
        return out
    if kind is None:
        raise InputError(f"{where}: the rows have no kinds, so a tolerance per kind cannot be applied")
    kind = np.asarray(kind)
    for name, value in floors.items():
        rows = kind == KIND_CODES[name]
        if name == "energy" and rows.any():
            if n_atoms is None:
                raise InputError(f"{where}: the energy tolerance is per atom, but the store has no n_atoms")
            out[rows] = value * np.asarray(n_atoms, dtype=np.float64)[rows]
        else:
            out[rows] = value
    return out


def _row_atoms(data: Any, dim: str, coords: dict[str, Any], per_config: dict[str, np.ndarray]) -> np.ndarray | None:
    """Atoms of each row's configuration (1 where energy rows are already per atom)."""
    if isinstance(data, xr.Dataset) and str(data.attrs.get("energy_rows", "")).startswith("per atom"):
        return np.ones(len(coords.get("kind", [])))
    if "n_atoms" not in per_config or "config" not in coords:
        return None
    # on a configuration dimension the variables are already taken at each row's config
    return per_config["n_atoms"] if dim == "configuration" else per_config["n_atoms"][coords["config"]]


def calibration_factors(
    calibration: dict[str, Any], kind: np.ndarray | None, n_atoms: np.ndarray | None, n: int
) -> dict[str, np.ndarray]:
    """(n,) per-row scales and offsets (:data:`~popsdask.calibration.conformal.SCALE_KEYS`) of a
    posterior's ``calibration`` for rows of kind codes ``kind`` (None: all of one kind) whose
    configurations have ``n_atoms`` atoms; identity factors for kinds it did not calibrate."""
    from ..calibration.conformal import SCALE_KEYS, Calibration

    cal = Calibration.from_dict(calibration)
    codes = np.zeros(n, dtype=int) if kind is None else np.asarray(kind)
    names = {int(k): (KIND_NAMES.get(int(k), str(k)) if kind is not None else "all") for k in np.unique(codes)}
    factors = {key: np.ones(n) if key.endswith("scale") else np.zeros(n) for key in SCALE_KEYS}
    for code, name in names.items():
        rows = codes == code
        per_atom = name == "energy" and "energy_per_atom" in cal.kinds
        c = cal.kinds.get("energy_per_atom" if per_atom else name)
        if c is None:
            continue
        if per_atom and n_atoms is None:
            raise InputError("the calibration is per atom for energies, but the store has no n_atoms")
        # scales are unit-free; the offsets are per atom, so a total energy gets n_atoms of them
        atoms = np.asarray(n_atoms, dtype=np.float64)[rows] if per_atom else 1.0
        for key in SCALE_KEYS:
            factors[key][rows] = c[key] * (atoms if key.endswith("offset") else 1.0)
    return factors


def _calibrated(post: Posterior, kind: np.ndarray | None, n_atoms: np.ndarray | None, mle, std, lo, hi):
    """The posterior's per-kind conformal scales applied to the raw std and envelope."""
    from ..calibration.conformal import Calibration, apply_scales

    assert post.calibration is not None  # called for calibrated posteriors only
    factors = calibration_factors(post.calibration, kind, n_atoms, mle.shape[0])
    scales = {k: da.from_array(v, chunks=mle.chunks) for k, v in factors.items()}
    return apply_scales(scales, mle, std, lo, hi, Calibration.from_dict(post.calibration).level)


def _box_bounds(X: da.Array, post: Posterior) -> tuple[da.Array, da.Array]:
    """Exact min and max of x·θ over a posterior's finite support: over every stored
    correction (a box's closed form is in :func:`_summary_block`)."""
    return correction_range(X, post, X @ post.coef_)


def _correction_rows(post: Posterior) -> da.Array:
    corr = post.kind_.support(post)
    assert corr is not None  # called for kinds with a finite support only
    return corr.rechunk((max(1, min(int(corr.shape[0]), CORRECTION_CHUNK)), corr.shape[1])).astype(np.float64)


def correction_range(X: da.Array, post: Posterior, mle: da.Array) -> tuple[da.Array, da.Array]:
    """Min and max of x·δθ over all corrections, by blocks of (rows × correction chunk): the
    (rows × corrections) product exists only one block at a time."""
    Xr = X.rechunk((min(X.chunks[0][0], RANGE_ROWS), X.shape[1]))
    m = mle.rechunk((Xr.chunks[0],))
    prod = Xr @ _correction_rows(post).T
    return (m + prod.min(axis=1)).rechunk((X.chunks[0],)), (m + prod.max(axis=1)).rechunk((X.chunks[0],))


def _complete_ensemble(X: da.Array, post: Posterior) -> tuple[da.Array, ...]:
    """Mean, std, min and max over all stored corrections.

    Mean and std are exact from the corrections' mean μ and covariance C (x·μ and √(xᵀCx),
    the population std, as ``dev.std``); min and max need the blockwise product.
    """
    corr = _correction_rows(post)
    (mu,) = compute(corr.mean(axis=0))
    centred = corr - mu[None, :]
    (cov,) = compute((centred.T @ centred) / corr.shape[0])
    mle = X @ post.coef_
    var = ((X @ cov) * X).sum(axis=1)
    lo, hi = correction_range(X, post, mle)
    return mle + X @ mu, da.sqrt(da.maximum(var, 0.0)), lo, hi


def _curve_sizes(post: Posterior, sizes: tuple[int, ...]) -> list[int]:
    kept = sorted({int(v) for v in sizes if int(v) > 0})
    support = post.kind_.support(post)
    if support is not None:
        kept = [v for v in kept if v <= int(support.shape[0])]
    return kept


def _row_tolerance(
    y: da.Array, roundoff: da.Array, kind: np.ndarray | None, scale: dict[int, float] | None
) -> da.Array:
    """Per row: max(1e-8 × the kind's RMS reference, the worst-case round-off P·ε·Σⱼ|xⱼθⱼ| of
    the MLE product), so that forces which are zero by symmetry are recognised even in a
    subset whose references are all zero (see :mod:`popsdask.calibration.metrics`)."""
    (yv,) = compute(y)
    kind = np.zeros(yv.shape[0], dtype=int) if kind is None else np.asarray(kind)
    per_kind = np.zeros_like(yv)
    for k in np.unique(kind):
        rows = kind == k
        per_kind[rows] = kind_tolerance(yv[rows]) if scale is None else TOLERANCE_FACTOR * scale[int(k)]
    return da.maximum(da.from_array(per_kind, chunks=roundoff.chunks), roundoff)


def _roundoff(X: da.Array, coef: np.ndarray) -> da.Array:
    return da.map_blocks(roundoff_tolerance, X, coef=coef, drop_axis=1, dtype=np.float64)


N_SUMMARIES = 8  # mle, mean, std, min, max, box min, box max, round-off


def _sampled_summaries(X: da.Array, dev: da.Array, post: Posterior) -> da.Array:
    """(rows, 8) per-row summaries of drawn members, one task per row block: the block of
    deviations that is written as ``prediction`` is reduced where it is, in one pass."""
    basis, lower, upper = post.kind_.box(post) or (None, None, None)
    return da.blockwise(
        _summary_block,
        "ik",
        dev,
        "si",
        X,
        "ij",
        new_axes={"k": N_SUMMARIES},
        concatenate=True,
        dtype=np.float64,
        coef=post.coef_,
        basis=basis,
        lower=lower,
        upper=upper,
    )


def _mean_std(devb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std over axis 0 from Σx and Σx² (no (S × rows) temporaries, a third
    of np.std's time); rows where the mean dwarfs the spread, whose variance the difference
    would lose to cancellation, fall back to np.std."""
    n = devb.shape[0]
    mean = devb.sum(axis=0) / n
    var = np.einsum("ij,ij->j", devb, devb) / n - mean * mean
    std = np.sqrt(np.maximum(var, 0.0))
    lossy = mean * mean > 1e6 * np.abs(var)
    if lossy.any():
        std[lossy] = devb[:, lossy].std(axis=0)
    return mean, std


def box_envelope(
    X: np.ndarray, mle: np.ndarray, basis: np.ndarray, lower: np.ndarray, upper: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact (min, max) of x·θ over a box posterior θ = coef + U b, lo ≤ b ≤ hi, for rows ``X``
    (n, P) whose MLE is ``mle`` (n,): x·coef + Σₖ min/max(aₖ loₖ, aₖ hiₖ), a = Uᵀx, as centre ±
    radius, min/max(aₖ loₖ, aₖ hiₖ) = aₖ midₖ ∓ |aₖ| halfₖ (one product with U, no (n × K)
    temporaries)."""
    a = X @ basis
    centre = mle + a @ ((lower + upper) / 2.0)
    radius = np.abs(a, out=a) @ ((upper - lower) / 2.0)
    return centre - radius, centre + radius


def _summary_block(devb, Xb, *, coef, basis, lower, upper) -> np.ndarray:
    out = np.empty((Xb.shape[0], N_SUMMARIES))
    mle = Xb @ coef
    out[:, 0] = mle
    out[:, 1], out[:, 2] = _mean_std(devb)
    out[:, 1] += mle
    out[:, 3] = mle + devb.min(axis=0)
    out[:, 4] = mle + devb.max(axis=0)
    if basis is not None:
        out[:, 5], out[:, 6] = box_envelope(Xb, mle, basis, lower, upper)
    else:
        out[:, 5:7] = np.nan
    out[:, 7] = roundoff_tolerance(Xb, coef)
    return out


def _bracket(X: da.Array, y: da.Array, tol: da.Array, post: Posterior, sizes, method, seed) -> da.Array:
    """Per row: the smallest sample count S (of ``sizes``) whose first S draws bracket y ± tol."""
    sizes = _curve_sizes(post, sizes)
    if not sizes:
        raise InputError("ev_curve: no sample count between 1 and the number of stored corrections")
    draws = post.kind_.prefix_draws(post, sizes[-1], method, seed)
    rows = max(64, BLOCK_BYTES // (8 * draws.shape[0]))
    Xr = X.rechunk((rows, X.shape[1]))
    out = da.blockwise(
        _bracket_block,
        "i",
        Xr,
        "ij",
        y.rechunk((Xr.chunks[0],)),
        "i",
        tol.rechunk((Xr.chunks[0],)),
        "i",
        concatenate=True,
        dtype=np.float64,
        coef=post.coef_,
        draws=draws,
        sizes=tuple(sizes),
    )
    return out.rechunk((X.chunks[0],))


def _bracket_block(Xb, yb, tolb, *, coef, draws, sizes) -> np.ndarray:
    r = yb - Xb @ coef
    lo = np.full(r.shape, np.inf)
    hi = np.full(r.shape, -np.inf)
    out = np.full(r.shape, np.inf)
    open_rows = np.arange(r.shape[0])  # not bracketed yet: later draws are needed for these only
    start = 0
    for size in sizes:
        dev = Xb[open_rows] @ draws[start:size].T
        lo[open_rows] = np.minimum(lo[open_rows], dev.min(axis=1, initial=np.inf))
        hi[open_rows] = np.maximum(hi[open_rows], dev.max(axis=1, initial=-np.inf))
        start = size
        inside = (r[open_rows] >= lo[open_rows] - tolb[open_rows]) & (r[open_rows] <= hi[open_rows] + tolb[open_rows])
        out[open_rows[inside]] = size
        open_rows = open_rows[~inside]
        if open_rows.size == 0:
            break
    return out


def _write(ds: xr.Dataset, output: str | os.PathLike, overwrite: bool, progress: bool) -> xr.Dataset:
    final = Path(output).absolute()
    with atomic_group(final, overwrite=overwrite) as staging, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.attrs["popsdask_complete"] = False
        write = ds.to_zarr(staging, mode="w", zarr_format=3, consolidated=False, compute=False)
        compute(write, label="ensemble prediction → Zarr", progress=progress)
        written = xr.open_zarr(staging, consolidated=False, zarr_format=3)
        if "y" in written:
            extra, metrics = summarise(written)
            extra.to_zarr(staging, mode="a", zarr_format=3, consolidated=False)
            import zarr

            # appending a Dataset replaces the group's attributes: restore them
            attrs = {**ds.attrs, "metrics": json.dumps(metrics)}
            if "std_raw" in written:
                attrs["metrics_raw"] = json.dumps(prediction_metrics(written, raw=True)["kinds"])
            zarr.open_group(str(staging), mode="r+").attrs.update(attrs)
    return open_predictions(final)


def open_predictions(path: str | os.PathLike) -> xr.Dataset:
    root = Path(path)
    if root.exists():
        check_safe_group(root)  # JSON metadata only: refuse pickle codecs / object types first
    if not is_complete(root):
        raise InputError(f"{root}: prediction store missing or not marked complete")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = xr.open_zarr(root, consolidated=False, zarr_format=3)
    check_prediction_dataset(ds, str(root))
    return ds


def per_atom_energy_rows(ds: xr.Dataset) -> xr.Dataset:
    """The store's rows with energy rows (X and y) divided by their configuration's n_atoms.

    θ·row stays the prediction, now in energy per atom; force and stress rows, weights and the
    per-configuration variables are unchanged. attrs ``energy_rows`` records the division.
    """
    where = ds.attrs.get("source", "<store>")
    if "n_atoms" not in ds or "config" not in ds.coords or "kind" not in ds.coords:
        raise InputError(f"{where}: energies per atom need per-configuration n_atoms and row config/kind")
    n_atoms = np.asarray(ds["n_atoms"].values, dtype=float)
    config = np.asarray(ds["config"].values)
    factor = np.where(np.asarray(ds["kind"].values) == KIND_CODES["energy"], 1.0 / n_atoms[config], 1.0)
    f = xr.DataArray(factor, dims=("row",))
    out = ds.assign(X=ds["X"] * f, y=ds["y"] * f) if "y" in ds else ds.assign(X=ds["X"] * f)
    out.attrs.update(ds.attrs)
    out.attrs["energy_rows"] = "per atom (divided by n_atoms)"
    return out


def row_kinds(ds: xr.Dataset) -> dict[str, np.ndarray]:
    """Boolean masks of the prediction elements of each row kind (``all`` without kinds)."""
    dim = ds["mle"].dims[0]
    n = ds.sizes[dim]
    if "kind" not in ds.coords:
        return {"all": np.ones(n, dtype=bool)}
    kind = ds["kind"].values
    return {KIND_NAMES.get(int(k), str(k)): kind == k for k in np.unique(kind)}


def configuration_variables(ds: xr.Dataset) -> list[str]:
    """Per-configuration variables of a prediction store (usable as ``group_by``)."""
    return sorted(
        str(k)
        for k, v in ds.data_vars.items()
        if v.dims == ("configuration",) and k not in SUMMARY_VARS and not str(k).endswith("_raw")
    )


def config_values(ds: xr.Dataset, name: str) -> np.ndarray:
    """A per-configuration variable at every prediction element (row or configuration)."""
    dim = ds["mle"].dims[0]
    if name not in ds or name in SUMMARY_VARS or ds[name].ndim != 1:
        where = ds.attrs.get("source", "<predictions>")
        available = ", ".join(configuration_variables(ds)) or "none"
        raise InputError(f"{where}: no per-configuration variable {name!r} (available: {available})")
    values = ds[name].values
    if ds[name].dims[0] == dim:
        return values
    if "config" not in ds.coords:
        raise InputError(
            f"{ds.attrs.get('source', '<predictions>')}: rows have no 'config' coordinate to look up {name!r}"
        )
    return values[ds["config"].values]


SUMMARY_VARS = (
    "y",
    "mle",
    "mean",
    "std",
    "min",
    "max",
    "box_min",
    "box_max",
    "bracket_samples",
    "tolerance",
    "support",
)


def _per_atom(ds: xr.Dataset) -> bool:
    return "n_atoms" in ds and not str(ds.attrs.get("energy_rows", "")).startswith("per atom")


def load_row_variables(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with every variable and coordinate that has no ``sample`` dimension in memory,
    read in one computation; the members' ``prediction`` (sample, row) and ``theta`` stay lazy.

    The metrics, histograms and figures read a dozen per-row arrays (N values each): one
    ``.values`` apiece was a graph and a round of Zarr reads apiece, more than the reading.
    """
    names = [k for k, v in ds.variables.items() if "sample" not in v.dims and v.chunks is not None]
    values = compute(*(ds.variables[k].data for k in names))
    out = ds.copy()
    for k, value in zip(names, values, strict=True):
        out.variables[k].data = value
    return out


def band_arrays(
    ds: xr.Dataset, raw: bool = False, floors: dict[str, float] | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """Per kind name: the per-row summaries of that kind (energies also per atom); ``raw``: the
    uncalibrated std and envelope of a calibrated prediction. Every view also holds
    ``reference_min``/``reference_max``, the raw envelope that decides symmetry zeros and fixed
    rows, and ``floor``, each row's stated precision (``floors``, see :func:`row_floor`)."""
    row = {k: ds[f"{k}_raw" if raw and f"{k}_raw" in ds else k].values for k in SUMMARY_VARS if k in ds}
    for k in ("min", "max"):
        row[f"reference_{k}"] = ds[f"{k}_raw" if f"{k}_raw" in ds else k].values
    dim = ds["mle"].dims[0]
    kind = ds["kind"].values if "kind" in ds.coords else None
    atoms = None
    if _per_atom(ds):
        atoms = config_values(ds, "n_atoms").astype(np.float64)
    elif str(ds.attrs.get("energy_rows", "")).startswith("per atom"):
        atoms = np.ones(ds.sizes[dim])
    row["floor"] = row_floor(floors or {}, kind, atoms, ds.sizes[dim], str(ds.attrs.get("source", "<predictions>")))
    views = {}
    for name, mask in row_kinds(ds).items():
        views[name] = {k: v[mask] for k, v in row.items()} | {"mask": mask}
        if name == "energy" and _per_atom(ds):
            n_atoms = config_values(ds, "n_atoms").astype(np.float64)[mask]
            # the support is quadratic in the row: a per-atom row's is the total's over n_atoms²
            scale = {"bracket_samples": 1.0, "support": n_atoms**2}
            scaled = {k: v / scale.get(k, n_atoms) for k, v in views[name].items() if k != "mask"}
            views["energy_per_atom"] = scaled | {"mask": mask}
    return views


def _metrics_of(view: dict[str, np.ndarray], sel: Any, floor: float, sizes: tuple) -> dict[str, Any]:
    tol = view["tolerance"][sel] if "tolerance" in view else kind_tolerance(view["y"][sel])
    box = (view["box_min"][sel], view["box_max"][sel]) if "box_min" in view else None
    bracket = view["bracket_samples"][sel] if "bracket_samples" in view and sizes else None
    return band_metrics(
        *(view[k][sel] for k in ("y", "mle", "std", "min", "max")),
        tol=tol,
        nll_floor=floor,
        box=box,
        bracket=bracket,
        sizes=sizes,
        reference_band=(view["reference_min"][sel], view["reference_max"][sel]),
        floor=view["floor"][sel],
        support=view["support"][sel] if "support" in view else None,
    )


def prediction_metrics(
    ds: xr.Dataset, group_by: str | None = None, raw: bool = False, tolerance: dict[str, float] | None = None
) -> dict[str, Any]:
    """Every calibration metric of a prediction store per row kind, and per group.

    Parameters
    ----------
    ds : prediction Dataset with references ``y``
    group_by : a per-configuration variable (e.g. ``"group"``), optional
    raw : for a calibrated prediction, the metrics of the uncalibrated band
    tolerance : {"energy": eV/atom, "force": eV/Å, "stress": ...}, optional
        The references' own precision: a violation within it is not counted in the EV (it is
        counted in ``n_violations_below_floor``). Default: the one given to
        :func:`predict_ensemble` (attrs ``tolerance_floor``), else none. The EV-against-S
        curve is left out when it differs from the one the curve was recorded with.

    Returns
    -------
    dict with keys ``kinds`` (``{kind: metrics}``), ``groups`` (``{value: {kind: metrics}}``),
    ``group_by`` (a name) and ``tolerance`` (the floors); ``groups`` empty without ``group_by``); kinds include
    ``energy_per_atom`` when the store knows each configuration's ``n_atoms``. Tolerances and
    NLL floors are the kind's, over all rows; symmetry zeros and fixed rows are decided from the
    raw band, so raw and calibrated metrics cover the same rows (see
    :mod:`popsdask.calibration.metrics`).
    """
    if "y" not in ds:
        raise InputError(f"{ds.attrs.get('source', '<predictions>')}: the prediction store has no references y")
    recorded = json.loads(ds.attrs.get("tolerance_floor", "{}"))
    floors = recorded if tolerance is None else check_tolerance(tolerance)
    sizes = tuple(int(v) for v in ds.attrs.get("ev_curve_samples", ())) if floors == recorded else ()
    views = band_arrays(ds, raw, floors)
    labels = None if group_by is None else np.asarray(config_values(ds, group_by)).astype(str)
    kinds: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for name, view in views.items():
        floor = nll_floor(view["y"], view["mle"])
        kinds[name] = _metrics_of(view, slice(None), floor, sizes)
        if labels is None:
            continue
        lab = labels[view["mask"]]
        for value in np.unique(lab):
            groups.setdefault(str(value), {})[name] = _metrics_of(view, lab == value, floor, sizes)
    return {"group_by": group_by, "kinds": kinds, "groups": groups, "tolerance": floors}


def metrics_dataset(metrics: dict[str, Any]) -> xr.Dataset:
    """:func:`prediction_metrics` as an xarray Dataset: scalar metrics on (kind, group), the
    coverage curve on (kind, group, k) and EV against samples on (kind, group, n_samples);
    group ``"all"`` holds the per-kind values."""
    table = {"all": metrics["kinds"]} | metrics.get("groups", {})
    groups = list(table)
    kinds = sorted({k for g in table.values() for k in g})
    first = next(m for g in table.values() for m in g.values())
    scalars = [k for k, v in first.items() if not isinstance(v, dict)]

    def grid(fn, width=None):
        shape = (len(kinds), len(groups)) + (() if width is None else (width,))
        out = np.full(shape, np.nan)
        for i, kind in enumerate(kinds):
            for j, g in enumerate(groups):
                m = table[g].get(kind)
                if m is not None:
                    v = fn(m)
                    if v is not None:
                        out[i, j] = v
        return out

    data: dict[str, tuple[tuple[str, ...], Any]] = {
        k: (("kind", "group"), grid(lambda m, k=k: m.get(k))) for k in scalars
    }
    coords: dict[str, Any] = {"kind": kinds, "group": groups}
    if "coverage_curve" in first:
        k_values = first["coverage_curve"]["k"]
        data["coverage_observed"] = (
            ("kind", "group", "k"),
            grid(lambda m: m["coverage_curve"]["observed"], len(k_values)),
        )
        data["coverage_nominal"] = (("k",), np.asarray(first["coverage_curve"]["nominal"]))
        coords["k"] = k_values
    if "ev_vs_samples" in first:
        sizes = first["ev_vs_samples"]["n_samples"]
        data["ev_vs_samples"] = (
            ("kind", "group", "n_samples"),
            grid(lambda m: m.get("ev_vs_samples", {}).get("envelope_violation"), len(sizes)),
        )
        coords["n_samples"] = sizes
    return xr.Dataset(data, coords=coords, attrs={"group_by": str(metrics.get("group_by"))})


def summarise(ds: xr.Dataset) -> tuple[xr.Dataset, dict[str, dict[str, float]]]:
    """Metrics per row kind and log-binned histograms of |y - MLE| and |sample - MLE|.

    Reads the per-row summaries (N scalars) and streams ``prediction`` once for the sample
    histogram.
    """
    ds = load_row_variables(ds)
    metrics = prediction_metrics(ds)["kinds"]
    row = {k: ds[k].values for k in ("y", "mle", "min", "max")}
    err = row["y"] - row["mle"]
    groups = row_kinds(ds)
    edges_all, hist_ref, hist_smp = [], [], []
    for mask in groups.values():
        e = err[mask]
        half = np.maximum(row["max"][mask] - row["mle"][mask], row["mle"][mask] - row["min"][mask])
        top = max(np.abs(e).max(initial=0.0), half.max(initial=0.0), 1e-300)
        positive = np.abs(e)[np.abs(e) > 0]
        low = np.percentile(positive, 0.5) / 10 if positive.size else top * 1e-6
        edges = np.logspace(np.log10(low), np.log10(top) + 1e-9, N_BINS + 1)
        edges_all.append(edges)
        hist_ref.append(np.histogram(np.abs(e), edges)[0])
        dev = abs(ds["prediction"].data[:, mask] - row["mle"][mask][None, :])
        hist_smp.append(da.histogram(dev, bins=edges)[0])
    hist_smp = list(compute(*hist_smp))  # one read of the members' predictions for every kind
    extra = xr.Dataset(
        {
            "error_bin_edges": (("kind_name", "bin_edge"), np.array(edges_all)),
            "hist_abs_reference_minus_mle": (("kind_name", "bin"), np.array(hist_ref)),
            "hist_abs_sample_minus_mle": (("kind_name", "bin"), np.array(hist_smp)),
        },
        coords={"kind_name": np.array(list(groups), dtype=str)},
    )
    return extra, metrics
