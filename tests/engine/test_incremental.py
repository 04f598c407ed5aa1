"""Adding rows to a fit: pass 1 reads only the new store, and the result is the fit of all rows
from scratch (a store holding the concatenated rows), to 1e-10."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from dask.callbacks import Callback
from dask.utils import key_split

from popsdask import InputError, Posterior, fit, write_store
from popsdask.engine.design import design_from
from popsdask.engine.fit import fit_pops_with_evidence
from tests.conftest import misspecified

N_OLD, N_NEW, N_MORE, P = 2400, 900, 500, 7
CHUNKS = {"old": 400, "new": 300, "more": 125, "all": 700}  # different chunkings: reduction orders differ


class Tasks(Callback):
    """Tasks run on the local scheduler, by the function in their key."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def _pretask(self, key, dsk, state) -> None:
        self.counts[key_split(key).lstrip("_")] += 1


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """old, new and more (three row ranges; ``new`` without weights: each weighs 1) and ``all``,
    their rows in one store, as a from-scratch fit sees them."""
    d = tmp_path_factory.mktemp("incremental")
    X, y, w = misspecified(N_OLD + N_NEW + N_MORE, P, seed=41)
    ranges = {"old": slice(0, N_OLD), "new": slice(N_OLD, N_OLD + N_NEW), "more": slice(N_OLD + N_NEW, None)}
    w = w.copy()
    w[ranges["new"]] = 1.0
    attrs = {"descriptor": {"backend": "test", "settings": {"twojmax": 4}}}
    out = {
        name: write_store(
            d / f"{name}.zarr",
            X[rows],
            y[rows],
            weight=None if name == "new" else w[rows],
            chunk_rows=CHUNKS[name],
            attrs=attrs,
        )
        for name, rows in ranges.items()
    }
    out["all"] = write_store(d / "all.zarr", X, y, weight=w, chunk_rows=CHUNKS["all"], attrs=attrs)
    first_two = slice(0, N_OLD + N_NEW)
    out["first two"] = write_store(d / "first-two.zarr", X[first_two], y[first_two], weight=w[first_two], attrs=attrs)
    return out


def _close(a, b, what: str) -> None:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape, what
    scale = max(float(np.max(np.abs(b), initial=0.0)), 1e-300)
    assert np.max(np.abs(a - b), initial=0.0) <= 1e-10 * scale, (what, np.max(np.abs(a - b)) / scale)


def _same_posterior(post: Posterior, ref: Posterior) -> None:
    for name in ("coef_", "sigma_", "misspecification_sigma_", "lower_", "upper_", "basis_"):
        if getattr(ref, name) is not None:
            _close(getattr(post, name), getattr(ref, name), name)
    if ref.corrections_ is not None:
        _close(post.corrections_.compute(), ref.corrections_.compute(), "corrections_")
    for name in ("alpha_", "lambda_", "leverage_threshold_"):
        _close(getattr(post, name), getattr(ref, name), name)
    assert (post.n_rows_, post.n_selected_) == (ref.n_rows_, ref.n_selected_)
    _close(post.fitted_rows_.stats.gram, ref.fitted_rows_.stats.gram, "stored Gram")


@pytest.fixture(scope="module")
def old_posterior(stores, tmp_path_factory) -> Path:
    return fit(stores["old"]).save(tmp_path_factory.mktemp("posteriors") / "old.zarr")


@pytest.mark.parametrize(
    "settings",
    [{}, {"posterior": "ensemble"}, {"leverage_percentile": 0.0, "minimum_relative_error": 0.01}],
    ids=["hypercube", "ensemble", "relative-error"],
)
def test_added_rows_give_the_fit_of_all_rows_and_pass_1_reads_only_them(stores, old_posterior, settings):
    with Tasks() as tasks:
        post = fit(stores["new"], previous=old_posterior, **settings)
    reference = fit(stores["first two"], **settings)
    _same_posterior(post, reference)
    # pass 1 ran once per chunk of the new store only; pass 2 once per chunk of both stores
    assert tasks.counts["stats_and_checksum"] == N_NEW // CHUNKS["new"]
    assert tasks.counts["block_leverage"] == N_OLD // CHUNKS["old"] + N_NEW // CHUNKS["new"]
    assert post.provenance["rows read"] == {"pass 1": N_NEW, "passes 2-4": N_OLD + N_NEW}
    assert reference.provenance["rows read"] == {"pass 1": N_OLD + N_NEW, "passes 2-4": N_OLD + N_NEW}


