"""Weighted sufficient statistics of one row block, and how two of them combine.

Every function here takes and returns numpy objects; :mod:`popsdask.engine.passes` maps them over row
chunks and combines the partial results with a tree reduction.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Stats:
    """Sufficient statistics of a weighted least-squares problem over some rows.

    Attributes
    ----------
    gram : (P, P) float64, sum of w x xᵀ
    xty : (P,) float64, sum of w x y
    yty : float, sum of w y²
    n_rows : int
    sw : float, sum of w
    y_mean, y_m2 : weighted mean of y and sum of w (y - mean)², merged with Chan's formula
        so the initial noise precision matches scikit-learn without cancellation.
    """

    gram: np.ndarray
    xty: np.ndarray
    yty: float
    n_rows: int
    sw: float
    y_mean: float
    y_m2: float

    @property
    def y_var(self) -> float:
        return self.y_m2 / self.sw if self.sw > 0 else 0.0


SUB_ROWS = 8192


def float64_blocks(X: np.ndarray, rows: int = SUB_ROWS) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, block)`` row slices of ``X`` as float64.

    float64 input is yielded whole, as a view; other dtypes are cast ``rows`` rows at a time
    into one reused buffer, so a float32 chunk is never copied whole to float64 and no fresh
    memory is faulted in per slice (accumulation stays in float64). A yielded buffer is
    overwritten by the next one: finish with it (or copy it) before advancing.
    """
    X = np.asarray(X)
    if X.dtype == np.float64:
        yield 0, X
        return
    buf = np.empty((min(rows, X.shape[0]),) + X.shape[1:])
    for start in range(0, X.shape[0], rows):
        block = buf[: min(rows, X.shape[0] - start)]
        np.copyto(block, X[start : start + rows], casting="unsafe")
        yield start, block


def block_stats(X: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> Stats:
    """Statistics of one block, accumulated in float64 whatever the input dtype.

    The Gram matrix is formed as (√w X)ᵀ(√w X) so that BLAS can use its symmetric rank-k
    update (half the flops of a general product); weights must be non-negative.
    """
    X = np.asarray(X)
    y = np.asarray(y, dtype=np.float64)
    p = X.shape[1]
    gram = np.zeros((p, p))
    xty = np.zeros(p)
    if w is None:
        wy = y
        sw = float(X.shape[0])
        y_mean = float(y.mean()) if y.size else 0.0
        y_m2 = float(((y - y_mean) ** 2).sum())
        for start, Xb in float64_blocks(X):
            gram += Xb.T @ Xb
            xty += Xb.T @ y[start : start + Xb.shape[0]]
    else:
        w = np.asarray(w, dtype=np.float64)
        sqw = np.sqrt(w)
        wy = w * y
        sw = float(w.sum())
        y_mean = float(wy.sum() / sw) if sw > 0 else 0.0
        y_m2 = float((w * (y - y_mean) ** 2).sum())
        for start, Xb in float64_blocks(X):
            xty += Xb.T @ wy[start : start + Xb.shape[0]]
            fresh = not np.shares_memory(Xb, X)  # a cast copy may be scaled in place
            for s2 in range(0, Xb.shape[0], SUB_ROWS):
                rows = slice(start + s2, start + s2 + SUB_ROWS)
                if fresh:
                    Xs = Xb[s2 : s2 + SUB_ROWS]
                    Xs *= sqw[rows, None]
                else:
                    Xs = Xb[s2 : s2 + SUB_ROWS] * sqw[rows, None]
                gram += Xs.T @ Xs
    return Stats(
        gram=gram,
        xty=xty,
        yty=float(wy @ y),
        n_rows=int(X.shape[0]),
        sw=sw,
        y_mean=y_mean,
        y_m2=y_m2,
    )


def combine_stats(a: Stats, b: Stats) -> Stats:
    """Merge two partial statistics (associative, so any tree order is valid)."""
    sw = a.sw + b.sw
    if sw > 0:
        delta = b.y_mean - a.y_mean
        y_mean = a.y_mean + delta * b.sw / sw
        y_m2 = a.y_m2 + b.y_m2 + delta * delta * a.sw * b.sw / sw
    else:
        y_mean, y_m2 = 0.0, 0.0
    return Stats(
        gram=a.gram + b.gram,
        xty=a.xty + b.xty,
        yty=a.yty + b.yty,
        n_rows=a.n_rows + b.n_rows,
        sw=sw,
        y_mean=y_mean,
        y_m2=y_m2,
    )


def block_residual_stats(
    X: np.ndarray, y: np.ndarray, w: np.ndarray | None, coef: np.ndarray
) -> tuple[float, np.ndarray]:
    """Exact weighted residual sum of squares and Xᵀ W r at ``coef`` for one block.

    Used to refine the evidence iteration when yᵀWy - 2 bᵀθ + θᵀGθ cancels catastrophically
    (near-interpolating fits, the low-noise regime POPS is made for).
    """
    X = np.asarray(X, dtype=np.float64)
    r = np.asarray(y, dtype=np.float64) - X @ coef
    wr = r if w is None else np.asarray(w, dtype=np.float64) * r
    return float(wr @ r), X.T @ wr


def combine_sum(a: tuple[Any, ...], b: tuple[Any, ...]) -> tuple[Any, ...]:
    """Element-wise sum of two tuples of partial sums."""
    return tuple(x + y for x, y in zip(a, b, strict=True))
