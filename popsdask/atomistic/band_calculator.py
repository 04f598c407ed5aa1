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
import functools
import os
from typing import Any

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.data import chemical_symbols

from ..core.validation import InputError
from ..engine.linear_band import LinearBand
from ..engine.posterior import Posterior
from ..io.store import KIND_CODES
from .calculator import LammpsCalculator
from .configurations import Configuration
from .descriptors.base import AtomComputes, DescriptorBackend, atom_rows
from .lammps_backend import LammpsSession

__all__ = ["ATOM_ENVELOPE", "BAND_PROPERTIES", "PosteriorCalculator", "atoms_band", "configuration_band", "forces_band"]

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
    "energies_mean",
    "energies_std",
    "energies_min",
    "energies_max",
    "energies_box_min",
    "energies_box_max",
    "support",
    "forces_std",
)


#: symbols by atomic number, to name a call's atoms in one step (ASE's list is built per atom)
_SYMBOLS = np.array(chemical_symbols)


@functools.lru_cache(maxsize=1)
def _blas_controller() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _one_blas_thread() -> Any:
    """A context of one BLAS thread for a call's small products ((N × P) by (P × P)): OpenBLAS's
    threads cost more than they save there, and on a busy machine they spin against LAMMPS (the
    per-atom products of 128 atoms took 40 times longer with two BLAS threads on two loaded cores)."""
    return _blas_controller().limit(limits=1, user_api="blas")


def _check_size(band: LinearBand, backend: DescriptorBackend) -> None:
    if band.coef.shape[0] != backend.n_features:
        raise InputError(
            f"posterior: {band.coef.shape[0]} parameters, but the {backend.backend} descriptors have "
            f"{backend.n_features} features (a posterior with an intercept column is not a potential)"
        )


def atoms_band(band: LinearBand, X: np.ndarray, reference: np.ndarray, *, envelope: bool = True) -> dict[str, Any]:
    """The band of a configuration's energy and of each atom's energy, from its per-atom rows.

    Parameters
    ----------
    band : the posterior's band
    X : (N, P) per-atom energy rows (:func:`~popsdask.atomistic.descriptors.base.atom_rows`);
        their sum is the configuration's energy row
    reference : (N,) each atom's reference energy (e.g. its ZBL pair energy; zeros for none)
    envelope : also the per-atom ``energies_min``/``energies_max``/``energies_box_*`` (an
        (N × S) product; the energy's envelope, one row, is always given)

    Returns
    -------
    dict (see :func:`configuration_band`): ``energy``, ``energy_*`` (floats), ``energies``,
    ``energies_*``, ``support`` ((N,) arrays).
    """
    total, each = band.with_sum(X, KIND_CODES["energy"], envelope=envelope)
    shifted = ("mle", "mean", "min", "max", "box_min", "box_max", "min_raw", "max_raw")
    out: dict[str, Any] = {}
    ref_total = float(np.sum(reference))
    for key, value in total.items():
        name = "energy" if key == "mle" else f"energy_{key}"
        out[name] = float(value[0] + (ref_total if key in shifted else 0.0))
    for key, value in each.items():
        name = {"mle": "energies", "support": "support"}.get(key, f"energies_{key}")
        out[name] = value + (reference if key in shifted else 0.0)
    return out


def forces_band(
    band: LinearBand, backend: DescriptorBackend, cfg: Configuration, *, session: LammpsSession | None = None
) -> dict[str, np.ndarray]:
    """``forces_std`` (N, 3) of ``cfg`` (eV/Å), calibrated when the posterior is (and then
    ``forces_std_raw``), from its 3N force rows."""
    n = cfg.n_atoms
    unlabelled = dataclasses.replace(cfg, energy=0.0, forces=np.zeros((n, 3)), stress=None)  # the rows need labels
    rows = backend.rows(unlabelled, session=session)
    force_rows = rows.kind == KIND_CODES["force"]
    f = band(rows.X[force_rows], kind=rows.kind[force_rows], envelope=False)
    out = {"forces_std": f["std"].reshape(n, 3)}
    if "std_raw" in f:
        out["forces_std_raw"] = f["std_raw"].reshape(n, 3)
    return out


