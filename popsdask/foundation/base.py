"""The extractor interface: what a foundation model must provide to a linear corrector.

An extractor is a small, picklable description of a model (a frozen dataclass). It is sent to
Dask workers, which load the model once per worker process (:func:`worker_model`) and call
:meth:`Extractor.extract` on batches of structures.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "Extracted",
    "Extractor",
    "worker_model",
    "clear_model_cache",
    "require_torch",
    "tune_malloc",
]


@dataclass
class Extracted:
    """What a model gives for a batch of structures.

    Attributes
    ----------
    descriptors : list of ndarray
        One (n_atoms, n_features) array of per-atom invariant features per structure.
    energy : ndarray of shape (n_structures,)
        The model's own total energy of each structure, in eV.
    """

    descriptors: list[np.ndarray]
    energy: np.ndarray


@runtime_checkable
class Extractor(Protocol):
    """A foundation model seen as a per-atom descriptor map plus its own energy.

    Implementations must be hashable and picklable (frozen dataclasses holding only paths,
    names and options); the model itself is created by :meth:`load` on each worker.
    """

    name: str

    def load(self) -> Any:
        """Load the model (called once per process through :func:`worker_model`)."""
        ...

    def extract(self, model: Any, structures: list[Any]) -> Extracted:
        """Per-atom descriptors and model energies of a batch of ``ase.Atoms``."""
        ...

    def feature_names(self, model: Any) -> list[str]:
        """Names of the descriptor columns."""
        ...

    def describe(self, model: Any) -> dict[str, Any]:
        """JSON-serialisable provenance (model file, version, dtype, options)."""
        ...


_CACHE: dict[Any, tuple[Any, threading.Lock]] = {}
_CACHE_LOCK = threading.Lock()


def worker_model(extractor: Extractor) -> tuple[Any, threading.Lock]:
    """The model of ``extractor`` for this process, loaded on first use.

    Returns the model and a lock to hold while calling it: torch modules are not meant to be
    called from several threads at once, so threads of one worker take turns while separate
    worker processes run in parallel.
    """
    with _CACHE_LOCK:
        entry = _CACHE.get(extractor)
        if entry is None:
            tune_malloc()
            entry = (extractor.load(), threading.Lock())
            _CACHE[extractor] = entry
    return entry


_MALLOC_TUNED = False


def tune_malloc() -> bool:
    """Keep glibc from handing torch's large temporary buffers back to the OS after every call.

    Graph networks allocate and free many large tensors per batch; with glibc's defaults (and
    even more with the ``MALLOC_TRIM_THRESHOLD_=65536`` that Dask's nanny gives its workers)
    each of them is a fresh ``mmap`` whose pages fault in again, which costs as much system
    time as the model's own arithmetic. This sets ``M_MMAP_MAX=0``, ``M_TRIM_THRESHOLD`` =
    256 MiB and ``M_TOP_PAD`` = 64 MiB in the calling process (once; Linux/glibc only), which
    cut CHGNet's CPU time per structure by about a third here. The process keeps up to about
    256 MiB of freed memory for reuse. Set ``POPSDASK_MALLOC_TUNING=0`` to leave malloc alone.

    Returns
    -------
    bool
        Whether the settings were applied (now or earlier).
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return True
    if os.environ.get("POPSDASK_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4
    ok = mallopt(m_trim_threshold, 256 << 20) == 1 and mallopt(m_top_pad, 64 << 20) == 1 and mallopt(m_mmap_max, 0) == 1
    _MALLOC_TUNED = bool(ok)
    return _MALLOC_TUNED


def clear_model_cache() -> None:
    """Forget the models loaded in this process."""
    with _CACHE_LOCK:
        _CACHE.clear()


def require_torch(what: str) -> Any:
    """Import torch or explain how to install the optional extra."""
    try:
        import torch
    except ImportError as err:
        raise ImportError(
            f"{what} needs PyTorch, an optional dependency of popsdask. Install the CPU build "
            "first (pip install torch==2.13.0, CPU wheel), then pip install 'popsdask[foundation]' "
            "(see the README's foundation-model section)"
        ) from err
    return torch


def set_torch_threads(n: int | None) -> None:
    """Limit torch's intra-op threads in this process (None: leave torch's default)."""
    if n is None:
        return
    torch = require_torch("set_torch_threads")
    if torch.get_num_threads() != n:
        torch.set_num_threads(int(n))
