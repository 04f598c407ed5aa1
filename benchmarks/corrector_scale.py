"""Foundation-model corrector at mptraj scale, and the CPU cost of each descriptor extractor.

``run``: synthetic corrector rows of the real shape — 1.58 M configurations (mptraj) with 256
per-atom-summed descriptors (MACE-MPA-0's invariant width) plus 89 per-element count columns,
rows per atom, targets a misspecified function of the descriptors plus per-element offsets —
go through the same path as real data: ``write_store`` (train and test halves, 50:50) →
``popsdask.fit`` → ``predict_ensemble`` (500 samples, written to Zarr). The pipeline runs in a
child process; its wall time per stage and peak RSS (``wait4``; with ``--scheduler local`` the
summed RSS of the child and its Dask worker processes, sampled every 0.2 s) are reported.

``extractors``: CPU seconds per structure and per atom of the CHGNet extractor (bundled
weights) and of the MACE extractor on a randomly initialised model with MACE-MPA-0-medium's
architecture (weights do not change the cost), one torch thread, energies only.

    python benchmarks/corrector_scale.py run --rows 1580000 --out corrector-scale
    python benchmarks/corrector_scale.py extractors --n 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
W_DFT = (
    Path(os.environ.get("POPSDASK_TUNGSTEN_DFT", ROOT.parent / "shared" / "data" / "tungsten-dft")) / "W_dft.extxyz.xz"
)


# ---------------------------------------------------------------------------- synthetic rows
def synthetic_block(seed: int, block: int, rows: int, p: int, n_elements: int):
    """Per-atom corrector rows of ``rows`` random configurations (reproducible per block).

    Each configuration has 1 + Poisson(30) atoms of 1-4 elements; its descriptor row is the
    per-atom mean of element-dependent features plus noise shrinking as 1/sqrt(n_atoms). The
    target is misspecified the way POPS pictures it: configuration i follows its own parameter
    vector θ + B z_i (B: P × 8, z_i standard normal), i.e. no single θ fits every row, plus
    per-element offsets and small noise.
    """
    glob = np.random.default_rng(seed)
    mu = glob.normal(size=(n_elements, p))
    w = glob.normal(size=p) / np.sqrt(p)
    B = 0.01 * glob.normal(size=(p, 8)) / np.sqrt(p)
    offsets = glob.normal(size=n_elements)
    rng = np.random.default_rng([seed, block])
    n_atoms = 1 + rng.poisson(30, size=rows)
    k = rng.integers(1, 5, size=rows)
    # k distinct random elements per configuration, Dirichlet(1) composition, integer counts
    keys = rng.random((rows, n_elements))
    kth = np.sort(keys, axis=1)[np.arange(rows), k - 1]
    weights = np.where(keys <= kth[:, None], rng.exponential(size=(rows, n_elements)), 0.0)
    counts = rng.multinomial(n_atoms, weights / weights.sum(axis=1, keepdims=True))
    frac = counts / n_atoms[:, None]
    noise = rng.standard_normal(size=(rows, p), dtype=np.float32)
    desc = frac @ mu + noise / np.sqrt(n_atoms)[:, None]
    z = rng.standard_normal(size=(rows, 8))
    y = 0.05 * desc @ w + np.einsum("ij,ij->i", desc @ B, z) + frac @ offsets
    y += 0.002 * rng.normal(size=rows)
    X = np.concatenate([desc, frac], axis=1).astype(np.float32)
    return X, y


def synthetic_arrays(args: argparse.Namespace, first_block: int, n: int):
    """Lazy (X, y) of ``n`` rows from blocks ``first_block, first_block + 1, ...``."""
    import dask
    import dask.array as da

    p = args.features + args.elements
    xs, ys = [], []
    for b, start in enumerate(range(0, n, args.block_rows)):
        rows = min(args.block_rows, n - start)
        part = dask.delayed(synthetic_block, pure=True, nout=2)(
            args.seed, first_block + b, rows, args.features, args.elements
        )
        xs.append(da.from_delayed(part[0], shape=(rows, p), dtype=np.float32))
        ys.append(da.from_delayed(part[1], shape=(rows,), dtype=np.float64))
    return da.concatenate(xs), da.concatenate(ys)


def pipeline(args: argparse.Namespace) -> dict:
    """store → fit → predict (runs in the measured child process)."""
    import popsdask
    from popsdask.engine.predictions import predict_ensemble

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    half = args.rows // 2
    if args.scheduler == "local":
        from popsdask.runtime.cluster import connect

        ctx = connect("local", n_workers=args.workers, threads_per_worker=1, quiet=True, memory_limit=args.memory_limit)
    else:
        import dask

        ctx = dask.config.set(scheduler="threads", num_workers=args.workers)
    times: dict[str, float] = {}
    with ctx:
        t = time.perf_counter()
        stores = {}
        # same element features and target function; test blocks numbered after the training
        # blocks, so the two halves hold independent configurations
        test_first = -(-half // args.block_rows)
        for name, first, n in (("train", 0, half), ("test", test_first, args.rows - half)):
            X, y = synthetic_arrays(args, first, n)
            stores[name] = popsdask.write_store(
                out / f"{name}.zarr",
                X,
                y,
                chunk_rows=args.block_rows,
                overwrite=True,
                attrs={
                    "descriptors": "synthetic mptraj-scale corrector rows",
                    "per_atom": True,
                    "elements": args.elements,
                },
            )
        times["write_stores"] = time.perf_counter() - t
        t = time.perf_counter()
        post = popsdask.fit(stores["train"])
        post.save(out / "posterior.zarr", overwrite=True)
        times["fit"] = time.perf_counter() - t
        t = time.perf_counter()
        pred = predict_ensemble(
            post, stores["test"], out / "predictions.zarr", n_samples=args.n_samples, dtype=np.float32, overwrite=True
        )
        times["predict"] = time.perf_counter() - t
    metrics = json.loads(pred.attrs["metrics"])
    return {
        "seconds": times,
        "metrics": metrics,
        "n_parameters": int(post.n_features),
        "n_selected": int(post.n_selected_),
        "disk_bytes": {k: _du(out / f"{k}.zarr") for k in ("train", "test", "predictions")},
    }


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def run(args: argparse.Namespace) -> dict:
    """Run :func:`pipeline` in a child process; measure wall time and peak memory."""
    import psutil

    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        result_path = fh.name
    cmd = [sys.executable, __file__, "child", "--result", result_path] + args.forward
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    peak_tree = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak_tree
        while not stop.is_set():
            try:
                root = psutil.Process(proc.pid)
                rss = root.memory_info().rss + sum(c.memory_info().rss for c in root.children(recursive=True))
                peak_tree = max(peak_tree, rss)
            except psutil.Error:
                pass
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    stop.set()
    sampler.join()
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"benchmark child failed with status {status}")
    result = json.loads(Path(result_path).read_text())
    os.unlink(result_path)
    result.update(
        wall_seconds_child=wall,
        peak_rss_child_bytes=usage.ru_maxrss * 1024,  # Linux: kB
        peak_rss_process_tree_bytes_sampled=peak_tree,
        cpu_seconds_child=usage.ru_utime + usage.ru_stime,
    )
    return result


# ---------------------------------------------------------------------------- extractors
def mpa0_like_mace(path: Path, seed: int = 0) -> Path:
    """A random MACE with MACE-MPA-0-medium's architecture (89 elements, 128x0e+128x1o)."""
    import mace  # noqa: F401
    import torch
    from e3nn import o3
    from mace import modules

    torch.manual_seed(seed)
    zs = list(range(1, 90))
    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    model = modules.ScaleShiftMACE(
        r_max=6.0,
        num_bessel=10,
        num_polynomial_cutoff=5,
        max_ell=3,
        interaction_cls=block,
        interaction_cls_first=block,
        num_interactions=2,
        num_elements=len(zs),
        hidden_irreps=o3.Irreps("128x0e + 128x1o"),
        MLP_irreps=o3.Irreps("16x0e"),
        gate=torch.nn.functional.silu,
        atomic_energies=np.zeros(len(zs)),
        avg_num_neighbors=60.0,
        atomic_numbers=zs,
        correlation=3,
        radial_type="bessel",
        radial_MLP=[64, 64, 64],
        atomic_inter_scale=1.0,
        atomic_inter_shift=0.0,
    )
    torch.save(model, path)
    return path


