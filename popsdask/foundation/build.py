"""Build a corrector's descriptor store from a foundation model, in parallel over Dask workers.

Each Dask task takes a batch of structures (or one structure file, for data sets too large to
hold on the client), runs the model once on it through the worker's cached model instance,
and returns one row per structure::

    X[k] = [ Σ_i D_i(structure k) , n_element(structure k) for each element ]
    y[k] = E_ref(k) − E_model(k)

(divided by the number of atoms when ``per_atom=True``: the same linear model, rows in eV/atom).
The rows stay on the workers (``persist``) and stream into the store through
:func:`popsdask.write_store`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask
import numpy as np

from ..core.validation import InputError
from ..engine.execution import compute, persist
from ..engine.parts import Parts, batch_spans
from ..io.store import atomic_group
from ..runtime.client import current_client, progress_bar
from .base import Extractor, worker_model
from .structures import element_counts, elements_of, read_structures, reference_energy

__all__ = ["build_store", "extract_rows"]

TARGET = "y = E_reference - E_model"


def extract_rows(
    extractor: Extractor,
    structures: Sequence[Any] | str | os.PathLike,
    elements: Sequence[str],
    *,
    energy_key: str | None = None,
    info_keys: Sequence[str] = (),
    per_atom: bool = False,
    where: str = "",
) -> dict[str, np.ndarray]:
    """Corrector rows of one batch (runs on a worker; the model is loaded once per process).

    Parameters
    ----------
    extractor : Extractor
    structures : list of ase.Atoms, or the path of a structure file (read on the worker)
    elements : sequence of str
        Element symbols of the count columns, in order.
    energy_key : str, optional
        ``atoms.info`` key of the reference energy (default: the attached calculator's).
    info_keys : sequence of str
        ``atoms.info`` entries to keep per configuration (strings or numbers).
    per_atom : bool
        Divide descriptors, counts and energies by the number of atoms.
    where : str
        Description of the batch for error messages.

    Returns
    -------
    dict with ``X`` (n, P + n_elements), ``energy_model``, ``energy_reference``, ``n_atoms``
    and one array per info key.
    """
    if isinstance(structures, (str, os.PathLike)):
        where = where or str(structures)
        structures = read_structures(structures)
    structures = list(structures)
    if not structures:
        raise InputError(f"{where}: no structures")
    try:
        e_ref = np.array([reference_energy(a, energy_key) for a in structures])
        counts = element_counts(structures, elements)
        model, lock = worker_model(extractor)
        with lock:
            t0, c0 = time.perf_counter(), time.process_time()
            out = extractor.extract(model, structures)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    except Exception as err:
        raise _with_context(err, where) from err
    n_atoms = np.array([len(a) for a in structures], dtype=np.int64)
    desc = np.stack([d.sum(axis=0) for d in out.descriptors]).astype(np.float64)
    X = np.concatenate([desc, counts], axis=1)
    e_model = np.asarray(out.energy, dtype=np.float64).reshape(-1)
    if e_model.shape[0] != len(structures):
        raise RuntimeError(f"{where}: the model gave {e_model.shape[0]} energies for {len(structures)} structures")
    if per_atom:
        X = X / n_atoms[:, None]
    rows: dict[str, np.ndarray] = {
        "X": X,
        "energy_model": e_model,
        "energy_reference": e_ref,
        "n_atoms": n_atoms,
        "seconds": np.array([seconds]),
        "cpu_seconds": np.array([cpu]),
    }
    for key in info_keys:
        values = [a.info.get(key, "") for a in structures]
        arr = np.asarray(values)
        rows[f"info_{key}"] = arr if arr.dtype.kind in "biuf" else arr.astype(str)
    return rows


def _with_context(err: Exception, where: str) -> Exception:
    """The same kind of exception, its message prefixed with the batch it came from."""
    if len(err.args) == 1 and isinstance(err.args[0], str):
        try:
            return type(err)(f"{where}: {err.args[0]}")
        except Exception:
            pass
    return RuntimeError(f"{where}: {type(err).__name__}: {err}")


def build_store(
    path: str | os.PathLike,
    structures: Sequence[Any] | Sequence[str | os.PathLike],
    extractor: Extractor,
    *,
    elements: Sequence[str] | None = None,
    energy_key: str | None = None,
    info_keys: Sequence[str] = (),
    per_atom: bool = False,
    batch_size: int = 64,
    dtype: Any = np.float64,
    chunk_rows: int | None = None,
    attrs: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Compute a foundation model's corrector rows over Dask workers into a descriptor store.

    Parameters
    ----------
    path : path-like
        Descriptor store to write (Zarr v3, see :func:`popsdask.write_store`).
    structures : sequence of ase.Atoms, or sequence of structure-file paths
        In-memory structures are cut into batches of ``batch_size``; files (shards of a large
        data set, e.g. extxyz, optionally compressed) are read on the workers, one task each.
    extractor : Extractor
        E.g. :class:`~popsdask.foundation.CHGNetExtractor` or
        :class:`~popsdask.foundation.MACEExtractor`. Each worker process loads it once.
    elements : sequence of str, optional
        Elements of the per-element count columns (default: those present, ordered by Z).
        Give them when the store must line up with another one (train/test, new data).
    energy_key : str, optional
        ``atoms.info`` key of the reference energy (default: the attached calculator's energy).
    info_keys : sequence of str
        ``atoms.info`` entries to keep as per-configuration variables ``info_<key>``.
    per_atom : bool
        Divide each row and target by its number of atoms (targets in eV/atom).
    batch_size : int
        Structures per Dask task.
    dtype : numpy dtype
        Precision of ``X`` on disk (float64 or float32).
    chunk_rows : int, optional
        Rows per store chunk.
    attrs : dict, optional
        Extra provenance attributes.
    overwrite : bool
        Replace an existing store.
    progress : bool
        Show a progress bar while the model runs.

    Returns
    -------
    pathlib.Path of the written store. Its per-configuration variables are ``n_atoms``,
    ``energy_reference``, ``energy_model`` (total energies, eV), ``info_<key>``, and its
    attributes the model description, ``feature_names``, ``elements`` and extraction timings
    (``model_seconds_total``: wall time inside the model calls summed over tasks;
    ``model_cpu_seconds_*``: CPU time of the worker processes during those calls).

    Notes
    -----
    Computations run on the current Dask client if there is one (use
    :func:`popsdask.runtime.cluster.connect` for worker processes; one model instance per process),
    else on Dask's threaded scheduler, where calls to the one model take turns.
    """
    items, from_files = _checked_structures(structures, batch_size)
    t_start = time.perf_counter()
    if elements is None:
        elements = _elements_present(items, from_files, progress)
    elements = list(elements)
    options = dict(energy_key=energy_key, info_keys=tuple(info_keys), per_atom=per_atom)
    parts = Parts(persist(*_extract_tasks(extractor, items, from_files, elements, batch_size, options)), _read_rows)
    if progress:
        _progress(parts.handles)
    cols, sizes = parts.columns(
        ("energy_model", "energy_reference", "n_atoms", "seconds", "cpu_seconds", *(f"info_{k}" for k in info_keys)),
        label="model energies",
    )
    n_cols, description = compute(
        dask.delayed(_n_columns)(parts.handles[0]), dask.delayed(_describe)(extractor), label="", progress=False
    )
    e_ref, e_model, n_atoms = cols["energy_reference"], cols["energy_model"], cols["n_atoms"]
    y = e_ref - e_model
    if per_atom:
        y = y / n_atoms
    configurations = {
        "n_atoms": n_atoms,
        "energy_reference": e_ref,
        "energy_model": e_model,
        **{k: v for k, v in cols.items() if k.startswith("info_")},
    }
    store_attrs = _store_attrs(extractor, description, elements, int(n_cols), cols, per_atom, batch_size, attrs)
    with atomic_group(path, overwrite=overwrite) as staging:  # build_seconds is in before it is complete
        parts.write(staging, y, sizes, int(n_cols), dtype, chunk_rows, configurations=configurations, attrs=store_attrs)
        import zarr

        zarr.open_group(str(staging), mode="r+").attrs["build_seconds"] = time.perf_counter() - t_start
    return Path(path).absolute()


def _checked_structures(structures: Sequence[Any], batch_size: int) -> tuple[list[Any], bool]:
    """The structures as a list, and whether they are file paths (each an existing file)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    items = list(structures)
    if not items:
        raise InputError("build_store: no structures given")
    from_files = isinstance(items[0], (str, os.PathLike))
    if from_files and not all(isinstance(s, (str, os.PathLike)) for s in items):
        raise InputError("build_store: give either ase.Atoms objects or file paths, not both")
    if from_files:
        for f in items:
            if not Path(f).is_file():
                raise FileNotFoundError(f"structure file not found: {f}")
    return items, from_files


def _elements_present(items: Sequence[Any], from_files: bool, progress: bool) -> list[str]:
    if not from_files:
        return elements_of(items)
    found = compute(*[dask.delayed(_file_elements)(f) for f in items], label="elements present", progress=progress)
    return elements_of_symbols(s for f in found for s in f)


def _extract_tasks(
    extractor: Extractor,
    items: Sequence[Any],
    from_files: bool,
    elements: list[str],
    batch_size: int,
    options: dict[str, Any],
) -> list[Any]:
    """One :func:`extract_rows` task per structure file, or per batch of in-memory structures."""
    extract = dask.delayed(extract_rows, pure=True)
    if from_files:
        return [extract(extractor, str(f), elements, **options, where=str(f)) for f in items]
    spans = batch_spans(len(items), batch_size)
    payloads: list[Any] = [items[a:b] for a, b in spans]
    client = current_client()
    if client is not None:  # ship structures to the workers once, not inside the graph
        payloads = client.scatter(payloads)
    return [
        extract(extractor, payload, elements, **options, where=f"structures {a}..{b - 1}")
        for payload, (a, b) in zip(payloads, spans, strict=True)
    ]


def _store_attrs(
    extractor: Extractor,
    description: dict[str, Any],
    elements: list[str],
    n_cols: int,
    cols: dict[str, np.ndarray],
    per_atom: bool,
    batch_size: int,
    attrs: dict[str, Any] | None,
) -> dict[str, Any]:
    """The store's attributes: the model, the row layout and the extraction timings."""
    n_atoms = cols["n_atoms"]
    model_cpu = float(sum(cols["cpu_seconds"]))
    feature_names = description.pop("feature_names") + [f"count_{s}" for s in elements]
    return {
        "descriptors": f"foundation-model corrector ({extractor.name})",
        "model": description,
        "target": TARGET + (" per atom" if per_atom else ""),
        "units": "eV/atom" if per_atom else "eV",
        "per_atom": bool(per_atom),
        "row": "sum over atoms of per-atom descriptors, then per-element atom counts"
        + (", divided by n_atoms" if per_atom else ""),
        "elements": elements,
        "n_descriptor_features": n_cols - len(elements),
        "feature_names": feature_names,
        "n_structures": int(n_atoms.shape[0]),
        "n_atoms_total": int(n_atoms.sum()),
        "model_seconds_total": float(sum(cols["seconds"])),
        "model_cpu_seconds_total": model_cpu,
        "model_cpu_seconds_per_structure": model_cpu / n_atoms.shape[0],
        "model_cpu_seconds_per_atom": model_cpu / max(int(n_atoms.sum()), 1),
        "batch_size": int(batch_size),
        **(attrs or {}),
    }


def elements_of_symbols(symbols: Any) -> list[str]:
    """Distinct chemical symbols ordered by atomic number."""
    from ase.data import atomic_numbers

    unique = set(symbols)
    bad = [s for s in unique if s not in atomic_numbers]
    if bad:
        raise InputError(f"unknown chemical symbols {bad}")
    return sorted(unique, key=lambda s: atomic_numbers[s])


def _file_elements(path: str | os.PathLike) -> list[str]:
    return elements_of(read_structures(path))


def _describe(extractor: Extractor) -> dict[str, Any]:
    model, _ = worker_model(extractor)
    return {**extractor.describe(model), "feature_names": extractor.feature_names(model)}


def _read_rows(rows: dict[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
    return {k: rows[k] for k in names}


def _n_columns(rows: dict[str, np.ndarray]) -> int:
    return int(rows["X"].shape[1])


def _progress(parts: Sequence[Any]) -> None:
    if current_client() is not None:  # the threaded scheduler has no futures to follow
        progress_bar(parts, "foundation-model descriptors")
