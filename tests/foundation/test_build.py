"""build_store: foundation-model rows computed over Dask into a descriptor store, then fitted."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="foundation extra (torch) not installed")
pytest.importorskip("mace", reason="foundation extra (mace-torch) not installed")

from popsdask import InputError, open_store  # noqa: E402
from popsdask.foundation import MACEExtractor, build_store, worker_model  # noqa: E402
from tests.conftest import SHARED  # noqa: E402
from tests.foundation.test_mace import small_mace_model, small_structures  # noqa: E402


def labelled(seed: int = 0) -> list:
    """small_structures with made-up reference energies on a single-point calculator."""
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    out = []
    for atoms in small_structures(seed) * 2:
        atoms = atoms.copy()
        e = -5.0 * len(atoms) + rng.normal()
        atoms.calc = SinglePointCalculator(atoms, energy=e)
        atoms.info["group"] = "bulk" if len(atoms) > 2 else "small"
        out.append(atoms)
    return out


@pytest.fixture(scope="module")
def extractor(tmp_path_factory) -> MACEExtractor:
    path = small_mace_model(tmp_path_factory.mktemp("mace") / "small.model")
    return MACEExtractor(model=str(path), dtype="float64")


def expected_rows(extractor, structures, elements):
    model, _ = worker_model(extractor)
    out = extractor.extract(model, structures)
    counts = np.array([[np.sum(a.symbols == s) for s in elements] for a in structures], float)
    X = np.concatenate([np.stack([d.sum(0) for d in out.descriptors]), counts], axis=1)
    y = np.array([a.get_potential_energy() for a in structures]) - out.energy
    return X, y, out.energy


def test_rows_are_summed_descriptors_and_counts_with_residual_targets(tmp_path, extractor):
    structures = labelled()
    path = build_store(tmp_path / "s.zarr", structures, extractor, batch_size=3, info_keys=("group",))
    ds = open_store(path)
    assert ds.attrs["elements"] == ["Be", "W"]
    assert ds.attrs["feature_names"][-2:] == ["count_Be", "count_W"]
    assert ds.attrs["n_descriptor_features"] == 16 and ds.sizes["feature"] == 18
    assert ds.attrs["model"]["extractor"] == "mace"
    X, y, e_model = expected_rows(extractor, structures, ["Be", "W"])
    np.testing.assert_allclose(ds["X"].values, X, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ds["y"].values, y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ds["energy_model"].values, e_model, rtol=1e-12)
    np.testing.assert_array_equal(ds["n_atoms"].values, [len(a) for a in structures])
    assert list(ds["info_group"].values) == [a.info["group"] for a in structures]
    # batching is invisible in the result
    other = open_store(build_store(tmp_path / "b1.zarr", structures, extractor, batch_size=1))
    np.testing.assert_allclose(other["X"].values, X, rtol=1e-10, atol=1e-10)


def test_per_atom_rows(tmp_path, extractor):
    structures = labelled()
    total = open_store(build_store(tmp_path / "t.zarr", structures, extractor))
    per = open_store(build_store(tmp_path / "p.zarr", structures, extractor, per_atom=True))
    n = total["n_atoms"].values
    np.testing.assert_allclose(per["X"].values, total["X"].values / n[:, None], rtol=1e-12)
    np.testing.assert_allclose(per["y"].values, total["y"].values / n, rtol=1e-12)
    assert per.attrs["units"] == "eV/atom" and total.attrs["units"] == "eV"
    assert np.allclose(per["X"].values[:, -2:].sum(axis=1), 1.0)


def test_from_structure_files_equals_in_memory(tmp_path, extractor):
    import ase.io

    structures = labelled()
    shard_a, shard_b = tmp_path / "a.extxyz", tmp_path / "b.extxyz"
    ase.io.write(shard_a, structures[:4], format="extxyz")
    ase.io.write(shard_b, structures[4:], format="extxyz")
    import lzma

    xz = tmp_path / "b.extxyz.xz"
    xz.write_bytes(lzma.compress(shard_b.read_bytes()))
    mem = open_store(build_store(tmp_path / "m.zarr", structures, extractor))
    files = open_store(build_store(tmp_path / "f.zarr", [shard_a, xz], extractor))
    np.testing.assert_allclose(files["X"].values, mem["X"].values, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(files["y"].values, mem["y"].values, rtol=1e-9, atol=1e-9)
    assert files.attrs["elements"] == mem.attrs["elements"]


@pytest.mark.slow
def test_on_worker_processes_one_model_each(tmp_path, extractor):
    from popsdask.foundation import base
    from popsdask.runtime.cluster import connect

    structures = labelled()
    serial = open_store(build_store(tmp_path / "serial.zarr", structures, extractor))
    with connect("local", n_workers=2, threads_per_worker=1, memory_limit="3GB", quiet=True) as client:
        path = build_store(tmp_path / "dist.zarr", structures, extractor, batch_size=2)
        loaded = client.run(lambda: len(base._CACHE))
        pids = client.run(lambda: __import__("os").getpid())
    assert len(set(pids.values())) == 2
    # 5 batches over 2 processes: every process that worked holds exactly one model
    assert sorted(loaded.values()) in ([1, 1], [0, 1])
    np.testing.assert_allclose(open_store(path)["X"].values, serial["X"].values, rtol=1e-10)


def test_clear_errors(tmp_path, extractor):
    structures = labelled()
    structures[4].calc = None
    with pytest.raises(InputError, match=r"structures 3\.\.5: .*no reference energy"):
        build_store(tmp_path / "x.zarr", structures, extractor, batch_size=3)
    assert not (tmp_path / "x.zarr").exists()
    with pytest.raises(InputError, match="not among the store's elements"):
        build_store(tmp_path / "y.zarr", labelled(), extractor, elements=["W"])
    with pytest.raises(FileNotFoundError, match="nowhere.extxyz"):
        build_store(tmp_path / "z.zarr", [tmp_path / "nowhere.extxyz"], extractor)
    atoms = labelled()
    for a in atoms:
        a.info["E"] = a.get_potential_energy() + 1.0
        a.calc = None
    with_key = open_store(build_store(tmp_path / "k.zarr", atoms, extractor, energy_key="E"))
    plain = open_store(build_store(tmp_path / "p.zarr", labelled(), extractor))
    np.testing.assert_allclose(with_key["y"].values, plain["y"].values + 1.0, rtol=1e-12)


W_DFT = SHARED / "data" / "tungsten-dft" / "W_dft.extxyz.xz"


@pytest.mark.slow
@pytest.mark.skipif(not W_DFT.exists(), reason=f"tungsten DFT data not found at {W_DFT}")
def test_chgnet_corrector_on_tungsten_dft(tmp_path):
    """160 real W configurations: the POPS corrector removes CHGNet's DFT-setup offset."""
    pytest.importorskip("chgnet", reason="foundation extra (chgnet) not installed")
    import popsdask
    from popsdask.engine.predictions import predict_ensemble
    from popsdask.foundation import CHGNetExtractor, read_structures

    structures = read_structures(W_DFT, index="0:9600:60")
    store = build_store(tmp_path / "w.zarr", structures, CHGNetExtractor(), per_atom=True)
    ds = open_store(store)
    train, test = ds.isel(row=slice(0, None, 2)), ds.isel(row=slice(1, None, 2))
    post = popsdask.fit(train)
    pred = predict_ensemble(post, test, n_samples=100)
    y = test["y"].values
    before = np.mean(np.abs(y))  # the uncorrected model's MAE (eV/atom)
    after = np.mean(np.abs(y - pred["mle"].values))
    assert before > 1.0  # CHGNet (MPtrj PBE) vs this set's DFT differ by ~3.9 eV/atom
    assert after < 0.05 * before
    assert np.all(pred["max"].values >= pred["min"].values)
