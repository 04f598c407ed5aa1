"""The descriptor protocol: what a family of linear-in-θ descriptors provides, and its registry.

A descriptor backend (:class:`~popsdask.atomistic.descriptors.snap.SnapSettings`,
:class:`~popsdask.atomistic.descriptors.pod.PodSettings`,
:class:`~popsdask.atomistic.descriptors.ace.AceSettings`) is a small, frozen, picklable value
holding the descriptor hyper-parameters. It gives

* the design rows of one configuration (energy, 3N force and optional 6 virial rows) as a
  :class:`RowBlock` (:meth:`DescriptorBackend.rows`);
* ``n_features`` and :meth:`~DescriptorBackend.feature_names` (the columns, θ's order);
* the store attributes recording it, ``{"descriptor": {"backend": NAME, "settings": {...}}}``
  (:meth:`~DescriptorBackend.store_attrs`), from which :func:`backend_from_attrs` rebuilds it;
* for any coefficient vector θ: potential files (:meth:`~DescriptorBackend.write_potential`),
  their LAMMPS pair commands (:meth:`~DescriptorBackend.pair_commands`) and an ASE calculator
  (:meth:`~DescriptorBackend.calculator`);
* optionally ``atom_rows(cfg, *, config_index=0, session=None)``: the per-atom energy rows of a
  configuration (:meth:`RowBlock.atom_energies`: row i holds atom i's descriptors, its element's
  constant column 1, and the rows sum to the energy row), which per-atom bands are made of;
  :func:`atom_rows` asks it (SNAP: ``compute sna/atom``, POD: ``compute pod/atom``, ACE: pyace's
  per-atom projections); a LAMMPS backend may also name the per-atom computes these rows are
  made of (``atom_computes()``, ``{compute ID: command}``) and build the rows from their arrays
  (``atom_design(cfg, arrays)``), so that a calculator
  (:class:`~popsdask.atomistic.band_calculator.PosteriorCalculator`) evaluates them in the
  potential's own run;
* optionally ``runs_in_lammps()``: whether this process's LAMMPS can run those pair commands
  (without it: yes). :func:`runs_in_lammps` asks it; the property suite runs the potentials of a
  backend that answers no through its ASE calculator instead (ACE without ML-PACE);
* for ``popsdask descriptors --descriptor NAME`` (:class:`CommandLineBackend`): a ``summary``
  line, its own options (``add_arguments``) and its settings from the parsed options
  (``settings_from_args``).

**Adding a backend** is one module defining a class with these members and calling
``register_backend(NAME, Class)`` at import; ``--descriptor`` then offers NAME. The built-in
ones live in ``popsdask.atomistic.descriptors.<name>`` and are imported on first use of the
registry (:func:`backend_names`, :func:`get_backend`), as is a backend that a store names.
Keep a backend module's imports light (ASE, LAMMPS and the like inside the methods that use
them): the command line imports every registered backend to build its parser.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from ...core.validation import InputError

if TYPE_CHECKING:  # pragma: no cover
    import argparse

    from ..calculator import LammpsCalculator
    from ..configurations import Configuration
    from ..lammps_backend import LammpsSession

__all__ = [
    "AtomComputes",
    "CommandLineBackend",
    "DescriptorBackend",
    "RowBlock",
    "atom_rows",
    "backend_from_attrs",
    "backend_from_store",
    "backend_names",
    "get_backend",
    "register_backend",
    "runs_in_lammps",
]


@dataclass
class RowBlock:
    """Design rows of one or more configurations (numpy, in memory)."""

    X: np.ndarray
    y: np.ndarray
    reference: np.ndarray
    kind: np.ndarray
    atom: np.ndarray
    component: np.ndarray
    config: np.ndarray

    @classmethod
    def energy_forces(cls, X: np.ndarray, cfg: Configuration, config_index: int = 0) -> RowBlock:
        """Energy and 3N force rows ``X`` (shape ``(1 + 3N, P)``, atom-major) of ``cfg``, its labels
        as targets and no reference part (the POD and ACE backends)."""
        n = cfg.n_atoms
        if cfg.energy is None or cfg.forces is None:
            raise InputError(f"{cfg.where()}: energy and forces are needed to build rows")
        m = 1 + 3 * n
        return cls(
            X=X,
            y=np.concatenate([[cfg.energy], np.asarray(cfg.forces, dtype=float).ravel()]),
            reference=np.zeros(m),
            kind=np.concatenate([[0], np.ones(3 * n)]).astype(np.int8),
            atom=np.concatenate([[-1], np.repeat(np.arange(n), 3)]).astype(np.int32),
            component=np.concatenate([[-1], np.tile(np.arange(3), n)]).astype(np.int8),
            config=np.full(m, config_index, dtype=np.int64),
        )

    @classmethod
    def atom_energies(cls, X: np.ndarray, reference: np.ndarray, config_index: int = 0) -> RowBlock:
        """Per-atom energy rows ``X`` (N, P) of one configuration and each atom's reference
        energy ``reference`` (N,), which sum to its energy row and reference energy; no targets
        (``y`` is NaN: a per-atom energy is not a label)."""
        n = X.shape[0]
        return cls(
            X=X,
            y=np.full(n, np.nan),
            reference=np.asarray(reference, dtype=np.float64),
            kind=np.zeros(n, dtype=np.int8),
            atom=np.arange(n, dtype=np.int32),
            component=np.full(n, -1, dtype=np.int8),
            config=np.full(n, config_index, dtype=np.int64),
        )

    @classmethod
    def concat(cls, blocks: Sequence[RowBlock]) -> RowBlock:
        return cls(
            *(
                np.concatenate([getattr(b, f) for b in blocks])
                for f in ("X", "y", "reference", "kind", "atom", "component", "config")
            )
        )


@runtime_checkable
class DescriptorBackend(Protocol):
    """What every descriptor family provides (see the module docstring)."""

    #: registry name, recorded in the store's ``descriptor.backend`` attribute
    @property
    def backend(self) -> str: ...

    #: chemical symbols, LAMMPS types 1..n in this order
    @property
    def elements(self) -> tuple[str, ...]: ...

    @property
    def n_features(self) -> int: ...

    #: the interaction range (Å): configuration checks bin the cell by it, as LAMMPS does
    @property
    def cutoff(self) -> float: ...

    def feature_names(self) -> list[str]: ...

    def atom_masses(self) -> tuple[float, ...]: ...

    def key(self) -> str:
        """A string identifying the settings (hashes of resumable parts, potential caches)."""
        ...

    def rows(
        self,
        cfg: Configuration,
        *,
        virial: bool = False,
        config_index: int = 0,
        session: LammpsSession | None = None,
    ) -> RowBlock:
        """Design rows, targets (minus any reference part) and reference of one configuration."""
        ...

    def to_attrs(self) -> dict[str, Any]: ...

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> DescriptorBackend: ...

    def store_attrs(self) -> dict[str, Any]:
        """Attributes of a descriptor store of these rows, including ``descriptor``."""
        ...

    def potential_paths(self, prefix: str | os.PathLike) -> dict[str, Path]:
        """The files :meth:`write_potential` writes under ``prefix`` (``mod`` last)."""
        ...

    def write_potential(self, theta: Any, prefix: str | os.PathLike, *, comment: str = "") -> dict[str, Path]:
        """Write θ as potential files plus ``<prefix>.mod`` (its LAMMPS commands)."""
        ...

    def pair_commands(self, paths: Mapping[str, str | os.PathLike]) -> list[str]:
        """LAMMPS ``pair_style``/``pair_coeff`` commands of the files ``paths``."""
        ...

    def calculator(
        self, theta: Any, directory: str | os.PathLike | None = None, *, label: str = "potential"
    ) -> LammpsCalculator:
        """ASE calculator of θ (through LAMMPS, or the backend's own evaluator)."""
        ...


@runtime_checkable
class AtomComputes(Protocol):
    """What a LAMMPS backend may add: the per-atom computes its per-atom rows are made of (see
    the module docstring)."""

    def atom_computes(self) -> dict[str, str]:
        """{compute ID: LAMMPS ``compute`` command} of per-atom computes."""
        ...

    def atom_design(self, cfg: Configuration, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """(N, n_features) per-atom energy rows of ``cfg`` from those computes' arrays (by ID)."""
        ...


class CommandLineBackend(Protocol):
    """What a registered backend gives ``popsdask descriptors`` (class members of its class)."""

    #: registry name: the value of ``--descriptor``
    backend: str
    #: what the rows are, for the help of ``--descriptor``
    summary: ClassVar[str]

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        """Add this backend's options to ``group`` (names no other backend uses; defaults that
        mean "not given", so that the command refuses them with another ``--descriptor``)."""
        ...

    @classmethod
    def settings_from_args(cls, args: argparse.Namespace, elements: Sequence[str] | None) -> DescriptorBackend | None:
        """The settings of the parsed options ``args`` over ``elements``.

        Called twice by ``popsdask descriptors``: first before the configurations are read, with
        ``--elements`` (None when not given), to refuse bad options at once (an
        :class:`~popsdask.core.validation.InputError` naming the option) and to return the
        settings when they are known then, e.g. from a parameter file whose species fix the
        elements; None defers them to the second call, with the elements the configurations hold.
        """
        ...


def runs_in_lammps(backend: Any) -> bool:
    """Whether this process's LAMMPS runs ``backend``'s pair commands.

    A backend answers with its optional ``runs_in_lammps()`` method (e.g. ACE: only a LAMMPS
    with ML-PACE); a backend without one runs in LAMMPS (SNAP, POD).
    """
    ask = getattr(backend, "runs_in_lammps", None)
    return True if ask is None else bool(ask())


def atom_rows(backend: Any, cfg: Configuration, *, session: LammpsSession | None = None) -> RowBlock:
    """The per-atom energy rows of ``cfg`` (:meth:`RowBlock.atom_energies`) from ``backend``'s
    optional ``atom_rows`` method; an InputError for a backend without one."""
    rows = getattr(backend, "atom_rows", None)
    if rows is None:
        name = getattr(backend, "backend", type(backend).__name__)
        raise InputError(f"descriptor backend {name!r} gives no per-atom energy rows (no atom_rows method)")
    return rows(cfg, session=session)


_REGISTRY: dict[str, type[Any]] = {}


def register_backend(name: str, cls: type[Any]) -> type[Any]:
    """Register the descriptor class ``cls`` under ``name`` (its store attrs' ``backend``)."""
    if not name.isidentifier():
        raise ValueError(f"descriptor backend name {name!r} must be an identifier")
    old = _REGISTRY.get(name)
    if old is not None and old is not cls:
        raise ValueError(f"descriptor backend {name!r} is already registered ({old.__qualname__})")
    _REGISTRY[name] = cls
    return cls


def backend_names() -> list[str]:
    """Names of the registered backends: the built-in ones (imported first), then the others in
    the order they were registered."""
    for name in _BUILTIN:
        _import(name)
    return [n for n in _BUILTIN if n in _REGISTRY] + [n for n in _REGISTRY if n not in _BUILTIN]


#: backends shipped with popsdask, each in ``popsdask.atomistic.descriptors.<name>``
_BUILTIN: tuple[str, ...] = ("snap", "pod", "ace")


def _import(name: str) -> None:
    if name in _REGISTRY or not name.isidentifier():
        return
    try:
        importlib.import_module(f"{__package__}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__package__}.{name}":
            raise


def get_backend(name: str) -> type[Any]:
    """The class registered as ``name`` (importing ``popsdask.atomistic.descriptors.<name>`` if needed)."""
    _import(name)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown descriptor backend {name!r}; available: {backend_names()}") from None


def backend_from_attrs(attrs: Mapping[str, Any], where: str = "store") -> DescriptorBackend:
    """Rebuild the descriptor of a store from its attributes.

    Reads ``attrs["descriptor"] = {"backend": NAME, "settings": {...}}``; stores written before
    the protocol (``descriptor`` a plain string) fall back to their ``snap`` attribute.
    """
    desc = attrs.get("descriptor")
    if isinstance(desc, Mapping) and "backend" in desc:
        cls, settings = get_backend(str(desc["backend"])), desc.get("settings", {})
    elif "snap" in attrs:
        cls, settings = get_backend("snap"), attrs["snap"]
    else:
        cls = None
    if cls is not None:
        if not isinstance(settings, Mapping):
            raise InputError(f"{where}: descriptor settings {settings!r} are not a mapping")
        try:
            return cls.from_attrs(settings)
        except (TypeError, ValueError, KeyError) as err:  # missing, unknown or mistyped settings
            raise InputError(f"{where}: descriptor settings: {err}") from None
    raise InputError(
        f"{where}: no 'snap' attribute with the SNAP settings, nor a 'descriptor' attribute naming a "
        "descriptor backend; use a store made by popsdask descriptors"
    )


def backend_from_store(path: str | os.PathLike) -> DescriptorBackend:
    """The descriptor of the store at ``path``, opened with :func:`popsdask.io.store.open_store`."""
    from ...io.store import open_store

    return backend_from_attrs(open_store(path, require_y=False).attrs, where=str(path))


def check_backend(obj: Any, where: str = "descriptor") -> DescriptorBackend:
    """``obj`` if it implements :class:`DescriptorBackend`, else an InputError."""
    if not isinstance(obj, DescriptorBackend):
        raise InputError(f"{where}: {type(obj).__name__} does not implement the descriptor protocol")
    return obj
