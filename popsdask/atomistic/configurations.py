"""Atomic configurations in: extended XYZ (through ASE) and FitSNAP-style JSON.

A :class:`Configuration` is a small picklable record (cheap to ship to Dask workers) with the
reference energy (eV), forces (eV/Å) and, where present, stress (ASE sign and Voigt order
xx, yy, zz, yz, xz, xy, in eV/Å^3), plus metadata: name, group, source file, cell, pbc.

Bad input policy: :func:`read_configurations` reads every file it is given; a file that cannot
be read, or a configuration that fails :func:`validate_configuration` (missing energy or forces,
wrong shapes, non-finite values, atoms outside the cell along a non-periodic axis, an element
not in ``elements``), is **skipped and reported** in ``ReadResult.errors`` with the file and
configuration named; the others are kept. Pass ``on_error="raise"`` to stop at the first one
instead. Either way nothing has been written yet: stores are built only from validated input.
"""

from __future__ import annotations

import io
import json
import lzma
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.validation import InputError
from .lammps_backend import MAX_NEIGHBOR_BINS, NKTV2P, lammps_box, neighbor_bins

__all__ = [
    "MIN_ATOM_DISTANCE",
    "Configuration",
    "ReadResult",
    "check_neighbor_bins",
    "closest_pair",
    "expand_paths",
    "read_configurations",
    "read_extxyz",
    "read_fitsnap_json",
    "validate_configuration",
]

#: atoms closer than this (Å) overlap: a configuration holding them is refused
MIN_ATOM_DISTANCE = 0.1


