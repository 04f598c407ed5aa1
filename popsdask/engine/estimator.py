"""``popsdask.fit``: a POPS posterior of any input (a thin shell over the passes).

Kept free of scikit-learn, whose import costs more than a small fit: the estimators that follow
its API are in :mod:`popsdask.engine.regressor`.
"""

from __future__ import annotations

import os
import tempfile
from numbers import Integral
from pathlib import Path
from typing import Any

from ..core.evidence import EvidenceParams
from ..core.kinds import posterior_kind
from ..core.parameters import check_settings
from ..core.validation import InputError
from .design import design_from
from .fit import fit_pops_with_evidence
from .posterior import Posterior
from .state import PopsSettings


def fit(
    data: Any,
    y: Any = None,
    *,
    weight: Any = None,
    posterior: str = "hypercube",
    leverage_percentile: float = 50.0,
    mode_threshold: float = 1.0e-8,
    percentile_clipping: float = 0.0,
    fit_intercept: bool = False,
    chunk_rows: int | None = None,
    corrections_path: str | os.PathLike | None = None,
    progress: bool = False,
    minimum_relative_error: float | None = None,
    reuse_statistics: bool = False,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    previous: Posterior | str | os.PathLike | None = None,
    **evidence: Any,
) -> Posterior:
    """Fit a POPS posterior out of core, or add rows to a fit (``previous``).

    Parameters
    ----------
    data : numpy array, dask array, xarray Dataset or path of a descriptor store
        The design matrix X (row, feature); a store/Dataset also supplies ``y`` and ``weight``.
    y, weight : array-like, optional
        Targets and non-negative row weights (taken from the store when omitted).
    posterior : {"hypercube", "ensemble"}
    leverage_percentile, mode_threshold, percentile_clipping : float
        As in popsregression 0.4.0.
    minimum_relative_error : float ≥ 0 or None, default None (off)
        popsregression ≥ 0.5's row selection: keep only rows whose weighted residual
        √wᵢ|yᵢ - xᵢ·θ| is ≥ this × RMSE, RMSE = √(Σ wᵢeᵢ² / n_rows) of the mean fit, and
        floor the leverage at 1e-6 in the corrections (δθᵢ = A⁻¹xᵢ wᵢeᵢ / max(hᵢ, 1e-6)).
        Applied together with ``leverage_percentile`` (a row must pass both; if none does,
        every row is kept); popsregression 0.5 ignores ``leverage_percentile``, so its default
        is ``leverage_percentile=0, minimum_relative_error=0.01``. 0 keeps every row but
        still floors the leverage. None: popsregression 0.4.0's selection, unchanged.
    fit_intercept : bool
        Append a constant column (its coefficient is the last parameter).
    chunk_rows : int, optional
        Row chunk size for in-memory input (stores keep their own chunks).
    corrections_path : path, optional
        Where the ``ensemble`` posterior streams its pointwise corrections (default: a new
        temporary directory; :meth:`Posterior.save` copies them into the posterior group).
    progress : bool
        Print a progress bar per pass.
    reuse_statistics : bool, default False
        Take pass 1 (the Gram) and the evidence maximisation from the process's cache when
        the same rows were fitted before (:class:`popsdask.engine.cache.StatisticsCache`): POPS
        settings only change passes 2–4. Dask and store inputs are identified by their dask
        names, in-memory arrays by a SHA-256 of their bytes (one read of X).
    checkpoint : path, optional
        A directory (e.g. ``posterior.zarr.checkpoint``) where each finished pass is written
        atomically: the sufficient statistics and evidence, the leverage selection with each
        chunk's leverage block, the correction moment (``ensemble``: and the corrections, which
        the returned posterior then reads from there: keep the checkpoint until it is saved),
        and the bounds. Replaced unless ``resume``. Held under a lock file for the fit.
    resume : bool, default False
        Continue from the last finished pass in ``checkpoint`` (nothing there: from pass 1).
        Refused with :class:`InputError` when the data's fingerprint (source, shape, chunking,
        metadata and sampled-chunk checksums) or any setting differs from the checkpoint's.
        The result equals the uninterrupted fit.
    previous : Posterior or path of a saved one, optional
        Add ``data``'s rows to the rows ``previous`` was fitted to: pass 1 reads only ``data``
        and adds its statistics to those ``previous`` stores; passes 2–4 read the old rows
        again from the stores ``previous`` records (refused with :class:`InputError` when one
        is gone or changed, when ``data``'s features, descriptor or ``fit_intercept`` differ,
        or when ``previous`` holds no statistics). The result equals a fit of all rows from
        scratch with these settings; ``provenance["rows read"]`` counts the rows each pass read.
    **evidence
        BayesianRidge hyper-parameters (max_iter, tol, alpha_1, alpha_2, lambda_1, lambda_2,
        alpha_init, lambda_init, compute_score).

    Returns
    -------
    Posterior
    """
    _check_settings(
        chunk_rows,
        posterior=posterior,
        leverage_percentile=leverage_percentile,
        mode_threshold=mode_threshold,
        percentile_clipping=percentile_clipping,
        minimum_relative_error=minimum_relative_error,
    )
    design = design_from(
        data, y, weight, chunk_rows=chunk_rows, fit_intercept=fit_intercept, content_key=reuse_statistics
    )
    if posterior_kind(posterior).streams_corrections and corrections_path is None and checkpoint is None:
        corrections_path = Path(tempfile.mkdtemp(prefix="popsdask-")) / "corrections.zarr"
    post, _ = fit_pops_with_evidence(
        design,
        evidence=EvidenceParams(**evidence),
        settings=PopsSettings(
            leverage_percentile, mode_threshold, percentile_clipping, posterior, _as_float(minimum_relative_error)
        ),
        corrections_path=corrections_path,
        progress=progress,
        reuse_statistics=reuse_statistics,
        checkpoint=checkpoint,
        resume=resume,
        previous=previous,
    )
    return post


def _as_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _check_settings(chunk_rows: int | None, **settings: Any) -> None:
    """Refuse out-of-range POPS settings before any pass runs (:class:`InputError`, a
    ValueError, naming the parameter; the CLI reports it without a traceback). The bounds are
    :data:`popsdask.core.parameters.POPS_SETTINGS`, the same as ``POPSRegressor``'s and the CLI's."""
    check_settings(**settings)
    if chunk_rows is not None and (
        isinstance(chunk_rows, bool) or not isinstance(chunk_rows, Integral) or chunk_rows < 1
    ):
        raise InputError(f"chunk_rows={chunk_rows!r}: must be a positive integer or None")
