"""The Dask wiring: a POPS fit as passes over the row chunks of a design matrix.

1. sufficient statistics (tree reduction of P × P partials);
   (1b. an exact residual pass, only when the Gram route would lose digits to cancellation);
2. leverage h and correction scale c per row (kept on the workers; h gathered for the exact
   percentile: N scalars); with ``minimum_relative_error`` also the weighted residual per row
   (kept on the workers; one Σ wᵢeᵢ² per chunk gathered for the RMSE, then one count per chunk);
3. second moment of the kept corrections (tree reduction), and for ``ensemble`` the corrections
   themselves, streamed to Zarr;
4. hypercube bounds: min/max (tree reduction) or exact percentiles of the projections.

All numerics are the numpy functions of :mod:`stats`, :mod:`evidence` and :mod:`pops`; this
module only maps them over blocks. It uses the current Dask client when there is one, else
Dask's threaded scheduler.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import operator
import os
import re
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.delayed import Delayed, delayed

from ..core.evidence import Evidence, EvidenceParams, SSEAnchor, maximise_evidence, needs_refinement
from ..core.kinds import posterior_kind
from ..core.pops import (
    LEVERAGE_FLOOR,
    block_correction_moment,
    block_corrections,
    block_leverage,
    block_projection_range,
    block_projections,
    combine_range,
    leverage_factor,
    leverage_threshold,
    principal_basis,
    relative_error_cutoff,
    selected_rows,
)
from ..core.stats import Stats, block_residual_stats, block_stats, combine_stats, combine_sum
from ..core.validation import InputError, check_finite_block
from ..io.chunkread import chunk_refs, load
from ..io.store import default_chunk_rows, open_store
from ..runtime.client import current_client
from .posterior import Posterior, provenance

SPLIT_EVERY = 8


@dataclass
class Design:
    """Row-chunked dask arrays of one regression problem (one chunk along ``feature``)."""

    X: da.Array
    y: da.Array | None
    weight: da.Array | None
    source: str
    feature_names: list[str]
    #: identity of the rows as chunked here (dask names, or content hashes of in-memory
    #: inputs); None when unknown. Equal keys mean equal data and chunks, so pass 1 is reusable.
    key: str | None = None

    @property
    def n_rows(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])

    @property
    def row_starts(self) -> list[int]:
        return [int(s) for s in np.cumsum((0,) + self.X.chunks[0][:-1])]

    def blocks(self) -> list[tuple[Any, Any, Any]]:
        """(X, y, weight) blocks, one per row chunk: delayed blocks, or :class:`ChunkRef` for
        chunks of a store read as raw files by the task that uses them."""
        n = self.X.numblocks[0]
        return list(
            zip(_block_sources(self.X, n), _block_sources(self.y, n), _block_sources(self.weight, n), strict=True)
        )


def _block_sources(a: da.Array | None, n: int) -> list[Any]:
    if a is None:
        return [None] * n
    refs = chunk_refs(a)
    return refs if refs is not None else list(a.to_delayed().ravel())


@functools.cache
def _reading(func: Callable) -> Callable:
    """``func`` with its :class:`ChunkRef` arguments read first, in the same task: one task per
    chunk and pass instead of a read task whose 64 MiB result waits in worker memory. Chunks
    are memory-mapped (:func:`chunkread.map_chunk`): the block kernels only read X, and none
    of their results is a view of it."""

    @functools.wraps(func)
    def task(*args: Any, **kwargs: Any) -> Any:
        return func(*(load(a, mapped=True) for a in args), **kwargs)

    return task


def _to_dask(a: Any, name: str, chunk_rows: int, where: str) -> da.Array:
    if isinstance(a, xr.DataArray):
        a = a.data
    if not isinstance(a, da.Array):
        arr = np.asarray(a)
        if arr.dtype == object or arr.dtype.kind not in "biuf":
            raise InputError(f"{where}: {name} has non-numeric dtype {arr.dtype}")
        a = _wrap_rows(arr, chunk_rows)
    if a.dtype == object or a.dtype.kind not in "biuf":
        raise InputError(f"{where}: {name} has non-numeric dtype {a.dtype}")
    return a


def _wrap_rows(arr: np.ndarray, chunk_rows: int) -> da.Array:
    """A dask array whose row chunks are views of ``arr`` (no copy, no hashing).

    ``da.from_array`` copies its whole input (``x.copy()``) and hashes it for a token: at
    1M × 256 float64 that doubled the peak RSS of an in-memory fit and cost seconds. The
    views mean ``arr`` must not be modified while the returned array is in use.
    """
    import uuid

    n = arr.shape[0]
    rows = tuple(min(chunk_rows, n - i) for i in range(0, n, chunk_rows)) or (0,)
    name = f"array-{uuid.uuid4().hex}"
    rest = (0,) * (arr.ndim - 1)
    starts = np.cumsum((0,) + rows[:-1])
    dsk = {(name, k) + rest: arr[i : i + r] for k, (i, r) in enumerate(zip(starts, rows, strict=True))}
    return da.Array(dsk, name, chunks=(rows,) + tuple((d,) for d in arr.shape[1:]), dtype=arr.dtype, meta=arr[:0])


def content_token(a: Any) -> str | None:
    """The identity of an input array: its dask name, or a SHA-256 of a numpy array's bytes.

    Dask names identify their data, as dask itself assumes (a store's include its zarr.json
    modification time, so a store rewritten by popsdask gets new names; a store edited in
    place by another tool keeps them). In-memory arrays are hashed whole, one read of X: a
    sampled checksum could miss an edited row. On this machine 0.17 s for 314,308 × 120
    float64, about the in-memory Gram at P = 120 (the hash grows as N·P, the Gram as N·P²).
    None: not a numeric array.
    """
    if isinstance(a, xr.DataArray):
        a = a.data
    if a is None:
        return "none"
    if isinstance(a, da.Array):
        return f"dask:{a.name}"
    arr = np.asarray(a)
    if arr.dtype == object:
        return None
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(np.ascontiguousarray(arr).view(np.uint8).reshape(-1))
    return f"sha256:{h.hexdigest()}"


def design_from(
    data: Any,
    y: Any = None,
    weight: Any = None,
    *,
    chunk_rows: int | None = None,
    fit_intercept: bool = False,
    require_y: bool = True,
    content_key: bool = False,
) -> Design:
    """Normalise a numpy/dask array, an xarray Dataset or a store path into a :class:`Design`.

    ``content_key``: also identify the data (:attr:`Design.key`, for the pass-1 cache); dask
    inputs are identified by name for free, in-memory ones are hashed (one read of each).
    """
    source = "<array>"
    names: list[str] = []
    if isinstance(data, (str, os.PathLike)):
        data = open_store(data, require_y=require_y)
    if isinstance(data, xr.Dataset):
        source = str(data.attrs.get("source", "<dataset>"))
        if y is None and "y" in data:
            y = data["y"]
        if weight is None and "weight" in data:
            weight = data["weight"]
        if "feature_name" in data.coords:
            names = [str(s) for s in data["feature_name"].values]
        X = data["X"].data
    else:
        X = data
    if getattr(X, "ndim", None) is None:
        X = np.asarray(X)
    if X.ndim != 2:
        raise InputError(f"{source}: X must be 2-D (row, feature), got shape {X.shape}")
    n, p = X.shape
    if n == 0 or p == 0:
        raise InputError(f"{source}: X is empty (shape {X.shape})")
    rows = chunk_rows or (X.chunks[0][0] if isinstance(X, da.Array) else default_chunk_rows(p))
    tokens = [content_token(v) for v in (X, y, weight)] if content_key else [None]
    X = _to_dask(X, "X", rows, source)
    X = X.rechunk({1: -1})
    if fit_intercept:
        X = da.concatenate([X, da.ones((n, 1), chunks=(X.chunks[0], 1), dtype=X.dtype)], axis=1)
        X = X.rechunk({1: -1})
        if names:
            names = names + ["intercept"]
    arrays = {}
    for name, value in (("y", y), ("weight", weight)):
        if value is None:
            arrays[name] = None
            continue
        arr = _to_dask(value, name, rows, source)
        if arr.ndim != 1 or arr.shape[0] != n:
            raise InputError(f"{source}: {name} has shape {arr.shape}, X has {n} rows")
        arrays[name] = arr.rechunk((X.chunks[0],))
    if require_y and arrays["y"] is None:
        raise InputError(f"{source}: no targets y")
    key = None
    if all(t is not None for t in tokens):
        # the chunks are part of the identity: they fix the order of the float64 reduction
        key = dask.base.tokenize("popsdask-design", tokens, X.chunks, X.dtype.str, fit_intercept)
    return Design(X, arrays["y"], arrays["weight"], source, names, key)


# ---------------------------------------------------------------------------- execution
def _client():
    """:func:`popsdask.runtime.client.current_client` (the one client lookup; kept under this name),
    or None inside a task on a distributed worker (see :func:`_in_worker_task`)."""
    return None if _in_worker_task() else current_client()


def _in_worker_task() -> bool:
    """Whether this runs inside a task on a distributed worker, e.g. a fit in a dask-ml search.

    There the passes run synchronously in the task: its rows are already in this worker's
    memory, the search's parallelism is across its tasks, and submitting the passes to the
    cluster from a task would block the worker thread that the passes' tasks need (with one
    thread per worker, a deadlock).
    """
    try:
        from distributed import get_worker

        get_worker()
        return True
    except (ImportError, ValueError):
        return False


def _local_scheduler(objs: Sequence[Any]) -> contextlib.AbstractContextManager:
    """How the passes run without a client: synchronously inside a worker task, else on Dask's
    threaded scheduler with one BLAS thread per task (:func:`_local_blas_limit`)."""
    if _in_worker_task():
        return dask.config.set(scheduler="sync")
    return _local_blas_limit(objs)


def _local_threads(objs: Sequence[Any] = ()) -> int:
    """Threads of Dask's local threaded scheduler when it would run ``objs``, else 0."""
    from dask.base import get_scheduler
    from dask.threaded import get as threaded_get

    collections = [o for o in objs if dask.is_dask_collection(o)] or [delayed(None)]
    if get_scheduler(collections=collections) is not threaded_get:
        return 0
    return dask.config.get("num_workers", None) or os.cpu_count() or 1


