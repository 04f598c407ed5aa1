"""Chaos soak: a large out-of-core fit while worker processes are SIGKILLed at random.

    python benchmarks/chaos_soak.py                       # 5M x 256 float32 in the --workdir
    python benchmarks/chaos_soak.py --rows 2000000 --keep-data --kill-seeds 1,2,3

A seeded N x P float32 descriptor store (planted linear model plus a misspecification,
y = X θ + 0.1 sin(3 x₀): the out-of-core benchmark's store writer in popsdask's bench module)
is written under ``--workdir`` (outside the repository; ``--keep-data`` keeps it and reuses it
next time). It is fitted on one local cluster of ``--workers`` worker processes with one thread
each (popsdask's ``connect``, so ``local.NannyLocalCluster``), in one pair of fits per
``--kill-seeds`` entry:

1. undisturbed;
2. while a background thread SIGKILLs a random registered worker process every U(5, 15) s
   (intervals and choices from the kill seed; the PID is the nanny's worker process); the
   nannies restart them.

Every array and scalar of each posterior is compared with the first undisturbed fit (max
absolute deviation, and that over the largest entry of the reference; pass: <= 1e-12). Recorded: kills
delivered, kills survived (the fit finished, the result matched, every killed worker's nanny
brought a new process back), each restart's latency, the wall time of both fits and their ratio,
the peak RSS of each worker (by worker name, over all its processes; psutil, every 0.5 s from a
thread of this process), tasks finished per fit (recomputation shows as
extra), distributed's ``allowed-failures`` and the largest ``suspicious`` count of a task that
still finished (a task above ``allowed-failures`` fails the fit with KilledWorker). A fit that
raises (KilledWorker) or does not finish within ``--timeout`` is reported with the task states
and the worker and nanny logs.

Why a disturbed fit can end in KilledWorker (measured 2026-12-01, distributed 2026.8.0): the
scheduler adds one to the ``suspicious`` count of every task *assigned* to a worker that dies,
running or not (dask/distributed#5234; dask/distributed#6396, counting only executing tasks, was abandoned), and
fails a task whose count exceeds ``distributed.scheduler.allowed-failures`` (3). Passes 1-2 are
queued (about 2 tasks per one-thread worker), but passes 3-4 depend on pass 2's leverage blocks
persisted on the workers, so they are not queued: each worker is assigned about a third of the
pass, and every kill also loses the leverage blocks it held, recomputed from the store. A fit
that lives through many kills (a loaded machine: 15 and 50 kills) then sees some task assigned
to 4 killed workers. popsdask's LocalCluster now allows 20
(:data:`popsdask.runtime.local.LOCAL_ALLOWED_FAILURES`); ``--allowed-failures 3`` reproduces dask's
default.

Results: ``WORKDIR/chaos-soak.json`` and ``WORKDIR/chaos-soak.md`` (also printed; each run
replaces them). Exit status 0 when every disturbed fit finished, every kill was survived and
the results match, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
CHUNK_ROWS = 65536  # the bench store writer's chunk (64 MiB of float32 X at P = 256)
SAMPLE_SECONDS = 0.5
TOLERANCE = 1e-12


def _store_writer():
    """The out-of-core benchmark's seeded store writer (popsdask.bench, or benchmarks/ once moved)."""
    try:
        from popsdask.bench import _write_ooc_store
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench import _write_ooc_store  # type: ignore[no-redef]
    return _write_ooc_store


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S', time.gmtime())}] {msg}", flush=True)


# ---------------------------------------------------------------------------- the store
def store_bytes(rows: int, p: int) -> int:
    return rows * p * 4 + rows * 8 * 2  # X float32, y float64 and row coordinates (an upper bound)


