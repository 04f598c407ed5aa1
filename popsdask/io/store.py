"""Descriptor stores: one Zarr v3 group per design matrix, read and written through xarray.

Layout (dimension names, not axis numbers)::

    X          (row, feature)   float32 | float64, chunked along ``row`` only
    y          (row)            reference values
    weight     (row)            optional, >= 0
    config     (row)            configuration index of each row          (coordinate)
    kind       (row)            0 energy, 1 force, 2 stress (CF flags)    (coordinate)
    atom       (row)            atom index for force rows, -1 otherwise   (coordinate)
    component  (row)            x/y/z (0..2) for forces, Voigt 0..5 for stress, -1 else
    <name>     (configuration)  per-configuration variables (name, n_atoms, ...)

Attributes describe how the descriptors were made. A store is written into a hidden sibling
directory and renamed into place once complete, and carries ``popsdask_complete = True``; a
killed writer leaves only the staging directory, whose name and ``popsdask_complete = False``
readers refuse, so it never opens as complete. A group that another tool wrote (xarray, zarr:
no popsdask mark at all) is a descriptor store like any other after the same safety checks.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import json
import os
import re
import shutil
import stat
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from ..core.validation import InputError, check_finite_block
from .chunkread import raw_dask_array, raw_layout

__all__ = [
    "KIND_CODES",
    "InputError",
    "open_store",
    "write_store",
    "check_chunk_rows",
    "store_chunk_rows",
    "atomic_directory",
    "atomic_group",
    "mark_complete",
    "is_complete",
    "select_split",
    "write_state",
    "output_lock",
    "OutputLocked",
    "DiskFull",
]

KIND_CODES = {"energy": 0, "force": 1, "stress": 2}
COMPLETE_ATTR = "popsdask_complete"
STORE_FORMAT = "popsdask.descriptors/1"
DEFAULT_CHUNK_BYTES = 64 * 2**20

# codecs that only decode bytes; anything else (pickle, numcodecs objects) is refused.
SAFE_CODECS = {
    "bytes",
    "zstd",
    "blosc",
    "gzip",
    "crc32c",
    "transpose",
    "sharding_indexed",
    "vlen-utf8",
    "vlen-bytes",
}
SAFE_DATA_TYPES = {
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float32",
    "float64",
    "fixed_length_utf32",
}


def default_chunk_rows(n_features: int, itemsize: int = 8) -> int:
    """Rows per chunk so that one chunk of X is about 64 MiB."""
    return max(1024, DEFAULT_CHUNK_BYTES // max(1, n_features * itemsize))


def _as_dask(a: Any, name: str, chunk_rows: int) -> da.Array:
    if isinstance(a, da.Array):
        arr = a
    else:
        values = np.asarray(a)
        if values.dtype == object or values.dtype.kind in "USVMm":
            raise InputError(f"{name}: dtype {values.dtype} is not numeric")
        arr = da.from_array(values, chunks=(chunk_rows,) + values.shape[1:])
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise InputError(f"{name}: dtype {arr.dtype} is not numeric")
    return arr.rechunk((chunk_rows,) + arr.shape[1:])


def _kind_codes(kind: Any, n: int) -> np.ndarray | da.Array:
    if kind is None:
        return np.zeros(n, dtype=np.int8)
    if isinstance(kind, da.Array):
        return kind.astype(np.int8)
    k = np.asarray(kind)
    if k.dtype.kind in "US" or k.dtype == object:
        try:
            k = np.array([KIND_CODES[str(s)] for s in k], dtype=np.int8)
        except KeyError as err:
            raise InputError(f"kind: unknown row kind {err.args[0]!r}; use {list(KIND_CODES)}") from err
    if k.dtype.kind not in "biu" or not np.isin(k, list(KIND_CODES.values())).all():
        bad = k[~np.isin(k, list(KIND_CODES.values()))] if k.dtype.kind in "biuf" else k
        raise InputError(
            f"kind: unknown row kind code {bad.ravel()[:1].tolist()} (dtype {k.dtype}); use "
            f"{KIND_CODES} or the names {list(KIND_CODES)}"
        )
    return k.astype(np.int8)


def atomic_directory(path: str | os.PathLike) -> tuple[Path, Path]:
    """Return (final, staging) paths; write into staging, then :func:`commit_directory`."""
    final = Path(path).absolute()
    staging = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex[:8]}")
    return final, staging


def discard_directory(staging: Path, settle: float = 0.25, attempts: int = 20) -> None:
    """Remove a failed write's staging directory for good.

    When one task of a write fails, Dask raises at once while tasks already running keep writing
    chunks, which would re-create files after a single ``rmtree``; remove until it stays gone.
    """
    for _ in range(attempts):
        shutil.rmtree(staging, ignore_errors=True)
        time.sleep(settle)
        if not staging.exists():
            return


def commit_directory(staging: Path, final: Path, overwrite: bool) -> None:
    """Move a fully written directory into place (rename is atomic on one filesystem), under
    :func:`output_lock` of ``final``: of two writers committing one path at once, the second
    sees the first's output (FileExistsError, or a replace with ``overwrite``)."""
    with output_lock(final):
        _commit_directory(staging, final, overwrite)


