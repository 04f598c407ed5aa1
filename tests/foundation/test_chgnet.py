"""CHGNet extractor on the pretrained weights bundled with the chgnet wheel (no network)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="foundation extra (torch) not installed")
pytest.importorskip("chgnet", reason="foundation extra (chgnet) not installed")

from popsdask.foundation import CHGNetExtractor  # noqa: E402
from tests.foundation.test_mace import small_structures  # noqa: E402


@pytest.fixture(scope="module")
def chgnet():
    ext = CHGNetExtractor(features=("atom_fea", "readout"), batch_size=3)
    return ext, ext.load()


def test_features_match_predict_structure_and_energy_is_total(chgnet):
    from pymatgen.io.ase import AseAtomsAdaptor

    ext, model = chgnet
    structures = small_structures()
    out = ext.extract(model, structures)
    assert len(ext.feature_names(model)) == 128
    for atoms, d, e in zip(structures, out.descriptors, out.energy, strict=True):
        single = model.predict_structure(AseAtomsAdaptor.get_structure(atoms), task="e", return_atom_feas=True)
        assert d.shape == (len(atoms), 128)
        # batching (3 per pass) does not change a structure's features or energy
        np.testing.assert_allclose(d[:, :64], single["atom_fea"], rtol=1e-5, atol=1e-5)
        assert e == pytest.approx(float(single["e"]) * len(atoms), rel=1e-5)


def test_readout_features_are_the_energy_mlp_input(chgnet):
    """Σ_i MLP(readout_i) + the composition reference reproduces CHGNet's total energy."""
    import torch
    from pymatgen.io.ase import AseAtomsAdaptor

    ext, model = chgnet
    structures = small_structures()
    out = CHGNetExtractor(features="readout").extract(model, structures)
    for atoms, d, e in zip(structures, out.descriptors, out.energy, strict=True):
        graph = model.graph_converter(AseAtomsAdaptor.get_structure(atoms))
        with torch.no_grad():
            site = model.mlp(torch.tensor(d, dtype=torch.float32)).sum().item()
            ref = model.composition_model.get_site_energies([graph])[0].sum().item()
        assert site + ref == pytest.approx(e, rel=1e-5, abs=1e-4)


def test_bad_options_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="choose from"):
        CHGNetExtractor(features="magmom").load()
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        CHGNetExtractor(model=str(tmp_path / "nothing.pth")).load()
