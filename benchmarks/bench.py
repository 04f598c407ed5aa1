"""Performance benchmarks: popsdask against popsregression 0.4.0 and the in-memory Gram floor.

The driver of ``popsdask bench`` and ``benchmarks/run.py``; it lives in the source checkout, not
in the installed package. Every case runs in its own subprocess (``python benchmarks/bench.py
_case SPEC``); the parent samples the resident set size of the child's whole process tree (Dask
workers included) with psutil and records the peak of the tree and of each process. The child
times only the operation itself (data loading is excluded and reported as ``rss_loaded_gb``) and
prints one JSON line. Cases are interleaved repeat by repeat, so that load from other users of
the machine hits all of them alike; tables report medians and ratios measured in the same run.

Cases
-----
``gram``            numpy ``X.T @ X`` in float64 (float32 data is cast first), default BLAS threads
``gram1``           the same with one BLAS thread (on a busy machine often the faster of the two)
``popsdask-array``  ``popsdask.fit`` of an in-memory numpy array (threaded scheduler)
``popsdask-zarr``   ``popsdask.fit`` of a descriptor store path (threaded scheduler)
``popsregression``  ``POPSRegression().fit`` (reference, everything in memory)
``ensemble``        ``predict_ensemble`` of 500 samples for a store of N configurations → Zarr
``ensemble-floor``  its floor: the same X·[Δᵀ | U] products (500 samples and the K box modes)
                    by numpy, block by block from the same chunk files, and a raw write of the
                    prediction's bytes (``--cases ensemble`` runs both)
``envelope``        the complete-ensemble envelope (``predictions.correction_range``, min/max of
                    x·δθ over every stored correction) of R rows × C corrections × F features
``envelope-floor``  its floor: the same products by blocked numpy, reduced in place
                    (``--envelope-sizes RxCxF``; each case in its own process, so the peak RSS
                    of each is its own)
``ooc``             an out-of-core fit on a LocalCluster (2 workers, 4 GB each), per-pass times
                    next to the raw read time of the same store

Data: X ~ N(0, 1) of shape (N, P), y = X θ + 0.1 sin(3 x₀) + 0.01 ε (a misspecified target),
seeded; the largest N is generated once and smaller N are its leading rows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_SIZES = (100_000, 300_000, 1_000_000, 1_580_000)
DEFAULT_CASES = ("gram", "gram1", "popsdask-array", "popsdask-zarr", "popsregression", "ensemble", "envelope")
# popsregression 0.4.0 peak RSS per row at P = 256 (measured: 13.3 GB at 1M, 20.9 GB at 1.58M)
POPSREG_BYTES_PER_ROW = 13.5e3
SAMPLE_SECONDS = 0.05
MIN_AVAILABLE_BYTES = 1.5e9


# ---------------------------------------------------------------------------- data
def _target(X: np.ndarray, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    Xf = np.asarray(X, dtype=np.float64)
    return Xf @ theta + 0.1 * np.sin(3.0 * Xf[:, 0]) + 0.01 * rng.standard_normal(X.shape[0])


def prepare_data(workdir: Path, n_max: int, p: int, seed: int = 0) -> None:
    """Write X (float64 and float32 ``.npy``) and y for ``n_max`` rows, block by block."""
    workdir.mkdir(parents=True, exist_ok=True)
    if (workdir / "y.npy").exists() and np.load(workdir / "y.npy", mmap_mode="r").shape[0] >= n_max:
        return
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal(p)
    x64 = np.lib.format.open_memmap(workdir / "X-float64.npy", mode="w+", dtype=np.float64, shape=(n_max, p))
    x32 = np.lib.format.open_memmap(workdir / "X-float32.npy", mode="w+", dtype=np.float32, shape=(n_max, p))
    y = np.empty(n_max)
    step = 65536
    for i in range(0, n_max, step):
        block = rng.standard_normal((min(step, n_max - i), p))
        x64[i : i + len(block)] = block
        x32[i : i + len(block)] = block
        y[i : i + len(block)] = _target(block, theta, rng)
    x64.flush()
    x32.flush()
    del x64, x32
    np.save(workdir / "y.npy", y)


def store_path(workdir: Path, n: int, dtype: str) -> Path:
    return workdir / f"store-{n}-{dtype}.zarr"


def prepare_store(workdir: Path, n: int, dtype: str) -> Path:
    """Descriptor store of the first ``n`` rows (written chunk by chunk from the memmap)."""
    import dask.array as da

    from popsdask.io.store import is_complete, write_store

    path = store_path(workdir, n, dtype)
    if is_complete(path):
        return path
    X = np.load(workdir / f"X-{dtype}.npy", mmap_mode="r")[:n]
    y = np.load(workdir / "y.npy", mmap_mode="r")[:n]
    rows = 65536 if dtype == "float32" else 32768
    write_store(
        path,
        da.from_array(X, chunks=(rows, -1), name=False),
        da.from_array(y, chunks=rows, name=False),
        chunk_rows=rows,
        overwrite=True,
        attrs={"benchmark": "synthetic N(0,1) descriptors"},
    )
    return path


def _read_rows(path: Path, n: int) -> np.ndarray:
    """The first ``n`` rows of a ``.npy`` file read into anonymous memory.

    (Copying from a memmap would leave the file's cached pages counted in the RSS.)
    """
    head = np.load(path, mmap_mode="r")
    offset, dtype, shape = head.offset, head.dtype, head.shape
    del head
    out = np.empty((n,) + shape[1:], dtype=dtype)
    with open(path, "rb") as f:
        f.seek(offset)
        f.readinto(memoryview(out).cast("B"))
    return out


def _load(workdir: Path, n: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    return _read_rows(workdir / f"X-{dtype}.npy", n), _read_rows(workdir / "y.npy", n)


# ---------------------------------------------------------------------------- children
def _rss_gb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 1e9


@contextlib.contextmanager
def _pass_timer(timeline: list[tuple[str, float]]):
    """Record (label, seconds) for every ``passes.compute``/``persist`` call inside the block."""
    from popsdask.engine import passes

    compute0, persist0 = passes.compute, passes.persist

    pending: list[float] = []

    def compute(*objs: Any, label: str = "", progress: bool = False) -> tuple:
        t = time.perf_counter()
        out = compute0(*objs, label=label, progress=progress)
        timeline.append((label, time.perf_counter() - t + sum(pending)))
        pending.clear()
        return out

    def persist(*objs: Any) -> tuple:
        # the leverage pass starts with a persist; its time is added to the next compute
        t = time.perf_counter()
        out = persist0(*objs)
        pending.append(time.perf_counter() - t)
        return out

    passes.compute, passes.persist = compute, persist
    try:
        yield
    finally:
        passes.compute, passes.persist = compute0, persist0


def _case_fit(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    n, dtype, case = spec["n"], spec["dtype"], spec["case"]
    out: dict[str, Any] = {}
    if case == "popsdask-zarr":
        from popsdask.engine.estimator import fit

        path = store_path(workdir, n, dtype)
        timeline: list[tuple[str, float]] = []
        out["rss_loaded_gb"] = _rss_gb()
        with _pass_timer(timeline):
            t = time.perf_counter()
            post = fit(path)
            out["wall_s"] = time.perf_counter() - t
        out["passes"] = timeline
        out["alpha"], out["n_selected"] = float(post.alpha_), int(post.n_selected_)
        return out
    X, y = _load(workdir, n, dtype)
    out["rss_loaded_gb"] = _rss_gb()
    if case in ("gram", "gram1"):
        limit = threadpool_limits(limits=1, user_api="blas") if case == "gram1" else contextlib.nullcontext()
        with limit:
            t = time.perf_counter()
            Xf = X if X.dtype == np.float64 else X.astype(np.float64)
            G = Xf.T @ Xf
            out["wall_s"] = time.perf_counter() - t
        out["trace"] = float(np.trace(G))
    elif case == "popsdask-array":
        from popsdask.engine.estimator import fit

        timeline = []
        with _pass_timer(timeline):
            t = time.perf_counter()
            post = fit(X, y)
            out["wall_s"] = time.perf_counter() - t
        out["passes"] = timeline
        out["alpha"], out["n_selected"] = float(post.alpha_), int(post.n_selected_)
    elif case == "popsregression":
        from popsregression import POPSRegression

        t = time.perf_counter()
        ref = POPSRegression().fit(X, y)
        out["wall_s"] = time.perf_counter() - t
        out["alpha"] = float(ref.alpha_)
    else:
        raise ValueError(case)
    return out


def _case_ensemble(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    from popsdask.engine.posterior import Posterior
    from popsdask.engine.predictions import predict_ensemble

    post = Posterior.load(workdir / "posterior.zarr")
    target = Path(spec["scratch"]) / f"pred-{spec['n']}.zarr"
    out: dict[str, Any] = {"rss_loaded_gb": _rss_gb()}
    t = time.perf_counter()
    ds = predict_ensemble(post, store_path(workdir, spec["n"], "float64"), target, n_samples=500, overwrite=True)
    out["wall_s"] = time.perf_counter() - t
    out["prediction_shape"] = [int(s) for s in ds["prediction"].shape]
    out["written_gb"] = sum(f.stat().st_size for f in target.rglob("*") if f.is_file()) / 1e9
    shutil.rmtree(target, ignore_errors=True)
    return out


def _case_ensemble_floor(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """The floor of ``ensemble``: its matmuls and the raw write of its prediction bytes."""
    from popsdask.engine.posterior import DEFAULT_N_SAMPLES, Posterior
    from popsdask.engine.predictions import BLOCK_BYTES
    from popsdask.io.chunkread import read_chunk
    from popsdask.io.store import open_store

    post = Posterior.load(workdir / "posterior.zarr")
    delta = post.perturbations(DEFAULT_N_SAMPLES, "uniform", 0)
    # the prediction also forms X·U once per row (the exact box of the hypercube)
    right = np.hstack([post.coef_[:, None], delta.T, post.basis_])
    layout = open_store(store_path(workdir, spec["n"], "float64"))["X"].data
    from popsdask.io.chunkread import chunk_refs

    refs = chunk_refs(layout)
    assert refs is not None
    n, p = int(layout.shape[0]), int(layout.shape[1])
    rows = max(256, BLOCK_BYTES // (8 * max(delta.shape[0], p)))
    target = Path(spec["scratch"]) / f"floor-{spec['n']}.bin"
    out: dict[str, Any] = {"rss_loaded_gb": _rss_gb(), "columns": int(right.shape[1])}
    t = time.perf_counter()
    with open(target, "wb") as f:
        for ref in refs:
            X = read_chunk(ref.layout, ref.index)
            for i in range(0, X.shape[0], rows):
                prod = X[i : i + rows] @ right
                dev = prod[:, 1 : 1 + delta.shape[0]]
                (dev + prod[:, :1]).T.tofile(f)  # (sample, row) bytes, as the prediction array
    out["wall_s"] = time.perf_counter() - t
    out["written_gb"] = target.stat().st_size / 1e9
    out["rows"] = n
    target.unlink()
    return out


def envelope_floor(X: np.ndarray, C: np.ndarray, rows: int = 4096, cols: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of X Cᵀ per row by blocked numpy, reduced in place (the envelope's floor)."""
    lo = np.full(X.shape[0], np.inf)
    hi = np.full(X.shape[0], -np.inf)
    for i in range(0, X.shape[0], rows):
        for j in range(0, C.shape[0], cols):
            b = X[i : i + rows] @ C[j : j + cols].T
            np.minimum(lo[i : i + rows], b.min(axis=1), out=lo[i : i + rows])
            np.maximum(hi[i : i + rows], b.max(axis=1), out=hi[i : i + rows])
    return lo, hi


def envelope_sizes(text: str) -> list[tuple[int, int, int]]:
    return [tuple(int(v) for v in item.split("x")) for item in text.split(",") if item]  # type: ignore[misc]


def _envelope_data(spec: dict[str, Any]) -> tuple[np.ndarray, Path]:
    rows, corrections, features = spec["envelope"]
    X = np.random.default_rng(0).normal(size=(rows, features))
    return X, Path(spec["scratch"]) / f"corrections-{corrections}x{features}.zarr"


def prepare_corrections(scratch: Path, corrections: int, features: int) -> Path:
    import dask.array as da

    path = scratch / f"corrections-{corrections}x{features}.zarr"
    if not path.exists():
        C = np.random.default_rng(1).normal(size=(corrections, features)) * 1e-3
        da.from_array(C, chunks=(65536, features)).to_zarr(str(path), zarr_format=3)
    return path


def _case_envelope(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """``correction_range`` on Dask's threaded scheduler (``envelope``) or blocked numpy
    (``envelope-floor``) over the same rows and corrections."""
    import dask.array as da

    X, path = _envelope_data(spec)
    out: dict[str, Any] = {"rss_loaded_gb": _rss_gb()}
    if spec["case"] == "envelope":
        from popsdask.engine.posterior import Posterior
        from popsdask.engine.predictions import correction_range

        f = X.shape[1]
        post = Posterior(
            coef_=np.zeros(f),
            sigma_=np.eye(f),
            alpha_=1.0,
            lambda_=1.0,
            misspecification_sigma_=np.eye(f),
            kind="ensemble",
            corrections_=da.from_zarr(str(path)),
        )
        Xd = da.from_array(X, chunks=(65536, f))
        t = time.perf_counter()
        lo, hi = da.compute(*correction_range(Xd, post, Xd @ post.coef_))
        out["wall_s"] = time.perf_counter() - t
    else:
        C = np.asarray(da.from_zarr(str(path)))
        t = time.perf_counter()
        lo, hi = envelope_floor(X, C)
        out["wall_s"] = time.perf_counter() - t
    out["checksum"] = float(np.sum(hi) - np.sum(lo))
    return out


def _case_ooc(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    import dask.array as da

    from popsdask.engine.estimator import fit
    from popsdask.io.store import open_store
    from popsdask.runtime.cluster import connect

    path = Path(spec["store"])
    out: dict[str, Any] = {}
    with connect(n_workers=2, threads_per_worker=1, memory_limit="4GB", quiet=True) as client:
        X = open_store(path)["X"].data  # chunk files read directly (popsdask.io.chunkread)
        Xz = da.from_zarr(str(path / "X"))  # zarr's own reader
        out["x_gb"] = X.nbytes / 1e9
        out["chunks"] = [int(X.chunks[0][0]), int(X.numblocks[0])]

        def raw_read(a: da.Array) -> float:
            touch = a.map_blocks(lambda b: np.full((1, 1), b.shape[0], dtype=np.int64), chunks=(1, 1), dtype=np.int64)
            t = time.perf_counter()
            rows = int(client.compute(touch.sum()).result())
            assert rows == a.shape[0]
            return time.perf_counter() - t

        out["raw_read_zarr_s"] = raw_read(Xz)
        out["raw_read_s"] = raw_read(X)
        timeline: list[tuple[str, float]] = []
        with _pass_timer(timeline):
            t = time.perf_counter()
            post = fit(path)
            out["wall_s"] = time.perf_counter() - t
        out["passes"] = timeline
        out["n_selected"] = int(post.n_selected_)
        out["raw_read_after_s"] = raw_read(X)
        out["raw_read_zarr_after_s"] = raw_read(Xz)
        logs = client.get_worker_logs()
        out["worker_memory_warnings"] = sum(
            1
            for lines in logs.values()
            for _, msg in lines
            if "memory" in msg.lower() and ("spill" in msg.lower() or "pause" in msg.lower() or "exceed" in msg.lower())
        )
    return out


def _child(spec_json: str) -> None:
    spec = json.loads(spec_json)
    workdir = Path(spec["workdir"])
    if spec["case"] == "ensemble":
        result = _case_ensemble(spec, workdir)
    elif spec["case"] == "ensemble-floor":
        result = _case_ensemble_floor(spec, workdir)
    elif spec["case"].startswith("envelope"):
        result = _case_envelope(spec, workdir)
    elif spec["case"] == "ooc":
        result = _case_ooc(spec, workdir)
    else:
        result = _case_fit(spec, workdir)
    print("BENCH-RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------- parent
def run_case(spec: dict[str, Any], timeout: float = 1800.0) -> dict[str, Any]:
    """Run one case in a subprocess; sample the peak RSS of its process tree.

    The child is killed (and the case marked ``killed``) if the machine's available memory
    drops below 1.5 GB, so a benchmark never pushes the machine out of memory.
    """
    import psutil

    cmd = [sys.executable, str(Path(__file__).resolve()), "_case", json.dumps(spec)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_total = 0
    peak_by_proc: dict[int, tuple[str, int]] = {}
    killed = ""
    stop = threading.Event()
    outputs: dict[str, str] = {}

    def reader(stream: Any, key: str) -> None:
        outputs[key] = stream.read()

    threads = [
        threading.Thread(target=reader, args=(proc.stdout, "out")),
        threading.Thread(target=reader, args=(proc.stderr, "err")),
    ]
    for th in threads:
        th.start()
    root = psutil.Process(proc.pid)
    while proc.poll() is None and not stop.is_set():
        total = 0
        try:
            tree = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        for pr in tree:
            try:
                rss = pr.memory_info().rss
                name = " ".join(pr.cmdline()[1:4])[:80] if pr.pid != proc.pid else "main"
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            total += rss
            if rss > peak_by_proc.get(pr.pid, ("", 0))[1]:
                peak_by_proc[pr.pid] = (name, rss)
        peak_total = max(peak_total, total)
        if psutil.virtual_memory().available < MIN_AVAILABLE_BYTES:
            killed = "machine low on memory"
        elif time.perf_counter() - t0 > timeout:
            killed = f"timeout {timeout:.0f} s"
        if killed:
            for pr in reversed(tree):
                with contextlib.suppress(psutil.NoSuchProcess):
                    pr.kill()
            break
        time.sleep(SAMPLE_SECONDS)
    proc.wait()
    for th in threads:
        th.join()
    result: dict[str, Any] = dict(spec)
    result.update(
        peak_rss_gb=peak_total / 1e9,
        peak_rss_by_process_gb={f"{n} [{pid}]": r / 1e9 for pid, (n, r) in peak_by_proc.items()},
        returncode=proc.returncode,
        process_wall_s=time.perf_counter() - t0,
    )
    line = [s for s in outputs.get("out", "").splitlines() if s.startswith("BENCH-RESULT ")]
    if killed or proc.returncode != 0 or not line:
        result["error"] = killed or outputs.get("err", "")[-2000:]
    else:
        result.update(json.loads(line[-1][len("BENCH-RESULT ") :]))
    return result


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median wall time and peak RSS per (case, N, dtype)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["case"], r.get("n", 0), r.get("dtype", "")), []).append(r)
    rows = []
    for (case, n, dtype), rs in groups.items():
        ok = [r for r in rs if "error" not in r]
        rows.append(
            {
                "case": case,
                "n": n,
                "dtype": dtype,
                "repeats": len(ok),
                "failed": len(rs) - len(ok),
                "wall_s": _median([r["wall_s"] for r in ok]),
                "peak_rss_gb": _median([r["peak_rss_gb"] for r in ok]),
                "error": next((r["error"][-300:] for r in rs if "error" in r), ""),
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The results table, with ratios against numpy's Gram and popsregression of the same run."""
    by = {(r["case"], r["n"], r["dtype"]): r for r in rows}
    lines = [
        f"Run {meta['date']} on {meta['machine']}; P = {meta['p']}; medians of up to {meta['repeats']} "
        "repeats (column *reps*); wall time of the operation only (data already loaded), peak RSS of "
        "the whole process tree including loaded data. Gram floor = the faster of numpy `X.T @ X` "
        "with default and with one BLAS thread.",
        "",
        "| N | dtype | Gram floor s | popsdask array s (×floor) | popsdask Zarr s (×floor) | popsregression s "
        "| popsreg / popsdask time | RSS GB: popsdask array / Zarr / popsreg | popsdask / popsreg RSS | reps |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def get(case: str, n: int, dtype: str, key: str) -> float:
        r = by.get((case, n, dtype))
        return r[key] if r and r["repeats"] else float("nan")

    for n in sorted({r["n"] for r in rows if r["case"].startswith(("gram", "popsdask", "popsreg"))}):
        for dtype in ("float64", "float32"):
            floor = np.nanmin([get("gram", n, dtype, "wall_s"), get("gram1", n, dtype, "wall_s")])
            if not np.isfinite(floor):
                continue
            fits = ("popsdask-array", "popsdask-zarr", "popsregression")
            arr, zr, ref = (get(c, n, dtype, "wall_s") for c in fits)
            rarr, rzr, rref = (get(c, n, dtype, "peak_rss_gb") for c in fits)
            reps = "/".join(
                str(by[(c, n, dtype)]["repeats"])
                for c in ("gram", "popsdask-array", "popsdask-zarr", "popsregression")
                if (c, n, dtype) in by
            )
            ref_txt = f"{ref:.1f}" if np.isfinite(ref) else "not run"
            lines.append(
                f"| {n:,} | {dtype} | {floor:.2f} | {arr:.2f} ({arr / floor:.1f}×) | {zr:.2f} ({zr / floor:.1f}×) "
                f"| {ref_txt} | {ref / arr:.1f}× | {rarr:.2f} / {rzr:.2f} / {rref:.2f} | {rarr / rref:.2f} | {reps} |"
            )
    ens = [r for r in rows if r["case"] == "ensemble"]
    if ens:
        lines += [
            "",
            "| ensemble prediction, 500 samples → Zarr | wall s | peak RSS GB (tree) | reps |",
            "|---|---|---|---|",
        ]
        for r in sorted(ens, key=lambda r: r["n"]):
            lines.append(f"| {r['n']:,} configurations | {r['wall_s']:.1f} | {r['peak_rss_gb']:.2f} | {r['repeats']} |")
    failed = [r for r in rows if r["failed"]]
    if failed:
        lines += ["", "Failed or skipped runs:"]
        lines += [f"- {r['case']} N={r['n']:,} {r['dtype']}: {r['failed']}× {r['error'][:200]!r}" for r in failed]
    return "\n".join(lines) + "\n"


#: (case, its floor, what the ratio is called)
RATIO_PAIRS = (
    ("popsdask-array", "gram", "fit in memory / numpy Gram (faster of gram, gram1)"),
    ("popsdask-zarr", "gram", "fit from Zarr / numpy Gram (faster of gram, gram1)"),
    ("popsregression", "popsdask-array", "popsregression / popsdask fit"),
    ("ensemble", "ensemble-floor", "prediction / its floor (X·[Δᵀ|U] + raw write)"),
    ("envelope", "envelope-floor", "complete-ensemble envelope / blocked numpy"),
)


def _floor_time(by: dict[tuple, dict[str, Any]], case: str, key: tuple) -> float:
    if case != "gram":
        r = by.get((case, *key))
        return r["wall_s"] if r else float("nan")
    times = [by[(c, *key)]["wall_s"] for c in ("gram", "gram1") if (c, *key) in by]
    return min(times) if times else float("nan")


def ratios_markdown(results: list[dict[str, Any]]) -> str:
    """Same-run ratios, repeat by repeat (each case against its floor of the same repeat), with
    their median and the largest per-process peak RSS."""
    ok = [r for r in results if "error" not in r and "wall_s" in r]
    by = {(r["case"], r.get("n", 0), r.get("dtype", ""), r.get("repeat", 0)): r for r in ok}
    lines = [
        "| ratio | N | data | per repeat | median | peak RSS GB (largest process / tree) |",
        "|---|---|---|---|---|---|",
    ]
    found = False
    for case, floor, label in RATIO_PAIRS:
        keys = sorted({(r["n"], r["dtype"]) for r in ok if r["case"] == case})
        for n, dtype in keys:
            reps = sorted(r["repeat"] for r in ok if (r["case"], r["n"], r["dtype"]) == (case, n, dtype))
            ratios, rss = [], []
            for rep in reps:
                r = by[(case, n, dtype, rep)]
                f = _floor_time(by, floor, (n, dtype, rep))
                if np.isfinite(f):  # popsregression / popsdask: both ways round, larger is slower
                    ratios.append(r["wall_s"] / f)
                    rss.append((max(r["peak_rss_by_process_gb"].values(), default=0.0), r["peak_rss_gb"]))
            if not ratios:
                continue
            found = True
            per = ", ".join(f"{v:.2f}" for v in ratios)
            big = max(rss)
            lines.append(
                f"| {label} | {n:,} | {dtype} | {per} | **{statistics.median(ratios):.2f}×** "
                f"| {big[0]:.2f} / {big[1]:.2f} |"
            )
    return ("\n".join(lines) + "\n") if found else ""


def ooc_markdown(r: dict[str, Any]) -> str:
    """Table of the out-of-core case: per-pass throughput next to the raw read."""
    if "error" in r:
        return f"Out-of-core case failed: {r['error'][-500:]}\n"
    gb = r["x_gb"]
    zarr_s = r.get("raw_read_zarr_s", r["raw_read_s"])
    lines = [
        f"Out-of-core: {r['rows']:,} × {r['p']} float32 store ({gb:.1f} GB of X, {r['chunks'][1]} chunks of "
        f"{r['chunks'][0]:,} rows), LocalCluster 2 workers × 1 thread, 4 GB memory limit each. "
        f"Fit wall {r['wall_s']:.1f} s. Raw read of X before the fit: through zarr {zarr_s:.1f} s "
        f"({gb / zarr_s:.2f} GB/s), as chunk files (the fit's reader) {r['raw_read_s']:.1f} s "
        f"({gb / r['raw_read_s']:.2f} GB/s); after the fit {r.get('raw_read_zarr_after_s', float('nan')):.1f} s "
        f"and {r['raw_read_after_s']:.1f} s. Worker log lines about spilling/pausing: {r['worker_memory_warnings']}.",
        "",
        "| pass | s | GB/s of X | × zarr read time | × chunk-file read time |",
        "|---|---|---|---|---|",
    ]
    for label, s in r["passes"]:
        lines.append(f"| {label} | {s:.1f} | {gb / s:.2f} | {s / zarr_s:.2f} | {s / r['raw_read_s']:.2f} |")
    lines += ["", "| process | peak RSS GB |", "|---|---|"]
    for name, v in sorted(r["peak_rss_by_process_gb"].items(), key=lambda kv: -kv[1]):
        if v > 0.05:
            lines.append(f"| {name} | {v:.2f} |")
    lines.append(f"| whole tree | {r['peak_rss_gb']:.2f} |")
    return "\n".join(lines) + "\n"


def _write_ooc_store(path: Path, rows: int, p: int, seed: int = 1) -> float:
    """Generate a float32 store chunk by chunk (in a child, threaded scheduler); return seconds."""
    code = (
        "import sys, numpy as np, dask.array as da\n"
        "from popsdask.io.store import write_store\n"
        "n, p, seed, path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]\n"
        "c = 65536\n"
        "theta = np.random.default_rng(seed).standard_normal(p)\n"
        "def xb(block_info=None):\n"
        "    (r0, r1), _ = block_info[None]['array-location']\n"
        "    return np.random.default_rng([seed, r0]).standard_normal((r1 - r0, p), dtype=np.float32)\n"
        "X = da.map_blocks(xb, chunks=(da.core.normalize_chunks((c, p), (n, p))), dtype=np.float32)\n"
        "def yb(x):\n"
        "    xf = x.astype(np.float64)\n"
        "    return xf @ theta + 0.1 * np.sin(3 * xf[:, 0])\n"
        "y = X.map_blocks(yb, drop_axis=1, dtype=np.float64)\n"
        "write_store(path, X, y, chunk_rows=c, overwrite=True)\n"
    )
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(rows), str(p), str(seed), str(path)], check=True)
    return time.perf_counter() - t


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark matrix (and the out-of-core case) and write JSON + markdown."""
    import platform

    import psutil

    from popsdask.engine.estimator import fit
    from popsdask.io.store import is_complete, open_store

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="popsdask-bench-"))
    sizes = [int(s) for s in args.sizes.split(",") if s]
    dtypes = [s for s in args.dtypes.split(",") if s]
    cases = [s for s in args.cases.split(",") if s]
    ens_sizes = [int(s) for s in args.ensemble_sizes.split(",") if s] if "ensemble" in cases else []
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "p": args.features,
        "repeats": args.repeats,
        "argv": sys.argv,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM",
    }
    results: list[dict[str, Any]] = []
    ooc = None
    if args.append and (out / "results.json").exists():
        previous = json.loads((out / "results.json").read_text())
        results, ooc = previous["runs"], previous.get("ooc")
        meta["earlier_runs"] = previous["meta"].get("earlier_runs", []) + [previous["meta"]]
    if sizes or ens_sizes:
        prepare_data(workdir, max(sizes + ens_sizes), args.features)
        for n in sizes:
            for dtype in dtypes:
                if "popsdask-zarr" in cases:
                    prepare_store(workdir, n, dtype)
        if ens_sizes:
            for n in ens_sizes:
                prepare_store(workdir, n, "float64")
            if not (workdir / "posterior.zarr").exists():
                X, y = _load(workdir, min(ens_sizes), "float64")
                fit(X, y).save(workdir / "posterior.zarr", overwrite=True)
                del X, y
    specs: list[dict[str, Any]] = []
    for n in sizes:
        for dtype in dtypes:
            for case in cases:
                if case in ("ensemble", "envelope"):
                    continue
                ref_ok = n <= args.popsregression_max_rows and dtype in args.popsregression_dtypes.split(",")
                if case == "popsregression" and not ref_ok:
                    continue
                specs.append({"case": case, "n": n, "dtype": dtype})
    for n in ens_sizes:
        specs += [{"case": c, "n": n, "dtype": "float64"} for c in ("ensemble", "ensemble-floor")]
    env_sizes = envelope_sizes(args.envelope_sizes) if "envelope" in cases else []
    for r, c, f in env_sizes:
        prepare_corrections(workdir, c, f)
        for case in ("envelope", "envelope-floor"):
            specs.append({"case": case, "n": r, "dtype": f"{c}x{f}", "envelope": [r, c, f]})
    for rep in range(args.repeats):
        for spec in specs:
            if spec["case"].startswith("ensemble") and rep >= args.ensemble_repeats:
                continue
            full = {**spec, "workdir": str(workdir), "scratch": str(workdir), "repeat": rep}
            if spec["case"] == "popsregression":
                need = POPSREG_BYTES_PER_ROW * spec["n"] + 1e9
                avail = psutil.virtual_memory().available
                if avail < need + MIN_AVAILABLE_BYTES:
                    why = f"skipped: {avail / 1e9:.1f} GB available < {need / 1e9:.1f} GB needed"
                    results.append({**full, "error": why})
                    print(f"[bench] skip {spec}: not enough memory", flush=True)
                    continue
            r = run_case(full)
            results.append(r)
            print(
                f"[bench] rep {rep} {spec['case']:15s} N={spec['n']:>9,} {spec['dtype']}: "
                f"{r.get('wall_s', float('nan')):8.2f} s  peak {r['peak_rss_gb']:6.2f} GB"
                f"{'  ERROR ' + r['error'][-200:] if 'error' in r else ''}",
                flush=True,
            )
            _dump(out, meta, results, ooc)
    if args.ooc_rows:
        ooc_store = workdir / f"ooc-{args.ooc_rows}.zarr"
        if is_complete(ooc_store) and open_store(ooc_store)["X"].shape == (args.ooc_rows, args.features):
            gen_s = float("nan")
            print(f"[bench] reusing {ooc_store}", flush=True)
        else:
            gen_s = _write_ooc_store(ooc_store, args.ooc_rows, args.features)
            print(f"[bench] wrote {ooc_store} in {gen_s:.0f} s", flush=True)
        ooc = run_case(
            {
                "case": "ooc",
                "store": str(ooc_store),
                "rows": args.ooc_rows,
                "p": args.features,
                "workdir": str(workdir),
            },
            timeout=3600,
        )
        ooc["generate_s"] = gen_s
        if not args.keep_data:
            shutil.rmtree(ooc_store, ignore_errors=True)
        print(ooc_markdown(ooc), flush=True)
    table = _dump(out, meta, results, ooc)
    print(table, flush=True)
    if not args.keep_data and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"meta": meta, "results": results, "ooc": ooc}


def _dump(out: Path, meta: dict[str, Any], results: list[dict[str, Any]], ooc: dict[str, Any] | None) -> str:
    rows = summarise(results)
    table = markdown(rows, meta) + "\n" + ratios_markdown(results) if results else ""
    if ooc is not None:
        table += "\n" + ooc_markdown(ooc)
    (out / "results.json").write_text(
        json.dumps({"meta": meta, "summary": rows, "runs": results, "ooc": ooc}, indent=1, default=str)
    )
    (out / "results.md").write_text(table)
    return table


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to the ``popsdask`` command line.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        What ``ArgumentParser.add_subparsers`` returned.

    Returns
    -------
    argparse.ArgumentParser
        The ``bench`` parser (its ``func`` default runs :func:`run`).
    """
    p = subparsers.add_parser("bench", help="performance benchmarks (each case in its own process)")
    p.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="row counts N, comma-separated")
    p.add_argument("--dtypes", default="float64,float32")
    p.add_argument("--features", type=int, default=256, help="P")
    p.add_argument("--cases", default=",".join(DEFAULT_CASES), help=f"subset of {','.join(DEFAULT_CASES)}")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--popsregression-max-rows",
        type=int,
        default=1_000_000,
        help="largest N for popsregression (it needs ~13.5 kB per row at P = 256)",
    )
    p.add_argument("--popsregression-dtypes", default="float64,float32")
    p.add_argument("--ensemble-sizes", default="100000,1580000", help="configurations to predict")
    p.add_argument("--ensemble-repeats", type=int, default=1)
    p.add_argument(
        "--envelope-sizes",
        default="20000x40000x120",
        help="complete-ensemble envelope cases ROWSxCORRECTIONSxFEATURES, comma-separated "
        "(the issue's 130000x225000x120 takes ~15 min per run on 2 cores)",
    )
    p.add_argument("--ooc-rows", type=int, default=0, help="rows of the out-of-core float32 store (0: skip)")
    p.add_argument("--workdir", default=None, help="data directory (kept if given; default: temporary)")
    p.add_argument("--keep-data", action="store_true")
    p.add_argument("--append", action="store_true", help="add to the runs already in OUT/results.json")
    p.add_argument("-o", "--out", default="benchmarks/results", help="where results.json/results.md go")
    p.set_defaults(func=run)
    return p


def main(argv: list[str] | None = None) -> int:
    """``popsdask bench``, ``python benchmarks/bench.py`` (and the ``_case`` entry point of the
    children)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_case"]:
        _child(argv[1])
        return 0
    parser = argparse.ArgumentParser(prog="popsdask")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv if argv[:1] == ["bench"] else ["bench", *argv])
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
