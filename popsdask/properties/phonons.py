"""Phonons of bcc: dispersion along Γ–H–P–Γ–N and the vibrational density of states (Fig. 7).

For one potential, at its own relaxed lattice constant (:func:`~.relax.bcc_ground_state`),
the harmonic force constants come from finite ± displacements of one atom along x, y, z in a
cubic supercell with phonopy (six force calls; phonopy's symmetry search is skipped, it would
cost more than the forces), then the dynamical matrix is diagonalised along the path and on a Γ-centred mesh.

Path and coordinates are independent of the member: q-points are given in Cartesian units of
2π/a0, so ``distance`` (along the path, in 2π/a0) and the labels are the same for every
member and the ensemble stacks along ``sample``. Frequencies are in THz; imaginary ones are
returned negative (phonopy's convention), so ``min_frequency < 0`` flags a dynamically
unstable bcc lattice. The DOS is a Gaussian-broadened histogram of the mesh frequencies on a
fixed grid, normalised to 3 states per atom.

High-symmetry points of the bcc Brillouin zone (Cartesian, 2π/a): Γ (0,0,0), H (0,0,1),
P (½,½,½), N (½,½,0) — Setyawan & Curtarolo, Comput. Mater. Sci. 49, 299 (2010), Table 3.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from .cells import ground_state
from .potential import Potential
from .relax import static_results
from .status import short_reason, status_array

__all__ = ["NAME", "PATH", "compute", "force_constants", "frequencies_at", "q_reduced"]

NAME = "phonons"

#: Γ–H–P–Γ–N, Cartesian q in units of 2π/a (Setyawan & Curtarolo 2010)
PATH: tuple[tuple[str, tuple[float, float, float]], ...] = (
    ("Γ", (0.0, 0.0, 0.0)),
    ("H", (0.0, 0.0, 1.0)),
    ("P", (0.5, 0.5, 0.5)),
    ("Γ", (0.0, 0.0, 0.0)),
    ("N", (0.5, 0.5, 0.0)),
)

#: primitive bcc vectors in units of a (rows), the cell phonopy's q-points refer to
PRIMITIVE = np.array([[-0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.5, 0.5, -0.5]])

#: fixed DOS grid (THz): imaginary modes show up below 0
DOS_GRID = (-2.0, 14.0, 321)


def q_reduced(q_cart: np.ndarray) -> np.ndarray:
    """Cartesian q (units of 2π/a) -> reduced coordinates of the primitive reciprocal lattice."""
    return np.asarray(q_cart, dtype=float) @ PRIMITIVE.T


def path_qpoints(n_per_segment: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Cartesian q-points (2π/a), cumulative distance (2π/a) and labels along :data:`PATH`."""
    pts, labels = [], []
    for (la, qa), (_lb, qb) in zip(PATH[:-1], PATH[1:], strict=True):
        t = np.linspace(0.0, 1.0, n_per_segment)[:-1]
        seg = np.asarray(qa) + t[:, None] * (np.asarray(qb) - np.asarray(qa))
        pts.append(seg)
        labels += [la] + [""] * (len(t) - 1)
    pts.append(np.asarray(PATH[-1][1])[None, :])
    labels.append(PATH[-1][0])
    q = np.vstack(pts)
    dist = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(q, axis=0), axis=1))])
    return q, dist, labels


def force_constants(potential: Potential, a0: float, *, supercell: int = 4, displacement: float = 0.013) -> Any:
    """A phonopy object with the force constants of bcc at lattice constant ``a0``.

    Parameters
    ----------
    potential : the interactions
    a0 : cubic lattice constant (Å)
    supercell : repeats of the 2-atom cubic cell (4 -> 128 atoms)
    displacement : finite displacement (Å). Not exactly 0.01 Å: LAMMPS derives the ZBL half
        neighbour list from SNAP's full one with a 0.01 Å tie-break tolerance on coordinate
        differences (triclinic boxes), and a bcc crystal with one atom moved by exactly 0.01 Å
        then double-counts or drops a ZBL pair (−0.43 eV).
    """
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    el = potential.element
    unit = PhonopyAtoms(symbols=[el, el], cell=np.eye(3) * a0, scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]])
    # is_symmetry=False: phonopy's symmetry search of a 128-atom cell costs ~2 s per member,
    # six ± displacements of the one primitive atom cost six force calls (~0.1 s)
    ph = Phonopy(unit, supercell_matrix=np.eye(3, dtype=int) * supercell, primitive_matrix=PRIMITIVE, is_symmetry=False)
    ph.generate_displacements(distance=displacement, is_plusminus=True)
    forces = []
    for sc in ph.supercells_with_displacements:
        atoms = _to_ase(sc)
        res = static_results(atoms, potential)
        f = np.asarray(res["forces"], dtype=float)
        if not np.all(np.isfinite(f)):
            raise FloatingPointError("non-finite forces in a displaced supercell")
        forces.append(f - f.mean(axis=0))  # drift of a finite difference: remove the net force
    ph.forces = np.array(forces)
    ph.produce_force_constants()
    return ph


