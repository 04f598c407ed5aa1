"""Package attributes that import their module on first use.

The command line builds its parser from light modules (descriptor backends, property names) and
must not pay for xarray, Dask, ASE or LAMMPS to do so; packages that re-export heavy names
therefore resolve them lazily, as PEP 562 allows.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, table: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, resolving ``name`` from ``table[name]``.

    Parameters
    ----------
    package : the package's ``__name__``
    table : attribute name -> module relative to ``package`` (e.g. ``".io.store"``)
    """

    def getattr_(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(table[name], package), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    def dir_() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(table))

    return getattr_, dir_
