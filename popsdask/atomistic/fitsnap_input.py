"""FitSNAP input files in: settings, data, group weights and split of a FitSNAP fit.

:func:`read_fitsnap_input` reads a FitSNAP input file (an INI file) and returns a
:class:`FitsnapInput` holding what popsdask needs to build the same rows FitSNAP builds:

* ``[BISPECTRUM]`` → :class:`~popsdask.atomistic.descriptors.snap.SnapSettings` (every keyword of
  LAMMPS ``compute snap``; with ``bzeroflag`` there is no β0 column, as in FitSNAP);
* ``[REFERENCE]`` → the reference pair style subtracted from the targets (e.g. ZBL), metal units;
* ``[ESHIFT]`` → a per-element energy shift added to every energy;
* ``[CALCULATOR]`` → energy and force rows, and virial rows with ``stress = 1``;
* ``[PATH]``/``[SCRAPER]`` → the training files (``dataPath`` relative to the input file): with
  JSON one folder per group, its ``*.json`` files in sorted order; with XYZ one extended XYZ file
  per group, ``<group>.extxyz`` or ``<group>.xyz``, its frames in order, whose ``stress`` is
  FitSNAP's (a pressure, LAMMPS sign, in bar);
* ``[GROUPS]`` → :class:`~popsdask.atomistic.weights.GroupWeights` and the split: of each group's
  configurations, the first ``training_size`` are training, the next ``testing_size`` testing, the
  rest unused (sizes below 1 are fractions, rounded as FitSNAP rounds them).

The rows are stored in popsdask's units (total energy, force, virial in eV); a store row times
:func:`~popsdask.atomistic.weights.fitsnap_row_scale` is FitSNAP's row, and the stored weights
are the squares of FitSNAP's weights times that scale, so a fit minimises FitSNAP's objective.
``[SOLVER]``, ``[OUTFILE]``, ``[EXTRAS]`` and ``[MEMORY]`` concern FitSNAP's own solver and
outputs: their keys are checked (FitSNAP's own keys only) but not used, except the settings that
would change what is fitted, which are refused (a nonlinear ``solver``, ``only_test = 1``, an
``output_style`` other than SNAP). Anything else popsdask does not support is refused with one line
naming the section and key (:class:`~popsdask.core.validation.InputError`), before any data is read.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.validation import InputError
from .configurations import (
    Configuration,
    _pressure_to_ase,
    read_extxyz,
    read_fitsnap_json,
    validate_configuration,
)
from .descriptors.snap import SnapSettings
from .split import SPLIT_CODES
from .weights import GroupWeights

__all__ = ["FitsnapGroup", "FitsnapInput", "read_fitsnap_input"]

#: sections of FitSNAP's own solver and outputs: nothing in them changes the rows
IGNORED_SECTIONS = ("SOLVER", "OUTFILE", "EXTRAS", "MEMORY")
SECTIONS = ("BISPECTRUM", "CALCULATOR", "ESHIFT", "PATH", "SCRAPER", "GROUPS", "REFERENCE")
BISPECTRUM_KEYS = (
    "numTypes", "twojmax", "rcutfac", "rfac0", "rmin0", "wj", "radelem", "type", "wselfallflag", "chemflag",
    "bzeroflag", "quadraticflag", "bnormflag", "switchflag", "switchinnerflag", "sinner", "dinner",
)  # fmt: skip
#: keywords accepted only at the value that changes nothing
BISPECTRUM_OFF = ("bikflag", "dgradflag", "BOLTZ")
GROUP_KEYS = ("group_sections", "group_types", "smartweights", "random_sampling", "random_seed")
#: [GROUPS] keys of FitSNAP's VASP scraper, which popsdask does not have
VASP_GROUP_KEYS = (
    "vasp_use_TOTEN", "vasp_json_pathname", "vasp_ignore_incomplete", "vasp_ignore_jsons", "vasp_unconverged_label",
)  # fmt: skip
#: FitSNAP's keys of the sections popsdask does not use (FitSNAP refuses any other)
IGNORED_KEYS = {
    "SOLVER": (
        "solver", "normalweight", "normratio", "compute_testerrs", "detailed_errors", "nsam", "cov_nugget",
        "mcmc_num", "mcmc_gamma", "mcmc_sigma", "merr_mult", "merr_method", "merr_cfs",
    ),
    "OUTFILE": ("output_style", "metrics", "metrics_style", "potential", "detailed_errors"),
    "EXTRAS": (
        "multinode_testing", "apply_transpose", "only_test", "dump_descriptors", "dump_truth", "dump_weights",
        "dump_dataframe", "dump_peratom", "dump_perconfig", "dump_configs",
    ),
    "MEMORY": ("memory", "override"),
}  # fmt: skip
#: FitSNAP's solvers of nonlinear models (its linear solvers are what the POPS posterior replaces)
NONLINEAR_SOLVERS = ("PYTORCH", "JAX", "NETWORK")
SCRAPERS = ("JSON", "XYZ")
_TRUE, _FALSE = ("1", "true", "yes", "on", "t", "y"), ("0", "false", "no", "off", "f", "n")


@dataclass(frozen=True)
class FitsnapGroup:
    """One ``[GROUPS]`` row: the group (its folder) and how many of its files train and test."""

    name: str
    training_size: float
    testing_size: float

    def counts(self, n_files: int) -> tuple[int, int]:
        """(training, testing) files of ``n_files``: fractions below 1 (or exactly 1.0) of the
        files, rounded half up with at least one; a total beyond ``n_files`` shrinks the testing."""
        sizes = []
        for size in (self.training_size, self.testing_size):
            if size == 0:
                sizes.append(0)
            elif size <= 1:
                sizes.append(n_files if size == 1 else max(1, int(size * n_files + 0.5)))
            else:
                sizes.append(int(size))
        train, test = min(sizes[0], n_files), sizes[1]
        return train, min(test, n_files - train)


@dataclass(frozen=True)
class FitsnapInput:
    """What a FitSNAP input file asks for, in popsdask's terms.

    Attributes
    ----------
    path : the input file
    settings : descriptor settings (``[BISPECTRUM]``, ``[REFERENCE]``, ``[ESHIFT]``)
    data_path : folder of the group folders (``[PATH] dataPath``)
    scraper : ``"JSON"`` or ``"XYZ"``
    groups : the ``[GROUPS]`` rows, in the file's order
    weights : per-group energy, force and virial weights
    virial : virial rows (``[CALCULATOR] stress = 1``)
    """

    path: Path
    settings: SnapSettings
    data_path: Path
    scraper: str
    groups: tuple[FitsnapGroup, ...]
    weights: GroupWeights
    virial: bool

    def group_sources(self, group: str) -> list[Path]:
        """The files of ``group``: with JSON the folder's ``*.json`` in sorted order, with XYZ its
        one file ``<group>.extxyz`` (or ``.xyz``) whose frames are the configurations."""
        if self.scraper == "JSON":
            folder = self.data_path / group
            return sorted(f for f in folder.iterdir() if f.is_file() and f.name.lower().endswith(".json"))
        return [_xyz_file(self.data_path, group)]

    def configurations(self) -> tuple[list[Configuration], np.ndarray]:
        """The configurations of every group (each group's training ones first, then its testing
        ones, groups in the file's order), validated, and their split codes (0 train, 1 test).

        Raises
        ------
        InputError
            Naming every unreadable file or invalid configuration (nothing is skipped: FitSNAP
            would fit them all).
        """
        configs: list[Configuration] = []
        split: list[int] = []
        bad: list[str] = []
        for g in self.groups:
            found: list[Configuration] = []
            for f in self.group_sources(g.name):
                try:
                    found += self._read(f)
                except InputError as err:
                    bad.append(str(err))
            n_train, n_test = g.counts(len(found))
            for i, cfg in enumerate(found[: n_train + n_test]):
                cfg.group = g.name
                cfg.name = f"{g.name}/{cfg.name}"
                try:
                    validate_configuration(cfg, elements=self.settings.elements)
                except InputError as err:
                    bad.append(str(err))
                    continue
                configs.append(cfg)
                split.append(SPLIT_CODES["train"] if i < n_train else SPLIT_CODES["test"])
        if bad:
            more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
            raise InputError(f"{self.path}: {len(bad)} unusable configuration(s): " + "; ".join(bad[:5]) + more)
        if not configs:
            raise InputError(f"{self.path}: [GROUPS] selects no configurations under {self.data_path}")
        return configs, np.array(split, dtype=np.int8)

    def _read(self, path: Path) -> list[Configuration]:
        if self.scraper == "JSON":
            return read_fitsnap_json(path)
        from ase.stress import voigt_6_to_full_3x3_stress

        frames = read_extxyz(path)
        for cfg in frames:  # FitSNAP's XYZ stress: a pressure (LAMMPS sign) in bar, as its JSON Stress
            if cfg.stress is not None:
                cfg.stress = _pressure_to_ase(voigt_6_to_full_3x3_stress(cfg.stress), "bar", cfg.where())
        return frames

    def build_store(
        self,
        path: str | os.PathLike,
        *,
        data: tuple[list[Configuration], np.ndarray] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """:func:`~popsdask.atomistic.descriptor_store.build_descriptor_store` of this input: its
        configurations, settings, virial rows, group weights and split.

        ``data`` is :meth:`configurations` when already read; ``kwargs`` go to the builder
        (``client``, ``overwrite``, ``configs_per_task``, ...).
        """
        from .descriptor_store import build_descriptor_store

        configs, split = data if data is not None else self.configurations()
        attrs = {"fitsnap_input": str(self.path), "inputs": [str(self.data_path)], **kwargs.pop("attrs", {})}
        has_stress = any(c.stress is not None for c in configs)
        return build_descriptor_store(
            path,
            configs,
            self.settings,
            virial="auto" if self.virial and has_stress else False,
            weights=self.weights,
            split=split,
            attrs=attrs,
            **kwargs,
        )


# ---------------------------------------------------------------------------- parsing
def _flag(text: str) -> bool:
    t = text.strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    raise ValueError(text)


_WHAT = {float: "number", int: "whole number", _flag: "flag (0 or 1)"}


class _Section:
    """One section's values, each converted or refused with one line naming section and key."""

    def __init__(self, parser: configparser.ConfigParser, name: str, where: str) -> None:
        self.name, self.where = name, where
        self.items = dict(parser.items(name)) if parser.has_section(name) else {}

    def fail(self, key: str, why: str) -> InputError:
        return InputError(f"{self.where}: [{self.name}] {key}: {why}")

    def value(self, key: str, text: str, convert: Callable[[str], Any]) -> Any:
        try:
            return convert(text)
        except ValueError:
            raise self.fail(key, f"{text!r} is not a {_WHAT.get(convert, 'value')}") from None

    def get(self, key: str, default: str | None, convert: Callable[[str], Any] = str) -> Any:
        text = self.items.get(key, default)
        if text is None:
            raise self.fail(key, "missing")
        return self.value(key, text.strip(), convert)

    def words(self, key: str, default: str | None, convert: Callable[[str], Any] = str) -> list[Any]:
        return [self.value(key, w, convert) for w in self.get(key, default).split()]

    def only(self, allowed: tuple[str, ...]) -> None:
        for key in self.items:
            if key not in allowed:
                raise self.fail(key, f"not supported (supported keys: {', '.join(allowed)})")


def read_fitsnap_input(path: str | os.PathLike) -> FitsnapInput:
    """Read and check a FitSNAP input file (see the module docstring for what is read).

    Raises
    ------
    InputError
        One line naming the file, section and key of the first thing popsdask does not support
        or cannot read (a missing section, an unknown key, a weight that is not a number, a data
        path that does not exist, ...).
    """
    p = Path(path)
    parser = configparser.ConfigParser(inline_comment_prefixes=("#",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # group names keep their case
    try:
        with p.open() as fh:
            parser.read_file(fh)
    except OSError as err:
        raise InputError(f"{p}: cannot read the FitSNAP input file ({err.strerror or err})") from None
    except configparser.Error as err:
        raise InputError(f"{p}: not a FitSNAP input file ({' '.join(str(err).split())})") from None
    where = str(p)
    for name in parser.sections():
        if name not in SECTIONS + IGNORED_SECTIONS:
            raise InputError(f"{where}: [{name}]: section not supported (supported: {', '.join(SECTIONS)})")
    for name in ("BISPECTRUM", "GROUPS"):
        if not parser.has_section(name):
            raise InputError(f"{where}: [{name}]: missing section")
    sec = {name: _Section(parser, name, where) for name in SECTIONS}
    _check_ignored({name: _Section(parser, name, where) for name in IGNORED_SECTIONS})
    _check_calculator(sec["CALCULATOR"])
    virial = sec["CALCULATOR"].get("stress", "0", _flag)
    settings = _snap_settings(sec["BISPECTRUM"], sec["REFERENCE"], sec["ESHIFT"])
    data_path, scraper = _data(sec["PATH"], sec["SCRAPER"], p.parent)
    groups, weights = _groups(sec["GROUPS"], data_path, scraper)
    return FitsnapInput(p, settings, data_path, scraper, groups, weights, virial)


def _check_ignored(sec: dict[str, _Section]) -> None:
    """FitSNAP's own keys only, and none of its settings that would change what is fitted."""
    for name, s in sec.items():
        s.only(IGNORED_KEYS[name])
    solver = sec["SOLVER"].get("solver", "SVD")
    if solver.upper() in NONLINEAR_SOLVERS:
        raise sec["SOLVER"].fail("solver", f"{solver!r} not supported: popsdask fits linear models (SVD, ANL, ...)")
    if sec["EXTRAS"].get("only_test", "0", _flag):
        raise sec["EXTRAS"].fail("only_test", "1 not supported: popsdask fits the training configurations")
    style = sec["OUTFILE"].get("output_style", "SNAP")
    if style.upper() != "SNAP":
        raise sec["OUTFILE"].fail("output_style", f"{style!r} not supported (SNAP only)")


def _check_calculator(c: _Section) -> None:
    c.only(("calculator", "energy", "force", "stress"))
    if c.get("calculator", "LAMMPSSNAP").upper() != "LAMMPSSNAP":
        raise c.fail("calculator", f"{c.items['calculator']!r} not supported (LAMMPSSNAP only)")
    for key in ("energy", "force"):
        if not c.get(key, "1", _flag):
            raise c.fail(key, "0 not supported: popsdask always builds energy and force rows")


def _snap_settings(b: _Section, ref: _Section, eshift: _Section) -> SnapSettings:
    for key in BISPECTRUM_OFF:
        if key in b.items and b.get(key, None, float) != 0:
            raise b.fail(key, f"{b.items[key]} not supported (only 0)")
    b.only(BISPECTRUM_KEYS + BISPECTRUM_OFF)
    types = b.words("type", None)
    n = b.get("numTypes", "1", int)
    per_type = {"type": types, "radelem": b.words("radelem", None, float), "wj": b.words("wj", None, float)}
    for key, values in per_type.items():
        if len(values) != n:
            raise b.fail(key, f"{len(values)} values for numTypes = {n}")
    twojmax = set(b.words("twojmax", "6", int))
    if len(twojmax) != 1:
        raise b.fail("twojmax", f"one value per element differing ({b.items['twojmax']}) not supported")
    flags = {k: b.get(k, "0", _flag) for k in ("wselfallflag", "chemflag", "bzeroflag", "bnormflag")}
    inner = b.get("switchinnerflag", "0", _flag)
    sinner = tuple(b.words("sinner", " ".join(["0.9"] * n), float)) if inner else ()
    dinner = tuple(b.words("dinner", " ".join(["0.1"] * n), float)) if inner else ()
    for key, given in (("sinner", sinner), ("dinner", dinner)):
        if inner and len(given) != n:
            raise b.fail(key, f"{len(given)} values for numTypes = {n}")
    shift = _eshift(eshift, types)
    try:
        return SnapSettings(
            elements=tuple(types),
            radii=tuple(per_type["radelem"]),
            element_weights=tuple(per_type["wj"]),
            twojmax=twojmax.pop(),
            rcutfac=b.get("rcutfac", "4.67637", float),
            rfac0=b.get("rfac0", "0.99363", float),
            rmin0=b.get("rmin0", "0.0", float),
            quadratic=b.get("quadraticflag", "0", _flag),
            switchflag=b.get("switchflag", "1", _flag),
            switchinnerflag=inner,
            sinner=sinner,
            dinner=dinner,
            beta0_columns=not flags["bzeroflag"],
            energy_shift=shift,
            **flags,
            **_reference(ref, types),
        )
    except InputError as err:
        raise InputError(f"{b.where}: [BISPECTRUM]: {err}") from None


def _eshift(e: _Section, types: list[str]) -> tuple[float, ...]:
    e.only(tuple(types))
    shift = tuple(e.get(t, "0.0", float) for t in types)
    return shift if any(shift) else ()


def _reference(r: _Section, types: list[str]) -> dict[str, Any]:
    """``reference_style``/``reference_coeffs`` of ``pair_style`` (``zero R``, one style, or
    ``hybrid/overlay zero R`` plus one style) and its ``pair_coeff*`` lines."""
    coeff_keys = tuple(k for k in r.items if k.startswith("pair_coeff"))
    r.only(("units", "atom_style", "pair_style", *coeff_keys))
    for key, want in (("units", "metal"), ("atom_style", "atomic")):
        if r.get(key, want).lower() != want:
            raise r.fail(key, f"{r.items[key]!r} not supported ({want} only)")
    tok = r.get("pair_style", "zero 10.0").split()
    if tok and tok[0] == "hybrid/overlay":
        tok = tok[1:]
    if len(tok) >= 2 and tok[0] == "zero":
        tok = tok[2:]
    if not tok:
        return {}
    if any(t in ("zero", "hybrid", "hybrid/overlay", "hybrid/scaled") for t in tok):
        raise r.fail("pair_style", f"{r.items['pair_style']!r} not supported (zero plus at most one pair style)")
    style = tok[0]
    coeffs = []
    for key in coeff_keys:
        c = r.items[key].split()
        if len(c) >= 3 and c[2] == "zero":
            continue
        if len(c) < 3 or c[2] != style:
            raise r.fail(key, f"{r.items[key]!r}: expected 'I J {style} ...' or 'I J zero'")
        coeffs.append(" ".join(c[:2] + c[3:]))
    if not coeffs:
        raise r.fail("pair_coeff", f"pair style {style!r} has no pair_coeff line")
    return {"reference_style": " ".join(tok), "reference_coeffs": tuple(coeffs)}


def _xyz_file(data: Path, group: str) -> Path:
    """FitSNAP's XYZ file of ``group``: ``<group>.extxyz``, else ``<group>.xyz``."""
    for suffix in (".extxyz", ".xyz"):
        if (data / f"{group}{suffix}").is_file():
            return data / f"{group}{suffix}"
    return data / f"{group}.xyz"


def _data(path_sec: _Section, scraper_sec: _Section, base: Path) -> tuple[Path, str]:
    path_sec.only(("dataPath",))
    scraper_sec.only(("scraper",))
    scraper = scraper_sec.get("scraper", "JSON").upper()
    if scraper not in SCRAPERS:
        raise scraper_sec.fail("scraper", f"{scraper_sec.items['scraper']!r} not supported ({', '.join(SCRAPERS)})")
    data = base / path_sec.get("dataPath", "JSON")
    if not data.is_dir():
        raise path_sec.fail("dataPath", f"{data} is not a directory")
    return data, scraper


def _groups(g: _Section, data: Path, scraper: str) -> tuple[tuple[FitsnapGroup, ...], GroupWeights]:
    columns = g.get("group_sections", "name size eweight fweight vweight").split()
    need = {"name", "eweight", "fweight", "vweight"}
    if not need <= set(columns) or not ({"size", "training_size"} & set(columns)):
        raise g.fail(
            "group_sections", f"{' '.join(columns)}: need name, training_size (or size), eweight, fweight, vweight"
        )
    if "size" in columns and "training_size" in columns:
        raise g.fail("group_sections", "size and training_size together")
    extra = set(columns) - need - {"size", "training_size", "testing_size"}
    if extra:
        raise g.fail("group_sections", f"column {sorted(extra)[0]!r} not supported")
    for key in ("smartweights", "random_sampling"):
        if g.get(key, "0", _flag):
            raise g.fail(key, "1 not supported (only 0)")
    groups, weights = [], {}
    for key, text in g.items.items():
        if key in VASP_GROUP_KEYS:
            raise g.fail(key, "not supported (a key of FitSNAP's VASP scraper; popsdask reads JSON and XYZ)")
        if key in GROUP_KEYS:
            continue
        values = text.split()
        if len(values) != len(columns) - 1:
            raise g.fail(key, f"{len(values)} values for the {len(columns) - 1} columns {' '.join(columns[1:])}")
        row = {c: g.value(key, v, float) for c, v in zip(columns[1:], values, strict=True)}
        if scraper == "JSON" and not (data / key).is_dir():
            raise g.fail(key, f"no folder {data / key}")
        if scraper == "XYZ" and not _xyz_file(data, key).is_file():
            raise g.fail(key, f"no file {data / key}.extxyz or .xyz")
        size = row["training_size"] if "training_size" in row else row["size"]  # one of them, checked above
        groups.append(FitsnapGroup(key, size, row.get("testing_size", 0.0)))
        weights[key] = (row["eweight"], row["fweight"], row["vweight"])
    if not groups:
        raise g.fail("group_sections", "no group rows")
    return tuple(groups), GroupWeights.from_mapping(weights, source=f"{g.where}: [GROUPS]")