def _commit_directory(staging: Path, final: Path, overwrite: bool) -> None:
    if final.exists():
        if not overwrite:
            shutil.rmtree(staging, ignore_errors=True)
            raise FileExistsError(f"{final} exists; pass overwrite=True to replace it")
        trash = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, trash)
        os.replace(staging, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, final)


class OutputLocked(InputError):
    """Another process is writing the same output (its lock file is held)."""


#: locks this process holds, by lock-file path: [open file, depth] (re-entrant per process)
_HELD_LOCKS: dict[Path, list[Any]] = {}
_HELD_LOCKS_GUARD = threading.Lock()


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of an output: ``.NAME.lock`` beside it."""
    final = Path(path).absolute()
    return final.with_name(f".{final.name}.lock")


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive ``fcntl`` lock of the output ``path`` (a ``.NAME.lock`` file beside it)
    for the block, or raise :class:`OutputLocked` at once (one line naming the path and the
    holder's PID) when another process holds it.

    The kernel releases the lock when the holder exits however it exits (SIGKILL included), so
    a stale lock file never blocks anyone. Re-entrant within a process (a command that holds it
    may call writers that take it again). The file is unlinked before it is unlocked, and a
    locker checks that the file it locked is still the one at the path, so two processes never
    hold locks on two different files of one name.
    """
    lock = lock_path(path)
    with _HELD_LOCKS_GUARD:
        held = _HELD_LOCKS.get(lock)
        if held is not None:
            held[1] += 1
    if held is None:
        lock.parent.mkdir(parents=True, exist_ok=True)
        while True:
            f = open(lock, "a+")  # held open for as long as the lock
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "unknown"
                f.close()
                final = Path(path).absolute()
                raise OutputLocked(
                    f"{final}: another popsdask process (PID {holder}) is writing it; wait for it to finish "
                    f"(lock {lock.name})"
                ) from None
            try:
                same = os.fstat(f.fileno()).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            f.close()  # the holder unlinked it between our open and flock: lock the new file
        f.truncate(0)
        f.write(str(os.getpid()))
        f.flush()
        with _HELD_LOCKS_GUARD:
            _HELD_LOCKS[lock] = held = [f, 1]
    try:
        yield lock
    finally:
        with _HELD_LOCKS_GUARD:
            held[1] -= 1
            last = held[1] == 0
            if last:
                del _HELD_LOCKS[lock]
        if last:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)
            held[0].close()  # closing releases the flock


class DiskFull(InputError):
    """A write ran out of space (ENOSPC, or EDQUOT for a quota); its staging was removed."""


