"""What the property suite offers, by name: its properties and the routes that compute them.

Kept free of the computation (no ASE, LAMMPS, xarray or Dask import), so that the command line
refuses an unknown property or route at once.
"""

from __future__ import annotations

__all__ = ["PROPERTIES", "ROUTE_NAMES"]

#: property name -> module (each exposes NAME and compute(potential, **options))
PROPERTIES: dict[str, str] = {
    "phases": "popsdask.properties.phases",
    "paths": "popsdask.properties.paths",
    "phonons": "popsdask.properties.phonons",
    "interstitials": "popsdask.properties.interstitials",
    "surfaces": "popsdask.properties.surfaces",
    "vacancy": "popsdask.properties.vacancy",
    "solutes": "popsdask.properties.solutes",
}

#: the routes of :data:`popsdask.properties.runner.ROUTES`: every member recomputed, or the
#: implicit expansion of the MLE's properties in θ
ROUTE_NAMES: tuple[str, ...] = ("resample", "implicit")
