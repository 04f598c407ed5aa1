"""fit and predict on the threaded scheduler and on a LocalCluster (the same bits), and the choice for small stores."""

from __future__ import annotations

import json

import numpy as np
import xarray as xr

from popsdask import write_store
from popsdask.cli import main
from tests.conftest import misspecified

LOCAL = ["--cluster", "local", "--n-workers", "2", "--threads-per-worker", "1", "--quiet"]
THREADS = ["--cluster", "threads", "--quiet"]


def _arrays(path) -> dict[str, np.ndarray]:
    with xr.open_zarr(path, consolidated=False) as ds:
        return {name: ds[name].values for name in ds.variables}


def _assert_same_bits(a, b, skip_attrs: tuple[str, ...] = ()) -> None:
    left, right = _arrays(a), _arrays(b)
    assert sorted(left) == sorted(right)
    for name, value in left.items():
        np.testing.assert_array_equal(value, right[name], err_msg=name, strict=True)
    with xr.open_zarr(a, consolidated=False) as da_, xr.open_zarr(b, consolidated=False) as db_:
        assert {k: v for k, v in da_.attrs.items() if k not in skip_attrs} == {
            k: v for k, v in db_.attrs.items() if k not in skip_attrs
        }


def test_threads_and_local_cluster_give_the_same_fit_and_predictions(tmp_path):
    X, y, w = misspecified(6000, 8, seed=41)
    write_store(tmp_path / "train.zarr", X[:5000], y[:5000], weight=w[:5000], chunk_rows=700)
    write_store(tmp_path / "test.zarr", X[5000:], y[5000:], chunk_rows=300)
    for name, options in (("threads", THREADS), ("local", LOCAL)):
        post, pred = tmp_path / f"post-{name}.zarr", tmp_path / f"pred-{name}.zarr"
        assert main(["fit", str(tmp_path / "train.zarr"), "-o", str(post), *options]) == 0
        # each scheduler predicts from the threads' posterior, so that predict is compared alone
        source = tmp_path / "post-threads.zarr"
        assert (
            main(["predict", str(source), str(tmp_path / "test.zarr"), "-o", str(pred), "--n-samples", "64", *options])
            == 0
        )
    with xr.open_zarr(tmp_path / "post-threads.zarr", consolidated=False) as ds:
        provenance = json.loads(ds.attrs["provenance"])
    assert provenance["input"].endswith("train.zarr")
    _assert_same_bits(tmp_path / "post-threads.zarr", tmp_path / "post-local.zarr", skip_attrs=("provenance",))
    _assert_same_bits(tmp_path / "pred-threads.zarr", tmp_path / "pred-local.zarr")


def test_a_small_store_runs_without_a_cluster_unless_one_is_sized(tmp_path, capsys):
    X, y, _ = misspecified(2000, 5, seed=42)
    write_store(tmp_path / "s.zarr", X, y, chunk_rows=500)
    assert main(["fit", str(tmp_path / "s.zarr"), "-o", str(tmp_path / "p.zarr")]) == 0
    err = capsys.readouterr().err
    assert "Dask threaded scheduler" in err and "LocalCluster" not in err
    sized = ["--n-workers", "1", "--threads-per-worker", "1"]
    assert main(["fit", str(tmp_path / "s.zarr"), "-o", str(tmp_path / "q.zarr"), *sized]) == 0
    err = capsys.readouterr().err
    assert "LocalCluster" in err and "threaded" not in err
