"""bcc cells shared by the defect and phonon properties (helpers, not a property).

The ground state every defect energy is measured from, cubic bcc supercells, and unwrapping of
relaxed positions (``relax`` returns atoms wrapped into the cell, NEB images need them
continuous with the starting structure).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .potential import Potential
from .relax import bcc_ground_state
from .status import short_reason

__all__ = ["bcc_supercell", "ground_state", "unwrap_like"]


def ground_state(potential: Potential) -> tuple[float, float, str]:
    """``(a0, e_bcc, status)`` of ``potential``'s relaxed bcc crystal; NaNs and a reason on failure."""
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
