"""The embedded default problem of ``popsdask demo``: a misspecified pair potential.

Each configuration is an atom with ``N_NEIGHBOURS`` neighbours at distances r_j. The reference
("ab initio") energy is a Morse pair sum plus an embedding (many-body) term,

    E = Σ_j D (e^{-2a(r_j - r0)} - 2 e^{-a(r_j - r0)}) + c (Σ_j e^{-r_j})²,

which no pair potential reproduces exactly. The model is linear in ``N_BASIS`` Gaussian radial
functions, D_k = Σ_j g_k(r_j), so the fit is misspecified as real MLIAP fits are. Rows per
configuration: one energy row and ``N_NEIGHBOURS`` force rows -∂E/∂r_j (kind ``force``,
``atom`` = neighbour). Everything is generated chunk by chunk from a seed.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np

N_NEIGHBOURS = 6
N_BASIS = 24
R_MIN, R_MAX = 2.3, 5.0
CENTRES = np.linspace(R_MIN - 0.2, R_MAX + 0.2, N_BASIS)
WIDTH = 1.5 * (CENTRES[1] - CENTRES[0])
MORSE_D, MORSE_A, MORSE_R0, EMBED_C = 0.6, 1.6, 2.9, 40.0
ROWS_PER_CONFIG = 1 + N_NEIGHBOURS


def _basis(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian radial functions and their derivatives, shape r.shape + (N_BASIS,)."""
    d = (r[..., None] - CENTRES) / WIDTH
    g = np.exp(-0.5 * d**2)
    return g, -d / WIDTH * g


def _truth(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference energy per configuration and its derivative with respect to each r_j."""
    x = np.exp(-MORSE_A * (r - MORSE_R0))
    pair = MORSE_D * (x**2 - 2 * x)
    dpair = MORSE_D * (-2 * MORSE_A * x**2 + 2 * MORSE_A * x)
    s = np.exp(-r).sum(axis=1)
    energy = pair.sum(axis=1) + EMBED_C * s**2
    denergy = dpair - 2 * EMBED_C * s[:, None] * np.exp(-r)
    return energy, denergy


def config_block(first: int, n_configs: int, seed: int) -> dict[str, np.ndarray]:
    """Rows of configurations ``first`` to ``first + n_configs - 1`` (deterministic in ``seed``)."""
    rng = np.random.default_rng([seed, first])
    # dense and compressed environments are rarer, as in sampled MD data
    r = R_MIN + (R_MAX - R_MIN) * rng.beta(2.0, 1.5, size=(n_configs, N_NEIGHBOURS))
    g, dg = _basis(r)
    energy, denergy = _truth(r)
    X = np.empty((n_configs, ROWS_PER_CONFIG, N_BASIS))
    X[:, 0] = g.sum(axis=1)
    X[:, 1:] = -dg  # force on neighbour j: -∂E/∂r_j, linear in the same parameters
    y = np.empty((n_configs, ROWS_PER_CONFIG))
    y[:, 0] = energy
    y[:, 1:] = -denergy
    kind = np.ones((n_configs, ROWS_PER_CONFIG), dtype=np.int8)
    kind[:, 0] = 0
    atom = np.tile(np.arange(-1, N_NEIGHBOURS, dtype=np.int32), (n_configs, 1))
    config = np.repeat(np.arange(first, first + n_configs), ROWS_PER_CONFIG)
    return {
        "X": X.reshape(-1, N_BASIS),
        "y": y.ravel(),
        "kind": kind.ravel(),
        "atom": atom.ravel(),
        "config": config,
    }


def demo_arrays(n_configs: int, seed: int = 0, configs_per_block: int = 5000) -> dict[str, da.Array]:
    """Lazy row arrays of ``n_configs`` configurations, one dask block per config block."""
    parts: dict[str, list[da.Array]] = {k: [] for k in ("X", "y", "kind", "atom", "config")}
    meta = {"X": np.float64, "y": np.float64, "kind": np.int8, "atom": np.int32, "config": np.int64}
    for first in range(0, n_configs, configs_per_block):
        m = min(configs_per_block, n_configs - first)
        block = dask.delayed(config_block, pure=True)(first, m, seed)
        rows = m * ROWS_PER_CONFIG
        for key in parts:
            shape = (rows, N_BASIS) if key == "X" else (rows,)
            parts[key].append(da.from_delayed(block[key], shape=shape, dtype=meta[key]))
    return {k: da.concatenate(v) for k, v in parts.items()}


def write_demo_stores(
    train_path, test_path, *, n_train: int, n_test: int, seed: int = 0, chunk_rows: int = 35000
) -> None:
    """Write the training and held-out stores (different seeds: disjoint configurations)."""
    from ..io.store import write_store

    attrs = {
        "description": "popsdask demo: Morse + embedding reference, Gaussian radial pair basis",
        "n_neighbours": N_NEIGHBOURS,
        "n_basis": N_BASIS,
        "r_min": R_MIN,
        "r_max": R_MAX,
        "units": "eV, Angstrom",
    }
    for path, n, s in ((train_path, n_train, seed), (test_path, n_test, seed + 1)):
        a = demo_arrays(n, s)
        write_store(
            path,
            a["X"],
            a["y"],
            config=a["config"],
            # energy and force weights with equal sums, as in the paper's eq. 9 normalisation
            weight=da.where(a["kind"] == 0, float(N_NEIGHBOURS), 1.0),
            kind=a["kind"],
            atom=a["atom"],
            component=da.where(a["kind"] == 1, 0, -1).astype(np.int8),
            configurations={"n_neighbours": np.full(n, N_NEIGHBOURS, dtype=np.int32)},
            attrs={**attrs, "seed": s},
            chunk_rows=chunk_rows,
            overwrite=True,
        )
