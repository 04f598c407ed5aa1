"""What the report and calibrate show a reader: energies per atom, which band, units, RMSE and ±2σ per group."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

from popsdask import fit, open_store, predict_ensemble, write_store
from popsdask.cli import main
from popsdask.evaluation.crossval import calibrate
from popsdask.evaluation.report import write_report
from tests.conftest import misspecified

matplotlib.use("Agg")
METAL = "metal (eV, Angstrom)"


@pytest.fixture
def store(tmp_path):
    """Energy rows (one per configuration, 2-6 atoms) and two force rows per configuration, in metal units."""
    X, y, w = misspecified(2400, 6, seed=11)
    n_cfg = 800
    config = np.repeat(np.arange(n_cfg), 3)
    kind = np.tile([0, 1, 1], n_cfg)
    group = np.array(["bulk", "surface"])[np.arange(n_cfg) % 2]
    n_atoms = 2 + np.arange(n_cfg) % 5
    y = np.where(kind == 0, y * n_atoms[config], y)  # energies total over the atoms
    X = np.where((kind == 0)[:, None], X * n_atoms[config][:, None], X)
    path = write_store(
        tmp_path / "s.zarr",
        X,
        y,
        weight=w,
        config=config,
        kind=kind,
        configurations={"group": group, "n_atoms": n_atoms},
        attrs={"units": METAL},
    )
    return path, config, kind, n_atoms


@pytest.fixture
def drawn(monkeypatch):
    """The figures the report saves, by file name (recorded as they are written)."""
    from matplotlib.figure import Figure

    saved = {}
    original = Figure.savefig

    def record(fig, path, *args, **kwargs):
        saved[str(path).rsplit("/", 1)[-1]] = fig
        return original(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return saved


def _titles(fig) -> str:
    return " ".join(
        ax.get_title() + " " + " ".join(t.get_text() for t in ax.get_legend().get_texts()) for ax in fig.axes
    )


def test_energy_figure_is_per_atom_and_every_figure_names_its_band(store, tmp_path, drawn):
    path, config, kind, n_atoms = store
    post = fit(path)
    raw = predict_ensemble(post, open_store(path), tmp_path / "raw.zarr", n_samples=64, ev_curve=(8, 64))
    write_report(raw, tmp_path / "raw-report")
    energy = drawn["energy.png"]
    parity = energy.axes[1]
    (mle_line,) = [line for line in parity.get_lines() if line.get_label() == "MLE"]
    per_atom = raw["mle"].values[kind == 0] / n_atoms[config[kind == 0]]
    np.testing.assert_allclose(np.sort(mle_line.get_ydata()), np.sort(per_atom))
    assert "(eV/atom)" in parity.get_xlabel() and "(eV/atom)" in energy.axes[0].get_xlabel()
    for name in ("energy.png", "force.png", "coverage.png", "ev_vs_samples.png"):
        assert "raw band" in _titles(drawn[name]), name

    drawn.clear()
    cal = calibrate(post, path, group_by="group", level=0.9, seed=1)
    calibrated = predict_ensemble(cal, open_store(path), tmp_path / "cal.zarr", n_samples=64, ev_curve=(8, 64))
    write_report(calibrated, tmp_path / "cal-report")
    for name in ("energy.png", "force.png", "coverage.png", "ev_vs_samples.png"):
        assert "calibrated band" in _titles(drawn[name]) and "raw band" not in _titles(drawn[name]), name


def test_group_tables_carry_units_rmse_and_2sigma(store, tmp_path):
    path, *_ = store
    pred = predict_ensemble(fit(path), open_store(path), tmp_path / "p.zarr", n_samples=32)
    text = write_report(pred, tmp_path / "report")["calibration"]
    report = (tmp_path / "report" / "report.md").read_text()
    sections = {s.split("\n", 1)[0]: s for s in report.split("## ")[1:]}
    per_atom, force = sections["energy_per_atom by group"], sections["force by group"]
    for label in ("MAE (MLE) (eV/atom)", "RMSE (MLE) (eV/atom)", "mean ensemble std (eV/atom)", "within ±2σ"):
        assert label in per_atom, label
    assert "RMSE (MLE) (eV/Å)" in force and "within ±2σ" in force
    rmse = text["groups"]["bulk"]["force"]["rmse_mle"]
    assert f"{rmse:.4g}" in force.split("| bulk |")[1].split("\n")[0]


def test_calibrate_prints_its_offsets_with_units(store, tmp_path, capsys):
    path, *_ = store
    fit(path).save(tmp_path / "post.zarr")
    argv = ["calibrate", str(tmp_path / "post.zarr"), str(path), "--group-by", "group", "-o", str(tmp_path / "c.zarr")]
    assert main([*argv, "--quiet"]) == 0
    lines = {line.split(":", 1)[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["energy_per_atom"].count(" eV/atom)") == 2, lines
    assert lines["force"].count(" eV/Å)") == 2, lines
