"""The settings of a POPS fit and the result of each pass, as the passes hand them on (and as
a checkpoint stores them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np

from ..core.stats import Stats


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


@dataclass
class Pass1:
    """Pass 1's result: the statistics of all the design's rows, the checksum of every chunk it
    read and how many rows it read (fewer than all when a posterior's statistics covered some)."""

    stats: Stats
    checksums: np.ndarray
    rows_read: int


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
