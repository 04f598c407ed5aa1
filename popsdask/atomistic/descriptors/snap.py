"""qSNAP design rows of one configuration, from LAMMPS's ``compute snap``.

Rows (``1 + 3N`` or ``1 + 3N + 6`` per configuration) and columns (parameters θ):

* **energy row**: bispectrum components summed over atoms (``compute snap`` row 0), with a
  leading constant column per element holding that element's atom count, so that its
  coefficient is the per-atom reference energy (``β0`` of the ``.snapcoeff`` file; without
  ``beta0_columns``, as FitSNAP with ``bzeroflag``, there is no such column and β0 is 0);
* **3N force rows** (atom-major: atom 0 x, y, z, atom 1 x, ...): ``θ·row`` is the force (eV/Å);
* **6 virial rows** (optional; Voigt xx, yy, zz, yz, xz, xy): ``θ·row`` is the virial
  ``W = -σ V`` (eV) with σ the ASE stress.

The column order per element is ``[count, B_1..B_K, quadratic terms]`` exactly as the
coefficients of a ``.snapcoeff`` file, so a fitted θ is exported without reordering; the
quadratic columns carry LAMMPS's ½ on the diagonal terms, as ``pair_style snap`` does.

When a reference pair style is set (e.g. ZBL), its energy, forces and virial (``compute
snap``'s last column; the virial arrives in pressure units and is converted) are subtracted
from the targets and returned as ``reference``. A per-element ``energy_shift`` (FitSNAP's
``[ESHIFT]``, added to every energy per atom of that element) enters the reference energy as
``-Σ shift``, and the exported ``β0`` carries it, so LAMMPS still gives ``θ·row + reference``.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ...core.validation import InputError, number
from .. import lammps_text
from ..configurations import Configuration
from ..lammps_backend import NKTV2P, LammpsSession, get_session, lammps_box
from .base import RowBlock, register_backend

if TYPE_CHECKING:  # pragma: no cover
    import argparse

    from ..calculator import LammpsCalculator

__all__ = [
    "SnapSettings",
    "default_masses",
    "n_bispectrum",
    "pair_commands_for",
    "snap_atom_rows",
    "snap_calculator",
    "snap_rows",
    "write_snap_potential",
    "zbl_reference",
]


def default_masses(elements: Sequence[str]) -> tuple[float, ...]:
    """ASE's atomic masses of the chemical symbols ``elements``."""
    from ase.data import atomic_masses

    return tuple(float(atomic_masses[_atomic_number(e)]) for e in elements)


def _atomic_number(symbol: str) -> int:
    from ase.data import atomic_numbers

    try:
        return int(atomic_numbers[symbol])
    except KeyError:
        raise InputError(f"unknown chemical symbol {symbol!r}") from None


def zbl_reference(elements: Sequence[str], inner: float = 4.0, outer: float = 4.8) -> dict[str, Any]:
    """``reference_style``/``reference_coeffs`` of a ZBL baseline for every pair of ``elements``.

    One ``pair_coeff I J Z_I Z_J`` per type pair (I <= J) with the nuclear charges of the
    elements, as the W–Be SNAP of Wood et al. (PRB 2019) defines it: a ``* * Z Z`` line would
    give every element the first one's charge.
    """
    if not 0 < inner < outer:
        raise InputError(f"ZBL cutoffs: need 0 < inner < outer (got {inner}, {outer})")
    z = [_atomic_number(e) for e in elements]
    coeffs = tuple(f"{i + 1} {j + 1} {z[i]} {z[j]}" for i in range(len(z)) for j in range(i, len(z)))
    return {"reference_style": f"zbl {inner!r} {outer!r}", "reference_coeffs": coeffs}


def _type_range(token: str, n: int, where: str) -> range:
    """Types of a LAMMPS pair_coeff type token (``*``, ``2``, ``1*2``, ``*2``, ``2*``)."""
    try:
        if "*" not in token:
            return range(int(token), int(token) + 1)
        lo, hi = token.split("*")
        return range(int(lo) if lo else 1, (int(hi) if hi else n) + 1)
    except ValueError:
        raise InputError(f"{where}: bad type {token!r} in reference_coeffs") from None


