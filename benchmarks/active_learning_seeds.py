"""The active-learning loop over several seeds: each seed draws its own initial set, held-out set
and MD, so one seed's labels-to-reach says little on its own.

    python benchmarks/active_learning_seeds.py --outdir al-seeds --seeds 0,1,2,3,4 \\
        --select energy,forces,forces-variance,energy:4,forces:4,forces-variance:4,random:4 --random-seeds 6

Runs (or resumes) :func:`popsdask.demo.active_learning.run_active_learning` in ``OUTDIR/seed-S``
for every seed, then writes ``OUTDIR/seeds.md`` (printed) and ``OUTDIR/seeds.json``: per arm and
seed, the labels it added before its held-out force MAE was at or below a random final, as a share
of that random arm's labels, in how many seeds that share was ≤ 50 %, and the same on the
curves averaged over the seeds (each random arm averaged with its namesakes), whose force MAE per
round it tabulates too.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from popsdask.demo.active_learning import (
    LoopSettings,
    is_random_seed_arm,
    reach_text,
    run_active_learning,
    targets,
)

#: the random finals an arm is measured against: (title, key of the arm's targets or None for the arm's own)
REFERENCES = (
    ("the `random` arm's final", None),
    ("the random seeds' mean final", "random_mean"),
    ("the final of the random arm with the arm's labels per round", "same_labels_per_round"),
)


def mean_curves(runs: dict[int, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Every arm's held-out force MAE per round, averaged over the loop seeds."""
    curves = [r["curves"] for r in runs.values()]
    return {
        arm: [
            {"labels_added": c[0]["labels_added"], "force_mae": sum(x["force_mae"] for x in c) / len(c)}
            for c in zip(*(cs[arm] for cs in curves), strict=True)
        ]
        for arm in curves[0]
    }


def header(seeds: list[int], *extra: str) -> list[str]:
    """A Markdown table's head: the arm, one column per seed, then ``extra``."""
    columns = [f"seed {s}" for s in seeds] + list(extra)
    return ["| arm | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]


def reach_rows(runs: dict[int, dict[str, Any]], mean: dict[str, Any], key: str | None) -> list[str]:
    """Markdown rows: per arm, each seed's labels to reach (share), the seeds where it was ≤ 50 %,
    and the same on the curves averaged over the seeds (``mean``: their targets' arms)."""
    lines = []
    for arm in mean:
        got = [r["targets"]["arms"][arm] for r in runs.values()] + [mean[arm]]
        got = [g if key is None else g.get(key) for g in got]
        if any(g is None for g in got):
            continue
        met = sum(bool(g["labels_target_met"]) for g in got[:-1])
        cells = " | ".join(map(reach_text, got[:-1]))
        lines.append(f"| {arm} | {cells} | {met} of {len(runs)} | {reach_text(got[-1])} |")
    return lines


def mean_table(curves: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Markdown rows: per round, every arm's held-out force MAE averaged over the seeds, with the
    mean and range of the random arms at the loop's labels per round."""
    randoms = [a for a in curves if is_random_seed_arm(a)]
    lines = ["| round | labels added | " + " | ".join(curves) + " | random arms: mean (min–max) |"]
    lines.append("|---:|---|" + "---:|" * (len(curves) + 1))
    for rnd, row in enumerate(zip(*curves.values(), strict=True)):
        labels = " / ".join(map(str, sorted({c["labels_added"] for c in row}, reverse=True)))
        maes = [c["force_mae"] for c in row]
        rand = [curves[a][rnd]["force_mae"] for a in randoms]
        spread = f"{sum(rand) / len(rand):.4f} ({min(rand):.4f}–{max(rand):.4f})"
        lines.append(f"| {rnd} | {labels} | " + " | ".join(f"{m:.4f}" for m in maes) + f" | {spread} |")
    return lines


def seeds_table(runs: dict[int, dict[str, Any]]) -> str:
    """Markdown: the seed-averaged curves, the random finals per seed, the labels-to-reach tables
    and every arm's final MAE."""
    seeds = list(runs)
    curves = mean_curves(runs)
    mean = targets(curves, [])["arms"]
    finals = " | ".join(
        f"{t['random_final_force_mae']:.4f} ({t['random_final_force_mae_range'][0]:.4f}–"
        f"{t['random_final_force_mae_range'][1]:.4f})"
        for t in (r["targets"] for r in runs.values())
    )
    blocks = ["Held-out force MAE (eV/Å) averaged over the seeds:", "", *mean_table(curves), ""]
    blocks += ["Random's final held-out force MAE in eV/Å (range over the random seeds):", ""]
    blocks += [*header(seeds), f"| random | {finals} |", ""]
    for title, key in REFERENCES:
        rows = reach_rows(runs, mean, key)
        if rows:
            blocks += [f"Labels to reach {title}:", "", *header(seeds, "≤ 50 % in", "mean curve"), *rows, ""]
    blocks += ["Final held-out force MAE (eV/Å):", "", *header(seeds, "mean")]
    for arm in runs[seeds[0]]["curves"]:
        maes = [r["curves"][arm][-1]["force_mae"] for r in runs.values()]
        blocks.append(f"| {arm} | " + " | ".join(f"{m:.4f}" for m in maes) + f" | {sum(maes) / len(maes):.4f} |")
    return "\n".join(blocks) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--outdir", default="al-seeds")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated loop seeds")
    for f in fields(LoopSettings):
        if f.name != "seed":
            p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    args = p.parse_args()
    loop = LoopSettings(**{f.name: getattr(args, f.name) for f in fields(LoopSettings) if f.name != "seed"})
    out = Path(args.outdir)
    runs = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        t0 = time.perf_counter()
        res = run_active_learning(out / f"seed-{seed}", replace(loop, seed=seed), log=lambda s: print(s, flush=True))
        runs[seed] = {"targets": res["targets"], "curves": res["curves"]}
        print(f"seed {seed}: done ({time.perf_counter() - t0:.0f} s)", flush=True)
    text = seeds_table(runs)
    (out / "seeds.md").write_text(text)
    (out / "seeds.json").write_text(json.dumps(runs, indent=1))
    print(text)


if __name__ == "__main__":
    main()
