"""Fast uncertainty propagation by implicit differentiation of atomic minima (and saddles).

For a linear-in-descriptor potential ``E(X; θ) = θ·D(X) + R(X)`` (``R`` the fixed reference
pair, e.g. ZBL) a stationary point ``X*`` of the MLE ``θ0`` moves, under ``θ = θ0 + Δ``, by
``ΔX* = −H⁻¹ Gᵀ Δ`` with ``H`` the Hessian at ``X*`` and ``G = ∇ₓD`` (P × 3N), and the relaxed
energy is, to second order (Maliyov, Grigorev & Swinburne, arXiv:2407.02414; Perez et al.,
section III.F)::

    E*(θ) ≈ E*(θ0) + Δ·D(X*) − ½ Δᵀ G H⁻¹ Gᵀ Δ.

The first two terms ("first order") are the unrelaxed energy of the member at the MLE
structure; the last ("second order") is the relaxation. Homogeneous strain is handled as extra
coordinates: the structure is ``x' = (X + u) M``, ``cell' = cell M`` with ``M = I + ε(e)`` and
``e`` the engineering Voigt strain restricted to a basis (``iso``: one, ``aniso``: three normal,
``full``: six components), scaled by ``L = V^{1/3}`` so that every coordinate is a length (Å)
and the Hessian has one unit (eV/Å²). The descriptor gradients with respect to these
coordinates come from the force rows (``−∂D/∂x``) and virial rows (``W = −σV``, so
``∂D/∂M = −M⁻ᵀ W``) of LAMMPS's ``compute snap`` (:func:`popsdask.atomistic.descriptors.snap.snap_rows`),
and the reference pair's from its last column.

**Hessian**: central finite differences (step ``h``, default 1e-3 Å) of those analytic
descriptor gradients, one column per coordinate. Every displacement gives the derivative of the
gradient of *each* descriptor, ``T_k = ∂²D_k/∂z²``, so the MLE Hessian ``H = Σ θ0_k T_k + ∂²R``
and, for free, the change of the Hessian with θ: ``∂H/∂θ_k = T_k``. The latter is kept in the
subspace of the softest modes to flag members whose predicted Hessian would change inertia
(a minimum becoming indefinite). Tests check ``H`` against finite differences of the forces of
LAMMPS's ``pair_style snap`` with the exported MLE, an independent route.

The three translations are zero modes: they are projected out of ``H`` and of the right-hand
sides, and shifted to a positive eigenvalue so that one symmetric eigendecomposition (reused
for every member) solves the system; at a saddle ``H`` keeps its one negative eigenvalue and
stays invertible.

The expansion is only valid near the MLE: :meth:`Expansion.predict` flags members whose
first-order energy change is large relative to the energy scale, whose predicted displacement
is large, or whose Hessian (MLE Hessian plus ``Σ Δ_k T_k`` in the soft subspace) changes
inertia or softens beyond a threshold; :mod:`popsdask.properties.implicit` sends
those members to the brute-force route automatically.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.validation import InputError
from .configurations import Configuration
from .descriptors.snap import SnapSettings
from .lammps_backend import voigt_to_matrix

__all__ = [
    "STRAIN_BASES",
    "Expansion",
    "Prediction",
    "expand",
    "generalized_gradients",
    "strain_basis",
]

#: strain coordinates -> engineering Voigt strain basis (6, k)
STRAIN_BASES: dict[str, np.ndarray] = {
    "none": np.zeros((6, 0)),
    "iso": np.array([[1.0], [1.0], [1.0], [0.0], [0.0], [0.0]]),
    "aniso": np.eye(6)[:, :3],
    "full": np.eye(6),
}


def strain_basis(strain: str) -> np.ndarray:
    """(6, k) engineering-Voigt basis of the strain coordinates ``none|iso|aniso|full``."""
    try:
        return STRAIN_BASES[strain]
    except KeyError:
        raise InputError(f"strain={strain!r}: use one of {sorted(STRAIN_BASES)}") from None


def _deformation(e_voigt: np.ndarray) -> np.ndarray:
    """M = I + ε for an engineering Voigt strain (xx, yy, zz, 2yz, 2xz, 2xy)."""
    xx, yy, zz, yz, xz, xy = e_voigt
    return np.eye(3) + np.array([[xx, xy / 2, xz / 2], [xy / 2, yy, yz / 2], [xz / 2, yz / 2, zz]])


def _unlabelled(atoms: Any, positions: np.ndarray, cell: np.ndarray) -> Configuration:
    n = len(atoms)
    return Configuration(
        name="implicit",
        symbols=list(atoms.get_chemical_symbols()),
        positions=np.asarray(positions, dtype=float),
        cell=np.asarray(cell, dtype=float),
        pbc=np.asarray(atoms.pbc, dtype=bool),
        energy=0.0,
        forces=np.zeros((n, 3)),
        stress=np.zeros(6),
    )


def generalized_gradients(
    atoms: Any, z: np.ndarray, settings: SnapSettings, basis: np.ndarray, length: float
) -> tuple[np.ndarray, np.ndarray]:
    """Descriptors and their gradients in the coordinates ``z = (u, s)`` about ``atoms``.

    Parameters
    ----------
    atoms : the reference structure (z = 0)
    z : (3N + k,) displacements u (Å, atom-major) and scaled strains s = L e (Å)
    settings : descriptor settings
    basis : (6, k) strain basis (engineering Voigt)
    length : L, the strain scale (Å)

    Returns
    -------
    D : (P + 1,) descriptor vector at z, last entry the reference pair energy
    G : (3N + k, P + 1) ∂D/∂z (same columns)
    """
    n = len(atoms)
    k = basis.shape[1]
    u = np.asarray(z[: 3 * n]).reshape(n, 3)
    e = basis @ np.asarray(z[3 * n :]) / length if k else np.zeros(6)
    m = _deformation(e)
    pos = (np.asarray(atoms.positions) + u) @ m
    cell = np.asarray(atoms.cell[:]) @ m
    rows = settings.rows(_unlabelled(atoms, pos, cell), virial=True)  # the protocol (SNAP: snap_rows)
    A = np.concatenate([rows.X, rows.reference[:, None]], axis=1)  # (1 + 3N + 6, P + 1)
    D = A[0]
    dDdx = -A[1 : 1 + 3 * n].reshape(n, 3, -1)  # ∂D/∂x' (force rows are −∂D/∂x)
    dDdu = np.einsum("iap,ab->ibp", dDdx, m)  # ∂D/∂u_ia = Σ_b ∂D/∂x'_ib M_ab (M symmetric)
    out = [dDdu.reshape(3 * n, -1)]
    if k:
        W = voigt_to_matrix(A[-6:])  # (3, 3, P + 1), W = -σV
        dDdM = -np.einsum("ba,bcp->acp", np.linalg.inv(m), W)  # −M⁻ᵀ W
        sym = 0.5 * (dDdM + dDdM.transpose(1, 0, 2))
        dDde = np.array([dDdM[0, 0], dDdM[1, 1], dDdM[2, 2], sym[1, 2], sym[0, 2], sym[0, 1]])
        out.append(basis.T @ dDde / length)
    return D, np.concatenate(out, axis=0)


@dataclass
class Prediction:
    """Implicit predictions for a batch of parameter vectors (n members).

    Attributes
    ----------
    energy_first : (n,) E0 + Δ·D(X*) (+ the work of an imposed strain): no relaxation
    energy_second : (n,) plus the relaxation term −½ rᵀ H⁻¹ r (the second-order prediction)
    dz : (n, 3N + k) predicted change of the coordinates (u in Å, scaled strain in Å)
    positions : (n, N, 3) predicted stationary positions (Å)
    cells : (n, 3, 3) predicted cells (Å)
    volume : (n,) predicted cell volume (Å^3), det of the predicted cell
    rel_energy_change : (n,) |Δ·D| / (|θ0·D| + ε): relative first-order energy change
    max_displacement : (n,) largest predicted atomic displacement (Å)
    hessian_change : (n,) largest |eigenvalue| of Λ^{-½} Vᵀ ΔH V Λ^{-½} in the soft subspace
    n_negative : (n,) negative eigenvalues of the predicted Hessian in the soft subspace (the
        modes a parameter change can excite)
    flag : (n,) "ok" or why the member is too far from the MLE for the expansion
    """

    energy_first: np.ndarray
    energy_second: np.ndarray
    dz: np.ndarray
    positions: np.ndarray
    cells: np.ndarray
    volume: np.ndarray
    rel_energy_change: np.ndarray
    max_displacement: np.ndarray
    hessian_change: np.ndarray
    n_negative: np.ndarray
    flag: np.ndarray

    @property
    def ok(self) -> np.ndarray:
        return self.flag == "ok"


@dataclass
class Expansion:
    """Second-order model of ``E(z; θ)`` about a stationary point ``(z = 0, θ0)``.

    ``E(z; θ0 + Δ) ≈ E0 + Δ·D0 + (g0 + G Δ)·z + ½ zᵀ H z`` with ``z = (u, s)``; the
    ``Δ``-dependence of ``H`` (``T_k``) enters only the validity checks (it is third order).
    Build with :func:`expand`.

    Attributes
    ----------
    atoms : the stationary structure at θ0
    theta0 : (P,) coefficients of the expansion point
    energy0 : E(X*; θ0) (eV), reference pair included
    D0 : (P,) descriptor vector at X* (∂E/∂θ)
    g0 : (m,) gradient of E at z = 0 for θ0 (≈ 0 on relaxed coordinates; the stress work on
        strains imposed from outside)
    G : (m, P) ∂D/∂z at z = 0
    H : (m, m) Hessian of E at z = 0 for θ0, translations projected out
    basis : (6, k) strain basis; length : strain scale L (Å)
    soft_vectors : (m, r) eigenvectors of the r softest modes of H that overlap the descriptor
        gradients (translations and symmetry-breaking modes, which no Δθ excites, left out)
    soft_values : (r,) their eigenvalues
    soft_T : (P, r, r) descriptor Hessians T_k in that subspace
    seconds : wall time of the construction (s)
    """

    atoms: Any
    theta0: np.ndarray
    energy0: float
    D0: np.ndarray
    g0: np.ndarray
    G: np.ndarray
    H: np.ndarray
    basis: np.ndarray
    length: float
    soft_vectors: np.ndarray
    soft_values: np.ndarray
    soft_T: np.ndarray
    seconds: float = 0.0
    _factor: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def n_atoms(self) -> int:
        return len(self.atoms)

    @property
    def n_coords(self) -> int:
        return self.H.shape[0]

    @property
    def n_strain(self) -> int:
        return self.basis.shape[1]

    def translations(self) -> np.ndarray:
        """(m, 3) orthonormal translation modes (zero on strain coordinates)."""
        n = self.n_atoms
        t = np.zeros((self.n_coords, 3))
        for a in range(3):
            t[a : 3 * n : 3, a] = 1.0 / np.sqrt(n)
        return t

    def inertia(self) -> tuple[int, int]:
        """(negative, near-zero) eigenvalue counts of H outside the translations."""
        lam = np.linalg.eigvalsh(self._shifted(np.arange(self.n_coords))[0])
        scale = np.abs(lam).max()
        return int(np.sum(lam < -1e-8 * scale)), int(np.sum(np.abs(lam) <= 1e-8 * scale))

    def _shifted(self, free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = self.translations()[free]
        t = t[:, np.linalg.norm(t, axis=0) > 0]
        if t.size:
            t, _ = np.linalg.qr(t)
        hf = self.H[np.ix_(free, free)]
        proj = np.eye(len(free)) - t @ t.T
        hf = proj @ hf @ proj
        shift = float(np.mean(np.abs(np.diag(hf)))) or 1.0
        return hf + shift * (t @ t.T), proj

    def factor(self, free: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(eigenvalues, eigenvectors, projector) of H on the free coordinates (cached)."""
        key = tuple(int(i) for i in free)
        if key not in self._factor:
            hs, proj = self._shifted(free)
            lam, vec = np.linalg.eigh(hs)
            self._factor[key] = (lam, vec, proj)
        return self._factor[key]

    def predict(
        self,
        theta: np.ndarray,
        *,
        imposed_strain: np.ndarray | None = None,
        n_negative_expected: int | None = None,
        max_rel_energy_change: float = 0.05,
        max_displacement: float = 0.3,
        max_hessian_change: float = 0.5,
    ) -> Prediction:
        """Stationary energies, positions and cells for a batch of parameter vectors.

        Parameters
        ----------
        theta : (n, P) or (P,) parameter vectors (not differences)
        imposed_strain : (n, k) scaled strains s = L e to impose instead of relaxing the strain
            coordinates (e.g. a defect cell following the bulk lattice constant), or None
        n_negative_expected : negative Hessian eigenvalues expected (0 at a minimum, 1 at a
            saddle; default: those of the MLE Hessian)
        max_rel_energy_change, max_displacement, max_hessian_change : flag thresholds

        Returns
        -------
        :class:`Prediction`
        """
        theta = np.atleast_2d(np.asarray(theta, dtype=float))
        if theta.shape[1] != self.theta0.size:
            raise InputError(f"implicit: θ has {theta.shape[1]} columns, the expansion {self.theta0.size}")
        delta = theta - self.theta0
        n_mem = delta.shape[0]
        m, n3, k = self.n_coords, 3 * self.n_atoms, self.n_strain
        g = self.g0[None, :] + delta @ self.G.T  # (n, m) gradient at z = 0 for each member
        dz = np.zeros((n_mem, m))
        e1 = self.energy0 + delta @ self.D0
        if imposed_strain is not None:
            c = np.atleast_2d(np.asarray(imposed_strain, dtype=float)).reshape(n_mem, k)
            cidx = np.arange(n3, m)
            free = np.arange(n3)
            dz[:, cidx] = c
            hcc = self.H[np.ix_(cidx, cidx)]
            e_imp = np.einsum("nc,nc->n", g[:, cidx], c) + 0.5 * np.einsum("nc,cd,nd->n", c, hcc, c)
            r = g[:, free] + c @ self.H[np.ix_(free, cidx)].T
            e1 = e1 + self.g0[cidx] @ c.T
        else:
            free = np.arange(m)
            e_imp = np.zeros(n_mem)
            r = g
        lam, vec, proj = self.factor(free)
        coeff = (r @ proj @ vec) / lam  # (n, m_f) in the eigenbasis
        zf = -(coeff @ vec.T) @ proj
        dz[:, free] = zf
        # E = ... + r·z_f + ½ z_fᵀ H z_f = ... − ½ rᵀ H⁻¹ r at the stationary point
        e2 = self.energy0 + delta @ self.D0 + e_imp - 0.5 * np.einsum("nf,nf->n", coeff * lam, coeff)

        n = self.n_atoms
        u = dz[:, :n3].reshape(n_mem, n, 3)
        pos0 = np.asarray(self.atoms.positions)
        cell0 = np.asarray(self.atoms.cell[:])
        positions = np.empty((n_mem, n, 3))
        cells = np.empty((n_mem, 3, 3))
        for i in range(n_mem):
            e_v = self.basis @ dz[i, n3:] / self.length if k else np.zeros(6)
            mm = _deformation(e_v)
            positions[i] = (pos0 + u[i]) @ mm
            cells[i] = cell0 @ mm
        volume = np.abs(np.linalg.det(cells))

        # validity diagnostics
        scale = abs(float(self.theta0 @ self.D0)) + 1e-12
        rel = np.abs(delta @ self.D0) / scale
        ut = u - u.mean(axis=1, keepdims=True)
        disp = np.linalg.norm(ut, axis=2).max(axis=1) if n else np.zeros(n_mem)
        if self.soft_T.size:
            dH = np.einsum("np,pab->nab", delta, self.soft_T)  # (n, r, r)
            lam_s = self.soft_values
            inv = 1.0 / np.sqrt(np.abs(lam_s))
            rel_h = np.linalg.eigvalsh(dH * inv[None, :, None] * inv[None, None, :])
            hchange = np.abs(rel_h).max(axis=1)
            n_neg = np.sum(np.linalg.eigvalsh(np.diag(lam_s)[None] + dH) < 0, axis=1)
        else:
            hchange = np.zeros(n_mem)
            n_neg = np.zeros(n_mem, dtype=int)
        expected = int(np.sum(self.soft_values < 0)) if n_negative_expected is None else n_negative_expected
        flags = np.full(n_mem, "ok", dtype="<U80")
        for i in range(n_mem):
            why = []
            if n_neg[i] != expected:
                why.append(f"predicted Hessian has {int(n_neg[i])} negative modes (expected {expected})")
            if hchange[i] > max_hessian_change:
                why.append(f"Hessian change {hchange[i]:.2f} > {max_hessian_change:g}")
            if rel[i] > max_rel_energy_change:
                why.append(f"|Δθ·D|/|θ·D| {rel[i]:.3f} > {max_rel_energy_change:g}")
            if disp[i] > max_displacement:
                why.append(f"displacement {disp[i]:.2f} Å > {max_displacement:g}")
            if why:
                flags[i] = ("far from MLE: " + "; ".join(why))[:80]
        return Prediction(e1, e2, dz, positions, cells, volume, rel, disp, hchange, n_neg.astype(int), flags)


