"""Self-interstitial atoms in bcc: ⟨111⟩, ⟨110⟩, ⟨100⟩ dumbbells, tetrahedral and octahedral sites.

For one potential: an ``n``×``n``×``n`` cubic supercell (``n = 4``: 128 lattice sites + 1) at
the potential's own relaxed lattice constant ``a0``, one interstitial near the centre, atoms
relaxed at fixed cell with LAMMPS's minimiser (:func:`~.relax.relax`), and the formation
energy ``E_f = E(N+1) − (N+1)·e_bcc`` (Table IV of the paper).

Starting configurations (Nguyen-Manh, Horsfield & Dudarev, Phys. Rev. B 73, 020101 (2006),
Fig. 1; Ma & Dudarev, Phys. Rev. Mater. 3, 013605 (2019)): a ⟨hkl⟩ dumbbell replaces the atom
of a lattice site by two atoms at ±0.3 a0 along ⟨hkl⟩; the tetrahedral site (TS) is at
a0·(½, ¼, 0) from a lattice site, the octahedral site (OS) at a0·(½, 0, 0). Each start is
symmetric, so its forces keep its symmetry and the minimiser stays on that symmetric
configuration (as symmetry-constrained DFT relaxations do); ``rattle > 0`` breaks the symmetry
so that unstable configurations decay. Either way, every relaxed structure is classified again
(:func:`classify`), and a configuration that ended up as another is reported in ``status``
(``"relaxed into 110"``) and in ``relaxed_to`` with its (finite) energy — never silently.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import xarray as xr

from .cells import bcc_supercell, ground_state
from .potential import Potential
from .relax import relax
from .status import short_reason, status_array

__all__ = ["DEFECTS", "NAME", "classify", "compute", "formation_energy", "interstitial_cell"]

NAME = "interstitials"

#: the five configurations of Table IV
DEFECTS = ("111", "110", "100", "TS", "OS")

#: half-length of a starting dumbbell, in units of a0
DUMBBELL_HALF = 0.3

_FAMILIES = {
    "100": np.array([1.0, 0.0, 0.0]),
    "110": np.array([1.0, 1.0, 0.0]) / np.sqrt(2),
    "111": np.array([1.0, 1.0, 1.0]) / np.sqrt(3),
}


def _perms(v: tuple[float, float, float]) -> np.ndarray:
    out = set()
    for p in itertools.permutations(v):
        for signs in itertools.product((1, -1), repeat=3):
            out.add(tuple(round(float(s * x) % 1.0, 6) for s, x in zip(signs, p, strict=True)))
    return np.array(sorted(out))


#: interstitial sites of the cubic cell, fractional (units of a0): 12 tetrahedral, 6 octahedral
TS_SITES = _perms((0.5, 0.25, 0.0))
OS_SITES = _perms((0.5, 0.0, 0.0))


def interstitial_cell(kind: str, a0: float, n: int = 4, element: str = "W") -> Any:
    """Unrelaxed ``n``×``n``×``n`` bcc supercell with one interstitial of ``kind`` (see :data:`DEFECTS`)."""
    if kind not in DEFECTS:
        raise ValueError(f"interstitial {kind!r}: use one of {DEFECTS}")
    from ase import Atoms

    atoms = bcc_supercell(a0, n, element)
    p0 = np.full(3, (n // 2) * a0)
    if kind in _FAMILIES:
        j = int(np.argmin(np.linalg.norm(atoms.positions - p0, axis=1)))
        del atoms[j]
        half = DUMBBELL_HALF * a0 * _FAMILIES[kind]
        atoms += Atoms(f"{element}2", positions=[p0 - half, p0 + half])
    else:
        offset = (0.5, 0.25, 0.0) if kind == "TS" else (0.5, 0.0, 0.0)
        atoms += Atoms(element, positions=[p0 + a0 * np.array(offset)])
    return atoms


def _nearest(frac: np.ndarray, sites: np.ndarray) -> np.ndarray:
    """Distance (units of a0) from each fractional position (units of a0) to the nearest periodic site."""
    d = frac[:, None, :] - sites[None, :, :]
    d -= np.round(d)
    return np.linalg.norm(d, axis=2).min(axis=1)


def classify(atoms: Any, a0: float, tol: float = 0.12) -> str:
    """Which interstitial configuration a relaxed supercell holds.

    The closest pair of atoms defines the defect's axis: a pair along ⟨100⟩ or ⟨110⟩ centred on
    a lattice site is that dumbbell, a pair along ⟨111⟩ is the ⟨111⟩ dumbbell/crowdion;
    otherwise an atom within ``tol``·a0 of a tetrahedral or octahedral site makes it TS or OS.

    Parameters
    ----------
    atoms : cubic supercell with the lattice origin on a lattice site (as built by
        :func:`interstitial_cell`, relaxed at fixed cell)
    a0 : lattice constant (Å)
    tol : position tolerance in units of a0

    Returns
    -------
    one of :data:`DEFECTS`, or ``"other"``
    """
    from ase.neighborlist import neighbor_list

    i, j, d, D = neighbor_list("ijdD", atoms, 0.9 * a0)
    if len(d) == 0:
        return "other"
    k = int(np.argmin(d))
    v = np.sort(np.abs(D[k] / d[k]))[::-1]  # largest |cos| over the cubic group
    mid = (atoms.positions[i[k]] + 0.5 * D[k]) / a0
    cos = {name: float(v @ u) for name, u in _FAMILIES.items()}
    fam = max(cos, key=lambda name: cos[name])
    bcc_sites = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
    if cos[fam] > 0.97:
        if fam == "111":
            return "111"
        if _nearest(mid[None, :], bcc_sites)[0] < tol:
            return fam
    frac = atoms.positions / a0
    if _nearest(frac, TS_SITES).min() < tol:
        return "TS"
    if _nearest(frac, OS_SITES).min() < tol:
        return "OS"
    return "other"


def formation_energy(energy: float, n_atoms: int, e_bcc: float) -> float:
    """``E_f = E(N) − N·e_bcc`` (eV) of a supercell of ``n_atoms`` atoms with energy ``energy``."""
    return float(energy - n_atoms * e_bcc)


def compute(
    potential: Potential,
    *,
    size: int = 4,
    fmax: float = 1e-3,
    max_steps: int = 2000,
    rattle: float = 0.0,
    seed: int = 0,
    defects: tuple[str, ...] = DEFECTS,
) -> xr.Dataset:
    """Relaxed formation energies of the five self-interstitial configurations for one potential.

    Parameters
    ----------
    potential : the interactions
    size : cubic repeats of the supercell (4: 128 sites + 1 atom; 3 for quick tests)
    fmax : force tolerance of the relaxations (eV/Å)
    max_steps : minimiser iterations per configuration
    rattle : standard deviation (Å) of seeded random displacements before relaxing (0: keep
        each configuration's symmetry)
    seed : seed of the rattle
    defects : subset of :data:`DEFECTS`

    Returns
    -------
    Dataset over ``defect`` with ``formation_energy`` (eV), ``relaxed_to`` (classification of
    the relaxed structure), ``max_force`` (eV/Å), ``n_steps``, ``a0`` and ``status``
    (``"ok"``, ``"relaxed into <kind>"`` with a finite energy, or a failure with NaN).
    """
    n_def = len(defects)
    ef = np.full(n_def, np.nan)
    fmx = np.full(n_def, np.nan)
    steps = np.zeros(n_def)
    relaxed_to = [""] * n_def
    a0, e0, gs_status = ground_state(potential)
    statuses = [gs_status] * n_def
    if gs_status == "ok":
        for k, kind in enumerate(defects):
            try:
                atoms = interstitial_cell(kind, a0, size, potential.element)
                if rattle > 0:
                    atoms.rattle(rattle, seed=seed + k)
                r = relax(atoms, potential, cell="none", fmax=fmax, max_steps=max_steps)
                steps[k], fmx[k] = r.n_steps, r.max_force
                if not r.converged:
                    statuses[k] = r.reason
                    continue
                ef[k] = formation_energy(r.energy, len(atoms), e0)
                relaxed_to[k] = classify(r.atoms, a0)
                statuses[k] = "ok" if relaxed_to[k] == kind else f"relaxed into {relaxed_to[k]}"
            except Exception as err:  # never raise out of compute: NaN + reason
                ef[k] = np.nan
                statuses[k] = short_reason(err)
    return xr.Dataset(
        {
            "formation_energy": ("defect", ef, {"units": "eV", "long_name": "E(N+1) - (N+1) e_bcc"}),
            "relaxed_to": ("defect", status_array(relaxed_to)),
            "max_force": ("defect", fmx, {"units": "eV/Å"}),
            "n_steps": ("defect", steps),
            "a0": ((), a0, {"units": "Å"}),
            "status": ("defect", status_array(statuses)),
        },
        coords={"defect": status_array(list(defects))},
        attrs={
            "property": NAME,
            "potential": potential.label,
            "supercell": f"{size}x{size}x{size} cubic bcc + 1 ({2 * size**3 + 1} atoms), fixed cell at a0",
            "fmax": fmax,
            "rattle": rattle,
        },
    )
