"""Status strings of the property stores: one short line per failure, fixed-width arrays.

Every property value that could not be obtained is NaN beside a ``status`` entry saying why
(``"ok"`` otherwise); these helpers make those entries.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["short_reason", "status_array"]


def short_reason(err: BaseException | str, limit: int = 160) -> str:
    """One line (≤ ``limit`` characters) describing an error, for a ``status`` entry."""
    msg = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    return " ".join(str(msg).split())[:limit]


def status_array(statuses: Sequence[str]) -> np.ndarray:
    """Fixed-width unicode (``<U``) array of status strings (never object dtype)."""
    width = max([2, *(len(s) for s in statuses)])
    return np.array(list(statuses), dtype=f"<U{width}")
