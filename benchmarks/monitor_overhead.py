"""The LAMMPS monitor's cost: the same W MD run with and without ``include monitor.lmp``.

A qSNAP student (``--twojmax``, quadratic) is fitted to configurations labelled by the oracle's
teacher and calibrated on its test split; ``popsdask export --monitor --every N`` writes its
monitor. Then one input runs a bcc crystal of ``2 * cells³`` atoms at 300 K for ``--steps`` NVE
steps under the MLE's ``pair_style snap``, thermo every N steps, once with the monitor included
(band, per-atom grade, band file, grade dump, fix halt, all every N steps) and once without,
``--repeats`` times alternately. Only the ``run`` command is timed; the monitor's one-off read
of its input is reported apart. The ratio of the medians is the overhead::

    python benchmarks/monitor_overhead.py --out monitor-bench --cells 10 --steps 1000 --every 100
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from popsdask.atomistic.descriptor_store import build_descriptor_store
from popsdask.atomistic.descriptors.snap import SnapSettings
from popsdask.atomistic.lammps_backend import load_lammps
from popsdask.atomistic.oracle import generate_tungsten_configurations
from popsdask.cli import main

SETUP = """units metal
atom_style atomic
boundary p p p
lattice bcc 3.18
region box block 0 {cells} 0 {cells} 0 {cells}
create_box 1 box
create_atoms 1 box
mass 1 183.84
velocity all create 600 1 loop geom
include mle.mod
thermo {every}
thermo_style custom step temp pe press
fix md all nve
"""


def student(out: Path, twojmax: int, n_configs: int, every: int) -> Path:
    """Fit, calibrate and export the monitor of a qSNAP student (once; reused when present)."""
    mon = out / "monitor"
    if mon.exists():
        return mon
    store, post, cal = out / "w.zarr", out / "post.zarr", out / "cal.zarr"
    if not store.exists():
        cfgs = generate_tungsten_configurations(n_configs, max_atoms=32, seed=0)
        build_descriptor_store(store, cfgs, SnapSettings(twojmax=twojmax))
    for argv in (
        ["fit", str(store), "-o", str(post), "--split", "train", "--quiet", "--overwrite"],
        ["calibrate", str(post), str(store), "--split", "test", "--level", "0.9", "-o", str(cal), "--quiet"],
        ["export", str(cal), "--monitor", "--every", str(every), "-o", str(mon)],
    ):
        if not (argv[0] == "calibrate" and cal.exists()) and main(argv) != 0:
            raise SystemExit(f"popsdask {argv[0]} failed")
    return mon


def grade_table(out: Path, modes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)) -> list[dict[str, float]]:
    """How much of the support score the per-atom grade keeps with ``modes`` directions, over the
    training set's mean atoms (energy rows / atoms): the kept fraction of the summed score and
    the correlation of the grade with the full score."""
    import numpy as np

    from popsdask.atomistic.monitor import energy_rows, grade_modes
    from popsdask.engine.linear_band import LinearBand
    from popsdask.engine.posterior import Posterior
    from popsdask.io.store import open_store

    band = LinearBand.from_posterior(Posterior.load(out / "cal.zarr"))
    X, n_atoms = energy_rows(open_store(out / "w.zarr"))
    A = X / n_atoms[:, None]
    w, v = np.linalg.eigh(band.metric)
    keep = w > w.max() * 1e-14
    root = v[:, keep] * np.sqrt(w[keep])
    full = band.support(A)
    rows = []
    for m in modes:
        W, kept = grade_modes(root, A, m)
        grade = ((A @ W) ** 2).sum(axis=1)
        rows.append({"modes": m, "kept": kept, "correlation": float(np.corrcoef(grade, full)[0, 1])})
    return rows


def timed_run(mon: Path, cells: int, steps: int, every: int, monitor: bool) -> dict[str, float]:
    """Wall-clock seconds of ``run steps`` (and of reading the monitor's input) in ``mon``."""
    lmp = load_lammps().lammps(cmdargs=["-log", "none", "-screen", "none"])
    cwd = os.getcwd()
    try:
        os.chdir(mon)
        lmp.commands_string(SETUP.format(cells=cells, every=every))
        t0 = time.perf_counter()
        if monitor:
            lmp.command("include monitor.lmp")
        t1 = time.perf_counter()
        lmp.command(f"run {steps}")
        t2 = time.perf_counter()
        done = int(lmp.get_thermo("step"))
        natoms = int(lmp.get_natoms())
    finally:
        os.chdir(cwd)
        lmp.close()
    if done != steps:
        raise SystemExit(f"the run stopped at step {done} of {steps} (the monitor halted it)")
    return {"run_s": t2 - t1, "include_s": t1 - t0, "atoms": natoms}


def main_(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--twojmax", type=int, default=6)
    p.add_argument("--configs", type=int, default=60)
    p.add_argument("--cells", type=int, default=10)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    mon = student(args.out, args.twojmax, args.configs, args.every)
    grades = grade_table(args.out)
    for row in grades:
        print(f"grade with {row['modes']} directions: kept {row['kept']:.3f}, correlation {row['correlation']:.4f}")
    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    for _ in range(args.repeats):
        for arm in ("off", "on"):
            runs[arm].append(timed_run(mon, args.cells, args.steps, args.every, arm == "on"))
            print(arm, runs[arm][-1], flush=True)
    off = statistics.median(r["run_s"] for r in runs["off"])
    on = statistics.median(r["run_s"] for r in runs["on"])
    result = {
        "atoms": runs["on"][0]["atoms"],
        "steps": args.steps,
        "every": args.every,
        "twojmax": args.twojmax,
        "monitor": json.loads((mon / "monitor.json").read_text()),
        "runs": runs,
        "median_off_s": off,
        "median_on_s": on,
        "ratio_on_off": on / off,
        "include_s": statistics.median(r["include_s"] for r in runs["on"]),
        "monitor_lmp_bytes": (mon / "monitor.lmp").stat().st_size,
        "grade": grades,
    }
    (args.out / "monitor_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['atoms']} atoms, {args.steps} steps, monitor every {args.every}: on/off = {on / off:.4f}")
    return result


if __name__ == "__main__":
    main_()
