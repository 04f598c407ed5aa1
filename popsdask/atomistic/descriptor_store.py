"""Build a descriptor store from configurations, in parallel over Dask workers, resumably.

The rows come from any :class:`~popsdask.atomistic.descriptors.base.DescriptorBackend` (qSNAP
:class:`~popsdask.atomistic.descriptors.snap.SnapSettings`, ...).

Two stages:

1. :func:`compute_parts` cuts the configurations into batches and computes each batch's rows on
   a Dask worker (each worker process reuses its one LAMMPS instance). A batch is written to
   ``<store>.parts/part-<index>-<hash>.npz`` under a temporary name and renamed into place when
   complete, so an interrupted run leaves only whole parts; the hash covers the descriptor
   settings and the batch's configurations, so a re-run reuses exactly the parts that are still
   valid and recomputes nothing else. Unreadable parts are recomputed.
2. :func:`build_descriptor_store` computes the seeded split and the weights (eq. 9, or FitSNAP's
   per group) part by part on the workers, and streams the parts into the store with
   :func:`popsdask.write_store` (atomic: the store appears complete
   or not at all). The parts directory is removed afterwards unless ``keep_parts``.

Both stages hold the store's :func:`popsdask.io.store.output_lock`, so a second build of a store
whose parts another process is computing, resuming or writing is refused at once
(:class:`popsdask.io.store.OutputLocked`, one line; ``popsdask descriptors`` exits 2) instead of
deleting or replacing that build's parts.

Validation happens before any LAMMPS work: an invalid configuration raises
:class:`popsdask.InputError` naming every bad file and configuration, and nothing is written
(:func:`popsdask.atomistic.read_configurations` is where bad input is skipped and reported).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np

from ..core.validation import InputError
from ..engine.parts import Parts, batch_spans, read_npz
from ..io.store import check_chunk_rows, output_lock, store_chunk_rows
from ..runtime.client import submit_windowed
from .configurations import Configuration, validate_configuration
from .descriptors.base import DescriptorBackend, RowBlock, check_backend
from .split import SPLIT_CODES, split_configurations
from .weights import GroupWeights, RowWeightTerms, WeightSettings, element_reference_energies, paper_terms

__all__ = ["PartsReport", "build_descriptor_store", "composition_bins", "compute_parts", "parts_directory"]

#: upper edges of the mixture bins of :func:`composition_bins` (fraction of the second element)
COMPOSITION_EDGES = (0.25, 0.5, 0.75, 1.0)

_SMALL = ("y", "reference", "kind", "atom", "component", "config")
#: the store's row coordinates and their types
_COORDINATES = {"config": np.int64, "kind": np.int8, "atom": np.int32, "component": np.int8}
#: the columns a row's weight depends on
_WEIGHED_BY = ("kind", "config", "atom")


@dataclass
class PartsReport:
    """Which batches were computed now and which were reused from an earlier run."""

    files: list[Path]
    n_rows: list[int]
    #: each part's configurations ``[start, stop)``
    spans: list[tuple[int, int]]
    computed: int = 0
    reused: int = 0
    seconds: float = 0.0


def parts_directory(path: str | os.PathLike) -> Path:
    """Where the per-batch parts of the store at ``path`` live while it is being built."""
    p = Path(path).absolute()
    return p.with_name(p.name + ".parts")


def _config_hash(h: Any, cfg: Configuration, with_virial: bool) -> None:
    h.update(cfg.name.encode())
    h.update(" ".join(cfg.symbols).encode())
    for arr in (cfg.positions, cfg.cell, cfg.pbc, cfg.forces):
        h.update(np.ascontiguousarray(arr, dtype=float).tobytes())
    h.update(repr(cfg.energy).encode())
    if with_virial and cfg.stress is not None:
        h.update(np.ascontiguousarray(cfg.stress, dtype=float).tobytes())
    h.update(b"V" if with_virial else b"-")


def _wants_virial(cfg: Configuration, virial: bool | str) -> bool:
    return bool(virial is True or (virial == "auto" and cfg.stress is not None))


def _rows_of(cfg: Configuration, virial: bool | str) -> int:
    return 1 + 3 * cfg.n_atoms + (6 if _wants_virial(cfg, virial) else 0)


def _compute_part(
    batch: Sequence[Configuration],
    offset: int,
    settings: DescriptorBackend,
    virial: bool | str,
    target: str,
) -> str:
    blocks = []
    for i, cfg in enumerate(batch):
        try:
            blocks.append(settings.rows(cfg, virial=_wants_virial(cfg, virial), config_index=offset + i))
        except InputError:
            raise
        except Exception as err:  # LAMMPS raises bare Exception; name the backend that failed
            raise RuntimeError(f"{cfg.where()}: the {settings.backend} descriptor failed: {err}") from err
    rb = RowBlock.concat(blocks)
    tgt = Path(target)
    tmp = tgt.with_name(f".{tgt.stem}.tmp-{uuid.uuid4().hex[:8]}.npz")
    np.savez(tmp, **{k: getattr(rb, k) for k in ("X", *_SMALL)})
    os.replace(tmp, tgt)
    return target


def _readable(path: Path, n_rows: int, n_features: int) -> bool:
    try:
        with np.load(path) as z:
            return z["X"].shape == (n_rows, n_features) and all(z[k].shape == (n_rows,) for k in _SMALL)
    except Exception:
        return False


def compute_parts(
    path: str | os.PathLike,
    configurations: Sequence[Configuration],
    settings: DescriptorBackend,
    *,
    virial: bool | str = False,
    client: Any = None,
    configs_per_task: int = 16,
    progress: bool = False,
) -> PartsReport:
    """Compute (or reuse) the per-batch descriptor rows of the store at ``path``.

    Parameters
    ----------
    path : the store's path; parts go to :func:`parts_directory` of it
    configurations : validated, labelled configurations
    settings : descriptor settings
    virial : True (all configurations need a stress), False, or ``"auto"`` (where present)
    client : dask.distributed Client (default: the current one, else local threads)
    configs_per_task : configurations per task and per part file
    progress : print a progress bar over the batches still to compute

    Returns
    -------
    PartsReport

    Raises
    ------
    OutputLocked
        When another process holds the store's :func:`popsdask.io.store.output_lock` (building it,
        or computing its parts).
    """
    with output_lock(path):  # the store's lock: one process computes or resumes its parts at a time
        return _compute_parts(path, configurations, settings, virial, client, configs_per_task, progress)


def _compute_parts(
    path: str | os.PathLike,
    configurations: Sequence[Configuration],
    settings: DescriptorBackend,
    virial: bool | str,
    client: Any,
    configs_per_task: int,
    progress: bool,
) -> PartsReport:
    t0 = time.perf_counter()
    pdir = parts_directory(path)
    pdir.mkdir(parents=True, exist_ok=True)
    skey = settings.key().encode()
    files: list[Path] = []
    n_rows: list[int] = []
    tasks: list[tuple] = []
    report = PartsReport(files, n_rows, batch_spans(len(configurations), configs_per_task))
    for ib, (start, stop) in enumerate(report.spans):
        batch = list(configurations[start:stop])
        h = hashlib.sha256(skey)
        h.update(str(start).encode())
        for cfg in batch:
            _config_hash(h, cfg, _wants_virial(cfg, virial))
        target = pdir / f"part-{ib:06d}-{h.hexdigest()[:24]}.npz"
        rows = sum(_rows_of(c, virial) for c in batch)
        files.append(target)
        n_rows.append(rows)
        if target.exists() and _readable(target, rows, settings.n_features):
            report.reused += 1
            continue
        tasks.append((batch, start, settings, virial, str(target)))
    wanted = {f.name for f in files}
    for old in pdir.glob("*"):  # parts of other settings/inputs, and torn temporary files
        if old.name not in wanted:
            old.unlink(missing_ok=True)
    if progress:
        print(
            f"[popsdask] descriptors: {len(files)} batches of <= {configs_per_task} configurations, "
            f"{report.reused} reused from {pdir}, {len(tasks)} to compute",
            flush=True,
        )
    if tasks:
        if client is not None:  # one submission per batch, a few in flight: no single large graph
            submit_windowed(client, _compute_part, tasks, label="descriptor batches", progress=progress)
        else:
            delayed = [dask.delayed(_compute_part, pure=False)(*args) for args in tasks]
            if progress:
                from dask.diagnostics import ProgressBar

                with ProgressBar(minimum=0.5):
                    dask.compute(*delayed)
            else:
                dask.compute(*delayed)
    report.computed = len(tasks)
    report.seconds = time.perf_counter() - t0
    return report


def composition_bins(counts: np.ndarray, elements: Sequence[str]) -> np.ndarray:
    """A composition label per configuration, for reports by composition.

    One element: its symbol. Two: the pure elements' symbols, and for mixtures the fraction x
    of the second element in quarter bins ``Be_0.25-0.50`` (0.25 < x <= 0.50; the last bin is
    open at 1). More: the elements present, joined by ``-`` in the settings' order.
    """
    counts = np.asarray(counts)
    n = counts.sum(axis=1)
    out = []
    for row, total in zip(counts, n, strict=True):
        present = [e for e, c in zip(elements, row, strict=True) if c > 0]
        if len(present) == 1 or len(elements) != 2:
            out.append("-".join(present))
            continue
        x = row[1] / total
        lo = 0.0
        for hi in COMPOSITION_EDGES:
            if x <= hi:
                break
            lo = hi
        out.append(f"{elements[1]}_{lo:.2f}-{hi:.2f}")
    return np.array(out)


def build_descriptor_store(
    path: str | os.PathLike,
    configurations: Sequence[Configuration],
    settings: DescriptorBackend,
    *,
    virial: bool | str = False,
    weights: WeightSettings | GroupWeights | str | None = None,
    test_fraction: float = 0.25,
    seed: int = 0,
    split: np.ndarray | str | None = None,
    client: Any = None,
    configs_per_task: int = 16,
    chunk_rows: int | None = None,
    overwrite: bool = False,
    keep_parts: bool = False,
    attrs: dict[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Build a descriptor store of a backend's rows (qSNAP, ...) with weights and a train/test split.

    Parameters
    ----------
    path : store directory (Zarr v3)
    configurations : labelled configurations (energies and forces)
    settings : the descriptor (:class:`SnapSettings` or any other backend of
        :mod:`popsdask.atomistic.descriptors.base`)
    virial : add 6 virial rows per configuration: True, False, or ``"auto"`` (where a stress is
        present)
    weights : eq. 9 settings (default a = 2 eV, b = 50 eV/Å), per-group weights
        (:class:`~popsdask.atomistic.weights.GroupWeights`, FitSNAP's), or ``"none"`` for a store
        without a ``weight`` variable (every row weighs 1). A store without training configurations
        normalises eq. 9 over all its configurations instead.
    test_fraction, seed : the split by configuration, stratified by group
    split : (n_configurations,) int8 0 train / 1 test, overriding ``test_fraction``/``seed``;
        ``"none"``: a prediction-only store, every configuration in the test set
    client : Dask client for the descriptor tasks and the store write
    configs_per_task : batch size of the descriptor tasks (and unit of resumption)
    chunk_rows : rows per Zarr chunk
    overwrite : replace an existing store
    keep_parts : keep ``<path>.parts`` after the store is written
    attrs : extra attributes
    progress : print a progress bar while descriptors are computed

    Returns
    -------
    dict with the store path, counts, timings and how many parts were computed or reused.
    """
    t0 = time.perf_counter()
    final = Path(path).absolute()
    configurations = _checked_configurations(final, configurations, settings, virial, weights, split, overwrite)
    check_chunk_rows(chunk_rows)
    # one build per store from its parts to its write: a second build (which would remove or
    # overwrite the parts another one is computing or resuming) raises OutputLocked at once
    with output_lock(final):
        parts = compute_parts(
            final,
            configurations,
            settings,
            virial=virial,
            client=client,
            configs_per_task=configs_per_task,
            progress=progress,
        )
        rows = Parts([str(f) for f in parts.files], read_npz)
        split, split_attrs = _split_codes(final, split, configurations, test_fraction, seed)
        terms, weight_attrs = _weight_terms(configurations, settings.elements, split, weights)
        # the weights are computed part by part on the workers: the client holds per-configuration
        # arrays and each part's summary, never the store's millions of per-row values
        part_terms = [(None if terms is None else terms.part(a, b),) for a, b in parts.spans]
        summaries = rows.gather(("kind", "config", "atom", "reference"), _part_summary, part_terms, label="weights")
        sums = np.sum([s[0] for s in summaries], axis=0)
        chunk = store_chunk_rows(chunk_rows, sum(parts.n_rows), settings.n_features)
        weight = None
        if terms is not None:
            by_part = [(t, sums) for (t,) in part_terms]
            weight = rows.stacked(parts.n_rows, chunk, _WEIGHED_BY, _part_weights, by_part)
        store_attrs = {
            **settings.store_attrs(),
            "units": "metal (eV, Angstrom)",
            "weights": weight_attrs,
            "split": split_attrs,
            "virial": str(virial),
            **(attrs or {}),
        }
        coords = {k: rows.stacked(parts.n_rows, chunk, (k,), dtype=dt) for k, dt in _COORDINATES.items()}
        rows.write(
            final,
            rows.stacked(parts.n_rows, chunk, ("y",)),
            parts.n_rows,
            settings.n_features,
            weight=weight,
            **coords,
            configurations=_per_configuration(configurations, summaries, split, settings.elements, virial),
            attrs=store_attrs,
            chunk_rows=chunk,
            overwrite=overwrite,
        )
        if not keep_parts:
            shutil.rmtree(parts_directory(final), ignore_errors=True)
    return {
        "store": str(final),
        "n_configurations": len(configurations),
        "n_rows": int(sum(parts.n_rows)),
        "n_features": settings.n_features,
        "n_train_configurations": int(np.count_nonzero(split == 0)),
        "n_test_configurations": int(np.count_nonzero(split == 1)),
        "parts_computed": parts.computed,
        "parts_reused": parts.reused,
        "descriptor_seconds": parts.seconds,
        "seconds": time.perf_counter() - t0,
    }


