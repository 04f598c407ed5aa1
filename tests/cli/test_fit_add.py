"""``popsdask fit --add NEW_STORE --from POSTERIOR``: the fit of all rows with pass 1 over the new
store only, and its refusals (one line, exit 2, no cluster, nothing written)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from popsdask import Posterior, write_store
from popsdask.cli import main
from tests.conftest import misspecified, no_cluster_started

N_OLD, N_NEW, P = 1500, 600, 5
THREADS = ["--cluster", "threads", "--quiet"]
LOCAL = ["--n-workers", "1", "--threads-per-worker", "1", "--quiet"]  # would start a LocalCluster


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fit-add")
    X, y, w = misspecified(N_OLD + N_NEW + 100, P, seed=13)
    old, new = slice(0, N_OLD), slice(N_OLD, N_OLD + N_NEW)
    paths = {
        "old": write_store(d / "old.zarr", X[old], y[old], weight=w[old], chunk_rows=250),
        "new": write_store(d / "new.zarr", X[new], y[new], weight=w[new], chunk_rows=200),
        "all": write_store(d / "all.zarr", X[: N_OLD + N_NEW], y[: N_OLD + N_NEW], weight=w[: N_OLD + N_NEW]),
        "wider": write_store(d / "wider.zarr", np.hstack([X[new], X[new, :1]]), y[new]),
    }
    assert main(["fit", str(paths["old"]), "-o", str(d / "old-post.zarr"), *THREADS]) == 0
    paths["posterior"] = d / "old-post.zarr"
    return paths


def test_fit_add_equals_the_fit_of_all_rows(fitted, tmp_path, capsys):
    out, reference = tmp_path / "added.zarr", tmp_path / "all.zarr"
    capsys.readouterr()
    assert main(["fit", "--add", str(fitted["new"]), "--from", str(fitted["posterior"]), "-o", str(out), *THREADS]) == 0
    assert f"fitted {N_OLD + N_NEW} rows x {P} features" in capsys.readouterr().out
    assert main(["fit", str(fitted["all"]), "-o", str(reference), *THREADS]) == 0
    post, ref = Posterior.load(out), Posterior.load(reference)
    for name in ("coef_", "sigma_", "misspecification_sigma_", "lower_", "upper_"):
        a, b = getattr(post, name), getattr(ref, name)
        assert np.max(np.abs(a - b)) <= 1e-10 * np.max(np.abs(b)), name
    assert post.provenance["rows read"] == {"pass 1": N_NEW, "passes 2-4": N_OLD + N_NEW}
    assert not out.with_name(out.name + ".checkpoint").exists()


def _refused(capsys, argv: list[str], needle: str, out: Path) -> None:
    capsys.readouterr()
    with no_cluster_started("popsdask fit --add"):
        rc = main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(err) == 1, err
    assert needle in err[0], err[0]
    assert not out.exists()


def test_fit_add_refusals(fitted, tmp_path, capsys):
    out = tmp_path / "p.zarr"
    new, post = str(fitted["new"]), str(fitted["posterior"])
    bare = Posterior.load(post)
    bare.fitted_rows_ = None
    bare.save(tmp_path / "bare.zarr")
    cases = [
        (["--add", str(fitted["wider"]), "--from", post], f"{fitted['wider']}: 6 features, but {post} has 5"),
        (["--add", new], "--add NEW_STORE and --from POSTERIOR go together"),
        (["--from", post], "--add NEW_STORE and --from POSTERIOR go together"),
        ([str(fitted["old"]), "--add", new, "--from", post], "not both"),
        ([], "give a STORE to fit, or --add NEW_STORE --from POSTERIOR"),
        (["--add", new, "--from", str(tmp_path / "none.zarr")], "none.zarr: no such posterior"),
        (["--add", new, "--from", str(fitted["old"])], "not a popsdask posterior"),
        (["--add", new, "--from", str(tmp_path / "bare.zarr")], "holds no pass-1 statistics"),
        (["--add", new, "--from", post, "--fit-intercept"], "fitted without an intercept"),
        (["--add", new, "--from", post, "-o", str(fitted["old"]), "--overwrite"], "it is the input"),
    ]
    for args, needle in cases:
        argv = ["fit", *args, *LOCAL]
        _refused(capsys, argv if "-o" in args else [*argv, "-o", str(out)], needle, out)


def test_fit_add_refuses_a_fitted_store_that_changed(fitted, tmp_path, capsys):
    old = shutil.copytree(fitted["old"], tmp_path / "old.zarr")
    post = tmp_path / "post.zarr"
    assert main(["fit", str(old), "-o", str(post), *THREADS]) == 0
    X, y, w = misspecified(N_OLD, P, seed=99)
    write_store(old, X, y, weight=w, chunk_rows=250, overwrite=True)
    out = tmp_path / "p.zarr"
    argv = ["fit", "--add", str(fitted["new"]), "--from", str(post), "-o", str(out), *LOCAL]
    _refused(capsys, argv, f"its input {old} changed since it was fitted (files was", out)
