"""Relaxations with LAMMPS's own minimiser on the process's LAMMPS instance.

:func:`relax` sets the structure up once and runs ``minimize`` (conjugate gradients) natively,
with ``fix box/relax`` for the cell (``iso``, ``aniso`` or ``tri``), repeated until the box
stops changing (the reference cell of ``box/relax`` is the one at the start of each
``minimize``), then a position-only polish; the result is accepted only if the largest atomic
force is below ``fmax`` and, when the cell is relaxed, every stress component below
``stress_tol``. It never raises on non-convergence: :class:`Relaxed` carries ``converged`` and
a reason. Native minimisation is ~4x faster than an ASE optimiser stepping a
:class:`LammpsCalculator` (one setup instead of one per step).

A potential that does not run in LAMMPS (:attr:`Potential.in_lammps` false: ACE without
ML-PACE, or ``engine="ase"``) is relaxed by ASE's BFGS on its :meth:`Potential.calculator`, the
cell through a ``FrechetCellFilter`` (``hydrostatic_strain`` for ``iso``, a mask for ``aniso``),
with the same acceptance test on the final forces and stress; :func:`static_results` then asks
the calculator. :func:`relax` and :func:`static_results` are the only places that choose.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..atomistic.lammps_backend import NKTV2P, get_session, lammps_box
from ..atomistic.oracle import bcc_lattice_guess
from .potential import Potential

__all__ = ["Relaxed", "bcc_ground_state", "relax", "static_energy", "static_results", "CELL_MODES"]

#: cell degrees of freedom -> ``fix box/relax`` keyword (None: positions only)
CELL_MODES = {"none": None, "iso": "iso", "aniso": "aniso", "full": "tri"}

_BCC_CACHE: dict[tuple[int, str], tuple[float, float]] = {}
#: GPa per eV/Å^3 (pressures are given in GPa, stresses are eV/Å^3)
_GPA_PER_EV_A3 = 160.21766208
#: ``FrechetCellFilter`` mask of each cell mode (None: no mask)
_ASE_MASKS = {"iso": None, "aniso": [1, 1, 1, 0, 0, 0], "full": None}


@dataclass
class Relaxed:
    """Outcome of :func:`relax`.

    Attributes
    ----------
    atoms : final structure (a new ``ase.Atoms``, original frame)
    energy : potential energy of ``atoms`` (eV)
    converged : max force < fmax (and |stress| < stress_tol when the cell relaxed)
    reason : ``"ok"`` or why not
    n_steps : minimiser iterations in total
    max_force : largest atomic force at the end (eV/Å)
    max_stress : largest |stress| component at the end (eV/Å^3)
    stress : final stress (Voigt xx, yy, zz, yz, xz, xy; eV/Å^3, ASE sign)
    """

    atoms: Any
    energy: float
    converged: bool
    reason: str
    n_steps: int
    max_force: float = float("nan")
    max_stress: float = float("nan")
    stress: np.ndarray | None = None  # final stress, Voigt xx yy zz yz xz xy (eV/Å^3, ASE sign)


def _types(atoms: Any, potential: Potential) -> np.ndarray:
    index = {e: i + 1 for i, e in enumerate(potential.elements)}
    sym = atoms.get_chemical_symbols()
    bad = sorted(set(sym) - set(index))
    if bad:
        raise ValueError(f"element(s) {bad} not covered by potential {potential.label!r}")
    return np.array([index[s] for s in sym])


def _setup(atoms: Any, potential: Potential) -> tuple[Any, Any]:
    where = f"{potential.label}: {atoms.get_chemical_formula()}"
    box = lammps_box(atoms.cell[:], atoms.pbc, atoms.positions, where=where)
    sess = get_session()
    sess.setup(box, _types(atoms, potential), potential.masses, potential.pair_commands())
    sess.lmp.command("compute popsdask_pv all pressure NULL virial")
    sess.lmp.command("thermo_style custom step pe")
    sess.lmp.command("thermo_modify norm no")
    return sess, box


def _state(sess: Any, box: Any) -> tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(energy, forces, stress Voigt, cell, positions) of the current LAMMPS state, original frame."""
    lmp = sess.lmp
    lmp.command("run 0")
    energy = float(lmp.get_thermo("pe"))
    forces = box.forces_back(sess.forces())
    pv = sess.global_vector("popsdask_pv")  # xx yy zz xy xz yz (bar)
    stress = -box.tensor_back(np.array([pv[0], pv[1], pv[2], pv[5], pv[4], pv[3]])) / NKTV2P
    boxlo, boxhi, xy, yz, xz, _per, _chg = lmp.extract_box()
    lcell = np.array([[boxhi[0] - boxlo[0], 0.0, 0.0], [xy, boxhi[1] - boxlo[1], 0.0], [xz, yz, boxhi[2] - boxlo[2]]])
    pos = sess.positions() - np.asarray(boxlo)
    return energy, forces, stress, lcell @ box.rotation, box.forces_back(pos)