def _checked_configurations(
    final: Path,
    configurations: Sequence[Configuration],
    settings: DescriptorBackend,
    virial: bool | str,
    weights: Any,
    split: Any,
    overwrite: bool,
) -> list[Configuration]:
    """The configurations as a list once every one is valid (else one error naming them all),
    before any descriptor is computed."""
    check_backend(settings, "build_descriptor_store")
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass overwrite=True to replace it")
    if isinstance(weights, str) and weights != "none":
        raise InputError(f"weights={weights!r}: use a WeightSettings, None (eq. 9 defaults) or 'none'")
    if isinstance(split, str) and split != "none":
        raise InputError(f"split={split!r}: use an array of split codes, None (seeded) or 'none'")
    configurations = list(configurations)
    if not configurations:
        raise InputError(f"{final}: no configurations to build a store from")
    if isinstance(weights, GroupWeights):
        weights.check_groups([c.group or "-" for c in configurations])
    bad = []
    for cfg in configurations:
        try:
            validate_configuration(cfg, elements=settings.elements, cutoff=settings.cutoff)
            if virial is True and cfg.stress is None:
                raise InputError(f"{cfg.where()}: virial rows requested but no stress")
        except InputError as err:
            bad.append(str(err))
    if bad:
        more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
        raise InputError(
            f"{final}: {len(bad)} invalid configuration(s), nothing written: " + "; ".join(bad[:10]) + more
        )
    names = [c.name for c in configurations]
    if len(set(names)) != len(names):
        raise InputError(f"{final}: configuration names are not unique")
    return configurations


