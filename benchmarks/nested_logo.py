"""Nested leave-one-group-out tables of the calibrated band, every group, coverage and width together.

For each finished ``popsdask crossval --group-by group`` run given, every left-out group is
calibrated from the *other* groups' fold predictions only
(:func:`popsdask.evaluation.crossval.calibrated_crossval`, the library's calibration form) and
its raw and calibrated bands are tabulated per row kind on the same rows (symmetry zeros out).
``--tolerance`` states the references' precision (energy per atom, force), used in the
calibration and in the metrics; the violations it forgives are counted in their own column. The
last column compares the rows of the top decile of the support score (the regularised leverage
of :func:`popsdask.engine.predictions.support_score`) with the rest; every decile is in the JSON.
Writes ``nested_logo.json`` and ``nested_logo.md`` into ``--out``::

    popsdask descriptors ../shared/data/fitsnap-ta/JSON -o ta/descriptors.zarr --twojmax 4 --rcutfac 4.67637
    popsdask crossval ta/descriptors.zarr --group-by group -o ta/crossval --ev-curve none
    python benchmarks/nested_logo.py Ta=ta/crossval W=w/crossval --tolerance energy=0.001,force=0.001 --out nested

``benchmarks/nested_tables.sh`` runs the whole pipeline for W, W–Be and Ta (FitSNAP's group weights).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from popsdask.calibration.metrics import parse_tolerance
from popsdask.evaluation.crossval import calibrated_crossval

#: the targets' group sizes: force rows (non-zero) and configurations for energies
MIN_FORCE_ROWS = 1000
MIN_CONFIGURATIONS = 50


def top_versus_rest(deciles: dict | None) -> str:
    """The calibrated EV and mean width of the top support decile against the other nine."""
    if not deciles or len(deciles["n"]) < 2:
        return "–"
    n = np.asarray(deciles["n"], dtype=float)
    ev, width = (
        np.nan_to_num(np.asarray(deciles[k], dtype=float)) for k in ("envelope_violation", "mean_envelope_width")
    )
    rest = n[:-1].sum()
    ev_rest, width_rest = (float((v[:-1] * n[:-1]).sum() / rest) if rest else float("nan") for v in (ev, width))
    return f"{ev[-1]:.2%} vs {ev_rest:.2%}, {width[-1]:.3g} vs {width_rest:.3g}"


def table(name: str, result: dict, kind: str, level: float) -> list[str]:
    """Markdown lines: one per left-out group of one row kind; groups below the targets' size marked."""
    lines = [
        f"**{name}, {kind}** (level {level}; † below the targets' size)",
        "",
        "| left out | rows | EV raw → cal | below floor (cal) | ±4σ raw → cal | mean \\|err\\|/σ raw → cal "
        "| mean σ raw → cal | mean width raw → cal (×) | support top decile vs rest: EV cal, mean width cal |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for group, kinds in result.items():
        m = kinds.get(kind)
        if m is None:
            continue
        r, c = m["raw"], m["calibrated"]
        used = r["n"] - r["n_symmetry_zeros"]
        if used == 0:
            lines.append(f"| {group} | 0 | all rows are symmetry zeros | | | | | | |")
            continue
        mark = " †" if used < (MIN_FORCE_ROWS if kind == "force" else MIN_CONFIGURATIONS) else ""
        lines.append(
            f"| {group}{mark} | {used} | {r['envelope_violation']:.2%} → {c['envelope_violation']:.2%} "
            f"| {c['n_violations_below_floor']} | {r['coverage_4sigma']:.2%} → {c['coverage_4sigma']:.2%} "
            f"| {r['mean_abs_error_over_std']:.3g} → {c['mean_abs_error_over_std']:.3g} "
            f"| {r['mean_std']:.3g} → {c['mean_std']:.3g} "
            f"| {r['mean_envelope_width']:.3g} → {c['mean_envelope_width']:.3g} ({m['width_ratio']:.3g}×) "
            f"| {top_versus_rest(c.get('support_deciles'))} |"
        )
    return lines + [""]


def decile_table(name: str, result: dict, kind: str) -> list[str]:
    """Markdown lines: EV and mean width by support-score decile, each left-out group's k-th decile
    (of its own rows' scores) pooled over the groups, rows-weighted."""
    n, sums = np.zeros(10), {k: np.zeros(10) for k in ("ev_raw", "ev_cal", "width_raw", "width_cal")}
    for kinds in result.values():
        m = kinds.get(kind)
        deciles = [m[b].get("support_deciles") for b in ("raw", "calibrated")] if m else [None]
        if not all(deciles) or len(deciles[0]["n"]) != 10:
            continue
        raw, cal = deciles
        c = np.asarray(raw["n"], dtype=float)
        n += c
        for key, d, v in (
            ("ev_raw", raw, "envelope_violation"),
            ("ev_cal", cal, "envelope_violation"),
            ("width_raw", raw, "mean_envelope_width"),
            ("width_cal", cal, "mean_envelope_width"),
        ):
            sums[key] += c * np.nan_to_num(np.asarray(d[v], dtype=float))
    lines = [
        f"**{name}, {kind}, by support-score decile** (each left-out group's deciles, pooled)",
        "",
        "| decile | rows | EV raw → cal | mean width raw → cal |",
        "|---:|---:|---:|---:|",
    ]
    for k in range(10):
        if n[k]:
            ev_raw, ev_cal, w_raw, w_cal = (sums[key][k] / n[k] for key in sums)
            lines.append(f"| {k + 1} | {int(n[k])} | {ev_raw:.2%} → {ev_cal:.2%} | {w_raw:.3g} → {w_cal:.3g} |")
    return lines + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="NAME=DIR: output directories of popsdask crossval --group-by group")
    ap.add_argument("--level", type=float, default=0.95)
    ap.add_argument("--tolerance", default=None, help="the references' precision, e.g. energy=0.001,force=0.001")
    ap.add_argument("--out", type=Path, default=Path("nested_logo"))
    args = ap.parse_args()
    floors = parse_tolerance(args.tolerance) if args.tolerance else None
    results, lines = {}, []
    for run in args.runs:
        name, _, path = run.partition("=")
        results[name] = calibrated_crossval(path, args.level, floors)
        for kind in ("energy_per_atom", "force"):
            lines += table(name, results[name], kind, args.level)
        lines += decile_table(name, results[name], "force")
    args.out.mkdir(parents=True, exist_ok=True)
    info = {"level": args.level, "tolerance": floors, "runs": args.runs, "results": results}
    (args.out / "nested_logo.json").write_text(json.dumps(info, indent=1, default=float) + "\n")
    (args.out / "nested_logo.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
