"""The LAMMPS-backed ASE calculator: any LAMMPS pair style evaluated on the process's instance.

:class:`LammpsCalculator` runs a fitted qSNAP potential (built by
:func:`popsdask.atomistic.descriptors.snap.snap_calculator`) and the teacher potentials shipped with
LAMMPS alike, so what is measured is what LAMMPS computes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from ..core.validation import InputError
from .configurations import Configuration
from .lammps_backend import NKTV2P, get_session, lammps_box

__all__ = ["LammpsCalculator"]


class LammpsCalculator(Calculator):
    """ASE calculator evaluating any LAMMPS pair style (metal units) on the process's instance.

    Parameters
    ----------
    pair_commands : LAMMPS commands defining the interactions
    elements : chemical symbols mapped to LAMMPS types 1..n
    masses : atomic masses (default: ASE's)
    label : a name for the potential
    atom_computes : {compute ID: LAMMPS ``compute`` command} of per-atom computes evaluated in the
        same run (e.g. a backend's per-atom descriptors); their values, (N, columns) in atom
        order, are in :attr:`atom_arrays` after each calculation

    Results: ``energy``, ``free_energy``, ``forces``, ``stress`` and, when asked for or with
    ``atom_computes``, the per-atom energies ``energies`` (LAMMPS ``compute pe/atom``).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(
        self,
        pair_commands: Sequence[str],
        elements: Sequence[str],
        masses: Sequence[float] | None = None,
        label: str = "lammps",
        atom_computes: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(label=label, **kwargs)
        self.pair_commands = list(pair_commands)
        self.atom_computes = dict(atom_computes or {})
        self.atom_arrays: dict[str, np.ndarray] = {}
        self.elements = list(elements)
        if masses is None:
            from ase.data import atomic_masses, atomic_numbers

            masses = [float(atomic_masses[atomic_numbers[e]]) for e in self.elements]
        self.masses = list(masses)

    def _types(self, symbols: Sequence[str], where: str) -> np.ndarray:
        index = {e: i + 1 for i, e in enumerate(self.elements)}
        bad = sorted(set(symbols) - set(index))
        if bad:
            raise InputError(f"{where}: element(s) {bad} not covered by potential {self.label!r} ({self.elements})")
        return np.array([index[s] for s in symbols])

    def calculate(self, atoms: Any = None, properties: Any = ("energy",), system_changes: Any = all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        a = self.atoms
        where = f"{self.label}: {a.get_chemical_formula()}"
        box = lammps_box(a.cell[:], a.pbc, a.positions, where=where)
        sess = get_session()
        per_atom = "energies" in properties or bool(self.atom_computes)
        with sess.lock:
            sess.setup(box, self._types(a.get_chemical_symbols(), where), self.masses, self.pair_commands)
            sess.lmp.command("compute popsdask_pv all pressure NULL virial")
            if per_atom:
                sess.lmp.command("compute popsdask_pe all pe/atom")
            for command in self.atom_computes.values():
                sess.lmp.command(command)
            sess.lmp.command("thermo_style custom step pe")
            sess.lmp.command("run 0")
            energy = float(sess.lmp.get_thermo("pe"))
            forces = box.forces_back(sess.forces())
            pv = sess.global_vector("popsdask_pv")  # xx yy zz xy xz yz, bar
            energies = sess.atom_compute("popsdask_pe", columns=False) if per_atom else None
            self.atom_arrays = {cid: sess.atom_compute(cid) for cid in self.atom_computes}
        voigt = np.array([pv[0], pv[1], pv[2], pv[5], pv[4], pv[3]])
        stress = -box.tensor_back(voigt) / NKTV2P
        self.results = {"energy": energy, "free_energy": energy, "forces": forces, "stress": stress}
        if energies is not None:
            self.results["energies"] = energies

    def label_configuration(self, cfg: Configuration) -> Configuration:
        """Return a copy of ``cfg`` with energy, forces and stress from this potential."""
        atoms = cfg.to_atoms(with_labels=False)
        atoms.calc = self
        e = atoms.get_potential_energy()
        out = Configuration.from_atoms(atoms, name=cfg.name, source=cfg.source, group=cfg.group)
        out.energy = float(e)
        out.forces = np.array(atoms.get_forces())
        out.stress = np.array(atoms.get_stress())
        out.info = dict(cfg.info)
        return out