def prepare(workdir: Path, rows: int, p: int, seed: int, keep: bool) -> tuple[Path, float]:
    from popsdask.io.store import is_complete, open_store

    path = workdir / f"chaos-{rows}x{p}-seed{seed}.zarr"
    if keep and is_complete(path) and open_store(path)["X"].shape == (rows, p):
        log(f"reusing {path}")
        return path, float("nan")
    need = store_bytes(rows, p)
    free = shutil.disk_usage(workdir).free + (_du(path) if path.exists() else 0)
    if free < need + 2e9:
        fit_rows = max(int((free - 2e9) / store_bytes(1, p)) // CHUNK_ROWS * CHUNK_ROWS, 0)
        sys.exit(
            f"chaos_soak: {workdir}: {free / 1e9:.1f} GB free, the store needs {need / 1e9:.1f} GB + 2 GB; "
            f"try --rows {fit_rows}"
        )
    log(f"writing {path} ({rows:,} x {p} float32, {need / 1e9:.1f} GB, chunks of {CHUNK_ROWS} rows)")
    seconds = _store_writer()(path, rows, p, seed)
    log(f"wrote the store in {seconds:.0f} s")
    return path, seconds


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ---------------------------------------------------------------------------- observers
class Sampler(threading.Thread):
    """Peak RSS per worker name (every process that name had) and of this process."""

    def __init__(self, cluster: Any):
        super().__init__(daemon=True, name="chaos-sampler")
        self.cluster = cluster
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with getattr(self, "lock", contextlib.nullcontext()):
            self.peak: dict[str, float] = {}
            self.pids: dict[str, set[int]] = {}
            self.driver_peak = 0.0

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "peak_rss_gb_per_worker": {k: round(v / 1e9, 3) for k, v in sorted(self.peak.items())},
                "worker_processes": {k: sorted(v) for k, v in sorted(self.pids.items())},
                "peak_rss_gb_driver": round(self.driver_peak / 1e9, 3),
            }

    def run(self) -> None:
        me = psutil.Process()
        procs: dict[int, psutil.Process] = {}
        while not self.stop.wait(SAMPLE_SECONDS):
            nannies = dict(self.cluster.workers)  # name -> Nanny (in this process)
            with self.lock:
                with contextlib.suppress(psutil.Error):
                    self.driver_peak = max(self.driver_peak, me.memory_info().rss)
                for name, nanny in nannies.items():
                    pid = _worker_pid(nanny)
                    if pid is None:
                        continue
                    key = str(name)
                    self.pids.setdefault(key, set()).add(pid)
                    try:
                        proc = procs.get(pid) or procs.setdefault(pid, psutil.Process(pid))
                        self.peak[key] = max(self.peak.get(key, 0.0), proc.memory_info().rss)
                    except psutil.Error:
                        procs.pop(pid, None)


def _worker_pid(nanny: Any) -> int | None:
    try:
        pid = nanny.pid
    except Exception:  # noqa: BLE001 - a nanny between processes
        return None
    return int(pid) if pid else None


def _registered_pids(cluster: Any) -> set[int]:
    return {int(ws.pid) for ws in list(cluster.scheduler.workers.values()) if ws.pid}