def _local_blas_limit(objs: Sequence[Any]) -> contextlib.AbstractContextManager:
    """One BLAS thread per task when Dask's local thread pool already runs tasks in parallel.

    With the threaded scheduler on P cores, P tasks each calling a P-threaded BLAS
    oversubscribe the cores; on a busy 2-core machine that made the Gram pass several times
    slower than with one BLAS thread per task. Distributed workers already set
    ``OPENBLAS_NUM_THREADS=1`` etc., so this only applies without a client.
    """
    if _local_threads(objs) > 1:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=1, user_api="blas")
    return contextlib.nullcontext()


def _tasks_share_a_process() -> bool:
    """Whether block tasks may run in several threads of one Python process (the GIL)."""
    if _in_worker_task():  # other tasks of this worker (e.g. other fits of a search) run beside
        from distributed import get_worker

        return get_worker().state.nthreads > 1
    client = _client()
    if client is not None:
        return any(n > 1 for n in client.nthreads().values())
    return _local_threads() > 1


def compute(*objs: Any, label: str = "", progress: bool = False) -> tuple:
    """Compute Dask objects on the current client (with a text progress bar if asked)."""
    client = _client()
    if client is None:
        with _local_scheduler(objs):
            if progress:
                from dask.diagnostics import ProgressBar

                print(f"[popsdask] {label}", flush=True)
                with ProgressBar(minimum=0.5):
                    return dask.compute(*objs)
            return dask.compute(*objs)
    futures = client.compute(list(objs))
    if progress:
        from distributed import progress as dprogress

        print(f"[popsdask] {label}", flush=True)
        dprogress(futures, notebook=False)
        print(flush=True)
    return tuple(client.gather(futures))


