"""The posterior's band as linear algebra on a few rows at a time: what a calculator, a
simulation monitor or a selection needs for one configuration, without drawing members per call.

``popsdask predict`` reduces S drawn members x·(coef + δθₛ) per row. Every summary it stores is a
function of the row x and of fixed matrices of the posterior, so :class:`LinearBand` precomputes
those once:

* ``std`` = √(xᵀCx) = ‖Lᵀx‖, C = LLᵀ the population covariance of the same S draws (or of all
  stored corrections when the posterior keeps them), ``mean`` = x·(coef + μ);
* ``min``/``max`` = x·coef + min/max over the draws of x·δθₛ (one (S × P) product per row);
* ``box_min``/``box_max``: the exact envelope of the whole posterior (closed form for a box);
* ``support`` = α·xᵀΣx, the regularised leverage of the row (see
  :func:`popsdask.engine.predictions.support_score`);
* the posterior's calibration applied per row kind, as ``predict`` applies it.

Both quadratic forms are products with triangular roots (L from the draws' QR, the Cholesky factor
of the equilibrated α·Σ; BLAS ``trmm``): half the flops of an (n × P) by (P × P) product each,
which is most of a calculator call's band on a few hundred features.

The results equal ``popsdask predict``'s on the same rows with the same ``n_samples``, ``method``
and ``seed`` to round-off.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.linalg import LinAlgError, cholesky
from scipy.linalg.blas import dtrmm

from ..io.store import KIND_CODES
from .posterior import DEFAULT_N_SAMPLES, Posterior
from .predictions import box_envelope, calibration_factors

__all__ = ["LinearBand"]


def upper_root_product(R: np.ndarray, X: np.ndarray) -> np.ndarray:
    """(r, n) R Xᵀ of an upper-trapezoidal ``R`` (r, P), r ≤ P, Fortran-ordered, and rows ``X``
    (n, P), C-contiguous: BLAS ``trmm`` on the triangle (half a dense product's flops) plus a dense
    product for the columns right of it. ``X`` is not modified."""
    r = R.shape[0]
    if r == X.shape[1]:
        return dtrmm(1.0, R, X.T)  # X.T is Fortran-ordered: no copy in
    out = dtrmm(1.0, R[:, :r], X[:, :r].T)
    out += R[:, r:] @ X[:, r:].T
    return out


def _upper_trapezoidal(R: np.ndarray) -> bool:
    r, p = R.shape
    return r <= p and not np.any(np.tril(R[:, :r], -1))


@dataclass(frozen=True)
class LinearBand:
    """Per-row band summaries of a posterior as fixed matrices (see the module docstring).

    Attributes
    ----------
    coef : (P,) the MLE
    mean_shift : (P,) mean μ of the members' perturbations
    factor : (P, r) L with LLᵀ = C, the members' population covariance (r = min(S, P))
    draws : (S, P) the members' perturbations δθ (``min``/``max``)
    box : (basis (P, K), lower (K,), upper (K,)) of a box posterior, or None (then ``box_*``
        are the min and max over every stored correction, which ``draws`` then holds)
    metric : (P, P) α·Σ, whose quadratic form is the support score
    calibration : the posterior's calibration dict, or None
    """

    coef: np.ndarray
    mean_shift: np.ndarray
    factor: np.ndarray
    draws: np.ndarray
    box: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    metric: np.ndarray
    calibration: dict[str, Any] | None

    @classmethod
    def from_posterior(
        cls,
        posterior: Posterior,
        n_samples: int | None = None,
        method: str = "uniform",
        seed: int | None = 0,
    ) -> LinearBand:
        """The band of ``posterior`` with ``predict``'s members: ``n_samples`` draws (default 500)
        of ``method`` from ``seed``, or every stored correction of a posterior that keeps them
        when ``n_samples`` is None (``predict``'s exact summaries)."""
        complete = posterior.kind_.support(posterior) is not None and n_samples is None
        if complete:
            support = posterior.kind_.support(posterior)
            assert support is not None
            draws = np.asarray(support.compute(), dtype=np.float64)
        else:
            draws = posterior.perturbations(DEFAULT_N_SAMPLES if n_samples is None else n_samples, method, seed)
        mu = draws.mean(axis=0)
        # R of the centred draws' QR (RᵀR = S·C) rather than eigenvectors of C: forming C squares
        # its condition, and a row the fit pins down (std ≪ ‖x‖·‖δθ‖, e.g. an energy row) lost
        # digits of its std with it
        factor = np.asarray(np.linalg.qr(draws - mu, mode="r")).T / np.sqrt(draws.shape[0])
        return cls(
            coef=np.asarray(posterior.coef_, dtype=np.float64),
            mean_shift=mu,
            factor=factor,
            draws=draws,
            box=posterior.kind_.box(posterior),
            metric=posterior.alpha_ * np.asarray(posterior.sigma_, dtype=np.float64),
            calibration=posterior.calibration,
        )

    @property
    def calibrated(self) -> bool:
        return bool(self.calibration)

    @functools.cached_property
    def std_root(self) -> np.ndarray | None:
        """(r, P) Lᵀ, Fortran-ordered, when it is upper trapezoidal (as :meth:`from_posterior`
        builds it from a QR), else None (then ``std`` is a dense product)."""
        R = np.asfortranarray(self.factor.T, dtype=np.float64)
        return R if R.size and _upper_trapezoidal(R) else None

    @functools.cached_property
    def support_root(self) -> np.ndarray | None:
        """(P, P) upper-triangular U with UᵀU = α·Σ, Fortran-ordered, or None when α·Σ is not
        numerically positive definite (then ``support`` is a dense product). The Cholesky factor is
        of D·α·Σ·D, D scaling its diagonal to 1, scaled back, because descriptor columns differ by
        orders of magnitude. α·Σ of a qSNAP fit is ill-conditioned, so this root and the dense
        product agree only to round-off amplified by its condition (~1e-9 relative on the support
        of rows the fit pins down), and neither is the more exact one."""
        M = np.asarray(self.metric, dtype=np.float64)
        diag = np.diag(M)
        if not M.size or not np.all(diag > 0) or not np.all(np.isfinite(M)):
            return None
        d = 1.0 / np.sqrt(diag)
        try:
            U = cholesky(0.5 * (M + M.T) * d[:, None] * d[None, :], lower=False)
        except LinAlgError:
            return None
        return np.asfortranarray(U / d[None, :])

    def _rows(self, X: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.atleast_2d(X), dtype=np.float64)

    @staticmethod
    def _form(root: np.ndarray | None, X: np.ndarray) -> np.ndarray | None:
        """(r, n) root·xᵢ of C-contiguous rows ``X``, or None without a root (or rows)."""
        return None if root is None or not X.shape[0] else upper_root_product(root, X)

    def std(self, X: np.ndarray) -> np.ndarray:
        """(n,) the members' population std of rows ``X`` (n, P), raw."""
        X = self._rows(X)
        Z = self._form(self.std_root, X)
        return np.linalg.norm(X @ self.factor, axis=1) if Z is None else np.linalg.norm(Z, axis=0)

    def support(self, X: np.ndarray) -> np.ndarray:
        """(n,) α·xᵀΣx of rows ``X`` (n, P)."""
        X = self._rows(X)
        Z = self._form(self.support_root, X)
        return np.einsum("ij,ij->i", X @ self.metric, X) if Z is None else np.einsum("ij,ij->j", Z, Z)

    def with_sum(
        self, X: np.ndarray, kind: int = KIND_CODES["energy"], *, envelope: bool = True
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The band of the sum of rows ``X`` (n, P), a configuration's energy row from its
        per-atom rows, and of each row: as ``self(X.sum(axis=0), kind, n)`` and
        ``self(X, kind, 1, envelope=envelope)``, but the sum's std and support from the sums of
        the rows' products with the roots (Lᵀ Σᵢ xᵢ = Σᵢ Lᵀxᵢ), so each root is read once.

        Returns
        -------
        (the sum's band (1,) arrays, the rows' band (n,) arrays)
        """
        X = self._rows(X)
        n = X.shape[0]
        total = X.sum(axis=0)[None, :]
        Zs, Zm = self._form(self.std_root, X), self._form(self.support_root, X)
        if Zs is None:
            std, std_total = self.std(X), self.std(total)
        else:
            std, std_total = np.linalg.norm(Zs, axis=0), np.array([np.linalg.norm(Zs.sum(axis=1))])
        if Zm is None:
            support, support_total = self.support(X), self.support(total)
        else:
            zm = Zm.sum(axis=1)
            support, support_total = np.einsum("ij,ij->j", Zm, Zm), np.array([zm @ zm])
        kinds = np.full(n, kind)
        return (
            self._band(total, std_total, support_total, kinds[:1], n, True),
            self._band(X, std, support, kinds, 1, envelope),
        )

    def __call__(
        self,
        X: np.ndarray,
        kind: np.ndarray | None = None,
        n_atoms: np.ndarray | float | None = None,
        *,
        envelope: bool = True,
    ) -> dict[str, np.ndarray]:
        """The band of rows ``X`` (n, P) as ``predict`` stores it.

        Parameters
        ----------
        X : (n, P) design rows, the intercept column included when the posterior has one
        kind : (n,) row kind codes (:data:`popsdask.io.store.KIND_CODES`); default all energies
        n_atoms : atoms of each row's configuration (a number or (n,)), for per-atom calibration
            offsets of energies
        envelope : also the members' ``min``/``max`` and the exact ``box_min``/``box_max``
            (an (n × S) product; without it only the std, which is cheap for many force rows)

        Returns
        -------
        dict of (n,) float64 arrays: ``mle``, ``mean``, ``std``, ``support`` and with
        ``envelope`` ``min``, ``max``, ``box_min``, ``box_max``. On a calibrated posterior
        ``std``/``min``/``max`` are calibrated and ``std_raw``/``min_raw``/``max_raw`` are the raw
        ones (as in a prediction store); without ``envelope`` the calibrated std only.
        """
        X = self._rows(X)
        return self._band(X, self.std(X), self.support(X), kind, n_atoms, envelope)

    def _band(
        self,
        X: np.ndarray,
        std: np.ndarray,
        support: np.ndarray,
        kind: np.ndarray | None,
        n_atoms: np.ndarray | float | None,
        envelope: bool,
    ) -> dict[str, np.ndarray]:
        """:meth:`__call__` of rows ``X`` whose raw ``std`` and ``support`` are known."""
        n = X.shape[0]
        mle = X @ self.coef
        out = {"mle": mle, "mean": mle + X @ self.mean_shift, "std": std, "support": support}
        if envelope:
            dev = X @ self.draws.T
            out["min"], out["max"] = mle + dev.min(axis=1), mle + dev.max(axis=1)
            if self.box is not None:
                out["box_min"], out["box_max"] = box_envelope(X, mle, *self.box)
            else:
                out["box_min"], out["box_max"] = out["min"], out["max"]
        if self.calibration:
            from ..calibration.conformal import Calibration, apply_scales

            codes = np.full(n, KIND_CODES["energy"]) if kind is None else np.asarray(kind)
            atoms = None if n_atoms is None else np.broadcast_to(np.asarray(n_atoms, dtype=np.float64), (n,))
            factors = calibration_factors(self.calibration, codes, atoms, n)
            level = Calibration.from_dict(self.calibration).level
            lo, hi = (out["min"], out["max"]) if envelope else (mle, mle)
            std, lo_c, hi_c = apply_scales(factors, mle, out["std"], lo, hi, level)
            out["std_raw"] = out["std"]
            out["std"] = std
            if envelope:
                out.update(min_raw=out["min"], max_raw=out["max"], min=lo_c, max=hi_c)
        return out