def test_structures(n: int, seed: int) -> list:
    from popsdask.foundation import read_structures

    if W_DFT.is_file():
        images = read_structures(W_DFT)
        rng = np.random.default_rng(seed)
        return [images[i] for i in rng.choice(len(images), n, replace=False)]
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = bulk("W", "bcc", a=3.17, cubic=True).repeat(int(rng.integers(1, 4)))
        a.rattle(0.05, seed=i)
        out.append(a)
    return out


def extractors(args: argparse.Namespace) -> dict:
    from popsdask.foundation import CHGNetExtractor, MACEExtractor, worker_model

    structures = test_structures(args.n, args.seed)
    atoms = int(sum(len(a) for a in structures))
    tmp = Path(tempfile.mkdtemp(prefix="popsdask-bench-"))
    cases = {
        "chgnet-0.3.0": CHGNetExtractor(batch_size=16, torch_threads=1),
        "mace-mpa-0-medium-architecture (random weights, float32)": MACEExtractor(
            model=str(mpa0_like_mace(tmp / "mpa0_like.model")), torch_threads=1
        ),
    }
    results = {
        "structures": len(structures),
        "atoms": atoms,
        "source": str(W_DFT) if W_DFT.is_file() else "ase.build bcc W supercells",
    }
    for name, ext in cases.items():
        model, _ = worker_model(ext)  # as on a build_store worker (malloc tuned once)
        ext.extract(model, structures[:2])  # warm-up
        c0, t0 = time.process_time(), time.perf_counter()
        for i in range(0, len(structures), 16):
            ext.extract(model, structures[i : i + 16])
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        results[name] = {
            "cpu_s_per_structure": cpu / len(structures),
            "cpu_ms_per_atom": 1e3 * cpu / atoms,
            "wall_s_per_structure": wall / len(structures),
            "n_features": len(ext.feature_names(model)),
            "n_parameters": ext.describe(model)["n_parameters"],
        }
    return results


