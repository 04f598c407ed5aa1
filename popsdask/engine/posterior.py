"""The fitted POPS posterior: sampling, and save/load as a Zarr group."""

from __future__ import annotations

import datetime as _dt
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from ..core.kinds import PosteriorKind, posterior_kind
from ..core.stats import Stats
from ..core.validation import InputError
from ..io.store import atomic_group, check_safe_group, is_complete
from .schema import check_posterior_dataset

POSTERIOR_FORMAT = "popsdask.posterior/1"
DEFAULT_N_SAMPLES = 500


@dataclass
class FittedRows:
    """Pass 1's statistics of the rows a posterior was fitted to, and which inputs those rows
    are, so that a later fit adds rows without reading these in pass 1 (``previous`` of
    :func:`popsdask.fit`).

    Attributes
    ----------
    stats : the weighted Gram XᵀWX (P, P), XᵀWy (P,), yᵀWy, row count, Σw and the moments of y
    inputs : one record per input in row order (``checkpoint.design_fingerprint``, the source
        as an absolute path, and a digest of the sizes and times of its files): a later fit
        reopens them and refuses any that changed
    fit_intercept : whether the last of the P columns is the appended constant
    """

    stats: Stats
    inputs: list[dict[str, str]]
    fit_intercept: bool


@dataclass
class Posterior:
    """A fitted POPS posterior over the parameters θ of a linear model.

    Attributes
    ----------
    coef_ : (P,) the MLE (BayesianRidge posterior mean), intercept last when fitted
    sigma_ : (P, P) epistemic covariance (BayesianRidge ``sigma_``)
    alpha_, lambda_ : noise and weight precisions from evidence maximisation
    misspecification_sigma_ : (P, P) second moment of the POPS perturbations
    kind : a registered posterior kind (:mod:`popsdask.core.kinds`): ``"hypercube"`` or
        ``"ensemble"``
    basis_, lower_, upper_ : (P, K), (K,), (K,) hypercube in the principal basis
    corrections_ : dask array (n_selected, P) of pointwise corrections (``ensemble`` only;
        lazily read from Zarr, never gathered)
    leverage_threshold_, n_rows_, n_selected_, n_iter_, condition_number_ : fit diagnostics
    feature_names : names of the P parameters
    settings, provenance : what produced it
    calibration : per-kind conformal scales (:class:`popsdask.calibration.conformal.Calibration` as a
        dict), applied by ``predict_ensemble``; None when uncalibrated
    fitted_rows_ : pass 1's statistics of the rows fitted (:class:`FittedRows`); None for a
        posterior made otherwise (it cannot take added rows)
    """

    coef_: np.ndarray
    sigma_: np.ndarray
    alpha_: float
    lambda_: float
    misspecification_sigma_: np.ndarray
    kind: str = "hypercube"
    basis_: np.ndarray | None = None
    lower_: np.ndarray | None = None
    upper_: np.ndarray | None = None
    corrections_: da.Array | None = None
    leverage_threshold_: float = 0.0
    n_rows_: int = 0
    n_selected_: int = 0
    n_iter_: int = 0
    condition_number_: float = float("nan")
    feature_names: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None
    fitted_rows_: FittedRows | None = None

    @property
    def n_features(self) -> int:
        return int(self.coef_.shape[0])

    @property
    def kind_(self) -> PosteriorKind:
        """The :class:`~popsdask.core.kinds.PosteriorKind` named by :attr:`kind`."""
        return posterior_kind(self.kind)

    # ------------------------------------------------------------------ sampling
    def perturbations(self, n: int = DEFAULT_N_SAMPLES, method: str = "uniform", seed: int | None = 0) -> np.ndarray:
        """``n`` parameter perturbations δθ (n × P), reproducible from ``seed``.

        Hypercube: θ = coef + U (lo + (hi - lo) u), u from ``method``. Ensemble: ``n`` of the
        stored pointwise corrections drawn without replacement (all of them when ``n`` is at
        least their number); ``method`` must be ``"uniform"``.
        """
        return self.kind_.perturbations(self, n, method, seed)

    def sample(self, n: int = DEFAULT_N_SAMPLES, method: str = "uniform", seed: int | None = 0) -> xr.DataArray:
        """Parameter vectors θ = coef + δθ as a DataArray with dims (sample, feature)."""
        theta = self.coef_[None, :] + self.perturbations(n, method, seed)
        return xr.DataArray(
            theta,
            dims=("sample", "feature"),
            coords={"sample": np.arange(theta.shape[0]), "feature": self.feature_names_or_index()},
            name="theta",
            attrs={"method": method, "seed": -1 if seed is None else int(seed), "posterior": self.kind},
        )

    def feature_names_or_index(self) -> np.ndarray:
        if self.feature_names:
            return np.asarray(self.feature_names, dtype=str)
        return np.arange(self.n_features)

    # ------------------------------------------------------------------ persistence
    def to_dataset(self) -> xr.Dataset:
        """Everything but the (lazy) corrections, as an xarray Dataset."""
        data: dict[str, Any] = {
            "coef": (("feature",), self.coef_),
            "sigma": (("feature", "feature_"), self.sigma_),
            "misspecification_sigma": (("feature", "feature_"), self.misspecification_sigma_),
        }
        data.update(self.kind_.variables(self))
        attrs: dict[str, Any] = {}
        if self.fitted_rows_ is not None:
            rows = self.fitted_rows_
            data["statistics_gram"] = (("feature", "feature_"), rows.stats.gram)
            data["statistics_xty"] = (("feature",), rows.stats.xty)
            # JSON keeps float64 exactly (shortest repr round-trips)
            attrs["statistics"] = json.dumps(
                {
                    **{k: v for k, v in vars(rows.stats).items() if k not in ("gram", "xty")},
                    "fit_intercept": rows.fit_intercept,
                    "inputs": rows.inputs,
                }
            )
        ds = xr.Dataset(data)
        if self.feature_names:
            ds = ds.assign_coords(feature_name=("feature", np.asarray(self.feature_names, dtype=str)))
        ds.attrs.update(
            format=POSTERIOR_FORMAT,
            posterior=self.kind,
            alpha=float(self.alpha_),
            **{"lambda": float(self.lambda_)},
            leverage_threshold=float(self.leverage_threshold_),
            n_rows=int(self.n_rows_),
            n_selected=int(self.n_selected_),
            n_iter=int(self.n_iter_),
            condition_number=float(self.condition_number_) if np.isfinite(self.condition_number_) else -1.0,
            settings=json.dumps(self.settings, default=str),
            provenance=json.dumps(self.provenance, default=str),
            calibration=json.dumps(self.calibration) if self.calibration else "",
            **attrs,
            popsdask_complete=False,
        )
        return ds

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the posterior as a Zarr v3 group (atomically: staged, marked, renamed)."""
        final = Path(path).absolute()
        with atomic_group(final, overwrite=overwrite) as staging, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = self.to_dataset()
            if self.corrections_ is not None:  # streamed chunk by chunk, never gathered
                ds["corrections"] = (("correction", "feature"), self.corrections_)
            ds.to_zarr(staging, mode="w", zarr_format=3, consolidated=False)
        if self.corrections_ is not None:
            self.corrections_ = _open_corrections(final)
        return final

    @classmethod
    def load(cls, path: str | os.PathLike) -> Posterior:
        root = Path(path)
        if not root.exists():
            raise InputError(f"{root}: no such posterior")
        check_safe_group(root)
        if not is_complete(root):
            raise InputError(f"{root}: posterior is not marked complete (interrupted write?)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = xr.open_zarr(root, consolidated=False, zarr_format=3, chunks=None)
            except (ValueError, KeyError, TypeError) as err:  # e.g. variables of conflicting sizes
                raise InputError(f"{root}: not a readable posterior ({' '.join(str(err).split())})") from None
        if ds.attrs.get("format") != POSTERIOR_FORMAT:
            raise InputError(f"{root}: not a popsdask posterior (format={ds.attrs.get('format')!r})")
        try:
            kind = posterior_kind(ds.attrs.get("posterior"))
        except InputError as err:
            raise InputError(f"{root}: {err}") from None
        v = check_posterior_dataset(ds, str(root))
        cn = v["condition_number"]
        return cls(
            coef_=v["coef"],
            sigma_=v["sigma"],
            alpha_=v["alpha"],
            lambda_=v["lambda"],
            misspecification_sigma_=v["misspecification_sigma"],
            kind=kind.name,
            **kind.from_dataset(ds),
            corrections_=_open_corrections(root) if "corrections" in ds else None,
            leverage_threshold_=v["leverage_threshold"],
            n_rows_=v["n_rows"],
            n_selected_=v["n_selected"],
            n_iter_=v["n_iter"],
            condition_number_=cn if cn >= 0 else float("inf"),
            feature_names=[str(s) for s in ds["feature_name"].values] if "feature_name" in ds else [],
            settings=v["settings"],
            provenance=v["provenance"],
            calibration=v["calibration"],
            fitted_rows_=_fitted_rows(v["statistics"]),
        )


def _fitted_rows(checked: dict[str, Any] | None) -> FittedRows | None:
    if checked is None:
        return None
    stats = Stats(**{k: checked[k] for k in ("gram", "xty", "yty", "n_rows", "sw", "y_mean", "y_m2")})
    return FittedRows(stats, checked["inputs"], checked["fit_intercept"])


def _open_corrections(root: Path) -> da.Array:
    import zarr

    return da.from_zarr(zarr.open_array(str(root / "corrections"), mode="r"))


def provenance(source: str) -> dict[str, Any]:
    from .. import __version__

    return {
        "package": "popsdask",
        "version": __version__,
        "input": source,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
