"""Transformation paths of bcc tungsten at constant volume (the paper's Fig. 6).

Four paths, each sampled at ``n_points`` values of a path fraction λ ∈ [0, 1], at the
potential's own relaxed bcc volume per atom (no relaxation along the path: every point is a
static energy of a 1- to 4-atom cell whose atoms sit where the path puts them):

* ``bain``: body-centred tetragonal, c/a from 1 (bcc) to √2 (fcc) — 2-atom bct cell;
* ``trigonal``: the bcc primitive cell stretched along [111] by p^(2/3) and contracted
  perpendicular by p^(-1/3), p = 4^λ from 1 (bcc) through 2 (simple cubic, λ = ½) to 4 (fcc) — the
  rhombohedral angle follows cos α = (p² − 4)/(p² + 8);
* ``orthorhombic``: face-centred orthorhombic cell (a, b, c) ∝ (1 + λ(√2 − 1), √2 − λ(√2 − 1), √2):
  bcc at λ = 0 and λ = 1 (two variants), body-centred tetragonal at λ = ½;
* ``hexagonal``: the Burgers path bcc (110) → hcp (0001) in the 4-atom orthohexagonal cell:
  the (110) rectangle's aspect ratio goes from √2 to √3, the stacking ratio from √2 to
  √(8/3) (ideal c/a) and alternate planes shuffle by 1/6 of the long edge; hcp at λ = 1.

Energies are per atom relative to the potential's relaxed bcc energy; the path coordinate (c/a,
p, b/a or λ) is stored as ``coordinate`` along each path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from .potential import Potential
from .relax import bcc_ground_state, static_energy

__all__ = ["NAME", "PATHS", "compute", "path_structure"]

NAME = "paths"
PATHS = ("bain", "trigonal", "orthorhombic", "hexagonal")
SQ2, SQ3 = np.sqrt(2.0), np.sqrt(3.0)


def _scaled(cell: np.ndarray, frac: np.ndarray, volume_per_atom: float, element: str) -> Any:
    from ase import Atoms

    n = len(frac)
    s = (volume_per_atom * n / abs(np.linalg.det(cell))) ** (1 / 3)
    return Atoms(f"{element}{n}", cell=cell * s, scaled_positions=frac, pbc=True)


def path_structure(path: str, lam: float, volume_per_atom: float, element: str = "W") -> tuple[Any, float]:
    """(structure, path coordinate) at fraction ``lam`` of ``path`` with the given volume per atom."""
    if path == "bain":
        ca = 1.0 + lam * (SQ2 - 1.0)
        cell = np.diag([1.0, 1.0, ca])
        return _scaled(cell, np.array([[0, 0, 0], [0.5, 0.5, 0.5]]), volume_per_atom, element), ca
    if path == "trigonal":
        p = 4.0**lam  # bcc at λ=0, sc at λ=½, fcc at λ=1
        prim = 0.5 * np.array([[-1.0, 1, 1], [1, -1, 1], [1, 1, -1]])
        n = np.ones(3) / SQ3
        strain = p ** (-1 / 3) * np.eye(3) + (p ** (2 / 3) - p ** (-1 / 3)) * np.outer(n, n)
        return _scaled(prim @ strain, np.zeros((1, 3)), volume_per_atom, element), p
    if path == "orthorhombic":
        a, b = 1.0 + lam * (SQ2 - 1.0), SQ2 - lam * (SQ2 - 1.0)
        frac = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
        return _scaled(np.diag([a, b, SQ2]), frac, volume_per_atom, element), b / a
    if path == "hexagonal":
        y = SQ2 + lam * (SQ3 - SQ2)
        z = SQ2 + lam * (np.sqrt(8.0 / 3.0) - SQ2)
        s = 0.5 - lam / 6.0
        frac = np.array([[0, 0, 0], [0.5, 0.5, 0], [0, s, 0.5], [0.5, s + 0.5, 0.5]])
        return _scaled(np.diag([1.0, y, z]), frac, volume_per_atom, element), lam
    raise KeyError(f"path {path!r}: use one of {PATHS}")


def compute(potential: Potential, *, paths: tuple[str, ...] | list[str] = PATHS, n_points: int = 21) -> xr.Dataset:
    """Energy per atom relative to bcc along each path, at the potential's bcc volume.

    Returns
    -------
    Dataset over (``path``, ``point``) with ``energy`` (eV/atom), ``coordinate`` (c/a, p, b/a
    or λ), ``fraction`` λ (point) and ``status`` per path.
    """
    a0, e_bcc = bcc_ground_state(potential)
    v = a0**3 / 2.0
    el = potential.element
    lams = np.linspace(0.0, 1.0, n_points)
    names = list(paths)
    energy = np.full((len(names), n_points), np.nan)
    coord = np.full((len(names), n_points), np.nan)
    status = []
    for i, name in enumerate(names):
        try:
            for j, lam in enumerate(lams):
                atoms, c = path_structure(name, float(lam), v, el)
                energy[i, j] = static_energy(atoms, potential) / len(atoms) - e_bcc
                coord[i, j] = c
            status.append("ok" if np.all(np.isfinite(energy[i])) else "non-finite energy")
        except Exception as err:  # a LAMMPS failure on one path leaves the others
            energy[i] = np.nan
            status.append(f"{type(err).__name__}: {err}"[:200])
    width = max(8, max(len(s) for s in status))
    return xr.Dataset(
        {
            "energy": (("path", "point"), energy, {"units": "eV/atom", "long_name": "energy relative to bcc"}),
            "coordinate": (("path", "point"), coord, {"long_name": "c/a (bain), p (trigonal), b/a (ortho), λ (hex)"}),
            "status": ("path", np.array(status, dtype=f"<U{width}")),
        },
        coords={
            "path": np.array(names, dtype="<U12"),
            "point": np.arange(n_points),
            "fraction": ("point", lams),
        },
        attrs={"property": NAME, "potential": potential.label, "volume_per_atom": v, "constant_volume": "bcc"},
    )
