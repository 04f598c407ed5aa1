"""popsdask: out-of-core POPS regression and misspecification UQ on Dask, Zarr and xarray."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .core.lazy import lazy_attributes
from .core.validation import InputError

__version__ = "0.1.0"

# attributes import their module on first use, so that ``popsdask --help`` and input errors of
# the command line do not wait for xarray, scikit-learn and the Dask array stack
_LAZY = {
    "KIND_CODES": ".io.store",
    "open_store": ".io.store",
    "write_store": ".io.store",
    "POPSRegressor": ".engine.regressor",
    "fit": ".engine.estimator",
    "Posterior": ".engine.posterior",
    "predict_ensemble": ".engine.predictions",
}

if TYPE_CHECKING:
    from .engine.estimator import fit
    from .engine.posterior import Posterior
    from .engine.predictions import predict_ensemble
    from .engine.regressor import POPSRegressor
    from .io.store import KIND_CODES, open_store, write_store


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)


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
