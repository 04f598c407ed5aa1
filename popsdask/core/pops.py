"""POPS math on numpy blocks: leverage, pointwise corrections, hypercube, sampling.

For row i with weight wᵢ, residual eᵢ = yᵢ - xᵢ·θ and A⁻¹ = (G + λ/α I)⁻¹:

- leverage hᵢ = wᵢ xᵢᵀ A⁻¹ xᵢ;
- the pointwise correction, the minimiser of the global loss constrained to fit row i exactly,
  is δθᵢ = A⁻¹ xᵢ eᵢ / (xᵢᵀ A⁻¹ xᵢ) = cᵢ A⁻¹ xᵢ with cᵢ = eᵢ / (xᵢᵀA⁻¹xᵢ), and 0 where hᵢ = 0;
- rows with hᵢ at or above the ``leverage_percentile`` of all h are kept;
- with ``minimum_relative_error`` = ε (popsregression's selection from its 0.5 release, see
  :func:`relative_error_cutoff`), a kept row must also have a weighted residual
  rᵢ = √wᵢ |eᵢ| ≥ ε · RMSE, RMSE = √(Σ wᵢeᵢ² / N) over all N rows, and leverages below
  :data:`LEVERAGE_FLOOR` are floored in the correction: δθᵢ = A⁻¹xᵢ wᵢeᵢ / max(hᵢ, floor).

Because δθᵢ = cᵢ A⁻¹xᵢ, the second moment of the kept corrections is A⁻¹ (Σ cᵢ² xᵢxᵢᵀ) A⁻¹ and
their projections on a basis U are cᵢ xᵢ·(A⁻¹U): the passes never form δθᵢ row by row unless the
``ensemble`` posterior asks for them.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from .stats import float64_blocks

# scipy is imported inside the functions that use it: the command line reads this module's
# names (through the posterior kinds) to build its parser, which must not wait for scipy

SAMPLING_METHODS = ("uniform", "sobol", "latin", "halton")

# popsregression's (≥ 0.5) absolute floor on the leverage h = w xᵀA⁻¹x in the correction
# δθ = A⁻¹x w e / h: rows of near-zero leverage otherwise get corrections of order e/h, which
# made the box 10¹³ wide on the W DFT data without leverage selection.
LEVERAGE_FLOOR = 1.0e-6


def block_leverage(
    X: np.ndarray,
    y: np.ndarray,
    w: np.ndarray | None,
    coef: np.ndarray,
    a_inv: np.ndarray,
    factor: np.ndarray | None = None,
    release_gil: bool = True,
    leverage_floor: float | None = None,
) -> np.ndarray:
    """Leverage h and correction scale c of each row, stacked as an (n, 2) float64 array.

    With ``factor`` = L, the lower Cholesky factor of ``a_inv`` (A⁻¹ = L Lᵀ), the quadratic
    form xᵀA⁻¹x is computed as |Lᵀx|² (:func:`lower_quadratic_form`, ``release_gil`` passed on),
    on float64 sub-blocks of X.

    With ``leverage_floor`` (the ``minimum_relative_error`` selection) the result is (n, 3):
    h; c = w e / max(h, floor), i.e. e / (xᵀA⁻¹x) where h > floor; and the weighted residual
    magnitude r = √w |e| that the selection compares with ε · RMSE. Without it, c = e/(xᵀA⁻¹x)
    where h > 0 and 0 elsewhere (popsregression 0.4.0).
    """
    y = np.asarray(y, dtype=np.float64)
    n = np.shape(X)[0]
    e = np.empty(n)
    q = np.empty(n)
    for start, Xb in float64_blocks(X):
        rows = slice(start, start + Xb.shape[0])
        e[rows] = y[rows] - Xb @ coef
        if factor is None:
            q[rows] = np.einsum("ij,ij->i", Xb @ a_inv, Xb)
        else:
            scratch = not np.shares_memory(Xb, X)  # the cast buffer
            q[rows] = lower_quadratic_form(Xb, factor, release_gil=release_gil, scratch=scratch)
    w = None if w is None else np.asarray(w, dtype=np.float64)
    h = q if w is None else w * q
    with np.errstate(divide="ignore", invalid="ignore"):
        if leverage_floor is None:
            c = np.where(h > 0, e / np.where(q != 0, q, 1.0), 0.0)
            return np.stack([h, c], axis=1)
        we = e if w is None else w * e
        c = np.where(h > leverage_floor, e / np.where(q != 0, q, 1.0), we / leverage_floor)
    r = np.abs(e) if w is None else np.sqrt(w) * np.abs(e)
    return np.stack([h, c, r], axis=1)


def lower_quadratic_form(
    X: np.ndarray, L: np.ndarray, *, release_gil: bool = True, scratch: bool = False, width: int = 64
) -> np.ndarray:
    """|xᵢ·L|² for each row of ``X``, with ``L`` lower triangular.

    Preferred route: BLAS ``dtrmm`` (half the flops of X @ L) called through ctypes, which
    releases the GIL (:func:`_trmm_in_place`), on 2048-row slices that stay in cache: at
    32768 × 256 on one core ~0.05 s, the speed of the chunk's SYRK, against 0.10–0.16 s for
    the blocked matmuls below. Fallbacks when scipy's BLAS capsule is unavailable:
    ``release_gil``: blocked numpy matmuls (column block J of X·L only involves columns ≥ J of
    X, 5/8 of the flops of X @ L; GIL-free); else scipy's ``dtrmm`` wrapper, which holds the GIL
    (it serialises tasks that share a process). ``scratch``: ``X`` may be overwritten.
    """
    trmm = _trmm_in_place()
    if trmm is not None:
        return _trmm_quadratic_form(trmm, X, L, scratch)
    if not release_gil:
        from scipy.linalg.blas import dtrmm

        t = dtrmm(1.0, L, X.T, side=0, lower=1, trans_a=1, overwrite_b=scratch)  # (X L)ᵀ = Lᵀ Xᵀ
        q: np.ndarray = np.einsum("ij,ij->j", t, t)
        return q
    q = np.zeros(X.shape[0])
    for j in range(0, L.shape[0], width):
        t = X[:, j:] @ L[j:, j : j + width]
        q += np.einsum("ij,ij->i", t, t)
    return q


TRMM_ROWS = 2048  # 2048 × 256 float64 = 4 MiB: the slice stays in L2/L3 between dtrmm and the row sums


def _trmm_quadratic_form(trmm: Any, X: np.ndarray, L: np.ndarray, scratch: bool) -> np.ndarray:
    n, p = X.shape
    q = np.empty(n)
    Lc = np.ascontiguousarray(L)
    direct = scratch and X.flags.c_contiguous and X.dtype == np.float64
    buf = None if direct else np.empty((min(TRMM_ROWS, n), p))
    for start in range(0, n, TRMM_ROWS):
        rows = min(TRMM_ROWS, n - start)
        if direct:
            b = X[start : start + rows]
        else:
            assert buf is not None
            b = buf[:rows]
            np.copyto(b, X[start : start + rows], casting="unsafe")
        trmm(Lc, b)
        np.einsum("ij,ij->i", b, b, out=q[start : start + rows])
    return q


@functools.cache
def _trmm_in_place() -> Any:
    """``f(L, B)``: B ← B·L in place for C-ordered float64 B (n × P) and lower-triangular L
    (P × P), by scipy's BLAS ``dtrmm`` through ctypes, or None when unavailable.

    ctypes releases the GIL around the call (scipy's Python ``dtrmm`` wrapper does not), so
    tasks in the threads of one process run it in parallel. In Fortran's column-major view a
    C-ordered B is Bᵀ and L is Lᵀ (upper): Bᵀ ← Lᵀ Bᵀ is dtrmm('L', 'U', 'N', 'N').
    """
    try:
        import ctypes

        from scipy.linalg import cython_blas

        capsule = cython_blas.__pyx_capi__["dtrmm"]
        api = ctypes.pythonapi
        api.PyCapsule_GetName.restype = ctypes.c_char_p
        api.PyCapsule_GetName.argtypes = [ctypes.py_object]
        api.PyCapsule_GetPointer.restype = ctypes.c_void_p
        api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
        pointer = api.PyCapsule_GetPointer(capsule, api.PyCapsule_GetName(capsule))
        ch, ip, dp, vp = ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_double), ctypes.c_void_p
        fn = ctypes.CFUNCTYPE(None, ch, ch, ch, ch, ip, ip, dp, vp, ip, vp, ip)(pointer)
    except (ImportError, AttributeError, KeyError, TypeError, ValueError, OSError):
        return None

    def trmm(L: np.ndarray, B: np.ndarray) -> None:
        n, p = B.shape
        if not (B.flags.c_contiguous and L.flags.c_contiguous and B.dtype == L.dtype == np.float64):
            raise ValueError("dtrmm needs C-ordered float64 arrays")
        if L.shape != (p, p) or max(n, p) >= 2**31:
            raise ValueError(f"dtrmm: shapes {B.shape} and {L.shape}")
        pp, nn, one = ctypes.c_int(p), ctypes.c_int(n), ctypes.c_double(1.0)
        ref = ctypes.byref
        fn(b"L", b"U", b"N", b"N", ref(pp), ref(nn), ref(one), L.ctypes.data, ref(pp), B.ctypes.data, ref(pp))

    # check the route on a small case against numpy before trusting it
    rng = np.random.default_rng(0)
    L0 = np.tril(rng.standard_normal((5, 5)))
    B0 = rng.standard_normal((3, 5))
    B1 = B0.copy()
    trmm(L0, B1)
    return trmm if np.allclose(B1, B0 @ L0, rtol=1e-12, atol=1e-12) else None


def leverage_factor(a_inv: np.ndarray) -> np.ndarray | None:
    """Lower Cholesky factor of ``a_inv`` for :func:`block_leverage`, or None if not PD."""
    from scipy.linalg import cholesky

    try:
        factor: np.ndarray = cholesky((a_inv + a_inv.T) / 2.0, lower=True)
    except np.linalg.LinAlgError:
        return None
    return factor


def selected_rows(hc: np.ndarray, threshold: float, min_residual: float | None = None) -> np.ndarray:
    """Boolean mask of the kept rows of a :func:`block_leverage` block.

    A row is kept when h ≥ ``threshold`` and, if ``min_residual`` is given (then ``hc`` has
    the residual column), also r = √w|e| ≥ ``min_residual``.
    """
    keep = hc[:, 0] >= threshold
    if min_residual is not None:
        keep &= hc[:, 2] >= min_residual
    return keep


def block_selected(
    X: np.ndarray, hc: np.ndarray, threshold: float, min_residual: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Rows kept by :func:`selected_rows` (as float64) and their correction scales."""
    keep = selected_rows(hc, threshold, min_residual)
    return np.asarray(X[keep], dtype=np.float64), hc[keep, 1]


GATHER_ROWS = 2048  # kept rows per gathered sub-block: 4 MiB at P = 256, reused, stays in cache


def _selected_blocks(
    X: np.ndarray, hc: np.ndarray, threshold: float, min_residual: float | None = None, rows: int = GATHER_ROWS
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(block, c)``: float64 blocks of the kept rows, scratch memory the caller may
    overwrite, and their correction scales.

    The kept rows are gathered (and cast) ``rows`` at a time into one reused buffer: gathering
    all kept rows of a 64 MiB chunk at once faulted in a fresh 32 MiB copy per chunk and pass,
    and its matmul output another, which made the bounds pass slower than the Gram under load.
    """
    X = np.asarray(X)
    index = np.flatnonzero(selected_rows(hc, threshold, min_residual))
    if index.size == 0:
        return
    ck = hc[index, 1]
    buf = np.empty((min(rows, index.size), X.shape[1]))
    for start in range(0, index.size, rows):
        part = index[start : start + rows]
        block = buf[: part.size]
        if X.dtype == np.float64:
            np.take(X, part, axis=0, out=block)
        else:
            np.copyto(block, X[part], casting="unsafe")
        yield block, ck[start : start + part.size]


def block_correction_moment(
    X: np.ndarray, hc: np.ndarray, threshold: float, min_residual: float | None = None
) -> np.ndarray:
    """Σ cᵢ² xᵢxᵢᵀ over the kept rows of a block (P × P)."""
    out = np.zeros((X.shape[1], X.shape[1]))
    for Xb, c in _selected_blocks(X, hc, threshold, min_residual):
        Xb *= np.abs(c)[:, None]
        out += Xb.T @ Xb
    return out


def block_corrections(
    X: np.ndarray, hc: np.ndarray, threshold: float, a_inv: np.ndarray, min_residual: float | None = None
) -> np.ndarray:
    """The pointwise corrections δθᵢ of the kept rows of a block (n_kept × P)."""
    Xs, c = block_selected(X, hc, threshold, min_residual)
    corrections: np.ndarray = (Xs @ a_inv) * c[:, None]
    return corrections


def block_projections(
    X: np.ndarray, hc: np.ndarray, threshold: float, proj: np.ndarray, min_residual: float | None = None
) -> np.ndarray:
    """Coordinates Uᵀδθᵢ of the kept rows of a block, with ``proj`` = A⁻¹U (n_kept × K)."""
    Xs, c = block_selected(X, hc, threshold, min_residual)
    coordinates: np.ndarray = (Xs @ proj) * c[:, None]
    return coordinates


def block_projection_range(
    X: np.ndarray, hc: np.ndarray, threshold: float, proj: np.ndarray, min_residual: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-mode minimum and maximum of the kept rows' projections (+inf/-inf if none kept)."""
    k = proj.shape[1]
    lower, upper = np.full(k, np.inf), np.full(k, -np.inf)
    out = None
    for Xb, c in _selected_blocks(X, hc, threshold, min_residual):
        out = np.empty((Xb.shape[0], k)) if out is None else out
        z = np.matmul(Xb, proj, out=out[: Xb.shape[0]])
        z *= c[:, None]
        np.minimum(lower, z.min(axis=0), out=lower)
        np.maximum(upper, z.max(axis=0), out=upper)
    return lower, upper


def combine_range(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return np.minimum(a[0], b[0]), np.maximum(a[1], b[1])


def leverage_threshold(h: np.ndarray, leverage_percentile: float) -> float:
    """The exact ``leverage_percentile`` of all leverage scores (numpy's linear rule)."""
    return float(np.percentile(h, leverage_percentile))


def relative_error_cutoff(sum_sq: float, n_rows: int, minimum_relative_error: float) -> float:
    """ε · RMSE: the smallest weighted residual √wᵢ|eᵢ| a row may have to be kept.

    RMSE = √(Σ wᵢeᵢ² / N) is the root mean square of the weighted residuals of the mean fit
    over all N rows (zero-weight rows included in N), as popsregression computes it on the
    √w-rescaled data; ``sum_sq`` = Σ wᵢeᵢ². Scaling y scales both sides, so the selection is
    scale invariant.
    """
    return float(minimum_relative_error) * float(np.sqrt(sum_sq / n_rows))


def principal_basis(moment: np.ndarray, mode_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvectors of the correction second moment whose eigenvalue exceeds
    ``mode_threshold`` × the largest one, and those eigenvalues (ascending, as eigh)."""
    from scipy.linalg import eigh

    vals, vecs = eigh((moment + moment.T) / 2.0)
    keep = vals > mode_threshold * vals.max()
    return vecs[:, keep], vals[keep]


def hypercube_second_moment(basis: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """E[δθ δθᵀ] for δθ uniform on the box: U (m mᵀ + diag((hi - lo)²/12)) Uᵀ.

    This is the exact value of what popsregression estimates from its samples
    (its ``misspecification_sigma_``), so it does not depend on the sample count.
    """
    mid = (lower + upper) / 2.0
    inner = np.outer(mid, mid) + np.diag((upper - lower) ** 2 / 12.0)
    moment: np.ndarray = basis @ inner @ basis.T
    return moment


def unit_samples(n: int, dim: int, method: str = "uniform", seed: int | None = 0) -> np.ndarray:
    """``n`` points in [0, 1)^dim, reproducible from ``seed``."""
    if method not in SAMPLING_METHODS:
        raise ValueError(f"method={method!r}: use one of {SAMPLING_METHODS}")
    if n < 1:
        raise ValueError(f"n={n}: need at least one sample")
    rng = np.random.default_rng(seed)
    if dim == 0:
        return np.zeros((n, 0))
    if method == "uniform":
        return rng.uniform(size=(n, dim))
    from scipy.stats import qmc

    engine = {"sobol": qmc.Sobol, "latin": qmc.LatinHypercube, "halton": qmc.Halton}[method]
    with warnings.catch_warnings():
        # Sobol prefers powers of two; the sample count is the user's choice, not N's.
        warnings.simplefilter("ignore", UserWarning)
        points: np.ndarray = engine(d=dim, seed=rng).random(n)
    return points
