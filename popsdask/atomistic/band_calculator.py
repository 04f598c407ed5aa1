"""The posterior's band of a configuration, and an ASE calculator returning it beside the MLE.

A linear potential's energy is a sum of per-atom energies x_i·θ, its forces −∂/∂r of it, so the
band of every quantity is the posterior's band of a design row (:class:`~popsdask.engine.
linear_band.LinearBand`): the energy row (the sum of the per-atom rows), each atom's row, and the
3N force rows. :func:`configuration_band` computes them for any descriptor backend whose rows and
per-atom rows it gets through the descriptor protocol (:func:`~popsdask.atomistic.descriptors.base.
atom_rows`); :class:`PosteriorCalculator` is an ASE calculator that returns the MLE potential's
energy, forces and stress (the backend's own calculator of the MLE) and these bands.

Everything is linear algebra on fixed matrices of the posterior: no member potential is run. The
energies include the backend's reference part (e.g. ZBL), which has no uncertainty; the bands
equal ``popsdask predict`` on a store of the same configurations (plus the store's
``reference_energy``) to round-off.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from ..core.validation import InputError
from ..engine.linear_band import LinearBand
from ..engine.posterior import Posterior
from ..io.store import KIND_CODES
from .configurations import Configuration
from .descriptors.base import DescriptorBackend, atom_rows
from .lammps_backend import LammpsSession

__all__ = ["BAND_PROPERTIES", "PosteriorCalculator", "configuration_band"]

#: what :class:`PosteriorCalculator` returns beside the MLE's energy, forces and stress
BAND_PROPERTIES = (
    "energy_mean",
    "energy_std",
    "energy_min",
    "energy_max",
    "energy_box_min",
    "energy_box_max",
    "energy_support",
    "energies",
    "energies_std",
    "energies_min",
    "energies_max",
    "energies_box_min",
    "energies_box_max",
    "support",
    "forces_std",
)


def _check_size(band: LinearBand, backend: DescriptorBackend) -> None:
    if band.coef.shape[0] != backend.n_features:
        raise InputError(
            f"posterior: {band.coef.shape[0]} parameters, but the {backend.backend} descriptors have "
            f"{backend.n_features} features (a posterior with an intercept column is not a potential)"
        )


def configuration_band(
    band: LinearBand,
    backend: DescriptorBackend,
    cfg: Configuration,
    *,
    energy: bool = True,
    forces: bool = False,
    session: LammpsSession | None = None,
) -> dict[str, Any]:
    """The posterior's band of one configuration: its energy, each atom's energy and its forces.

    Parameters
    ----------
    band : the posterior's band (:meth:`LinearBand.from_posterior`: its members and calibration)
    backend : the posterior's descriptors
    cfg : the configuration (labels, if any, are ignored)
    energy : the energy band and the per-atom bands (from the backend's per-atom rows)
    forces : the force std (from the 3N force rows, which cost more to compute than the
        per-atom rows)
    session : the LAMMPS session (default: this process's)

    Returns
    -------
    dict; energies in eV, forces in eV/Å. With ``energy``:

    * ``energy`` (the MLE), ``energy_mean``, ``energy_std``, ``energy_min``, ``energy_max``:
      the members' mean, std and envelope, calibrated when the posterior is;
      ``energy_box_min``/``energy_box_max`` the exact envelope of the whole posterior;
      ``energy_support`` α·xᵀΣx of the energy row (floats);
    * ``energies``, ``energies_std``, ``energies_min``, ``energies_max``, ``energies_box_min``,
      ``energies_box_max``: (N,) the same per atom (calibrated as the energy of one atom);
      ``support`` (N,) each atom's support score α·xᵢᵀΣxᵢ;
    * on a calibrated posterior the uncalibrated ones as ``*_std_raw``, ``*_min_raw``, ``*_max_raw``.

    With ``forces``: ``forces_std`` (N, 3), calibrated when the posterior is (and
    ``forces_std_raw``).

    The energies include the backend's reference part (e.g. ZBL; per atom its pair energy), which
    has no band: ``energies`` sum to ``energy``.
    """
    _check_size(band, backend)
    n = cfg.n_atoms
    out: dict[str, Any] = {}
    if energy:
        atoms = atom_rows(backend, cfg, session=session)
        total = band(atoms.X.sum(axis=0), kind=np.array([KIND_CODES["energy"]]), n_atoms=n)
        each = band(atoms.X, kind=np.full(n, KIND_CODES["energy"]), n_atoms=1)
        shifted = ("mle", "mean", "min", "max", "box_min", "box_max", "min_raw", "max_raw")
        ref_total = float(atoms.reference.sum())
        for key, value in total.items():
            name = "energy" if key == "mle" else f"energy_{key}"
            out[name] = float(value[0] + (ref_total if key in shifted else 0.0))
        for key, value in each.items():
            name = {"mle": "energies", "support": "support"}.get(key, f"energies_{key}")
            out[name] = value + (atoms.reference if key in shifted else 0.0)
    if forces:
        rows = backend.rows(dataclasses.replace(cfg, energy=0.0, forces=np.zeros((n, 3)), stress=None), session=session)
        force_rows = rows.kind == KIND_CODES["force"]
        f = band(rows.X[force_rows], kind=rows.kind[force_rows], envelope=False)
        out["forces_std"] = f["std"].reshape(n, 3)
        if "std_raw" in f:
            out["forces_std_raw"] = f["std_raw"].reshape(n, 3)
    return out


class PosteriorCalculator(Calculator):
    """ASE calculator of a posterior: the MLE potential's energy, forces and stress, and the
    posterior's bands (:func:`configuration_band`).

    Parameters
    ----------
    posterior : a fitted :class:`~popsdask.engine.posterior.Posterior` or its :class:`LinearBand`
    backend : the descriptors it was fitted on (any backend with ``atom_rows``)
    bounds : ``"members"``: ``energy_min``/``energy_max`` (and per atom) are the members'
        envelope, calibrated when the posterior is, as ``popsdask predict``'s ``min``/``max``;
        ``"box"``: the exact envelope of the whole posterior (``box_min``/``box_max``)
    n_samples, method, seed : the members, as ``popsdask predict`` draws them; by default (None)
        its default: 500 uniform draws from seed 0 of a hypercube, every stored correction of an
        ensemble
    directory, label : where the MLE's potential files go (default a new temporary directory)

    Results (``calc.results``, ``calc.get_property(name, atoms)``): ``energy``, ``free_energy``,
    ``forces``, ``stress`` of the MLE potential; ``energy_std``, ``energy_min``, ``energy_max``,
    ``energy_mean``, ``energy_box_min``, ``energy_box_max``, ``energy_support``, per atom
    ``energies``, ``energies_std``, ``energies_min``, ``energies_max`` and ``support``, at every
    call; ``forces_std`` only when asked for (``calc.get_property("forces_std", atoms)``), as its
    3N force rows cost more than the potential itself.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", *BAND_PROPERTIES]

    def __init__(
        self,
        posterior: Posterior | LinearBand,
        backend: DescriptorBackend,
        *,
        bounds: str = "members",
        n_samples: int | None = None,
        method: str = "uniform",
        seed: int | None = 0,
        directory: str | os.PathLike | None = None,
        label: str = "posterior",
        **kwargs: Any,
    ) -> None:
        if bounds not in ("members", "box"):
            raise InputError(f"bounds={bounds!r}: 'members' or 'box'")
        super().__init__(label=label, **kwargs)
        self.band = (
            posterior
            if isinstance(posterior, LinearBand)
            else LinearBand.from_posterior(posterior, n_samples, method, seed)
        )
        _check_size(self.band, backend)
        self.backend = backend
        self.bounds = bounds
        self.mle = backend.calculator(self.band.coef, directory, label=label)

    def calculate(self, atoms: Any = None, properties: Any = ("energy",), system_changes: Any = all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        # a change of the atoms resets the results: what is still there is this configuration's
        new = "energy" not in self.results
        want_forces = "forces_std" in properties and "forces_std" not in self.results
        cfg = Configuration(
            name=self.label or "atoms",
            symbols=list(self.atoms.get_chemical_symbols()),
            positions=np.array(self.atoms.positions, dtype=float),
            cell=np.array(self.atoms.cell[:], dtype=float),
            pbc=np.array(self.atoms.pbc, dtype=bool),
        )
        band = configuration_band(self.band, self.backend, cfg, energy=new, forces=want_forces)
        if new:
            self.mle.calculate(self.atoms, ["energy", "forces", "stress"], all_changes)
            self.results.update(
                {k: v for k, v in self.mle.results.items() if k in ("energy", "free_energy", "forces", "stress")}
            )
            del band["energy"]  # the MLE potential's own, equal to θ·Σxᵢ + reference to round-off
            if self.bounds == "box":
                for where in ("energy", "energies"):
                    band[f"{where}_min"], band[f"{where}_max"] = band[f"{where}_box_min"], band[f"{where}_box_max"]
        self.results.update(band)
