"""What a posterior or a prediction store must hold, checked once when it is opened.

Both are Zarr groups a user can edit by hand (or receive from someone else). Their arrays and
attributes are checked for presence, type, shape, finiteness and range before anything uses them,
so that an edited ``upper[0] = NaN``, ``alpha = "abc"`` or a garbled ``metrics`` is one line
naming the store and the variable, not NaN predictions that report "EV 0.00 %" or a traceback.
"""

from __future__ import annotations

import json
import math
import numbers
from typing import Any, cast

import numpy as np
import xarray as xr

from ..core.validation import InputError

__all__ = ["check_posterior_dataset", "check_prediction_dataset"]

#: the keys of a calibration's per-kind scales (popsdask.calibration.conformal.SCALE_KEYS)
_SCALES = ("std_scale", "std_offset", "envelope_scale", "envelope_offset")


def _finite_array(ds: xr.Dataset, name: str, where: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """``ds[name]`` as float64, after checking it exists, is numeric, has ``shape`` and is finite."""
    if name not in ds.variables:
        raise InputError(f"{where}: variable {name!r} is missing")
    var = ds[name]
    if shape is not None and tuple(var.shape) != shape:
        raise InputError(f"{where}: variable {name!r} has shape {tuple(var.shape)}, expected {shape}")
    if var.dtype.kind not in "fiu":
        raise InputError(f"{where}: variable {name!r} has data type {var.dtype}, expected numbers")
    values = np.asarray(var.values, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values.ravel()))
    if bad.size:
        at = tuple(int(i) for i in np.unravel_index(bad[0], values.shape))
        raise InputError(
            f"{where}: variable {name!r} has {bad.size} non-finite value(s), the first {values.flat[bad[0]]} at {at}"
        )
    return values