def configuration_band(
    band: LinearBand,
    backend: DescriptorBackend,
    cfg: Configuration,
    *,
    energy: bool = True,
    atom_envelope: bool = True,
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
    atom_envelope : with them the per-atom envelopes (see :func:`atoms_band`)
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
    * ``energies``, ``energies_mean``, ``energies_std``, ``energies_min``, ``energies_max``,
      ``energies_box_min``, ``energies_box_max``: (N,) the same per atom (calibrated as the
      energy of one atom); ``support`` (N,) each atom's support score α·xᵢᵀΣxᵢ;
    * on a calibrated posterior the uncalibrated ones as ``*_std_raw``, ``*_min_raw``, ``*_max_raw``.

    With ``forces``: ``forces_std`` (N, 3), calibrated when the posterior is (and
    ``forces_std_raw``).

    The energies include the backend's reference part (e.g. ZBL; per atom its pair energy), which
    has no band: ``energies`` sum to ``energy``.
    """
    _check_size(band, backend)
    out: dict[str, Any] = {}
    with _one_blas_thread():
        if energy:
            atoms = atom_rows(backend, cfg, session=session)
            out.update(atoms_band(band, atoms.X, atoms.reference, envelope=atom_envelope))
        if forces:
            out.update(forces_band(band, backend, cfg, session=session))
    return out


#: per-atom results computed only when asked for (an (N × S) product)
ATOM_ENVELOPE = ("energies_min", "energies_max", "energies_box_min", "energies_box_max")


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

    Results (``calc.results``, ``calc.get_property(name, atoms)``), at every call: ``energy``,
    ``free_energy``, ``forces``, ``stress`` of the MLE potential; ``energy_std``, ``energy_min``,
    ``energy_max``, ``energy_mean``, ``energy_box_min``, ``energy_box_max``, ``energy_support``;
    per atom ``energies``, ``energies_std``, ``energies_mean`` and ``support``. When asked for
    (``calc.get_property(name, atoms)``, computed then for the same atoms): the per-atom
    ``energies_min``, ``energies_max``, ``energies_box_min``, ``energies_box_max`` and
    ``forces_std``, whose 3N force rows cost more than the potential itself.

    A LAMMPS backend that names its per-atom computes (``atom_computes``/``atom_design``) has its
    per-atom rows computed in the MLE potential's own run; any other through ``atom_rows``.
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
        #: the backend whose per-atom rows come from the MLE's own LAMMPS run, or None
        self.computes = (
            backend if isinstance(backend, AtomComputes) and isinstance(self.mle, LammpsCalculator) else None
        )
        if self.computes is not None:
            self.mle.atom_computes = self.computes.atom_computes()
        self._atoms: tuple[Configuration, np.ndarray, np.ndarray] | None = None

    def _configuration(self) -> tuple[Configuration, np.ndarray, np.ndarray]:
        """The MLE's results, and the configuration with its per-atom rows and reference energies."""
        a = self.atoms
        cfg = Configuration(
            name=self.label or "atoms",
            symbols=_SYMBOLS[a.numbers].tolist(),
            positions=np.array(a.positions, dtype=float),
            cell=np.array(a.cell[:], dtype=float),
            pbc=np.array(a.pbc, dtype=bool),
        )
        self.mle.calculate(a, ["energy", "forces", "stress"], all_changes)
        self.results.update(
            {k: v for k, v in self.mle.results.items() if k in ("energy", "free_energy", "forces", "stress")}
        )
        if self.computes is not None:
            X = self.computes.atom_design(cfg, self.mle.atom_arrays)
            # each atom's reference part: the potential's own per-atom energy minus its descriptors'
            return cfg, X, self.mle.results["energies"] - X @ self.band.coef
        rows = atom_rows(self.backend, cfg)
        return cfg, rows.X, rows.reference

    def _bounds(self, band: dict[str, Any]) -> dict[str, Any]:
        if self.bounds == "box":
            for where in ("energy", "energies"):
                if f"{where}_box_min" in band:
                    band[f"{where}_min"], band[f"{where}_max"] = band[f"{where}_box_min"], band[f"{where}_box_max"]
        return band

    def calculate(self, atoms: Any = None, properties: Any = ("energy",), system_changes: Any = all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        with _one_blas_thread():
            self._calculate(set(properties))

    def _calculate(self, properties: set[str]) -> None:
        if "energy" not in self.results:  # new atoms: ASE resets the results when they change
            self._atoms = self._configuration()
            band = atoms_band(self.band, *self._atoms[1:], envelope=bool(properties & set(ATOM_ENVELOPE)))
            del band["energy"]  # the MLE potential's own, equal to it to round-off
            self.results.update(self._bounds(band))
        assert self._atoms is not None
        wanted = properties - set(self.results)
        if wanted & set(ATOM_ENVELOPE):
            band = atoms_band(self.band, *self._atoms[1:], envelope=True)
            self.results.update({k: v for k, v in self._bounds(band).items() if k.startswith("energies_")})
        if "forces_std" in wanted:
            self.results.update(forces_band(self.band, self.backend, self._atoms[0]))
