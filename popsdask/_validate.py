"""Deprecated alias of :mod:`popsdask.validation` (a private name that every package
imported); kept for one release."""

from .validation import *  # noqa: F403
from .validation import InputError, check_finite_block  # noqa: F401
