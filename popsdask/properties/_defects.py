"""Shared pieces of the bcc defect and phonon properties (helper module, not a property).

The ground state every defect energy is measured from, fixed-width status strings for the
stores, cubic bcc supercells, and unwrapping of relaxed positions (``relax`` returns atoms
wrapped into the cell, NEB images need them continuous with the starting structure).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .potential import Potential

__all__ = ["ground_state", "status_array", "bcc_supercell", "unwrap_like", "short_reason"]


def short_reason(err: BaseException | str, limit: int = 160) -> str:
    """One line (≤ ``limit`` characters) describing an error, for a ``status`` entry."""
    msg = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    return " ".join(str(msg).split())[:limit]


def status_array(statuses: Sequence[str]) -> np.ndarray:
    """Fixed-width unicode (``<U``) array of status strings (never object dtype)."""
    width = max([2, *(len(s) for s in statuses)])
    return np.array(list(statuses), dtype=f"<U{width}")


def ground_state(potential: Potential) -> tuple[float, float, str]:
    """``(a0, e_bcc, status)`` of ``potential``'s relaxed bcc crystal; NaNs and a reason on failure."""
    from .relax import bcc_ground_state

    try:
        a0, e0 = bcc_ground_state(potential)
    except Exception as err:  # a member without a bcc minimum: every value of it is NaN
        return float("nan"), float("nan"), "bcc ground state: " + short_reason(err)
    if not (np.isfinite(a0) and np.isfinite(e0)):
        return float("nan"), float("nan"), "bcc ground state is not finite"
    return float(a0), float(e0), "ok"


def bcc_supercell(a0: float, n: int, element: str = "W") -> Any:
    """``n``×``n``×``n`` cubic bcc supercell (2n³ atoms) with lattice constant ``a0``, a site at the origin."""
    from ase.build import bulk

    return bulk(element, "bcc", a=a0, cubic=True).repeat((n, n, n))


def unwrap_like(atoms: Any, reference: np.ndarray) -> Any:
    """Copy of ``atoms`` with every position moved to its periodic image nearest ``reference``."""
    from ase.geometry import find_mic

    out = atoms.copy()
    d, _ = find_mic(out.positions - reference, out.cell, out.pbc)
    out.positions = reference + d
    return out
