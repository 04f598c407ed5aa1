"""Run property modules over ensemble members on Dask, one task per (member, property).

Every finished (member, property) is written at once, atomically, as its own small Zarr group
``<store>/parts/<property>/<label>.zarr`` (staged, marked complete, renamed into place, as
:mod:`popsdask.io.store` does), so a run interrupted at any point resumes without recomputing what
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

:func:`run_properties` dispatches on ``route``: ``"resample"`` (:func:`run_resample`, here) or
``"implicit"`` (:func:`popsdask.properties.implicit.run_implicit`); both take the same
arguments and write the same combined layout, except ``client``, which only a route that
computes on Dask takes (the implicit route's predictions are matrix products). ``sampling`` is
the posterior's sampling rule.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..core.validation import InputError
from ..io.store import is_complete
from ..runtime.client import ProgressCounter, current_client
from .catalogue import PROPERTIES, ROUTE_NAMES
from .implicit import run_implicit
from .potential import Potential, default_reference, reference_potential, resolve_members
from .results import open_results, write_results

__all__ = [
    "ROUTES",
    "combine",
    "open_results",
    "part_path",
    "run_properties",
    "run_resample",
]


def part_path(store: str | os.PathLike, prop: str, label: str) -> Path:
    """Where the result of (member ``label``, property ``prop``) is stored."""
    return Path(store) / "parts" / prop / f"{label}.zarr"


def _short(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".replace("\n", " ")[:300]


def _write_part(path: Path, ds: xr.Dataset) -> None:
    write_results(ds, path)


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
    ds.attrs.update(
        {"wall_time": wall, "label": potential.label, "property": prop, "options": opts, "element": potential.element}
    )
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
    floats = [str(v) for v in template.data_vars if v != "status"]  # every variable, per member
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


def _run_tasks(
    tasks: list[tuple[Potential, str, dict[str, Any], str]], client: Any, progress: bool
) -> list[dict[str, Any]]:
    counter = ProgressCounter("properties", len(tasks), enabled=progress)
    if client == "sync":
        out = []
        for i, t in enumerate(tasks):
            out.append(compute_part(*t))
            counter.update(i + 1)
        counter.close()
        return out
    from distributed import as_completed

    futures = {
        client.submit(compute_part, *t, key=f"property-{t[1]}-{t[0].label}-{os.urandom(4).hex()}", pure=False): t
        for t in tasks
    }
    results = []
    for i, fut in enumerate(as_completed(list(futures)), start=1):
        pot, prop, _opt, path = futures[fut]
        try:
            res = fut.result()
        except Exception as err:  # worker died (e.g. a LAMMPS crash): record and go on
            reason = f"error: task failed: {_short(err)}"
            _error_part(Path(path), pot.label, prop, reason)
            res = {"label": pot.label, "property": prop, "status": reason, "wall_time": float("nan"), "pid": -1}
        results.append(res)
        counter.update(i, f"last {prop}/{pot.label}: {res['status'][:40]}")
    counter.close()
    return results


def run_resample(
    posterior_or_members: Any,
    settings: Any,
    properties: Sequence[str],
    store_path: str | os.PathLike,
    *,
    n_samples: int = 100,
    seed: int = 0,
    sampling: str = "uniform",
    reference: bool | str = True,
    client: Any = None,
    options: dict[str, dict[str, Any]] | None = None,
    progress: bool = True,
) -> dict[str, xr.Dataset]:
    """Brute-force resampling: every property recomputed self-consistently for every member.

    Parameters
    ----------
    posterior_or_members : a :class:`~popsdask.engine.posterior.Posterior`, its path, or a list of
        :class:`Potential` (labels ``"mle"`` and others; used as given)
    settings : :class:`SnapSettings` or a descriptor store whose attrs hold them (with a posterior)
    properties : names in :data:`PROPERTIES`
    store_path : results directory (parts and combined stores); reruns resume in it
    n_samples, seed, sampling : posterior samples drawn (``Posterior.sample``'s ``method``)
    reference : include the reference potential (True: the default of the members' element,
        :data:`~.potential.DEFAULT_REFERENCES`; or a teacher name)
    client : Dask client; None uses the current one, else one is started with
        :func:`popsdask.runtime.cluster.connect`; ``"sync"`` runs in this process
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
    members = resolve_members(posterior_or_members, settings, n_samples, seed, sampling)
    pots = list(members)
    ref_label = None
    if reference:
        # the reference builds the members' element; True: that element's default teacher
        element = members[0].element if members else None
        name = reference if isinstance(reference, str) else default_reference(element or "W")
        ref = reference_potential(name, element=element)
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
    cl = client if client is not None else current_client()
    if cl is None:
        from ..runtime.cluster import connect

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
        ds.attrs.update({"method": "resample", "seed": seed, "sampling": sampling, "run_wall_time": wall})
        ds.attrs["run_summary"] = json.dumps({k: v for k, v in summary.items() if k != "errors"}, default=str)
        write_results(ds, store / f"{prop}.zarr")
        out[prop] = ds
    return out


#: route -> runner (the signature of :func:`run_resample`; ``client`` only if it runs on Dask)
ROUTES: dict[str, Callable[..., dict[str, xr.Dataset]]] = dict(
    zip(ROUTE_NAMES, (run_resample, run_implicit), strict=True)
)


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
    route: str = "resample",
    sampling: str = "uniform",
) -> dict[str, xr.Dataset]:
    """Propagate posterior uncertainty to material properties (dispatch on ``route``).

    ``route="resample"`` is :func:`run_resample`, ``"implicit"``
    :func:`popsdask.properties.implicit.run_implicit`; other routes register in :data:`ROUTES`
    with the same signature (``client`` is passed to a route that takes it). See
    :func:`run_resample` for the other parameters.
    """
    if route not in ROUTES:
        raise InputError(f"route {route!r}: use one of {sorted(ROUTES)}")
    runner = ROUTES[route]
    on_dask = {"client": client} if "client" in inspect.signature(runner).parameters else {}
    return runner(
        posterior_or_members, settings, properties, store_path, n_samples=n_samples, seed=seed,
        sampling=sampling, reference=reference, options=options, progress=progress, **on_dask,
    )  # fmt: skip
