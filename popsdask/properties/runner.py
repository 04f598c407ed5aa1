"""Run property modules over ensemble members on Dask, one task per (member, property).

Every finished (member, property) is written at once, atomically, as its own small Zarr group
``<store>/parts/<property>/<label>.zarr`` (staged, marked complete, renamed into place, as
:mod:`popsdask.store` does), so a run interrupted at any point resumes without recomputing what
finished: parts marked complete and computed with the same options are skipped. A task never
raises: an exception becomes a part holding only the reason, and a non-converged item is NaN plus
its ``status`` from the property module; a worker that dies is recorded the same way by the
driver. Once every task is done the parts are combined into ``<store>/<property>.zarr``:

* ``<var>`` with dims ``(sample, <property dims>)`` for each variable of the module (in failed
  members: NaN, -1 for integers, empty strings),
* ``<var>_mle`` and ``<var>_reference`` (the MLE and the reference/oracle potential),
* ``status`` / ``status_mle`` / ``status_reference`` ("ok" or the reason a value is NaN),
* ``wall_time`` (sample) and ``wall_time_mle`` / ``wall_time_reference`` in seconds.

Each worker process keeps one LAMMPS instance (:func:`popsdask.atomistic.lammps_backend.get_session`)
and writes each member's SNAP files once.
"""

from __future__ import annotations

import importlib
import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .._validate import InputError
from ..store import atomic_directory, commit_directory, discard_directory, is_complete, mark_complete
from .potential import Potential, members_from_posterior, reference_potential

__all__ = ["PROPERTIES", "RUNNERS", "combine", "part_path", "run_properties", "run_resample"]

#: property name -> module (each exposes NAME and compute(potential, **options))
PROPERTIES: dict[str, str] = {
    "phases": "popsdask.properties.phases",
    "paths": "popsdask.properties.paths",
    "phonons": "popsdask.properties.phonons",
    "interstitials": "popsdask.properties.interstitials",
    "surfaces": "popsdask.properties.surfaces",
    "vacancy": "popsdask.properties.vacancy",
}


def part_path(store: str | os.PathLike, prop: str, label: str) -> Path:
    """Where the result of (member ``label``, property ``prop``) is stored."""
    return Path(store) / "parts" / prop / f"{label}.zarr"


