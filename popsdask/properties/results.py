"""Property result stores: written atomically, read back whole.

Both routes (:mod:`.runner`'s brute-force resampling and :mod:`.implicit`) write every result
Dataset — a (member, property) part or a combined ``<property>.zarr`` — with
:func:`write_results`, through :func:`popsdask.io.store.atomic_group`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import xarray as xr

from ..io.store import atomic_group

__all__ = ["open_results", "write_results"]


def write_results(ds: xr.Dataset, path: str | os.PathLike) -> None:
    """Write ``ds`` atomically to ``path`` (staged, marked complete, renamed into place; replaces)."""
    with atomic_group(path, overwrite=True, settle=0.0, attempts=2) as staging, warnings.catch_warnings():
        # fixed-width unicode has no Zarr v3 spec yet; xarray reads it back
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
        ds.to_zarr(staging, mode="w", zarr_format=3, consolidated=False)


def open_results(store_path: str | os.PathLike, prop: str) -> xr.Dataset:
    """The combined results Dataset of one property."""
    return xr.open_zarr(Path(store_path) / f"{prop}.zarr", consolidated=False).load()