def _number(attrs: dict[str, Any], key: str, where: str, *, low: float, strict: bool, default: Any = None) -> float:
    """A finite real attribute ``key`` that is > ``low`` (``strict``) or >= ``low``."""
    if key not in attrs:
        if default is None:
            raise InputError(f"{where}: attribute {key!r} is missing")
        return float(default)
    value = attrs[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise InputError(f"{where}: attribute {key!r} = {value!r} is not a finite number")
    if float(value) < low or (strict and float(value) == low):
        raise InputError(f"{where}: attribute {key!r} = {value!r} must be {'>' if strict else '>='} {low:g}")
    return float(value)


def _integer(attrs: dict[str, Any], key: str, where: str) -> int:
    value = attrs.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise InputError(f"{where}: attribute {key!r} = {value!r} is not a non-negative integer")
    return int(value)


def _json_object(attrs: dict[str, Any], key: str, where: str, *, empty: str = "{}") -> dict[str, Any] | None:
    """The JSON object stored as text in attribute ``key`` (None when it is ``""``)."""
    text = attrs.get(key, empty)
    if text == "":
        return None
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise InputError(f"{where}: attribute {key!r} is not a JSON object ({str(text)[:60]!r})")
    return value


def _check_calibration(cal: dict[str, Any], where: str) -> None:
    """A :class:`popsdask.calibration.conformal.Calibration` dict: level in (0, 1), per-kind finite
    non-negative scales and finite offsets."""
    where = f"{where}: attribute 'calibration'"
    level = cal.get("level")
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0 < float(level) < 1:
        raise InputError(f"{where}: level {level!r} is not a number in (0, 1)")
    kinds = cal.get("kinds")
    if not isinstance(kinds, dict) or not isinstance(cal.get("method", ""), str):
        raise InputError(f"{where}: needs 'kinds' (a mapping) and 'method' (text)")
    for kind, scales in kinds.items():
        if not isinstance(scales, dict):
            raise InputError(f"{where}: kind {kind!r} is not a mapping of scales")
        for key in _SCALES:
            v = scales.get(key)
            ok = not isinstance(v, bool) and isinstance(v, numbers.Real) and math.isfinite(float(v))
            if not ok or (key.endswith("scale") and float(cast(float, v)) < 0):
                raise InputError(
                    f"{where}: {kind} {key} = {v!r} is not a finite {'non-negative ' * key.endswith('scale')}number"
                )


def check_posterior_dataset(ds: xr.Dataset, where: str) -> dict[str, Any]:
    """Check a saved posterior's arrays and attributes; return its checked values.

    Parameters
    ----------
    ds : the posterior's Zarr group opened with xarray (no chunk read yet)
    where : the store's path, for messages

    Returns
    -------
    dict with ``coef`` (P,), ``sigma`` and ``misspecification_sigma`` (P, P) and the checked
    hypercube ``basis`` (P, K), ``lower``, ``upper`` (K,) when present, and the attributes
    ``alpha``, ``lambda``, ``leverage_threshold``, ``n_rows``, ``n_selected``, ``n_iter``,
    ``condition_number``, ``settings``, ``provenance``, ``calibration``, and ``statistics``
    (pass 1's statistics: ``gram``, ``xty``, their scalars, ``fit_intercept`` and ``inputs``;
    None when the posterior holds none).

    Raises
    ------
    InputError
        Naming the store and the variable or attribute that is missing, mistyped, of the wrong
        shape, not finite or out of range.
    """
    a = ds.attrs
    coef = _finite_array(ds, "coef", where)
    if coef.ndim != 1 or coef.size == 0:
        raise InputError(f"{where}: variable 'coef' has shape {coef.shape}, expected (n_features,)")
    p = coef.size
    out: dict[str, Any] = {"coef": coef}
    for name in ("sigma", "misspecification_sigma"):
        out[name] = _finite_array(ds, name, where, (p, p))
    if any(k in ds.variables for k in ("basis", "lower", "upper")):
        basis = _finite_array(ds, "basis", where)
        if basis.ndim != 2 or basis.shape[0] != p:
            raise InputError(f"{where}: variable 'basis' has shape {basis.shape}, expected ({p}, n_modes)")
        k = basis.shape[1]
        lower, upper = (_finite_array(ds, n, where, (k,)) for n in ("lower", "upper"))
        if np.any(lower > upper):
            raise InputError(f"{where}: variables 'lower' > 'upper' at mode {int(np.argmax(lower > upper))}")
        out.update(basis=basis, lower=lower, upper=upper)
    if "corrections" in ds.variables and (ds["corrections"].ndim != 2 or ds["corrections"].shape[1] != p):
        raise InputError(f"{where}: variable 'corrections' has shape {ds['corrections'].shape}, expected (n, {p})")
    if "feature_name" in ds.variables and ds["feature_name"].shape != (p,):
        raise InputError(f"{where}: coordinate 'feature_name' has shape {ds['feature_name'].shape}, expected ({p},)")
    out["alpha"] = _number(a, "alpha", where, low=0.0, strict=True)
    out["lambda"] = _number(a, "lambda", where, low=0.0, strict=True)
    out["leverage_threshold"] = _number(a, "leverage_threshold", where, low=0.0, strict=False, default=0.0)
    out["condition_number"] = _number(a, "condition_number", where, low=-1.0, strict=False, default=-1.0)
    for key in ("n_rows", "n_selected", "n_iter"):
        out[key] = _integer(a, key, where)
    out["settings"] = _json_object(a, "settings", where)
    out["provenance"] = _json_object(a, "provenance", where)
    out["calibration"] = _json_object(a, "calibration", where, empty="")
    if out["calibration"] is not None:
        _check_calibration(out["calibration"], where)
    out["statistics"] = _check_statistics(ds, where, p, out["n_rows"])
    return out


#: the scalars of pass 1's statistics and their lower bounds (None: any finite number)
_STATISTICS_SCALARS = {"yty": 0.0, "sw": 0.0, "y_mean": None, "y_m2": 0.0}


def _check_statistics(ds: xr.Dataset, where: str, p: int, n_rows: int) -> dict[str, Any] | None:
    """Pass 1's stored statistics (variables ``statistics_gram`` (P, P) and ``statistics_xty``
    (P,), attribute ``statistics``): all three or none, finite, the Gram symmetric with a
    non-negative diagonal, Σw > 0, and input records whose rows add up to ``n_rows``."""
    names = ("statistics_gram", "statistics_xty")
    present = [n in ds.variables for n in names] + ["statistics" in ds.attrs]
    if not any(present):
        return None
    if not all(present):
        missing = [n for n, ok in zip((*names, "attribute statistics"), present, strict=True) if not ok]
        raise InputError(f"{where}: pass-1 statistics are incomplete: {missing[0]!r} is missing")
    gram = _finite_array(ds, "statistics_gram", where, (p, p))
    if np.any(np.diagonal(gram) < 0) or not np.allclose(gram, gram.T, rtol=1e-12, atol=0):
        raise InputError(f"{where}: variable 'statistics_gram' is not a Gram matrix (asymmetric or negative diagonal)")
    out: dict[str, Any] = {"gram": gram, "xty": _finite_array(ds, "statistics_xty", where, (p,))}
    record = _json_object(ds.attrs, "statistics", where)
    assert record is not None
    where_attr = f"{where}: attribute 'statistics'"
    for key, low in _STATISTICS_SCALARS.items():
        out[key] = _number(record, key, where_attr, low=-math.inf if low is None else low, strict=key == "sw")
    if record.get("n_rows") != n_rows or isinstance(record.get("n_rows"), bool):
        raise InputError(f"{where_attr}: n_rows = {record.get('n_rows')!r}, the posterior's n_rows is {n_rows}")
    out["n_rows"] = n_rows
    if not isinstance(record.get("fit_intercept"), bool):
        raise InputError(f"{where_attr}: fit_intercept = {record.get('fit_intercept')!r} is not true or false")
    out["fit_intercept"] = record["fit_intercept"]
    out["inputs"] = _check_inputs(record.get("inputs"), where_attr, p, n_rows)
    return out


def _check_inputs(inputs: Any, where: str, p: int, n_rows: int) -> list[dict[str, str]]:
    """Input records (``checkpoint.design_fingerprint``): texts, with shapes of P columns whose
    rows add up to ``n_rows``."""
    if not isinstance(inputs, list) or not inputs:
        raise InputError(f"{where}: 'inputs' is not a non-empty list of input records")
    rows = 0
    for i, rec in enumerate(inputs):
        if not isinstance(rec, dict) or not all(isinstance(v, str) for v in rec.values()) or "source" not in rec:
            raise InputError(f"{where}: input {i} is not a record of texts with a 'source'")
        try:
            n, cols = (int(s) for s in str(rec.get("shape")).split(" x "))
        except ValueError:
            raise InputError(f"{where}: input {i} has shape {rec.get('shape')!r}, expected 'ROWS x {p}'") from None
        if cols != p or n <= 0:
            raise InputError(f"{where}: input {i} has shape {rec['shape']!r}, expected 'ROWS x {p}'")
        rows += n
    if rows != n_rows:
        raise InputError(f"{where}: its inputs hold {rows} rows, the posterior's n_rows is {n_rows}")
    return inputs


def check_prediction_dataset(ds: xr.Dataset, where: str) -> None:
    """Check a prediction store's summaries and its ``metrics`` before they are read.

    The row variables (``mle``, ``std``, ``min``, ``max``, ...) must share the first dimension and
    be numeric; ``metrics`` and ``metrics_raw``, when present, must be JSON objects holding, for
    every kind the store names, the numbers a report reads. Row values are not read here (a
    store may hold 10⁸ rows): the metrics computed when it was written speak for them.

    Raises
    ------
    InputError
        Naming the store and the variable or attribute.
    """
    if "mle" not in ds.variables:
        raise InputError(f"{where}: variable 'mle' is missing (not a prediction store?)")
    n = ds["mle"].shape[:1]
    for name in ("y", "mle", "mean", "std", "min", "max", "box_min", "box_max"):
        if name in ds.variables:
            var = ds[name]
            if var.dtype.kind not in "fiu" or var.shape[:1] != n:
                raise InputError(
                    f"{where}: variable {name!r} ({var.dtype}, shape {var.shape}) does not match 'mle' {n}"
                )
    kinds = [str(k) for k in ds["kind_name"].values] if "kind_name" in ds.variables else []
    for key in ("metrics", "metrics_raw"):
        if key not in ds.attrs:
            continue
        metrics = _json_object(ds.attrs, key, where)
        assert metrics is not None
        for kind in kinds or list(metrics):
            m = metrics.get(kind)
            if not isinstance(m, dict):
                raise InputError(f"{where}: attribute {key!r} has no metrics of kind {kind!r}")
            for name in ("mae_mle", "envelope_violation"):
                v = m.get(name)
                if isinstance(v, bool) or not isinstance(v, numbers.Real):
                    raise InputError(f"{where}: attribute {key!r}: {kind} {name} = {v!r} is not a number")
