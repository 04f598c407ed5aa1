"""A descriptor backend from outside the package: one class and one ``register_backend`` call
give ``popsdask descriptors --descriptor NAME`` with the backend's own options, and a store that
``popsdask fit`` accepts; nothing in ``popsdask.cli`` names it."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

pytest.importorskip("ase", reason="atomistic extra (ase) not installed")

from ase.build import bulk  # noqa: E402
from ase.calculators.morse import MorsePotential  # noqa: E402
from ase.data import atomic_masses, atomic_numbers  # noqa: E402
from ase.io import write  # noqa: E402
from ase.neighborlist import neighbor_list  # noqa: E402

from popsdask import Posterior, open_store  # noqa: E402
from popsdask.atomistic.configurations import Configuration  # noqa: E402
from popsdask.atomistic.descriptors.base import RowBlock, backend_from_store, register_backend  # noqa: E402
from popsdask.cli import main  # noqa: E402


@dataclass(frozen=True)
class PairHistogram:
    """Smoothed histogram of the pair distances: ``n_bins`` Gaussians in r (cut off smoothly at
    ``rcut``) summed over pairs, and the atom count; force rows are minus their gradients."""

    elements: tuple[str, ...]
    n_bins: int = 16
    rcut: float = 5.0

    backend: ClassVar[str] = "test_pair_histogram"
    summary: ClassVar[str] = "a smoothed pair-distance histogram (a test plugin)"

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--pair-bins", type=int, default=None, help="Gaussians in r; default: 16")
        group.add_argument("--pair-rcut", type=float, default=None, help="cutoff (A); default: 5")

    @classmethod
    def settings_from_args(cls, args: argparse.Namespace, elements: Sequence[str] | None) -> PairHistogram | None:
        if elements is None:
            return None
        return cls(tuple(elements), args.pair_bins or 16, args.pair_rcut or 5.0)

    @property
    def n_features(self) -> int:
        return 1 + self.n_bins

    @property
    def cutoff(self) -> float:
        return self.rcut

    def feature_names(self) -> list[str]:
        return ["count", *(f"g{k}" for k in range(self.n_bins))]

    def atom_masses(self) -> tuple[float, ...]:
        return tuple(float(atomic_masses[atomic_numbers[e]]) for e in self.elements)

    def key(self) -> str:
        return json.dumps(self.to_attrs(), sort_keys=True)

    def _basis(self, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(f, df/dr), shape (pairs, n_bins): Gaussians times a cosine cutoff."""
        centres = np.linspace(1.5, self.rcut, self.n_bins)
        width = centres[1] - centres[0]
        z = (r[:, None] - centres) / width
        g, dg = np.exp(-0.5 * z**2), -z / width * np.exp(-0.5 * z**2)
        fc = 0.5 * (np.cos(np.pi * r / self.rcut) + 1.0)[:, None]
        dfc = (-0.5 * np.pi / self.rcut * np.sin(np.pi * r / self.rcut))[:, None]
        return g * fc, dg * fc + g * dfc

    def rows(self, cfg: Configuration, *, virial: bool = False, config_index: int = 0, session: Any = None) -> RowBlock:
        from ase import Atoms

        atoms = Atoms(cfg.symbols, positions=cfg.positions, cell=cfg.cell, pbc=cfg.pbc)
        i, j, d, vec = neighbor_list("ijdD", atoms, self.rcut)  # every pair twice: (i, j) and (j, i)
        f, df = self._basis(d)
        X = np.zeros((1 + 3 * cfg.n_atoms, self.n_features))
        X[0, 0] = cfg.n_atoms
        X[0, 1:] = 0.5 * f.sum(axis=0)
        # E = 1/2 sum f(|r_j - r_i|): the force on atom i is sum_j f'(d) (r_j - r_i) / d, over both orders
        grad = df[:, None, :] * (vec / d[:, None])[:, :, None]  # (pairs, 3, n_bins)
        forces = np.zeros((cfg.n_atoms, 3, self.n_bins))
        np.add.at(forces, i, grad)
        X[1:, 1:] = forces.reshape(3 * cfg.n_atoms, self.n_bins)
        return RowBlock.energy_forces(X, cfg, config_index)

    def to_attrs(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> PairHistogram:
        return cls(tuple(attrs["elements"]), int(attrs["n_bins"]), float(attrs["rcut"]))

    def store_attrs(self) -> dict[str, Any]:
        return {
            "descriptor": {"backend": self.backend, "settings": self.to_attrs()},
            "feature_names": self.feature_names(),
        }

    # potentials out are not this test's subject
    def potential_paths(self, prefix: str | os.PathLike) -> dict[str, Path]:
        raise NotImplementedError

    def write_potential(self, theta: Any, prefix: str | os.PathLike, *, comment: str = "") -> dict[str, Path]:
        raise NotImplementedError

    def pair_commands(self, paths: Any) -> list[str]:
        raise NotImplementedError

    def calculator(self, theta: Any, directory: Any = None, *, label: str = "potential") -> Any:
        raise NotImplementedError


register_backend(PairHistogram.backend, PairHistogram)


def _morse_frames(n: int) -> list:
    """Rattled bcc W cells labelled by a Morse potential (a pair potential: the histogram fits it)."""
    rng = np.random.default_rng(0)
    frames = []
    for k in range(n):
        atoms = bulk("W", "bcc", a=3.17 * (0.97 + 0.06 * rng.random()), cubic=True).repeat(2)
        atoms.rattle(0.1, seed=k)
        atoms.calc = MorsePotential(epsilon=0.5, r0=2.75, rho0=4.0, rcut1=4.0, rcut2=4.9)
        atoms.get_potential_energy()
        frames.append(atoms)
    return frames


def test_a_backend_registered_outside_the_cli_builds_a_store_that_fit_accepts(tmp_path, local_client, capsys) -> None:
    data = tmp_path / "w.extxyz"
    write(data, _morse_frames(12), format="extxyz")
    store, post = tmp_path / "pairs.zarr", tmp_path / "post.zarr"
    sched = ["--scheduler", local_client.scheduler.address, "--quiet"]
    argv = ["descriptors", str(data), "-o", str(store), "--descriptor", PairHistogram.backend, "--pair-bins", "12"]
    assert main([*argv, *sched]) == 0, capsys.readouterr().err
    settings = PairHistogram(("W",), 12, 5.0)
    assert backend_from_store(store) == settings
    ds = open_store(store)
    assert (ds.sizes["row"], ds.sizes["feature"]) == (12 * (1 + 3 * 16), 13)
    first = ds["X"].values[ds["config"].values == 0]
    np.testing.assert_array_equal(first, settings.rows(_configuration(data)).X)

    assert main(["fit", str(store), "-o", str(post), "--split", "train", *sched]) == 0
    theta = Posterior.load(post).coef_
    forces = (ds["kind"] == 1).values
    err = ds["X"].values[forces] @ theta - ds["y"].values[forces]
    assert np.sqrt(np.mean(err**2)) < 0.1 * np.sqrt(np.mean(ds["y"].values[forces] ** 2))  # the pair potential fits

    # its options belong to it: with another --descriptor they are refused in one line
    capsys.readouterr()
    assert main(["descriptors", str(data), "-o", str(tmp_path / "x.zarr"), "--pair-bins", "12", *sched]) == 2
    assert capsys.readouterr().err.strip() == (
        f"popsdask descriptors: error: --pair-bins: only with --descriptor {PairHistogram.backend}"
    )


def _configuration(path: Path) -> Configuration:
    from popsdask.atomistic.configurations import read_configurations

    return read_configurations([path], index="0").configurations[0]
