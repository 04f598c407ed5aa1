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

__all__ = ["GroupWeights", "WeightSettings", "element_reference_energies", "fitsnap_row_scale", "paper_weights"]


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
    kind = np.asarray(kind)
    config = np.asarray(config)
    train = np.asarray(train, dtype=bool)
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
    w = np.zeros(kind.shape, dtype=float)
    e_rows = kind == 0
    f_rows = kind == 1
    v_rows = kind == 2
    w[e_rows] = w_cfg[config[e_rows]]
    w[v_rows] = s.virial_factor * w_cfg[config[v_rows]]
    w[f_rows] = np.exp(-np.asarray(force_norm, dtype=float)[f_rows] / s.b)
    in_train = train[config]
    n_e = np.count_nonzero(e_rows & in_train)
    se = w[e_rows & in_train].sum()
    sf = w[f_rows & in_train].sum()
    if se > 0:
        w[e_rows | v_rows] *= n_e / se
    if sf > 0:
        w[f_rows] *= n_e / sf
    return w


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

    def row_weights(
        self, kind: np.ndarray, config: np.ndarray, groups: Sequence[str], n_atoms: np.ndarray, volume: np.ndarray
    ) -> np.ndarray:
        """(n_rows,) store weights ``(weight × fitsnap_row_scale)²`` of the rows.

        Parameters
        ----------
        kind, config : (n_rows,) row coordinates (kind 0 energy, 1 force, 2 virial)
        groups, n_atoms, volume : (n_configurations,) group, atom count and volume (Å³)
        """
        self.check_groups(groups)
        table = {name: w for name, *w in self.table}
        per_config = np.array([table[g] for g in groups], dtype=float)  # (n_configurations, 3)
        kind = np.asarray(kind)
        w = per_config[np.asarray(config), np.minimum(kind, 2)]
        return (w * fitsnap_row_scale(kind, config, n_atoms, volume)) ** 2

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
    kind, config = np.asarray(kind), np.asarray(config)
    scale = np.ones(kind.shape)
    e, v = kind == 0, kind == 2
    scale[e] = 1.0 / np.asarray(n_atoms, dtype=float)[config[e]]
    scale[v] = NKTV2P / np.asarray(volume, dtype=float)[config[v]]
    return scale
