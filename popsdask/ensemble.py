"""Deprecated alias of :mod:`popsdask.predictions` (renamed: it holds predictions of every
posterior kind, not only the ``ensemble`` one). Kept for one release."""

from .predictions import *  # noqa: F403
from .predictions import (  # noqa: F401  (names tests and scripts reached directly)
    CORRECTION_CHUNK,
    KIND_NAMES,
    PREDICTION_FORMAT,
    RANGE_ROWS,
    correction_range,
    summarise,
)
