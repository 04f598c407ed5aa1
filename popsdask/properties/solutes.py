"""A second element in the host's bcc lattice: solute formation energies and AB₂ Laves compounds.

For one two-element potential, with the host (``potential.element``, e.g. W) at its own relaxed
bcc lattice constant ``a0`` and the solute (the other element, e.g. Be) at its own ground state:

* **the solute's reference** ``μ`` is the lowest energy per atom of the solute's bcc, fcc and
  hcp crystals, each relaxed within its space group (which one won is in ``solute_reference``);
* **point defects** in an ``n``×``n``×``n`` cubic supercell (``n = 4``: 128 sites), relaxed at
  fixed cell: the substitutional solute, ``E_f = E − (N−1)·e_host − μ``, and the interstitial
  solute at the tetrahedral (TS) and octahedral (OS) sites and in the mixed ⟨111⟩, ⟨110⟩, ⟨100⟩
  dumbbells (one host atom and the solute sharing a site), ``E_f = E − N·e_host − μ``. The
  starting positions are those of :mod:`.interstitials`, with the solute as the inserted atom.
  Each relaxed cell is classified again (:func:`.interstitials.classify`), and a configuration
  that ended up as another one is named in ``status``;
* **AB₂ Laves compounds** (host on A, solute on B) in the C15 (MgCu₂, cF24) and C14 (MgZn₂,
  hP12) structures of :mod:`.phases`. Each is relaxed within its space group, and the
  formation energy per atom is ``(E − n_A·e_host − n_B·μ)/n``. These are the structures that
  can be built offline from space group and Wyckoff data. Be₂W is usually given as the
  hexagonal MgZn₂ (C14) type, but no crystallographic source was checked offline, so both
  variants are computed. W₂Be, Be₁₂W and Be₂₂W (the other phases of the Be–W assessment of
  Okamoto & Tanner) are not built: there are no coordinates offline.

No number here is specific to an element: every cell is built from the potential's own relaxed
lattice constants, and the solute is whichever second element the potential covers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from ..atomistic.oracle import bcc_lattice_guess
from ..core.validation import InputError
from .cells import bcc_supercell, ground_state
from .interstitials import classify, interstitial_cell
from .phases import PROTOTYPES, build_phase, relax_in_symmetry
from .potential import Potential
from .relax import relax
from .status import short_reason, status_array

__all__ = ["COMPOUNDS", "NAME", "SITES", "compute", "solute_cell", "solute_reference"]

NAME = "solutes"

#: solute configurations: substitutional, then the interstitial starts of :data:`.interstitials.DEFECTS`
SITES = ("substitutional", "TS", "OS", "111", "110", "100")

#: AB₂ compounds: label -> prototype of :data:`.phases.PROTOTYPES` (its first Wyckoff orbit is A)
COMPOUNDS = {"AB2 C15": "C15", "AB2 C14": "C14"}

_SOLUTE_LATTICES = ("bcc", "fcc", "hcp")


def solute_cell(site: str, a0: float, host: str, solute: str, n: int = 4) -> Any:
    """Unrelaxed ``n``×``n``×``n`` host bcc supercell with one ``solute`` atom at ``site`` (:data:`SITES`)."""
    if site == "substitutional":
        atoms = bcc_supercell(a0, n, host)
        centre = np.full(3, (n // 2) * a0)
        atoms[int(np.argmin(np.linalg.norm(atoms.positions - centre, axis=1)))].symbol = solute
        return atoms
    atoms = interstitial_cell(site, a0, n, host)
    atoms[-1].symbol = solute  # the inserted atom (the second of a dumbbell's pair)
    return atoms


def solute_reference(potential: Potential, solute: str, fmax: float = 1e-3) -> tuple[float, str]:
    """``(μ, lattice)``: the lowest relaxed energy per atom of ``solute`` in bcc, fcc and hcp."""
    best, which = float("nan"), "no solute crystal converged"
    for name in _SOLUTE_LATTICES:
        atoms = build_phase(name, element=solute, volume_per_atom=_volume_guess(solute))
        r = relax_in_symmetry(atoms, potential, cubic=name != "hcp", fmax=fmax)
        if r.converged and np.isfinite(r.energy) and not (r.energy / len(atoms) >= best):
            best, which = r.energy / len(atoms), name
    return best, which


def _volume_guess(element: str) -> float:
    from ase.data import atomic_numbers, reference_states

    ref = reference_states[atomic_numbers[element]] or {}
    if ref.get("symmetry") == "hcp":  # a start near the solute's own density
        a = ref["a"]
        return float(np.sqrt(3) / 4 * a**2 * ref.get("c/a", 1.633) * a)
    return float(bcc_lattice_guess(element) ** 3 / 2)


def _compound(
    label: str, potential: Potential, host: str, solute: str, e_host: float, mu: float, fmax: float
) -> tuple[float, float, str]:
    """(formation energy per atom, volume per atom, status) of one AB₂ compound, relaxed in symmetry."""
    from ase.spacegroup import crystal

    proto = PROTOTYPES[COMPOUNDS[label]]
    assert proto is not None  # the compounds are built-in prototypes, not table-only phases

    symbols = [host] + [solute] * (len(proto.basis) - 1)  # A on the first orbit, B on the rest
    atoms = crystal(symbols, basis=list(proto.basis), spacegroup=proto.spacegroup, setting=proto.setting,
                    cellpar=list(proto.cellpar), primitive_cell=False, symprec=1e-4)  # fmt: skip
    n_a = sum(s == host for s in atoms.get_chemical_symbols())
    v = (n_a * _volume_guess(host) + (len(atoms) - n_a) * _volume_guess(solute)) / len(atoms)
    atoms.set_cell(atoms.cell[:] * (v * len(atoms) / atoms.get_volume()) ** (1 / 3), scale_atoms=True)
    r = relax_in_symmetry(atoms, potential, cubic=proto.cubic, fmax=fmax)
    if not r.converged:
        return float("nan"), float("nan"), r.reason
    e_f = (r.energy - n_a * e_host - (len(atoms) - n_a) * mu) / len(atoms)
    return float(e_f), float(r.atoms.get_volume() / len(atoms)), "ok"


def compute(
    potential: Potential,
    *,
    solute: str | None = None,
    size: int = 4,
    fmax: float = 1e-3,
    max_steps: int = 2000,
    sites: tuple[str, ...] = SITES,
    compounds: tuple[str, ...] = tuple(COMPOUNDS),
) -> xr.Dataset:
    """Solute formation energies in the host's bcc lattice and AB₂ compound formation energies.

    Parameters
    ----------
    potential : a potential covering the host (``potential.element``) and ``solute``
    solute : the second element (default: the potential's first element other than the host)
    size : cubic repeats of the defect supercell (4: 128 sites; 3 for quick tests)
    fmax : force tolerance of the relaxations (eV/Å)
    max_steps : minimiser iterations per defect cell
    sites : subset of :data:`SITES`
    compounds : subset of :data:`COMPOUNDS`

    Returns
    -------
    Dataset over ``site`` (``formation_energy`` eV, ``relaxed_to``, ``status``) and ``compound``
    (``compound_formation_energy`` eV/atom, ``compound_volume`` Å³/atom, ``compound_status``),
    with ``a0``, ``solute_mu`` (eV/atom) and ``solute_reference`` (its lattice).
    """
    host = potential.element
    others = [e for e in potential.elements if e != host]
    solute = solute or (others[0] if others else None)
    if solute is None or solute not in potential.elements or solute == host:
        raise InputError(f"solutes: potential {potential.label!r} covers {potential.elements}; it needs a second "
                         f"element besides the host {host}")  # fmt: skip
    ef = np.full(len(sites), np.nan)
    relaxed_to = [""] * len(sites)
    ce = np.full(len(compounds), np.nan)
    cv = np.full(len(compounds), np.nan)
    a0, e0, gs = ground_state(potential)
    mu, lattice = (float("nan"), "") if gs != "ok" else solute_reference(potential, solute, fmax)
    reason = f"solute {solute}: {lattice}" if gs == "ok" and not np.isfinite(mu) else gs
    statuses, cstatus = [reason] * len(sites), [reason] * len(compounds)
    if gs == "ok" and np.isfinite(mu):
        for k, site in enumerate(sites):
            try:
                atoms = solute_cell(site, a0, host, solute, size)
                r = relax(atoms, potential, cell="none", fmax=fmax, max_steps=max_steps)
                if not r.converged:
                    statuses[k] = r.reason
                    continue
                n_host = sum(s == host for s in atoms.get_chemical_symbols())
                ef[k] = float(r.energy - n_host * e0 - mu)
                # a substitutional solute stays on its site; an interstitial one may move to another
                relaxed_to[k] = site if site == "substitutional" else classify(r.atoms, a0)
                statuses[k] = "ok" if relaxed_to[k] == site else f"relaxed into {relaxed_to[k]}"
            except Exception as err:  # never raise out of compute: NaN + reason
                ef[k], statuses[k] = np.nan, short_reason(err)
        for k, label in enumerate(compounds):
            try:
                ce[k], cv[k], cstatus[k] = _compound(label, potential, host, solute, e0, mu, fmax)
            except Exception as err:
                cstatus[k] = short_reason(err)
    return xr.Dataset(
        {
            "formation_energy": ("site", ef, {"units": "eV", "long_name": f"{solute} in bcc {host}"}),
            "relaxed_to": ("site", status_array(relaxed_to)),
            "status": ("site", status_array(statuses)),
            "compound_formation_energy": ("compound", ce, {"units": "eV/atom", "long_name": f"{host}{solute}2"}),
            "compound_volume": ("compound", cv, {"units": "Å^3/atom"}),
            "compound_status": ("compound", status_array(cstatus)),
            "a0": ((), a0, {"units": "Å"}),
            "solute_mu": ((), mu, {"units": "eV/atom"}),
            "solute_reference": ((), str(lattice)),
        },
        coords={"site": status_array(list(sites)), "compound": status_array(list(compounds))},
        attrs={"property": NAME, "host": host, "solute": solute, "size": size, "fmax": fmax},
    )
