"""The scikit-learn compatible :class:`POPSRegressor` and :class:`CalibratedPOPSRegressor`
(thin shells over the passes)."""

from __future__ import annotations

import os
import tempfile
from numbers import Integral, Real
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
from sklearn.base import BaseEstimator, RegressorMixin, _fit_context, clone
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from ..calibration.conformal import Calibration, fit_kind
from ..calibration.metrics import kind_tolerance, symmetry_zeros
from ..core.evidence import Evidence, EvidenceParams
from ..core.kinds import posterior_kind
from ..core.parameters import POPS_SETTINGS, sklearn_constraints
from .bands import kind_labels, predict_band
from .design import Design, design_from
from .estimator import _as_float
from .execution import compute
from .fit import fit_pops_with_evidence
from .posterior import DEFAULT_N_SAMPLES, Posterior
from .state import PopsSettings

PREDICT_BLOCK_ROWS = 8192


class POPSRegressor(RegressorMixin, BaseEstimator):
    """Bayesian ridge regression with POPS misspecification uncertainty, on Dask.

    Same parameters and meanings as ``popsregression.POPSRegression`` 0.4.0, computed out of
    core: ``fit`` accepts numpy arrays, dask arrays, xarray Datasets or descriptor-store paths.

    Parameters
    ----------
    max_iter, tol, alpha_1, alpha_2, lambda_1, lambda_2, alpha_init, lambda_init, compute_score
        scikit-learn ``BayesianRidge`` evidence-maximisation parameters.
    fit_intercept : bool, default=False
        Append a constant column so the intercept takes part in the POPS posterior.
    copy_X : bool, default=True
        Kept for API compatibility; inputs are never modified.
    verbose : bool, default=False
        Print a progress bar for each pass.
    mode_threshold : float, default=1e-8
        Relative eigenvalue threshold for the principal modes of the corrections.
    resample_density : float or None, default=None
        popsregression's sample count rule, ``max(100, int(resample_density * n_rows))``.
        None (the default here) uses ``n_posterior_samples``, independent of the data size.
    resampling_method : {"uniform", "sobol", "latin", "halton"}, default="uniform"
    percentile_clipping : float in [0, 50], default=0
    leverage_percentile : float in [0, 100), default=50
    minimum_relative_error : float >= 0 or None, default=None
        popsregression ≥ 0.5's residual selection (see :func:`fit`); None disables it.
        popsregression 0.5's default is ``leverage_percentile=0, minimum_relative_error=0.01``.
    posterior : {"hypercube", "ensemble"}, default="hypercube"
    n_posterior_samples : int, default=500
        Posterior samples kept for ``return_bounds`` (hypercube).
    random_state : int or None, default=0
        Seed of the posterior samples.
    chunk_rows : int or None
        Row chunk size for in-memory input.
    workdir : str or None
        Directory for the ``ensemble`` corrections (default: a temporary directory).
    reuse_statistics : bool, default=False
        Reuse pass 1 (the Gram) and the evidence maximisation of an earlier fit of the same
        rows in this process (see :func:`fit`): a search over POPS settings then computes the
        Gram once per training fold, with results identical to fresh fits. Off by default
        because in-memory inputs are hashed (one read of X) to be identified.

    Attributes
    ----------
    coef_, intercept_, alpha_, lambda_, sigma_, misspecification_sigma_, n_iter_
        As in popsregression (``sigma_`` and ``misspecification_sigma_`` include the intercept
        parameter last when ``fit_intercept=True``).
    scores_ : ndarray of shape (``n_iter_ + 1``,)
        Log marginal likelihood at each evidence iteration and after the last update, as
        scikit-learn's ``BayesianRidge.scores_``. Only set when ``compute_score=True``.
    n_selected_ : int
        Rows whose pointwise corrections make the posterior.
    residual_threshold_ : float or None
        The weighted-residual cutoff ε · RMSE applied with ``minimum_relative_error`` (None
        when it is disabled, or when no row passed and every row was kept).
    posterior_ : Posterior
        The full posterior (basis, bounds, corrections, diagnostics).
    posterior_samples_ : ndarray of shape (n_parameters, n_posterior_samples)
        Parameter perturbations; for ``ensemble`` a lazy dask array of all corrections.
    leverage_threshold_, condition_number_, n_features_in_
    """

    _parameter_constraints: dict = {
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="neither")],
        "alpha_1": [Interval(Real, 0, None, closed="left")],
        "alpha_2": [Interval(Real, 0, None, closed="left")],
        "lambda_1": [Interval(Real, 0, None, closed="left")],
        "lambda_2": [Interval(Real, 0, None, closed="left")],
        "alpha_init": [None, Interval(Real, 0, None, closed="left")],
        "lambda_init": [None, Interval(Real, 0, None, closed="left")],
        "compute_score": ["boolean"],
        "fit_intercept": ["boolean"],
        "copy_X": ["boolean"],
        "verbose": ["verbose"],
        "resample_density": [None, Interval(Real, 0, None, closed="neither")],
        "resampling_method": [StrOptions({"uniform", "sobol", "latin", "halton"})],
        "n_posterior_samples": [Interval(Integral, 1, None, closed="left")],
        "random_state": [None, Interval(Integral, 0, None, closed="left")],
        "chunk_rows": [None, Interval(Integral, 1, None, closed="left")],
        "workdir": [None, str, os.PathLike],
        "reuse_statistics": ["boolean"],
        **sklearn_constraints(),  # the POPS settings: one table with fit() and the CLI
    }

    def __init__(
        self,
        *,
        max_iter=300,
        tol=1.0e-3,
        alpha_1=1.0e-6,
        alpha_2=1.0e-6,
        lambda_1=1.0e-6,
        lambda_2=1.0e-6,
        alpha_init=None,
        lambda_init=None,
        compute_score=False,
        fit_intercept=False,
        copy_X=True,
        verbose=False,
        mode_threshold=1.0e-8,
        resample_density=None,
        resampling_method="uniform",
        percentile_clipping=0.0,
        leverage_percentile=50.0,
        minimum_relative_error=None,
        posterior="hypercube",
        n_posterior_samples=DEFAULT_N_SAMPLES,
        random_state=0,
        chunk_rows=None,
        workdir=None,
        reuse_statistics=False,
    ):
        self.max_iter = max_iter
        self.tol = tol
        self.alpha_1 = alpha_1
        self.alpha_2 = alpha_2
        self.lambda_1 = lambda_1
        self.lambda_2 = lambda_2
        self.alpha_init = alpha_init
        self.lambda_init = lambda_init
        self.compute_score = compute_score
        self.fit_intercept = fit_intercept
        self.copy_X = copy_X
        self.verbose = verbose
        self.mode_threshold = mode_threshold
        self.resample_density = resample_density
        self.resampling_method = resampling_method
        self.percentile_clipping = percentile_clipping
        self.leverage_percentile = leverage_percentile
        self.minimum_relative_error = minimum_relative_error
        self.posterior = posterior
        self.n_posterior_samples = n_posterior_samples
        self.random_state = random_state
        self.chunk_rows = chunk_rows
        self.workdir = workdir
        self.reuse_statistics = reuse_statistics

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags

    # ------------------------------------------------------------------ fit
    def _design(self, X, y, sample_weight) -> Design:
        kw = dict(chunk_rows=self.chunk_rows, fit_intercept=self.fit_intercept, content_key=self.reuse_statistics)
        if isinstance(X, (str, os.PathLike, xr.Dataset, da.Array)):
            design = design_from(X, y, sample_weight, **kw)
            self.n_features_in_ = design.n_features - int(self.fit_intercept)
            return design
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], y_numeric=True)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
        return design_from(X, y, sample_weight, **kw)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, sample_weight=None):
        """Fit the model.

        Parameters
        ----------
        X : array-like (n_samples, n_features), dask array, xarray Dataset or store path
        y : array-like (n_samples,), optional when X is a store
        sample_weight : array-like (n_samples,), optional

        Returns
        -------
        self
        """
        design = self._design(X, y, sample_weight)
        corrections = None
        if posterior_kind(self.posterior).streams_corrections:
            root = Path(self.workdir) if self.workdir else Path(tempfile.mkdtemp(prefix="popsdask-"))
            root.mkdir(parents=True, exist_ok=True)
            corrections = Path(tempfile.mkdtemp(dir=root)) / "corrections.zarr"
        POPS_SETTINGS["minimum_relative_error"].check(self.minimum_relative_error)  # also refuses inf and bools
        post, ev = fit_pops_with_evidence(
            design,
            evidence=EvidenceParams(
                self.max_iter,
                self.tol,
                self.alpha_1,
                self.alpha_2,
                self.lambda_1,
                self.lambda_2,
                self.alpha_init,
                self.lambda_init,
                self.compute_score,
            ),
            settings=PopsSettings(
                self.leverage_percentile,
                self.mode_threshold,
                self.percentile_clipping,
                self.posterior,
                _as_float(self.minimum_relative_error),
            ),
            corrections_path=corrections,
            progress=bool(self.verbose),
            reuse_statistics=self.reuse_statistics,
        )
        self._set_from_posterior(post, ev)
        return self

    def _set_from_posterior(self, post: Posterior, ev: Evidence | None = None) -> None:
        self.posterior_ = post
        theta = post.coef_
        self.coef_ = theta[:-1].copy() if self.fit_intercept else theta.copy()
        self.intercept_ = float(theta[-1]) if self.fit_intercept else 0.0
        self.alpha_ = post.alpha_
        self.lambda_ = post.lambda_
        self.sigma_ = post.sigma_
        self.misspecification_sigma_ = post.misspecification_sigma_
        self.n_iter_ = post.n_iter_
        self.leverage_threshold_ = post.leverage_threshold_
        self.condition_number_ = post.condition_number_
        self.n_selected_ = post.n_selected_
        self.residual_threshold_ = post.settings.get("residual_threshold")
        if ev is not None and self.compute_score:
            self.scores_ = ev.scores.copy()
        elif hasattr(self, "scores_"):
            del self.scores_  # from an earlier fit with compute_score=True
        support = post.kind_.support(post)
        if support is not None:  # every stored correction, lazily
            self.posterior_samples_ = support.T
        else:
            n = self.n_posterior_samples
            if self.resample_density is not None:
                n = max(100, int(self.resample_density * post.n_rows_))
            self.posterior_samples_ = post.perturbations(n, self.resampling_method, self.random_state).T

    # ------------------------------------------------------------------ predict
    def _predict_input(self, X) -> da.Array:
        if isinstance(X, (str, os.PathLike, xr.Dataset, da.Array)):
            design = design_from(X, require_y=False, chunk_rows=PREDICT_BLOCK_ROWS)
            Xd = design.X
            if Xd.shape[1] != self.n_features_in_:
                raise ValueError(
                    f"{design.source}: X has {Xd.shape[1]} features, but {type(self).__name__} "
                    f"is expecting {self.n_features_in_} features as input"
                )
        else:
            Xd = da.from_array(
                validate_data(self, X, dtype=[np.float64, np.float32], reset=False),
                chunks=(PREDICT_BLOCK_ROWS, -1),
            )
        if self.fit_intercept:
            Xd = da.concatenate([Xd, da.ones((Xd.shape[0], 1), chunks=(Xd.chunks[0], 1))], axis=1)
        return Xd.astype(np.float64).rechunk({1: -1})

    def predict(self, X, return_std=False, return_bounds=False, return_epistemic_std=False):
        """Predict with uncertainty (popsregression's meanings).

        Returns ``y_mean`` and, in this order when asked: ``y_std`` (misspecification +
        epistemic), ``y_max`` and ``y_min`` (over the posterior samples), ``y_epistemic_std``.
        """
        check_is_fitted(self)
        Xd = self._predict_input(X)
        post = self.posterior_
        out = [Xd @ post.coef_]
        if return_std or return_epistemic_std:
            epi = (Xd @ post.sigma_ * Xd).sum(axis=1)
        if return_std:
            out.append(da.sqrt((Xd @ post.misspecification_sigma_ * Xd).sum(axis=1) + epi))
        if return_bounds:
            # ensemble: posterior_samples_ is lazy, so this reduces over the stored corrections
            yp = Xd @ self.posterior_samples_
            out += [yp.max(axis=1) + out[0], yp.min(axis=1) + out[0]]
        if return_epistemic_std:
            out.append(da.sqrt(epi))
        values = compute(*out)  # the passes' executor: the client, or synchronous inside a worker task
        return values[0] if len(values) == 1 else tuple(values)


