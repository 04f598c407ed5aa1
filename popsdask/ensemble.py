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

from ._validate import InputError
from .passes import compute, design_from
from .posterior import DEFAULT_N_SAMPLES, Posterior
from .store import (
    KIND_CODES,
    atomic_directory,
    check_safe_group,
    commit_directory,
    discard_directory,
    is_complete,
    mark_complete,
)

PREDICTION_FORMAT = "popsdask.predictions/1"
BLOCK_BYTES = 64 * 2**20
N_BINS = 60
KIND_NAMES = {v: k for k, v in KIND_CODES.items()}


def _row_coords(data: Any, n: int) -> tuple[str, dict[str, Any]]:
    """Dimension name and row coordinates (from a store) of the prediction set."""
    coords: dict[str, Any] = {}
    if isinstance(data, (str, os.PathLike)):
        from .store import open_store

        data = open_store(data, require_y=False)
    if isinstance(data, xr.Dataset):
        for name in ("config", "kind", "atom", "component"):
            if name in data.coords:
                coords[name] = data[name].values
    dim = "row"
    if "config" in coords and "kind" in coords:
        cfg, kind = coords["config"], coords["kind"]
        if np.all(kind == KIND_CODES["energy"]) and np.unique(cfg).size == n:
            dim = "configuration"
    return dim, coords


