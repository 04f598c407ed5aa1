"""Input checks shared by the store writer, the estimator, the Dask passes and the command line."""

from __future__ import annotations

import argparse
import math
from typing import Any

import numpy as np


class InputError(ValueError):
    """Bad input: the message names what is wrong and where (store, variable, rows)."""


def number(lo: float | None = None, hi: float | None = None, kind: type = float) -> Any:
    """argparse type: a number (int or float) in [lo, hi]."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value):  # nan passes every range comparison
            raise argparse.ArgumentTypeError(f"{text}: not a finite number")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            span = f"[{lo:g}, {hi:g}]" if hi is not None else f">= {lo:g}"
            raise argparse.ArgumentTypeError(f"{text}: must be {span}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return parse


def _row_range(block_info: dict[Any, Any] | None) -> tuple[int, int] | None:
    if not block_info or 0 not in block_info:
        return None
    loc = block_info[0].get("array-location")
    return (int(loc[0][0]), int(loc[0][1])) if loc else None


def check_finite_block(
    block: np.ndarray,
    *,
    variable: str,
    where: str = "",
    nonneg: bool = False,
    block_info: dict[Any, Any] | None = None,
    row_offset: int = 0,
) -> np.ndarray:
    """Return ``block`` unchanged, or raise :class:`InputError` naming the first bad row."""
    bad = ~np.isfinite(block)
    if nonneg:
        bad |= block < 0
    if bad.any():
        rows = _row_range(block_info) or (row_offset, row_offset + block.shape[0])
        offset = rows[0]
        first = int(np.argwhere(bad)[0][0]) + offset
        value = block.reshape(block.shape[0], -1)[first - offset][bad.reshape(block.shape[0], -1)[first - offset]][0]
        what = "negative" if nonneg and np.isfinite(value) else "non-finite"
        span = f" (chunk rows {rows[0]}:{rows[1]})"
        prefix = f"{where}: " if where else ""
        raise InputError(f"{prefix}{variable} has a {what} value {float(value)!r} at row {first}{span}")
    return block
