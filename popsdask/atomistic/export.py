"""Potentials out (kept import path): the calculator is in :mod:`.calculator`, the SNAP files and
their pair commands in :mod:`.snap_files`."""

from __future__ import annotations

from .calculator import LammpsCalculator
from .snap_files import pair_commands_for, snap_calculator, write_snap_potential

__all__ = ["LammpsCalculator", "pair_commands_for", "snap_calculator", "write_snap_potential"]
