"""Deprecated alias of :mod:`popsdask.properties.implicit` (the implicit property route moved
to the properties layer, which the atomistic layer does not import; ``compute_implicit`` was
removed: use :func:`popsdask.properties.implicit.run_implicit`).

Names are looked up lazily, so importing :mod:`popsdask.atomistic` never imports
:mod:`popsdask.properties`.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    warnings.warn(
        f"popsdask.atomistic.implicit_properties.{name} moved to popsdask.properties.implicit",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module("popsdask.properties.implicit"), name)
