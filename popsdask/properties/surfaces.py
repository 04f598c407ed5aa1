"""Relaxed surface energies of bcc for the eleven facets of Table V.

For one potential at its own relaxed lattice constant ``a0``: a slab of the facet built with
:func:`ase.build.surface` from the *primitive* bcc cell (Miller indices converted from the
cubic ones, so the surface cell holds one atom per atomic plane — the smallest periodic slab
of the ideal facet), enough planes for ``thickness`` Å of material, ``vacuum`` Å of vacuum
between periodic images, atoms relaxed at fixed cell with LAMMPS's minimiser, and

    γ = (E_slab − N·e_bcc) / (2A)

in J/m² and eV/Å² (A: area of the surface cell; the two faces of a slab of a centrosymmetric
crystal are equivalent). The minimal surface cell does not allow reconstructions that need a
larger cell, as in the paper's table. Students can hold spurious structures far below bcc:
tungsten-3000 members turn (111) slabs into stacks of separated close-packed monolayers
(−4 eV/atom below bcc); such slabs are flagged (``"negative: ..."``, or ``"reconstructed: ..."``
when an atom moved more than ``max_displacement``), not dropped.

The default ``thickness`` of 12 Å (7 to 33 planes) converges γ of the teacher to 0.2 mJ/m²:
from 12 to 18 and 24 Å no facet changes by more than 1.6e-4 J/m²
(``tests/properties/test_defects.py`` compares two thicknesses).
"""

from __future__ import annotations

from functools import reduce
from math import gcd
from typing import Any

import numpy as np
import xarray as xr

from .cells import ground_state, unwrap_like
from .potential import Potential
from .relax import relax, static_energy
from .status import short_reason, status_array

__all__ = ["FACETS", "NAME", "compute", "primitive_indices", "slab", "surface_energy"]

NAME = "surfaces"

#: the facets of Table V, cubic Miller indices
FACETS: tuple[tuple[int, int, int], ...] = (
    (1, 0, 0),
    (1, 1, 0),
    (1, 1, 1),
    (2, 1, 0),
    (2, 1, 1),
    (3, 1, 0),
    (3, 1, 1),
    (3, 2, 0),
    (3, 2, 1),
    (3, 2, 2),
    (3, 3, 2),
)

#: primitive bcc vectors in units of a0 (rows): ase.build.bulk's primitive bcc cell
PRIMITIVE = np.array([[-0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.5, 0.5, -0.5]])

#: eV/Å² -> J/m²
EV_PER_A2_TO_J_PER_M2 = 16.021766208


def facet_name(hkl: tuple[int, int, int]) -> str:
    return "".join(str(i) for i in hkl)


