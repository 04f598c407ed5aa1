"""Row weights of the paper's eq. 9: favour near-equilibrium energies and small forces.

``w_E ∝ exp(-ΔE/a)`` with ΔE the configuration's energy per atom minus the lowest energy per
atom of the training set, ``w_F ∝ exp(-|F|/b)`` with ``|F|`` the norm of the atom's reference
force (the same weight on its three components); a = 2 eV, b = 50 eV/Å. With
``energy_per_atom`` (default) the energy row, which sums over atoms, is also divided by N² so
that its weighted residual is a per-atom energy error. Energy and force weights are then scaled
so that **each sums to the number of training energy rows** over the training set; test rows
get the same formula and scale factors. Virial rows get ``virial_factor`` times their
configuration's energy-row weight.

With several elements the energies per atom of different compositions are not comparable (Be
sits ~5.6 eV/atom above W in the W–Be set), so ΔE is measured from a composition-weighted
reference Σ_e x_e μ_e, with μ_e the lowest energy per atom of the training configurations of
pure e (a formation energy per atom; elements without a pure training configuration get μ_e
from a least-squares fit of the training energies per atom on the fractions). For one element
this is the lowest training energy per atom, as in the paper.

:class:`GroupWeights` is FitSNAP's alternative: one energy, force and virial weight per training
group, multiplying the residual of the energy per atom (eV/atom), of a force component (eV/Å)
and of a stress component (bar). A store's weight multiplies the squared residual of its own
rows (total energy, force, virial in eV), so the store holds ``(weight × scale)²`` with the
:func:`fitsnap_row_scale` that turns a store row into FitSNAP's: the fit minimises FitSNAP's
weighted sum of squares.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.validation import InputError
from .lammps_backend import NKTV2P

__all__ = [
    "GroupWeights",
    "RowWeightTerms",
    "WeightSettings",
    "element_reference_energies",
    "fitsnap_row_scale",
    "paper_terms",
    "paper_weights",
]


@dataclass(frozen=True)
class WeightSettings:
    """Parameters of eq. 9 (``a`` in eV, ``b`` in eV/Å)."""

    a: float = 2.0
    b: float = 50.0
    energy_per_atom: bool = True
    virial_factor: float = 1.0

    def __post_init__(self) -> None:
        if not (self.a > 0 and self.b > 0 and self.virial_factor >= 0):
            raise InputError(f"WeightSettings: need a > 0, b > 0, virial_factor >= 0 (got {self})")

    def to_attrs(self) -> dict[str, Any]:
        return asdict(self)


def element_reference_energies(
    energy_per_atom: np.ndarray, counts: np.ndarray, train: np.ndarray
) -> tuple[np.ndarray, list[str]]:
    """Per-element reference energies μ_e (eV/atom) of the eq. 9 ΔE, and how each was found.

    Parameters
    ----------
    energy_per_atom : (n_configurations,)
    counts : (n_configurations, n_elements) atoms of each element
    train : (n_configurations,) configurations the reference is taken from

    Returns
    -------
    (n_elements,) μ_e, and per element ``"pure minimum"``, ``"least squares"`` or
    ``"no training atoms"`` (μ_e = 0: it weighs no training configuration).
    """
    epa = np.asarray(energy_per_atom, dtype=float)
    counts = np.asarray(counts, dtype=float)
    train = np.asarray(train, dtype=bool)
    frac = counts / counts.sum(axis=1, keepdims=True)
    mu = np.full(frac.shape[1], np.nan)
    how: list[str] = []
    for e in range(frac.shape[1]):
        pure = train & (frac[:, e] == 1.0)
        if pure.any():
            mu[e] = epa[pure].min()
            how.append("pure minimum")
        elif not np.any(frac[train, e]):
            mu[e] = 0.0
            how.append("no training atoms")
        else:
            how.append("least squares")
    missing = np.isnan(mu)
    if missing.any():  # fit the rest of the training energies on the missing fractions
        known = frac[train][:, ~missing] @ mu[~missing]
        mu[missing] = np.linalg.lstsq(frac[train][:, missing], epa[train] - known, rcond=None)[0]
    return mu, how


def paper_weights(
    kind: np.ndarray,
    config: np.ndarray,
    energy_per_atom: np.ndarray,
    n_atoms: np.ndarray,
    force_norm: np.ndarray,
    train: np.ndarray,
    settings: WeightSettings | None = None,
    counts: np.ndarray | None = None,
) -> np.ndarray:
    """Row weights (eq. 9), normalised over the training configurations.

    Parameters
    ----------
    kind, config : (n_rows,) row coordinates (kind 0 energy, 1 force, 2 virial)
    energy_per_atom, n_atoms : (n_configurations,) reference energy per atom and atom count
    force_norm : (n_rows,) norm of the reference force on the row's atom (ignored elsewhere)
    train : (n_configurations,) True for training configurations
    settings : WeightSettings
    counts : (n_configurations, n_elements) atoms per element; with two or more elements ΔE is
        taken from the composition-weighted reference (:func:`element_reference_energies`)

    Returns
    -------
    (n_rows,) non-negative weights
    """
    s = settings or WeightSettings()
    kind, config = np.asarray(kind), np.asarray(config)
    train = np.asarray(train, dtype=bool)
    raw = _by_kind(_paper_configuration_weights(energy_per_atom, n_atoms, train, s, counts), kind, config)
    f_rows = kind == 1
    raw[f_rows] *= np.exp(-np.asarray(force_norm, dtype=float)[f_rows] / s.b)
    return _normalised(kind, raw, _normalisation_sums(kind, train[config], raw))


def _paper_configuration_weights(
    energy_per_atom: np.ndarray, n_atoms: np.ndarray, train: np.ndarray, s: WeightSettings, counts: np.ndarray | None
) -> np.ndarray:
    """(n_configurations, 3) eq. 9 factors of a configuration's energy, force and virial rows
    before normalisation (a force row is further multiplied by its atom's ``exp(-|F|/b)``)."""
    if not train.any():
        raise InputError("paper_weights: no training configurations")
    epa = np.asarray(energy_per_atom, dtype=float)
    if counts is not None and np.asarray(counts).shape[1] > 1:
        counts = np.asarray(counts, dtype=float)
        mu, _ = element_reference_energies(epa, counts, train)
        epa = epa - (counts / counts.sum(axis=1, keepdims=True)) @ mu
    e0 = epa[train].min()
    w_cfg = np.exp(-(epa - e0) / s.a)
    if s.energy_per_atom:
        w_cfg = w_cfg / np.asarray(n_atoms, dtype=float) ** 2
    return np.stack([w_cfg, np.ones_like(w_cfg), s.virial_factor * w_cfg], axis=1)


def _by_kind(by_kind: np.ndarray, kind: np.ndarray, config: np.ndarray) -> np.ndarray:
    """(n_rows,) each row's factor from its configuration's (energy, force, virial) factors."""
    return by_kind[config, np.minimum(kind, 2)]


def _normalisation_sums(kind: np.ndarray, in_train: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """(3,) training energy rows, and the sums of their raw weights and of the training force
    rows' raw weights: additive over blocks of rows."""
    e_rows, f_rows = (kind == 0) & in_train, (kind == 1) & in_train
    return np.array([np.count_nonzero(e_rows), raw[e_rows].sum(), raw[f_rows].sum()])


def _normalised(kind: np.ndarray, raw: np.ndarray, sums: np.ndarray) -> np.ndarray:
    """Energy (with virial) and force weights each scaled to sum to the number of training
    energy rows over the training rows (``sums`` from :func:`_normalisation_sums`)."""
    n_e, se, sf = sums
    w = raw.copy()
    if se > 0:
        w[kind != 1] *= n_e / se
    if sf > 0:
        w[kind == 1] *= n_e / sf
    return w


@dataclass(frozen=True)
class RowWeightTerms:
    """A weighting of rows that a block of rows can apply from its own coordinates.

    A row weighs its configuration's factor for its kind, times its atom's factor on a force
    row; eq. 9 then scales energy and force weights by sums over the training rows, which are
    additive over blocks (:meth:`sums`). :meth:`part` cuts the terms of a contiguous range of
    configurations, so that a worker weighs its block with a few kB instead of every row.

    Parameters
    ----------
    by_kind : (n_configurations, 3) factors of energy, force and virial rows
    force_atom : (n_atoms_total,) factor of a force row by its atom, configurations in order;
        None: 1
    atom_start : (n_configurations + 1,) offset of each configuration's atoms in ``force_atom``
    train : (n_configurations,) training configurations (the normalisation's rows)
    normalised : scale by the training sums (eq. 9), or use the raw products (FitSNAP's groups)
    first : the configuration index of ``by_kind``'s first row
    """

    by_kind: np.ndarray
    force_atom: np.ndarray | None
    atom_start: np.ndarray
    train: np.ndarray
    normalised: bool
    first: int = 0

    def part(self, start: int, stop: int) -> RowWeightTerms:
        """The terms of configurations ``[start, stop)`` (row coordinates stay global)."""
        a, b = self.atom_start[start], self.atom_start[stop]
        return RowWeightTerms(
            self.by_kind[start:stop],
            None if self.force_atom is None else self.force_atom[a:b],
            self.atom_start[start : stop + 1] - a,
            self.train[start:stop],
            self.normalised,
            self.first + start,
        )

    def raw(self, kind: np.ndarray, config: np.ndarray, atom: np.ndarray) -> np.ndarray:
        """(n_rows,) weights before normalisation of rows of these configurations."""
        local = np.asarray(config) - self.first
        raw = _by_kind(self.by_kind, kind, local)
        if self.force_atom is not None:
            f_rows = kind == 1
            raw[f_rows] *= self.force_atom[self.atom_start[local[f_rows]] + atom[f_rows]]
        return raw

    def sums(self, kind: np.ndarray, config: np.ndarray, atom: np.ndarray) -> np.ndarray:
        """(3,) this block's share of the normalisation sums (add them over blocks)."""
        return _normalisation_sums(kind, self.train[np.asarray(config) - self.first], self.raw(kind, config, atom))

    def weights(self, kind: np.ndarray, config: np.ndarray, atom: np.ndarray, sums: np.ndarray) -> np.ndarray:
        """(n_rows,) the rows' weights, given the sums over every block."""
        raw = self.raw(kind, config, atom)
        return _normalised(kind, raw, sums) if self.normalised else raw


def paper_terms(
    energy_per_atom: np.ndarray,
    n_atoms: np.ndarray,
    force_norm: np.ndarray,
    train: np.ndarray,
    settings: WeightSettings | None = None,
    counts: np.ndarray | None = None,
) -> RowWeightTerms:
    """The eq. 9 weights of :func:`paper_weights` as :class:`RowWeightTerms`.

    Parameters
    ----------
    energy_per_atom, n_atoms, train, counts : (n_configurations,) as :func:`paper_weights`
    force_norm : (sum(n_atoms),) norm of each atom's reference force, configurations in order
    """
    s = settings or WeightSettings()
    train = np.asarray(train, dtype=bool)
    by_kind = _paper_configuration_weights(energy_per_atom, n_atoms, train, s, counts)
    start = np.concatenate([[0], np.cumsum(n_atoms)])
    return RowWeightTerms(by_kind, np.exp(-np.asarray(force_norm, dtype=float) / s.b), start, train, True)


@dataclass(frozen=True)
class GroupWeights:
    """Per-group energy, force and virial weights, as FitSNAP's ``[GROUPS]`` table.

    Parameters
    ----------
    table : ``(group, eweight, fweight, vweight)`` per group: weights of the residuals of the
        energy per atom (eV/atom), of a force component (eV/Å) and of a stress component (bar)
    source : where the table came from, for messages
    """

    table: tuple[tuple[str, float, float, float], ...]
    source: str = "group weights"

    def __post_init__(self) -> None:
        names = [row[0] for row in self.table]
        if not names:
            raise InputError(f"{self.source}: no groups")
        if len(set(names)) != len(names):
            raise InputError(f"{self.source}: group {next(n for n in names if names.count(n) > 1)!r} appears twice")
        for name, *w in self.table:
            if not all(math.isfinite(v) and v >= 0 for v in w):
                raise InputError(f"{self.source}: group {name!r}: weights must be finite and >= 0 (got {w})")

    @classmethod
    def from_mapping(cls, weights: Mapping[str, Sequence[Any]], source: str = "group weights") -> GroupWeights:
        """From ``{group: (eweight, fweight, vweight)}``; a non-numeric weight is one line naming its group."""
        rows = []
        for name, w in weights.items():
            if len(w) != 3:
                raise InputError(f"{source}: group {name!r}: need eweight fweight vweight, got {len(w)} values")
            energy, force, virial = (_weight_number(v, source, name) for v in w)
            rows.append((str(name), energy, force, virial))
        return cls(tuple(rows), source)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> GroupWeights:
        """Read a table of ``GROUP EWEIGHT FWEIGHT VWEIGHT`` lines (``#`` comments; a header line
        starting with ``name`` or ``group`` is skipped; FitSNAP's ``GROUP = ...`` spelling is read too)."""
        p = Path(path)
        try:
            lines = p.read_text().splitlines()
        except OSError as err:
            raise InputError(f"{p}: cannot read group weights ({err.strerror or err})") from None
        weights: dict[str, list[str]] = {}
        for i, line in enumerate(lines, 1):
            tok = line.split("#", 1)[0].replace("=", " ").split()
            if not tok or tok[0].lower() in ("name", "group"):
                continue
            if len(tok) != 4:
                raise InputError(f"{p}:{i}: need GROUP EWEIGHT FWEIGHT VWEIGHT, got {line.strip()!r}")
            if tok[0] in weights:
                raise InputError(f"{p}:{i}: group {tok[0]!r} appears twice")
            weights[tok[0]] = tok[1:]
        return cls.from_mapping(weights, source=str(p))

    @property
    def groups(self) -> list[str]:
        return [row[0] for row in self.table]

    def check_groups(self, groups: Sequence[str]) -> None:
        """One line naming a group of the table the data lacks, or a group of the data the table lacks."""
        present = set(groups)
        missing = [g for g in self.groups if g not in present]
        if missing:
            raise InputError(f"{self.source}: group {missing[0]!r} is not in the data (groups: {sorted(present)})")
        unweighted = sorted(present - set(self.groups))
        if unweighted:
            raise InputError(f"{self.source}: no weights for group {unweighted[0]!r} of the data")

    def terms(self, groups: Sequence[str], n_atoms: np.ndarray, volume: np.ndarray) -> RowWeightTerms:
        """The store weights ``(weight × fitsnap_row_scale)²`` as :class:`RowWeightTerms`.

        Parameters
        ----------
        groups, n_atoms, volume : (n_configurations,) group, atom count and volume (Å³)
        """
        self.check_groups(groups)
        table = {name: w for name, *w in self.table}
        per_config = np.array([table[g] for g in groups], dtype=float)  # (n_configurations, 3)
        n = len(groups)
        by_kind = (per_config * _fitsnap_scales(n_atoms, volume)) ** 2
        return RowWeightTerms(by_kind, None, np.zeros(n + 1, dtype=np.int64), np.ones(n, dtype=bool), False)

    def to_attrs(self) -> dict[str, Any]:
        return {
            "scheme": "per group (FitSNAP eweight, fweight, vweight)",
            "source": self.source,
            "groups": {name: {"eweight": e, "fweight": f, "vweight": v} for name, e, f, v in self.table},
            "store_weight": "(group weight x scale)^2; scale 1/n_atoms (energy), 1 (force), nktv2p/volume (virial)",
        }


def _weight_number(value: Any, source: str, group: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(f"{source}: group {group!r}: weight {value!r} is not a number") from None


def fitsnap_row_scale(kind: np.ndarray, config: np.ndarray, n_atoms: np.ndarray, volume: np.ndarray) -> np.ndarray:
    """(n_rows,) factor turning a store row (X, y) into FitSNAP's: ``1/N`` on energy rows (energy
    per atom), 1 on force rows, ``nktv2p/V`` on virial rows (eV -> pressure in bar).

    Parameters
    ----------
    kind, config : (n_rows,) row coordinates
    n_atoms, volume : (n_configurations,) atom counts and volumes (Å³)
    """
    return _by_kind(_fitsnap_scales(n_atoms, volume), np.asarray(kind), np.asarray(config))


def _fitsnap_scales(n_atoms: np.ndarray, volume: np.ndarray) -> np.ndarray:
    """(n_configurations, 3) :func:`fitsnap_row_scale` of energy, force and virial rows."""
    n = np.asarray(n_atoms, dtype=float)
    return np.stack([1.0 / n, np.ones_like(n), NKTV2P / np.asarray(volume, dtype=float)], axis=1)
