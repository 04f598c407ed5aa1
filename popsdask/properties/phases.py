"""Crystal phases of tungsten: relaxed energy and volume relative to bcc, bulk modulus (Tables I-III).

The 13 structures of the paper's Fig. 4 with every site tungsten, each built with
:func:`ase.spacegroup.crystal` from its space group and Wyckoff positions, scaled to ~16 Å^3/atom
and cubic ones reduced to their primitive cell. Sources of the prototypes (space group, Wyckoff sites and the
internal parameters used as the starting point; every structure is then fully relaxed, positions
and cell, so only the topology matters):

* AFLOW Library of Crystallographic Prototypes, Part 1 — M. J. Mehl et al., Comp. Mat. Sci. 136,
  S1 (2017), doi:10.1016/j.commatsci.2017.01.017 — parameters as shipped in pymatgen's
  ``aflow_prototypes.json.gz`` except two sites that put atoms 1.3-1.5 Å apart there: σ's
  single-atom site is 2a (0,0,0) as in Bergman & Shoemaker (1954) rather than 2b, and C36's
  Mg 4e z is the ideal 3/32 (MgNi2) rather than 0.046: bcc (A2, A_cI2_229_a), A15 (Cr3Si, A3B_cP8_223_c_a), σ (D8_b,
  CrFe, A_tP30_136_bf2ij), χ (α-Mn, A12, A_cI58_217_ac2g), μ (D8_5, Fe7W6, A7B6_hR13_166_ah_3c),
  C15 (MgCu2, A2B_cF24_227_d_a), C36 (MgNi2, AB2_hP24_194_ef_fgh), C14 (MgZn2, AB2_hP12_194_f_ah),
  fcc (A1, A_cF4_225_a), hcp (A3, A_hP2_194_c), Al12W (A12B_cI26_204_g_a, ICSD 58207).
* AFLOW Part 4 (Eckert et al.), A5B_hP12_182_bcg_d-001 (ICSD 58206; Adam & Rich 1954): Al5W,
  a = 4.902 Å, c = 8.857 Å, P6_322 with Al 2b, 2c, 6g (x, 0, 0) and W 2d. The 6g x is started
  at the ideal 1/3 (its refined value was not available offline): with every site W this is a
  four-layer close-packed stacking (ABAC), which spglib reduces to a 4-atom cell.
* Al4W (Bland & Clark 1958, Acta Cryst. 11, 231: monoclinic Cm, mC30): its Wyckoff coordinates
  were not available offline, so the phase is reported NaN with that reason rather than guessed.

Per potential: the structure is relaxed within its space group (positions and cell: LAMMPS's
``fix box/relax iso`` for cubic cells, symmetry-allowed strains diag(a, a, c) with natively relaxed
positions otherwise, ASE's ``FixSymmetry`` as a fallback, see :func:`relax_in_symmetry`); the
bulk modulus is the Birch-Murnaghan fit (ASE's ``EquationOfState``)
of ``n_eos`` homogeneously scaled volumes within ±``eos_strain`` of the relaxed volume, **with the
internal coordinates relaxed at every volume** (cell shape fixed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from .potential import Potential
from .relax import Relaxed, bcc_ground_state, relax, static_results

__all__ = [
    "NAME", "PHASES", "PROTOTYPES", "build_phase", "bulk_modulus", "compute", "cubic_elastic_constants",
    "relax_in_symmetry",
]  # fmt: skip

NAME = "phases"

#: eV/Å^3 -> GPa
EV_A3_TO_GPA = 160.21766208

#: the paper's Fig. 4 order
PHASES = ("bcc", "A15", "sigma", "Al4W", "chi", "mu", "C15", "C36", "C14", "Al5W", "fcc", "hcp", "Al12W")

#: volume per atom of :func:`build_phase` when none is given (Å^3; W bcc ≈ 16.0). ``compute``
#: scales every prototype to the potential's own relaxed bcc volume instead.
V_START = 16.0


@dataclass(frozen=True)
class Prototype:
    """Space group, Wyckoff representatives and cell of one prototype (every site W)."""

    spacegroup: int
    basis: tuple[tuple[float, float, float], ...]
    cellpar: tuple[float, ...]  # a, b, c, alpha, beta, gamma of the conventional cell (Å, degrees)
    source: str
    setting: int = 1
    cubic: bool = False
    wyckoff: tuple[str, ...] = field(default=())


PROTOTYPES: dict[str, Prototype | None] = {
    "bcc": Prototype(229, ((0, 0, 0),), (3.155,) * 3 + (90,) * 3, "A2 A_cI2_229_a", cubic=True, wyckoff=("2a",)),
    "A15": Prototype(
        223, ((0, 0, 0), (0.25, 0, 0.5)), (4.556,) * 3 + (90,) * 3, "A15 Cr3Si A3B_cP8_223_c_a", cubic=True,
        wyckoff=("2a", "6c"),
    ),
    "sigma": Prototype(
        136,
        ((0, 0, 0), (0.39864, 0.39864, 0), (0.46349, 0.13122, 0), (0.73933, 0.06609, 0), (0.18267, 0.18267, 0.25202)),
        (8.7966, 8.7966, 4.5582, 90, 90, 90), "D8_b sigma-CrFe A_tP30_136_bf2ij",
        wyckoff=("2a", "4f", "8i", "8i", "8j"),
    ),
    "Al4W": None,
    "chi": Prototype(
        217,
        ((0, 0, 0), (0.18213, 0.18213, 0.18213), (0.71806, 0.08958, 0.08958), (0.96543, 0.35706, 0.35706)),
        (8.911,) * 3 + (90,) * 3, "A12 alpha-Mn A_cI58_217_ac2g", cubic=True, wyckoff=("2a", "8c", "24g", "24g"),
    ),
    "mu": Prototype(
        166,
        ((0, 0, 0), (0.83333, 0.16667, 0.25667), (0, 0, 0.167), (1 / 3, 2 / 3, 0.01267), (1 / 3, 2 / 3, 0.11467)),
        (4.757, 4.757, 25.84, 90, 90, 120), "D8_5 Fe7W6 A7B6_hR13_166_ah_3c (hexagonal setting)",
        wyckoff=("3a", "18h", "6c", "6c", "6c"),
    ),
    "C15": Prototype(
        227, ((0.125, 0.125, 0.125), (0.5, 0.5, 0.5)), (7.02,) * 3 + (90,) * 3, "C15 MgCu2 A2B_cF24_227_d_a",
        setting=2, cubic=True, wyckoff=("8a", "16d"),
    ),
    "C36": Prototype(
        194,
        ((0, 0, 0.09375), (1 / 3, 2 / 3, 0.84417), (1 / 3, 2 / 3, 0.12514), (0.5, 0, 0), (0.16429, 0.32858, 0.25)),
        (4.824, 4.824, 15.826, 90, 90, 120), "C36 MgNi2 AB2_hP24_194_ef_fgh", wyckoff=("4e", "4f", "4f", "6g", "6h"),
    ),
    "C14": Prototype(
        194, ((1 / 3, 2 / 3, 0.06286), (0, 0, 0), (0.83049, 0.16951, 0.25)), (5.223, 5.223, 8.566, 90, 90, 120),
        "C14 MgZn2 AB2_hP12_194_f_ah", wyckoff=("4f", "2a", "6h"),
    ),
    "Al5W": Prototype(
        182, ((0, 0, 0.25), (1 / 3, 2 / 3, 0.25), (1 / 3, 2 / 3, 0.75), (1 / 3, 0, 0)),
        (4.902, 4.902, 8.857, 90, 90, 120), "Al5W A5B_hP12_182_bcg_d-001 (AFLOW part 4, ICSD 58206)",
        wyckoff=("2b", "2c", "2d", "6g"),
    ),
    "fcc": Prototype(225, ((0, 0, 0),), (3.6149,) * 3 + (90,) * 3, "A1 A_cF4_225_a", cubic=True, wyckoff=("4a",)),
    "hcp": Prototype(
        194, ((1 / 3, 2 / 3, 0.25),), (3.2093, 3.2093, 5.2106, 90, 90, 120), "A3 A_hP2_194_c", wyckoff=("2c",)
    ),
    "Al12W": Prototype(
        204, ((0, 0, 0), (0.809, 0.316, 0.5)), (7.58,) * 3 + (90,) * 3, "Al12W A12B_cI26_204_g_a (ICSD 58207)",
        cubic=True, wyckoff=("2a", "24g"),
    ),
}  # fmt: skip

#: expected atoms in the conventional cell (checks the Wyckoff multiplicities)
N_CONVENTIONAL = {
    "bcc": 2, "A15": 8, "sigma": 30, "chi": 58, "mu": 39, "C15": 24, "C36": 24, "C14": 12, "Al5W": 12,
    "fcc": 4, "hcp": 2, "Al12W": 26,
}  # fmt: skip

_MISSING = {"Al4W": "no prototype coordinates offline (Bland & Clark 1958, Cm mC30)"}


def build_phase(name: str, *, element: str = "W", volume_per_atom: float = V_START, primitive: bool = True) -> Any:
    """The structure ``name`` with every site ``element``, scaled to ``volume_per_atom``.

    Parameters
    ----------
    name : one of :data:`PHASES`
    element : chemical symbol on every site
    volume_per_atom : Å^3
    primitive : reduce cubic structures to their primitive cell (spglib) — fewer atoms, same crystal;
        tetragonal, hexagonal and rhombohedral ones keep the conventional cell (unique axis along z)

    Raises
    ------
    KeyError
        For an unknown name or a prototype whose coordinates are unavailable.
    """
    from ase.spacegroup import crystal

    proto = PROTOTYPES.get(name)
    if proto is None:
        raise KeyError(f"phase {name!r}: " + _MISSING.get(name, f"unknown; use one of {PHASES}"))
    atoms = crystal(
        [element] * len(proto.basis),
        basis=list(proto.basis),
        spacegroup=proto.spacegroup,
        setting=proto.setting,
        cellpar=list(proto.cellpar),
        primitive_cell=False,
        symprec=1e-4,
    )
    if len(atoms) != N_CONVENTIONAL[name]:
        raise RuntimeError(f"phase {name!r}: built {len(atoms)} atoms, expected {N_CONVENTIONAL[name]}")
    if primitive and proto.cubic:  # non-cubic cells stay conventional: c along z for relax_in_symmetry
        atoms = _primitive(atoms)
    scale = (volume_per_atom * len(atoms) / atoms.get_volume()) ** (1 / 3)
    atoms.set_cell(atoms.cell[:] * scale, scale_atoms=True)
    return atoms


def _primitive(atoms: Any) -> Any:
    import spglib
    from ase import Atoms

    cell = (atoms.cell[:], atoms.get_scaled_positions(), atoms.numbers)
    lat, pos, num = spglib.find_primitive(cell, symprec=1e-4)
    out = Atoms(numbers=num, cell=lat, scaled_positions=pos, pbc=True)
    return out


def _is_cubic(name: str) -> bool:
    proto = PROTOTYPES[name]
    return bool(proto and proto.cubic)


def bulk_modulus(
    atoms: Any, potential: Potential, *, n_points: int = 7, strain: float = 0.03, fmax: float = 1e-3
) -> tuple[float, str]:
    """Birch-Murnaghan bulk modulus (GPa) around the (relaxed) volume of ``atoms``.

    The cell is scaled homogeneously to ``n_points`` volumes in ``[1-strain, 1+strain]·V`` and
    the internal coordinates are relaxed at each (cell shape fixed).

    Returns
    -------
    (B in GPa, status) — NaN and a reason when a relaxation or the fit fails.
    """
    from ase.eos import EquationOfState

    v0 = atoms.get_volume()
    vols, ens = [], []
    for f in np.linspace(1 - strain, 1 + strain, n_points):
        a = atoms.copy()
        a.set_cell(atoms.cell[:] * f ** (1 / 3), scale_atoms=True)
        r = relax(a, potential, cell="none", fmax=fmax)
        if not r.converged:
            return float("nan"), f"EOS point V/V0={f:.3f}: {r.reason}"
        vols.append(f * v0)
        ens.append(r.energy)
    try:
        _v, _e, b = EquationOfState(vols, ens, eos="birchmurnaghan").fit()
    except Exception as err:  # ASE raises on a fit without a minimum in range
        return float("nan"), f"EOS fit failed: {err}"
    return float(b * EV_A3_TO_GPA), "ok"


def cubic_elastic_constants(atoms: Any, potential: Potential, *, delta: float = 2e-3) -> dict[str, float]:
    """C11, C12, C44 (GPa) of a cubic crystal by central finite differences of the stress.

    Strains ±``delta`` (ε_xx for C11 and C12, engineering shear γ_yz for C44), internal
    coordinates relaxed at each strain (no effect for bcc). The cell must be cubic along x, y, z.
    """

    def stress(eps: np.ndarray) -> np.ndarray:
        a = atoms.copy()
        a.set_cell(atoms.cell[:] @ (np.eye(3) + eps), scale_atoms=True)
        r = relax(a, potential, cell="none", fmax=1e-5)
        return np.asarray(static_results(r.atoms, potential)["stress"])  # xx yy zz yz xz xy

    e = np.zeros((3, 3))
    e[0, 0] = delta
    ds = (stress(e) - stress(-e)) / (2 * delta)
    g = np.zeros((3, 3))
    g[1, 2] = g[2, 1] = delta / 2
    dg = (stress(g) - stress(-g)) / (2 * delta)
    return {"C11": ds[0] * EV_A3_TO_GPA, "C12": ds[1] * EV_A3_TO_GPA, "C44": dg[3] * EV_A3_TO_GPA}


def _spacegroup(atoms: Any, symprec: float = 1e-3) -> int:
    import spglib

    ds = spglib.get_symmetry_dataset((atoms.cell[:], atoms.get_scaled_positions(), atoms.numbers), symprec=symprec)
    return int(ds.number) if ds is not None else 1


def _relax_uniaxial(
    atoms: Any, potential: Potential, *, fmax: float, max_steps: int, stress_tol: float, max_iter: int = 12
) -> Relaxed:
    """Relax a cell with its unique axis along z (tetragonal, hexagonal, rhombohedral-in-hexagonal).

    Only the symmetry-allowed strains diag(s_a, s_a, s_c) are varied, by Newton steps on
    ((σ_xx + σ_yy)/2, σ_zz) with a finite-difference Jacobian; the positions are relaxed natively
    by LAMMPS at every cell. A shear instability (e.g. hcp sliding to bcc) cannot develop.
    """
    frac = atoms.get_scaled_positions()
    cell0 = atoms.cell[:].copy()
    steps = 0

    def evaluate(x: np.ndarray) -> tuple[Relaxed, np.ndarray]:
        nonlocal frac, steps
        a = atoms.copy()
        a.set_cell(cell0 @ np.diag([x[0], x[0], x[1]]), scale_atoms=False)
        a.set_scaled_positions(frac)
        r = relax(a, potential, cell="none", fmax=fmax, max_steps=max_steps)
        steps += r.n_steps
        if r.converged:
            frac = r.atoms.get_scaled_positions()
        s = r.stress if r.stress is not None else np.full(6, np.nan)
        return r, np.array([(s[0] + s[1]) / 2, s[2]])

    x = np.ones(2)
    r, g = evaluate(x)
    h = 1e-3
    for _ in range(max_iter):
        if not r.converged or not np.all(np.isfinite(g)):
            break
        if np.abs(g).max() < stress_tol:
            break
        jac = np.empty((2, 2))
        for k in range(2):
            xk = x.copy()
            xk[k] += h
            _rk, gk = evaluate(xk)
            jac[:, k] = (gk - g) / h
        try:
            dx = -np.linalg.solve(jac, g)
        except np.linalg.LinAlgError:
            break
        dx = np.clip(dx, -0.05, 0.05)
        x = x + dx
        r, g = evaluate(x)
    ok = r.converged and np.all(np.isfinite(g)) and np.abs(g).max() < stress_tol
    sm = float(np.abs(r.stress).max()) if r.stress is not None else float("nan")
    reason = (
        "ok"
        if ok and sm < stress_tol
        else (r.reason if not r.converged else f"not converged: cell stress {sm:.3g} eV/Å^3")
    )
    return Relaxed(r.atoms, r.energy, reason == "ok", reason, steps, r.max_force, sm, r.stress)


def relax_in_symmetry(
    atoms: Any,
    potential: Potential,
    *,
    cubic: bool,
    fmax: float = 1e-3,
    max_steps: int = 3000,
    stress_tol: float = 1e-4,
) -> Relaxed:
    """Relax positions and cell within the space group of ``atoms`` (the phase stays that phase).

    First LAMMPS's native minimiser (``box/relax iso`` for cubic cells, ``tri`` otherwise), kept
    if the space group survives. Otherwise, for cells with their unique axis along z,
    :func:`_relax_uniaxial` — only the symmetry-allowed strains, so a phase that is mechanically
    unstable for this potential (hcp sliding to bcc along the Burgers path, for instance) stays a
    constrained stationary point, as in symmetry-constrained DFT relaxations. If the space group
    is still lost (an instability of the internal coordinates; spglib, symprec 1e-3 Å), or the
    route does not converge, the relaxation is redone with ASE's ``FixSymmetry`` constraint, a
    ``FrechetCellFilter`` and BFGS on the same potential (slower: one LAMMPS setup per step).
    """
    sg0 = _spacegroup(atoms)
    mode = "iso" if cubic else "full"
    r = relax(atoms, potential, cell=mode, fmax=fmax, max_steps=max_steps, stress_tol=stress_tol)
    if r.converged and _spacegroup(r.atoms) == sg0:
        return r
    if not cubic:
        r = _relax_uniaxial(atoms, potential, fmax=fmax, max_steps=max_steps, stress_tol=stress_tol)
        if r.converged and _spacegroup(r.atoms) == sg0:
            return r
    why = "lost its space group" if r.converged else r.reason
    from ase.constraints import FixSymmetry
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    a = atoms.copy()
    a.calc = potential.calculator()
    try:
        a.set_constraint(FixSymmetry(a, symprec=1e-3))
        opt = BFGS(FrechetCellFilter(a), logfile=None)
        opt.run(fmax=fmax, steps=max_steps)
        res = static_results(a, potential)
    except Exception as err:  # LAMMPS or optimiser failure: a non-converged result
        return Relaxed(a, float("nan"), False, f"symmetry-constrained relaxation failed: {err}"[:200], 0)
    fm = float(np.linalg.norm(res["forces"], axis=1).max())
    sm = float(np.abs(res["stress"]).max())
    ok = fm < fmax and sm < stress_tol
    a.set_constraint()
    a.calc = None
    reason = (
        "ok"
        if ok
        else (
            f"not converged (symmetry-constrained, {opt.nsteps} steps): max force {fm:.3g} eV/Å, "
            f"max |stress| {sm:.3g} eV/Å^3"
        )
    )
    out = Relaxed(a, float(res["energy"]), ok, reason, int(opt.nsteps) + r.n_steps, fm, sm, res["stress"])
    out.note = f"first route {why}; redone with FixSymmetry"  # type: ignore[attr-defined]
    return out


def _one_phase(name: str, potential: Potential, opts: dict[str, Any]) -> dict[str, Any]:
    out = {"energy": np.nan, "volume": np.nan, "bulk_modulus": np.nan, "n_atoms": 0, "status": "ok"}
    try:
        atoms = build_phase(name, element=potential.element, volume_per_atom=opts["volume_per_atom"])
    except KeyError as err:
        out["status"] = str(err.args[0])
        return out
    out["n_atoms"] = len(atoms)
    r = relax_in_symmetry(atoms, potential, cubic=_is_cubic(name), fmax=opts["fmax"], max_steps=opts["max_steps"])
    if not r.converged:
        out["status"] = f"relaxation: {r.reason}"
        return out
    n = len(r.atoms)
    out["energy"] = r.energy / n
    out["volume"] = r.atoms.get_volume() / n
    if opts["bulk_modulus"]:
        b, st = bulk_modulus(r.atoms, potential, n_points=opts["n_eos"], strain=opts["eos_strain"], fmax=opts["fmax"])
        out["bulk_modulus"] = b
        if st != "ok":
            out["status"] = st
    return out


def compute(
    potential: Potential,
    *,
    phases: tuple[str, ...] | list[str] = PHASES,
    fmax: float = 1e-3,
    max_steps: int = 3000,
    n_eos: int = 7,
    eos_strain: float = 0.03,
    bulk_modulus: bool = True,
    volume_per_atom: float | None = None,
) -> xr.Dataset:
    """Relaxed phase energies, volumes and bulk moduli of one potential.

    Returns
    -------
    Dataset over ``phase`` with ``energy`` (eV/atom relative to relaxed bcc), ``volume_ratio``
    (V/V_bcc), ``bulk_modulus`` (GPa), absolute ``energy_per_atom`` (eV) and ``volume_per_atom``
    (Å^3), ``n_atoms`` and ``status`` ("ok" or why the value is NaN).
    """
    opts = {
        "fmax": fmax, "max_steps": max_steps, "n_eos": n_eos, "eos_strain": eos_strain,
        "bulk_modulus": bulk_modulus, "volume_per_atom": volume_per_atom,
    }  # fmt: skip
    names = list(phases)
    a0, e_bcc = bcc_ground_state(potential)
    v_bcc = a0**3 / 2
    if opts["volume_per_atom"] is None:  # prototypes start at this potential's own bcc volume
        opts["volume_per_atom"] = v_bcc
    rows = [_one_phase(n, potential, opts) for n in names]
    e = np.array([r["energy"] for r in rows], dtype=float)
    v = np.array([r["volume"] for r in rows], dtype=float)
    status = np.array([r["status"] for r in rows], dtype=str)
    ds = xr.Dataset(
        {
            "energy": ("phase", e - e_bcc, {"units": "eV/atom", "long_name": "energy relative to bcc"}),
            "volume_ratio": ("phase", v / v_bcc, {"long_name": "volume per atom / bcc volume per atom"}),
            "bulk_modulus": (
                "phase",
                np.array([r["bulk_modulus"] for r in rows], dtype=float),
                {"units": "GPa", "method": f"Birch-Murnaghan, {n_eos} volumes ±{eos_strain:g}, internal relaxed"},
            ),
            "energy_per_atom": ("phase", e, {"units": "eV/atom"}),
            "volume_per_atom": ("phase", v, {"units": "Å^3/atom"}),
            "n_atoms": ("phase", np.array([r["n_atoms"] for r in rows], dtype=np.int64)),
            "status": ("phase", status.astype(f"<U{max(8, max(len(s) for s in status))}")),
        },
        coords={"phase": np.array(names, dtype=f"<U{max(len(n) for n in names)}")},
        attrs={"property": NAME, "potential": potential.label, "bcc_a0": a0, "bcc_energy_per_atom": e_bcc},
    )
    return ds
