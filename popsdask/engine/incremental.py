"""Adding rows to a fit: the rows a posterior was fitted to, reopened and checked, followed by
new rows, as one :class:`Design` whose first part's pass-1 statistics are known.

Pass 1's statistics are sums over rows (XᵀWX, XᵀWy, yᵀWy, Σw, and the moments of y merged
with Chan's formula), so those of the old rows, stored in the posterior, combine with those of
the new rows. Passes 2–4 (and pass 1b when it runs) use A⁻¹ of the combined Gram, which
changes every row's leverage and correction: they read the old rows again, from the inputs the
posterior records.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from ..core.validation import InputError
from ..io.store import open_store, select_split
from .checkpoint import design_fingerprint
from .design import Design, concatenate_designs, design_from
from .posterior import FittedRows, Posterior

#: store attributes that say what the columns are; an added store must have the fitted one's
FEATURE_ATTRS = ("descriptor", "feature_names")


def _store_and_split(source: str) -> tuple[str, str | None]:
    """``PATH[split]`` -> (PATH, split); ``PATH`` -> (PATH, None)."""
    m = re.fullmatch(r"(.*)\[(\w+)\]", source)
    return (m.group(1), m.group(2)) if m else (source, None)


def _absolute(source: str) -> str:
    path, split = _store_and_split(source)
    if path.startswith("<"):  # in-memory data: <array>, <dataset>
        return source
    return str(Path(path).absolute()) + (f"[{split}]" if split else "")


def _files_digest(source: str) -> str:
    """A digest of the size and modification time of every file of the store behind ``source``:
    a store rewritten with the same shapes (whose metadata is unchanged) gets another one."""
    path, _ = _store_and_split(source)
    if path.startswith("<"):
        return "none"
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(root)} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _record(design: Design) -> dict[str, str]:
    return {**design_fingerprint(design), "files": _files_digest(design.source)}


def input_records(design: Design) -> list[dict[str, str]]:
    """The :func:`design_fingerprint` of each input of ``design`` in row order, with a digest of
    its store's files; sources absolute."""
    if design.parts:
        return [rec for part in design.parts for rec in input_records(part)]
    return [{**_record(design), "source": _absolute(design.source)}]


def fitted_rows(design: Design, stats: Any) -> FittedRows:
    """What a posterior stores of its rows for a later fit that adds rows."""
    return FittedRows(stats, input_records(design), design.fit_intercept)


def fitted_stores(post: Posterior) -> list[str]:
    """The paths of the stores ``post`` was fitted to (none for in-memory data)."""
    rows = post.fitted_rows_
    paths = [_store_and_split(rec["source"])[0] for rec in rows.inputs] if rows is not None else []
    return [p for p in paths if not p.startswith("<")]


def reopen_fitted(post: Posterior, where: str) -> Design:
    """The rows ``post`` was fitted to, reopened from the stores it records, each checked
    against its record (:class:`InputError` naming the first difference)."""
    rows = post.fitted_rows_
    if rows is None:
        raise InputError(f"{where}: the posterior holds no pass-1 statistics, so no rows can be added; fit all rows")
    parts = []
    for rec in rows.inputs:
        path, split = _store_and_split(rec["source"])
        if path.startswith("<"):
            raise InputError(
                f"{where}: it was fitted to in-memory data ({rec['source']}), which passes 2-4 of a fit that "
                "adds rows must read again; fit all rows"
            )
        if not Path(path).exists():
            raise InputError(f"{where}: its input store {path} is gone; passes 2-4 of a fit that adds rows read it")
        ds = open_store(path)
        design = design_from(ds if split is None else select_split(ds, split), fit_intercept=rows.fit_intercept)
        now = {**_record(design), "source": rec["source"]}
        for key, was in rec.items():
            if now.get(key) != was:
                raise InputError(
                    f"{where}: its input {rec['source']} changed since it was fitted ({key} was {was}, is "
                    f"{now.get(key)}); fit all rows"
                )
        parts.append(design)
    return parts[0] if len(parts) == 1 else concatenate_designs(parts)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def check_same_features(old: Design, new: Design, post: Posterior, where: str) -> None:
    """Refuse ``new`` rows whose columns are not the fitted ones: their count, names, the
    intercept, and the store attributes :data:`FEATURE_ATTRS` (descriptor and its settings)."""
    fitted = post.fitted_rows_
    assert fitted is not None
    if new.fit_intercept != fitted.fit_intercept:
        with_or_not = "with" if fitted.fit_intercept else "without"
        raise InputError(
            f"{new.source}: {where} was fitted {with_or_not} an intercept (fit_intercept); add rows the same way"
        )
    if new.n_features != post.n_features:
        raise InputError(f"{new.source}: {new.n_features} features, but {where} has {post.n_features}")
    names = post.feature_names or old.feature_names
    if names and new.feature_names and names != new.feature_names:
        i = next(i for i, (a, b) in enumerate(zip(names, new.feature_names, strict=False)) if a != b)
        raise InputError(f"{new.source}: feature {i} is {new.feature_names[i]!r}, but {names[i]!r} in {where}")
    for key in FEATURE_ATTRS:
        if _canonical(old.attrs.get(key)) != _canonical(new.attrs.get(key)):
            raise InputError(
                f"{new.source}: attribute {key!r} differs from that of {old.source} fitted in {where} "
                f"({_canonical(new.attrs.get(key))[:80]} against {_canonical(old.attrs.get(key))[:80]})"
            )
    fitted_sources = {rec["source"] for rec in fitted.inputs}
    if _absolute(new.source) in fitted_sources:
        raise InputError(f"{new.source}: already fitted in {where}; add only new rows")


def added_design(post: Posterior, new: Design, where: str = "the previous posterior") -> Design:
    """The rows ``post`` was fitted to (reopened, checked), then ``new``'s, with the first
    part's pass-1 statistics taken from ``post``: pass 1 reads only ``new``.

    Raises
    ------
    InputError
        When ``post`` holds no statistics, a fitted store is gone or changed, or ``new``'s
        columns are not the fitted ones (:func:`check_same_features`). Only metadata is read.
    """
    old = reopen_fitted(post, where)
    check_same_features(old, new, post, where)
    assert post.fitted_rows_ is not None
    return concatenate_designs([old, new], known=post.fitted_rows_.stats)