# ---------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("run", "child"):
        s = sub.add_parser(name)
        s.add_argument("--rows", type=int, default=1_580_000, help="configurations in all")
        s.add_argument("--features", type=int, default=256, help="descriptor width")
        s.add_argument("--elements", type=int, default=89, help="element count columns")
        s.add_argument("--block-rows", type=int, default=50_000, help="rows per chunk")
        s.add_argument("--n-samples", type=int, default=500, help="posterior samples")
        s.add_argument("--scheduler", choices=["threads", "local"], default="threads")
        s.add_argument("--workers", type=int, default=2)
        s.add_argument("--memory-limit", default="6GB", help="per worker (local scheduler)")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "corrector-scale"))
        s.add_argument("--json", default=None, help="also write the results here")
        if name == "child":
            s.add_argument("--result", required=True)
    e = sub.add_parser("extractors")
    e.add_argument("--n", type=int, default=64, help="structures to time")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.cmd == "child":
        Path(args.result).write_text(json.dumps(pipeline(args)))
        return
    if args.cmd == "run":
        args.forward = [a for a in (argv if argv is not None else sys.argv[1:])[1:]]
        result = {"config": {k: v for k, v in vars(args).items() if k != "forward"}, **run(args)}
    else:
        result = {"config": vars(args), **extractors(args)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
