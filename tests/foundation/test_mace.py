"""MACE extractor: model lookup without downloads, invariant descriptors, batched energies.

Uses a small randomly initialised MACE model built offline (foundation weights cannot be
downloaded here); skipped when torch / mace-torch are not installed.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="foundation extra (torch) not installed")
pytest.importorskip("mace", reason="foundation extra (mace-torch) not installed")

from popsdask.foundation import MACEExtractor, resolve_mace_model  # noqa: E402
from popsdask.foundation.base import clear_model_cache, worker_model  # noqa: E402


def small_mace_model(path: Path, seed: int = 0, elements: tuple[int, ...] = (4, 74)) -> Path:
    """Save a small random ScaleShiftMACE (2 layers, 8 scalar channels, l_max 1) to ``path``."""
    import mace  # noqa: F401  (must precede e3nn)
    from e3nn import o3
    from mace import modules

    torch.manual_seed(seed)
    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    model = modules.ScaleShiftMACE(
        r_max=4.5,
        num_bessel=6,
        num_polynomial_cutoff=5,
        max_ell=2,
        interaction_cls=block,
        interaction_cls_first=block,
        num_interactions=2,
        num_elements=len(elements),
        hidden_irreps=o3.Irreps("8x0e + 8x1o"),
        MLP_irreps=o3.Irreps("8x0e"),
        gate=torch.nn.functional.silu,
        atomic_energies=-np.arange(1.0, len(elements) + 1),
        avg_num_neighbors=8.0,
        atomic_numbers=list(elements),
        correlation=2,
        radial_type="bessel",
        atomic_inter_scale=1.0,
        atomic_inter_shift=0.0,
    )
    torch.save(model, path)
    return path


def small_structures(seed: int = 0) -> list:
    """A handful of W, Be and W-Be cells, rattled, with different sizes."""
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    out = []
    for reps in (1, 2):
        w = bulk("W", "bcc", a=3.17, cubic=True).repeat(reps)
        w.rattle(0.05, seed=int(rng.integers(1 << 30)))
        out.append(w)
    be = bulk("Be", "hcp", a=2.29, c=3.58).repeat((2, 2, 1))
    be.rattle(0.03, seed=int(rng.integers(1 << 30)))
    out.append(be)
    mix = bulk("W", "bcc", a=3.1, cubic=True).repeat((2, 1, 1))
    mix.numbers[[1, 2]] = 4
    mix.rattle(0.04, seed=int(rng.integers(1 << 30)))
    out.append(mix)
    w1 = bulk("W", "bcc", a=3.25)
    out.append(w1)
    return out


@pytest.fixture(scope="module")
def mace_file(tmp_path_factory) -> Path:
    return small_mace_model(tmp_path_factory.mktemp("mace") / "small.model")


def test_missing_named_model_names_where_it_looked_and_does_not_download(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(urllib.request, "urlretrieve", no_network)
    from mace.calculators import foundations_models as fm

    monkeypatch.setattr(fm, "local_model_path", str(tmp_path / "not-shipped.model"))
    with pytest.raises(FileNotFoundError) as info:
        resolve_mace_model("medium-mpa-0", cache_dir=tmp_path / "cache")
    msg = str(info.value)
    assert str(tmp_path / "cache" / "macempa0mediummodel") in msg
    assert "not-shipped.model" in msg
    assert "download=True" in msg
    with pytest.raises(FileNotFoundError, match="no-such.model"):
        MACEExtractor(model=str(tmp_path / "no-such.model")).load()


def test_named_model_found_in_cache(tmp_path, mace_file):
    cache = tmp_path / "cache"
    cache.mkdir()
    target = cache / "macempa0mediummodel"  # mace-torch's cache name for MACE-MPA-0 medium
    target.write_bytes(mace_file.read_bytes())
    assert resolve_mace_model("medium-mpa-0", cache_dir=cache) == target
    ext = MACEExtractor(model="medium-mpa-0", cache_dir=str(cache), dtype="float64")
    model = ext.load()
    assert model._popsdask_path == str(target)


def test_default_cache_dir_follows_xdg(tmp_path, monkeypatch, mace_file):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "mace").mkdir()
    target = tmp_path / "mace" / "20231203mace128L1_epoch199model"
    target.write_bytes(mace_file.read_bytes())
    assert resolve_mace_model("medium") == target


def test_not_a_mace_model_is_refused(tmp_path):
    bad = tmp_path / "bad.model"
    torch.save(torch.nn.Linear(2, 2), bad)
    with pytest.raises(ValueError, match="not a MACE model"):
        MACEExtractor(model=str(bad)).load()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_descriptors_and_energies_match_mace_calculator(mace_file, dtype):
    from mace.calculators import MACECalculator

    ext = MACEExtractor(model=str(mace_file), dtype=dtype)
    model = ext.load()
    structures = small_structures()
    out = ext.extract(model, structures)
    calc = MACECalculator(model_paths=str(mace_file), device="cpu", default_dtype=dtype)
    tol = 1e-10 if dtype == "float64" else 2e-4
    assert len(out.descriptors) == len(structures)
    for atoms, d, e in zip(structures, out.descriptors, out.energy, strict=True):
        ref = calc.get_descriptors(atoms, invariants_only=True)
        assert d.shape == (len(atoms), 16) == ref.shape
        np.testing.assert_allclose(d, ref, rtol=tol, atol=tol)
        atoms = atoms.copy()
        atoms.calc = calc
        assert e == pytest.approx(atoms.get_potential_energy(), rel=tol, abs=tol)
    assert ext.feature_names(model)[:2] == ["mace_l0_0", "mace_l0_1"]
    assert len(ext.feature_names(model)) == 16


def test_first_layer_only(mace_file):
    ext = MACEExtractor(model=str(mace_file), dtype="float64", num_layers=1)
    model = ext.load()
    full = MACEExtractor(model=str(mace_file), dtype="float64").extract(model, small_structures())
    first = ext.extract(model, small_structures())
    for a, b in zip(first.descriptors, full.descriptors, strict=True):
        np.testing.assert_array_equal(a, b[:, :8])
    with pytest.raises(ValueError, match="3 layers|has 2 layers"):
        MACEExtractor(model=str(mace_file), num_layers=3).extract(model, small_structures())


def test_unknown_element_is_a_clear_error(mace_file):
    from ase.build import bulk

    ext = MACEExtractor(model=str(mace_file))
    with pytest.raises(ValueError, match=r"atomic numbers \[29\]"):
        ext.extract(ext.load(), [bulk("Cu", "fcc", a=3.6)])


def test_worker_model_loads_once_per_process(mace_file):
    clear_model_cache()
    ext = MACEExtractor(model=str(mace_file), dtype="float64")
    m1, lock1 = worker_model(ext)
    m2, lock2 = worker_model(MACEExtractor(model=str(mace_file), dtype="float64"))
    assert m1 is m2 and lock1 is lock2
    m3, _ = worker_model(MACEExtractor(model=str(mace_file), dtype="float32"))
    assert m3 is not m1
    clear_model_cache()