def _atoms_like(atoms: Any, cell: np.ndarray, positions: np.ndarray) -> Any:
    out = atoms.copy()
    out.calc = None
    out.set_cell(cell, scale_atoms=False)
    out.positions = positions
    return out


def _steps(lmp: Any) -> int:
    return int(lmp.get_thermo("step"))


def relax(
    atoms: Any,
    potential: Potential,
    *,
    cell: str = "none",
    fmax: float = 1e-3,
    stress_tol: float = 1e-4,
    max_steps: int = 2000,
    pressure: float = 0.0,
    max_rounds: int = 8,
    min_style: str = "cg",
) -> Relaxed:
    """Relax positions (and the cell) of ``atoms`` with ``potential``.

    Parameters
    ----------
    atoms : the starting structure (not modified)
    potential : the interactions
    cell : ``"none"`` (positions only), ``"iso"`` (volume), ``"aniso"`` (three lengths) or
        ``"full"`` (all six cell components, ``fix box/relax tri``)
    fmax : convergence threshold on the largest atomic force (eV/Å)
    stress_tol : convergence threshold on |stress| components when the cell relaxes (eV/Å^3;
        1e-4 eV/Å^3 = 16 MPa)
    max_steps : total minimiser iterations allowed
    pressure : target hydrostatic pressure (GPa) for cell relaxations
    max_rounds : ``box/relax`` minimisations before giving up on the cell
    min_style : LAMMPS ``min_style`` for the position-only steps (``cg`` or ``fire``; the ASE
        route always uses BFGS)

    Returns
    -------
    :class:`Relaxed` — never raises on non-convergence or a LAMMPS error.
    """
    if cell not in CELL_MODES:
        raise ValueError(f"cell={cell!r}: use one of {sorted(CELL_MODES)}")
    mode = CELL_MODES[cell]
    if not potential.in_lammps:
        return _relax_ase(atoms, potential, cell, fmax, stress_tol, max_steps, pressure, max_rounds)
    sess = get_session()
    with sess.lock:
        try:
            return _relax_locked(atoms, potential, mode, fmax, stress_tol, max_steps, pressure, max_rounds, min_style)
        except Exception as err:  # LAMMPS errors (lost atoms, bad box) are a non-converged result
            msg = f"{type(err).__name__}: {err}".replace("\n", " ")[:200]
            return Relaxed(atoms.copy(), float("nan"), False, f"error: {msg}", 0)