def disk_full(err: BaseException, final: Path) -> DiskFull | None:
    """The one-line :class:`DiskFull` for ``err`` when it (or an exception it was raised from,
    e.g. by dask or zarr) is "no space left on device", else None."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            kept = "the existing one is untouched" if final.exists() else "nothing was written there"
            return DiskFull(f"{final}: no space left on device while writing it; {kept} (partial write removed)")
        e = e.__cause__ or e.__context__
    return None


@contextlib.contextmanager
def atomic_group(
    path: str | os.PathLike, *, overwrite: bool = False, settle: float = 0.25, attempts: int = 20
) -> Iterator[Path]:
    """Write a Zarr group atomically: ``with atomic_group(path) as staging: ds.to_zarr(staging)``.

    Yields a hidden staging path next to ``path``; when the block finishes the group there is
    marked complete and its metadata consolidated (:func:`mark_complete`), and it is renamed into
    place (:func:`commit_directory`).
    On any exception (KeyboardInterrupt included) the staging directory is discarded
    (:func:`discard_directory` with ``settle``/``attempts``) and nothing appears at ``path``.
    An existing ``path`` raises :class:`FileExistsError` on entry unless ``overwrite``; the
    write holds :func:`output_lock` of ``path``, so a second process writing the same path at
    the same time gets :class:`OutputLocked` on entry instead of interleaving with it. A write
    that fills the disk raises :class:`DiskFull` (one line naming ``path``).
    """
    final, staging = atomic_directory(path)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass overwrite=True to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(final):  # two writers of one path: the second is refused, not interleaved
        if final.exists() and not overwrite:  # written while we waited for nothing: re-check
            raise FileExistsError(f"{final} exists; pass overwrite=True to replace it")
        remove_stale_staging(final)
        try:
            yield staging
            mark_complete(staging)
            commit_directory(staging, final, overwrite)
        except BaseException as err:
            discard_directory(staging, settle=settle, attempts=attempts)
            full = disk_full(err, final)
            if full is not None:
                raise full from err
            raise


def remove_stale_staging(final: Path) -> None:
    """Remove the ``.NAME.partial-*`` and ``.NAME.old-*`` directories a killed writer of ``final``
    left. Call it holding :func:`output_lock` of ``final``: every writer of ``final`` holds that
    lock while it writes, so whoever holds it now is the only one, and the rest are stale."""
    for p in final.parent.glob(f".{glob.escape(final.name)}.*"):
        if re.fullmatch(rf"\.{re.escape(final.name)}\.(partial|old)-[0-9a-f]{{8}}", p.name) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def mark_complete(path: str | os.PathLike) -> None:
    """Mark the group complete, then consolidate its metadata into the root ``zarr.json``, so that
    a plain ``xarray.open_zarr(path)`` reads every array's metadata at once and does not warn."""
    import zarr

    g = zarr.open_group(str(path), mode="r+")
    g.attrs[COMPLETE_ATTR] = True
    with warnings.catch_warnings():
        # zarr: consolidated metadata is not yet part of the v3 specification (zarr-python and
        # xarray read it; the arrays' own metadata stays in place for other readers)
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        # a checkpoint group also holds plain files (.npz): they are not Zarr nodes
        warnings.filterwarnings("ignore", message="Object at .* is not recognized as a component of a Zarr")
        # fixed-length strings (names, groups) have no Zarr v3 specification yet: zarr-python
        # warns as it reads their metadata to consolidate it (the write itself is silenced)
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification")
        zarr.consolidate_metadata(str(path))


def is_complete(path: str | os.PathLike) -> bool:
    """True when a popsdask writer marked the group complete (posteriors, predictions, resumable
    parts need the mark; descriptor stores from other tools are judged by :func:`write_state`)."""
    return write_state(path) == "complete"


_STAGING = re.compile(r"^\..+\.partial-[0-9a-f]{8}")


def is_staging_directory(path: str | os.PathLike) -> bool:
    """A hidden ``.NAME.partial-XXXXXXXX`` directory of :func:`atomic_directory`."""
    return bool(_STAGING.match(Path(path).name))


def write_state(path: str | os.PathLike) -> str:
    """``"complete"`` or ``"incomplete"`` by the group's own popsdask mark, ``"foreign"`` when a
    tool other than popsdask wrote it (no mark at all), ``"missing"`` without a v3 zarr.json."""
    meta = Path(path) / "zarr.json"
    if not meta.is_file():
        return "missing"
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return "missing"
    if COMPLETE_ATTR not in attrs:
        return "foreign"
    return "complete" if bool(attrs[COMPLETE_ATTR]) else "incomplete"


