"""Seeded train/test split by configuration (never by row), stratified by group."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from .._validate import InputError

__all__ = ["SPLIT_CODES", "select_split", "split_configurations"]

SPLIT_CODES = {"train": 0, "test": 1}


def split_configurations(
    n_configurations: int,
    *,
    test_fraction: float = 0.25,
    seed: int = 0,
    groups: Any = None,
) -> np.ndarray:
    """Assign each configuration to train (0) or test (1).

    Within each group (all configurations when ``groups`` is None) a seeded permutation puts
    ``round(test_fraction * size)`` configurations in the test set, at least one when the
    group has two or more, and never all of them.

    Returns
    -------
    (n_configurations,) int8 array of :data:`SPLIT_CODES`
    """
    if not 0.0 <= test_fraction < 1.0:
        raise InputError(f"test_fraction={test_fraction}: must be in [0, 1)")
    g = (
        np.zeros(n_configurations, dtype=int)
        if groups is None
        else np.unique(np.asarray(groups).astype(str), return_inverse=True)[1]
    )
    if len(g) != n_configurations:
        raise InputError(f"groups has {len(g)} entries for {n_configurations} configurations")
    rng = np.random.default_rng(seed)
    split = np.zeros(n_configurations, dtype=np.int8)
    for k in np.unique(g):
        members = np.flatnonzero(g == k)
        n_test = int(round(test_fraction * members.size))
        if test_fraction > 0 and members.size >= 2:
            n_test = min(max(n_test, 1), members.size - 1)
        split[rng.permutation(members)[:n_test]] = SPLIT_CODES["test"]
    return split


def select_split(ds: xr.Dataset, which: str) -> xr.Dataset:
    """Rows of the ``train`` or ``test`` configurations of a store built by popsdask.atomistic."""
    if which not in SPLIT_CODES:
        raise InputError(f"split {which!r}: use one of {list(SPLIT_CODES)}")
    if "split" not in ds:
        raise InputError(f"{ds.attrs.get('source', '<dataset>')}: no per-configuration 'split'")
    split = np.asarray(ds["split"].values)
    rows = np.flatnonzero(split[np.asarray(ds["config"].values)] == SPLIT_CODES[which])
    if rows.size == 0:
        raise InputError(f"{ds.attrs.get('source', '<dataset>')}: no {which} rows")
    out = ds.isel(row=rows)
    out.attrs["source"] = f"{ds.attrs.get('source', '<dataset>')}[{which}]"
    return out
