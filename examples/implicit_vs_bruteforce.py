"""Validation of the implicit expansion against brute-force re-minimisation (Fig. 11 of the paper).

For ``--n`` posterior members of the tungsten teacher/student run: bcc and hcp volumes per
atom, their ratio, hcp − bcc energy, the vacancy formation energy and the first-neighbour
migration barrier, predicted by :mod:`popsdask.properties.implicit` (expansions at
the MLE, fallback off so that every member is compared) and recomputed by brute force
(relaxations; CI-NEB per member started from the MLE path, 53-atom cell). Writes
``results.npz``, ``summary.json`` and ``summary.md`` into ``--out``; brute-force results are
appended to ``brute.jsonl`` as they finish, so a rerun resumes.

Usage::

    popsdask demo --tungsten --configs 3000 -o runs/tungsten-3000
    nohup python examples/implicit_vs_bruteforce.py --run runs/tungsten-3000 \\
        --out runs/implicit-validation --n 100 --workers 2 > runs/implicit-validation.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor, TimeoutError, as_completed
from pathlib import Path

import numpy as np

QUANTITIES = ("bcc_volume", "hcp_volume", "volume_ratio", "hcp_bcc_energy", "formation_energy", "migration_barrier")


def _settings(run: Path):
    import xarray as xr

    from popsdask.atomistic.descriptors.snap import SnapSettings

    attrs = xr.open_zarr(run / "descriptors.zarr", consolidated=False).attrs
    return SnapSettings.from_attrs(attrs["snap"])


def _brute_static(args: tuple) -> dict:
    """bcc/hcp relaxations and the relaxed vacancy (formation energy) of one member."""
    i, theta, settings, size = args
    from popsdask.properties.implicit import brute_force_phases, vacancy_cell
    from popsdask.properties.potential import Potential
    from popsdask.properties.relax import bcc_ground_state, relax

    pot = Potential(f"sample-{i:04d}", np.asarray(theta, dtype=float), settings)
    t0 = time.perf_counter()
    ph = brute_force_phases(pot)
    t1 = time.perf_counter()
    a0, e0 = bcc_ground_state(pot)
    r = relax(vacancy_cell(a0, size), pot, cell="none", fmax=1e-4, max_steps=5000)
    ef = r.energy - (2 * size**3 - 1) * e0 if r.converged else float("nan")
    t2 = time.perf_counter()
    vb, eb_, sb = ph["bcc"]
    vh, eh, sh = ph["hcp"]
    return {
        "i": i,
        "bcc_volume": vb,
        "hcp_volume": vh,
        "volume_ratio": vh / vb,
        "hcp_bcc_energy": eh - eb_,
        "formation_energy": ef,
        "status": f"bcc {sb}; hcp {sh}; vacancy {r.reason}",
        "seconds_phases": t1 - t0,
        "seconds_formation": t2 - t1,
    }


def _brute_neb(args: tuple) -> dict:
    """CI-NEB barrier of one member, started from the MLE path."""
    i, theta, settings, path, size = args
    from popsdask.properties.implicit import hop_neb
    from popsdask.properties.potential import Potential

    pot = Potential(f"sample-{i:04d}", np.asarray(theta, dtype=float), settings)
    t0 = time.perf_counter()
    res = hop_neb(pot, size=size, guess=path, n_images=len(path), fmax=1e-2, max_steps=300)
    return {
        "i": i,
        "migration_barrier": res["barrier"],
        "neb_status": res["status"],
        "seconds_neb": time.perf_counter() - t0,
    }


def _pool_map(fn, jobs, jl: Path, done: dict, workers: int, deadline: float, what: str) -> None:
    ex = ProcessPoolExecutor(max_workers=workers)
    futures = [ex.submit(fn, j) for j in jobs]
    t0 = time.perf_counter()
    timed_out = False
    with jl.open("a") as fh:
        try:
            for k, fut in enumerate(as_completed(futures, timeout=max(deadline - time.perf_counter(), 1.0))):
                r = fut.result()
                done[r["i"]] = r
                fh.write(json.dumps(r, default=float) + "\n")
                fh.flush()
                if k % 10 == 0:
                    print(f"{what}: {len(done)} done ({time.perf_counter() - t0:.0f} s)", flush=True)
        except TimeoutError:
            timed_out = True
            print(f"{what}: --max-wall reached with {len(done)} members done", flush=True)
    procs = list((getattr(ex, "_processes", None) or {}).values())
    ex.shutdown(wait=False, cancel_futures=True)
    if timed_out:
        for proc in procs:  # stop the running tasks too (this pool's own workers)
            proc.terminate()


def _load(jl: Path) -> dict:
    out = {}
    if jl.exists():
        for line in jl.read_text().splitlines():
            r = json.loads(line)
            out[r["i"]] = r
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="directory of `popsdask demo --tungsten`")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-wall", type=float, default=1800.0, help="stop brute force after this (s, whole run)")
    args = ap.parse_args()

    from popsdask.engine.posterior import Posterior
    from popsdask.properties.implicit import (
        mle_expansions_phases,
        mle_expansions_vacancy,
        phases_implicit,
        vacancy_implicit,
    )

    t_start = time.perf_counter()
    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = _settings(run)
    post = Posterior.load(run / "posterior.zarr")
    theta0 = np.asarray(post.coef_, float)
    theta = np.asarray(post.sample(args.n, seed=args.seed).values, float)
    print(f"{args.n} members, P = {theta.shape[1]}, settings twojmax {settings.twojmax}", flush=True)

    # ---------------------------------------------------------------- implicit (timed)
    t0 = time.perf_counter()
    ep = mle_expansions_phases(theta0, settings)
    t1 = time.perf_counter()
    ev = mle_expansions_vacancy(theta0, settings, size=args.size)
    t2 = time.perf_counter()
    dp = phases_implicit(theta0, settings, theta, expansions=ep, fallback=False)
    dv = vacancy_implicit(theta0, settings, theta, size=args.size, expansions=ev, fallback=False)
    t3 = time.perf_counter()
    timing = {
        "implicit_setup_phases_s": t1 - t0,
        "implicit_setup_vacancy_s": t2 - t1,
        "implicit_setup_vacancy_breakdown_s": {k: ev[k].seconds for k in ("bcc", "vacancy", "saddle")},
        "implicit_predict_s": t3 - t2,
    }
    print(json.dumps(timing), flush=True)
    print("MLE NEB:", {k: v for k, v in ev["neb"].items() if k != "energies"}, flush=True)
    imp = {
        "bcc_volume": dp.volume_per_atom.sel(phase="bcc").values,
        "hcp_volume": dp.volume_per_atom.sel(phase="hcp").values,
        "volume_ratio": dp.volume_ratio.values,
        "hcp_bcc_energy": dp.energy_difference.values,
        "formation_energy": dv.formation_energy.values,
        "migration_barrier": dv.migration_barrier.values,
    }
    first = {
        "hcp_bcc_energy": (
            dp.energy_per_atom_first.sel(phase="hcp").values - dp.energy_per_atom_first.sel(phase="bcc").values
        ),
        "formation_energy": dv.formation_energy_first.values,
        "migration_barrier": dv.migration_barrier_first.values,
    }
    flags = {
        "phases": dp.status.values.astype(str),
        "formation_energy": dv.status_formation.values.astype(str),
        "migration_barrier": dv.status_barrier.values.astype(str),
    }
    mle_values = {"migration_barrier": ev["neb"]["barrier"]}

    # ---------------------------------------------------------------- brute force (timed, resumable)
    # pass 1: relaxations of every member; pass 2: CI-NEB per member until --max-wall
    deadline = t_start + args.max_wall
    static, neb = _load(out / "brute_static.jsonl"), _load(out / "brute_neb.jsonl")
    for i, r in _load(out / "brute.jsonl").items():  # an earlier single-pass run: both parts
        static.setdefault(i, {**r, "seconds_formation": 0.0})
        neb.setdefault(i, {"i": i, "migration_barrier": r["migration_barrier"], "seconds_neb": r["seconds_vacancy"]})
    tb = time.perf_counter()
    jobs = [(i, theta[i], settings, args.size) for i in range(args.n) if i not in static]
    _pool_map(_brute_static, jobs, out / "brute_static.jsonl", static, args.workers, deadline, "relaxations")
    t_static = time.perf_counter() - tb
    path = ev["path"]
    jobs = [(i, theta[i], settings, path, args.size) for i in range(args.n) if i not in neb]
    _pool_map(_brute_neb, jobs, out / "brute_neb.jsonl", neb, args.workers, deadline, "NEB")
    wall_brute = time.perf_counter() - tb
    done = {i: {**static.get(i, {}), **neb.get(i, {})} for i in range(args.n)}
    finished = [i for i in range(args.n) if i in static and i in neb]
    bf = {q: np.array([done[i].get(q, np.nan) for i in range(args.n)], float) for q in QUANTITIES}
    bf_phases = float(sum(static[i]["seconds_phases"] + static[i]["seconds_formation"] for i in static))
    bf_vac = float(sum(neb[i]["seconds_neb"] for i in neb))
    cpu_brute = bf_phases / max(len(static), 1) * args.n + bf_vac / max(len(neb), 1) * args.n
    timing["brute_force_static_wall_s"] = t_static
    timing["n_static"] = len(static)
    timing["n_neb"] = len(neb)

    # ---------------------------------------------------------------- comparison
    def stats(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> dict:
        ok = np.isfinite(pred) & np.isfinite(ref)
        if mask is not None:
            ok &= mask
        if not ok.any():
            return {"n": 0}
        rel = np.abs(pred[ok] - ref[ok]) / np.abs(ref[ok])
        return {
            "n": int(ok.sum()),
            "median_rel_err": float(np.median(rel)),
            "p90_rel_err": float(np.percentile(rel, 90)),
            "max_rel_err": float(rel.max()),
            "frac_within_4pct": float(np.mean(rel < 0.04)),
            "mae": float(np.mean(np.abs(pred[ok] - ref[ok]))),
            "ref_std": float(np.std(ref[ok])),
        }

    flag_of = {
        "bcc_volume": flags["phases"][:, 0],
        "hcp_volume": flags["phases"][:, 1],
        "volume_ratio": np.where(flags["phases"][:, 0] == "ok", flags["phases"][:, 1], flags["phases"][:, 0]),
        "hcp_bcc_energy": np.where(flags["phases"][:, 0] == "ok", flags["phases"][:, 1], flags["phases"][:, 0]),
        "formation_energy": flags["formation_energy"],
        "migration_barrier": flags["migration_barrier"],
    }
    summary = {"n_members": args.n, "n_brute_force": len(finished), "timing": timing, "mle": mle_values}
    summary["quantities"] = {}
    for q in QUANTITIES:
        unflagged = flag_of[q] == "ok"
        entry = {
            "second_order_all": stats(imp[q], bf[q]),
            "second_order_unflagged": stats(imp[q], bf[q], unflagged),
            "second_order_flagged": stats(imp[q], bf[q], ~unflagged),
            "n_flagged": int((~unflagged).sum()),
        }
        if q in first:
            entry["first_order_all"] = stats(first[q], bf[q])
            entry["first_order_unflagged"] = stats(first[q], bf[q], unflagged)
        summary["quantities"][q] = entry
    t_imp = timing["implicit_setup_phases_s"] + timing["implicit_setup_vacancy_s"] + timing["implicit_predict_s"]
    n_flag_any = int(np.sum((flag_of["volume_ratio"] != "ok") | (flags["formation_energy"] != "ok")
                            | (flags["migration_barrier"] != "ok")))  # fmt: skip
    summary["speed"] = {
        "implicit_total_s": t_imp,
        "brute_force_wall_s": wall_brute,
        "brute_force_workers": args.workers,
        "brute_force_cpu_s": cpu_brute,
        "brute_force_phases_cpu_s": bf_phases,
        "brute_force_vacancy_cpu_s": bf_vac,
        "brute_force_cpu_per_member_s": cpu_brute / args.n,
        "brute_force_cpu_note": "per-member task times (relaxations, NEB) averaged over the finished members x n",
        "speedup_serial": cpu_brute / t_imp,
        "members_flagged_any": n_flag_any,
        "implicit_with_fallback_estimate_s": t_imp + cpu_brute / args.n * n_flag_any,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    np.savez(
        out / "results.npz",
        **{f"implicit_{q}": imp[q] for q in QUANTITIES},
        **{f"first_{q}": v for q, v in first.items()},
        **{f"brute_{q}": bf[q] for q in QUANTITIES},
        **{f"flag_{q}": flag_of[q] for q in QUANTITIES},
        **{f"diag_{v}": dv[v].values for v in dv.data_vars if v.split("_")[0] in ("hessian", "max", "rel")},
        diag_hessian_change_phases=dp.hessian_change.values,
        diag_max_displacement_phases=dp.max_displacement.values,
    )
    lines = [
        f"# Implicit vs brute force, {args.n} members of {run}",
        "",
        "| quantity | n | median rel. err | 90th pct | max | within 4 % | 1st-order median | flagged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for q in QUANTITIES:
        e = summary["quantities"][q]
        a = e["second_order_all"]
        f1 = e.get("first_order_all", {}).get("median_rel_err", float("nan"))
        lines.append(
            f"| {q} | {a.get('n', 0)} | {a.get('median_rel_err', np.nan):.2e} | {a.get('p90_rel_err', np.nan):.2e} "
            f"| {a.get('max_rel_err', np.nan):.2e} | {a.get('frac_within_4pct', np.nan):.0%} | {f1:.2e} "
            f"| {e['n_flagged']} |"
        )
    sp = summary["speed"]
    lines += [
        "",
        f"implicit total {sp['implicit_total_s']:.1f} s (setup + all members); brute force "
        f"{sp['brute_force_cpu_per_member_s']:.1f} s per member (relaxations of {len(static)} members, NEB of "
        f"{len(neb)}; {sp['brute_force_wall_s']:.0f} s wall on {args.workers} workers); "
        f"serial speed-up for {args.n} members {sp['speedup_serial']:.0f}x",
    ]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