def test_rows_added_twice_through_saved_posteriors_give_the_fit_of_all_rows(stores, old_posterior, tmp_path):
    middle = fit(stores["new"], previous=old_posterior).save(tmp_path / "middle.zarr")
    loaded = Posterior.load(middle)
    assert [Path(r["source"]).name for r in loaded.fitted_rows_.inputs] == ["old.zarr", "new.zarr"]
    design = design_from(stores["more"])
    post, _ = fit_pops_with_evidence(design, previous=middle)
    _same_posterior(post, fit(stores["all"]))
    assert post.provenance["rows read"]["pass 1"] == N_MORE
    # the two-store posterior is itself the fit of its rows from scratch
    _same_posterior(loaded, fit(stores["first two"]))


def test_an_added_fit_resumes_from_its_checkpoint(stores, old_posterior, tmp_path):
    checkpoint = tmp_path / "ckpt"
    first = fit(stores["new"], previous=old_posterior, checkpoint=checkpoint)
    with Tasks() as tasks:
        again = fit(stores["new"], previous=old_posterior, checkpoint=checkpoint, resume=True)
    assert tasks.counts["stats_and_checksum"] == 0 and tasks.counts["block_leverage"] == 0
    _same_posterior(again, first)
    assert again.provenance["rows read"]["pass 1"] == N_NEW
    other = fit(stores["first two"]).save(tmp_path / "other.zarr")
    with pytest.raises(InputError, match="cannot resume: source was .*old.zarr \\+ .*new.zarr"):
        fit(stores["more"], previous=other, checkpoint=checkpoint, resume=True)


def _posterior_without_statistics(path: Path, tmp_path: Path) -> Path:
    post = Posterior.load(path)
    post.fitted_rows_ = None
    return post.save(tmp_path / "bare.zarr")


def test_bad_additions_are_refused_before_any_pass(stores, old_posterior, tmp_path):
    X, y, _ = misspecified(300, P, seed=5)
    other_descriptor = write_store(
        tmp_path / "twojmax6.zarr", X, y, attrs={"descriptor": {"backend": "test", "settings": {"twojmax": 6}}}
    )
    narrower = write_store(tmp_path / "narrow.zarr", X[:, :-1], y)
    with Tasks() as tasks:
        with pytest.raises(InputError, match="attribute 'descriptor' differs"):
            fit(other_descriptor, previous=old_posterior)
        with pytest.raises(InputError, match="6 features, but .* has 7"):
            fit(narrower, previous=old_posterior)
        with pytest.raises(InputError, match="without an intercept"):
            fit(stores["new"], previous=old_posterior, fit_intercept=True)
        with pytest.raises(InputError, match="already fitted"):
            fit(stores["old"], previous=old_posterior)
        with pytest.raises(InputError, match="holds no pass-1 statistics"):
            fit(stores["new"], previous=_posterior_without_statistics(old_posterior, tmp_path))
        in_memory = fit(X, y)
        with pytest.raises(InputError, match="in-memory data"):
            fit(stores["new"], previous=in_memory)
        assert tasks.counts["stats_and_checksum"] == 1  # the in-memory fit's only
    assert in_memory.fitted_rows_.inputs[0]["source"] == "<array>"


def test_a_changed_or_missing_fitted_store_is_refused(stores, tmp_path):
    X, y, w = misspecified(800, P, seed=7)
    old = write_store(tmp_path / "old.zarr", X, y, weight=w, chunk_rows=200)
    post = fit(old).save(tmp_path / "post.zarr")
    write_store(old, X, y * 1.01, weight=w, chunk_rows=200, overwrite=True)  # rewritten: new metadata
    with pytest.raises(InputError, match="old.zarr changed since it was fitted \\(files was"):
        fit(stores["new"], previous=post)
    write_store(old, X[:700], y[:700], weight=w[:700], chunk_rows=200, overwrite=True)
    with pytest.raises(InputError, match="changed since it was fitted \\(shape was 800 x 7, is 700 x 7\\)"):
        fit(stores["new"], previous=post)
    import shutil

    shutil.rmtree(old)
    with pytest.raises(InputError, match="old.zarr is gone"):
        fit(stores["new"], previous=post)
