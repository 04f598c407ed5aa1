"""Batches → parts → write: the shape shared by the store builders.

A builder cuts its input into batches (:func:`batch_spans`) and computes one *part* per batch on
the workers: an ``.npz`` file (:func:`popsdask.atomistic.build_descriptor_store`, so that a
re-run reuses it) or a result persisted where it was computed
(:func:`popsdask.foundation.build_store`). :class:`Parts` then writes the store from them: the
small per-row columns are gathered to the client and concatenated, while ``X`` is stacked
lazily, one chunk per part, each read by the task that writes it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np

from ..io.store import write_store
from .execution import compute

__all__ = ["Parts", "batch_spans", "read_npz"]

#: ``read(part, names)``: the named arrays of one part (a module-level function: tasks pickle it)
Reader = Callable[[Any, Sequence[str]], dict[str, np.ndarray]]


def batch_spans(n: int, size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of consecutive batches of at most ``size`` of ``n`` items."""
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def read_npz(path: str | os.PathLike, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The named arrays of an ``.npz`` part file."""
    with np.load(path) as z:
        return {k: z[k] for k in names}


def _columns(read: Reader, part: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
    return read(part, names)


def _block(read: Reader, part: Any, name: str, dtype: Any) -> np.ndarray:
    return read(part, (name,))[name].astype(dtype, copy=False)


@dataclass
class Parts:
    """The per-batch parts of a store being built, in row order.

    Parameters
    ----------
    handles : one per part: a file path, or a (persisted) Dask object holding the part
    read : ``read(handle, names) -> {name: array}``, run where the part is
    """

    handles: Sequence[Any]
    read: Reader

    def columns(self, names: Sequence[str], *, label: str = "") -> tuple[dict[str, np.ndarray], list[int]]:
        """The columns ``names`` of every part concatenated in part order (on the client), and
        each part's length of the first of them (its rows, for per-row columns)."""
        names = tuple(names)
        per_part = compute(*[dask.delayed(_columns)(self.read, h, names) for h in self.handles], label=label)
        cat = {k: np.concatenate([p[k] for p in per_part]) for k in names}
        return cat, [int(p[names[0]].shape[0]) for p in per_part]

    def rows(self, n_rows: Sequence[int], n_features: int, dtype: Any = np.float64, name: str = "X") -> da.Array:
        """Array ``name`` of the parts as one lazy (sum(n_rows), n_features) array, a chunk per part."""
        return da.concatenate(
            [
                da.from_delayed(dask.delayed(_block)(self.read, h, name, dtype), shape=(n, n_features), dtype=dtype)
                for h, n in zip(self.handles, n_rows, strict=True)
            ],
            axis=0,
        )

    def write(
        self, path: str | os.PathLike, y: Any, n_rows: Sequence[int], n_features: int, dtype: Any = np.float64, **store
    ) -> Path:
        """:func:`popsdask.write_store` of the parts' ``X`` (streamed part by part) and ``y``."""
        return write_store(path, self.rows(n_rows, n_features, dtype), y, **store)
