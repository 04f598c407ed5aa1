"""Evidence maximisation (MacKay updates of scikit-learn's BayesianRidge) from a Gram matrix.

scikit-learn iterates on the SVD of the (sqrt-weight rescaled) design matrix; the same updates
only need the eigendecomposition G = V diag(s) Vᵀ of the weighted Gram matrix, b = XᵀWy and the
residual sum of squares, so they run in memory on P × P objects whatever the number of rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import log, pi

import numpy as np
from scipy.linalg import eigh

from .stats import Stats
from .validation import InputError

EPS = np.finfo(np.float64).eps


@dataclass
class EvidenceParams:
    """scikit-learn's BayesianRidge hyper-parameters (same names, same defaults)."""

    max_iter: int = 300
    tol: float = 1.0e-3
    alpha_1: float = 1.0e-6
    alpha_2: float = 1.0e-6
    lambda_1: float = 1.0e-6
    lambda_2: float = 1.0e-6
    alpha_init: float | None = None
    lambda_init: float | None = None
    compute_score: bool = False


@dataclass
class SSEAnchor:
    """Exact residual statistics at a reference coefficient vector θ₀.

    sse(θ) = sse₀ - 2 (θ - θ₀)·g₀ + (θ - θ₀)ᵀ G (θ - θ₀), with g₀ = XᵀW(y - Xθ₀). With θ₀ = 0
    this is yᵀWy - 2 bᵀθ + θᵀGθ; with θ₀ near the optimum the large terms vanish, which keeps
    sse accurate when the fit is nearly exact.
    """

    coef: np.ndarray
    sse: float
    grad: np.ndarray


@dataclass
class Evidence:
    """Result of the evidence maximisation (attribute names follow scikit-learn).

    ``scores``: (n_iter + 1,) log marginal likelihood per iteration and after the final
    update, as ``BayesianRidge(compute_score=True).scores_``; empty unless ``compute_score``.
    """

    coef: np.ndarray
    alpha: float
    lambda_: float
    sigma: np.ndarray
    n_iter: int
    eigvals: np.ndarray
    eigvecs: np.ndarray
    sse: float
    scores: np.ndarray = field(default_factory=lambda: np.empty(0))

    @property
    def a_inv(self) -> np.ndarray:
        """(G + λ/α I)⁻¹ = α Σ, the matrix that maps a row to its leverage and correction."""
        return self.alpha * self.sigma

    @property
    def condition_number(self) -> float:
        """Condition number of the weighted Gram matrix (inf when it is singular)."""
        if self.eigvals.size == 0:
            return np.inf
        top = float(self.eigvals.max())
        low = float(self.eigvals.min())
        return np.inf if low <= 0 else top / low


def check_stats(stats: Stats) -> None:
    """Refuse sufficient statistics that overflowed or hold nothing to fit (clear InputError)."""
    parts: dict[str, np.ndarray | float] = {
        "X^T W X": stats.gram,
        "X^T W y": stats.xty,
        "y^T W y": stats.yty,
        "sum of weights": stats.sw,
    }
    bad = [name for name, v in parts.items() if not np.all(np.isfinite(v))]
    if bad:
        raise InputError(
            f"the weighted sufficient statistics overflow float64 ({', '.join(bad)} not finite): "
            "X, y or the weights are too large in magnitude; rescale them"
        )
    if not np.any(stats.gram):
        raise InputError(
            "the weighted design matrix is zero (every row of X is zero or has zero weight, or its "
            "values underflow float64): there is nothing to fit"
        )


def too_few_rows(sw: float, gamma: float) -> InputError:
    """The refusal of weights that sum to no more than the parameters the data determine.

    The noise precision's update α = (Σw - γ + 2α₁) / (sse + 2α₂) counts the data by the sum of
    the weights Σw and the well-determined parameters by γ ≤ P; at Σw ≤ γ it turns negative
    (then λ, and Σ loses positive-definiteness). scikit-learn's BayesianRidge counts rows
    whatever their weight, so a store with one non-zero weight gets a positive α there from the
    zero-weight rows alone; here there is no positive α to give.
    """
    return InputError(
        f"the weights sum to {sw:.4g}, not more than the {gamma:.4g} effective parameters of the evidence "
        "iteration: too few rows carry weight to estimate the noise (give more rows non-zero weight)"
    )