class Killer(threading.Thread):
    """SIGKILL a random registered worker process every U(lo, hi) s; time each nanny's restart."""

    def __init__(self, cluster: Any, seed: int, lo: float, hi: float):
        super().__init__(daemon=True, name="chaos-killer")
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.lo, self.hi = lo, hi
        self.stop = threading.Event()
        self.kills: list[dict[str, Any]] = []
        self.t0 = time.monotonic()

    def _check_restarts(self) -> None:
        registered = _registered_pids(self.cluster)
        nannies = {str(name): nanny for name, nanny in dict(self.cluster.workers).items()}
        for k in self.kills:
            if k.get("restart_s") is not None:
                continue
            pid = _worker_pid(nannies[k["worker"]]) if k["worker"] in nannies else None
            if pid is not None and pid != k["pid"] and pid in registered:
                k["restart_s"] = round(time.monotonic() - k["_t"], 2)
                k["new_pid"] = pid

    def run(self) -> None:
        while not self.stop.is_set():
            due = time.monotonic() + self.rng.uniform(self.lo, self.hi)
            while time.monotonic() < due and not self.stop.is_set():
                self._check_restarts()
                self.stop.wait(0.1)
            if self.stop.is_set():
                return
            pick = self.rng.random()
            while not self.stop.is_set():  # a worker to kill: registered with the scheduler
                registered = _registered_pids(self.cluster)
                alive = sorted(
                    (str(name), pid)
                    for name, nanny in dict(self.cluster.workers).items()
                    if (pid := _worker_pid(nanny)) is not None and pid in registered
                )
                if alive:
                    break
                self._check_restarts()
                self.stop.wait(0.1)
            else:
                return
            name, pid = alive[int(pick * len(alive))]
            t = time.monotonic()
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.kills.append({"t_s": round(t - self.t0, 2), "worker": name, "pid": pid, "restart_s": None, "_t": t})
            log(f"  kill {len(self.kills)}: worker {name} (PID {pid}) at {t - self.t0:.1f} s, {len(alive)} registered")

    def finish(self, timeout: float = 120.0) -> list[dict[str, Any]]:
        """Stop killing; wait (deadline) for every killed worker to be back; return the kills."""
        self.stop.set()
        self.join()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(k.get("restart_s") is None for k in self.kills):
            self._check_restarts()
            time.sleep(0.1)
        return [{k: v for k, v in kill.items() if k != "_t"} for kill in self.kills]


def task_counter(scheduler: Any) -> Any:
    from distributed.diagnostics.plugin import SchedulerPlugin

    class TaskCounter(SchedulerPlugin):
        name = "chaos-soak-task-counter"

        def __init__(self) -> None:
            self.memory = 0
            self.erred = 0
            self.max_suspicious = 0  # the most kills one finished task lived through (KilledWorker above the limit)

        def transition(self, key, start, finish, *args, **kwargs):
            if finish == "memory":
                self.memory += 1
                ts = scheduler.tasks.get(key)
                if ts is not None and ts.suspicious > self.max_suspicious:
                    self.max_suspicious = ts.suspicious
            elif finish == "erred":
                self.erred += 1

    plugin = TaskCounter()
    scheduler.add_plugin(plugin)
    return plugin