def _check_zbl(elements: Sequence[str], coeffs: Sequence[str]) -> None:
    """Every type's ZBL self charge must be its element's atomic number (a wrong charge is a
    silently wrong baseline, e.g. ``* * 74 74`` for W and Be)."""
    n = len(elements)
    for c in coeffs:
        tok = c.split()
        if len(tok) < 4:
            raise InputError(f"reference_coeffs {c!r}: ZBL needs 'I J Z_I Z_J'")
        ti, tj = _type_range(tok[0], n, c), _type_range(tok[1], n, c)
        try:
            zi, zj = float(tok[2]), float(tok[3])
        except ValueError:
            raise InputError(f"reference_coeffs {c!r}: Z_I Z_J must be numbers") from None
        for a in ti:
            for b in (b for b in tj if b >= a):  # LAMMPS sets the pairs I <= J
                if not (1 <= a <= n and 1 <= b <= n):
                    raise InputError(f"reference_coeffs {c!r}: type outside 1..{n} ({list(elements)})")
                want = (_atomic_number(elements[a - 1]), _atomic_number(elements[b - 1]))
                if (zi, zj) != want:
                    raise InputError(
                        f"reference_coeffs {c!r}: types {a} {b} are {elements[a - 1]} {elements[b - 1]} "
                        f"(Z = {want[0]} {want[1]}), not Z = {tok[2]} {tok[3]}; use zbl_reference(elements)"
                    )


#: LAMMPS ``compute snap`` keywords added after the first stores: left out of a store's attrs
#: (and of the parts' hash) at these defaults, so stores built without them are unchanged
KEYWORD_DEFAULTS: dict[str, Any] = {
    "chemflag": False,
    "bnormflag": False,
    "wselfallflag": False,
    "switchinnerflag": False,
    "sinner": (),
    "dinner": (),
    "beta0_columns": True,
    "energy_shift": (),
}


@functools.cache
def n_bispectrum(twojmax: int) -> int:
    """Number of linear bispectrum components of one element (LAMMPS's ``ncoeff``)."""
    n = 0
    for j1 in range(twojmax + 1):
        for j2 in range(j1 + 1):
            for j in range(j1 - j2, min(twojmax, j1 + j2) + 1, 2):
                if j >= j1:
                    n += 1
    return n


