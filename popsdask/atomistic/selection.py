"""Which configurations of a pool to label next: the posterior's band per atom, its support
score, and a batch that does not spend itself on one event.

**The score.** A configuration's energy per atom is x̂·θ, x̂ its energy design row divided by its
atoms. Under the posterior, θ's uncertainty has two parts: the misspecification spread of the
POPS members, covariance C = LLᵀ (:class:`~popsdask.engine.linear_band.LinearBand`; scaled by the
calibration's energy ``std_scale`` s when the posterior is calibrated), and the Bayesian ridge's
epistemic covariance Σ, whose quadratic form is the support score divided by α
(α·x̂ᵀΣx̂ = support). The predictive covariance of two configurations is therefore

    k(i, j) = x̂ᵢᵀ A x̂ⱼ,  A = s²C + β·Σ,

with β = ``support_weight`` (1: both parts as the posterior states them; 0: the band alone). Σ
matters where the band cannot be trusted: rows outside the span of the training rows, where the
members' spread may be narrow but the support score is large; it also makes A full rank, so the
batch can grow past the number of POPS modes.

**The batch.** The picks greedily maximise det k(S, S), the joint predictive variance of the
picked set S (D-optimal design; the information gain of a Gaussian): first the configuration of
largest variance, then, each step, the one of largest variance *conditional on those already
picked*. With vᵢ = Bᵀx̂ᵢ (A = BBᵀ) this is Gram–Schmidt: pick the longest vᵢ, project its
direction out of every v, repeat (a pivoted Cholesky of k). Near-copies of a picked
configuration (frames of one MD event) keep almost nothing after the projection, so one event
does not fill the batch; a distinct configuration keeps what the picked ones do not explain.
This was chosen over farthest-point sampling in the same space because it ranks by the band
itself (a far but well-predicted configuration scores low) and needs no distance scale; over
top-band ranking because that spends the batch on copies. A configuration's ``selection_score``
is √(conditional variance) in eV/atom at its pick: the uncertainty it adds beyond the earlier
picks (the first one's is √((s·std)² + β·support/α) of its row). The calibration's offsets are
not variances of a direction and do not enter the score; they are in the reported bands. When
every direction is spent (more picks than the rank of A), the greedy starts again on the
remaining configurations.

**Force rows.** The held-out error that matters is often the forces', and a configuration's
3N force rows say more about θ than its one energy row. With ``rows="forces"`` (or ``"both"``:
its per-atom energy row too) each configuration c contributes the block V_c = X_c B / σ, its
(3N, P) force design rows in the same factor coordinates (θ = θ̂ + Bz, z ~ N(0, I)), whitened
by the noise std σ of a labelled row (default 1/√α, the Bayesian ridge's noise for a row of
unit weight). The picks greedily maximise log det(I + Σ_{c∈S} V_cᵀV_c), the information gain
of labelling the set S (block D-optimal design): each step the configuration of largest

    gain_c = log det(I + V_c A⁻¹ V_cᵀ),  A = I + Σ_{picked} V_pᵀV_p,

then A takes the pick's V_cᵀV_c (a rank-3N update). With a noise term the blocks never spend
A, so no restart is needed; near-copies of a pick gain little because A already holds their
directions. B uses the calibration's force ``std_scale`` (its energy one for ``"energy"``).
The ``selection_score`` is then gain_c, in nats, not a variance.

**Pool variance** (``criterion="variance"``). Both greedies above reward the information a
label gives about θ in any direction, so an outlier that pins a direction down outranks a frame
like many others. The alternative picks, each step, the configuration whose labelled rows lower
the *pool's* summed predictive variance of the same rows most (:func:`greedy_block_variance`,
expected variance reduction): the pool stands for where the potential will be used. It works on
the same whitened blocks (one row per configuration with ``rows="energy"``, σ the noise of an
energy row per atom) and its ``selection_score`` is the share of the pool's variance before any
pick that the pick removes.

Everything is deterministic given the posterior's members (``n_samples``, ``method``, ``seed``,
as ``popsdask predict``): ties go to the first configuration of the pool.

Entry points: :func:`select_configurations` (configurations in, the picked ones out, their
bands in ``info``) and :func:`select_from_store` (a descriptor store's configurations, as a
table: a store records no positions).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..core.validation import InputError
from ..engine.linear_band import LinearBand
from ..engine.posterior import Posterior
from ..engine.predictions import calibration_factors
from ..io.store import KIND_CODES
from .configurations import DIRECTORY_SUFFIXES, Configuration, expand_paths, read_extxyz, validate_configuration
from .descriptors.base import DescriptorBackend, atom_rows, backend_from_attrs

__all__ = [
    "BAND_KEYS",
    "POOL_SUFFIXES",
    "Selection",
    "check_pool_descriptor",
    "ROW_KINDS",
    "CRITERIA",
    "greedy_block_variance",
    "selection_blocks",
    "greedy_block_determinant",
    "greedy_max_determinant",
    "pool_energy_rows",
    "pool_force_rows",
    "posterior_backend",
    "picks_table",
    "read_pool",
    "select_configurations",
    "select_from_store",
    "select_rows",
    "selection_factor",
    "write_picks",
]

#: what a directory in a pool contributes: configuration files and LAMMPS dumps
POOL_SUFFIXES = (*DIRECTORY_SUFFIXES, ".dump", ".lammpstrj")

#: the rows a configuration contributes to the selection (``rows=``, ``popsdask select --rows``)
ROW_KINDS = ("energy", "forces", "both")

#: how a batch is chosen (``criterion=``, ``popsdask select --criterion``): the information its
#: labels give (greedy determinants), or how much they lower the pool's predictive variance
CRITERIA = ("information", "variance")

#: what each picked configuration's ``info`` (or the store table) receives
BAND_KEYS = (
    "energy_per_atom_mle",
    "energy_per_atom_std",
    "energy_per_atom_min",
    "energy_per_atom_max",
    "support",
    "selection_score",
    "selection_rank",
    "pool_index",
)


@dataclass(frozen=True)
class Selection:
    """The picks of a pool of M per-atom energy rows.

    Attributes
    ----------
    index : (n,) pool positions of the picks, in pick order
    score : (n,) with energy rows, √(conditional predictive variance) per atom at each pick
        (eV/atom); with force rows, the log-determinant gain of each pick (nats); with
        ``criterion="variance"``, the share of the pool's predictive variance each pick removes
    bands : (n,) arrays of the picks' bands per atom, as ``popsdask predict --per-atom`` gives
        them: ``mle``, ``std``, ``min``, ``max`` (calibrated when the posterior is), ``support``
    """

    index: np.ndarray
    score: np.ndarray
    bands: dict[str, np.ndarray]

    def columns(self) -> dict[str, np.ndarray]:
        """:data:`BAND_KEYS` as (n,) arrays (``selection_rank`` 1 for the first pick)."""
        b = self.bands
        return {
            "energy_per_atom_mle": b["mle"],
            "energy_per_atom_std": b["std"],
            "energy_per_atom_min": b["min"],
            "energy_per_atom_max": b["max"],
            "support": b["support"],
            "selection_score": self.score,
            "selection_rank": np.arange(1, self.index.size + 1),
            "pool_index": self.index,
        }


def greedy_max_determinant(V: np.ndarray, n: int, *, rtol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Greedy maximisation of det(V_S V_Sᵀ) over sets S of ``n`` rows of ``V``.

    Parameters
    ----------
    V : (M, d) factor rows: row i's covariance with row j is vᵢ·vⱼ
    n : picks, 1 ≤ n ≤ M
    rtol : a residual variance below ``rtol`` times the first pick's counts as spent; when every
        unpicked row is spent, the residuals of the unpicked rows restart from ``V``

    Returns
    -------
    index : (n,) picked rows in pick order (ties: the first row)
    score : (n,) √(residual variance) of each pick when it was picked
    """
    V = np.asarray(V, dtype=np.float64)
    M = V.shape[0]
    if not 1 <= n <= M:
        raise InputError(f"n={n}: pick between 1 and the pool's {M} configurations")
    R = V.copy()
    var = np.einsum("ij,ij->i", R, R)
    picked = np.zeros(M, dtype=bool)
    index, score = np.empty(n, dtype=np.int64), np.empty(n)
    floor = 0.0
    for k in range(n):
        var[picked] = -np.inf
        if k and var.max() <= floor:  # every direction spent: start again on the others
            R = V.copy()
            var = np.einsum("ij,ij->i", R, R)
            var[picked] = -np.inf
        i = int(np.argmax(var))
        index[k], score[k], picked[i] = i, np.sqrt(max(var[i], 0.0)), True
        if k == 0:
            floor = rtol * var[i]
        norm = np.sqrt(var[i])
        if norm > 0:
            u = R[i] / norm
            R -= np.outer(R @ u, u)
            var = np.einsum("ij,ij->i", R, R)  # recomputed, not downdated: no drift over many picks
    return index, score


