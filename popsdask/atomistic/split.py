"""Seeded train/test split by configuration (never by row), stratified by group."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.validation import InputError
from ..io.store import SPLIT_CODES, select_split

__all__ = ["SPLIT_CODES", "select_split", "split_configurations"]  # select_split lives in the core


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