def _to_ase(cell: Any) -> Any:
    from ase import Atoms

    return Atoms(cell.symbols, cell=cell.cell, scaled_positions=cell.scaled_positions, pbc=True)


def frequencies_at(ph: Any, q_cart: np.ndarray) -> np.ndarray:
    """(nq, 3) frequencies (THz) at Cartesian q-points (2π/a), ascending per q-point."""
    ph.run_qpoints(q_reduced(np.atleast_2d(q_cart)))
    return np.asarray(ph.qpoints.frequencies, dtype=float)


def _dos(ph: Any, mesh: int, grid: np.ndarray, sigma: float) -> np.ndarray:
    ph.run_mesh([mesh] * 3, is_gamma_center=True)
    f = np.asarray(ph.mesh.frequencies, dtype=float)  # (nq, 3), irreducible q-points
    w = np.asarray(ph.mesh.weights, dtype=float)
    g = np.exp(-0.5 * ((grid[:, None, None] - f[None]) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    return np.einsum("fqb,q->f", g, w) / w.sum()


def compute(
    potential: Potential,
    *,
    supercell: int = 4,
    n_per_segment: int = 31,
    mesh: int = 20,
    sigma: float = 0.1,
    displacement: float = 0.013,
) -> xr.Dataset:
    """Phonon dispersion along Γ–H–P–Γ–N and DOS of bcc for one potential.

    Parameters
    ----------
    potential : the interactions
    supercell : repeats of the cubic cell for the force constants (4 -> 128 atoms; every
        point of the path's corners is commensurate with it)
    n_per_segment : q-points per path segment, ends included
    mesh : Γ-centred mesh for the DOS (``mesh`` points per axis before symmetry reduction)
    sigma : Gaussian broadening of the DOS (THz)
    displacement : finite displacement (Å)

    Returns
    -------
    Dataset with ``frequency`` (qpoint, band) in THz, ``dos`` (dos_frequency) in states/THz
    per atom, ``min_frequency``, ``max_frequency``, ``a0`` and ``status``; coordinates
    ``distance`` and ``label`` (qpoint), ``q`` (qpoint, axis) in 2π/a0.
    """
    q, dist, labels = path_qpoints(n_per_segment)
    grid = np.linspace(*DOS_GRID[:2], int(DOS_GRID[2]))
    freq = np.full((len(q), 3), np.nan)
    dos = np.full(grid.shape, np.nan)
    a0, _e0, status = ground_state(potential)
    if status == "ok":
        try:
            ph = force_constants(potential, a0, supercell=supercell, displacement=displacement)
            freq = frequencies_at(ph, q)
            dos = _dos(ph, mesh, grid, sigma)
            if not np.all(np.isfinite(freq)):
                status = "non-finite frequencies"
        except Exception as err:  # never raise out of compute: NaN + reason
            freq[:] = np.nan
            dos[:] = np.nan
            status = "phonons: " + short_reason(err)
    return xr.Dataset(
        {
            "frequency": (("qpoint", "band"), freq, {"units": "THz"}),
            "dos": (("dos_frequency",), dos, {"units": "1/THz per atom"}),
            "min_frequency": ((), float(np.min(freq)) if status == "ok" else np.nan, {"units": "THz"}),
            "max_frequency": ((), float(np.max(freq)) if status == "ok" else np.nan, {"units": "THz"}),
            "a0": ((), a0, {"units": "Å"}),
            "status": ((), status_array([status]).reshape(())),
        },
        coords={
            "qpoint": np.arange(len(q)),
            "band": np.arange(3),
            "distance": ("qpoint", dist, {"units": "2π/a0"}),
            "label": ("qpoint", status_array(labels)),
            "q": (("qpoint", "axis"), q, {"units": "2π/a0"}),
            "axis": status_array(["x", "y", "z"]),
            "dos_frequency": ("dos_frequency", grid, {"units": "THz"}),
        },
        attrs={
            "property": NAME,
            "potential": potential.label,
            "supercell": f"{supercell}x{supercell}x{supercell} cubic ({2 * supercell**3} atoms)",
            "path": "Γ-H-P-Γ-N",
        },
    )
