"""Potentials out: ``.snapcoeff``/``.snapparam`` files and a LAMMPS-backed ASE calculator.

Any coefficient vector θ over the store's columns — the MLE, a posterior sample, or a hand-made
one — is written with :func:`write_snap_potential` and run with :func:`snap_calculator`; the
same :class:`LammpsCalculator` runs the teacher potential shipped with LAMMPS. This is the one
protocol by which popsdask evaluates a fitted potential on atoms, so that what is measured is
what LAMMPS's ``pair_style snap`` computes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from .._validate import InputError
from .configurations import Configuration
from .lammps_backend import NKTV2P, get_session, lammps_box
from .snap import SnapSettings

__all__ = ["LammpsCalculator", "pair_commands_for", "snap_calculator", "write_snap_potential"]


def write_snap_potential(
    theta: Any, settings: SnapSettings, prefix: str | os.PathLike, *, comment: str = ""
) -> dict[str, Path]:
    """Write θ as ``<prefix>.snapcoeff``, ``<prefix>.snapparam`` and ``<prefix>.mod``.

    Parameters
    ----------
    theta : (n_features,) coefficients over the store's columns (per element: β0, linear,
        quadratic terms, i.e. the ``.snapcoeff`` order)
    settings : the descriptor settings of the store
    prefix : path prefix of the files
    comment : first-line comment (e.g. which sample)

    Returns
    -------
    dict with ``snapcoeff``, ``snapparam`` and ``mod`` (LAMMPS commands using them) paths.
    """
    theta = np.asarray(theta, dtype=float).ravel()
    if theta.shape != (settings.n_features,):
        raise InputError(f"write_snap_potential: θ has {theta.size} values, the descriptors have {settings.n_features}")
    if not np.all(np.isfinite(theta)):
        raise InputError("write_snap_potential: θ has non-finite values")
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    nb = 1 + settings.n_descriptors
    lines = [f"# popsdask qSNAP coefficients {comment}".rstrip(), f"{len(settings.elements)} {nb}"]
    for t, el in enumerate(settings.elements):
        lines.append(f"{el} {settings.radii[t]!r} {settings.element_weights[t]!r}")
        lines += [f"{v:.17g}" for v in theta[t * nb : (t + 1) * nb]]
    paths = {
        "snapcoeff": prefix.with_name(prefix.name + ".snapcoeff"),
        "snapparam": prefix.with_name(prefix.name + ".snapparam"),
        "mod": prefix.with_name(prefix.name + ".mod"),
    }
    paths["snapcoeff"].write_text("\n".join(lines) + "\n")
    paths["snapparam"].write_text(settings.snapparam_text())
    cmds = pair_commands_for(settings, paths["snapcoeff"], paths["snapparam"])
    paths["mod"].write_text("# LAMMPS pair style of this potential (metal units)\n" + "\n".join(cmds) + "\n")
    return paths


def pair_commands_for(settings: SnapSettings, snapcoeff: str | os.PathLike, snapparam: str | os.PathLike) -> list[str]:
    """LAMMPS ``pair_style``/``pair_coeff`` commands for SNAP files plus the reference pair."""
    els = " ".join(settings.elements)
    if not settings.reference_style:
        return ["pair_style snap", f"pair_coeff * * {snapcoeff} {snapparam} {els}"]
    style, coeffs = settings.reference_commands("")
    return [
        f"pair_style hybrid/overlay {style} snap",
        *coeffs,
        f"pair_coeff * * snap {snapcoeff} {snapparam} {els}",
    ]


class LammpsCalculator(Calculator):
    """ASE calculator evaluating any LAMMPS pair style (metal units) on the process's instance.

    Parameters
    ----------
    pair_commands : LAMMPS commands defining the interactions
    elements : chemical symbols mapped to LAMMPS types 1..n
    masses : atomic masses (default: ASE's)
    label : a name for the potential
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(
        self,
        pair_commands: Sequence[str],
        elements: Sequence[str],
        masses: Sequence[float] | None = None,
        label: str = "lammps",
        **kwargs: Any,
    ) -> None:
        super().__init__(label=label, **kwargs)
        self.pair_commands = list(pair_commands)
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
        with sess.lock:
            sess.setup(box, self._types(a.get_chemical_symbols(), where), self.masses, self.pair_commands)
            sess.lmp.command("compute popsdask_pv all pressure NULL virial")
            sess.lmp.command("thermo_style custom step pe")
            sess.lmp.command("run 0")
            energy = float(sess.lmp.get_thermo("pe"))
            forces = box.forces_back(sess.forces())
            pv = sess.global_vector("popsdask_pv")  # xx yy zz xy xz yz, bar
        voigt = np.array([pv[0], pv[1], pv[2], pv[5], pv[4], pv[3]])
        stress = -box.tensor_back(voigt) / NKTV2P
        self.results = {"energy": energy, "free_energy": energy, "forces": forces, "stress": stress}

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


def snap_calculator(
    theta: Any,
    settings: SnapSettings,
    directory: str | os.PathLike | None = None,
    *,
    label: str = "qsnap",
) -> LammpsCalculator:
    """ASE calculator running ``pair_style snap`` (plus the reference pair) for θ.

    The potential files are written to ``directory`` (default: a new temporary directory),
    so the calculator can be pickled to Dask workers along with their paths on a shared
    file system.
    """
    d = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="popsdask-snap-"))
    paths = write_snap_potential(theta, settings, d / label)
    return LammpsCalculator(
        pair_commands_for(settings, paths["snapcoeff"], paths["snapparam"]),
        settings.elements,
        settings.atom_masses(),
        label=label,
    )