def greedy_block_determinant(blocks: Sequence[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy maximisation of log det(I + Σ_{c∈S} V_cᵀV_c) over sets S of ``n`` blocks.

    Parameters
    ----------
    blocks : M arrays (m_c, d), candidate c's whitened rows V_c (any m_c ≥ 0, one d)
    n : picks, 1 ≤ n ≤ M

    Returns
    -------
    index : (n,) picked blocks in pick order (ties: the first block)
    gain : (n,) log det(I + V_c A⁻¹ V_cᵀ) of each pick when it was picked, A = I + Σ of the earlier
        picks' V_pᵀV_p (nats; their sum is the log det of the picked set)
    """
    V = _padded(blocks, n)
    M, m, d = V.shape
    A = np.eye(d)
    picked = np.zeros(M, dtype=bool)
    index, gain = np.empty(n, dtype=np.int64), np.empty(n)
    for k in range(n):
        # W_c = V_c L⁻ᵀ with A = LLᵀ: gain_c = log det(I + W_cW_cᵀ) = log det(I + W_cᵀW_c), the smaller side
        L_inv = np.linalg.inv(np.linalg.cholesky(A))
        W = (V.reshape(-1, d) @ L_inv.T).reshape(M, m, d)
        H = W @ W.transpose(0, 2, 1) if m <= d else W.transpose(0, 2, 1) @ W
        H[:, np.arange(H.shape[1]), np.arange(H.shape[1])] += 1.0
        gains = 2.0 * np.log(np.diagonal(np.linalg.cholesky(H), axis1=1, axis2=2)).sum(axis=1)
        gains[picked] = -np.inf
        i = int(np.argmax(gains))
        index[k], gain[k], picked[i] = i, gains[i], True
        A += V[i].T @ V[i]
    return index, gain


def greedy_block_variance(
    blocks: Sequence[np.ndarray], n: int, reference: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy minimisation of the pool's summed predictive variance after labelling ``n`` blocks.

    With z ~ N(0, I) a priori and block c's rows V_c z observed with unit noise, the covariance of
    z after the picks S is S_S = (I + Σ_{c∈S} V_cᵀV_c)⁻¹, and the summed predictive variance of
    the reference rows is tr(Q S_S). Each step picks the block that lowers it most,

        reduction_c = tr(Q (S - S')) = tr((I + W_cW_cᵀ)⁻¹ W_c Q̃ W_cᵀ),

    W_c = V_c L⁻ᵀ and Q̃ = L⁻¹QL⁻ᵀ with LLᵀ = I + Σ of the earlier picks' V_pᵀV_p (the d × d form
    tr(Q̃ H(I + H)⁻¹), H = W_cᵀW_c, when blocks are taller than d). This is expected variance
    reduction (Cohn's ALC; transductive experimental design): where the log-determinant gain
    rewards any direction a block pins down, this rewards the directions the reference rows use,
    so a block like many others in the pool outranks an outlier of the same information.

    Parameters
    ----------
    blocks : M arrays (m_c, d), candidate c's whitened rows V_c (any m_c ≥ 0, one d)
    n : picks, 1 ≤ n ≤ M
    reference : (d, d) Q, the reference rows' Σ vᵀv; default the blocks' own, Σ_c V_cᵀV_c (the
        pool is where the potential will be used)

    Returns
    -------
    index : (n,) picked blocks in pick order (ties: the first block)
    reduction : (n,) each pick's reduction of tr(Q S) when it was picked, as a fraction of tr(Q)
        (the variance before any pick; the reductions sum to the picked set's)
    """
    V = _padded(blocks, n)
    M, m, d = V.shape
    Q = np.einsum("cmi,cmj->ij", V, V) if reference is None else np.asarray(reference, dtype=np.float64)
    if Q.shape != (d, d):
        raise InputError(f"reference: shape {Q.shape}, expected ({d}, {d})")
    total = float(np.trace(Q))
    A = np.eye(d)
    picked = np.zeros(M, dtype=bool)
    index, reduction = np.empty(n, dtype=np.int64), np.empty(n)
    for k in range(n):
        L_inv = np.linalg.inv(np.linalg.cholesky(A))
        W = (V.reshape(-1, d) @ L_inv.T).reshape(M, m, d)
        Qt = L_inv @ Q @ L_inv.T
        if m <= d:
            G = W @ W.transpose(0, 2, 1)
            G[:, np.arange(m), np.arange(m)] += 1.0
            R = W @ Qt @ W.transpose(0, 2, 1)
            cut = np.trace(np.linalg.solve(G, R), axis1=1, axis2=2)
        else:
            H = W.transpose(0, 2, 1) @ W
            G = H.copy()
            G[:, np.arange(d), np.arange(d)] += 1.0
            cut = np.einsum("ij,cji->c", Qt, H @ np.linalg.inv(G))
        cut[picked] = -np.inf
        i = int(np.argmax(cut))
        index[k], reduction[k], picked[i] = i, cut[i] / total if total > 0 else 0.0, True
        A += V[i].T @ V[i]
    return index, reduction


def _padded(blocks: Sequence[np.ndarray], n: int) -> np.ndarray:
    """(M, m, d) the M blocks zero-padded to the tallest one's m rows, after checking 1 ≤ n ≤ M.

    Zero rows add nothing to a log-determinant gain or a variance reduction. One array, so each
    pick is a few large BLAS calls, not M small factorisations (which threaded BLAS on a busy
    machine ran ~100x slower)."""
    M = len(blocks)
    if not 1 <= n <= M:
        raise InputError(f"n={n}: pick between 1 and the pool's {M} configurations")
    d = np.shape(blocks[0])[1]
    m = max(np.shape(b)[0] for b in blocks)
    V = np.zeros((M, m, d))
    for c, b in enumerate(blocks):
        V[c, : np.shape(b)[0]] = b
    return V


def selection_factor(
    posterior: Posterior, band: LinearBand, support_weight: float = 1.0, kind: str = "energy"
) -> np.ndarray:
    """(P, d) B with BBᵀ = s²C + β·Σ (the module docstring), d the rank of the right side; s the
    calibration's ``std_scale`` of rows of ``kind`` (``"energy"`` or ``"force"``)."""
    if not support_weight >= 0:
        raise InputError(f"support_weight={support_weight}: must be a number >= 0")
    s = 1.0
    if band.calibration:
        factors = calibration_factors(band.calibration, np.array([KIND_CODES[kind]]), np.ones(1), 1)
        s = float(factors["std_scale"][0])
    A = s**2 * (band.factor @ band.factor.T) + support_weight * np.asarray(posterior.sigma_, dtype=np.float64)
    w, v = np.linalg.eigh((A + A.T) / 2)
    keep = w > w.max(initial=0.0) * 1e-14
    return v[:, keep] * np.sqrt(w[keep])


def _check_rows(rows: str, noise: float | None, criterion: str = "information") -> None:
    """An InputError for a ``rows`` not in :data:`ROW_KINDS`, a ``criterion`` not in
    :data:`CRITERIA` or a given ``noise`` not above 0."""
    if rows not in ROW_KINDS:
        raise InputError(f"rows={rows!r}: use one of {', '.join(ROW_KINDS)}")
    if criterion not in CRITERIA:
        raise InputError(f"criterion={criterion!r}: use one of {', '.join(CRITERIA)}")
    if noise is not None and not (np.isfinite(noise) and noise > 0):
        raise InputError(f"noise={noise}: must be a number > 0")


def select_rows(
    posterior: Posterior,
    X: np.ndarray,
    n: int,
    *,
    seed: int | None = 0,
    n_samples: int | None = None,
    method: str = "uniform",
    support_weight: float = 1.0,
    rows: str = "energy",
    force_rows: Sequence[np.ndarray] | None = None,
    noise: float | None = None,
    criterion: str = "information",
) -> Selection:
    """Pick ``n`` of the configurations whose per-atom energy rows are ``X`` (M, P; the intercept
    column included when the posterior has one), as the module docstring describes; the bands of
    the picks are ``popsdask predict --per-atom``'s with the same ``n_samples``, ``method`` and
    ``seed``.

    Parameters
    ----------
    rows : what each configuration contributes (:data:`ROW_KINDS`): ``"energy"`` its per-atom
        energy row (greedy max-determinant), ``"forces"`` its force rows, ``"both"`` both (greedy
        log-determinant gain)
    force_rows : with ``rows`` ``"forces"``/``"both"``, M arrays (3N_c, P) of force design rows
        (:func:`pool_force_rows`)
    noise : with force rows or ``criterion="variance"``, the noise std σ of a labelled row (eV/Å;
        the per-atom energy row's in eV/atom); default 1/√α
    criterion : :data:`CRITERIA`: ``"information"`` (the greedy determinants above) or
        ``"variance"`` (:func:`greedy_block_variance`: the picks that lower the pool's summed
        predictive variance of the same rows most)
    """
    _check_rows(rows, noise, criterion)
    X = np.atleast_2d(np.asarray(X, dtype=np.float64))
    if X.shape[1] != posterior.n_features:
        raise InputError(
            f"pool rows have {X.shape[1]} columns, but the posterior has {posterior.n_features} parameters"
        )
    band = LinearBand.from_posterior(posterior, n_samples=n_samples, method=method, seed=seed)
    if rows == "energy" and criterion == "information":
        index, score = greedy_max_determinant(X @ selection_factor(posterior, band, support_weight), n)
    else:
        blocks = selection_blocks(posterior, band, X, force_rows, rows, noise=noise, support_weight=support_weight)
        greedy = greedy_block_determinant if criterion == "information" else greedy_block_variance
        index, score = greedy(blocks, n)
    # per-atom rows: predict --per-atom counts each as one atom for the calibration's offsets
    bands = band(X[index], np.full(index.size, KIND_CODES["energy"]), 1.0)
    return Selection(index=index, score=score, bands={k: bands[k] for k in ("mle", "std", "min", "max", "support")})


def selection_blocks(
    posterior: Posterior,
    band: LinearBand,
    X: np.ndarray,
    force_rows: Sequence[np.ndarray] | None,
    rows: str,
    *,
    noise: float | None = None,
    support_weight: float = 1.0,
) -> list[np.ndarray]:
    """M whitened blocks V_c = [x̂_c;] F_c B / σ (the module docstring): (3N_c [+ 1], d) each, the
    per-atom energy row x̂_c (``X``'s row c) first when ``rows == "both"``; with ``rows == "energy"``
    the (1, d) block x̂_c B / σ, B from the energy ``std_scale``."""
    sigma = 1.0 / np.sqrt(posterior.alpha_) if noise is None else float(noise)
    if not (np.isfinite(sigma) and sigma > 0):
        raise InputError(f"noise={noise}: must be a number > 0")
    if rows == "energy":
        V = X @ (selection_factor(posterior, band, support_weight) / sigma)
        return [V[c : c + 1] for c in range(V.shape[0])]
    if force_rows is None or len(force_rows) != X.shape[0]:
        got = "none" if force_rows is None else len(force_rows)
        raise InputError(f"rows={rows!r}: force rows of each of the {X.shape[0]} configurations are needed (got {got})")
    B = selection_factor(posterior, band, support_weight, kind="force") / sigma
    out = []
    for c, F in enumerate(force_rows):
        F = np.asarray(F, dtype=np.float64).reshape(-1, X.shape[1]) if np.size(F) else np.zeros((0, X.shape[1]))
        if F.shape[1] != posterior.n_features:
            raise InputError(
                f"force rows of configuration {c} have {F.shape[1]} columns, but the posterior has "
                f"{posterior.n_features} parameters"
            )
        out.append((np.vstack([X[c : c + 1], F]) if rows == "both" else F) @ B)
    return out


# ---------------------------------------------------------------------------- descriptors


def _store_backend(path: str | os.PathLike) -> DescriptorBackend:
    from ..io.store import open_store

    return backend_from_attrs(open_store(path, require_y=False).attrs, where=str(path))


def _fitted_store(posterior: Posterior) -> Path | None:
    """The descriptor store ``posterior`` was fitted on (its provenance), if it is still there."""
    path = re.sub(r"\[(train|test)\]$", "", str(posterior.provenance.get("input", "")))
    return Path(path) if path and Path(path).exists() else None


def _same_settings(posterior: Posterior, backend: DescriptorBackend, where: str) -> None:
    """Refuse ``backend`` when the store the posterior was fitted on records other settings."""
    fitted = _fitted_store(posterior)
    if fitted is None:  # gone: the columns' count and names are all there is to compare
        return
    theirs = _store_backend(fitted)
    if backend != theirs:
        raise InputError(
            f"{where}: descriptor settings {backend.to_attrs()} differ from those the posterior was fitted on "
            f"({fitted}: {theirs.to_attrs()})"
        )


def posterior_backend(posterior: Posterior, descriptors: str | os.PathLike | None = None) -> DescriptorBackend:
    """The descriptor of ``posterior``'s rows: from the store ``descriptors`` (refused when the
    store the posterior was fitted on records other settings), else from that store (its
    provenance); refused in one line when neither is there or the columns are not the posterior's."""
    if descriptors is not None and not Path(descriptors).exists():
        raise InputError(f"{descriptors}: no such descriptor store")
    path = descriptors or _fitted_store(posterior)
    if path is None:
        raise InputError(
            f"the store the posterior was fitted on ({posterior.provenance.get('input', 'not recorded')}) is not "
            "there; pass a descriptor store with its settings (descriptors=, --descriptors)"
        )
    backend = _store_backend(path)
    check_pool_descriptor(posterior, backend.n_features, backend.feature_names(), str(path))
    if descriptors is not None:
        _same_settings(posterior, backend, str(descriptors))
    return backend


def check_pool_descriptor(
    posterior: Posterior, n_features: int, feature_names: Sequence[str] | None, where: str
) -> None:
    """Refuse descriptors whose columns are not the posterior's parameters (count, then names)."""
    intercept = int(bool(posterior.settings.get("fit_intercept", False)))
    if n_features + intercept != posterior.n_features:
        raise InputError(
            f"{where}: {n_features} descriptor features, but the posterior has {posterior.n_features} parameters"
            + (" (intercept included)" if intercept else "")
        )
    names = list(posterior.feature_names[: posterior.n_features - intercept])
    if names and feature_names and list(feature_names) != names:
        first = next(i for i, (a, b) in enumerate(zip(feature_names, names, strict=True)) if a != b)
        raise InputError(
            f"{where}: feature {first} is {feature_names[first]!r}, but the posterior's is {names[first]!r} "
            "(other descriptor settings)"
        )


# ---------------------------------------------------------------------------- pools


def read_pool(paths: str | os.PathLike | Sequence[str | os.PathLike], elements: Sequence[str]) -> list[Configuration]:
    """Configurations of a pool, labelled or not: extxyz files, any file ASE reads (a LAMMPS
    text dump's atom types are ``elements`` in order, as the descriptors number them), and
    directories of them (searched for :data:`POOL_SUFFIXES`). Refused in one line at the first
    unreadable file or configuration."""
    from ase.io.formats import UnknownFileTypeError, filetype

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    pool: list[Configuration] = []
    for p in expand_paths(paths, POOL_SUFFIXES):
        lower = p.name.lower()
        if any(lower.endswith(s) for s in (".xyz", ".extxyz", ".xyz.xz", ".extxyz.xz", ".xyz.gz", ".extxyz.gz")):
            pool += read_extxyz(p)
            continue
        try:
            dump = filetype(str(p), guess=False) == "lammps-dump-text"
        except UnknownFileTypeError:  # read_extxyz names the fault
            dump = False
        pool += _read_dump(p, elements) if dump else read_extxyz(p, format=None)
    for cfg in pool:
        validate_configuration(cfg, elements=elements, require_energy=False, require_forces=False)
    return pool


def _read_dump(path: Path, elements: Sequence[str]) -> list[Configuration]:
    import ase.io

    try:
        frames = ase.io.read(path, index=":", format="lammps-dump-text", specorder=list(elements))
    except Exception as err:  # ASE raises many types for malformed files
        raise InputError(f"{path}: unreadable LAMMPS dump ({type(err).__name__}: {err})") from err
    return [Configuration.from_atoms(a, name=f"{path.name}:{i}", source=str(path)) for i, a in enumerate(frames)]


def pool_energy_rows(
    configurations: Sequence[Configuration], backend: DescriptorBackend, *, fit_intercept: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(M, P) per-atom energy design rows of ``configurations`` (labels not needed), with the
    intercept column when ``fit_intercept``, and (M,) the descriptors' reference pair energy per
    atom (the potential's energy per atom is row·θ plus it).

    The energy row is the sum of the backend's per-atom rows (:func:`~popsdask.atomistic.
    descriptors.base.atom_rows`) when it gives them: no force rows are computed (at 2,000 W atoms
    and 2J = 4, 4.5x less CPU than the full rows: ``benchmarks/selection_cost.py``); else the
    energy row of its ``rows``.
    """
    X, ref = [], []
    for cfg in configurations:
        if hasattr(backend, "atom_rows"):
            block = atom_rows(backend, cfg)
            x, r = block.X.sum(axis=0), block.reference.sum()
        else:
            if cfg.energy is None or cfg.forces is None:  # rows need labels: placeholders, never read back
                cfg = replace(cfg, energy=0.0, forces=np.zeros((cfg.n_atoms, 3)))
            block = backend.rows(cfg)
            row = np.flatnonzero(block.kind == KIND_CODES["energy"])[0]
            x, r = block.X[row], block.reference[row]
        X.append(x / cfg.n_atoms)
        ref.append(r / cfg.n_atoms)
    rows = np.asarray(X, dtype=np.float64)
    if fit_intercept:
        rows = np.hstack([rows, np.ones((rows.shape[0], 1))])
    return rows, np.asarray(ref, dtype=np.float64)


def pool_force_rows(
    configurations: Sequence[Configuration], backend: DescriptorBackend, *, fit_intercept: bool = False
) -> list[np.ndarray]:
    """Per configuration its (3N, P) force design rows (atom-major, x y z; labels not needed),
    from the backend's ``rows``, with the intercept column (zeros: a constant energy exerts no
    force) when ``fit_intercept``."""
    out = []
    for cfg in configurations:
        if cfg.energy is None or cfg.forces is None:  # rows need labels: placeholders, never read back
            cfg = replace(cfg, energy=0.0, forces=np.zeros((cfg.n_atoms, 3)))
        block = backend.rows(cfg)
        F = np.asarray(block.X[block.kind == KIND_CODES["force"]], dtype=np.float64)
        out.append(np.hstack([F, np.zeros((F.shape[0], 1))]) if fit_intercept else F)
    return out


def select_configurations(
    posterior: Posterior,
    configurations: Sequence[Configuration],
    n: int,
    *,
    backend: DescriptorBackend | None = None,
    seed: int | None = 0,
    n_samples: int | None = None,
    method: str = "uniform",
    support_weight: float = 1.0,
    rows: str = "energy",
    noise: float | None = None,
    criterion: str = "information",
) -> list[Configuration]:
    """The ``n`` configurations of ``configurations`` most worth labelling (module docstring).

    Parameters
    ----------
    posterior : the fitted posterior
    configurations : the pool (labels not needed), e.g. :func:`read_pool` of an MD dump
    n : picks, 1 ≤ n ≤ len(configurations)
    backend : the posterior's descriptor; default :func:`posterior_backend` (its fitted store)
    seed, n_samples, method : the posterior's members, as ``popsdask predict``'s
    support_weight : β, the weight of the epistemic covariance (support score) beside the band
    rows, noise, criterion : what each configuration contributes, the noise std of a labelled row
        and how the batch is chosen (:func:`select_rows`); ``"forces"`` and ``"both"`` compute
        each configuration's force rows

    Returns
    -------
    copies of the picked configurations in pick order; each ``info`` holds :data:`BAND_KEYS`
    (energies per atom, eV/atom, of the rows as the store holds them: without the descriptors'
    reference pair energy, which is ``energy_per_atom_reference``)
    """
    if not 1 <= n <= len(configurations):
        raise InputError(f"n={n}: pick between 1 and the pool's {len(configurations)} configurations")
    _check_rows(rows, noise, criterion)  # before any descriptor is computed
    if backend is None:
        backend = posterior_backend(posterior)
    else:
        check_pool_descriptor(posterior, backend.n_features, backend.feature_names(), "backend")
        _same_settings(posterior, backend, "backend")
    intercept = bool(posterior.settings.get("fit_intercept", False))
    X, ref = pool_energy_rows(configurations, backend, fit_intercept=intercept)
    F = None if rows == "energy" else pool_force_rows(configurations, backend, fit_intercept=intercept)
    sel = select_rows(
        posterior, X, n, seed=seed, n_samples=n_samples, method=method, support_weight=support_weight,
        rows=rows, force_rows=F, noise=noise, criterion=criterion,
    )  # fmt: skip
    picks = [configurations[int(i)] for i in sel.index]
    return [
        replace(cfg, info={**cfg.info, **row, "energy_per_atom_reference": float(ref[i])})
        for cfg, i, row in zip(picks, sel.index, _records(sel), strict=True)
    ]


def _records(sel: Selection) -> list[dict[str, Any]]:
    cols = sel.columns()
    return [{k: v[j].item() for k, v in cols.items()} for j in range(sel.index.size)]


def select_from_store(
    posterior: Posterior,
    store: str | os.PathLike,
    n: int,
    *,
    seed: int | None = 0,
    n_samples: int | None = None,
    method: str = "uniform",
    support_weight: float = 1.0,
    rows: str = "energy",
    noise: float | None = None,
    criterion: str = "information",
) -> dict[str, np.ndarray]:
    """The ``n`` configurations of a descriptor store most worth labelling, as a table: (n,)
    columns by name (``pandas.DataFrame(table)`` makes it a data frame).

    A store records each configuration's design rows, name, source and atom count, not its
    positions: the table holds ``configuration`` (its index in the store), ``name``, ``source``
    (when recorded), ``n_atoms`` and :data:`BAND_KEYS`, one row per pick in pick order. Refused
    when the store's descriptor is not the posterior's. ``rows``, ``noise`` and ``criterion`` as
    :func:`select_rows` (force rows: the store's, by configuration).
    """
    from ..io.store import open_store

    _check_rows(rows, noise, criterion)
    ds = open_store(store, require_y=False)
    names = ds["feature_name"].values.tolist() if "feature_name" in ds.coords else ds.attrs.get("feature_names")
    check_pool_descriptor(posterior, ds.sizes["feature"], names, str(store))
    _same_settings(posterior, backend_from_attrs(ds.attrs, where=str(store)), str(store))
    n_configs = ds.sizes.get("configuration", 0)
    if "n_atoms" not in ds or "kind" not in ds.coords or "config" not in ds.coords:
        raise InputError(f"{store}: energies per atom need per-configuration n_atoms and row config/kind")
    if not 1 <= n <= n_configs:
        raise InputError(f"n={n}: pick between 1 and the store's {n_configs} configurations")
    energy = np.flatnonzero(ds["kind"].values == KIND_CODES["energy"])
    config = np.asarray(ds["config"].values)[energy]
    n_atoms = np.asarray(ds["n_atoms"].values, dtype=np.float64)
    X = np.asarray(ds["X"].data[energy].compute(), dtype=np.float64) / n_atoms[config][:, None]
    if bool(posterior.settings.get("fit_intercept", False)):
        X = np.hstack([X, np.ones((X.shape[0], 1))])
    if n > X.shape[0]:
        raise InputError(f"n={n}: the store has energy rows for {X.shape[0]} configurations only")
    F = None
    if rows != "energy":
        force = np.flatnonzero(ds["kind"].values == KIND_CODES["force"])
        XF = np.asarray(ds["X"].data[force].compute(), dtype=np.float64)
        if bool(posterior.settings.get("fit_intercept", False)):
            XF = np.hstack([XF, np.zeros((XF.shape[0], 1))])
        # each configuration's force rows in store order, by one stable sort (not a scan per configuration)
        owner = np.asarray(ds["config"].values)[force]
        order = np.argsort(owner, kind="stable")
        bounds = np.searchsorted(owner[order], config, side="left"), np.searchsorted(owner[order], config, "right")
        F = [XF[order[a:b]] for a, b in zip(*bounds, strict=True)]
    sel = select_rows(
        posterior, X, n, seed=seed, n_samples=n_samples, method=method, support_weight=support_weight,
        rows=rows, force_rows=F, noise=noise, criterion=criterion,
    )  # fmt: skip
    picked = config[sel.index]
    table: dict[str, np.ndarray] = {"configuration": picked}
    for var in ("name", "source"):
        if var in ds:
            table[var] = np.asarray(ds[var].values)[picked].astype(str)
    table["n_atoms"] = n_atoms[picked].astype(np.int64)
    cols = sel.columns()
    del cols["pool_index"]  # a position among the energy rows: ``configuration`` is the store's index
    table.update(cols)
    return table


# ---------------------------------------------------------------------------- output


def picks_table(picks: Sequence[Configuration]) -> dict[str, np.ndarray]:
    """The picks as a table: ``name``, ``source``, ``n_atoms`` and their bands' keys, (n,) each."""
    keys = [*BAND_KEYS, "energy_per_atom_reference"]
    return {
        "name": np.array([c.name for c in picks]),
        "source": np.array([c.source for c in picks]),
        "n_atoms": np.array([c.n_atoms for c in picks]),
        **{k: np.array([c.info[k] for c in picks]) for k in keys},
    }


def _write_csv(table: Mapping[str, np.ndarray], path: Path) -> None:
    """Columns as CSV, floats to full precision (Python's shortest round-trip repr)."""
    import csv

    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(list(table))
        out.writerows(zip(*(np.asarray(v).tolist() for v in table.values()), strict=True))


def write_picks(
    picks: Sequence[Configuration] | Mapping[str, np.ndarray], path: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Write picked configurations as extended XYZ (``.extxyz``/``.xyz``: positions, any labels,
    the bands in each frame's info) or a table (``.csv``), or a store's picks (a table from
    :func:`select_from_store`) as ``.csv``; atomically (a temporary file renamed into place)."""
    import ase.io

    out = Path(path)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
    csv = out.suffix.lower() == ".csv"
    if not csv and isinstance(picks, Mapping):
        raise InputError(f"{out}: a store's picks are a table (no positions): write .csv")
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        if isinstance(picks, Mapping):
            _write_csv(picks, tmp)
        elif csv:
            _write_csv(picks_table(picks), tmp)
        else:
            ase.io.write(tmp, [c.to_atoms() for c in picks], format="extxyz")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
