"""The POPS settings in one table: names, defaults, allowed values and help.

``popsdask.fit``, :class:`popsdask.POPSRegressor` (its scikit-learn ``_parameter_constraints``)
and the command line (``fit``, ``crossval``) all read this table, so they accept and refuse the
same values. The bounds are popsregression 0.4.0's (e.g. ``leverage_percentile`` in [0, 100),
``mode_threshold`` > 0), which ``POPSRegressor`` must keep for parity.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Real
from typing import Any

from .kinds import KINDS, kind_names
from .validation import InputError

__all__ = [
    "POPS_SETTINGS",
    "Setting",
    "add_arguments",
    "check_arguments",
    "check_settings",
    "sklearn_constraints",
]


@dataclass(frozen=True)
class Setting:
    """One POPS setting: a number in an interval (``closed`` as scikit-learn's ``Interval``),
    optionally None, or one of the names ``choices()`` returns.

    ``choices`` and a callable ``help`` are asked each time they are used, so a registry that
    grows after import (the posterior kinds) is offered whole."""

    name: str
    default: Any
    help: str | Callable[[], str]
    low: float | None = None
    high: float | None = None
    closed: str = "both"
    optional: bool = False
    choices: Callable[[], tuple[str, ...]] | None = None

    def allowed(self) -> tuple[str, ...]:
        """The names this setting accepts now (empty for a number)."""
        return self.choices() if self.choices else ()

    def help_text(self) -> str:
        return self.help() if callable(self.help) else self.help

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.allowed())
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"a number in {left}{self.low:g}, {high}{right}" + (" or None" if self.optional else "")

    def check(self, value: Any) -> None:
        """Raise :class:`InputError` naming the setting when ``value`` is not allowed."""
        if self.choices:
            if value not in self.allowed():
                raise InputError(f"{self.name}={value!r}: must be {self.describe()}")
            return
        if value is None and self.optional:
            return
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
            raise InputError(f"{self.name}={value!r}: must be {self.describe()}")
        v = float(value)
        low_ok = self.low is None or (v >= self.low if self.closed in ("both", "left") else v > self.low)
        high_ok = self.high is None or (v <= self.high if self.closed in ("both", "right") else v < self.high)
        if not (low_ok and high_ok):
            raise InputError(f"{self.name}={value!r}: must be {self.describe()}")


POPS_SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting(
            "posterior",
            "hypercube",
            lambda: " or ".join(f"{k.name} ({k.help})" for k in KINDS.values()),
            choices=kind_names,
        ),
        Setting(
            "leverage_percentile",
            50.0,
            "rows with leverage at or above this percentile give the corrections",
            0.0,
            100.0,
            "left",
        ),
        Setting(
            "minimum_relative_error",
            None,
            "also keep only rows whose weighted residual is >= EPS x the weighted RMSE of the fit, and floor "
            "leverages at 1e-6 in the corrections (popsregression 0.5's selection; its default is 0.01 with "
            "leverage percentile 0); default: None (off, popsregression 0.4.0's leverage selection)",
            0.0,
            None,
            "left",
            optional=True,
        ),
        Setting(
            "mode_threshold",
            1e-8,
            "keep principal modes of the corrections whose eigenvalue exceeds this fraction of the largest",
            0.0,
            None,
            "neither",
        ),
        Setting(
            "percentile_clipping",
            0.0,
            "hypercube bounds at these percentiles of the projections instead of min/max",
            0.0,
            50.0,
            "both",
        ),
    )
}


def check_settings(**values: Any) -> None:
    """Check POPS settings by name (unknown names are not this table's business)."""
    for name, value in values.items():
        if name in POPS_SETTINGS:
            POPS_SETTINGS[name].check(value)


def sklearn_constraints() -> dict[str, list[Any]]:
    """The table as scikit-learn ``_parameter_constraints`` entries."""
    from sklearn.utils._param_validation import Interval, StrOptions

    class Names(StrOptions):  # type: ignore[misc]  # scikit-learn is untyped
        """The names ``choices()`` returns at each check (a kind registered later is accepted)."""

        def __init__(self, choices: Callable[[], tuple[str, ...]]) -> None:
            super().__init__(set(choices()))
            self.choices = choices

        def is_satisfied_by(self, val: Any) -> bool:
            self.options = set(self.choices())  # also what the refusal lists
            return bool(super().is_satisfied_by(val))

    out: dict[str, list[Any]] = {}
    for s in POPS_SETTINGS.values():
        if s.choices:
            out[s.name] = [Names(s.choices)]
        else:
            out[s.name] = ([None] if s.optional else []) + [Interval(Real, s.low, s.high, closed=s.closed)]
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--posterior``, ``--leverage-percentile`` … with the table's defaults, checks and help."""
    for s in POPS_SETTINGS.values():
        flag = "--" + s.name.replace("_", "-")
        if s.choices:
            parser.add_argument(flag, choices=s.allowed(), default=s.default, help=s.help_text())
            continue
        parser.add_argument(
            flag,
            # a setting that may be None is checked by check_arguments, naming the setting
            type=float if s.optional else _parse(s),
            default=s.default,
            metavar="EPS" if s.optional else None,
            help=s.help_text(),
        )


def check_arguments(args: argparse.Namespace) -> None:
    """:func:`check_settings` of the options :func:`add_arguments` added (one-line errors)."""
    check_settings(**{name: getattr(args, name) for name in POPS_SETTINGS if hasattr(args, name)})


def _parse(setting: Setting) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        try:
            setting.check(value)
        except InputError as err:
            raise argparse.ArgumentTypeError(str(err).split(": ", 1)[1]) from None
        return value

    parse.__name__ = "float"
    return parse