def _v2_hint(root: Path) -> str | None:
    if any((root / name).exists() for name in (".zgroup", ".zarray", ".zattrs", ".zmetadata")):
        return (
            f'{root}: a Zarr v2 group, not a Zarr v3 group; convert it with python -c "import xarray as xr; '
            f"xr.open_zarr('{root}').drop_encoding().to_zarr('NEW.zarr', zarr_format=3)\""
        )
    return None


def _group_files(root: Path, name: str) -> list[Path]:
    """The files called ``name`` under ``root``, after checking that every entry of the tree is a
    regular file or a directory: reading a FIFO (or a device) as a chunk would block for ever."""
    found = []
    for folder, dirs, files in os.walk(root):
        for entry in dirs + files:
            p = Path(folder) / entry
            try:
                mode = p.stat().st_mode
            except OSError as err:
                raise InputError(f"{p}: unreadable ({err.strerror})") from None
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise InputError(f"{p}: not a regular file (a FIFO, socket or device); a store holds files only")
        found += [Path(folder) / f for f in files if f == name]
    return found


def check_safe_group(path: str | os.PathLike) -> None:
    """Refuse stores whose arrays need codecs or data types that could execute code.

    Reads only the JSON metadata (no chunk is decoded, nothing is unpickled).
    """
    root = Path(path)
    if not (root / "zarr.json").is_file():
        raise InputError(_v2_hint(root) or f"{root}: not a Zarr v3 group (no zarr.json)")
    for meta_path in _group_files(root, "zarr.json"):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as err:
            raise InputError(f"{meta_path}: unreadable metadata ({err})") from err
        if meta.get("node_type") != "array":
            continue
        dt = meta.get("data_type")
        dt_name = dt.get("name") if isinstance(dt, dict) else dt
        if dt_name not in SAFE_DATA_TYPES:
            raise InputError(
                f"{meta_path.parent}: data type {dt_name!r} is not allowed in a popsdask store "
                "(object and variable-length types are refused)"
            )
        for codec in meta.get("codecs", []):
            names = [codec.get("name")]
            if names[0] == "sharding_indexed":
                cfg = codec.get("configuration", {})
                names += [c.get("name") for c in cfg.get("codecs", []) + cfg.get("index_codecs", [])]
            for name in names:
                if name not in SAFE_CODECS:
                    raise InputError(f"{meta_path.parent}: codec {name!r} is not allowed")


def write_store(
    path: str | os.PathLike,
    X: Any,
    y: Any,
    *,
    weight: Any = None,
    config: Any = None,
    kind: Any = None,
    atom: Any = None,
    component: Any = None,
    configurations: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
    chunk_rows: int | None = None,
    overwrite: bool = False,
    compress_X: bool = False,
) -> Path:
    """Write a descriptor store chunk by chunk.

    Parameters
    ----------
    path : path-like
        Directory of the Zarr v3 group to create.
    X : array-like or dask array of shape (n_rows, n_features)
        Design matrix. float32 is kept as float32 on disk; other numbers become float64.
    y : array-like of shape (n_rows,)
        Reference values.
    weight : array-like of shape (n_rows,), optional
        Non-negative row weights.
    config, kind, atom, component : array-like of shape (n_rows,), optional
        Row coordinates. ``config`` defaults to the row index (one configuration per row),
        ``kind`` to energy; ``kind`` may hold the strings energy/force/stress.
    configurations : mapping of name -> array of shape (n_configurations,), optional
        Per-configuration variables (name, n_atoms, ...).
    attrs : mapping, optional
        JSON-serialisable description of how the descriptors were made.
    chunk_rows : int, optional
        Rows per chunk (default: about 64 MiB of X per chunk).
    overwrite : bool
        Replace an existing store at ``path``.
    compress_X : bool
        Compress ``X`` with zstd. Off by default: dense descriptors compress by ~10 % while
        decompression doubled the time of a fit from the store (every pass reads X).

    Returns
    -------
    pathlib.Path of the completed store. Non-finite values, negative weights or inconsistent
    lengths raise :class:`InputError` naming the variable and row range; nothing is left at
    ``path`` in that case.
    """
    final = Path(path).absolute()
    if final.exists() and not overwrite:  # refused before any input is validated or computed
        raise FileExistsError(f"{final} exists; pass overwrite=True to replace it")
    X, (n, p) = _design_shape(X)
    dtype = np.float32 if getattr(X, "dtype", None) == np.float32 else np.float64
    chunk_rows = store_chunk_rows(chunk_rows, n, p, dtype)
    data_vars = _row_variables(final, X, y, weight, dtype, chunk_rows)
    coords = _row_coordinates(n, chunk_rows, config=config, kind=kind, atom=atom, component=component)
    ds = xr.Dataset(data_vars, coords=coords)
    ds["kind"].attrs.update(flag_values=list(KIND_CODES.values()), flag_meanings=" ".join(KIND_CODES))
    for name, value in (configurations or {}).items():
        ds[name] = _configuration_variable(name, value)
    ds.attrs.update(json.loads(json.dumps(dict(attrs or {}), default=str)))
    ds.attrs.update(format=STORE_FORMAT, n_rows=int(n), n_features=int(p), **{COMPLETE_ATTR: False})

    with atomic_group(final, overwrite=overwrite) as staging, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr: fixed-length strings are an unstable v3 type
        # y and weight (8 B/row) gain little from compression; raw chunks read faster
        raw = [name for name in ("y", "weight") if name in ds] + ([] if compress_X else ["X"])
        encoding = {name: {"compressors": None} for name in raw}
        ds.to_zarr(staging, mode="w", zarr_format=3, consolidated=False, compute=True, encoding=encoding)
    return final


