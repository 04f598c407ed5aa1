"""Property suite: material properties recomputed self-consistently for every ensemble member.

Each property module (``phases``, ``paths``, ``phonons``, ``interstitials``, ``surfaces``,
``vacancy``, and ``solutes`` for a second element) exposes ``NAME`` and
``compute(potential, **options) -> xarray.Dataset`` for ONE potential;
:mod:`popsdask.properties.runner` maps them over (member, property) on Dask and stores every
finished pair as its own Zarr part, so an interrupted run resumes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy_attributes

if TYPE_CHECKING:
    from .potential import Potential, members_from_posterior, reference_potential

# attributes import their module on first use: the command line reads the suite's names
# (popsdask.properties.catalogue) without loading ASE, LAMMPS, xarray or Dask
_LAZY = {"Potential": ".potential", "members_from_posterior": ".potential", "reference_potential": ".potential"}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)


__all__ = ["Potential", "members_from_posterior", "reference_potential"]