def persist(*objs: Any) -> tuple:
    client = _client()
    if client is None:
        with _local_scheduler(objs):
            return dask.persist(*objs)
    return tuple(client.persist(list(objs)))


def tree_reduce(parts: Sequence[Delayed], combine: Callable, label: str) -> Delayed:
    """Combine partial results pairwise-ish in a tree of fan-in ``SPLIT_EVERY``."""
    level = list(parts)
    depth = 0
    while len(level) > 1:
        groups = [level[i : i + SPLIT_EVERY] for i in range(0, len(level), SPLIT_EVERY)]
        level = [
            delayed(_reduce_group, pure=True)(
                combine, *group, dask_key_name=f"{label}-combine-{depth}-{j}-{dask.base.tokenize(*group)}"
            )
            for j, group in enumerate(groups)
        ]
        depth += 1
    return level[0]


def _reduce_group(combine: Callable, *parts: Any) -> Any:
    return functools.reduce(combine, parts)


# ---------------------------------------------------------------------------- block tasks
def _checked_stats(X, y, w, *, start: int, source: str) -> Stats:
    check_finite_block(y, variable="y", where=source, row_offset=start)
    if w is not None:
        check_finite_block(w, variable="weight", where=source, nonneg=True, row_offset=start)
    stats = block_stats(X, y, w)
    # A NaN or ±inf anywhere in X (even on a zero-weight row: 0·inf = NaN) makes the Gram
    # diagonal or Xᵀy non-finite; only then scan X for the first bad row (saves a full pass
    # over the block per chunk). Overflow of finite values also lands here and scans clean.
    if not (np.isfinite(np.diagonal(stats.gram)).all() and np.isfinite(stats.xty).all()):
        check_finite_block(X, variable="X", where=source, row_offset=start)
    return stats


def _column(a: np.ndarray, j: int) -> np.ndarray:
    return a[:, j]


def _leverage_and_sum_sq(hc: np.ndarray) -> tuple[np.ndarray, float]:
    """The leverage column of a pass-2 block and Σ wᵢeᵢ² = Σ rᵢ² of its rows."""
    r = hc[:, 2]
    return hc[:, 0], float(r @ r)


def _count_selected(hc: np.ndarray, threshold: float, min_residual: float | None) -> int:
    return int(np.count_nonzero(selected_rows(hc, threshold, min_residual)))


# ---------------------------------------------------------------------------- the fit
@dataclass
class PopsSettings:
    """POPS parameters (popsregression 0.4.0 names and defaults).

    ``minimum_relative_error`` (popsregression ≥ 0.5; None, the default, disables it): keep only
    rows whose weighted residual is ≥ this × the weighted RMSE, on top of the leverage
    selection, and floor leverages at :data:`pops.LEVERAGE_FLOOR` in the corrections.
    ``leverage_percentile=0`` with ``minimum_relative_error=0.01`` is popsregression 0.5's
    default selection (it ignores ``leverage_percentile``).
    """

    leverage_percentile: float = 50.0
    mode_threshold: float = 1.0e-8
    percentile_clipping: float = 0.0
    posterior: str = "hypercube"
    minimum_relative_error: float | None = None


def sufficient_statistics(design: Design, *, progress: bool = False) -> Stats:
    """Pass 1: G, XᵀWy, yᵀWy, Σw by a tree reduction over row chunks."""
    parts = [
        delayed(_reading(_checked_stats), pure=True)(xb, yb, wb, start=s, source=design.source)
        for (xb, yb, wb), s in zip(design.blocks(), design.row_starts, strict=True)
    ]
    (stats,) = compute(tree_reduce(parts, combine_stats, "gram"), label="pass 1/4: Gram", progress=progress)
    if stats.sw <= 0:
        raise InputError(f"{design.source}: all weights are zero")
    return stats