# ---------------------------------------------------------------------------- a fit
def timed_fit(client: Any, store: Path, timeout: float) -> tuple[Any, float, str | None]:
    """popsdask.fit(store) in a thread, with a deadline; (posterior or None, seconds, error)."""
    from popsdask.engine.estimator import fit

    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["post"] = fit(store)
        except BaseException as exc:  # noqa: BLE001 - reported
            box["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=target, daemon=True, name="chaos-fit")
    t = time.perf_counter()
    thread.start()
    next_note = t + 30
    while thread.is_alive():
        thread.join(1.0)
        now = time.perf_counter()
        if now - t > timeout:
            return None, now - t, f"hang: no result after {timeout:.0f} s"
        if now >= next_note:
            next_note += 30
            states: dict[str, int] = {}
            for ts in list(client.cluster.scheduler.tasks.values()):
                states[ts.state] = states.get(ts.state, 0) + 1
            log(f"  {now - t:.0f} s, {len(client.cluster.scheduler.workers)} workers, tasks {states}")
    return box.get("post"), time.perf_counter() - t, box.get("error")


def release_erred(client: Any, timeout: float = 60.0) -> float | None:
    """After a failed fit: collect the reference cycles of its traceback (they hold the fit's
    futures) and wait (deadline) until the scheduler forgot every erred task. Fits use pure,
    deterministic keys, so a later fit of the same store would otherwise get the same erred task
    back and fail at once. Seconds it took, None if erred tasks remain."""
    import gc

    t = time.monotonic()
    while time.monotonic() - t < timeout:
        gc.collect()
        if not any(ts.state == "erred" for ts in list(client.cluster.scheduler.tasks.values())):
            return round(time.monotonic() - t, 2)
        time.sleep(0.5)
    return None


def diagnostics(client: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        states: dict[str, int] = {}
        suspicious = {}
        for key, ts in list(client.cluster.scheduler.tasks.items()):
            states[ts.state] = states.get(ts.state, 0) + 1
            if ts.suspicious:
                suspicious[str(key)] = ts.suspicious
        out["task_states"] = states
        out["suspicious_tasks"] = dict(sorted(suspicious.items(), key=lambda kv: -kv[1])[:20])
    with contextlib.suppress(Exception):
        out["worker_logs"] = {a: [m for _, m in lines[-40:]] for a, lines in client.get_worker_logs().items()}
    with contextlib.suppress(Exception):
        out["nanny_logs"] = {a: [m for _, m in lines[-40:]] for a, lines in client.get_worker_logs(nanny=True).items()}
    with contextlib.suppress(Exception):
        out["scheduler_log"] = [m for _, m in client.get_scheduler_logs()[:60]][::-1]  # newest first there
    return out


def compare(post: Any, ref: Any) -> dict[str, dict[str, float]]:
    """Per field: max |a - b|, that over max |b| (normwise relative), and whether bitwise equal."""
    out: dict[str, dict[str, float]] = {}
    for f in dataclasses.fields(ref):
        a, b = getattr(post, f.name), getattr(ref, f.name)
        if a is None and b is None:
            continue
        try:
            a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        except (TypeError, ValueError):
            continue
        if a.shape != b.shape:
            out[f.name] = {"max_abs": float("inf"), "max_rel": float("inf"), "identical": False}
            continue
        if a.size == 0:
            continue
        both = np.isfinite(a) & np.isfinite(b)
        same_inf = bool(np.array_equal(a[~both], b[~both], equal_nan=True))
        diff = float(np.max(np.abs(a[both] - b[both]), initial=0.0)) if same_inf else float("inf")
        scale = float(np.max(np.abs(b[both]), initial=0.0))
        out[f.name] = {
            "max_abs": diff,
            "max_rel": diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf")),
            "identical": bool(np.array_equal(a, b, equal_nan=True)),
        }
    return out


# ---------------------------------------------------------------------------- report
def _worst(dev: dict[str, dict[str, Any]]) -> tuple[str | None, float, float]:
    if not dev:
        return None, float("nan"), float("nan")
    name = max(dev, key=lambda k: dev[k]["max_rel"])
    return name, dev[name]["max_rel"], max(v["max_abs"] for v in dev.values())


def markdown(r: dict[str, Any]) -> str:
    rows: list[tuple[str, dict[str, Any]]] = []
    for i, u in enumerate(r["undisturbed"]):
        rows.append((f"{i + 1} undisturbed", u))
        if i < len(r["chaos"]):
            rows.append((f"{i + 1} disturbed (kill seed {r['chaos'][i]['kill_seed']})", r["chaos"][i]))
    workers = sorted({w for _, f in rows for w in f.get("peak_rss_gb_per_worker", {})})
    cfg = r["distributed_config"]
    lines = [
        f"Chaos soak {r['date']}: {r['rows']:,} x {r['features']} float32 ({r['store_gb']:.2f} GB of X, "
        f"{r['chunks']} chunks of {CHUNK_ROWS} rows), {r['workers']} workers x 1 thread, "
        f"{r['memory_limit']} each, a SIGKILL every U({r['kill_interval_s'][0]:g}, {r['kill_interval_s'][1]:g}) s; "
        f"allowed-failures {cfg['distributed.scheduler.allowed-failures']}; {r['machine']}",
        "",
        "| fit | wall s | × undisturbed | kills | workers back | tasks finished | max rel. deviation | "
        + " | ".join(f"peak RSS w{w} GB" for w in workers)
        + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(workers),
    ]
    for label, f in rows:
        _, rel, _ = _worst(f.get("deviation", {}))
        cells = [
            label,
            f"{f.get('wall_s', float('nan')):.1f}",
            f"{f['overhead_ratio']:.2f}" if "overhead_ratio" in f else "1",
            str(f.get("kills_delivered", 0)),
            str(f.get("kills_restarted", "-")),
            str(f.get("tasks_finished", "-")),
            f["error"][:60] if f.get("error") else ("reference" if label == "1 undisturbed" else f"{rel:.1e}"),
            *(f"{f.get('peak_rss_gb_per_worker', {}).get(w, float('nan')):.2f}" for w in workers),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    t = r["totals"]
    lines += [
        "",
        f"- disturbed fits that finished and matched: {t['disturbed_fits_passed']} of {t['disturbed_fits']}; "
        f"kills survived: {t['kills_survived']} of {t['kills_delivered']} delivered",
        f"- wall-time overhead {t['overhead_ratio_median']:.2f}x (median of the finished pairs; "
        f"{t['overhead_ratio_min']:.2f}–{t['overhead_ratio_max']:.2f}x)",
        f"- the most kills a finished task lived through: {t['max_suspicious_finished_task']} "
        f"(allowed-failures {cfg['distributed.scheduler.allowed-failures']})",
        f"- peak RSS per worker: {t['peak_rss_gb_per_worker_max']:.2f} GB at most (undisturbed "
        f"{t['peak_rss_gb_per_worker_max_undisturbed']:.2f} GB); memory limit {r['memory_limit']}",
        f"- max deviation from the undisturbed fit: {t['max_rel_deviation']:.1e} relative ({t['worst_field']}), "
        f"{t['max_abs_deviation']:.1e} absolute; bitwise identical fields: {t['identical_fields']}",
        f"- verdict: {'PASS' if r['passed'] else 'FAIL'}" + (f" ({r['error']})" if r.get("error") else ""),
    ]
    return "\n".join(lines) + "\n"


def _seeds(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--features", type=int, default=256)
    ap.add_argument(
        "--workdir",
        default=os.path.join(tempfile.gettempdir(), "popsdask-chaos"),
        help="outside the repository (default %(default)s)",
    )
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument(
        "--memory-limit", default=None, help="per worker (default: min(4 GB, half the available memory / workers))"
    )
    ap.add_argument("--seed", type=int, default=0, help="the store's data")
    ap.add_argument(
        "--kill-seeds",
        type=_seeds,
        default=[0],
        help="one (undisturbed, disturbed) pair of fits per seed of the kill schedule, e.g. 0,1,2 (default 0)",
    )
    ap.add_argument("--min-interval", type=float, default=5.0)
    ap.add_argument("--max-interval", type=float, default=15.0)
    ap.add_argument("--timeout", type=float, default=2400.0, help="per fit; longer is reported as a hang")
    ap.add_argument(
        "--allowed-failures",
        type=int,
        default=None,
        help="the scheduler's allowed_failures (default: popsdask's LocalCluster's, 20; dask's own is 3)",
    )
    ap.add_argument("--keep-data", action="store_true", help="keep the store (and reuse a kept one)")
    args = ap.parse_args(argv)

    import dask
    import distributed

    from popsdask.runtime.cluster import connect

    scheduler_kwargs = {} if args.allowed_failures is None else {"allowed_failures": args.allowed_failures}
    workdir = Path(args.workdir).resolve()
    if workdir == REPO or REPO in workdir.parents:
        sys.exit(f"chaos_soak: --workdir {workdir} is inside the repository")
    workdir.mkdir(parents=True, exist_ok=True)
    vm = psutil.virtual_memory()
    memory_limit = args.memory_limit or f"{min(4e9, 0.5 * vm.available / args.workers) / 1e9:.1f}GB"
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "rows": args.rows,
        "features": args.features,
        "seed": args.seed,
        "kill_seeds": args.kill_seeds,
        "workers": args.workers,
        "threads_per_worker": 1,
        "memory_limit": memory_limit,
        "kill_interval_s": [args.min_interval, args.max_interval],
        "tolerance": TOLERANCE,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {vm.total / 2**30:.0f} GiB RAM",
        "versions": {"dask": dask.__version__, "distributed": distributed.__version__, "numpy": np.__version__},
        "distributed_config": {
            k: dask.config.get(k)
            for k in (
                "distributed.scheduler.allowed-failures",
                "distributed.deploy.lost-worker-timeout",
                "distributed.scheduler.worker-saturation",
            )
        },
        "disk_free_gb_start": round(shutil.disk_usage(workdir).free / 1e9, 1),
        "undisturbed": [],
        "chaos": [],
    }
    store, result["generate_s"] = prepare(workdir, args.rows, args.features, args.seed, args.keep_data)
    result["store"] = str(store)
    result["store_gb"] = args.rows * args.features * 4 / 1e9
    result["store_disk_gb"] = round(_du(store) / 1e9, 2)
    result["chunks"] = -(-args.rows // CHUNK_ROWS)
    out_json, out_md = workdir / "chaos-soak.json", workdir / "chaos-soak.md"

    def dump() -> None:
        out_json.write_text(json.dumps(result, indent=1, default=str) + "\n")

    n = len(args.kill_seeds)
    hung = False
    with connect(
        n_workers=args.workers,
        threads_per_worker=1,
        memory_limit=memory_limit,
        quiet=True,
        scheduler_kwargs=scheduler_kwargs,
    ) as client:
        cluster = client.cluster
        result["distributed_config"]["distributed.scheduler.allowed-failures"] = cluster.scheduler.allowed_failures
        counter = task_counter(cluster.scheduler)
        sampler = Sampler(cluster)
        sampler.start()
        ref = None
        try:
            for i, kill_seed in enumerate(args.kill_seeds):
                client.wait_for_workers(args.workers, timeout=120)
                sampler.reset()
                counter.memory = counter.erred = counter.max_suspicious = 0
                log(f"pair {i + 1}/{n}, undisturbed fit: {args.workers} workers x 1 thread, {memory_limit} each")
                post, wall, error = timed_fit(client, store, args.timeout)
                u = {"wall_s": wall, "tasks_finished": counter.memory, **sampler.snapshot()}
                result["undisturbed"].append(u)
                log(f"  undisturbed fit done in {wall:.1f} s" + (f": {error}" if error else ""))
                if error:
                    u["error"] = error
                    result["diagnostics"] = diagnostics(client)
                    hung = error.startswith("hang")
                    raise RuntimeError(f"undisturbed fit: {error}")
                if ref is None:
                    ref = post
                else:
                    u["deviation"] = compare(post, ref)
                dump()

                client.wait_for_workers(args.workers, timeout=120)
                sampler.reset()
                counter.memory = counter.erred = counter.max_suspicious = 0
                killer = Killer(cluster, kill_seed, args.min_interval, args.max_interval)
                log(
                    f"pair {i + 1}/{n}, disturbed fit: a SIGKILL every U({args.min_interval:g}, "
                    f"{args.max_interval:g}) s (kill seed {kill_seed})"
                )
                killer.start()
                post, wall, error = timed_fit(client, store, args.timeout)
                kills = killer.finish()
                back = [k["restart_s"] for k in kills if k["restart_s"] is not None]
                c = {
                    "kill_seed": kill_seed,
                    "wall_s": wall,
                    "overhead_ratio": wall / u["wall_s"],
                    "tasks_finished": counter.memory,
                    "tasks_erred": counter.erred,
                    "max_suspicious_finished_task": counter.max_suspicious,
                    "kills_delivered": len(kills),
                    "kills_restarted": len(back),
                    "restart_s": {"median": float(np.median(back)) if back else None, "max": max(back, default=None)},
                    "kills": kills,
                    **sampler.snapshot(),
                }
                result["chaos"].append(c)
                log(f"  disturbed fit done in {wall:.1f} s after {len(kills)} kills" + (f": {error}" if error else ""))
                if error:  # recorded; the next pair still runs unless the fit hangs
                    c["error"] = error
                    c["passed"] = False
                    c["diagnostics"] = diagnostics(client)
                    hung = error.startswith("hang")
                    if hung:
                        dump()
                        raise RuntimeError(f"disturbed fit (kill seed {kill_seed}): {error}")
                    c["erred_keys_released_s"] = release_erred(client)
                    dump()
                    continue
                c["deviation"] = compare(post, ref)
                c["passed"] = (
                    all(v["max_rel"] <= TOLERANCE for v in c["deviation"].values())
                    and len(back) == len(kills)
                    and len(kills) > 0
                )
                c["kills_survived"] = len(kills) if c["passed"] else 0
                dump()
        except RuntimeError as exc:
            result["error"] = str(exc)
        finally:
            sampler.stop.set()
            result["totals"] = totals(result)
            failed = [f"kill seed {c['kill_seed']}: {c['error']}" for c in result["chaos"] if c.get("error")]
            if failed and not result.get("error"):
                result["error"] = "; ".join(e[:160] for e in failed)
            result["passed"] = bool(
                not result.get("error") and len(result["chaos"]) == n and all(c["passed"] for c in result["chaos"])
            )
            dump()
            table = markdown(result)
            out_md.write_text(table)
            print(table, flush=True)
            log(f"wrote {out_json} and {out_md}")
            if hung:  # the fit thread is stuck in a compute: do not wait for it on the way out
                for child in psutil.Process().children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        child.kill()
                os._exit(1)
    if not args.keep_data:
        shutil.rmtree(store, ignore_errors=True)
    return 0 if result["passed"] else 1


def totals(r: dict[str, Any]) -> dict[str, Any]:
    chaos, und = r["chaos"], r["undisturbed"]
    ratios = [c["overhead_ratio"] for c in chaos if not c.get("error")] or [float("nan")]
    dev: dict[str, dict[str, Any]] = {}
    for f in chaos:
        for name, v in f.get("deviation", {}).items():
            d = dev.setdefault(name, {"max_rel": 0.0, "max_abs": 0.0, "identical": True})
            d["max_rel"] = max(d["max_rel"], v["max_rel"])
            d["max_abs"] = max(d["max_abs"], v["max_abs"])
            d["identical"] &= v["identical"]
    worst, rel, absolute = _worst(dev)

    def peak(fits: list[dict[str, Any]]) -> float:
        return max((g for f in fits for g in f.get("peak_rss_gb_per_worker", {}).values()), default=float("nan"))

    return {
        "disturbed_fits": len(chaos),
        "disturbed_fits_passed": sum(bool(c.get("passed")) for c in chaos),
        "kills_delivered": sum(c["kills_delivered"] for c in chaos),
        "max_suspicious_finished_task": max((c.get("max_suspicious_finished_task", 0) for c in chaos), default=0),
        "kills_survived": sum(c.get("kills_survived", 0) for c in chaos),
        "overhead_ratio_median": float(np.median(ratios)),
        "overhead_ratio_min": min(ratios),
        "overhead_ratio_max": max(ratios),
        "wall_s_undisturbed": [u["wall_s"] for u in und],
        "wall_s_disturbed": [c["wall_s"] for c in chaos],
        "peak_rss_gb_per_worker_max": peak(chaos),
        "peak_rss_gb_per_worker_max_undisturbed": peak(und),
        "max_rel_deviation": rel,
        "max_abs_deviation": absolute,
        "worst_field": worst,
        "identical_fields": f"{sum(v['identical'] for v in dev.values())}/{len(dev)}",
    }


if __name__ == "__main__":
    sys.exit(main())
