"""Vacancy formation energy and the first-neighbour ⟨111⟩ hop barrier by climbing-image NEB (Fig. 10).

For one potential at its own relaxed lattice constant ``a0``, in an ``n``×``n``×``n`` cubic
supercell with one vacancy (``n = 3``: 53 atoms) and fixed cell:

* ``E_f = E(N−1) − (N−1)·e_bcc`` from the relaxed vacancy (LAMMPS minimiser, :func:`~.relax.relax`);
* the hop of a nearest neighbour (a0·(½,½,½) away) into the vacancy: both end points relaxed,
  images interpolated linearly, then a climbing-image NEB (Henkelman, Uberuaga & Jónsson,
  J. Chem. Phys. 113, 9901 (2000); :class:`ase.mep.NEB` with the improved tangent) relaxed
  with FIRE until every image force is below ``fmax``: the path is re-converged for every
  member, not re-evaluated along another potential's path. The barrier is the climbing
  image's energy minus the initial state's.

:func:`vacancy_migration` returns the relaxed initial, final and saddle structures as well
(for implicit derivatives); :func:`saddle_by_symmetry` finds the saddle another
way — the migrating atom fixed at the midpoint of the hop, where the ⟨111⟩ hop's saddle lies
by symmetry, everything else relaxed — as an independent check of the NEB.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from .cells import bcc_supercell, ground_state, unwrap_like
from .potential import Potential
from .relax import relax
from .status import short_reason, status_array

__all__ = ["NAME", "climbing_neb", "compute", "saddle_by_symmetry", "vacancy_cells", "vacancy_migration"]

NAME = "vacancy"


def vacancy_cells(a0: float, n: int = 3, element: str = "W", *, at_origin: bool = False) -> tuple[Any, Any, int]:
    """Unrelaxed initial and final states of a nearest-neighbour vacancy hop.

    Returns
    -------
    (initial, final, hop) : the ``n``×``n``×``n`` supercell minus the atom at the centre site
        (initial; with ``at_origin`` the atom at the origin, so that ``hop`` is 0, the
        convention of the implicit route) and the same atoms with atom ``hop`` — the neighbour
        at a0·(½,½,½) — moved into the vacancy (final); atom order is the same in both.
    """
    atoms = bcc_supercell(a0, n, element)
    centre = np.zeros(3) if at_origin else np.full(3, (n // 2) * a0)
    v = int(np.argmin(np.linalg.norm(atoms.positions - centre, axis=1)))
    vac_pos = atoms.positions[v].copy()
    target = vac_pos + 0.5 * a0
    h = int(np.argmin(np.linalg.norm(atoms.positions - target, axis=1)))
    del atoms[v]
    hop = h - 1 if h > v else h
    final = atoms.copy()
    final.positions[hop] = vac_pos
    return atoms, final, hop


def _relaxed(atoms: Any, potential: Potential, fmax: float, max_steps: int) -> tuple[Any, float, str]:
    r = relax(atoms, potential, cell="none", fmax=fmax, max_steps=max_steps)
    out = unwrap_like(r.atoms, atoms.positions)  # relax wraps atoms into the cell
    return out, float(r.energy), r.reason


class _FixHopperAndCentroid:
    """ASE constraint: atom ``hop`` fixed and the centroid of all the other atoms fixed.

    Fixing one atom alone constrains nothing in a periodic cell (the rest of the crystal can
    translate around it); fixing the others' centroid as well keeps the hopper at the
    midpoint *relative to the crystal*.
    """

    def __init__(self, hop: int, n_atoms: int) -> None:
        self.hop = hop
        self.free = np.setdiff1d(np.arange(n_atoms), [hop])

    def adjust_positions(self, atoms: Any, new: np.ndarray) -> None:
        old = atoms.positions
        new[self.hop] = old[self.hop]
        new[self.free] -= (new[self.free] - old[self.free]).mean(axis=0)

    def adjust_forces(self, atoms: Any, forces: np.ndarray) -> None:
        forces[self.hop] = 0.0
        forces[self.free] -= forces[self.free].mean(axis=0)

    def get_removed_dof(self, atoms: Any) -> int:
        return 6

    def todict(self) -> dict[str, Any]:
        return {"name": type(self).__name__, "kwargs": {"hop": self.hop, "n_atoms": len(self.free) + 1}}


def saddle_by_symmetry(
    initial: Any, final: Any, hop: int, potential: Potential, *, fmax: float = 1e-3, max_steps: int = 1000
) -> tuple[Any, float, bool]:
    """The ⟨111⟩ hop's symmetric midpoint state found by constrained minimisation instead of NEB.

    The migrating atom ``hop`` is held at the midpoint of its initial and final positions
    relative to the crystal (the centroid of the other atoms is held too), the other atoms
    start from the linear interpolation and are relaxed with ASE's BFGS. The end states are
    exchanged by the inversion through the midpoint, so this state is the saddle when the
    minimum-energy path has a single hump (as for the teacher); for potentials whose midpoint
    is a metastable split vacancy (double-humped path) it is that minimum instead, below the
    NEB maximum.

    Returns
    -------
    (atoms, energy, converged)
    """
    from ase.optimize import BFGS

    mid = initial.copy()
    mid.positions = 0.5 * (initial.positions + final.positions)
    mid.set_constraint(_FixHopperAndCentroid(hop, len(mid)))
    mid.calc = potential.calculator()
    opt = BFGS(mid, logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=max_steps))
    return mid, float(mid.get_potential_energy()), converged


def climbing_neb(
    potential: Potential,
    initial: Any,
    final: Any,
    *,
    n_images: int,
    fmax: float,
    relax_fmax: float,
    max_steps: int,
    spring: float = 0.1,
    max_rise: float | None = None,
    guess: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """The one vacancy-hop NEB of both routes: relax the end states, then converge a CI-NEB.

    Both end states are relaxed at fixed cell (LAMMPS minimiser to ``relax_fmax``, 5000 steps,
    positions unwrapped to the starting structures); the path is the ``n_images`` intermediate
    images of a linear interpolation, or ``guess`` (a converged path of another potential, end
    points included, rescaled to this cell and given the relaxed end states); ASE's NEB
    (climbing image, improved tangent, spring ``spring``) relaxes with FIRE to ``fmax`` on
    every image in at most ``max_steps`` steps, stopped as diverged when, after 50 steps, an
    image is more than ``max_rise`` eV above the initial state.

    Used by :func:`vacancy_migration` (brute-force route) and by
    :func:`popsdask.properties.implicit.hop_neb` (the implicit route's MLE path and fallback),
    each with its own cell convention, image count and tolerances.

    Returns
    -------
    dict with ``initial``, ``final`` (relaxed Atoms, None when not relaxed), ``e_initial``,
    ``e_final`` (eV), ``end_failure`` (None, or ``(which, reason)`` when the ``initial`` or
    ``final`` state did not relax; the NEB is then not run), ``error`` (the exception the NEB
    optimisation raised, else None), ``images`` (copies without calculators), ``energies``
    (absolute image energies, eV), ``top`` (index of the highest image), ``converged``,
    ``diverged`` and ``n_steps``.
    """
    from ase.mep import NEB
    from ase.optimize import FIRE

    out: dict[str, Any] = {
        "initial": None,
        "final": None,
        "e_initial": np.nan,
        "e_final": np.nan,
        "end_failure": None,
        "error": None,
        "images": None,
        "energies": None,
        "top": -1,
        "converged": False,
        "diverged": False,
        "n_steps": 0,
    }
    for which, start in (("initial", initial), ("final", final)):
        relaxed, energy, why = _relaxed(start, potential, relax_fmax, 5000)
        if why != "ok":
            out["end_failure"] = (which, why)
            return out
        out[which], out[f"e_{which}"] = relaxed, energy
    ini, fin = out["initial"], out["final"]
    if guess is not None:
        images = []
        for g in guess:
            im = g.copy()
            im.set_cell(initial.cell, scale_atoms=True)
            images.append(im)
        images[0], images[-1] = ini.copy(), fin.copy()
    else:
        images = [ini.copy() for _ in range(n_images + 1)] + [fin.copy()]
    neb = NEB(images, k=spring, climb=True, method="improvedtangent")
    if guess is None:
        neb.interpolate()
    for im in images:
        im.calc = potential.calculator()
    opt = FIRE(neb, logfile=None)
    try:
        for done in opt.irun(fmax=fmax, steps=max_steps):
            out["converged"] = bool(done)
            # a path with an image tens of eV up (atoms on top of each other) does not come back
            if max_rise is not None and opt.nsteps >= 50 and np.nanmax(neb.energies) - out["e_initial"] > max_rise:
                out["diverged"] = True
                break
    except Exception as err:
        out["error"] = err
        return out
    out["converged"] = out["converged"] and not out["diverged"]
    out["n_steps"] = int(opt.nsteps)
    energies = np.array([im.get_potential_energy() for im in images])
    out["energies"] = energies
    out["top"] = int(np.argmax(energies))
    out["images"] = [im.copy() for im in images]
    return out


def vacancy_migration(
    potential: Potential,
    *,
    size: int = 3,
    n_images: int = 6,
    fmax: float = 0.01,
    relax_fmax: float = 1e-3,
    max_steps: int = 300,
    spring: float = 0.1,
    max_rise: float = 20.0,
) -> dict[str, Any]:
    """Vacancy formation energy and CI-NEB hop barrier of one potential, with the structures.

    Parameters
    ----------
    potential : the interactions
    size : cubic repeats of the supercell (3: 53 atoms, 4: 127 atoms)
    n_images : intermediate NEB images; even, so that no image starts on the midpoint: for
        members whose midpoint is a metastable split vacancy (double-humped path) a climbing
        image started there stays in that basin and the other images slide into the end
        states (seen with 5 images on the tungsten-3000 members)
    fmax : NEB force tolerance (eV/Å) on every image, climbing image included
    relax_fmax : force tolerance of the end-point relaxations (eV/Å)
    max_steps : FIRE iterations of the NEB
    spring : NEB spring constant (eV/Å²)
    max_rise : stop (as not converged) when, after 50 steps, an image is this far (eV) above
        the initial state

    Returns
    -------
    dict with ``a0``, ``e_bcc``, ``formation_energy`` (eV), ``barrier`` (eV), ``energies``
    (image energies relative to the initial state, end points included), ``path_length``
    (cumulative distance along the path, Å), ``initial``, ``final``, ``saddle`` (ase.Atoms,
    unwrapped, same atom order), ``images``, ``hop`` (index of the migrating atom), ``n_steps``
    and ``status`` (``"ok"`` or a reason; values that could not be obtained are NaN / None).
    """
    out = _no_migration(n_images + 2)
    a0, e0, status = ground_state(potential)
    out.update(a0=a0, e_bcc=e0, status=status)
    if status != "ok":
        return out
    try:
        start_i, start_f, hop = vacancy_cells(a0, size, potential.element)
        out["hop"] = hop
        neb = climbing_neb(
            potential, start_i, start_f, n_images=n_images, fmax=fmax, relax_fmax=relax_fmax,
            max_steps=max_steps, spring=spring, max_rise=max_rise,
        )  # fmt: skip
        ini, fin, e_ini = neb["initial"], neb["final"], neb["e_initial"]
        if ini is not None:
            out["initial"] = ini
            out["formation_energy"] = float(e_ini - len(ini) * e0)
        out["final"] = fin
        if neb["end_failure"] is not None:
            which, why = neb["end_failure"]
            out["status"] = f"{which} state: {why}"
            return out
        if neb["error"] is not None:
            raise neb["error"]
        _record_path(out, neb)
        problem = _path_problem(neb, out["path_length"], max_steps, fmax)
        if problem is not None:
            out["status"] = problem
            return out
        energies, top = neb["energies"], neb["top"]
        out["barrier"] = float(energies[top] - energies[0])
        if abs(neb["e_final"] - e_ini) > 1e-3:
            out["status"] = f"end states differ by {neb['e_final'] - e_ini:.3g} eV (expected equal by symmetry)"
    except Exception as err:  # never raise out of compute: NaN + reason
        out["status"] = short_reason(err)
    return out


def _no_migration(n_tot: int) -> dict[str, Any]:
    """:func:`vacancy_migration`'s result before anything is known: NaN / None for a path of
    ``n_tot`` images (end points included), status ok."""
    return {
        "a0": np.nan,
        "e_bcc": np.nan,
        "formation_energy": np.nan,
        "barrier": np.nan,
        "energies": np.full(n_tot, np.nan),
        "path_length": np.full(n_tot, np.nan),
        "initial": None,
        "final": None,
        "saddle": None,
        "images": None,
        "hop": -1,
        "n_steps": 0,
        "status": "ok",
    }


def _record_path(out: dict[str, Any], neb: dict[str, Any]) -> None:
    """Put the finished NEB's path in ``out``: steps, image energies relative to the initial
    state, cumulative path length (Å), images and the saddle (the highest image), without
    calculators."""
    out["n_steps"] = neb["n_steps"]
    energies, images = neb["energies"], neb["images"]
    pos = np.array([im.positions for im in images])
    steps = np.linalg.norm((pos[1:] - pos[:-1]).reshape(len(images) - 1, -1), axis=1)
    out["path_length"] = np.concatenate([[0.0], np.cumsum(steps)])
    out["energies"] = energies - energies[0]
    out["images"] = images
    out["saddle"] = images[neb["top"]].copy()
    for key in ("initial", "final", "saddle"):
        out[key].calc = None


def _path_problem(neb: dict[str, Any], path_length: np.ndarray, max_steps: int, fmax: float) -> str | None:
    """Why the NEB's highest image is not a barrier (diverged, not converged, maximum at an end
    point), or None."""
    energies, top = neb["energies"], neb["top"]
    if neb["diverged"]:
        return f"NEB diverged: an image {np.max(energies) - energies[0]:.3g} eV above the initial state"
    if not neb["converged"]:
        return f"NEB not converged in {max_steps} FIRE steps (fmax {fmax:g} eV/Å)"
    if top in (0, len(energies) - 1) or min(path_length[top], path_length[-1] - path_length[top]) < 0.05:
        return "NEB maximum at an end point"
    return None


def compute(
    potential: Potential,
    *,
    size: int = 3,
    n_images: int = 6,
    fmax: float = 0.01,
    relax_fmax: float = 1e-3,
    max_steps: int = 300,
) -> xr.Dataset:
    """Vacancy formation energy, hop barrier and NEB energy profile for one potential.

    See :func:`vacancy_migration` for the parameters.

    Returns
    -------
    Dataset with ``formation_energy`` and ``barrier`` (eV), ``energy`` (image) relative to
    the initial state, ``path_length`` (image, Å), ``a0``, ``n_steps`` and ``status``.
    """
    r = vacancy_migration(
        potential, size=size, n_images=n_images, fmax=fmax, relax_fmax=relax_fmax, max_steps=max_steps
    )
    profile = np.asarray(r["energies"], float)
    if not np.isfinite(r["barrier"]):  # the profile of a failed NEB is not a result
        profile = np.full_like(profile, np.nan)
    return xr.Dataset(
        {
            "formation_energy": ((), float(r["formation_energy"]), {"units": "eV"}),
            "barrier": ((), float(r["barrier"]), {"units": "eV"}),
            "energy": ("image", profile, {"units": "eV", "long_name": "E - E(initial)"}),
            "path_length": ("image", np.asarray(r["path_length"], float), {"units": "Å"}),
            "a0": ((), float(r["a0"]), {"units": "Å"}),
            "n_steps": ((), float(r["n_steps"])),
            "status": ((), status_array([r["status"]]).reshape(())),
        },
        coords={"image": np.arange(n_images + 2)},
        attrs={
            "property": NAME,
            "potential": potential.label,
            "supercell": f"{size}x{size}x{size} cubic bcc - 1 ({2 * size**3 - 1} atoms), fixed cell at a0",
            "neb": f"CI-NEB, {n_images} intermediate images, FIRE to fmax {fmax} eV/Å",
        },
    )