def _split_codes(
    final: Path, split: Any, configurations: Sequence[Configuration], test_fraction: float, seed: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """The per-configuration split codes (given, seeded or all test) and the store's ``split`` attrs."""
    n_cfg = len(configurations)
    split_scheme = "given"
    if isinstance(split, str):  # "none": prediction only
        split, split_scheme = np.full(n_cfg, SPLIT_CODES["test"], dtype=np.int8), "none (prediction only)"
    elif split is None:
        groups = np.array([c.group or "-" for c in configurations])
        split = split_configurations(n_cfg, test_fraction=test_fraction, seed=seed, groups=groups)
        split_scheme = "seeded, stratified by group"
    split = np.asarray(split, dtype=np.int8)
    if split.shape != (n_cfg,):
        raise InputError(f"{final}: split has shape {split.shape}, expected ({n_cfg},)")
    seeded = split_scheme.startswith("seeded")
    attrs = {
        "codes": dict(SPLIT_CODES),
        "scheme": split_scheme,
        "test_fraction": test_fraction if seeded else None,
        "seed": seed if seeded else None,
        "stratified_by": "group" if seeded else None,
    }
    return split, attrs


def _element_counts(configurations: Sequence[Configuration], elements: Sequence[str]) -> np.ndarray:
    return np.array([[c.symbols.count(e) for e in elements] for c in configurations], dtype=np.int64)


def _weight_terms(
    configurations: Sequence[Configuration],
    elements: Sequence[str],
    split: np.ndarray,
    weights: WeightSettings | GroupWeights | str | None,
) -> tuple[RowWeightTerms | None, dict[str, Any]]:
    """Eq. 9 or per-group weights as :class:`RowWeightTerms` (None for ``"none"``) and the
    store's ``weights`` attrs."""
    n_atoms = np.array([c.n_atoms for c in configurations])
    if isinstance(weights, GroupWeights):
        groups = [c.group or "-" for c in configurations]
        volume = np.array([c.volume for c in configurations])
        return weights.terms(groups, n_atoms, volume), weights.to_attrs()
    wset = None if isinstance(weights, str) else weights or WeightSettings()
    if wset is None:
        return None, {"scheme": "none"}
    counts = _element_counts(configurations, elements)
    energy = np.array([c.energy for c in configurations], dtype=float)
    force_norm = np.concatenate([np.linalg.norm(np.asarray(c.forces), axis=1) for c in configurations])
    train = split == SPLIT_CODES["train"]
    # no training configurations (a prediction store): normalise over all of them
    norm_over = train if train.any() else np.ones(len(configurations), dtype=bool)
    terms = paper_terms(energy / n_atoms, n_atoms, force_norm, norm_over, wset, counts=counts)
    mu, mu_how = element_reference_energies(energy / n_atoms, counts, norm_over)
    attrs = {
        "scheme": "paper eq. 9",
        "normalised_over": "training configurations" if train.any() else "all configurations",
        "energy_reference": {
            e: {"eV_per_atom": float(m), "from": h} for e, m, h in zip(elements, mu, mu_how, strict=True)
        },
        **wset.to_attrs(),
    }
    return terms, attrs


def _part_summary(
    cols: dict[str, np.ndarray], terms: RowWeightTerms | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A part's share of the weights' normalisation sums, and its energy rows' configurations
    and reference energies."""
    kind, config = cols["kind"], cols["config"]
    sums = np.zeros(3) if terms is None else terms.sums(kind, config, cols["atom"])
    e_rows = kind == 0
    return sums, config[e_rows], cols["reference"][e_rows]


def _part_weights(cols: dict[str, np.ndarray], terms: RowWeightTerms, sums: np.ndarray) -> np.ndarray:
    return terms.weights(cols["kind"], cols["config"], cols["atom"], sums)


def _per_configuration(
    configurations: Sequence[Configuration],
    summaries: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    split: np.ndarray,
    elements: Sequence[str],
    virial: bool | str,
) -> dict[str, np.ndarray]:
    """The store's per-configuration variables (names, energies, cells, composition, ...);
    ``summaries`` of the parts (:func:`_part_summary`) give the reference energies."""
    n_atoms = np.array([c.n_atoms for c in configurations])
    counts = _element_counts(configurations, elements)
    energy = np.array([c.energy for c in configurations], dtype=float)
    ref_energy = np.zeros(len(configurations))
    for _, config, reference in summaries:
        ref_energy[config] = reference
    return {
        "name": np.array([c.name for c in configurations]),
        "group": np.array([c.group or "-" for c in configurations]),
        "source": np.array([c.source or "-" for c in configurations]),
        "n_atoms": n_atoms,
        "energy": energy,
        "energy_per_atom": energy / n_atoms,
        "reference_energy": ref_energy,
        "volume": np.array([c.volume for c in configurations]),
        "split": split,
        "has_virial_rows": np.array([_wants_virial(c, virial) for c in configurations]),
        "cell": np.array([c.cell for c in configurations]),
        "pbc": np.array([c.pbc for c in configurations], dtype=bool),
        # composition: for reports by composition (report --group-by composition_bin)
        **{f"count_{e}": counts[:, i] for i, e in enumerate(elements)},
        **{f"fraction_{e}": counts[:, i] / n_atoms for i, e in enumerate(elements)},
        "composition_bin": composition_bins(counts, elements),
    }