class StatisticsCache:
    """Pass 1 (and the evidence maximisation) of recent fits, by :attr:`Design.key`.

    POPS settings (leverage_percentile, minimum_relative_error, mode_threshold,
    percentile_clipping, posterior) only change passes 2–4, so a search over them on one
    training fold needs the Gram pass once. Entries are keyed by the design's identity (dask
    names, or SHA-256 of in-memory arrays, plus the row chunks and ``fit_intercept``), so an
    entry is only ever used for the same rows chunked the same way, and a reused fit is
    bit-identical to a fresh one. A design without a key is never cached.

    Least recently used entries are dropped beyond ``maxsize`` entries or ``max_bytes`` of
    arrays. Thread-safe; concurrent fits of one key compute pass 1 once (the others wait), as
    when a threaded dask-ml search fits several settings of one fold at the same time.
    Values are copied in and out, so a caller that edits a fitted attribute in place cannot
    change a later fit.
    """

    def __init__(self, maxsize: int = 16, max_bytes: int = 512 * 2**20) -> None:
        self.maxsize, self.max_bytes = maxsize, max_bytes
        self._entries: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()  # key: (value, bytes)
        self._lock = threading.Lock()
        self._key_locks: dict[tuple, threading.Lock] = {}
        self.hits = self.misses = 0

    def get_or_compute(self, key: tuple, make: Callable[[], Any]) -> tuple[Any, bool]:
        """The cached value of ``key`` (a copy) and True, or ``make()`` cached and False."""
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._entries:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return copy.deepcopy(self._entries[key][0]), True
                self.misses += 1
            try:
                value = make()
            except BaseException:
                with self._lock:
                    self._key_locks.pop(key, None)
                raise
            size = _nbytes(value)
            with self._lock:
                self._entries[key] = (copy.deepcopy(value), size)
                while self._entries and (
                    len(self._entries) > self.maxsize or sum(n for _, n in self._entries.values()) > self.max_bytes
                ):
                    old, _ = self._entries.popitem(last=False)
                    self._key_locks.pop(old, None)
            return value, False

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._key_locks.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)


def _nbytes(value: Any) -> int:
    return sum(v.nbytes for v in vars(value).values() if isinstance(v, np.ndarray))


#: the process's pass-1 cache (each distributed worker process has its own)
STATISTICS_CACHE = StatisticsCache()


def statistics_and_evidence(
    design: Design, evidence: EvidenceParams, *, progress: bool = False, reuse: bool = False
) -> tuple[Stats, Evidence]:
    """Pass 1, the evidence maximisation and (when needed) pass 1b, from
    :data:`STATISTICS_CACHE` when ``reuse`` and the design has a key (see
    :class:`StatisticsCache`)."""

    if not reuse or design.key is None:
        stats = sufficient_statistics(design, progress=progress)
        return stats, _evidence(design, stats, evidence, progress)
    cache = STATISTICS_CACHE
    stats, hit = cache.get_or_compute(("stats", design.key), lambda: sufficient_statistics(design, progress=progress))
    if hit and progress:
        print("[popsdask] pass 1/4: Gram (reused)", flush=True)
    # the evidence (and pass 1b) depend on the BayesianRidge parameters too
    ev_key = ("evidence", design.key, tuple(sorted(vars(evidence).items())))
    ev, _ = cache.get_or_compute(ev_key, lambda: _evidence(design, stats, evidence, progress))
    return stats, ev


def _evidence(design: Design, stats: Stats, evidence: EvidenceParams, progress: bool) -> Evidence:
    ev = maximise_evidence(stats, evidence)
    if needs_refinement(stats, ev):
        coef_d = delayed(ev.coef, pure=True)
        parts = [
            delayed(_reading(block_residual_stats), pure=True)(xb, yb, wb, coef_d) for xb, yb, wb in design.blocks()
        ]
        (res,) = compute(
            tree_reduce(parts, combine_sum, "residual"), label="pass 1b: exact residuals", progress=progress
        )
        ev = maximise_evidence(stats, evidence, SSEAnchor(ev.coef, res[0], res[1]), (ev.eigvals, ev.eigvecs))
    return ev


def fit_pops(
    design: Design,
    *,
    evidence: EvidenceParams | None = None,
    settings: PopsSettings | None = None,
    corrections_path: str | os.PathLike | None = None,
    progress: bool = False,
    reuse_statistics: bool = False,
) -> Posterior:
    """Fit BayesianRidge evidence maximisation and the POPS posterior, pass by pass.

    ``corrections_path`` (a new Zarr array directory) receives the pointwise corrections of
    the ``ensemble`` posterior. ``reuse_statistics``: take pass 1 from (and put it in)
    :data:`STATISTICS_CACHE` when the design has a :attr:`~Design.key`.
    """
    post, _ = fit_pops_with_evidence(
        design,
        evidence=evidence,
        settings=settings,
        corrections_path=corrections_path,
        progress=progress,
        reuse_statistics=reuse_statistics,
    )
    return post


def fit_pops_with_evidence(
    design: Design,
    *,
    evidence: EvidenceParams | None = None,
    settings: PopsSettings | None = None,
    corrections_path: str | os.PathLike | None = None,
    progress: bool = False,
    reuse_statistics: bool = False,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
) -> tuple[Posterior, Evidence]:
    """:func:`fit_pops`, also returning the evidence maximisation (its ``scores`` are the log
    marginal likelihood per iteration when ``compute_score``).

    ``checkpoint``: a directory where each finished pass's result is written atomically
    (:class:`Checkpoint`); ``resume`` continues from its last finished pass after checking that
    the data's fingerprint and the settings are those it was made with (else
    :class:`InputError`). Without ``resume`` an existing checkpoint is replaced. The ``ensemble``
    corrections then live in the checkpoint (``corrections_path`` is not used): keep it until
    the posterior is saved.
    """
    settings = settings or PopsSettings()
    evidence = evidence or EvidenceParams()
    n, p = design.n_rows, design.n_features
    if n < p:
        raise InputError(
            f"{design.source}: {n} rows (n_samples = {n}) but {p} features; "
            "POPS needs at least as many rows as features"
        )
    if checkpoint is None:
        if resume:
            raise ValueError("resume=True needs a checkpoint directory to resume from")
        return _fit_passes(design, evidence, settings, corrections_path, progress, reuse_statistics, None)
    from ..io.store import output_lock

    with output_lock(checkpoint):  # one fit per checkpoint at a time
        ckpt = Checkpoint.open(checkpoint, design, evidence, settings, resume=resume)
        try:
            return _fit_passes(design, evidence, settings, corrections_path, progress, reuse_statistics, ckpt)
        except BaseException:
            if not any(ckpt.has(name) for name in CHECKPOINT_PASSES):
                ckpt.remove()  # nothing to resume: leave no empty directory behind
            raise


