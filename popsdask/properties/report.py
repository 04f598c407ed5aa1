"""Kept import path of :mod:`popsdask.properties.tables` (the property suite's UQ tables and
figures; :mod:`popsdask.report` is the prediction-store report)."""

from __future__ import annotations

from .tables import PUBLISHED, TABLES, summary, uq_table, write_report

__all__ = ["PUBLISHED", "TABLES", "summary", "uq_table", "write_report"]
