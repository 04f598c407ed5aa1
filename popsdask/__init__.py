"""popsdask: out-of-core POPS regression and misspecification UQ on Dask, Zarr and xarray."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .core.validation import InputError

__version__ = "0.1.0"

# attributes import their module on first use, so that ``popsdask --help`` and input errors of
# the command line do not wait for xarray, scikit-learn and the Dask array stack
_LAZY = {
    "KIND_CODES": ".io.store",
    "open_store": ".io.store",
    "write_store": ".io.store",
    "POPSRegressor": ".engine.estimator",
    "fit": ".engine.estimator",
    "Posterior": ".engine.posterior",
    "predict_ensemble": ".engine.predictions",
}

if TYPE_CHECKING:
    from .engine.estimator import POPSRegressor, fit
    from .engine.posterior import Posterior
    from .engine.predictions import predict_ensemble
    from .io.store import KIND_CODES, open_store, write_store


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "InputError",
    "KIND_CODES",
    "POPSRegressor",
    "Posterior",
    "fit",
    "open_store",
    "predict_ensemble",
    "write_store",
    "__version__",
]