def _short(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".replace("\n", " ")[:300]


def _to_zarr(ds: xr.Dataset, path: Path) -> None:
    """Write ``ds`` atomically to ``path`` (staged, marked complete, renamed into place)."""
    final, staging = atomic_directory(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():  # fixed-width unicode has no Zarr v3 spec yet; xarray reads it back
            warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
            ds.to_zarr(staging, mode="w", zarr_format=3, consolidated=False)
        mark_complete(staging)
        commit_directory(staging, final, overwrite=True)
    except BaseException:
        discard_directory(staging, settle=0.0, attempts=2)
        raise


def _write_part(path: Path, ds: xr.Dataset) -> None:
    _to_zarr(ds, path)


def _same_options(path: Path, options: str) -> bool:
    """Whether a finished part was computed with these options (parts without the record: yes)."""
    meta = json.loads((path / "zarr.json").read_text()).get("attributes", {})
    return meta.get("options", options) == options


def compute_part(potential: Potential, prop: str, options: dict[str, Any], path: str) -> dict[str, Any]:
    """Compute one (member, property) and write its part; never raises (Dask task body).

    Returns
    -------
    dict with ``label``, ``property``, ``status`` ("computed", "skipped" or "error: ..."),
    ``wall_time`` (s) and ``pid`` of the worker process.
    """
    p = Path(path)
    info = {"label": potential.label, "property": prop, "pid": os.getpid()}
    opts = json.dumps(options, sort_keys=True, default=str)
    if is_complete(p) and _same_options(p, opts):
        return {**info, "status": "skipped", "wall_time": float("nan")}
    t0 = time.perf_counter()
    try:
        mod = importlib.import_module(PROPERTIES[prop])
        ds = mod.compute(potential, **options)
        status = "computed"
    except Exception as err:  # recorded, never fatal for the other members
        ds = xr.Dataset()
        ds.attrs["error"] = _short(err)
        status = f"error: {ds.attrs['error']}"
    wall = time.perf_counter() - t0
    ds.attrs.update({"wall_time": wall, "label": potential.label, "property": prop, "options": opts})
    _write_part(p, ds)
    return {**info, "status": status, "wall_time": wall}


def _error_part(path: Path, label: str, prop: str, reason: str) -> None:
    ds = xr.Dataset(attrs={"error": reason, "wall_time": float("nan"), "label": label, "property": prop})
    _write_part(path, ds)


def _open_part(path: Path) -> xr.Dataset:
    return xr.open_zarr(path, consolidated=False).load()


def _nan_like(template: xr.Dataset, reason: str) -> xr.Dataset:
    out = template.copy(deep=True)
    for v in out.data_vars:
        if v == "status":
            continue
        kind = out[v].dtype.kind
        if kind == "f":
            out[v][...] = np.nan
        elif kind in "iu":
            out[v][...] = -1
        elif kind == "U":
            out[v][...] = ""
    if "status" in out:
        st = np.full(out["status"].shape, reason)
        out["status"] = (out["status"].dims, st.astype(f"<U{max(8, len(reason))}"))
    return out


def combine(
    store: str | os.PathLike, prop: str, labels: Sequence[str], reference: str | None = "reference"
) -> xr.Dataset:
    """Combine the parts of one property into the results Dataset (see module docstring)."""
    parts = {lab: _open_part(part_path(store, prop, lab)) for lab in [*labels, *([reference] if reference else [])]}
    good = [ds for ds in parts.values() if "error" not in ds.attrs and ds.data_vars]
    if not good:
        reasons = {lab: ds.attrs.get("error", "?") for lab, ds in parts.items()}
        raise RuntimeError(f"{prop}: no member produced a result: {json.dumps(reasons)[:800]}")
    template = good[0]
    filled = {}
    for lab, ds in parts.items():
        if "error" in ds.attrs or not ds.data_vars:
            ds2 = _nan_like(template, ds.attrs.get("error", "no result"))
            ds2.attrs["wall_time"] = ds.attrs.get("wall_time", float("nan"))
            filled[lab] = ds2
        else:
            filled[lab] = ds
    samples = [lab for lab in labels if lab != "mle"]
    floats = [v for v in template.data_vars if v != "status"]  # every variable, per member
    out = xr.Dataset(coords=template.coords)
    width = max(8, *(int(filled[lab]["status"].dtype.itemsize // 4) for lab in filled if "status" in filled[lab]))
    if samples:
        stacked = xr.concat([filled[lab] for lab in samples], dim="sample", join="outer", coords="minimal")
        for v in floats:
            out[v] = stacked[v]
        if "status" in stacked:
            out["status"] = stacked["status"].astype(f"<U{width}")
        out = out.assign_coords(sample=np.array(samples, dtype=f"<U{max(len(s) for s in samples)}"))
        out["wall_time"] = ("sample", np.array([filled[lab].attrs.get("wall_time", np.nan) for lab in samples], float))
    for tag in ("mle", reference):
        if tag and tag in filled:
            for v in floats:
                out[f"{v}_{'reference' if tag == reference else 'mle'}"] = filled[tag][v]
            name = "reference" if tag == reference else "mle"
            if "status" in filled[tag]:
                out[f"status_{name}"] = filled[tag]["status"].astype(f"<U{width}")
            out[f"wall_time_{name}"] = float(filled[tag].attrs.get("wall_time", np.nan))
    for v in floats:
        for k, val in template[v].attrs.items():
            for name in (v, f"{v}_mle", f"{v}_reference"):
                if name in out:
                    out[name].attrs[k] = val
    out.attrs.update({k: v for k, v in template.attrs.items() if k not in ("wall_time", "label", "potential")})
    out.attrs["property"] = prop
    out.attrs["n_samples"] = len(samples)
    return out


def _members(posterior_or_members: Any, settings: Any, n_samples: int, seed: int, method: str) -> list[Potential]:
    if isinstance(posterior_or_members, Sequence) and not isinstance(posterior_or_members, (str, bytes)):
        members = list(posterior_or_members)
        if not all(isinstance(m, Potential) for m in members):
            raise InputError("run_properties: a list of members must hold Potential objects")
        return members
    if settings is None:
        raise InputError("run_properties: settings (SnapSettings or a descriptor store) are needed with a posterior")
    if isinstance(settings, (str, os.PathLike)):
        from ..atomistic.snap import SnapSettings

        settings = SnapSettings.from_attrs(xr.open_zarr(settings, consolidated=False).attrs["snap"])
    return members_from_posterior(posterior_or_members, settings, n_samples, seed=seed, method=method)


def _client(client: Any) -> Any:
    if client is not None:
        return client
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def _run_tasks(
    tasks: list[tuple[Potential, str, dict[str, Any], str]], client: Any, progress: bool
) -> list[dict[str, Any]]:
    if client == "sync":
        out = []
        for i, t in enumerate(tasks):
            out.append(compute_part(*t))
            if progress:
                print(f"\r[popsdask] properties {i + 1}/{len(tasks)}", end="", flush=True)
        if progress:
            print(flush=True)
        return out
    from distributed import as_completed

    futures = {
        client.submit(compute_part, *t, key=f"property-{t[1]}-{t[0].label}-{os.urandom(4).hex()}", pure=False): t
        for t in tasks
    }
    results = []
    t0 = time.perf_counter()
    n = len(futures)
    for i, fut in enumerate(as_completed(list(futures)), start=1):
        pot, prop, _opt, path = futures[fut]
        try:
            res = fut.result()
        except Exception as err:  # worker died (e.g. a LAMMPS crash): record and go on
            reason = f"error: task failed: {_short(err)}"
            _error_part(Path(path), pot.label, prop, reason)
            res = {"label": pot.label, "property": prop, "status": reason, "wall_time": float("nan"), "pid": -1}
        results.append(res)
        if progress:
            el = time.perf_counter() - t0
            print(
                f"\r[popsdask] properties {i}/{n} ({el:.0f} s, last {prop}/{pot.label}: {res['status'][:40]})"
                + " " * 8,
                end="",
                flush=True,
            )
    if progress:
        print(flush=True)
    return results


def run_resample(
    posterior_or_members: Any,
    settings: Any,
    properties: Sequence[str],
    store_path: str | os.PathLike,
    *,
    n_samples: int = 100,
    seed: int = 0,
    method: str = "uniform",
    reference: bool | str = True,
    client: Any = None,
    options: dict[str, dict[str, Any]] | None = None,
    progress: bool = True,
) -> dict[str, xr.Dataset]:
    """Brute-force resampling: every property recomputed self-consistently for every member.

    Parameters
    ----------
    posterior_or_members : a :class:`~popsdask.posterior.Posterior`, its path, or a list of
        :class:`Potential` (labels ``"mle"`` and others; used as given)
    settings : :class:`SnapSettings` or a descriptor store whose attrs hold them (with a posterior)
    properties : names in :data:`PROPERTIES`
    store_path : results directory (parts and combined stores); reruns resume in it
    n_samples, seed, method : posterior samples drawn (``Posterior.sample``)
    reference : include the reference potential (True: ``W_2940_2017_2``; or a teacher name)
    client : Dask client; None uses the current one, else one is started with
        :func:`popsdask.cluster.connect`; ``"sync"`` runs in this process
    options : per-property keyword arguments of ``compute`` (e.g. ``{"phases": {"n_eos": 5}}``)
    progress : print a progress line

    Returns
    -------
    dict property -> combined Dataset (also written to ``<store_path>/<property>.zarr``).
    """
    bad = [p for p in properties if p not in PROPERTIES]
    if bad:
        raise InputError(f"unknown properties {bad}; use {sorted(PROPERTIES)}")
    options = dict(options or {})
    members = _members(posterior_or_members, settings, n_samples, seed, method)
    pots = list(members)
    ref_label = None
    if reference:
        ref = reference_potential(reference if isinstance(reference, str) else "W_2940_2017_2")
        pots = [ref, *pots]
        ref_label = ref.label
    store = Path(store_path)
    store.mkdir(parents=True, exist_ok=True)
    tasks = [
        (pot, prop, dict(options.get(prop, {})), str(part_path(store, prop, pot.label)))
        for pot in pots
        for prop in properties
    ]
    t0 = time.perf_counter()
    own = None
    cl = _client(client)
    if cl is None:
        from ..cluster import connect

        own = connect(quiet=not progress)
        cl = own.__enter__()
    try:
        results = _run_tasks(tasks, cl, progress)
    finally:
        if own is not None:
            own.__exit__(None, None, None)
    wall = time.perf_counter() - t0
    summary = {
        "n_tasks": len(results),
        "computed": sum(r["status"] == "computed" for r in results),
        "skipped": sum(r["status"] == "skipped" for r in results),
        "errors": [r for r in results if r["status"].startswith("error")],
        "wall_time": wall,
        "cost_per_member": {
            prop: float(np.nanmedian([r["wall_time"] for r in results if r["property"] == prop] or [np.nan]))
            for prop in properties
        },
    }
    (store / "run.json").write_text(json.dumps(summary, indent=2, default=str))
    labels = [m.label for m in members]
    out = {}
    for prop in properties:
        ds = combine(store, prop, labels, ref_label)
        ds.attrs.update({"method": "resample", "seed": seed, "sampling": method, "run_wall_time": wall})
        ds.attrs["run_summary"] = json.dumps({k: v for k, v in summary.items() if k != "errors"}, default=str)
        _to_zarr(ds, store / f"{prop}.zarr")
        out[prop] = ds
    return out


def _run_implicit(*args: Any, **kwargs: Any) -> dict[str, xr.Dataset]:
    """Implicit expansion at the MLE (phases: bcc/hcp, vacancy); see popsdask.atomistic.implicit_properties."""
    from ..atomistic.implicit_properties import run_implicit

    return run_implicit(*args, **kwargs)


#: method -> runner
RUNNERS: dict[str, Callable[..., dict[str, xr.Dataset]]] = {"resample": run_resample, "implicit": _run_implicit}


def run_properties(
    posterior_or_members: Any,
    settings: Any,
    properties: Sequence[str],
    store_path: str | os.PathLike,
    *,
    n_samples: int = 100,
    seed: int = 0,
    reference: bool | str = True,
    client: Any = None,
    options: dict[str, dict[str, Any]] | None = None,
    progress: bool = True,
    method: str = "resample",
    sampling: str = "uniform",
) -> dict[str, xr.Dataset]:
    """Propagate posterior uncertainty to material properties (dispatch on ``method``).

    ``method="resample"`` is :func:`run_resample`; other methods register in :data:`RUNNERS`
    with the same signature. See :func:`run_resample` for the parameters.
    """
    if method not in RUNNERS:
        raise InputError(f"method {method!r}: use one of {sorted(RUNNERS)}")
    return RUNNERS[method](
        posterior_or_members, settings, properties, store_path, n_samples=n_samples, seed=seed,
        method=sampling, reference=reference, client=client, options=options, progress=progress,
    )  # fmt: skip


def open_results(store_path: str | os.PathLike, prop: str) -> xr.Dataset:
    """The combined results Dataset of one property."""
    return xr.open_zarr(Path(store_path) / f"{prop}.zarr", consolidated=False).load()
