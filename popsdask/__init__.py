"""popsdask: out-of-core POPS regression and misspecification UQ on Dask, Zarr and xarray."""

from ._validate import InputError
from .ensemble import predict_ensemble
from .estimator import POPSRegressor, fit
from .posterior import Posterior
from .store import KIND_CODES, open_store, write_store

__version__ = "0.1.0"

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
