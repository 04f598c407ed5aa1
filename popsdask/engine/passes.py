"""The four passes of a POPS fit over the row chunks of a design matrix.

1. sufficient statistics (tree reduction of P × P partials);
   (1b. an exact residual pass, only when the Gram route would lose digits to cancellation);
2. leverage h and correction scale c per row (kept on the workers; h gathered for the exact
   percentile: N scalars); with ``minimum_relative_error`` also the weighted residual per row
   (kept on the workers; one Σ wᵢeᵢ² per chunk gathered for the RMSE, then one count per chunk);
3. second moment of the kept corrections (tree reduction), and for ``ensemble`` the corrections
   themselves, streamed to Zarr;
4. hypercube bounds: min/max (tree reduction) or exact percentiles of the projections.

All numerics are the numpy functions of :mod:`stats`, :mod:`evidence` and :mod:`pops`; this
module only maps them over blocks, and :mod:`execution` runs them (on the current Dask client
when there is one, else on Dask's threaded scheduler).
"""

from __future__ import annotations

import dataclasses
import operator
import os
from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np
from dask.delayed import delayed

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
from ..io.store import default_chunk_rows
from .cache import STATISTICS_CACHE
from .checkpoint import Checkpoint, block_checksum
from .design import Design, reading
from .execution import compute, persist, tasks_share_a_process, tree_reduce
from .state import Bounds, Leverage, Moment, Pass1, PopsSettings


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


def _stats_and_checksum(X, y, w, *, start: int, source: str) -> tuple[Stats, int]:
    """Pass 1 of one chunk: its statistics, and its checksum while its bytes are in memory."""
    return _checked_stats(X, y, w, start=start, source=source), block_checksum(X, y, w)


def statistics_pass(design: Design, *, progress: bool = False) -> Pass1:
    """Pass 1: G, XᵀWy, yᵀWy, Σw by a tree reduction over the row chunks of
    :attr:`Design.unread` (combined with :attr:`Design.known` when a posterior's statistics
    cover the first rows), and the :func:`~popsdask.engine.checkpoint.block_checksum` of every
    chunk read (a resumed fit compares them)."""
    read = design.unread
    pairs = [
        delayed(reading(_stats_and_checksum), pure=True, nout=2)(xb, yb, wb, start=s, source=read.source)
        for (xb, yb, wb), s in zip(read.blocks(), read.row_starts, strict=True)
    ]
    gram = tree_reduce([part for part, _ in pairs], combine_stats, "gram")
    label = "pass 1/4: Gram" if design.known is None else f"pass 1/4: Gram of the {read.n_rows} added rows"
    stats, *checksums = compute(gram, *[crc for _, crc in pairs], label=label, progress=progress)
    rows_read = stats.n_rows
    if design.known is not None:
        stats = combine_stats(design.known, stats)
    if stats.sw <= 0:
        raise InputError(f"{design.source}: all weights are zero")
    return Pass1(stats, np.asarray(checksums, dtype=np.int64), rows_read)


def sufficient_statistics(design: Design, *, progress: bool = False) -> Stats:
    """Pass 1's statistics (:func:`statistics_pass`)."""
    return statistics_pass(design, progress=progress).stats


def statistics_and_evidence(
    design: Design, evidence: EvidenceParams, *, progress: bool = False, reuse: bool = False
) -> tuple[Pass1, Evidence]:
    """Pass 1 (:func:`statistics_pass`), the evidence maximisation and (when needed) pass 1b,
    from :data:`STATISTICS_CACHE` when ``reuse`` and the design has a key (see
    :class:`StatisticsCache`)."""

    if not reuse or design.key is None:
        first = statistics_pass(design, progress=progress)
        return first, _evidence(design, first.stats, evidence, progress)
    cache = STATISTICS_CACHE
    first, hit = cache.get_or_compute(("stats", design.key), lambda: statistics_pass(design, progress=progress))
    if hit:
        first = dataclasses.replace(first, rows_read=0)  # this fit read none
        if progress:
            print("[popsdask] pass 1/4: Gram (reused)", flush=True)
    # the evidence (and pass 1b) depend on the BayesianRidge parameters too
    ev_key = ("evidence", design.key, tuple(sorted(vars(evidence).items())))
    ev, _ = cache.get_or_compute(ev_key, lambda: _evidence(design, first.stats, evidence, progress))
    return first, ev


def _evidence(design: Design, stats: Stats, evidence: EvidenceParams, progress: bool) -> Evidence:
    ev = maximise_evidence(stats, evidence)
    if needs_refinement(stats, ev):
        coef_d = delayed(ev.coef, pure=True)
        parts = [
            delayed(reading(block_residual_stats), pure=True)(xb, yb, wb, coef_d) for xb, yb, wb in design.blocks()
        ]
        (res,) = compute(
            tree_reduce(parts, combine_sum, "residual"), label="pass 1b: exact residuals", progress=progress
        )
        ev = maximise_evidence(stats, evidence, SSEAnchor(ev.coef, res[0], res[1]), (ev.eigvals, ev.eigvecs))
    return ev


def leverage_pass(design: Design, ev: Evidence, settings: PopsSettings, progress: bool = False) -> Leverage:
    """Pass 2: leverage h and correction scale c per row (kept on the workers), h gathered for
    the exact percentile; with ``minimum_relative_error`` the residual cutoff and one count of
    kept rows per chunk."""
    n = design.n_rows
    a_inv = ev.a_inv
    coef_d, ainv_d = delayed(ev.coef, pure=True), delayed(a_inv, pure=True)
    factor_d = delayed(leverage_factor(a_inv), pure=True)
    shared = tasks_share_a_process()
    relative_error = settings.minimum_relative_error
    by_residual = relative_error is not None
    floor = LEVERAGE_FLOOR if by_residual else None
    hc = [
        delayed(reading(block_leverage), pure=True)(
            xb, yb, wb, coef_d, ainv_d, factor_d, release_gil=shared, leverage_floor=floor
        )
        for xb, yb, wb in design.blocks()
    ]
    hc = list(persist(*hc))
    min_residual = None
    if relative_error is not None:
        parts = compute(
            *[delayed(_leverage_and_sum_sq, pure=True)(b) for b in hc], label="pass 2/4: leverage", progress=progress
        )
        h_parts: Sequence[Any] = [hb for hb, _ in parts]
        # exact Σ wᵢeᵢ² from the residuals of pass 2 (the Gram's sse may have lost digits)
        min_residual = relative_error_cutoff(sum(ss for _, ss in parts), n, relative_error)
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
        delayed(reading(block_correction_moment), pure=True)(xb, b, threshold, min_residual)
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
                delayed(reading(block_corrections), pure=True)(xb, b, threshold, ainv_d, min_residual),
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
            delayed(reading(block_projection_range), pure=True)(xb, b, threshold, proj_d, min_residual)
            for (xb, _, _), b in zip(blocks, lev.blocks, strict=True)
        ]
        ((lower, upper),) = compute(
            tree_reduce(parts, combine_range, "bounds"), label="pass 4/4: hypercube bounds", progress=progress
        )
    return Bounds(basis, lower, upper)


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
                delayed(reading(block_projections), pure=True)(xb, b, threshold, proj_d, min_residual),
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
