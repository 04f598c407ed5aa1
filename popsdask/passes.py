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
import operator
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.delayed import Delayed, delayed

from ._validate import InputError, check_finite_block
from .chunkread import chunk_refs, load
from .evidence import Evidence, EvidenceParams, SSEAnchor, maximise_evidence, needs_refinement
from .pops import (
    LEVERAGE_FLOOR,
    block_correction_moment,
    block_corrections,
    block_leverage,
    block_projection_range,
    block_projections,
    combine_range,
    hypercube_second_moment,
    leverage_factor,
    leverage_threshold,
    principal_basis,
    relative_error_cutoff,
    selected_rows,
)
from .posterior import Posterior, provenance
from .runtime import current_client
from .stats import Stats, block_residual_stats, block_stats, combine_stats, combine_sum
from .store import default_chunk_rows, open_store

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
    chunk and pass instead of a read task whose 64 MiB result waits in worker memory."""

    @functools.wraps(func)
    def task(*args: Any, **kwargs: Any) -> Any:
        return func(*(load(a) for a in args), **kwargs)

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
    """:func:`popsdask.runtime.current_client` (the one client lookup; kept under this name),
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
) -> tuple[Posterior, Evidence]:
    """:func:`fit_pops`, also returning the evidence maximisation (its ``scores`` are the log
    marginal likelihood per iteration when ``compute_score``)."""
    settings = settings or PopsSettings()
    evidence = evidence or EvidenceParams()
    n, p = design.n_rows, design.n_features
    if n < p:
        raise InputError(
            f"{design.source}: {n} rows (n_samples = {n}) but {p} features; "
            "POPS needs at least as many rows as features"
        )
    _, ev = statistics_and_evidence(design, evidence, progress=progress, reuse=reuse_statistics)

    a_inv = ev.a_inv
    coef_d, ainv_d = delayed(ev.coef, pure=True), delayed(a_inv, pure=True)
    blocks = design.blocks()
    factor_d = delayed(leverage_factor(a_inv), pure=True)
    shared = _tasks_share_a_process()
    by_residual = settings.minimum_relative_error is not None
    floor = LEVERAGE_FLOOR if by_residual else None
    hc = [
        delayed(_reading(block_leverage), pure=True)(
            xb, yb, wb, coef_d, ainv_d, factor_d, release_gil=shared, leverage_floor=floor
        )
        for xb, yb, wb in blocks
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
    n_sel = sum(counts)
    del h, h_parts

    moment_parts = [
        delayed(_reading(block_correction_moment), pure=True)(xb, b, threshold, min_residual)
        for (xb, _, _), b in zip(blocks, hc, strict=True)
    ]
    moment_task = tree_reduce(moment_parts, operator.add, "moment")
    corrections = None
    if settings.posterior == "ensemble":
        corr = da.concatenate(
            [
                da.from_delayed(
                    delayed(_reading(block_corrections), pure=True)(xb, b, threshold, ainv_d, min_residual),
                    shape=(c, p),
                    dtype=np.float64,
                )
                for (xb, _, _), b, c in zip(blocks, hc, counts, strict=True)
            ]
        ).rechunk((max(1, min(n_sel, default_chunk_rows(p))), p))
        if corrections_path is None:
            raise ValueError("the ensemble posterior needs corrections_path to stream corrections to")
        write = da.to_zarr(corr, str(corrections_path), compute=False, zarr_format=3, overwrite=True)
        inner, _ = compute(moment_task, write, label="pass 3/4: corrections → Zarr", progress=progress)
        corrections = da.from_zarr(str(corrections_path))
    else:
        (inner,) = compute(moment_task, label="pass 3/4: correction moment", progress=progress)
    moment = a_inv @ inner @ a_inv

    basis = lower = upper = None
    if settings.posterior == "ensemble":
        mis_sigma = moment / n_sel
    else:
        basis, _ = principal_basis(moment, settings.mode_threshold)
        basis = _fix_signs(basis)
        proj_d = delayed(a_inv @ basis, pure=True)
        if settings.percentile_clipping > 0:
            lower, upper = _projection_percentiles(
                blocks,
                hc,
                counts,
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
                for (xb, _, _), b in zip(blocks, hc, strict=True)
            ]
            ((lower, upper),) = compute(
                tree_reduce(parts, combine_range, "bounds"), label="pass 4/4: hypercube bounds", progress=progress
            )
        mis_sigma = hypercube_second_moment(basis, lower, upper)

    post = Posterior(
        coef_=ev.coef,
        sigma_=ev.sigma,
        alpha_=ev.alpha,
        lambda_=ev.lambda_,
        misspecification_sigma_=mis_sigma,
        kind=settings.posterior,
        basis_=basis,
        lower_=lower,
        upper_=upper,
        corrections_=corrections,
        leverage_threshold_=threshold,
        n_rows_=n,
        n_selected_=n_sel,
        n_iter_=ev.n_iter,
        condition_number_=ev.condition_number,
        feature_names=design.feature_names,
        settings={
            **vars(settings),
            **vars(evidence),
            # the minimum_relative_error selection as applied (None when off or all rows kept)
            "leverage_floor": floor,
            "residual_threshold": min_residual,
        },
        provenance=provenance(design.source),
    )
    return post, ev


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