@dataclass
class Configuration:
    """One labelled atomic configuration.

    Attributes
    ----------
    name : unique name (``<source>:<index>`` by default)
    symbols : chemical symbols, one per atom
    positions : (N, 3) Å
    cell : (3, 3) Å, cell vectors as rows
    pbc : (3,) periodicity
    energy : total reference energy (eV) or None
    forces : (N, 3) eV/Å or None
    stress : (6,) eV/Å^3, ASE sign (positive = tensile) and Voigt order, or None
    group : training group (e.g. FitSNAP's directory name)
    source : file it came from
    """

    name: str
    symbols: list[str]
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    group: str = ""
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_atoms(self) -> int:
        return len(self.symbols)

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.cell)))

    def where(self) -> str:
        """Human-readable location for error messages."""
        src = f"{self.source}: " if self.source else ""
        return f"{src}configuration {self.name!r}"

    def type_indices(self, elements: Sequence[str]) -> np.ndarray:
        """LAMMPS atom types (1-based positions in ``elements``) of the atoms; an element the
        descriptors do not cover is one line naming it and the configuration."""
        index = {e: i + 1 for i, e in enumerate(elements)}
        try:
            return np.array([index[s] for s in self.symbols], dtype=int)
        except KeyError as err:
            raise InputError(
                f"{self.where()}: unknown element {err.args[0]!r}; the descriptors cover {list(elements)}"
            ) from None

    @classmethod
    def from_atoms(
        cls,
        atoms: Any,
        *,
        name: str,
        source: str = "",
        group: str = "",
        energy_key: str | None = None,
        forces_key: str | None = None,
    ) -> Configuration:
        """Build from an ASE ``Atoms``: labels from its calculator, or, with ``energy_key`` /
        ``forces_key``, from ``atoms.info[energy_key]`` / ``atoms.arrays[forces_key]`` (extxyz
        columns such as ``dft_energy`` that ASE does not treat as calculator results)."""
        energy = forces = stress = None
        calc = atoms.calc
        results = getattr(calc, "results", {}) if calc is not None else {}
        ekey, fkey = energy_key or "energy", forces_key or "forces"
        if ekey in atoms.info and energy_key:
            energy = float(atoms.info[ekey])
        elif ekey in results:
            energy = float(results[ekey])
        if fkey in atoms.arrays and forces_key:
            forces = np.array(atoms.arrays[fkey], dtype=float)
        elif fkey in results:
            forces = np.array(results[fkey], dtype=float)
        if "stress" in results:
            s = np.asarray(results["stress"], dtype=float)
            stress = s if s.shape == (6,) else np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
        info = {k: v for k, v in atoms.info.items() if isinstance(v, (str, int, float, bool))}
        info.update({k: v for k, v in (("energy_key", energy_key), ("forces_key", forces_key)) if v})
        return cls(
            name=str(atoms.info.get("name", name)),
            symbols=list(atoms.get_chemical_symbols()),
            positions=np.array(atoms.positions, dtype=float),
            cell=np.array(atoms.cell[:], dtype=float),
            pbc=np.array(atoms.pbc, dtype=bool),
            energy=energy,
            forces=forces,
            stress=stress,
            group=str(atoms.info.get("group", group)),
            source=source,
            info=info,
        )

    def to_atoms(self, with_labels: bool = True) -> Any:
        """ASE ``Atoms`` with a single-point calculator holding the labels."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        atoms = Atoms(self.symbols, positions=self.positions, cell=self.cell, pbc=self.pbc)
        # no empty strings: ASE's extxyz writer leaves them unquoted, and its reader then takes the
        # next key (name=..., pbc=...) as their value
        info = {**self.info, "name": self.name, "group": self.group}
        atoms.info.update({k: v for k, v in info.items() if not (isinstance(v, str) and not v)})
        if with_labels and self.energy is not None:
            res: dict[str, Any] = {"energy": self.energy}
            if self.forces is not None:
                res["forces"] = self.forces
            if self.stress is not None:
                res["stress"] = self.stress
            atoms.calc = SinglePointCalculator(atoms, **res)
        return atoms


@dataclass
class ReadResult:
    """Configurations read, and what was skipped (file, configuration, reason)."""

    configurations: list[Configuration]
    errors: list[str]

    def summary(self) -> str:
        return f"{len(self.configurations)} configurations read, {len(self.errors)} skipped"

    def skip_unfit(self, cutoff: float) -> None:
        """Move the configurations whose cell LAMMPS cannot bin at ``cutoff`` (known once the
        descriptors are) to :attr:`errors` (:func:`check_neighbor_bins`)."""
        kept = []
        for cfg in self.configurations:
            try:
                check_neighbor_bins(cfg, cutoff)
            except InputError as err:
                self.errors.append(str(err))
                continue
            kept.append(cfg)
        self.configurations = kept


def closest_pair(
    cell: np.ndarray, pbc: Sequence[bool] | np.ndarray, positions: np.ndarray, r: float
) -> tuple[int, int, float] | None:
    """Two atoms (or an atom and a periodic image of one) closer than ``r`` Å, or None.

    Minimum-image distances in fractional coordinates, exact while ``r`` is below half of every
    periodic height of the cell; ASE's neighbour list otherwise, and for more than 1000 atoms.
    """
    cell, pos = np.asarray(cell, dtype=float), np.asarray(positions, dtype=float)
    per = np.asarray(pbc, dtype=bool)
    heights = abs(np.linalg.det(cell)) / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    if len(pos) > 1000 or np.any(heights[per] < 2 * r):
        from ase.neighborlist import primitive_neighbor_list

        i, j, d = primitive_neighbor_list("ijd", per, cell, pos, r, self_interaction=False)
        return (int(i[0]), int(j[0]), float(d[0])) if d.size else None
    frac = np.linalg.solve(cell.T, pos.T).T
    i, j = np.triu_indices(len(pos), 1)
    delta = frac[i] - frac[j]
    delta[:, per] -= np.round(delta[:, per])
    dist = np.linalg.norm(delta @ cell, axis=1)
    hit = np.flatnonzero(dist < r)
    return (int(i[hit[0]]), int(j[hit[0]]), float(dist[hit[0]])) if hit.size else None


def check_neighbor_bins(cfg: Configuration, cutoff: float) -> None:
    """Refuse a cell too large for LAMMPS's neighbour bins at ``cutoff`` (e.g. two atoms in a
    periodic 10⁴ Å cell: "Too many neighbor bins" would end the whole build)."""
    bins = neighbor_bins(lammps_box(cfg.cell, cfg.pbc, cfg.positions, where=cfg.where()), cutoff)
    if bins > MAX_NEIGHBOR_BINS:
        lengths = ", ".join(f"{v:.4g}" for v in np.linalg.norm(np.asarray(cfg.cell, dtype=float), axis=1))
        raise InputError(
            f"{cfg.where()}: its cell ({lengths} Å) needs {bins:.2g} LAMMPS neighbour bins at a {cutoff:.3g} Å "
            f"cutoff (at most {MAX_NEIGHBOR_BINS:.0e}); remove the vacuum"
        )


def validate_configuration(
    cfg: Configuration,
    *,
    elements: Sequence[str] | None = None,
    require_energy: bool = True,
    require_forces: bool = True,
    cutoff: float | None = None,
) -> None:
    """Raise :class:`InputError` naming the file and configuration when it is unusable: missing
    or non-finite labels, unknown elements, a degenerate cell, atoms closer than
    :data:`MIN_ATOM_DISTANCE`, and, given the descriptors' ``cutoff``, a cell too large for
    LAMMPS (:func:`check_neighbor_bins`)."""
    where = cfg.where()
    n = len(cfg.symbols)
    if n == 0:
        raise InputError(f"{where}: no atoms")
    pos = np.asarray(cfg.positions)
    if pos.shape != (n, 3) or not np.all(np.isfinite(pos)):
        raise InputError(f"{where}: positions have shape {pos.shape} (expected ({n}, 3)) or non-finite values")
    if elements is not None:
        unknown = sorted(set(cfg.symbols) - set(elements))
        if unknown:
            raise InputError(f"{where}: unknown element(s) {unknown}; the descriptors cover {list(elements)}")
    if require_energy and (cfg.energy is None or not np.isfinite(cfg.energy)):
        key = cfg.info.get("energy_key")
        raise InputError(f"{where}: missing or non-finite energy" + (f" (key {key!r})" if key else ""))
    if require_forces:
        if cfg.forces is None:
            key = cfg.info.get("forces_key")
            raise InputError(f"{where}: missing forces" + (f" (key {key!r})" if key else ""))
        f = np.asarray(cfg.forces)
        if f.shape != (n, 3):
            raise InputError(f"{where}: forces have shape {f.shape}, expected ({n}, 3)")
        if not np.all(np.isfinite(f)):
            raise InputError(f"{where}: non-finite forces")
    if cfg.stress is not None and (np.shape(cfg.stress) != (6,) or not np.all(np.isfinite(cfg.stress))):
        raise InputError(f"{where}: stress has shape {np.shape(cfg.stress)} (expected (6,)) or non-finite values")
    lammps_box(cfg.cell, cfg.pbc, pos, where=where)  # degenerate cell, atoms outside a free axis
    pair = closest_pair(cfg.cell, cfg.pbc, pos, MIN_ATOM_DISTANCE)
    if pair is not None:
        i, j, d = pair
        who = f"atom {i} and a periodic image of itself" if i == j else f"atoms {i} and {j}"
        raise InputError(f"{where}: {who} are {d:.3g} Å apart (overlapping: under {MIN_ATOM_DISTANCE} Å)")
    if cutoff is not None:
        check_neighbor_bins(cfg, cutoff)


def _open_text(path: Path) -> io.StringIO:
    # ASE seeks inside compressed files, which is quadratic for .xz; decompress in memory once.
    if path.suffix == ".xz":
        with lzma.open(path, "rt") as fh:
            return io.StringIO(fh.read())
    if path.suffix == ".gz":
        import gzip

        with gzip.open(path, "rt") as fh:
            return io.StringIO(fh.read())
    return io.StringIO(path.read_text())


#: pressure units of FitSNAP's ``StressStyle`` -> bar
STRESS_UNITS = {"bar": 1.0, "kbar": 1.0e3, "kb": 1.0e3, "gpa": 1.0e4}


def _pressure_to_ase(s: np.ndarray, style: str, where: str) -> np.ndarray:
    """3x3 pressure tensor (LAMMPS sign) in ``style`` units -> ASE Voigt stress in eV/Å^3."""
    if style.lower() not in STRESS_UNITS:
        raise InputError(f"{where}: stress units {style!r} not supported ({list(STRESS_UNITS)})")
    s = np.asarray(s, dtype=float).reshape(3, 3) * STRESS_UNITS[style.lower()]
    return -np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]]) / NKTV2P


def _json_stress(atoms: Any, stress_style: str | None, where: str) -> np.ndarray | None:
    """Stress from the FitSNAP 3x3 entry kept in ``info`` (pressure sign)."""
    s = atoms.info.get("virial_or_stress_json")
    if s is None or not np.any(np.asarray(s, dtype=float)):
        return None
    style = stress_style or str(atoms.info.get("stress_style", "bar"))
    return _pressure_to_ase(s, style, where)


def read_extxyz(
    path: str | os.PathLike,
    *,
    index: str | slice = ":",
    stress_style: str | None = None,
    energy_key: str | None = None,
    forces_key: str | None = None,
    format: str | None = "extxyz",
) -> list[Configuration]:
    """Read an (optionally .xz/.gz compressed) extended XYZ file with ASE.

    Energies, forces and stress come from the file's properties (ASE's single-point
    calculator). A FitSNAP-converted file's ``virial_or_stress_json`` (pressure sign, in its
    ``stress_style`` units, or ``stress_style`` when given: bar, kbar, GPa) is used for the
    stress when the file has no ``stress`` of its own. Note: the tungsten set in
    ``shared/data`` declares "bar", but −dE/dV along its EOS_Data curves matches its values
    read as **kbar** (ratio ≈ 1000), so pass ``stress_style="kbar"`` for virial rows from it.
    ``energy_key``/``forces_key`` name other label columns (e.g. ``dft_energy``). With
    ``format=None`` ASE guesses the format from the file (any file ASE reads).
    """
    import ase.io

    p = Path(path)
    try:
        if format == "extxyz":
            frames = ase.io.read(_open_text(p), index=index, format="extxyz")
        else:
            frames = ase.io.read(p, index=index, format=format)
    except Exception as err:  # ASE raises many types for malformed files
        what = "extended XYZ" if format == "extxyz" else "file for ASE"
        raise InputError(f"{p}: unreadable {what} ({type(err).__name__}: {err})") from err
    if not isinstance(frames, list):
        frames = [frames]
    out = []
    sl = _as_slice(index)
    start, step = (sl.start or 0, sl.step or 1) if sl is not None else (0, 1)
    for i, atoms in enumerate(frames):
        cfg = Configuration.from_atoms(
            atoms,
            name=f"{p.name}:{start + i * step}",  # the frame's index in the file
            source=str(p),
            energy_key=energy_key,
            forces_key=forces_key,
        )
        if cfg.stress is None:
            cfg.stress = _json_stress(atoms, stress_style, cfg.where())
        out.append(cfg)
    return out


def _as_slice(index: str | slice | int) -> slice | None:
    """``index`` as a slice (ASE's ``"start:stop:step"`` strings too); None for a single int."""
    if isinstance(index, slice):
        return index
    if isinstance(index, str):
        from ase.io.formats import string2index

        index = string2index(index)
        return index if isinstance(index, slice) else None
    return None


_JSON_UNITS = {
    "PositionsStyle": "angstrom",
    "LatticeStyle": "angstrom",
    "EnergyStyle": "electronvolt",
    "ForcesStyle": "electronvoltperangstrom",
    "AtomTypeStyle": "chemicalsymbol",
}


def read_fitsnap_json(
    path: str | os.PathLike,
    *,
    stress_style: str | None = None,
    energy_key: str | None = None,
    forces_key: str | None = None,
    index: str | slice = ":",
) -> list[Configuration]:
    """Read one FitSNAP JSON training file (``{"Dataset": {"Data": [...], ...styles}}``).

    A leading comment line (FitSNAP's files start with ``# ...``) is ignored. Stress is read
    from ``Stress`` (3x3, LAMMPS pressure sign, in ``StressStyle`` units or ``stress_style``
    when given) and converted to ASE's convention; unknown units are refused naming the file.
    ``energy_key``/``forces_key`` replace the entries ``Energy``/``Forces``; ``index`` (a slice
    or ``"start:stop:step"``) selects configurations.
    """
    ekey, fkey = energy_key or "Energy", forces_key or "Forces"
    p = Path(path)
    try:
        text = p.read_text()
        if text.lstrip().startswith("#"):
            text = text.split("\n", 1)[1] if "\n" in text else ""
        doc = json.loads(text)
        ds = doc["Dataset"]
        data = ds["Data"]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise InputError(f"{p}: not a FitSNAP JSON file ({type(err).__name__}: {err})") from err
    for key, unit in _JSON_UNITS.items():
        if key in ds and str(ds[key]).lower() != unit:
            raise InputError(f"{p}: {key} {ds[key]!r} is not supported (expected {unit!r})")
    stress_style = stress_style or str(ds.get("StressStyle", "bar"))
    group = p.parent.name
    out = []
    sl = _as_slice(index) or slice(None)
    for i in range(len(data))[sl]:
        d = data[i]
        name = f"{p.name}:{i}"
        try:
            symbols = [sys.intern(str(s)) for s in d["AtomTypes"]]  # one object per element, not per atom
            pos = np.asarray(d["Positions"], dtype=float)
            cell = np.asarray(d["Lattice"], dtype=float)
            energy = float(d[ekey]) if d.get(ekey) is not None else None
            forces = np.asarray(d[fkey], dtype=float) if d.get(fkey) is not None else None
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"{p}: configuration {name!r}: missing or malformed {err}") from err
        if "NumAtoms" in d and int(d["NumAtoms"]) != len(symbols):
            raise InputError(f"{p}: configuration {name!r}: NumAtoms {d['NumAtoms']} but {len(symbols)} AtomTypes")
        stress = None
        if d.get("Stress") is not None:
            s = np.asarray(d["Stress"], dtype=float)
            if s.size != 9:
                raise InputError(f"{p}: configuration {name!r}: Stress has shape {s.shape}")
            if np.any(s):
                stress = _pressure_to_ase(s, stress_style, f"{p}: configuration {name!r}")
        out.append(
            Configuration(
                name=name,
                symbols=symbols,
                positions=pos,
                cell=cell,
                pbc=np.array([True, True, True]),
                energy=energy,
                forces=forces,
                stress=stress,
                group=group,
                source=str(p),
                info={k: v for k, v in (("energy_key", energy_key), ("forces_key", forces_key)) if v},
            )
        )
    return out


