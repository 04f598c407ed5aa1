"""Descriptor stores: round trip, validation, bad input, untrusted content."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest

from popsdask import InputError, fit, open_store, write_store
from popsdask.engine.predictions import predict_ensemble
from tests.conftest import misspecified


def test_round_trip_with_coordinates(tmp_path):
    X, y, w = misspecified(700, 4)
    kind = np.array(["energy"] + ["force"] * 6).repeat(1)
    kind = np.tile(kind, 100)
    path = write_store(
        tmp_path / "s.zarr",
        X.astype(np.float32),
        y,
        weight=w,
        config=np.repeat(np.arange(100), 7),
        kind=kind,
        atom=np.tile(np.r_[-1, 0, 0, 0, 1, 1, 1], 100),
        component=np.tile(np.r_[-1, 0, 1, 2, 0, 1, 2], 100),
        configurations={"name": np.array([f"cfg{i}" for i in range(100)]), "n_atoms": np.full(100, 2)},
        attrs={"twojmax": 6, "quadratic": True},
        chunk_rows=128,
    )
    ds = open_store(path)
    assert ds["X"].dtype == np.float32 and ds["X"].dims == ("row", "feature")
    assert ds["X"].data.chunks[0][0] == 128 and len(ds["X"].data.chunks[1]) == 1
    np.testing.assert_array_equal(ds["X"].values, X.astype(np.float32))
    np.testing.assert_array_equal(ds["weight"].values, w)
    assert ds["kind"].values[:7].tolist() == [0, 1, 1, 1, 1, 1, 1]
    assert ds["name"].values[3] == "cfg3" and ds.sizes["configuration"] == 100
    assert ds.attrs["twojmax"] == 6 and ds.attrs["popsdask_complete"] is True


@pytest.mark.parametrize(
    "variable, mutate, message",
    [
        (
            "X",
            lambda X, y, w: X.__setitem__((1234, 2), np.nan),
            r"X has a non-finite value nan at row 1234 \(chunk rows 1000:1500\)",
        ),
        ("y", lambda X, y, w: y.__setitem__(17, np.inf), r"y has a non-finite value inf at row 17"),
        ("weight", lambda X, y, w: w.__setitem__(2999, -1.0), r"weight has a negative value -1.0 at row 2999"),
    ],
)
def test_bad_values_name_variable_and_rows_and_write_nothing(tmp_path, variable, mutate, message):
    X, y, w = misspecified(3000, 5)
    mutate(X, y, w)
    target = tmp_path / "bad.zarr"
    with pytest.raises(InputError, match=message):
        write_store(target, da.from_array(X, chunks=(500, 5)), y, weight=w, chunk_rows=500)
    assert list(tmp_path.iterdir()) == []  # no partial store, no staging directory


def test_fit_refuses_bad_arrays_with_location():
    X, y, w = misspecified(3000, 5)
    X[2100, 0] = np.inf
    with pytest.raises(InputError, match=r"X has a non-finite value inf at row 2100 \(chunk rows 2000:2500\)"):
        fit(X, y, chunk_rows=500)
    X, y, w = misspecified(3000, 5)
    with pytest.raises(InputError, match="weight has a negative value"):
        fit(X, y, weight=-w, chunk_rows=500)
    with pytest.raises(InputError, match="all weights are zero"):
        fit(X, y, weight=np.zeros_like(w))
    with pytest.raises(InputError, match=r"y has shape \(2999,\), X has 3000 rows"):
        fit(X, y[:-1])
    with pytest.raises(InputError, match="non-numeric dtype"):
        fit(X.astype(str), y)
    with pytest.raises(InputError, match="empty"):
        fit(np.empty((0, 5)), np.empty(0))


def test_incomplete_or_missing_store_is_refused(tmp_path):
    X, y, _ = misspecified(500, 3)
    path = write_store(tmp_path / "s.zarr", X, y)
    meta = path / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["popsdask_complete"] = False
    meta.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="not marked complete"):
        open_store(path)
    with pytest.raises(InputError, match="no such store"):
        open_store(tmp_path / "missing.zarr")


def test_untrusted_codec_is_refused_without_decoding(tmp_path):
    X, y, _ = misspecified(500, 3)
    path = write_store(tmp_path / "s.zarr", X, y)
    meta = path / "X" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["codecs"].append({"name": "numcodecs.pickle", "configuration": {}})
    meta.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="codec 'numcodecs.pickle' is not allowed"):
        open_store(path)


def test_existing_store_is_not_overwritten_by_default(tmp_path):
    X, y, _ = misspecified(300, 3)
    write_store(tmp_path / "s.zarr", X, y)
    with pytest.raises(FileExistsError):
        write_store(tmp_path / "s.zarr", X, y)
    write_store(tmp_path / "s.zarr", X[:100], y[:100], overwrite=True)
    assert open_store(tmp_path / "s.zarr").sizes["row"] == 100


def test_prediction_store_feature_mismatch(tmp_path):
    X, y, _ = misspecified(2000, 6)
    post = fit(X, y)
    write_store(tmp_path / "p.zarr", X[:, :5], y)
    with pytest.raises(InputError, match="5 features, but the posterior has 6 parameters"):
        predict_ensemble(post, tmp_path / "p.zarr", tmp_path / "out.zarr")
    assert not (tmp_path / "out.zarr").exists()


# ---------------------------------------------------------------- stores from other Zarr writers
def _raw(ds, name: str = "X") -> bool:
    return any(str(k).startswith("raw-chunks-") for k in ds[name].data.__dask_graph__().layers)


def _foreign(path, X, y, w=None, *, chunk_rows: int = 300, encoding=None, coords=True):
    """A descriptor store written by plain xarray (no popsdask attributes at all)."""
    import xarray as xr

    n = X.shape[0]
    data = {"X": (("row", "feature"), X), "y": (("row",), y)}
    if w is not None:
        data["weight"] = (("row",), w)
    c = {"config": (("row",), np.arange(n) // 4), "kind": (("row",), (np.arange(n) % 4 != 0).astype(np.int8))}
    ds = xr.Dataset(data, coords=c if coords else None).chunk({"row": chunk_rows})
    ds.to_zarr(path, zarr_format=3, encoding=encoding)  # xarray's defaults: zstd, consolidated
    return path


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_store_from_plain_xarray_fits_like_write_store(tmp_path, dtype):
    X, y, w = misspecified(3000, 6, seed=5)
    X = X.astype(dtype)
    ours = write_store(tmp_path / "ours.zarr", X, y, weight=w, chunk_rows=300)
    theirs = _foreign(tmp_path / "theirs.zarr", X, y, w)
    ds = open_store(theirs)
    assert ds["X"].dtype == dtype and ds["X"].data.chunks[0][0] == 300
    assert not _raw(ds)  # zstd-compressed chunks: zarr's reader, not the raw-file path
    np.testing.assert_array_equal(ds["X"].values, X)
    a, b = fit(ours), fit(theirs)
    np.testing.assert_allclose(b.coef_, a.coef_, rtol=1e-12, atol=0)
    np.testing.assert_allclose(b.misspecification_sigma_, a.misspecification_sigma_, rtol=1e-10, atol=1e-30)
    assert (a.alpha_, a.n_selected_) == pytest.approx((b.alpha_, b.n_selected_), rel=1e-12)
    pa = predict_ensemble(a, ours, tmp_path / "pa.zarr", n_samples=16)
    pb = predict_ensemble(b, theirs, tmp_path / "pb.zarr", n_samples=16)
    np.testing.assert_allclose(pb["prediction"].values, pa["prediction"].values, rtol=1e-10, atol=1e-12)
    assert json.loads(pb.attrs["metrics"]).keys() == {"energy", "force"}  # kind coordinate used


def test_uncompressed_foreign_store_uses_the_raw_reader_unless_values_are_packed(tmp_path):
    X, y, w = misspecified(1000, 4, seed=6)
    plain = {"compressors": None}
    path = _foreign(tmp_path / "raw.zarr", X, y, w, encoding={"X": plain, "y": plain, "weight": plain})
    ds = open_store(path)
    assert _raw(ds) and _raw(ds, "y")
    np.testing.assert_array_equal(ds["X"].values, X)
    np.testing.assert_allclose(fit(path).coef_, fit(X, y, weight=w, chunk_rows=300).coef_, rtol=1e-12)
    # CF packing / a mask value other than NaN: the raw bytes are not the values, keep xarray's decoder
    enc = {"X": {**plain, "scale_factor": 0.5}, "y": {**plain, "_FillValue": -1.0}}
    ds = open_store(_foreign(tmp_path / "packed.zarr", X, y, encoding=enc))
    assert not _raw(ds) and not _raw(ds, "y")
    np.testing.assert_allclose(ds["X"].values, X, rtol=1e-15)


def test_store_from_plain_zarr_without_dimension_names(tmp_path):
    import zarr

    X, y, w = misspecified(900, 3, seed=7)
    g = zarr.open_group(str(tmp_path / "z.zarr"), mode="w", zarr_format=3)
    for name, value in (("X", X), ("y", y), ("weight", w)):
        a = g.create_array(name, shape=value.shape, chunks=(200,) + value.shape[1:], dtype=value.dtype)
        a[:] = value
    ds = open_store(tmp_path / "z.zarr")
    assert ds["X"].dims == ("row", "feature") and ds["weight"].dims == ("row",)
    np.testing.assert_allclose(fit(tmp_path / "z.zarr").coef_, fit(X, y, weight=w).coef_, rtol=1e-12)


def test_only_unfinished_popsdask_writes_are_refused_naming_the_cause(tmp_path):
    X, y, _ = misspecified(300, 3)
    path = write_store(tmp_path / "s.zarr", X, y)
    staging = tmp_path / ".s.zarr.partial-0123abcd"
    import shutil

    shutil.copytree(path, staging)
    with pytest.raises(InputError, match=r"staging directory of a popsdask write that did not finish"):
        open_store(staging)
    meta = path / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["popsdask_complete"] = False
    meta.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"popsdask_complete attribute is false.*started it and did not finish"):
        open_store(path)
    del doc["attributes"]["popsdask_complete"]  # no popsdask mark at all: another tool's store
    meta.write_text(json.dumps(doc))
    assert open_store(path).sizes["row"] == 300


def test_zarr_v2_store_gets_a_conversion_hint(tmp_path):
    import xarray as xr

    X, y, _ = misspecified(100, 2)
    xr.Dataset({"X": (("row", "feature"), X), "y": (("row",), y)}).to_zarr(tmp_path / "v2.zarr", zarr_format=2)
    with pytest.raises(InputError, match=r"a Zarr v2 group, not a Zarr v3 group; convert it with .*zarr_format=3") as e:
        open_store(tmp_path / "v2.zarr")
    assert "\n" not in str(e.value)


def test_foreign_store_with_wrong_dimensions_or_lengths_is_named(tmp_path):
    import xarray as xr

    X, y, _ = misspecified(100, 2)
    xr.Dataset({"X": (("sample", "descriptor"), X), "y": (("sample",), y)}).to_zarr(tmp_path / "d.zarr")
    with pytest.raises(InputError, match=r"d.zarr/X: dims \('sample', 'descriptor'\), expected \('row', 'feature'\)"):
        open_store(tmp_path / "d.zarr")
    import zarr

    g = zarr.open_group(str(tmp_path / "n.zarr"), mode="w", zarr_format=3)
    g.create_array("X", shape=(100, 2), dtype="f8", dimension_names=("row", "feature"))[:] = X
    g.create_array("y", shape=(99,), dtype="f8", dimension_names=("row",))[:] = y[:99]
    with pytest.raises(InputError, match=r"n.zarr: xarray cannot open the group: .*row"):
        open_store(tmp_path / "n.zarr")
