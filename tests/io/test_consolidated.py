"""Every store popsdask writes carries consolidated metadata: plain ``xarray.open_zarr`` opens it without a warning."""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

from popsdask import fit, predict_ensemble, write_store
from popsdask.properties.results import write_results
from tests.conftest import misspecified


def _open_plainly(path) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return xr.open_zarr(path).load()


def _assert_same_as_unconsolidated(path) -> None:
    plain = _open_plainly(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fixed-width strings: no Zarr v3 specification yet
        direct = xr.open_zarr(path, consolidated=False).load()
    assert sorted(plain.variables) == sorted(direct.variables)
    for name in direct.variables:
        assert plain[name].dtype == direct[name].dtype, name
        np.testing.assert_array_equal(plain[name].values, direct[name].values, err_msg=name)
        assert plain[name].attrs == direct[name].attrs, name
    assert plain.attrs == direct.attrs


def test_descriptor_posterior_prediction_and_result_stores_open_without_a_warning(tmp_path):
    X, y, w = misspecified(1500, 4, seed=7)
    write_store(tmp_path / "train.zarr", X[:1200], y[:1200], weight=w[:1200], chunk_rows=400)
    write_store(tmp_path / "test.zarr", X[1200:], y[1200:], chunk_rows=100)
    post = fit(tmp_path / "train.zarr")
    post.save(tmp_path / "post.zarr")
    predict_ensemble(post, tmp_path / "test.zarr", tmp_path / "pred.zarr", n_samples=16)
    result = xr.Dataset(
        {"value": ("member", np.arange(3.0)), "label": ("member", np.array(["mle", "m1", "m2"]))},
        attrs={"property": "demo", "units": "eV"},
    )
    write_results(result, tmp_path / "result.zarr")
    for name in ("train.zarr", "test.zarr", "post.zarr", "pred.zarr", "result.zarr"):
        _assert_same_as_unconsolidated(tmp_path / name)


def test_checkpoint_groups_are_consolidated_without_a_warning(tmp_path):
    """A fit's checkpoint groups also hold plain files (.npz); consolidating them warns about none."""
    X, y, _ = misspecified(800, 4, seed=8)
    write_store(tmp_path / "s.zarr", X, y, chunk_rows=200)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tmp_path / "s.zarr", checkpoint=tmp_path / "ck")
    assert not [w for w in caught if "Zarr" in str(w.message)], [str(w.message) for w in caught]
    assert any((tmp_path / "ck").iterdir())


def test_string_variables_are_written_without_a_warning(tmp_path):
    """Names and groups are fixed-length strings, which zarr 3 warns about on every write: a
    user building a store sees no such warning."""
    X, y, _ = misspecified(40, 3, seed=9)
    names = np.array([f"config-{i}" for i in range(40)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_store(tmp_path / "s.zarr", X, y, configurations={"name": names}, chunk_rows=16)
    assert not [w for w in caught if "Zarr" in str(w.message)], [str(w.message) for w in caught]
    _assert_same_as_unconsolidated(tmp_path / "s.zarr")
