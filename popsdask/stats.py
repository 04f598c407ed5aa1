"""Weighted sufficient statistics of one row block, and how two of them combine.

Every function here takes and returns numpy objects; :mod:`popsdask.passes` maps them over row
chunks and combines the partial results with a tree reduction.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def block_stats(X: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> Stats:
    """Statistics of one block, accumulated in float64 whatever the input dtype."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if w is None:
        Xw = X
        wy = y
        sw = float(X.shape[0])
        y_mean = float(y.mean()) if y.size else 0.0
        y_m2 = float(((y - y_mean) ** 2).sum())
    else:
        w = np.asarray(w, dtype=np.float64)
        Xw = X * w[:, None]
        wy = w * y
        sw = float(w.sum())
        y_mean = float(wy.sum() / sw) if sw > 0 else 0.0
        y_m2 = float((w * (y - y_mean) ** 2).sum())
    return Stats(
        gram=Xw.T @ X,
        xty=X.T @ wy,
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


def combine_sum(a, b):
    """Element-wise sum of two tuples of partial sums."""
    return tuple(x + y for x, y in zip(a, b, strict=True))