def _fit_passes(
    design: Design,
    evidence: EvidenceParams,
    settings: PopsSettings,
    corrections_path: str | os.PathLike | None,
    progress: bool,
    reuse_statistics: bool,
    ckpt: Checkpoint | None,
) -> tuple[Posterior, Evidence]:
    """The passes in order, each taken from ``ckpt`` when it holds it, else computed (and then
    checkpointed)."""
    ev = ckpt.load_evidence(progress) if ckpt else None
    if ev is None:
        stats, ev = statistics_and_evidence(design, evidence, progress=progress, reuse=reuse_statistics)
        if ckpt:
            ckpt.save_evidence(stats, ev)
    kind = posterior_kind(settings.posterior)
    lev = None
    if ckpt:
        # pass 2's blocks are read back only for a pass 3 or 4 still to run
        done = ckpt.has("moment") and (not kind.bounds or ckpt.has("bounds"))
        lev = ckpt.load_leverage(progress, blocks=not done)
    if lev is None:
        lev = leverage_pass(design, ev, settings, progress)
        if ckpt:
            ckpt.save_leverage(lev)
    moment = ckpt.load_moment(progress) if ckpt else None
    if moment is None:
        moment = moment_pass(design, ev, lev, settings, corrections_path, progress, ckpt)
    bounds = None
    if kind.bounds:
        bounds = ckpt.load_bounds(progress) if ckpt else None
        if bounds is None:
            bounds = bounds_pass(design, ev, lev, moment.moment, settings, progress)
            if ckpt:
                ckpt.save_bounds(bounds)
    return _posterior(design, ev, lev, moment, bounds, evidence, settings), ev


@dataclass
class Leverage:
    """Pass 2's result: the per-chunk (h, c[, r]) blocks kept for passes 3–4 (persisted on the
    workers, or read from a checkpoint) and the row selection they define."""

    blocks: list[Any]
    threshold: float
    min_residual: float | None
    counts: list[int]
    floor: float | None

    @property
    def n_selected(self) -> int:
        return sum(self.counts)


@dataclass
class Moment:
    """Pass 3's result: Σ c² xxᵀ over the kept rows (``inner``), the second moment
    A⁻¹ inner A⁻¹ of the corrections, and the ``ensemble`` corrections (lazy, on disk)."""

    inner: np.ndarray
    moment: np.ndarray
    corrections: da.Array | None = None


@dataclass
class Bounds:
    """Pass 4's result: the principal basis of the moment and the box's bounds along it."""

    basis: np.ndarray
    lower: np.ndarray
    upper: np.ndarray


def leverage_pass(design: Design, ev: Evidence, settings: PopsSettings, progress: bool = False) -> Leverage:
    """Pass 2: leverage h and correction scale c per row (kept on the workers), h gathered for
    the exact percentile; with ``minimum_relative_error`` the residual cutoff and one count of
    kept rows per chunk."""
    n = design.n_rows
    a_inv = ev.a_inv
    coef_d, ainv_d = delayed(ev.coef, pure=True), delayed(a_inv, pure=True)
    factor_d = delayed(leverage_factor(a_inv), pure=True)
    shared = _tasks_share_a_process()
    by_residual = settings.minimum_relative_error is not None
    floor = LEVERAGE_FLOOR if by_residual else None
    hc = [
        delayed(_reading(block_leverage), pure=True)(
            xb, yb, wb, coef_d, ainv_d, factor_d, release_gil=shared, leverage_floor=floor
        )
        for xb, yb, wb in design.blocks()
    ]
    hc = list(persist(*hc))
    min_residual = None
    if by_residual:
        parts = compute(
            *[delayed(_leverage_and_sum_sq, pure=True)(b) for b in hc], label="pass 2/4: leverage", progress=progress
        )
        h_parts = [hb for hb, _ in parts]
        # exact Σ wᵢeᵢ² from the residuals of pass 2 (the Gram's sse may have lost digits)
        min_residual = relative_error_cutoff(sum(ss for _, ss in parts), n, settings.minimum_relative_error)
    else:
        h_parts = compute(
            *[delayed(_column, pure=True)(b, 0) for b in hc], label="pass 2/4: leverage", progress=progress
        )
    h = np.concatenate(h_parts)
    threshold = leverage_threshold(h, settings.leverage_percentile)
    if by_residual:
        counts = list(compute(*[delayed(_count_selected, pure=True)(b, threshold, min_residual) for b in hc]))
    else:
        counts = [int(np.count_nonzero(hb >= threshold)) for hb in h_parts]
    if sum(counts) == 0:  # degenerate h, or no row passes both criteria: keep every row
        threshold, min_residual = -np.inf, None
        counts = [len(hb) for hb in h_parts]
    return Leverage(hc, float(threshold), min_residual, [int(c) for c in counts], floor)