def eigen_gram(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigendecomposition of a symmetric PSD Gram; round-off negatives are clipped to 0."""
    s, V = eigh((gram + gram.T) / 2.0)
    return np.clip(s, 0.0, None), V


def maximise_evidence(
    stats: Stats,
    params: EvidenceParams | None = None,
    anchor: SSEAnchor | None = None,
    eig: tuple[np.ndarray, np.ndarray] | None = None,
) -> Evidence:
    """Run scikit-learn's BayesianRidge fixed-point iteration on sufficient statistics.

    Parameters
    ----------
    stats : Stats
        Weighted Gram, XᵀWy, yᵀWy, sum of weights, weighted variance of y.
    params : EvidenceParams
        Hyper-parameters; defaults match ``sklearn.linear_model.BayesianRidge``.
    anchor : SSEAnchor, optional
        Exact residual statistics at some θ₀ (see :class:`SSEAnchor`); default θ₀ = 0.
    eig : (eigvals, eigvecs), optional
        Reuse an eigendecomposition of ``stats.gram``.

    Returns
    -------
    Evidence
    """
    p = params or EvidenceParams()
    check_stats(stats)
    s, V = eig if eig is not None else eigen_gram(stats.gram)
    if anchor is None:
        anchor = SSEAnchor(np.zeros_like(stats.xty), stats.yty, stats.xty)
    # b in the eigenbasis. Along modes whose eigenvalue eigh returned as ≤ 0 (clipped to 0) b
    # can only be round-off: scikit-learn's SVD route multiplies it by the zero singular value,
    # and here it would grow without bound as λ → 0 (a POD leave-one-group-out fold ended in NaN)
    b_e = np.where(s > 0.0, V.T @ stats.xty, 0.0)
    c0_e = V.T @ anchor.coef
    g0_e = V.T @ anchor.grad
    sw = stats.sw

    def coef_e(alpha: float, lam: float) -> np.ndarray:
        return b_e / (s + lam / alpha)

    def sse_of(ce: np.ndarray) -> float:
        d = ce - c0_e
        return float(anchor.sse - 2.0 * d @ g0_e + (s * d) @ d)

    alpha = 1.0 / (stats.y_var + EPS) if p.alpha_init is None else float(p.alpha_init)
    lam = 1.0 if p.lambda_init is None else float(p.lambda_init)
    scores: list[float] = []
    ce = ce_old = coef_e(alpha, lam)
    it = 0
    for it in range(p.max_iter):
        ce = coef_e(alpha, lam)
        sse = sse_of(ce)
        if p.compute_score:
            scores.append(_log_marginal_likelihood(p, s, sw, alpha, lam, ce, sse))
        gamma = float(np.sum(alpha * s / (lam + alpha * s)))
        if sw - gamma + 2 * p.alpha_1 <= 0:
            raise too_few_rows(sw, gamma)
        lam = (gamma + 2 * p.lambda_1) / (float(ce @ ce) + 2 * p.lambda_2)
        alpha = (sw - gamma + 2 * p.alpha_1) / (sse + 2 * p.alpha_2)
        # ||θ_old - θ||₁ in the original basis, as scikit-learn measures convergence
        if it != 0 and np.sum(np.abs(V @ (ce_old - ce))) < p.tol:
            break
        ce_old = ce
    ce_last = ce
    ce = coef_e(alpha, lam)
    sse = sse_of(ce)
    if p.compute_score:
        # scikit-learn's last score pairs the final α, λ and sse with the coefficients of the
        # last iteration (its loop variable), not the final ones: kept for identical scores_
        scores.append(_log_marginal_likelihood(p, s, sw, alpha, lam, ce_last, sse))
    if not (np.isfinite(alpha) and np.isfinite(lam)):  # a negative α from cancellation is refined later
        raise InputError(
            f"the evidence iteration diverged (alpha={alpha:.3g}, lambda={lam:.3g}); the Gram matrix's "
            f"eigenvalues span {s.max(initial=0.0):.3g} to {s.min(initial=0.0):.3g}: rescale the columns of X"
        )
    sigma = (V / (alpha * s + lam)) @ V.T
    return Evidence(
        coef=V @ ce,
        alpha=float(alpha),
        lambda_=float(lam),
        sigma=sigma,
        n_iter=it + 1,
        eigvals=s,
        eigvecs=V,
        sse=sse,
        scores=np.asarray(scores),
    )


def needs_refinement(stats: Stats, ev: Evidence, digits: float = 6.0) -> bool:
    """True when sse from the Gram lost more than ``digits`` digits to cancellation."""
    return bool(ev.sse < 10.0 ** (-digits) * max(stats.yty, EPS))


def _log_marginal_likelihood(
    p: EvidenceParams,
    s: np.ndarray,
    sw: float,
    alpha: float,
    lam: float,
    ce: np.ndarray,
    sse: float,
) -> float:
    """scikit-learn's ``BayesianRidge._log_marginal_likelihood`` from the eigenvalues of G.

    Parameters
    ----------
    p : the Gamma hyper-priors (alpha_1, alpha_2, lambda_1, lambda_2)
    s : (P,) eigenvalues of G = XᵀWX, zeros included: log|Σ| = -Σ log(λ + α sⱼ) over all P,
        which is also scikit-learn's n_samples ≤ n_features branch
    sw : Σw (n_samples without weights)
    alpha, lam : noise and weight precisions
    ce : (P,) coefficients in the eigenbasis (|θ|² = |ce|², V orthogonal)
    sse : Σ wᵢ (yᵢ - xᵢ·θ)²

    Returns
    -------
    float
    """
    logdet_sigma = -np.sum(np.log(lam + alpha * s))
    score = p.lambda_1 * log(lam) - p.lambda_2 * lam
    score += p.alpha_1 * log(alpha) - p.alpha_2 * alpha
    score += 0.5 * (
        s.size * log(lam) + sw * log(alpha) - alpha * sse - lam * float(ce @ ce) + logdet_sigma - sw * log(2 * pi)
    )
    return float(score)
