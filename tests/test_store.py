"""Descriptor stores: round trip, validation, bad input, untrusted content."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest

from popsdask import InputError, fit, open_store, write_store
from popsdask.ensemble import predict_ensemble

from .conftest import misspecified


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
