"""Property suite: material properties recomputed self-consistently for every ensemble member.

Each property module (``phases``, ``paths``, ``phonons``, ``interstitials``, ``surfaces``,
``vacancy``, and ``solutes`` for a second element) exposes ``NAME`` and
``compute(potential, **options) -> xarray.Dataset`` for ONE potential;
:mod:`popsdask.properties.runner` maps them over (member, property) on Dask and stores every
finished pair as its own Zarr part, so an interrupted run resumes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .potential import Potential, members_from_posterior, reference_potential

# attributes import their module on first use: the command line reads the suite's names
# (popsdask.properties.catalogue) without loading ASE, LAMMPS, xarray or Dask
_LAZY = {"Potential": ".potential", "members_from_posterior": ".potential", "reference_potential": ".potential"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["Potential", "members_from_posterior", "reference_potential"]
