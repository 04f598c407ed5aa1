"""Property suite: material properties recomputed self-consistently for every ensemble member.

Each property module (``phases``, ``paths``, ``phonons``, ``interstitials``, ``surfaces``,
``vacancy``, and ``solutes`` for a second element) exposes ``NAME`` and
``compute(potential, **options) -> xarray.Dataset`` for ONE potential;
:mod:`popsdask.properties.runner` maps them over (member, property) on Dask and stores every
finished pair as its own Zarr part, so an interrupted run resumes.
"""

from __future__ import annotations

from .potential import Potential, members_from_posterior, reference_potential

__all__ = ["Potential", "members_from_posterior", "reference_potential"]
