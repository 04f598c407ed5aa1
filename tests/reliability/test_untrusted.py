"""Untrusted stores: opening reads JSON metadata only, never runs code or unpickles.

A store whose array names a pickle codec carries a real malicious pickle as its chunk (it would
create a file when unpickled); every reader refuses the store with a message naming the codec,
and the file is never created. Object/variable-length data types and Zarr v2 groups are refused.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from popsdask import InputError, Posterior, fit, open_store, write_store
from popsdask.engine.predictions import open_predictions, predict_ensemble

from tests.conftest import misspecified


class Payload:
    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def _poison(group: Path, array: str, sentinel: Path) -> None:
    meta = group / array / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["codecs"] = [{"name": "numcodecs.pickle", "configuration": {"protocol": 5}}]
    meta.write_text(json.dumps(doc))
    for chunk in (group / array / "c").rglob("*"):
        if chunk.is_file():
            chunk.write_bytes(pickle.dumps(Payload(sentinel)))


@pytest.fixture
def written(tmp_path):
    X, y, w = misspecified(600, 3, seed=111)
    store = write_store(tmp_path / "s.zarr", X, y, weight=w, chunk_rows=200)
    post = fit(store)
    post_path = post.save(tmp_path / "post.zarr")
    pred = tmp_path / "pred.zarr"
    predict_ensemble(post, store, pred, n_samples=20)
    return {
        "store": (store, "X", open_store),
        "posterior": (post_path, "coef", Posterior.load),
        "predictions": (pred, "prediction", open_predictions),
    }


@pytest.mark.parametrize("kind", ["store", "posterior", "predictions"])
def test_pickle_codec_is_refused_and_never_executed(written, tmp_path, kind):
    path, array, reader = written[kind]
    sentinel = tmp_path / "pwned"
    _poison(path, array, sentinel)
    with pytest.raises(InputError, match=r"codec 'numcodecs.pickle' is not allowed"):
        reader(path)
    assert not sentinel.exists()


@pytest.mark.parametrize("kind", ["store", "posterior", "predictions"])
@pytest.mark.parametrize("dtype", ["object", "string", "variable_length_utf8", "complex128"])
def test_object_and_variable_length_types_are_refused(written, kind, dtype):
    path, array, reader = written[kind]
    meta = path / array / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["data_type"] = dtype
    meta.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=rf"data type '{dtype}' is not allowed"):
        reader(path)


def test_zarr_v2_and_garbage_metadata_are_refused(tmp_path):
    v2 = tmp_path / "v2.zarr"
    v2.mkdir()
    (v2 / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    with pytest.raises(InputError, match="not a Zarr v3 group"):
        open_store(v2)
    X, y, _ = misspecified(100, 2)
    path = write_store(tmp_path / "s.zarr", X, y)
    (path / "y" / "zarr.json").write_text("{not json")
    with pytest.raises(InputError, match="unreadable metadata"):
        open_store(path)
    assert np.isfinite(X).all()