#: suffixes a directory contributes (other ASE formats are read when named explicitly)
DIRECTORY_SUFFIXES = (".json", ".xyz", ".extxyz", ".xz", ".gz", ".traj")


def _read_one(path: Path, stress_style: str | None, keys: dict[str, Any]) -> list[Configuration]:
    name = path.name.lower()
    if name.endswith(".json"):
        return read_fitsnap_json(path, stress_style=stress_style, **keys)
    if any(name.endswith(s) for s in (".xyz", ".extxyz", ".xyz.xz", ".extxyz.xz", ".xyz.gz", ".extxyz.gz")):
        return read_extxyz(path, stress_style=stress_style, **keys)
    return read_extxyz(path, stress_style=stress_style, format=None, **keys)  # any format ASE knows


def expand_paths(paths: Iterable[str | os.PathLike], suffixes: Sequence[str] = DIRECTORY_SUFFIXES) -> list[Path]:
    """Files of ``paths``: files as given, directories searched recursively for ``suffixes``
    (default :data:`DIRECTORY_SUFFIXES`), glob patterns (``*``, ``?``, ``[``, ``**``) expanded, sorted.

    Raises :class:`InputError` naming a path that does not exist or a pattern that matches nothing.
    """
    import glob

    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists() and any(c in str(raw) for c in "*?["):
            matches = sorted(glob.glob(str(raw), recursive=True))
            if not matches:
                raise InputError(f"{raw}: no file matches this pattern")
            files += expand_paths(matches, suffixes)
        elif p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in suffixes)
            if not found:
                raise InputError(f"{p}: directory holds no {'/'.join(suffixes)} files")
            files += found
        elif p.exists():
            files.append(p)
        else:
            raise InputError(f"{p}: no such file or directory")
    return files