def _design_shape(X: Any) -> tuple[Any, tuple[int, int]]:
    """``X`` (as numpy when it has no 2-D shape of its own) and its (rows, features), both > 0."""
    Xshape = getattr(X, "shape", None)
    if Xshape is None or len(Xshape) != 2:
        X = np.asarray(X)
        Xshape = X.shape
    if len(Xshape) != 2:
        raise InputError(f"X: expected 2 dimensions (row, feature), got shape {Xshape}")
    n, p = Xshape
    if n == 0 or p == 0:
        raise InputError(f"X: empty design matrix of shape {Xshape}")
    return X, (n, p)


def store_chunk_rows(chunk_rows: Any, n: int, p: int, dtype: Any = np.float64) -> int:
    """The rows per chunk :func:`write_store` writes ``n`` rows of ``p`` features in: ``chunk_rows``
    (checked), else :func:`default_chunk_rows`, at most ``n``."""
    if chunk_rows is None:
        chunk_rows = default_chunk_rows(p, np.dtype(dtype).itemsize)
    return int(min(check_chunk_rows(chunk_rows), n))


def check_chunk_rows(chunk_rows: Any) -> Any:
    """``chunk_rows`` if it is None or a positive integer, else an :class:`InputError` (checked
    before rows are computed, not only when they are written)."""
    if chunk_rows is not None and (
        isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1
    ):
        raise InputError(f"chunk_rows={chunk_rows!r}: must be a positive integer")
    return chunk_rows


def _row_array(value: Any, name: str, n: int, chunk_rows: int) -> da.Array:
    arr = _as_dask(value, name, chunk_rows)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise InputError(f"{name}: shape {arr.shape} does not match X's {n} rows")
    return arr


def _row_variables(final: Path, X: Any, y: Any, weight: Any, dtype: Any, chunk_rows: int) -> dict[str, Any]:
    """X, y and weight as chunked dask arrays, each block checked finite (weights ≥ 0) as it is
    written."""
    n = X.shape[0]
    Xd = _as_dask(X, "X", chunk_rows).astype(dtype)
    arrays = {"y": _row_array(y, "y", n, chunk_rows).astype(np.float64)}
    if weight is not None:
        arrays["weight"] = _row_array(weight, "weight", n, chunk_rows).astype(np.float64)

    def checked(arr: da.Array, name: str, nonneg: bool = False) -> da.Array:
        return da.map_blocks(check_finite_block, arr, dtype=arr.dtype, variable=name, where=str(final), nonneg=nonneg)

    data_vars: dict[str, Any] = {"X": (("row", "feature"), checked(Xd, "X"))}
    data_vars["y"] = (("row",), checked(arrays["y"], "y"))
    if "weight" in arrays:
        data_vars["weight"] = (("row",), checked(arrays["weight"], "weight", nonneg=True))
    return data_vars