def moment_pass(
    design: Design,
    ev: Evidence,
    lev: Leverage,
    settings: PopsSettings,
    corrections_path: str | os.PathLike | None = None,
    progress: bool = False,
    ckpt: Checkpoint | None = None,
) -> Moment:
    """Pass 3: Σ c² xxᵀ over the kept rows by a tree reduction; for ``ensemble`` the corrections
    themselves streamed to Zarr by the workers (into the checkpoint when there is one, which
    then records the pass)."""
    p = design.n_features
    a_inv = ev.a_inv
    blocks = design.blocks()
    threshold, min_residual = lev.threshold, lev.min_residual
    moment_parts = [
        delayed(_reading(block_correction_moment), pure=True)(xb, b, threshold, min_residual)
        for (xb, _, _), b in zip(blocks, lev.blocks, strict=True)
    ]
    moment_task = tree_reduce(moment_parts, operator.add, "moment")
    if not posterior_kind(settings.posterior).streams_corrections:
        (inner,) = compute(moment_task, label="pass 3/4: correction moment", progress=progress)
        result = Moment(inner, a_inv @ inner @ a_inv)
        if ckpt:
            ckpt.save_moment(result)
        return result
    ainv_d = delayed(a_inv, pure=True)
    corr = da.concatenate(
        [
            da.from_delayed(
                delayed(_reading(block_corrections), pure=True)(xb, b, threshold, ainv_d, min_residual),
                shape=(c, p),
                dtype=np.float64,
            )
            for (xb, _, _), b, c in zip(blocks, lev.blocks, lev.counts, strict=True)
        ]
    ).rechunk((max(1, min(lev.n_selected, default_chunk_rows(p))), p))
    label = "pass 3/4: corrections → Zarr"
    if ckpt:
        return ckpt.save_moment_with_corrections(
            lambda path: compute(moment_task, _corrections_write(corr, path), label=label, progress=progress)[0],
            a_inv,
        )
    if corrections_path is None:
        raise ValueError(f"the {settings.posterior} posterior needs corrections_path to stream corrections to")
    inner, _ = compute(moment_task, _corrections_write(corr, corrections_path), label=label, progress=progress)
    return Moment(inner, a_inv @ inner @ a_inv, da.from_zarr(str(corrections_path)))


def _corrections_write(corr: da.Array, path: str | os.PathLike) -> Any:
    return da.to_zarr(corr, str(path), compute=False, zarr_format=3, overwrite=True)


def bounds_pass(
    design: Design, ev: Evidence, lev: Leverage, moment: np.ndarray, settings: PopsSettings, progress: bool = False
) -> Bounds:
    """Pass 4: the principal basis of the moment (on the client) and the min/max, or exact
    percentiles, of the kept corrections' projections on it."""
    basis, _ = principal_basis(moment, settings.mode_threshold)
    basis = _fix_signs(basis)
    proj_d = delayed(ev.a_inv @ basis, pure=True)
    blocks = design.blocks()
    threshold, min_residual = lev.threshold, lev.min_residual
    if settings.percentile_clipping > 0:
        lower, upper = _projection_percentiles(
            blocks,
            lev.blocks,
            lev.counts,
            threshold,
            proj_d,
            basis.shape[1],
            settings.percentile_clipping,
            progress,
            min_residual,
        )
    else:
        parts = [
            delayed(_reading(block_projection_range), pure=True)(xb, b, threshold, proj_d, min_residual)
            for (xb, _, _), b in zip(blocks, lev.blocks, strict=True)
        ]
        ((lower, upper),) = compute(
            tree_reduce(parts, combine_range, "bounds"), label="pass 4/4: hypercube bounds", progress=progress
        )
    return Bounds(basis, lower, upper)


def _posterior(
    design: Design,
    ev: Evidence,
    lev: Leverage,
    moment: Moment,
    bounds: Bounds | None,
    evidence: EvidenceParams,
    settings: PopsSettings,
) -> Posterior:
    basis, lower, upper = (None, None, None) if bounds is None else (bounds.basis, bounds.lower, bounds.upper)
    mis_sigma = posterior_kind(settings.posterior).second_moment(moment.moment, lev.n_selected, bounds)
    return Posterior(
        coef_=ev.coef,
        sigma_=ev.sigma,
        alpha_=ev.alpha,
        lambda_=ev.lambda_,
        misspecification_sigma_=mis_sigma,
        kind=settings.posterior,
        basis_=basis,
        lower_=lower,
        upper_=upper,
        corrections_=moment.corrections,
        leverage_threshold_=lev.threshold,
        n_rows_=design.n_rows,
        n_selected_=lev.n_selected,
        n_iter_=ev.n_iter,
        condition_number_=ev.condition_number,
        feature_names=design.feature_names,
        settings={
            **vars(settings),
            **vars(evidence),
            # the minimum_relative_error selection as applied (None when off or all rows kept)
            "leverage_floor": lev.floor,
            "residual_threshold": lev.min_residual,
        },
        provenance=provenance(design.source),
    )


def _fix_signs(basis: np.ndarray) -> np.ndarray:
    """Make the largest-magnitude entry of each basis vector positive (eigh's sign is arbitrary)."""
    idx = np.argmax(np.abs(basis), axis=0)
    signs = np.sign(basis[idx, np.arange(basis.shape[1])])
    signs[signs == 0] = 1.0
    return basis * signs


