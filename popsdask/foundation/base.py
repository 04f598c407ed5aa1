"""The extractor interface: what a foundation model must provide to a linear corrector.

An extractor is a small, picklable description of a model (a frozen dataclass). It is sent to
Dask workers, which load the model once per worker process (:func:`worker_model`) and call
:meth:`Extractor.extract` on batches of structures.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Extracted", "Extractor", "worker_model", "clear_model_cache", "require_torch"]


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
            entry = (extractor.load(), threading.Lock())
            _CACHE[extractor] = entry
    return entry


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