def expand(
    atoms: Any,
    theta0: np.ndarray,
    settings: SnapSettings,
    *,
    strain: str = "none",
    h: float = 1e-3,
    n_soft: int = 16,
) -> Expansion:
    """Build the implicit expansion about a stationary structure of the potential θ0.

    Parameters
    ----------
    atoms : a minimum (or saddle) of θ0 (relaxed to tight forces, and zero stress on any
        strain coordinate that will be relaxed)
    theta0 : (P,) coefficients of the expansion point (the MLE)
    settings : descriptor settings of θ
    strain : strain coordinates ``none``, ``iso``, ``aniso`` or ``full``
    h : finite-difference step (Å) of the Hessian (central differences of the analytic
        descriptor gradients of ``compute snap``)
    n_soft : number of softest modes in which the θ-dependence of H is kept for the checks

    Returns
    -------
    :class:`Expansion` (cost: 2 (3N + k) + 1 ``compute snap`` calls)
    """
    t0 = time.perf_counter()
    theta0 = np.asarray(theta0, dtype=float).ravel()
    if theta0.size != settings.n_features:
        raise InputError(f"implicit: θ0 has {theta0.size} values, the settings {settings.n_features}")
    basis = strain_basis(strain)
    n = len(atoms)
    length = float(abs(np.linalg.det(atoms.cell[:]))) ** (1.0 / 3.0) if basis.shape[1] else 1.0
    m = 3 * n + basis.shape[1]
    theta_aug = np.append(theta0, 1.0)
    D, G = generalized_gradients(atoms, np.zeros(m), settings, basis, length)
    T = np.empty((m, m, theta_aug.size))
    for j in range(m):
        dz = np.zeros(m)
        dz[j] = h
        _, gp = generalized_gradients(atoms, dz, settings, basis, length)
        _, gm = generalized_gradients(atoms, -dz, settings, basis, length)
        T[:, j, :] = (gp - gm) / (2 * h)
    T = 0.5 * (T + T.transpose(1, 0, 2))
    H = T @ theta_aug
    exp = Expansion(
        atoms=atoms.copy(),
        theta0=theta0,
        energy0=float(D @ theta_aug),
        D0=D[:-1].copy(),
        g0=G @ theta_aug,
        G=G[:, :-1].copy(),
        H=H,
        basis=basis,
        length=length,
        soft_vectors=np.zeros((m, 0)),
        soft_values=np.zeros(0),
        soft_T=np.zeros((theta0.size, 0, 0)),
    )
    exp.atoms.calc = None
    # translations out of H, then the soft subspace for the validity checks
    hs, proj = exp._shifted(np.arange(m))
    exp.H = proj @ H @ proj
    lam, vec = np.linalg.eigh(hs)
    tr = exp.translations()
    keep = np.linalg.norm(tr.T @ vec, axis=0) < 0.5
    # only modes a parameter change can excite: those overlapping the descriptor gradients
    # (symmetry-breaking modes, e.g. hcp's unstable shuffles, have none and never move)
    weight = np.linalg.norm(vec.T @ G[:, :-1], axis=1)
    keep &= weight > 1e-6 * weight.max()
    lam, vec = lam[keep], vec[:, keep]
    order = np.argsort(np.abs(lam))[: min(n_soft, lam.size)]
    order = np.union1d(order, np.flatnonzero(lam < 0))  # every negative mode is soft
    vs = vec[:, order]
    exp.soft_vectors = vs
    exp.soft_values = lam[order]
    exp.soft_T = np.einsum("ar,abp,bs->prs", vs, T[:, :, :-1], vs)
    exp.seconds = time.perf_counter() - t0
    return exp