def _projection_percentiles(blocks, hc, counts, threshold, proj_d, k, clip, progress, min_residual=None):
    """Exact per-mode percentiles of the projections: rows gathered one column group at a time."""
    z = da.concatenate(
        [
            da.from_delayed(
                delayed(_reading(block_projections), pure=True)(xb, b, threshold, proj_d, min_residual),
                shape=(c, k),
                dtype=np.float64,
            )
            for (xb, _, _), b, c in zip(blocks, hc, counts, strict=True)
        ]
    )
    n_sel = int(z.shape[0])
    cols = max(1, min(k, (128 * 2**20) // max(1, 8 * n_sel)))
    z = z.rechunk((n_sel, cols))
    q = da.map_blocks(
        lambda b: np.percentile(b, [clip, 100.0 - clip], axis=0), z, chunks=((2,), z.chunks[1]), dtype=np.float64
    )
    (qq,) = compute(q, label="pass 4/4: hypercube percentiles", progress=progress)
    return qq[0], qq[1]


# ---------------------------------------------------------------------------- checkpoints
CHECKPOINT_FORMAT = "popsdask.checkpoint/1"
#: the checkpointed passes, in order, and their progress labels
CHECKPOINT_PASSES = {
    "evidence": "pass 1/4: Gram and evidence",
    "leverage": "pass 2/4: leverage",
    "moment": "pass 3/4: correction moment",
    "bounds": "pass 4/4: hypercube bounds",
}
_SAMPLED_CHUNKS = 3


def _block_digest(X: np.ndarray, y: np.ndarray | None, w: np.ndarray | None) -> str:
    h = hashlib.sha256()
    for a in (X, y, w):
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.view(np.uint8).reshape(-1))
    return h.hexdigest()


def _metadata_digest(source: str) -> str:
    """SHA-256 of every zarr.json of the store behind ``source`` (``PATH`` or ``PATH[split]``);
    "none" for in-memory data."""
    root = Path(re.sub(r"\[\w+\]$", "", source))
    if not (root / "zarr.json").is_file():
        return "none"
    h = hashlib.sha256()
    for meta in sorted(root.rglob("zarr.json")):
        h.update(str(meta.relative_to(root)).encode())
        h.update(meta.read_bytes())
    return h.hexdigest()


def design_fingerprint(design: Design) -> dict[str, str]:
    """What a checkpoint must match to be resumed: the rows' source, shape, dtype and chunking,
    a checksum of the store's metadata, and a checksum of the first, middle and last chunk of
    X, y and weight (one small compute: a full checksum would be one more pass over X)."""
    blocks = design.blocks()
    picks = sorted({0, len(blocks) // 2, len(blocks) - 1})[:_SAMPLED_CHUNKS]
    digests = compute(*[delayed(_reading(_block_digest), pure=True)(*blocks[i]) for i in picks])
    chunks = hashlib.sha256(repr(design.X.chunks[0]).encode()).hexdigest()
    return {
        "source": design.source,
        "shape": f"{design.n_rows} x {design.n_features}",
        "dtype": design.X.dtype.str,
        "row chunks": f"{len(blocks)} chunks, sha256 {chunks[:16]}",
        "weights": "yes" if design.weight is not None else "no",
        "metadata": _metadata_digest(design.source),
        "sampled chunks": hashlib.sha256(" ".join(digests).encode()).hexdigest(),
    }


def _setting_text(value: Any) -> str:
    """A setting as compared on resume: numbers as floats (50 and 50.0 are one setting)."""
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return repr(float(value))
    return json.dumps(value)


def _optional(value: Any) -> float | None:
    return None if value is None else float(value)


def _save_block(block: np.ndarray, path: str) -> None:
    np.save(path, block, allow_pickle=False)


def _load_block(path: str) -> np.ndarray:
    return np.load(path, allow_pickle=False)


class Checkpoint:
    """Each finished pass of a fit, in a directory next to its output, so that a fit whose
    client was killed (walltime, preemption, Ctrl-C) continues from its last finished pass.

    One Zarr group per pass (``evidence``: the sufficient statistics and the evidence solution;
    ``leverage``: threshold, residual cutoff, per-chunk counts and every chunk's (h, c[, r])
    block, written by the workers that hold it; ``moment``: Σ c² xxᵀ, and for ``ensemble`` the
    corrections; ``bounds``: basis and box), each written by :func:`store.atomic_group` (staged,
    marked complete, renamed), so a killed writer leaves a pass either whole or absent. Values
    are stored as float64 bytes (``.npy``), so a resumed fit is the uninterrupted one. Every
    group carries the data's :func:`design_fingerprint` and the settings; :meth:`open` with
    ``resume`` refuses a checkpoint whose fingerprint or settings differ, naming the first
    difference.
    """

    def __init__(self, root: Path, identity: dict[str, str]) -> None:
        self.root, self.identity = root, identity

    @classmethod
    def open(
        cls, path: str | os.PathLike, design: Design, evidence: EvidenceParams, settings: PopsSettings, *, resume: bool
    ) -> Checkpoint:
        root = Path(path).absolute()
        settings_all = {**vars(settings), **vars(evidence)}
        identity = {
            "format": CHECKPOINT_FORMAT,
            **design_fingerprint(design),
            **{f"setting {k}": _setting_text(v) for k, v in sorted(settings_all.items())},
        }
        if root.exists() and not resume:
            shutil.rmtree(root)
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".*.partial-*"):  # staging of a killed writer (the lock is ours)
            shutil.rmtree(stale, ignore_errors=True)
        ckpt = cls(root, identity)
        if resume:
            for name in CHECKPOINT_PASSES:
                if ckpt._group(name) is not None:
                    ckpt._check(name)
        return ckpt

    def has(self, name: str) -> bool:
        """Whether pass ``name`` is checkpointed (complete)."""
        return self._group(name) is not None

    def _group(self, name: str) -> Path | None:
        from ..io.store import is_complete

        path = self.root / name
        return path if is_complete(path) else None

    def _check(self, name: str) -> None:
        import zarr

        saved = json.loads(zarr.open_group(str(self.root / name), mode="r").attrs["identity"])
        for key in sorted(set(saved) | set(self.identity), key=list(self.identity).index):
            if saved.get(key) != self.identity.get(key):
                raise InputError(
                    f"{self.root}: cannot resume: {key} was {saved.get(key)} when this checkpoint was made and is "
                    f"{self.identity.get(key)} now; fit again without resuming (or restore the store and settings)"
                )

    @contextlib.contextmanager
    def _writing(self, name: str, values: dict[str, Any]) -> Any:
        """Stage the group of pass ``name`` (the block may add files to it), then write
        ``values`` (arrays and scalars; None recorded as such) and commit it atomically."""
        import zarr

        from ..io.store import atomic_group

        with atomic_group(self.root / name, overwrite=True) as staging:
            group = zarr.open_group(str(staging), mode="w", zarr_format=3)
            yield staging
            arrays = {k: np.asarray(v) for k, v in values.items() if v is not None}
            np.savez(staging / "values.npz", **arrays)
            group.attrs.update(
                identity=json.dumps(self.identity), none=[k for k, v in values.items() if v is None], **{"pass": name}
            )

    def _values(self, name: str) -> dict[str, Any] | None:
        import zarr

        path = self._group(name)
        if path is None:
            return None
        self._check(name)
        with np.load(path / "values.npz", allow_pickle=False) as z:
            values: dict[str, Any] = {k: z[k] for k in z.files}
        values.update(dict.fromkeys(zarr.open_group(str(path), mode="r").attrs["none"]))
        return values

    def _loaded(self, name: str, progress: bool) -> None:
        if progress:
            print(f"[popsdask] {CHECKPOINT_PASSES[name]} (from checkpoint {self.root})", flush=True)

    # pass 1 -------------------------------------------------------------------
    def save_evidence(self, stats: Stats, ev: Evidence) -> None:
        values = {f"stats.{k}": v for k, v in vars(stats).items()}
        values.update({f"ev.{k}": v for k, v in vars(ev).items()})
        with self._writing("evidence", values):
            pass

    def load_evidence(self, progress: bool) -> Evidence | None:
        v = self._values("evidence")
        if v is None:
            return None
        self._loaded("evidence", progress)
        return Evidence(
            coef=v["ev.coef"],
            alpha=float(v["ev.alpha"]),
            lambda_=float(v["ev.lambda_"]),
            sigma=v["ev.sigma"],
            n_iter=int(v["ev.n_iter"]),
            eigvals=v["ev.eigvals"],
            eigvecs=v["ev.eigvecs"],
            sse=float(v["ev.sse"]),
            scores=v["ev.scores"],
        )

    # pass 2 -------------------------------------------------------------------
    def save_leverage(self, lev: Leverage) -> None:
        values = {
            "threshold": lev.threshold,
            "min_residual": lev.min_residual,
            "floor": lev.floor,
            "counts": np.asarray(lev.counts, dtype=np.int64),
        }
        with self._writing("leverage", values) as staging:
            (staging / "blocks").mkdir()
            # each block is written where it is held (a worker), 16–24 bytes per row
            writes = [
                delayed(_save_block, pure=False)(b, str(staging / "blocks" / f"{i:06d}.npy"))
                for i, b in enumerate(lev.blocks)
            ]
            compute(*writes)

    def load_leverage(self, progress: bool, blocks: bool = True) -> Leverage | None:
        """Pass 2 from the checkpoint; ``blocks``: also its per-chunk blocks, read once and kept
        on the workers for passes 3–4, as pass 2 leaves them (else ``Leverage.blocks`` is empty)."""
        v = self._values("leverage")
        if v is None:
            return None
        self._loaded("leverage", progress)
        counts = [int(c) for c in v["counts"]]
        paths = [str(self.root / "leverage" / "blocks" / f"{i:06d}.npy") for i in range(len(counts))] if blocks else []
        loaded = persist(*[delayed(_load_block, pure=True)(path) for path in paths]) if paths else ()
        return Leverage(
            list(loaded), float(v["threshold"]), _optional(v["min_residual"]), counts, _optional(v["floor"])
        )

    # pass 3 -------------------------------------------------------------------
    def save_moment(self, moment: Moment) -> None:
        with self._writing("moment", {"inner": moment.inner, "moment": moment.moment}):
            pass

    def save_moment_with_corrections(self, run: Callable[[Path], np.ndarray], a_inv: np.ndarray) -> Moment:
        """Pass 3 of an ``ensemble`` fit: ``run(path)`` streams the corrections to ``path``
        inside the staged group and returns Σ c² xxᵀ; both are committed together."""
        values: dict[str, Any] = {}
        with self._writing("moment", values) as staging:
            inner = run(staging / "corrections")
            values.update(inner=inner, moment=a_inv @ inner @ a_inv)
        return Moment(values["inner"], values["moment"], da.from_zarr(str(self.root / "moment" / "corrections")))

    def load_moment(self, progress: bool) -> Moment | None:
        v = self._values("moment")
        if v is None:
            return None
        self._loaded("moment", progress)
        corr = self.root / "moment" / "corrections"
        return Moment(v["inner"], v["moment"], da.from_zarr(str(corr)) if corr.exists() else None)

    # pass 4 -------------------------------------------------------------------
    def save_bounds(self, bounds: Bounds) -> None:
        with self._writing("bounds", vars(bounds)):
            pass

    def load_bounds(self, progress: bool) -> Bounds | None:
        v = self._values("bounds")
        if v is None:
            return None
        self._loaded("bounds", progress)
        return Bounds(v["basis"], v["lower"], v["upper"])

    def remove(self) -> None:
        """Delete the checkpoint (once the posterior is saved)."""
        shutil.rmtree(self.root, ignore_errors=True)