def _relax_locked(
    atoms: Any,
    potential: Potential,
    mode: str | None,
    fmax: float,
    stress_tol: float,
    max_steps: int,
    pressure: float,
    max_rounds: int,
    min_style: str,
) -> Relaxed:
    sess, box = _setup(atoms, potential)
    lmp = sess.lmp
    p_bar = pressure * 1e4  # GPa -> bar
    target = _target_stress(pressure)
    used = 0
    e, f, s, c, x = _state(sess, box)
    reason = "ok"
    for _round in range(max_rounds if mode else 1):
        left = max_steps - used
        if left <= 0:
            break
        vol0 = abs(np.linalg.det(c))
        c_before = c
        if mode:
            lmp.command("min_style cg")
            lmp.command(f"fix popsdask_br all box/relax {mode} {p_bar!r} vmax 0.001 nreset 1")
            s0 = _steps(lmp)
            lmp.command(f"minimize 1e-12 {fmax!r} {left} {10 * left}")
            used += _steps(lmp) - s0
            lmp.command("unfix popsdask_br")
        left = max_steps - used
        if left > 0:
            lmp.command(f"min_style {min_style}")
            if min_style == "fire":
                lmp.command("timestep 0.002")
            s0 = _steps(lmp)
            lmp.command(f"minimize 0.0 {fmax * 0.1!r} {left} {10 * left}")
            used += _steps(lmp) - s0
        e, f, s, c, x = _state(sess, box)
        if not np.isfinite(e) or not np.all(np.isfinite(f)):
            reason = "non-finite energy or forces"
            break
        if not mode:
            break
        _f_err, s_err = _residuals(f, s, target)
        dcell = np.abs(c - c_before).max()
        if s_err < stress_tol and dcell < 1e-6 * max(1.0, vol0 ** (1 / 3)):
            break
    fmax_now, s_now = _residuals(f, s, target)
    if reason == "ok":
        reason = _verdict(fmax_now, s_now, fmax, stress_tol if mode else None, f"{used} steps")
    return Relaxed(_atoms_like(atoms, c, x), e, reason == "ok", reason, used, fmax_now, s_now, np.asarray(s))


def _verdict(f_now: float, s_now: float, fmax: float, stress_tol: float | None, after: str) -> str:
    """``"ok"``, or why the final max force (and max |stress|, unless ``stress_tol`` is None) fails."""
    problems = []
    if not f_now < fmax:
        problems.append(f"max force {f_now:.3g} eV/Å ≥ fmax {fmax:g}")
    if stress_tol is not None and not s_now < stress_tol:
        problems.append(f"max |stress| {s_now:.3g} eV/Å^3 ≥ {stress_tol:g}")
    return f"not converged after {after}: " + "; ".join(problems) if problems else "ok"


def _ase_results(atoms: Any, calc: Any) -> dict[str, Any]:
    """Energy, forces and stress (Voigt xx yy zz yz xz xy, ASE sign) of a copy of ``atoms`` on ``calc``."""
    a = atoms.copy()
    a.calc = calc
    return {
        "energy": float(a.get_potential_energy()),
        "forces": np.asarray(a.get_forces(), dtype=float),
        "stress": np.asarray(a.get_stress(voigt=True), dtype=float),
    }


def _target_stress(pressure: float) -> np.ndarray:
    """The stress (Voigt, ASE sign, eV/Å^3) of a cell at hydrostatic ``pressure`` (GPa)."""
    return np.array([1, 1, 1, 0, 0, 0]) * -pressure / _GPA_PER_EV_A3


