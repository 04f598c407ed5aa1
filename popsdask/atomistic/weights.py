"""Row weights of the paper's eq. 9: favour near-equilibrium energies and small forces.

``w_E ∝ exp(-ΔE/a)`` with ΔE the configuration's energy per atom minus the lowest energy per
atom of the training set, ``w_F ∝ exp(-|F|/b)`` with ``|F|`` the norm of the atom's reference
force (the same weight on its three components); a = 2 eV, b = 50 eV/Å. With
``energy_per_atom`` (default) the energy row, which sums over atoms, is also divided by N² so
that its weighted residual is a per-atom energy error. Energy and force weights are then scaled
so that **each sums to the number of training energy rows** over the training set; test rows
get the same formula and scale factors. Virial rows get ``virial_factor`` times their
configuration's energy-row weight.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .._validate import InputError

__all__ = ["WeightSettings", "paper_weights"]


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


def paper_weights(
    kind: np.ndarray,
    config: np.ndarray,
    atom: np.ndarray,
    energy_per_atom: np.ndarray,
    n_atoms: np.ndarray,
    force_norm: np.ndarray,
    train: np.ndarray,
    settings: WeightSettings | None = None,
) -> np.ndarray:
    """Row weights (eq. 9), normalised over the training configurations.

    Parameters
    ----------
    kind, config, atom : (n_rows,) row coordinates (kind 0 energy, 1 force, 2 virial)
    energy_per_atom, n_atoms : (n_configurations,) reference energy per atom and atom count
    force_norm : (n_rows,) norm of the reference force on the row's atom (ignored elsewhere)
    train : (n_configurations,) True for training configurations
    settings : WeightSettings

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
