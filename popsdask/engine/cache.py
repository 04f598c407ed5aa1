"""The pass-1 cache: sufficient statistics and evidence of recent fits, by the design's identity."""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np


class StatisticsCache:
    """Pass 1 (and the evidence maximisation) of recent fits, by :attr:`Design.key`.

    POPS settings (leverage_percentile, minimum_relative_error, mode_threshold,
    percentile_clipping, posterior) only change passes 2–4, so a search over them on one
    training fold needs the Gram pass once. Entries are keyed by the design's identity (dask
    names, or SHA-256 of in-memory arrays, plus the row chunks and ``fit_intercept``), so an
    entry is only ever used for the same rows chunked the same way, and a reused fit is
    bit-identical to a fresh one. A design without a key is never cached.

    Least recently used entries are dropped beyond ``maxsize`` entries or ``max_bytes`` of
    arrays. Thread-safe; concurrent fits of one key compute pass 1 once (the others wait), as
    when a threaded dask-ml search fits several settings of one fold at the same time.
    Values are copied in and out, so a caller that edits a fitted attribute in place cannot
    change a later fit.
    """

    def __init__(self, maxsize: int = 16, max_bytes: int = 512 * 2**20) -> None:
        self.maxsize, self.max_bytes = maxsize, max_bytes
        self._entries: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()  # key: (value, bytes)
        self._lock = threading.Lock()
        self._key_locks: dict[tuple, threading.Lock] = {}
        self.hits = self.misses = 0

    def get_or_compute(self, key: tuple, make: Callable[[], Any]) -> tuple[Any, bool]:
        """The cached value of ``key`` (a copy) and True, or ``make()`` cached and False."""
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._entries:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return copy.deepcopy(self._entries[key][0]), True
                self.misses += 1
            try:
                value = make()
            except BaseException:
                with self._lock:
                    self._key_locks.pop(key, None)
                raise
            size = _nbytes(value)
            with self._lock:
                self._entries[key] = (copy.deepcopy(value), size)
                while self._entries and (
                    len(self._entries) > self.maxsize or sum(n for _, n in self._entries.values()) > self.max_bytes
                ):
                    old, _ = self._entries.popitem(last=False)
                    self._key_locks.pop(old, None)
            return value, False

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._key_locks.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)


def _nbytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, tuple):  # e.g. pass 1's (statistics, chunk checksums)
        return sum(_nbytes(v) for v in value)
    return sum(v.nbytes for v in vars(value).values() if isinstance(v, np.ndarray))


#: the process's pass-1 cache (each distributed worker process has its own)
STATISTICS_CACHE = StatisticsCache()