def _row_coordinates(n: int, chunk_rows: int, *, config: Any, kind: Any, atom: Any, component: Any) -> dict[str, Any]:
    """The row coordinates with their defaults (one configuration per row, energy rows)."""
    coords: dict[str, Any] = {}
    for name, value, dt in (
        ("config", np.arange(n) if config is None else config, np.int64),
        ("kind", _kind_codes(kind, n), np.int8),
        ("atom", np.full(n, -1) if atom is None else atom, np.int32),
        ("component", np.full(n, -1) if component is None else component, np.int8),
    ):
        coords[name] = (("row",), _row_array(value, name, n, chunk_rows).astype(dt))
    return coords


def _configuration_variable(name: str, value: Any) -> tuple[tuple[str, ...], np.ndarray]:
    """A per-configuration variable as (dims, numpy array) of numbers or fixed-length strings."""
    try:
        v = np.asarray(value)
    except ValueError as err:  # ragged nested sequences
        raise InputError(f"configurations[{name!r}]: not a rectangular array ({err})") from err
    if v.dtype == object:
        v = v.astype(str)
    if v.dtype.kind not in "biufU":
        raise InputError(f"configurations[{name!r}]: unsupported dtype {v.dtype}")
    return ("configuration",) + tuple(f"{name}_dim{i}" for i in range(1, v.ndim)), v