def _residuals(forces: np.ndarray, stress: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Largest atomic force (eV/Å) and largest |stress - target| component (eV/Å^3): what both
    routes' acceptance tests compare with fmax and stress_tol."""
    f = float(np.linalg.norm(forces, axis=1).max()) if len(forces) else 0.0
    return f, float(np.abs(np.asarray(stress) - target).max())


def _relax_ase(
    atoms: Any,
    potential: Potential,
    cell: str,
    fmax: float,
    stress_tol: float,
    max_steps: int,
    pressure: float,
    max_rounds: int,
) -> Relaxed:
    """:func:`relax` by ASE's BFGS on :meth:`Potential.calculator` (never raises either)."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    p = pressure / _GPA_PER_EV_A3  # the filter's scalar_pressure is in eV/Å^3
    target = _target_stress(pressure)
    a = atoms.copy()
    used, reason = 0, "ok"
    try:
        calc = potential.calculator()
        a.calc = calc
        # BFGS stops on the largest generalised force; the filter's cell rows are the virial over
        # the atom count, V |σ| / N, so stress_tol becomes V stress_tol / N there
        f_opt = 0.5 * fmax
        if cell != "none":
            f_opt = min(f_opt, 0.5 * stress_tol * a.get_volume() / max(len(a), 1))
        res = _ase_results(a, calc)
        f_now, s_now = _residuals(res["forces"], res["stress"], target)
        for k in range(max_rounds if cell != "none" else 1):
            left = max_steps - used
            before, failing = (f_now, s_now), (not f_now < fmax, cell != "none" and not s_now < stress_tol)
            if not any(failing) or left <= 0:
                break
            obj = a  # positions only; else a new filter per round, its reference cell the current one
            if cell != "none":
                obj = FrechetCellFilter(a, mask=_ASE_MASKS[cell], hydrostatic_strain=cell == "iso", scalar_pressure=p)
            opt = BFGS(obj, logfile=None)
            opt.run(fmax=f_opt * 0.3**k, steps=left)  # tighter each round the test still fails
            used += int(opt.nsteps)
            res = _ase_results(a, calc)
            if not np.isfinite(res["energy"]) or not np.all(np.isfinite(res["forces"])):
                reason = "non-finite energy or forces"
                break
            f_now, s_now = _residuals(res["forces"], res["stress"], target)
            # steps that no longer lower what fails (stress the cell mode cannot relax, as a
            # tetragonal cell's under iso): no more rounds; no steps: the next, tighter round
            stuck = not any(f and new < 0.99 * old for f, new, old in zip(failing, (f_now, s_now), before, strict=True))
            if opt.nsteps and stuck:
                break
    except Exception as err:  # calculator or optimiser failures are a non-converged result
        msg = f"{type(err).__name__}: {err}".replace("\n", " ")[:200]
        return Relaxed(atoms.copy(), float("nan"), False, f"error: {msg}", used)
    if reason == "ok":
        reason = _verdict(f_now, s_now, fmax, stress_tol if cell != "none" else None, f"{used} steps (ASE BFGS)")
    out = a.copy()
    out.calc = None
    return Relaxed(out, res["energy"], reason == "ok", reason, used, f_now, s_now, res["stress"])


def static_results(atoms: Any, potential: Potential) -> dict[str, Any]:
    """Energy (eV), forces (N, 3) (eV/Å) and stress (Voigt, eV/Å^3, ASE sign) without relaxing."""
    if not potential.in_lammps:
        return _ase_results(atoms, potential.calculator())
    sess = get_session()
    with sess.lock:
        sess_, box = _setup(atoms, potential)
        e, f, s, _c, _x = _state(sess_, box)
    return {"energy": e, "forces": f, "stress": s}


def static_energy(atoms: Any, potential: Potential) -> float:
    """Potential energy (eV) of ``atoms`` as they are."""
    return float(static_results(atoms, potential)["energy"])


def bcc_ground_state(potential: Potential, *, a_guess: float | None = None) -> tuple[float, float]:
    """Relaxed bcc lattice constant (Å) and energy per atom (eV), cached per process.

    The relaxation starts from ``a_guess`` (default:
    :func:`popsdask.atomistic.oracle.bcc_lattice_guess` of the potential's element), so nothing
    is assumed about tungsten.

    Raises
    ------
    RuntimeError
        If the 2-atom bcc cell does not relax (the reference state of every property).
    """
    ck = (os.getpid(), potential.key)
    if ck in _BCC_CACHE:
        return _BCC_CACHE[ck]
    from ase.build import bulk

    el = potential.element
    if a_guess is None:
        a_guess = bcc_lattice_guess(el)
    r = relax(bulk(el, "bcc", a=a_guess, cubic=True), potential, cell="iso", fmax=1e-5, stress_tol=1e-6)
    if not r.converged:
        raise RuntimeError(f"{potential.label}: bcc ground state did not relax ({r.reason})")
    a0 = float(np.cbrt(r.atoms.get_volume()))  # cubic 2-atom cell
    out = (a0, r.energy / 2.0)
    _BCC_CACHE[ck] = out
    return out
