"""Configurations and checks shared by the descriptor backends' tests (test_pod, test_ace)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from popsdask import InputError, open_store
from popsdask.atomistic.configurations import Configuration
from popsdask.atomistic.descriptor_store import build_descriptor_store
from popsdask.atomistic.descriptors.base import backend_from_store


def perturbed(atoms: Any, name: str = "c", seed: int = 0) -> Configuration:
    """``atoms`` rattled (0.06 Å) with made-up labels: a configuration rows can be built of."""
    rng = np.random.default_rng(seed)
    atoms = atoms.copy()
    atoms.positions += rng.normal(scale=0.06, size=atoms.positions.shape)
    cfg = Configuration.from_atoms(atoms, name=name, group="g")
    cfg.energy, cfg.forces = -11.0 * len(atoms), rng.normal(scale=0.1, size=(len(atoms), 3))
    return cfg


def with_species(atoms: Any, symbol: str, indices: Sequence[int]) -> Any:
    """A copy of ``atoms`` with the atoms ``indices`` turned into ``symbol``."""
    atoms = atoms.copy()
    symbols = atoms.get_chemical_symbols()
    for i in indices:
        symbols[i] = symbol
    atoms.set_chemical_symbols(symbols)
    return atoms


def labels(calc: Any, cfg: Configuration) -> tuple[float, np.ndarray]:
    """Energy (eV) and forces (N, 3) of ``cfg`` by the ASE calculator ``calc``."""
    atoms = cfg.to_atoms(with_labels=False)
    atoms.calc = calc
    return atoms.get_potential_energy(), atoms.get_forces()


def energy_row_derivative(settings: Any, cfg: Configuration, atom: int, comp: int, h: float = 1e-5) -> np.ndarray:
    """−d(energy row)/d(position[atom, comp]) by central differences: the force row it must equal."""
    rows = []
    for s in (h, -h):
        c = Configuration(cfg.name, cfg.symbols, cfg.positions.copy(), cfg.cell, cfg.pbc, 0.0, cfg.forces)
        c.positions[atom, comp] += s
        rows.append(settings.rows(c).X[0])
    return -(rows[0] - rows[1]) / (2 * h)


def check_store_round_trip(path: Any, settings: Any, cfgs: list[Configuration], index: int) -> dict[str, Any]:
    """Build a store of ``cfgs`` at ``path`` and check what every energy-and-force backend must:
    its attrs rebuild ``settings``, configuration ``index``'s rows are ``settings.rows``, and
    virial rows are refused. Returns the store's ``descriptor`` attribute."""
    build_descriptor_store(path, cfgs, settings, configs_per_task=2)
    ds = open_store(path)
    desc = ds.attrs["descriptor"]
    assert desc["backend"] == settings.backend
    assert "snap" not in ds.attrs and ds.attrs["feature_names"] == settings.feature_names()
    assert backend_from_store(path) == settings
    rows = np.flatnonzero(ds["config"].values == index)
    np.testing.assert_allclose(ds["X"].values[rows], settings.rows(cfgs[index]).X, rtol=1e-12, atol=1e-12)
    for c in cfgs:
        c.stress = np.zeros(6)
    with pytest.raises(InputError, match="no virial rows"):
        build_descriptor_store(f"{path}-virial", cfgs, settings, virial=True, configs_per_task=2)
    return dict(desc)