def _open_dataset(root: Path) -> xr.Dataset:
    """xarray's view of the group; arrays without ``dimension_names`` (plain zarr writers) get
    X -> (row, feature), other 1-D arrays of X's length -> (row,)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return xr.open_zarr(root, consolidated=False, zarr_format=3, chunks={})
        except ValueError as err:  # e.g. conflicting sizes of one dimension
            raise InputError(f"{root}: xarray cannot open the group: {err}") from err
        except KeyError as err:
            if "dimension_names" not in str(err):
                raise InputError(f"{root}: xarray cannot open the group: {err}") from err
        import zarr

        group = zarr.open_group(str(root), mode="r", zarr_format=3)
        arrays = dict(group.arrays())
        if "X" not in arrays or arrays["X"].ndim != 2:
            raise InputError(f"{root}: no 2-D array 'X' (the design matrix, dims (row, feature))")
        n = arrays["X"].shape[0]
        ds = xr.Dataset(attrs=dict(group.attrs))
        for name, arr in arrays.items():
            dims = getattr(arr.metadata, "dimension_names", None)
            if not dims or any(d is None for d in dims):
                if name == "X":
                    dims = ("row", "feature")
                elif arr.ndim == 1 and arr.shape[0] == n:
                    dims = ("row",)
                else:
                    dims = tuple(f"{name}_dim{i}" for i in range(arr.ndim))
            try:
                ds[name] = (tuple(dims), da.from_zarr(arr))
            except ValueError as err:
                raise InputError(f"{root}/{name}: {err}") from err
        coords = [c for c in ("config", "kind", "atom", "component") if c in ds]
        return ds.set_coords(coords)


def _raw_is_decoded(var: xr.DataArray, raw_dtype: str) -> bool:
    """The raw chunk bytes are what xarray would return: no CF packing, no non-NaN mask value
    (another writer may have set them; popsdask's own stores never do)."""
    enc = var.encoding
    fill = enc.get("_FillValue", np.nan)
    no_mask = fill is None or (isinstance(fill, (float, np.floating)) and np.isnan(fill))
    unpacked = all(k not in enc and k not in var.attrs for k in ("scale_factor", "add_offset", "_Unsigned"))
    return no_mask and unpacked and var.dtype == np.dtype(raw_dtype)


def open_store(path: str | os.PathLike, *, require_y: bool = True) -> xr.Dataset:
    """Open and validate a descriptor store written by popsdask or any other Zarr v3 writer;
    arrays stay lazy (dask).

    Raises :class:`InputError` naming the store and variable when the store is a popsdask write
    that did not finish (a staging directory, or ``popsdask_complete`` false), is a Zarr v2 group
    (with the command that converts it), uses a refused codec or data type, lacks ``X``/``y``,
    or has inconsistent shapes.
    """
    root = Path(path)
    if not root.exists():
        raise InputError(f"{root}: no such store")
    if is_staging_directory(root):
        raise InputError(
            f"{root}: the hidden staging directory of a popsdask write that did not finish (not marked "
            f"complete); open the store it was writing, {root.parent / root.name[1:].split('.partial-')[0]}, "
            "or write it again"
        )
    check_safe_group(root)
    if write_state(root) == "incomplete":
        raise InputError(
            f"{root}: store is not marked complete: its {COMPLETE_ATTR} attribute is false, so a popsdask "
            "writer started it and did not finish — write it again"
        )
    ds = _open_dataset(root)
    if "X" not in ds:
        raise InputError(f"{root}: no variable 'X' (the design matrix, dims (row, feature))")
    X = ds["X"]
    if X.dims != ("row", "feature"):
        raise InputError(f"{root}/X: dims {X.dims}, expected ('row', 'feature'); rename the dimensions")
    if X.dtype.kind != "f":
        raise InputError(f"{root}/X: dtype {X.dtype} is not floating point")
    if X.sizes["row"] == 0:
        raise InputError(f"{root}/X: store is empty (0 rows)")
    if require_y and "y" not in ds:
        raise InputError(f"{root}: no variable 'y' (reference values)")
    for name in ("y", "weight", "config", "kind", "atom", "component"):
        if name in ds.variables:
            v = ds[name]
            if v.dims != ("row",):
                raise InputError(f"{root}/{name}: dims {v.dims}, expected ('row',)")
            if v.dtype.kind not in "biuf":
                raise InputError(f"{root}/{name}: dtype {v.dtype} is not numeric")
    for name in ("X", "y", "weight"):
        # uncompressed chunks are read as plain files, ~2× faster than zarr's decode pipeline
        layout = raw_layout(root / name) if name in ds else None
        if (
            layout is not None
            and layout.shape == ds[name].shape
            and layout.chunk_shape[0] == ds[name].data.chunks[0][0]
            and _raw_is_decoded(ds[name], layout.dtype)
        ):
            ds[name] = ds[name].copy(data=raw_dask_array(layout))
    ds.attrs["source"] = str(root)
    return ds


#: per-configuration ``split`` codes of a descriptor store (popsdask.atomistic writes them)
SPLIT_CODES = {"train": 0, "test": 1}


def select_split(ds: xr.Dataset, which: str | int) -> xr.Dataset:
    """Rows of the ``train`` or ``test`` configurations of a store with a per-configuration
    ``split`` variable (codes :data:`SPLIT_CODES`) and a ``config`` row coordinate.

    Raises :class:`InputError` naming the store when it has no split, or no rows of ``which``.
    """
    source = ds.attrs.get("source", "<dataset>")
    if which not in SPLIT_CODES:
        raise InputError(f"{source}: split {which!r}: use one of {list(SPLIT_CODES)}")
    if "split" not in ds or ds["split"].dims != ("configuration",):
        raise InputError(f"{source}: no per-configuration 'split' variable, so --split {which} has nothing to select")
    if "config" not in ds.coords:
        raise InputError(f"{source}: no 'config' row coordinate to map the split onto rows")
    split = np.asarray(ds["split"].values)
    config = np.asarray(ds["config"].values)
    if config.size and (config.min() < 0 or config.max() >= split.size):
        raise InputError(f"{source}/config: values outside 0..{split.size - 1} (the 'split' configurations)")
    rows = np.flatnonzero(split[config] == SPLIT_CODES[which])
    if rows.size == 0:
        raise InputError(f"{source}: split has no {which} configurations")
    # every row selected: keep the store's own chunks (and the raw-chunk reader)
    out = ds.copy(deep=False) if rows.size == config.size else ds.isel(row=rows)
    out.attrs["source"] = f"{source}[{which}]"
    return out