class CalibratedPOPSRegressor(RegressorMixin, BaseEstimator):
    """A :class:`POPSRegressor` whose std and envelope are recalibrated at ``level`` by split
    conformal on configurations held out of its own POPS fit.

    POPSRegressor has no calibration level; this wrapper makes it a parameter a search can
    tune beside the POPS settings (grid keys ``level`` and ``estimator__leverage_percentile``
    etc.). ``fit`` holds out a seeded ``calibration_fraction`` of the configurations, fits the
    estimator on the others, and fits :func:`popsdask.calibration.conformal.fit_kind` per row kind
    on the held-out rows (symmetry zeros left out, as ``popsdask calibrate`` does); ``predict``
    applies the scales. The held-out rows are the same for every setting of a search, so with
    ``reuse_statistics=True`` the POPS fit computes its Gram once per training fold.

    Parameters
    ----------
    estimator : POPSRegressor, optional
        The POPS fit (default ``POPSRegressor()``); cloned by ``fit``.
    level : float in (0, 1), default 0.95
        Target coverage of the std's ±z interval and of the envelope.
    calibration_fraction : float in (0, 1), default 0.25
        Share of the configurations (rows when ``fit`` gets no ``config``) calibrated on.
    row_kind : callable X -> (n,) labels, optional
        Row kinds calibrated separately (e.g. :class:`popsdask.evaluation.scoring.KindByColumns`);
        default: all rows as one kind.
    random_state : int, default 0
        Seed of the held-out configurations.

    Attributes
    ----------
    estimator_ : POPSRegressor, fitted on the other configurations
    calibration_ : popsdask.calibration.conformal.Calibration
    coef_, intercept_, n_features_in_ : as the estimator's
    """

    _parameter_constraints: dict = {
        "estimator": [None, POPSRegressor],
        "level": [Interval(Real, 0.0, 1.0, closed="neither")],
        "calibration_fraction": [Interval(Real, 0.0, 1.0, closed="neither")],
        "row_kind": [None, callable],
        "random_state": [Interval(Integral, 0, None, closed="left")],
    }

    def __init__(self, estimator=None, *, level=0.95, calibration_fraction=0.25, row_kind=None, random_state=0):
        self.estimator = estimator
        self.level = level
        self.calibration_fraction = calibration_fraction
        self.row_kind = row_kind
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y, sample_weight=None, config=None):
        """Fit POPS on part of the configurations and calibrate on the rest.

        Parameters
        ----------
        X : array-like (n_samples, n_features)
        y : array-like (n_samples,)
        sample_weight : array-like (n_samples,), optional
        config : array-like (n_samples,), optional
            Configuration of each row: the rows of one configuration (its energy and forces)
            are held out together. Default: every row on its own.

        Returns
        -------
        self
        """
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], y_numeric=True)
        config = np.arange(len(y)) if config is None else np.asarray(config)
        if config.shape != y.shape:
            raise ValueError(f"config has shape {config.shape}, y has {y.shape}")
        configs = np.unique(config)
        n_cal = int(round(self.calibration_fraction * configs.size))
        if n_cal < 1 or n_cal >= configs.size:
            raise ValueError(
                f"calibration_fraction={self.calibration_fraction} of {configs.size} configurations leaves "
                "no configuration to fit or none to calibrate on"
            )
        held = np.random.default_rng(self.random_state).permutation(configs)[:n_cal]
        cal = np.isin(config, held)
        est = clone(self.estimator if self.estimator is not None else POPSRegressor())
        w = None if sample_weight is None else np.asarray(sample_weight)[~cal]
        est.fit(X[~cal], y[~cal], sample_weight=w)
        Xc, yc = X[cal], y[cal]
        band = predict_band(est, Xc)
        labels = kind_labels(Xc, len(yc), self.row_kind)
        kinds = {}
        for kind in np.unique(labels):
            m = labels == kind
            keep = _informative(yc[m], {k: v[m] for k, v in band.items()})
            b = {k: v[m][keep] for k, v in band.items()}
            kinds[str(kind)] = fit_kind(yc[m][keep], b["mle"], b["std"], b["lo"], b["hi"], self.level)
        self.calibration_ = Calibration(
            float(self.level),
            kinds,
            "split conformal on held-out configurations",
            {"n_configurations": int(n_cal), "seed": int(self.random_state)},
        )
        self.estimator_ = est
        self.coef_, self.intercept_ = est.coef_, est.intercept_
        return self

    def predict(self, X, return_std=False, return_bounds=False, return_epistemic_std=False):
        """As :meth:`POPSRegressor.predict`, with the std and envelope calibrated per row kind
        (the epistemic std is not). ``X`` as there; ``row_kind`` is given the rows as an
        array (a dask array for dask, store or Dataset input).
        """
        check_is_fitted(self)
        if isinstance(X, (str, os.PathLike, xr.Dataset)):
            rows = design_from(X, require_y=False).X
        elif isinstance(X, da.Array):
            rows = X
        else:
            X = rows = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        mle, std, hi, lo, *epi = self.estimator_.predict(
            X, return_std=True, return_bounds=True, return_epistemic_std=return_epistemic_std
        )
        labels = kind_labels(rows, mle.shape[0], self.row_kind)
        std, lo, hi = std.copy(), lo.copy(), hi.copy()
        for kind in np.unique(labels):
            m = labels == kind
            std[m], lo[m], hi[m] = self.calibration_.apply(str(kind), mle[m], std[m], lo[m], hi[m])
        out = [mle] + ([std] if return_std else []) + ([hi, lo] if return_bounds else []) + epi
        return out[0] if len(out) == 1 else tuple(out)


def _informative(y: np.ndarray, band: dict[str, np.ndarray]) -> np.ndarray:
    """Rows that are not symmetry zeros (:func:`popsdask.calibration.metrics.symmetry_zeros`)."""
    tol = np.maximum(kind_tolerance(y), band["roundoff"])
    return ~symmetry_zeros(y, band["mle"], band["lo"], band["hi"], tol)
