"""Deprecated alias: the helpers moved to :mod:`popsdask.properties.status` (status strings)
and :mod:`popsdask.properties.cells` (bcc ground state, supercells, unwrapping)."""

from __future__ import annotations

from .cells import bcc_supercell, ground_state, unwrap_like
from .status import short_reason, status_array

__all__ = ["ground_state", "status_array", "bcc_supercell", "unwrap_like", "short_reason"]