@dataclass(frozen=True)
class SnapSettings:
    """Descriptor hyper-parameters and the optional reference pair style.

    Parameters
    ----------
    elements : chemical symbols, LAMMPS types 1..n in this order
    radii, element_weights : SNAP per-element radius and neighbour weight
    twojmax, rcutfac, rfac0, rmin0 : SNAP hyper-parameters (LAMMPS ``compute snap``)
    quadratic, switchflag, bzeroflag : LAMMPS flags
    chemflag : explicit multi-element (EME) bispectrum: ``n_elements³`` blocks per element
    bnormflag, wselfallflag : LAMMPS flags (normalised bispectrum; self-weight for every element)
    switchinnerflag, sinner, dinner : inner switching function, centre and half-width per element (Å)
    beta0_columns : a constant column per element (atom counts, coefficient β0); FitSNAP has
        none with ``bzeroflag`` and writes β0 = 0
    energy_shift : per element (eV/atom), added to the energies of that element's atoms
        (FitSNAP's ``[ESHIFT]``); empty for none
    reference_style : e.g. ``"zbl 4.0 4.8"``, or None for no baseline
    reference_coeffs : pair_coeff arguments of the reference, e.g. ``("* * 74 74",)``
    masses : atomic masses (default: ASE's)
    """

    elements: tuple[str, ...] = ("W",)
    radii: tuple[float, ...] = (0.5,)
    element_weights: tuple[float, ...] = (1.0,)
    twojmax: int = 6
    rcutfac: float = 4.73442
    rfac0: float = 0.99363
    rmin0: float = 0.0
    quadratic: bool = True
    switchflag: bool = True
    bzeroflag: bool = False
    chemflag: bool = False
    bnormflag: bool = False
    wselfallflag: bool = False
    switchinnerflag: bool = False
    sinner: tuple[float, ...] = ()
    dinner: tuple[float, ...] = ()
    beta0_columns: bool = True
    energy_shift: tuple[float, ...] = ()
    reference_style: str | None = None
    reference_coeffs: tuple[str, ...] = ()
    masses: tuple[float, ...] | None = field(default=None, compare=False)

    #: the descriptor protocol's registry name (:mod:`popsdask.atomistic.descriptors.base`)
    backend: ClassVar[str] = "snap"
    #: ``popsdask descriptors --descriptor snap``
    summary: ClassVar[str] = "qSNAP, LAMMPS compute snap"

    def __post_init__(self) -> None:
        self._check_text()
        n = len(self.elements)
        if n == 0 or len(self.radii) != n or len(self.element_weights) != n:
            raise InputError(
                f"SnapSettings: {n} elements but {len(self.radii)} radii and {len(self.element_weights)} weights"
            )
        if len(set(self.elements)) != n:
            raise InputError(f"SnapSettings: elements {list(self.elements)} repeat a symbol")
        if self.masses is None:  # masses come from the symbols: each must be one
            for e in self.elements:
                _atomic_number(e)
        if self.twojmax < 0 or self.rcutfac <= 0:
            raise InputError(f"SnapSettings: twojmax={self.twojmax}, rcutfac={self.rcutfac}")
        if self.chemflag and self.quadratic:
            raise InputError("SnapSettings: chemflag with quadratic terms is not a LAMMPS SNAP model; use linear")
        inner = (len(self.sinner), len(self.dinner))
        if inner != ((n, n) if self.switchinnerflag else (0, 0)):
            raise InputError(
                f"SnapSettings: switchinnerflag={self.switchinnerflag} needs {n if self.switchinnerflag else 0} "
                f"sinner and dinner values (one per element), got {inner[0]} and {inner[1]}"
            )
        if self.energy_shift and len(self.energy_shift) != n:
            raise InputError(f"SnapSettings: {len(self.energy_shift)} energy_shift values for {n} elements")
        if self.reference_style and not self.reference_coeffs:
            raise InputError(f"SnapSettings: reference_style {self.reference_style!r} needs reference_coeffs")
        if self.reference_style and self.reference_style.split()[0] == "zbl":
            _check_zbl(self.elements, self.reference_coeffs)

    def _check_text(self) -> None:
        """Every setting written into LAMMPS text is a symbol, a number or an allowed word."""
        where = "SnapSettings"
        for e in self.elements:
            lammps_text.symbol(e, f"{where}: elements")
        for name in ("radii", "element_weights") + (("masses",) if self.masses is not None else ()):
            for v in getattr(self, name):
                lammps_text.number(v, f"{where}: {name}")
        lammps_text.integer(self.twojmax, f"{where}: twojmax")
        for name in ("rcutfac", "rfac0", "rmin0"):
            lammps_text.number(getattr(self, name), f"{where}: {name}")
        for name in ("quadratic", "switchflag", "bzeroflag"):
            if getattr(self, name) not in (True, False):
                raise InputError(f"{where}: {name} {getattr(self, name)!r}: not a boolean")
        if self.reference_style:
            lammps_text.pair_style(self.reference_style, f"{where}: reference_style")
        for c in self.reference_coeffs:
            lammps_text.words(c, f"{where}: reference_coeffs")

    # -- sizes and names ----------------------------------------------------------------
    @property
    def n_linear(self) -> int:
        return n_bispectrum(self.twojmax)

    @property
    def n_descriptors(self) -> int:
        """Columns of one element's block in ``compute snap`` (linear, times ``n_elements³``
        with chemflag, + quadratic)."""
        k = self.n_linear * (len(self.elements) ** 3 if self.chemflag else 1)
        return k + (k * (k + 1) // 2 if self.quadratic else 0)

    @property
    def n_block(self) -> int:
        """Columns per element: the β0 column (when present) and the descriptor block."""
        return int(self.beta0_columns) + self.n_descriptors

    @property
    def n_features(self) -> int:
        """Parameters θ: per element the constant column (when present) plus the descriptor block."""
        return len(self.elements) * self.n_block

    def feature_names(self) -> list[str]:
        k = self.n_linear * (len(self.elements) ** 3 if self.chemflag else 1)
        names = []
        for el in self.elements:
            names += [f"{el}:beta0"] if self.beta0_columns else []
            names += [f"{el}:B{i}" for i in range(k)]
            if self.quadratic:
                names += [f"{el}:B{i}*B{j}" for i in range(k) for j in range(i, k)]
        return names

    @property
    def cutoff(self) -> float:
        return 2.0 * self.rcutfac * max(self.radii)

    def atom_masses(self) -> tuple[float, ...]:
        return tuple(self.masses) if self.masses is not None else default_masses(self.elements)

    # -- LAMMPS text -------------------------------------------------------------------
    def _flags(self) -> str:
        flags = (
            f"rmin0 {self.rmin0!r} bzeroflag {int(self.bzeroflag)} "
            f"quadraticflag {int(self.quadratic)} switchflag {int(self.switchflag)}"
        )
        if self.chemflag:  # element t of the types 1..n is chemical element t-1
            flags += f" chem {len(self.elements)} " + " ".join(str(t) for t in range(len(self.elements)))
        for name in ("bnormflag", "wselfallflag"):
            flags += f" {name} 1" if getattr(self, name) else ""
        if self.switchinnerflag:
            flags += " switchinnerflag 1 sinner " + " ".join(repr(float(v)) for v in self.sinner)
            flags += " dinner " + " ".join(repr(float(v)) for v in self.dinner)
        return flags

    def compute_command(self, compute_id: str = "snap", style: str = "snap") -> str:
        """``compute snap`` (design rows) or, ``style="sna/atom"``, per-atom descriptors: same arguments."""
        radii = " ".join(repr(float(r)) for r in self.radii)
        wts = " ".join(repr(float(w)) for w in self.element_weights)
        return (
            f"compute {compute_id} all {style} {self.rcutfac!r} {self.rfac0!r} {self.twojmax} "
            f"{radii} {wts} {self._flags()}"
        )

    def reference_commands(self) -> tuple[str, list[str]]:
        """(pair_style fragment, pair_coeff commands) of the reference, for hybrid/overlay."""
        assert self.reference_style
        name = self.reference_style.split()[0]
        coeffs = []
        for c in self.reference_coeffs:
            tok = c.split()
            coeffs.append(f"pair_coeff {tok[0]} {tok[1]} {name} {' '.join(tok[2:])}")
        return self.reference_style, coeffs

    def descriptor_pair_commands(self) -> list[str]:
        """Pair style under ``compute snap``: ``zero`` (neighbour list) plus the reference."""
        cut = self.cutoff + 1e-6
        if not self.reference_style:
            return [f"pair_style zero {cut!r}", "pair_coeff * *"]
        style, coeffs = self.reference_commands()
        return [f"pair_style hybrid/overlay zero {cut!r} {style}", "pair_coeff * * zero", *coeffs]

    @property
    def model(self) -> str:
        """``qSNAP`` (quadratic columns) or ``SNAP`` (linear), as the exported files' headers say."""
        return "qSNAP" if self.quadratic else "SNAP"

    def snapparam_text(self) -> str:
        text = (
            f"# popsdask {self.model} descriptor settings\n"
            f"rcutfac {self.rcutfac!r}\ntwojmax {self.twojmax}\nrfac0 {self.rfac0!r}\n"
            f"rmin0 {self.rmin0!r}\nbzeroflag {int(self.bzeroflag)}\n"
            f"quadraticflag {int(self.quadratic)}\nswitchflag {int(self.switchflag)}\n"
        )
        for name in ("chemflag", "bnormflag", "wselfallflag"):
            text += f"{name} 1\n" if getattr(self, name) else ""
        if self.switchinnerflag:
            text += "switchinnerflag 1\n"
            text += "sinner " + " ".join(repr(float(v)) for v in self.sinner) + "\n"
            text += "dinner " + " ".join(repr(float(v)) for v in self.dinner) + "\n"
        return text

    def exported_beta0(self, theta: np.ndarray) -> np.ndarray:
        """(n_elements,) the ``.snapcoeff`` β0 of θ: its constant columns (0 without them) minus
        the energy shift, so that ``pair_style snap`` gives θ·row + reference."""
        nb = self.n_block
        b0 = theta[::nb][: len(self.elements)].copy() if self.beta0_columns else np.zeros(len(self.elements))
        return b0 - np.asarray(self.energy_shift or np.zeros(len(self.elements)), dtype=float)

    # -- provenance --------------------------------------------------------------------
    def to_attrs(self) -> dict[str, Any]:
        d = asdict(self)
        d["masses"] = list(self.atom_masses())
        for k, default in KEYWORD_DEFAULTS.items():
            if d[k] == default:
                del d[k]
        return json.loads(json.dumps(d))

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> SnapSettings:
        d = dict(attrs)
        for k in (
            "elements",
            "radii",
            "element_weights",
            "reference_coeffs",
            "masses",
            "sinner",
            "dinner",
            "energy_shift",
        ):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)

    def key(self) -> str:
        return json.dumps(self.to_attrs(), sort_keys=True)

    # -- popsdask descriptors --descriptor snap ----------------------------------------------
    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        """The SNAP options of ``popsdask descriptors``."""
        group.add_argument("--twojmax", type=number(0, kind=int), default=6, help="SNAP 2J_max (band limit)")
        group.add_argument("--rcutfac", type=number(0), default=4.73442, help="SNAP cutoff factor (Angstrom)")
        group.add_argument("--rfac0", type=number(0, 1), default=0.99363, help="SNAP rfac0")
        group.add_argument("--rmin0", type=number(0), default=0.0, help="SNAP rmin0 (Angstrom)")
        for flag, what in (
            ("bzeroflag", "subtract the isolated atom's bispectrum (the beta0 columns stay)"),
            ("chemflag", "explicit multi-element SNAP: n_elements^3 blocks per element (linear only)"),
            ("bnormflag", "normalised bispectrum (LAMMPS bnormflag)"),
            ("wselfallflag", "self-weight for every element (LAMMPS wselfallflag)"),
        ):
            group.add_argument(f"--{flag}", action="store_true", help=f"SNAP {flag}: {what}; default: off")
        for flag, metavar, what in (
            (
                "--sinner",
                "R",
                "inner switching function (switchinnerflag) centre per element (Angstrom); needs --dinner",
            ),
            ("--dinner", "D", "inner switching function half-width per element (Angstrom); needs --sinner"),
            ("--radii", "R", "radius per element; default: 0.5 each"),
            (
                "--element-weights",
                "W",
                "neighbour weight per element (the .snapcoeff's second number); default: 1 each",
            ),
        ):
            group.add_argument(flag, nargs="+", type=number(0), default=None, metavar=metavar, help=f"SNAP {what}")
        group.add_argument(
            "--zbl",
            nargs=2,
            type=number(0),
            default=None,
            metavar=("INNER", "OUTER"),
            help="subtract a ZBL reference pair part (every element pair, nuclear charges from the symbols) "
            "switched off between INNER and OUTER (Angstrom), e.g. 4.0 4.8 as the W and W-Be SNAPs; default: none",
        )
        quad = group.add_mutually_exclusive_group()
        quad.add_argument(
            "--quadratic",
            dest="quadratic",
            action="store_true",
            default=True,
            help="quadratic SNAP (qSNAP) columns; the default",
        )
        quad.add_argument("--linear", dest="quadratic", action="store_false", help="linear SNAP columns only")

    @classmethod
    def settings_from_args(cls, args: argparse.Namespace, elements: Sequence[str] | None) -> SnapSettings | None:
        """Settings of the SNAP options over ``elements`` (None: not known before the read)."""
        if (args.sinner is None) != (args.dinner is None):
            raise InputError("--sinner and --dinner: give both (the inner switching function) or neither")
        if elements is None:
            return None
        elements = tuple(elements)
        per_element = (("--radii", args.radii), ("--element-weights", args.element_weights))
        for flag, values in (*per_element, ("--sinner", args.sinner), ("--dinner", args.dinner)):
            if values is not None and len(values) != len(elements):
                raise InputError(f"{flag}: {len(values)} values for the {len(elements)} elements {list(elements)}")
        return cls(
            elements=elements,
            radii=tuple(args.radii or [0.5] * len(elements)),
            element_weights=tuple(args.element_weights or [1.0] * len(elements)),
            twojmax=args.twojmax,
            rcutfac=args.rcutfac,
            rfac0=args.rfac0,
            rmin0=args.rmin0,
            quadratic=args.quadratic,
            bzeroflag=args.bzeroflag,
            chemflag=args.chemflag,
            bnormflag=args.bnormflag,
            wselfallflag=args.wselfallflag,
            switchinnerflag=args.sinner is not None,
            sinner=tuple(args.sinner or ()),
            dinner=tuple(args.dinner or ()),
            **(zbl_reference(elements, *args.zbl) if args.zbl else {}),
        )

    # -- the descriptor protocol (popsdask.atomistic.descriptors.base) -------------------------
    def rows(
        self,
        cfg: Configuration,
        *,
        virial: bool = False,
        config_index: int = 0,
        session: LammpsSession | None = None,
    ) -> RowBlock:
        """:func:`snap_rows` of ``cfg``."""
        return snap_rows(cfg, self, virial=virial, config_index=config_index, session=session)

    def atom_rows(self, cfg: Configuration, *, config_index: int = 0, session: LammpsSession | None = None) -> RowBlock:
        """:func:`snap_atom_rows` of ``cfg``."""
        return snap_atom_rows(cfg, self, config_index=config_index, session=session)

    def atom_computes(self) -> dict[str, str]:
        """{compute ID: command} of the per-atom LAMMPS computes :meth:`atom_design` reads: the
        linear bispectrum (``compute sna/atom``); :meth:`atom_design` forms the quadratic columns,
        which LAMMPS would write as k(k+1)/2 more columns to copy out per atom."""
        return {"popsdask_sna": replace(self, quadratic=False).compute_command("popsdask_sna", style="sna/atom")}

    def atom_design(self, cfg: Configuration, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """(N, n_features) per-atom energy rows of ``cfg`` from the arrays of
        :meth:`atom_computes` (``compute sna/atom``, linear): atom i's bispectrum in its element's
        block, with the quadratic terms as LAMMPS forms them (``quadraticflag``: ½B_k², B_kB_l for
        l > k, bit for bit), its β0 column 1; they sum to the energy row of :func:`snap_rows`."""
        B = arrays["popsdask_sna"]
        k = self.n_linear * (len(self.elements) ** 3 if self.chemflag else 1)
        if B.shape != (cfg.n_atoms, k):
            raise RuntimeError(f"{cfg.where()}: compute sna/atom gave shape {B.shape}, expected {(cfg.n_atoms, k)}")
        types = cfg.type_indices(self.elements)
        nb, c0 = self.n_block, int(self.beta0_columns)
        if len(self.elements) == 1:  # written in place
            X = np.empty((cfg.n_atoms, self.n_features))
            X[:, 0] = 1.0  # β0 column when present, else overwritten
            _bispectrum_columns(B, X[:, c0:], self.quadratic)
            return X
        X = np.zeros((cfg.n_atoms, self.n_features))
        for t in range(len(self.elements)):
            mine = types == t + 1
            block = np.empty((int(mine.sum()), nb))
            if c0:  # the β0 column is this element's atom count: 1 per atom
                block[:, 0] = 1.0
            _bispectrum_columns(B[mine], block[:, c0:], self.quadratic)
            X[mine, t * nb : (t + 1) * nb] = block
        return X

    def store_attrs(self) -> dict[str, Any]:
        """Store attributes: ``descriptor`` (backend and settings), ``snap`` (the same settings,
        as stores before the protocol recorded them) and what the columns and rows mean."""
        settings = self.to_attrs()
        return {
            "descriptor": {
                "backend": self.backend,
                "name": f"{self.model} (LAMMPS compute snap)",
                "settings": settings,
            },
            "snap": settings,
            "feature_names": self.feature_names(),
            "columns": "per element: [atom count (beta0), linear B, quadratic terms with 1/2 on the "
            "diagonal] in .snapcoeff order"
            + ("" if self.beta0_columns else " (no beta0 column: FitSNAP's bzeroflag layout, beta0 = 0)"),
            "energy_rows": "sum over atoms; y = total energy - reference pair energy (eV)",
            "force_rows": "theta . row = force (eV/A); y = force - reference pair force",
            "virial_rows": "Voigt xx,yy,zz,yz,xz,xy; theta . row = virial W = -stress*volume (eV)",
            "reference_pair": self.reference_style or "none",
            "reference_coeffs": list(self.reference_coeffs),
        }

    def potential_paths(self, prefix: str | os.PathLike) -> dict[str, Path]:
        prefix = Path(prefix)
        return {k: prefix.with_name(f"{prefix.name}.{k}") for k in ("snapcoeff", "snapparam", "mod")}

    def write_potential(self, theta: Any, prefix: str | os.PathLike, *, comment: str = "") -> dict[str, Path]:
        """:func:`write_snap_potential` of θ."""
        return write_snap_potential(theta, self, prefix, comment=comment)

    def pair_commands(self, paths: Any) -> list[str]:
        """``pair_style snap`` (plus the reference) of the files ``paths``."""
        return pair_commands_for(self, paths["snapcoeff"], paths["snapparam"])

    def calculator(
        self, theta: Any, directory: str | os.PathLike | None = None, *, label: str = "qsnap"
    ) -> LammpsCalculator:
        """:func:`snap_calculator` of θ."""
        return snap_calculator(theta, self, directory, label=label)


def raw_compute_snap(
    cfg: Configuration, settings: SnapSettings, session: LammpsSession | None = None
) -> tuple[np.ndarray, Any]:
    """LAMMPS's own ``compute snap`` array of ``cfg`` (LAMMPS frame) and the box used."""
    sess = session or get_session()
    box = lammps_box(cfg.cell, cfg.pbc, cfg.positions, where=cfg.where())
    with sess.lock:
        sess.setup(
            box, cfg.type_indices(settings.elements), settings.atom_masses(), settings.descriptor_pair_commands()
        )
        sess.lmp.command(settings.compute_command("snap"))
        sess.lmp.command("run 0")
        A = sess.global_array("snap")
        sess.lmp.command("uncompute snap")
    n = cfg.n_atoms
    expected = (1 + 3 * n + 6, len(settings.elements) * settings.n_descriptors + 1)
    if A.shape != expected:
        raise RuntimeError(f"{cfg.where()}: compute snap gave shape {A.shape}, expected {expected}")
    return A, box


def snap_rows(
    cfg: Configuration,
    settings: SnapSettings,
    *,
    virial: bool = False,
    config_index: int = 0,
    session: LammpsSession | None = None,
) -> RowBlock:
    """Design rows, targets and reference contributions of one configuration.

    Parameters
    ----------
    cfg : labelled configuration (energy and forces required; stress when ``virial``)
    settings : descriptor settings
    virial : also return the 6 virial rows (the configuration must have a stress)
    config_index : value of the ``config`` coordinate of these rows

    Returns
    -------
    RowBlock with ``y`` = reference label minus the reference pair contribution.
    """
    if cfg.energy is None or cfg.forces is None:
        raise InputError(f"{cfg.where()}: energy and forces are needed to build rows")
    if virial and cfg.stress is None:
        raise InputError(f"{cfg.where()}: virial rows requested but the configuration has no stress")
    A, box = raw_compute_snap(cfg, settings, session)
    n = cfg.n_atoms
    nd = settings.n_descriptors
    types = cfg.type_indices(settings.elements)
    ne = len(settings.elements)
    B = A[:, :-1]
    ref = A[:, -1].copy()
    # columns: per element [count, block], or [block] without β0 columns
    X = np.zeros((A.shape[0], settings.n_features))
    nb, c0 = settings.n_block, int(settings.beta0_columns)
    counts = np.array([np.count_nonzero(types == t + 1) for t in range(ne)])
    for t in range(ne):
        if c0:
            X[0, t * nb] = counts[t]
        X[:, t * nb + c0 : (t + 1) * nb] = B[:, t * nd : (t + 1) * nd]
    if settings.energy_shift:
        ref[0] -= float(np.dot(counts, settings.energy_shift))
    # force rows back to the original frame
    Xf = X[1 : 1 + 3 * n].reshape(n, 3, -1)
    X[1 : 1 + 3 * n] = np.einsum("iap,ab->ibp", Xf, box.rotation).reshape(3 * n, -1)
    ref[1 : 1 + 3 * n] = box.forces_back(ref[1 : 1 + 3 * n].reshape(n, 3)).ravel()
    # virial rows: eV for the descriptor columns, bar for the reference column
    ref[-6:] = ref[-6:] * box.volume / NKTV2P
    X[-6:] = box.tensor_back(X[-6:])
    ref[-6:] = box.tensor_back(ref[-6:])
    targets = np.concatenate(
        [
            [cfg.energy],
            np.asarray(cfg.forces, dtype=float).ravel(),
            -np.asarray(cfg.stress) * cfg.volume if cfg.stress is not None else np.zeros(6),
        ]
    )
    kind = np.concatenate([[0], np.ones(3 * n, dtype=np.int8), np.full(6, 2)]).astype(np.int8)
    atom = np.concatenate([[-1], np.repeat(np.arange(n), 3), np.full(6, -1)]).astype(np.int32)
    comp = np.concatenate([[-1], np.tile(np.arange(3), n), np.arange(6)]).astype(np.int8)
    keep = slice(None) if virial else slice(0, 1 + 3 * n)
    m = X[keep].shape[0]
    return RowBlock(
        X=X[keep],
        y=(targets - ref)[keep],
        reference=ref[keep],
        kind=kind[keep],
        atom=atom[keep],
        component=comp[keep],
        config=np.full(m, config_index, dtype=np.int64),
    )


def _bispectrum_columns(B: np.ndarray, out: np.ndarray, quadratic: bool) -> None:
    """Write a descriptor block of linear bispectra ``B`` (n, k) into ``out`` (n, k [+ k(k+1)/2]):
    B, then with ``quadratic`` LAMMPS's quadratic terms in its order, ½B_k² and B_kB_l for l > k
    (½ is exact, so ½(B_k·B_k) equals LAMMPS's (½B_k)·B_k)."""
    k = B.shape[1]
    out[:, :k] = B
    if not quadratic:
        return
    at = k
    for i in range(k):
        np.multiply(B[:, i : i + 1], B[:, i:], out=out[:, at : at + k - i])
        out[:, at] *= 0.5
        at += k - i


def snap_atom_rows(
    cfg: Configuration, settings: SnapSettings, *, config_index: int = 0, session: LammpsSession | None = None
) -> RowBlock:
    """Per-atom energy rows of ``cfg`` (:meth:`SnapSettings.atom_design`) and each atom's
    reference energy (``compute pe/atom`` of the reference pair style, minus its element's
    ``energy_shift``): they sum to the energy row and reference of :func:`snap_rows`."""
    sess = session or get_session()
    box = lammps_box(cfg.cell, cfg.pbc, cfg.positions, where=cfg.where())
    computes = settings.atom_computes()
    with sess.lock:
        sess.setup(
            box, cfg.type_indices(settings.elements), settings.atom_masses(), settings.descriptor_pair_commands()
        )
        for command in computes.values():
            sess.lmp.command(command)
        sess.lmp.command("compute popsdask_ref all pe/atom pair")  # the reference pair's (zero: none)
        sess.lmp.command("run 0")
        arrays = {cid: sess.atom_compute(cid) for cid in computes}
        ref = sess.atom_compute("popsdask_ref", columns=False)
    if settings.energy_shift:
        ref -= np.asarray(settings.energy_shift)[cfg.type_indices(settings.elements) - 1]
    return RowBlock.atom_energies(settings.atom_design(cfg, arrays), ref, config_index)


# -- potentials out: θ as .snapcoeff/.snapparam files, their pair commands, an ASE calculator ---------
def write_snap_potential(
    theta: Any, settings: SnapSettings, prefix: str | os.PathLike, *, comment: str = ""
) -> dict[str, Path]:
    """Write θ as ``<prefix>.snapcoeff``, ``<prefix>.snapparam`` and ``<prefix>.mod``.

    Parameters
    ----------
    theta : (n_features,) coefficients over the store's columns (per element: β0, linear,
        quadratic terms, i.e. the ``.snapcoeff`` order; β0 is 0 without ``beta0_columns``, and
        minus the settings' ``energy_shift``)
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
    nb, c0, nd = settings.n_block, int(settings.beta0_columns), settings.n_descriptors
    beta0 = settings.exported_beta0(theta)
    lines = [f"# popsdask {settings.model} coefficients {comment}".rstrip(), f"{len(settings.elements)} {1 + nd}"]
    for t, el in enumerate(settings.elements):
        lines.append(f"{el} {settings.radii[t]!r} {settings.element_weights[t]!r}")
        lines += [f"{v:.17g}" for v in (beta0[t], *theta[t * nb + c0 : (t + 1) * nb])]
    paths = {
        "snapcoeff": prefix.with_name(prefix.name + ".snapcoeff"),
        "snapparam": prefix.with_name(prefix.name + ".snapparam"),
        "mod": prefix.with_name(prefix.name + ".mod"),
    }
    paths["snapcoeff"].write_text("\n".join(lines) + "\n")
    paths["snapparam"].write_text(settings.snapparam_text())
    cmds = lammps_text.commands(pair_commands_for(settings, paths["snapcoeff"], paths["snapparam"]))
    paths["mod"].write_text("# LAMMPS pair style of this potential (metal units)\n" + "\n".join(cmds) + "\n")
    return paths


def pair_commands_for(settings: SnapSettings, snapcoeff: str | os.PathLike, snapparam: str | os.PathLike) -> list[str]:
    """LAMMPS ``pair_style``/``pair_coeff`` commands for SNAP files plus the reference pair."""
    els = " ".join(settings.elements)
    files = f"{lammps_text.path(snapcoeff)} {lammps_text.path(snapparam)}"
    if not settings.reference_style:
        return ["pair_style snap", f"pair_coeff * * {files} {els}"]
    style, coeffs = settings.reference_commands()
    return [
        f"pair_style hybrid/overlay {style} snap",
        *coeffs,
        f"pair_coeff * * snap {files} {els}",
    ]


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
    from ..calculator import LammpsCalculator  # ASE: loaded when a potential is run, not with the rows

    d = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="popsdask-snap-"))
    paths = write_snap_potential(theta, settings, d / label)
    return LammpsCalculator(
        pair_commands_for(settings, paths["snapcoeff"], paths["snapparam"]),
        settings.elements,
        settings.atom_masses(),
        label=label,
    )


register_backend(SnapSettings.backend, SnapSettings)
