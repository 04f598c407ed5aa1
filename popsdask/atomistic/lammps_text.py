"""Values that reach generated LAMMPS text: checked against an allow-list, or quoted.

LAMMPS reads a newline as the end of a command, ``&`` at a line's end as its continuation, ``#``
as a comment, ``$`` as a variable and quotes as word boundaries; a value from a store's or a
posterior's attributes written raw into an input (``"zbl 4.0 4.8\\nshell rm ..."``) would run
commands of its own. Every value popsdask writes into LAMMPS text (descriptor settings,
potential files, the ensemble driver, the property runs) passes one of these functions, which
refuse anything but element symbols, finite numbers, words of a fixed alphabet and pair styles of
an allow-list, and quote file paths (LAMMPS accepts quoted file names).
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Sequence
from typing import Any

from ..core.validation import InputError

__all__ = [
    "PAIR_STYLES",
    "command",
    "commands",
    "expression",
    "integer",
    "number",
    "pair_style",
    "path",
    "symbol",
    "words",
]

#: reference pair styles a descriptor store may name (``hybrid/overlay`` with snap or zero)
PAIR_STYLES = frozenset(
    {"zbl", "lj/cut", "morse", "buck", "born", "soft", "coul/cut", "table", "eam", "eam/alloy", "eam/fs"}
)
_SYMBOL = re.compile(r"[A-Z][a-z]?\Z")
_WORD = re.compile(r"[A-Za-z0-9_.+\-/*:]+\Z")  # no whitespace, quote, '#', '$' or '&'
_EXPRESSION = re.compile(r"[A-Za-z0-9_.+\-/*^()\[\]]+\Z")
_UNSAFE_PATH = re.compile(r"[\"'$\x00-\x1f\x7f]")


def _refuse(where: str, value: Any, why: str) -> InputError:
    return InputError(f"{where} {value!r}: {why}")


def symbol(value: Any, where: str) -> str:
    """A chemical symbol (``W``, ``Be``)."""
    if not isinstance(value, str) or not _SYMBOL.match(value):
        raise _refuse(where, value, "not a chemical symbol")
    return value


def number(value: Any, where: str) -> float:
    """A finite real number (not a string, not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise _refuse(where, value, "not a finite number")
    return float(value)


def integer(value: Any, where: str) -> int:
    """An integer (not a string, not a bool, not a float)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _refuse(where, value, "not an integer")
    return int(value)


def words(value: Any, where: str) -> str:
    """Space-separated words of letters, digits and ``_.+-/*:`` (pair_coeff arguments)."""
    tokens = value.split(" ") if isinstance(value, str) else None
    if not tokens or not all(_WORD.match(t) for t in tokens if t) or not "".join(tokens):
        raise _refuse(where, value, "only words of letters, digits and _.+-/*: separated by spaces are allowed")
    return " ".join(t for t in tokens if t)


def pair_style(value: Any, where: str) -> str:
    """A pair style of :data:`PAIR_STYLES` and its numeric or word arguments (``zbl 4.0 4.8``)."""
    text = words(value, where)
    if text.split()[0] not in PAIR_STYLES:
        raise _refuse(where, value, f"pair style not allowed (allowed: {', '.join(sorted(PAIR_STYLES))})")
    return text


def expression(value: Any, where: str) -> str:
    """A LAMMPS equal-style expression without spaces (``pe/atoms``, ``c_msd[4]``, ``v_x*2``)."""
    if not isinstance(value, str) or not _EXPRESSION.match(value):
        raise _refuse(where, value, "only letters, digits and _.+-*/^()[] are allowed")
    return value


def path(value: str | os.PathLike[str]) -> str:
    """``value`` as a double-quoted LAMMPS word (spaces allowed; quotes, ``$`` and control characters not)."""
    text = os.fspath(value)
    if _UNSAFE_PATH.search(text):
        raise _refuse("path", text, "quotes, '$' and control characters cannot be written into a LAMMPS input")
    return f'"{text}"'


def command(line: str) -> str:
    """``line`` if it is a single LAMMPS command (no newline, continuation or other control character)."""
    if re.search(r"[\x00-\x1f\x7f]", line) or line.rstrip().endswith("&"):
        raise _refuse("LAMMPS command", line, "one command per line")
    return line


def commands(lines: Sequence[str]) -> list[str]:
    """:func:`command` of every line."""
    return [command(c) for c in lines]