def predict_ensemble(
    posterior: Posterior | str | os.PathLike,
    data: Any,
    output: str | os.PathLike | None = None,
    *,
    n_samples: int = DEFAULT_N_SAMPLES,
    method: str = "uniform",
    seed: int | None = 0,
    dtype: Any = np.float64,
    overwrite: bool = False,
    progress: bool = False,
) -> xr.Dataset:
    """Predict every row of ``data`` with ``n_samples`` posterior members.

    Parameters
    ----------
    posterior : Posterior or path of a saved posterior
    data : descriptor store path, xarray Dataset, numpy or dask array (row, feature)
    output : path, optional
        Zarr group to write (atomically; metrics and error histograms are added when the data
        has references ``y``). Without it the lazy Dataset is returned unwritten.
    n_samples, method, seed : posterior sampling (see :meth:`Posterior.sample`)
    dtype : dtype of the stored ``prediction`` array (float32 halves its size)

    Returns
    -------
    xarray.Dataset with ``prediction`` (sample, row|configuration), ``mle``, ``mean``, ``std``,
    ``min``, ``max``, ``theta`` (sample, feature) and ``y`` when present; when written, the
    Dataset re-opened from ``output``.
    """
    post = posterior if isinstance(posterior, Posterior) else Posterior.load(posterior)
    fit_intercept = bool(post.settings.get("fit_intercept", False))
    design = design_from(data, require_y=False, fit_intercept=fit_intercept)
    n, p = design.n_rows, design.n_features
    if p != post.n_features:
        raise InputError(f"{design.source}: {p} features, but the posterior has {post.n_features} parameters")
    delta = post.perturbations(n_samples, method, seed)  # (S, P)
    s = delta.shape[0]
    rows = max(256, BLOCK_BYTES // (8 * max(s, p)))
    X = design.X.rechunk((rows, p)).astype(np.float64)
    dim, coords = _row_coords(data, n)

    mle = X @ post.coef_
    dev = (X @ delta.T).T  # (S, rows), one chunk along sample
    data_vars: dict[str, Any] = {
        "prediction": (("sample", dim), (dev + mle[None, :]).astype(dtype)),
        "mle": ((dim,), mle),
        "mean": ((dim,), mle + dev.mean(axis=0)),
        "std": ((dim,), dev.std(axis=0)),
        "min": ((dim,), mle + dev.min(axis=0)),
        "max": ((dim,), mle + dev.max(axis=0)),
        "theta": (("sample", "feature"), post.coef_[None, :] + delta),
    }
    if design.y is not None:
        data_vars["y"] = ((dim,), design.y.rechunk((X.chunks[0],)).astype(np.float64))
    ds = xr.Dataset(data_vars, coords={k: ((dim,), v) for k, v in coords.items()})
    ds.attrs.update(
        format=PREDICTION_FORMAT,
        n_samples=int(s),
        method=method,
        seed=-1 if seed is None else int(seed),
        posterior=post.kind,
        source=design.source,
    )
    if output is None:
        return ds
    return _write(ds, output, overwrite, progress)


def _write(ds: xr.Dataset, output: str | os.PathLike, overwrite: bool, progress: bool) -> xr.Dataset:
    final, staging = atomic_directory(output)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass overwrite=True to replace it")
    try:
        with warnings.catch_warnings():
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
                zarr.open_group(str(staging), mode="r+").attrs.update({**ds.attrs, "metrics": json.dumps(metrics)})
        mark_complete(staging)
        commit_directory(staging, final, overwrite)
    except BaseException:
        discard_directory(staging)
        raise
    return open_predictions(final)


def open_predictions(path: str | os.PathLike) -> xr.Dataset:
    root = Path(path)
    if root.exists():
        check_safe_group(root)  # JSON metadata only: refuse pickle codecs / object types first
    if not is_complete(root):
        raise InputError(f"{root}: prediction store missing or not marked complete")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xr.open_zarr(root, consolidated=False, zarr_format=3)


def _kind_groups(ds: xr.Dataset) -> dict[str, np.ndarray]:
    dim = ds["mle"].dims[0]
    n = ds.sizes[dim]
    if "kind" not in ds.coords:
        return {"all": np.ones(n, dtype=bool)}
    kind = ds["kind"].values
    return {KIND_NAMES.get(int(k), str(k)): kind == k for k in np.unique(kind)}


def summarise(ds: xr.Dataset) -> tuple[xr.Dataset, dict[str, dict[str, float]]]:
    """Metrics per row kind and log-binned histograms of |y - MLE| and |sample - MLE|.

    Reads the per-row summaries (N scalars) and streams ``prediction`` once for the sample
    histogram.
    """
    row = {k: ds[k].values for k in ("y", "mle", "min", "max", "std")}
    err = row["y"] - row["mle"]
    groups = _kind_groups(ds)
    metrics: dict[str, dict[str, float]] = {}
    edges_all, hist_ref, hist_smp = [], [], []
    for name, mask in groups.items():
        e = err[mask]
        std = row["std"][mask]
        outside = (row["y"][mask] < row["min"][mask]) | (row["y"][mask] > row["max"][mask])
        # rows whose prediction no sample moves (e.g. forces zero by symmetry) have no ratio
        spread = std > 1e-8 * std.max(initial=0.0)
        ratio = np.abs(e[spread]) / std[spread]
        metrics[name] = {
            "n": int(mask.sum()),
            "mae_mle": float(np.mean(np.abs(e))),
            "rmse_mle": float(np.sqrt(np.mean(e**2))),
            "envelope_violation": float(np.mean(outside)),
            "mean_std": float(np.mean(std)),
            "mean_abs_error_over_std": float(np.mean(ratio)) if ratio.size else float("nan"),
            "coverage_2sigma": float(np.mean(np.abs(e) <= 2 * std)),
            "coverage_4sigma": float(np.mean(np.abs(e) <= 4 * std)),
        }
        half = np.maximum(row["max"][mask] - row["mle"][mask], row["mle"][mask] - row["min"][mask])
        top = max(np.abs(e).max(initial=0.0), half.max(initial=0.0), 1e-300)
        positive = np.abs(e)[np.abs(e) > 0]
        low = np.percentile(positive, 0.5) / 10 if positive.size else top * 1e-6
        edges = np.logspace(np.log10(low), np.log10(top) + 1e-9, N_BINS + 1)
        edges_all.append(edges)
        hist_ref.append(np.histogram(np.abs(e), edges)[0])
        dev = abs(ds["prediction"].data[:, mask] - ds["mle"].data[mask][None, :])
        hs, _ = da.histogram(dev, bins=edges)
        (hs,) = compute(hs)
        hist_smp.append(hs)
    extra = xr.Dataset(
        {
            "error_bin_edges": (("kind_name", "bin_edge"), np.array(edges_all)),
            "hist_abs_reference_minus_mle": (("kind_name", "bin"), np.array(hist_ref)),
            "hist_abs_sample_minus_mle": (("kind_name", "bin"), np.array(hist_smp)),
        },
        coords={"kind_name": np.array(list(groups), dtype=str)},
    )
    return extra, metrics
