"""What a pass reads: the rows of one regression problem as row-chunked dask arrays
(:class:`Design`), their identity for the pass-1 cache, and the per-chunk blocks the passes map
over (read in the task that uses them)."""

from __future__ import annotations

import functools
import hashlib
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ..core.stats import Stats
from ..core.validation import InputError
from ..io.chunkread import chunk_refs, load
from ..io.store import default_chunk_rows, open_store


@dataclass
class Design:
    """Row-chunked dask arrays of one regression problem (one chunk along ``feature``).

    A design of several inputs (:func:`concatenate_designs`) lists them in ``parts``, whose blocks
    it reads in turn; ``known`` holds pass 1's statistics of its first part when they come from
    a posterior, so that pass 1 reads only the other parts."""

    X: da.Array
    y: da.Array | None
    weight: da.Array | None
    source: str
    feature_names: list[str]
    #: identity of the rows as chunked here (dask names, or content hashes of in-memory
    #: inputs); None when unknown. Equal keys mean equal data and chunks, so pass 1 is reusable.
    key: str | None = None
    #: whether the last column is the appended constant (``fit_intercept``)
    fit_intercept: bool = False
    #: the store's attributes (how its descriptors were made); empty for arrays
    attrs: dict[str, Any] = field(default_factory=dict)
    parts: tuple[Design, ...] = ()
    known: Stats | None = None

    @property
    def n_rows(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])

    @property
    def row_starts(self) -> list[int]:
        return [int(s) for s in np.cumsum((0,) + self.X.chunks[0][:-1])]

    @property
    def unread(self) -> Design:
        """The rows pass 1 reads: all of them, or the parts after the first when ``known``."""
        if self.known is None:
            return self
        rest = list(self.parts[1:])
        return rest[0] if len(rest) == 1 else concatenate_designs(rest)

    def blocks(self) -> list[tuple[Any, Any, Any]]:
        """(X, y, weight) blocks, one per row chunk: delayed blocks, or :class:`ChunkRef` for
        chunks of a store read as raw files by the task that uses them."""
        if self.parts:
            return [b for part in self.parts for b in part.blocks()]
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
def reading(func: Callable) -> Callable:
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
    h.update(np.ascontiguousarray(arr).view(np.uint8).reshape(-1).data)
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
    attrs: dict[str, Any] = {}
    if isinstance(data, (str, os.PathLike)):
        data = open_store(data, require_y=require_y)
    if isinstance(data, xr.Dataset):
        source = str(data.attrs.get("source", "<dataset>"))
        attrs = dict(data.attrs)
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
    arrays: dict[str, Any] = {}
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
    return Design(X, arrays["y"], arrays["weight"], source, names, key, fit_intercept, attrs)


def concatenate_designs(parts: list[Design], known: Stats | None = None) -> Design:
    """The rows of ``parts`` in order as one design (each keeps its chunks and weights; a part
    without weights weighs 1); ``known``: pass 1's statistics of ``parts[0]``."""
    first = parts[0]
    weight = None
    if any(d.weight is not None for d in parts):
        weight = da.concatenate(
            [d.weight if d.weight is not None else da.ones(d.n_rows, chunks=(d.X.chunks[0],)) for d in parts]
        )
    y = da.concatenate([d.y for d in parts]) if all(d.y is not None for d in parts) else None
    return Design(
        X=da.concatenate([d.X for d in parts]),
        y=y,
        weight=weight,
        source=" + ".join(d.source for d in parts),
        feature_names=first.feature_names,
        fit_intercept=first.fit_intercept,
        attrs=first.attrs,
        parts=tuple(parts),
        known=known,
    )
