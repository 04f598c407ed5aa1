"""``Parts``: a store's columns stacked in its own chunks from parts of any size, on the threaded
scheduler, equal to the parts concatenated."""

from __future__ import annotations

import numpy as np

from popsdask.engine.parts import Parts, read_npz


def _parts(tmp_path, sizes):
    rng = np.random.default_rng(0)
    files, whole = [], {"X": [], "y": []}
    for i, n in enumerate(sizes):
        cols = {"X": rng.normal(size=(n, 3)), "y": rng.normal(size=n)}
        np.savez(tmp_path / f"p{i}.npz", **cols)
        files.append(str(tmp_path / f"p{i}.npz"))
        for k in whole:
            whole[k].append(cols[k])
    return Parts(files, read_npz), {k: np.concatenate(v) for k, v in whole.items()}


def _scaled(cols, factor):
    return cols["y"] * factor


def test_stacked_in_store_chunks_across_part_boundaries(tmp_path) -> None:
    sizes = [5, 0, 3, 11, 1, 0, 4]  # empty parts, and chunks of 7 that start and end mid-part
    parts, whole = _parts(tmp_path, sizes)
    X = parts.stacked(sizes, 7, ("X",), width=3)
    assert X.chunks == ((7, 7, 7, 3), (3,))
    np.testing.assert_array_equal(X.compute(scheduler="threads"), whole["X"])
    y = parts.stacked(sizes, 7, ("y",), dtype=np.float32)
    assert y.dtype == np.float32 and y.compute().dtype == np.float32
    np.testing.assert_array_equal(y.compute(), whole["y"].astype(np.float32))
    # a function of each part's columns, with that part's own arguments
    scaled = parts.stacked(sizes, 4, ("y",), _scaled, [(i,) for i in range(len(sizes))]).compute()
    np.testing.assert_array_equal(scaled, np.concatenate([np.full(n, i) for i, n in enumerate(sizes)]) * whole["y"])
    per_part = parts.gather(("y",), _scaled, [(1.0,)] * len(sizes), parts_per_task=3)
    assert [len(p) for p in per_part] == sizes
    cat, n = parts.columns(("y", "X"))
    assert n == sizes
    np.testing.assert_array_equal(cat["X"], whole["X"])