def primitive_indices(hkl: tuple[int, int, int]) -> tuple[int, int, int]:
    """Miller indices of the cubic plane (hkl) with respect to the primitive bcc vectors.

    A plane with cubic normal n = (h, k, l) has primitive indices h_i ∝ a_i·n; the integers are
    made coprime.
    """
    raw = np.rint(2 * PRIMITIVE @ np.asarray(hkl, dtype=float)).astype(int)
    g = reduce(gcd, [abs(int(v)) for v in raw if v != 0])
    return tuple(int(v) // g for v in raw)  # type: ignore[return-value]


def interplanar_spacing(hkl: tuple[int, int, int], a0: float) -> float:
    """Distance between adjacent atomic planes (hkl) of bcc (Å): a0/|hkl|, halved when h+k+l is odd."""
    d = a0 / float(np.linalg.norm(hkl))
    return d if sum(hkl) % 2 == 0 else d / 2


def _reduce_in_plane(atoms: Any) -> Any:
    """Lagrange–Gauss reduction of the two in-plane cell vectors (same lattice, least skew)."""
    cell = np.array(atoms.cell[:])
    a, b = cell[0].copy(), cell[1].copy()
    for _ in range(100):
        if a @ a > b @ b:
            a, b = b, a
        m = round(float(a @ b) / float(a @ a))
        if m == 0:
            break
        b = b - m * a
    if np.dot(np.cross(a, b), cell[2]) < 0:
        b = -b
    out = atoms.copy()
    out.set_cell([a, b, cell[2]], scale_atoms=False)
    out.wrap()
    return out


def slab(hkl: tuple[int, int, int], a0: float, layers: int, vacuum: float = 12.0, element: str = "W") -> Any:
    """Slab of bcc facet ``hkl`` with ``layers`` atomic planes (one atom each) and ``vacuum`` Å between images.

    Periodic along all three axes (the vacuum separates the images; relaxations cannot lose
    atoms through a fixed boundary).
    """
    from ase.build import bulk, surface

    prim = bulk(element, "bcc", a=a0)
    s = surface(prim, primitive_indices(hkl), layers, vacuum=vacuum / 2.0, periodic=False)
    s.pbc = True
    normal = np.cross(s.cell[0], s.cell[1])
    normal /= np.linalg.norm(normal)
    if len(s) != layers:
        raise RuntimeError(f"slab ({facet_name(hkl)}): {len(s)} atoms for {layers} planes")
    z = np.sort(s.positions @ normal)
    gaps = np.diff(z)
    d = interplanar_spacing(hkl, a0)
    if not np.allclose(gaps, d, rtol=1e-6, atol=1e-8):
        raise RuntimeError(f"slab ({facet_name(hkl)}): plane spacings {gaps[:3]} differ from d = {d:.5f} Å")
    return _reduce_in_plane(s)


def surface_area(atoms: Any) -> float:
    """Area (Å²) of the surface cell spanned by the first two cell vectors."""
    return float(np.linalg.norm(np.cross(atoms.cell[0], atoms.cell[1])))


def surface_energy(energy: float, n_atoms: int, e_bcc: float, area: float) -> float:
    """γ = (E − N·e_bcc) / (2A) in eV/Å²."""
    return float((energy - n_atoms * e_bcc) / (2.0 * area))


def layers_for(hkl: tuple[int, int, int], a0: float, thickness: float) -> int:
    """Number of atomic planes so that the slab is at least ``thickness`` Å thick (≥ 4)."""
    return max(4, int(np.ceil(thickness / interplanar_spacing(hkl, a0))) + 1)


def compute(
    potential: Potential,
    *,
    thickness: float = 12.0,
    vacuum: float = 12.0,
    fmax: float = 1e-3,
    max_steps: int = 2000,
    facets: tuple[tuple[int, int, int], ...] = FACETS,
    relaxed: bool = True,
    max_displacement: float = 0.75,
) -> xr.Dataset:
    """Surface energies of the bcc facets of Table V for one potential.

    Parameters
    ----------
    potential : the interactions
    thickness : minimum slab thickness (Å); planes = ceil(thickness / d_hkl) + 1
    vacuum : vacuum between periodic images of the slab (Å, > 2 cutoffs is pointless, ≥ 10)
    fmax : force tolerance of the relaxations (eV/Å)
    max_steps : minimiser iterations per slab
    facets : cubic Miller indices (default: :data:`FACETS`)
    relaxed : relax the atoms (False: the unrelaxed, bulk-terminated γ)
    max_displacement : largest atomic displacement (Å) of a surface relaxation; beyond it the
        slab is flagged as reconstructed (the teacher's largest is 0.24 Å, on (322))

    Returns
    -------
    Dataset over ``surface`` (e.g. ``"110"``) with ``surface_energy`` (J/m²),
    ``surface_energy_ev`` (eV/Å²), ``unrelaxed_surface_energy`` (J/m²), ``n_layers``,
    ``area`` (Å²), ``max_force``, ``max_displacement`` (Å), ``a0`` and ``status`` (``"ok"``;
    ``"negative: ..."`` or ``"reconstructed: ..."`` with the converged γ kept; a failure with NaN).
    """
    n = len(facets)
    gamma = np.full(n, np.nan)
    gamma0 = np.full(n, np.nan)
    fmx = np.full(n, np.nan)
    moved = np.full(n, np.nan)
    layers = np.zeros(n)
    area = np.full(n, np.nan)
    a0, e0, gs_status = ground_state(potential)
    statuses = [gs_status] * n
    if gs_status == "ok":
        for k, hkl in enumerate(facets):
            try:
                nl = layers_for(hkl, a0, thickness)
                atoms = slab(hkl, a0, nl, vacuum, potential.element)
                layers[k], area[k] = nl, surface_area(atoms)
                gamma0[k] = surface_energy(static_energy(atoms, potential), len(atoms), e0, area[k])
                if not relaxed:
                    gamma[k], statuses[k] = gamma0[k], "ok"
                    continue
                r = relax(atoms, potential, cell="none", fmax=fmax, max_steps=max_steps)
                fmx[k] = r.max_force
                if not r.converged:
                    statuses[k] = r.reason
                    continue
                gamma[k] = surface_energy(r.energy, len(atoms), e0, area[k])
                moved[k] = float(
                    np.linalg.norm(unwrap_like(r.atoms, atoms.positions).positions - atoms.positions, axis=1).max()
                )
                # a slab that relaxed into another structure keeps its (converged) γ, flagged
                if gamma[k] <= 0:
                    statuses[k] = "negative: the slab relaxed below bcc"
                elif moved[k] > max_displacement:
                    statuses[k] = f"reconstructed: an atom moved {moved[k]:.2f} Å"
                else:
                    statuses[k] = "ok"
            except Exception as err:  # never raise out of compute: NaN + reason
                gamma[k] = np.nan
                statuses[k] = short_reason(err)
    return xr.Dataset(
        {
            "surface_energy": ("surface", gamma * EV_PER_A2_TO_J_PER_M2, {"units": "J/m^2"}),
            "surface_energy_ev": ("surface", gamma, {"units": "eV/Å^2"}),
            "unrelaxed_surface_energy": ("surface", gamma0 * EV_PER_A2_TO_J_PER_M2, {"units": "J/m^2"}),
            "n_layers": ("surface", layers),
            "area": ("surface", area, {"units": "Å^2"}),
            "max_force": ("surface", fmx, {"units": "eV/Å"}),
            "max_displacement": ("surface", moved, {"units": "Å"}),
            "a0": ((), a0, {"units": "Å"}),
            "status": ("surface", status_array(statuses)),
        },
        coords={"surface": status_array([facet_name(h) for h in facets])},
        attrs={
            "property": NAME,
            "potential": potential.label,
            "slab": f"primitive surface cell (1 atom/plane), ≥ {thickness} Å thick, {vacuum} Å vacuum, fixed cell",
            "fmax": fmax,
        },
    )
