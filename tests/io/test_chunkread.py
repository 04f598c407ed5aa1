"""Direct reads of uncompressed Zarr chunks agree with zarr's own reader, or are not used."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from popsdask import InputError, fit, open_store, write_store
from popsdask.io.chunkread import raw_layout
from tests.conftest import misspecified


def _uses_raw_reader(ds) -> bool:
    return any(str(k).startswith("raw-chunks-") for k in ds["X"].data.__dask_graph__().layers)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_raw_chunks_equal_zarr_and_give_the_same_fit(tmp_path, dtype):
    X, y, w = misspecified(1000, 6)  # 1000 rows in chunks of 128: a partial last chunk
    path = write_store(tmp_path / "s.zarr", X.astype(dtype), y, weight=w, chunk_rows=128)
    layout = raw_layout(path / "X")
    assert layout is not None and layout.chunk_shape == (128, 6) and layout.shape == (1000, 6)
    ds = open_store(path)
    assert _uses_raw_reader(ds) and ds["X"].data.chunks == ((128,) * 7 + (104,), (6,))
    np.testing.assert_array_equal(ds["X"].values, zarr.open_array(str(path / "X"), mode="r")[:])
    a = fit(path)
    b = fit(X.astype(dtype), y, weight=w, chunk_rows=128)
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-12)
    np.testing.assert_allclose(a.misspecification_sigma_, b.misspecification_sigma_, rtol=1e-10, atol=1e-30)


def test_compressed_store_keeps_zarrs_reader(tmp_path):
    X, y, _ = misspecified(300, 4)
    path = write_store(tmp_path / "c.zarr", X, y, chunk_rows=100, compress_X=True)
    assert raw_layout(path / "X") is None
    ds = open_store(path)
    assert not _uses_raw_reader(ds)
    np.testing.assert_array_equal(ds["X"].values, X)


def test_truncated_chunk_file_is_named(tmp_path):
    X, y, _ = misspecified(300, 4)
    path = write_store(tmp_path / "t.zarr", X, y, chunk_rows=100)
    chunk = path / "X" / "c" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-8])
    with pytest.raises(InputError, match=r"X/c/1/0: 399 values in chunk 1, expected 100 × 4 = 400"):
        fit(path)


def test_missing_chunk_reads_as_fill_value_and_is_refused_with_its_rows(tmp_path):
    X, y, _ = misspecified(300, 4)
    path = write_store(tmp_path / "m.zarr", X, y, chunk_rows=100)
    (path / "X" / "c" / "2" / "0").unlink()
    ds = open_store(path)
    np.testing.assert_array_equal(ds["X"].values, zarr.open_array(str(path / "X"), mode="r")[:])
    assert np.isnan(ds["X"].values[200:]).all()
    with pytest.raises(InputError, match=r"X has a non-finite value nan at row 200"):
        fit(path)


def test_fit_passes_read_chunks_inside_their_tasks(tmp_path):
    from popsdask.engine.design import design_from
    from popsdask.io.chunkread import ChunkRef

    X, y, w = misspecified(500, 4)
    path = write_store(tmp_path / "f.zarr", X.astype(np.float32), y, weight=w, chunk_rows=100)
    blocks = design_from(path).blocks()
    assert len(blocks) == 5 and all(isinstance(b, ChunkRef) for row in blocks for b in row)
    np.testing.assert_array_equal(blocks[4][0].load(), X[400:].astype(np.float32))
    np.testing.assert_array_equal(blocks[4][2].load(), w[400:])
    # an intercept column makes X a derived array: its blocks come from the dask graph instead
    derived = design_from(path, fit_intercept=True).blocks()
    assert not isinstance(derived[0][0], ChunkRef) and isinstance(derived[0][1], ChunkRef)