def read_configurations(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    elements: Sequence[str] | None = None,
    require_forces: bool = True,
    on_error: str = "skip",
    stress_style: str | None = None,
    energy_key: str | None = None,
    forces_key: str | None = None,
    index: str | slice = ":",
) -> ReadResult:
    """Read and validate configurations from files, directories (searched recursively) or glob
    patterns.

    Parameters
    ----------
    paths : a path or several; directories contribute their ``*.json``/``*.xyz``/``*.extxyz``
        (optionally compressed) and ``*.traj``; any other file is read by ASE (format guessed)
    elements : allowed chemical symbols (None: anything)
    require_forces : refuse configurations without forces
    on_error : ``"skip"`` (default: skip the bad file or configuration and report it in
        ``errors``) or ``"raise"`` (raise :class:`InputError` at the first problem)
    stress_style : override the files' declared stress units (bar, kbar, GPa)
    energy_key, forces_key : label names other than the defaults (extxyz ``energy``/``forces``,
        FitSNAP JSON ``Energy``/``Forces``)
    index : configurations to take from each file, a slice or ASE's ``"start:stop:step"``
        (e.g. ``"::200"``: every 200th)

    Returns
    -------
    ReadResult
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error={on_error!r}: use 'skip' or 'raise'")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    keys = {"energy_key": energy_key, "forces_key": forces_key, "index": index}
    files: list[Path] = []
    errors: list[str] = []
    for raw in paths:
        try:
            files += expand_paths([raw])
        except InputError as err:
            if on_error == "raise":
                raise
            errors.append(str(err))
    configs: list[Configuration] = []
    for f in files:
        try:
            found = _read_one(f, stress_style, keys)
        except InputError as err:
            if on_error == "raise":
                raise
            errors.append(str(err))
            continue
        for cfg in found:
            try:
                validate_configuration(cfg, elements=elements, require_forces=require_forces)
            except InputError as err:
                if on_error == "raise":
                    raise
                errors.append(str(err))
                continue
            configs.append(cfg)
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        seen: set[str] = set()
        for c in configs:  # same file name in two directories: qualify with the source
            if c.name in seen:
                c.name = f"{c.source}:{c.name}"
            seen.add(c.name)
    return ReadResult(configs, errors)
