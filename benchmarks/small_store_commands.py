"""Wall time of ``popsdask fit``, ``predict`` and ``report`` on a small store, by scheduler.

Each command runs as its own process (start-up, imports and exit included, as a user sees it),
on the default choice (the threaded scheduler below ``SMALL_INPUT_BYTES``) and on a LocalCluster
(``--cluster local``, the choice before); schedulers are interleaved repeat by repeat, so that
load from other users of the machine hits both alike. The table reports the median wall time,
the median CPU time (user + system of the command and its workers) and the ratio of the medians.
Any "Worker process still alive" line a command prints is counted. ``--baseline SRC`` adds the
default scheduler run from another checkout of popsdask (its source directory first on
``PYTHONPATH``, e.g. a ``git worktree`` of an older commit), in the same interleaved repeats.

    python benchmarks/small_store_commands.py STORE [--repeats 3] [--split-train train --split-test test]
        [--baseline SRC] [--without-local]

FitSNAP's Ta example as a store (13,035 rows, 496 qSNAP columns)::

    popsdask descriptors FITSNAP_TA/JSON -o ta.zarr --twojmax 6 --test-fraction 0.25
    python benchmarks/small_store_commands.py ta.zarr
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCHEDULERS = {"default (threads)": [], "--cluster local": ["--cluster", "local"]}
BASELINE = "baseline, default"


def _run(argv: list[str], source: str | None = None) -> tuple[float, float, int]:
    """(wall s, CPU s of the process tree, 'still alive' lines) of ``popsdask ARGV``, imported
    from ``source`` when given."""
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "popsdask.cli", *argv], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"popsdask {' '.join(argv)} failed:\n{proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stderr.count("still alive")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--split-train", default="train")
    parser.add_argument("--split-test", default="test")
    parser.add_argument("--baseline", metavar="SRC", help="source directory of the popsdask to compare with")
    parser.add_argument("--without-local", action="store_true", help="skip the --cluster local runs")
    args = parser.parse_args()
    runs = {name: (options, None) for name, options in SCHEDULERS.items() if options == [] or not args.without_local}
    if args.baseline:
        runs[BASELINE] = ([], args.baseline)
    times: dict[tuple[str, str], list[tuple[float, float, int]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for _ in range(args.repeats):
            for i, (name, (options, source)) in enumerate(runs.items()):
                tag = f"run{i}"
                post, pred, rep = d / f"post-{tag}.zarr", d / f"pred-{tag}.zarr", d / f"rep-{tag}"
                commands = {
                    "fit": ["fit", args.store, "--split", args.split_train, "-o", str(post), *options],
                    "predict": ["predict", str(post), args.store, "--split", args.split_test, "-o", str(pred)],
                    "report": ["report", str(pred), "-o", str(rep)],
                }
                commands["predict"] += options
                for command, argv in commands.items():
                    times.setdefault((command, name), []).append(_run([*argv, "--overwrite"], source))
    reference = list(runs)[-1]  # the baseline, else the LocalCluster
    print(f"| command | run | wall (median of {args.repeats}) | CPU | wall / {reference}'s | 'still alive' |")
    print("|---|---|---:|---:|---:|---:|")
    for command in ("fit", "predict", "report"):
        base = statistics.median(t[0] for t in times[(command, reference)])
        for name in runs:
            measured = times[(command, name)]
            wall = statistics.median(t[0] for t in measured)
            cpu = statistics.median(t[1] for t in measured)
            killed = sum(t[2] for t in measured)
            print(f"| {command} | {name} | {wall:.2f} s | {cpu:.2f} s | {wall / base:.2f} | {killed} |")


if __name__ == "__main__":
    main()
