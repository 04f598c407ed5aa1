"""Batches → parts → write: the shape shared by the store builders.

A builder cuts its input into batches (:func:`batch_spans`) and computes one *part* per batch on
the workers: an ``.npz`` file (:func:`popsdask.atomistic.build_descriptor_store`, so that a
re-run reuses it) or a result persisted where it was computed
(:func:`popsdask.foundation.build_store`). :class:`Parts` then writes the store from them: any
array of the parts, or a function of their columns, stacks lazily in the store's own chunks,
each read from the parts it covers by the task that writes it. A store of millions of rows in
tens of thousands of parts is then a graph of a few tasks per chunk, and passes through the
client only as the parts' summaries (:meth:`Parts.gather`).
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

from ..io.store import store_chunk_rows, write_store
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


def _apply(read: Reader, part: Any, names: Sequence[str], func: Callable[..., Any] | None, args: Sequence[Any]) -> Any:
    cols = read(part, names)
    return cols if func is None else func(cols, *args)


def _apply_each(
    read: Reader, parts: Sequence[tuple[Any, Sequence[Any]]], names: Sequence[str], func: Callable[..., Any] | None
) -> list[Any]:
    return [_apply(read, part, names, func, args) for part, args in parts]


def _chunk(
    read: Reader,
    pieces: Sequence[tuple[Any, Sequence[Any], int, int]],
    names: Sequence[str],
    func: Callable[..., np.ndarray] | None,
    dtype: Any,
) -> np.ndarray:
    """Rows ``[start, stop)`` of each piece's part (its column ``names[0]``, or ``func`` of its
    columns), stacked: one chunk of the store."""
    blocks = []
    for part, args, start, stop in pieces:
        out = _apply(read, part, names, func, args)
        blocks.append((out[names[0]] if func is None else out)[start:stop])
    return np.concatenate(blocks).astype(dtype, copy=False)


def _chunk_pieces(n_rows: Sequence[int], chunk_rows: int) -> list[list[tuple[int, int, int]]]:
    """Per chunk of ``chunk_rows`` rows: the (part, start, stop) row ranges of the parts it covers."""
    bounds = np.concatenate([[0], np.cumsum(n_rows, dtype=np.int64)])
    out = []
    for c0 in range(0, int(bounds[-1]), chunk_rows):
        c1 = min(c0 + chunk_rows, int(bounds[-1]))
        first = int(np.searchsorted(bounds, c0, side="right")) - 1
        last = int(np.searchsorted(bounds, c1, side="left"))
        out.append(
            [
                (i, max(c0, int(bounds[i])) - int(bounds[i]), min(c1, int(bounds[i + 1])) - int(bounds[i]))
                for i in range(first, last)
                if bounds[i + 1] > bounds[i]
            ]
        )
    return out


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

    def gather(
        self,
        names: Sequence[str],
        func: Callable[..., Any] | None = None,
        args: Sequence[Sequence[Any]] | None = None,
        *,
        label: str = "",
        parts_per_task: int = 64,
    ) -> list[Any]:
        """Per part, ``func({name: array}, *args[i])`` of its columns ``names`` (the columns
        themselves without ``func``), computed where the parts are, ``parts_per_task`` parts to a
        task, and returned in part order."""
        names = tuple(names)
        items = list(zip(self.handles, args if args is not None else [()] * len(self.handles), strict=True))
        tasks = [
            dask.delayed(_apply_each)(self.read, items[a:b], names, func)
            for a, b in batch_spans(len(items), parts_per_task)
        ]
        return [out for group in compute(*tasks, label=label) for out in group]

    def columns(self, names: Sequence[str], *, label: str = "") -> tuple[dict[str, np.ndarray], list[int]]:
        """The columns ``names`` of every part concatenated in part order (on the client), and
        each part's length of the first of them (its rows, for per-row columns)."""
        names = tuple(names)
        per_part = self.gather(names, label=label)
        cat = {k: np.concatenate([p[k] for p in per_part]) for k in names}
        return cat, [int(p[names[0]].shape[0]) for p in per_part]

    def stacked(
        self,
        n_rows: Sequence[int],
        chunk_rows: int,
        names: Sequence[str],
        func: Callable[..., np.ndarray] | None = None,
        args: Sequence[Sequence[Any]] | None = None,
        *,
        dtype: Any = np.float64,
        width: int | None = None,
    ) -> da.Array:
        """The parts' rows as one lazy array in chunks of ``chunk_rows`` rows.

        Parameters
        ----------
        n_rows : rows of each part
        chunk_rows : rows per chunk (the store's: each chunk is written by the task reading it)
        names : the column to stack (``names[0]``), or the columns ``func`` reads
        func : ``func({name: array}, *args[i]) -> (n_rows[i], ...)`` of part ``i``
        args : per part, the extra arguments of ``func``
        dtype : the array's type
        width : columns of a 2-D array (``X``); None for a 1-D one

        Returns
        -------
        dask array of shape (sum(n_rows),) or (sum(n_rows), width)
        """
        names = tuple(names) if func is not None else tuple(names)[:1]  # a column alone: read only it
        args = args if args is not None else [()] * len(self.handles)
        chunks = []
        for pieces in _chunk_pieces(n_rows, chunk_rows):
            given = [(self.handles[i], args[i], a, b) for i, a, b in pieces]
            n = sum(b - a for _, a, b in pieces)
            shape = (n,) if width is None else (n, width)
            task = dask.delayed(_chunk)(self.read, given, names, func, dtype)
            chunks.append(da.from_delayed(task, shape=shape, dtype=dtype))
        return da.concatenate(chunks, axis=0)

    def write(
        self,
        path: str | os.PathLike,
        y: Any,
        n_rows: Sequence[int],
        n_features: int,
        dtype: Any = np.float64,
        chunk_rows: int | None = None,
        **store: Any,
    ) -> Path:
        """:func:`popsdask.write_store` of the parts' ``X`` (streamed chunk by chunk) and ``y``."""
        rows = store_chunk_rows(chunk_rows, sum(n_rows), n_features, dtype)
        X = self.stacked(n_rows, rows, ("X",), dtype=dtype, width=n_features)
        return write_store(path, X, y, chunk_rows=rows, **store)
