"""Checkpoints: each finished pass of a fit written atomically, and the fingerprint of the data
and settings a checkpoint must match to be resumed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import dask.array as da
import numpy as np
from dask.delayed import delayed

from ..core.evidence import Evidence, EvidenceParams
from ..core.stats import Stats
from ..core.validation import InputError
from ..io.store import atomic_group, is_complete
from .design import Design, reading
from .execution import compute, persist
from .state import Bounds, Leverage, Moment, Pass1, PopsSettings

CHECKPOINT_FORMAT = "popsdask.checkpoint/2"
#: the checkpointed passes, in order, and their progress labels
CHECKPOINT_PASSES = {
    "evidence": "pass 1/4: Gram and evidence",
    "leverage": "pass 2/4: leverage",
    "moment": "pass 3/4: correction moment",
    "bounds": "pass 4/4: hypercube bounds",
}


#: words in one block of :func:`_fletcher64` (512 KiB: the running sums stay in cache)
_CHECKSUM_BLOCK = 1 << 16
_MASK64 = (1 << 64) - 1


def _fletcher64(a: np.ndarray) -> tuple[int, int]:
    """(Σ vᵢ, Σ (n - i) vᵢ) mod 2⁶⁴ over the 64-bit words vᵢ of ``a``'s bytes (a zero-padded tail
    word included): the second sum weighs every word by its position, so any change of a value,
    a swap of two values or a sign flip changes the pair. About 5x faster than CRC-32 (zlib) here."""
    raw = np.ascontiguousarray(a).view(np.uint8).reshape(-1)
    whole = raw.size // 8 * 8
    words = raw[:whole].view(np.uint64)
    s1 = s2 = 0
    for i in range(0, words.size, _CHECKSUM_BLOCK):
        c = np.cumsum(words[i : i + _CHECKSUM_BLOCK], dtype=np.uint64)
        s2 = (s2 + int(c.sum(dtype=np.uint64)) + s1 * c.size) & _MASK64
        s1 = (s1 + int(c[-1])) & _MASK64
    if whole < raw.size:
        tail = int.from_bytes(raw[whole:].tobytes().ljust(8, b"\0"), "little")
        s1, s2 = (s1 + tail) & _MASK64, (s2 + s1 + tail) & _MASK64
    return s1, s2


def block_checksum(X: np.ndarray, y: np.ndarray | None, w: np.ndarray | None) -> int:
    """A 63-bit checksum of one chunk (X, y, weight: dtype, shape and every byte), computed by
    pass 1 as it reads the chunk and again on ``resume`` to tell whether the chunk changed."""
    parts: list[Any] = []
    for a in (X, y, w):
        parts += ["none"] if a is None else [a.dtype.str, a.shape, *_fletcher64(a)]
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _metadata_digest(design: Design) -> str:
    """SHA-256 of every zarr.json of the store behind the design's source (``PATH`` or
    ``PATH[split]``), or of its parts' digests; "none" for in-memory data."""
    if design.parts:
        return hashlib.sha256(" ".join(_metadata_digest(d) for d in design.parts).encode()).hexdigest()
    root = Path(re.sub(r"\[\w+\]$", "", design.source))
    if not (root / "zarr.json").is_file():
        return "none"
    h = hashlib.sha256()
    for meta in sorted(root.rglob("zarr.json")):
        h.update(str(meta.relative_to(root)).encode())
        h.update(meta.read_bytes())
    return h.hexdigest()


def design_fingerprint(design: Design) -> dict[str, str]:
    """What a checkpoint must match to be resumed, known without reading a chunk: the rows'
    source, shape, dtype and chunking, and a checksum of the store's metadata. The chunks' own
    checksums (pass 1's) are compared by :meth:`Checkpoint.open` on ``resume``. A design whose
    first rows' statistics are ``known`` also has their checksum."""
    chunks = hashlib.sha256(repr(design.X.chunks[0]).encode()).hexdigest()
    out = {
        "source": design.source,
        "shape": f"{design.n_rows} x {design.n_features}",
        "dtype": design.X.dtype.str,
        "row chunks": f"{len(design.X.chunks[0])} chunks, sha256 {chunks[:16]}",
        "weights": "yes" if design.weight is not None else "no",
        "metadata": _metadata_digest(design),
    }
    if design.known is not None:
        h = hashlib.sha256()
        for value in vars(design.known).values():
            h.update(np.asarray(value, dtype=np.float64).tobytes())
        out["known statistics"] = h.hexdigest()
    return out


def chunk_checksums(design: Design, *, progress: bool = False) -> np.ndarray:
    """(n_chunks,) :func:`block_checksum` of every chunk: one read of the design."""
    parts = [delayed(reading(block_checksum), pure=True)(*b) for b in design.blocks()]
    return np.asarray(compute(*parts, label="checking the chunks", progress=progress), dtype=np.int64)


def _setting_text(value: Any) -> str:
    """A setting as compared on resume: numbers as floats (50 and 50.0 are one setting)."""
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return repr(float(value))
    return json.dumps(value)


def _optional(value: Any) -> float | None:
    return None if value is None else float(value)


def _save_block(block: np.ndarray, path: str) -> None:
    np.save(path, block, allow_pickle=False)


def _load_block(path: str) -> np.ndarray:
    return np.load(path, allow_pickle=False)


class Checkpoint:
    """Each finished pass of a fit, in a directory next to its output, so that a fit whose
    client was killed (walltime, preemption, Ctrl-C) continues from its last finished pass.

    One Zarr group per pass (``evidence``: the sufficient statistics and the evidence solution;
    ``leverage``: threshold, residual cutoff, per-chunk counts and every chunk's (h, c[, r])
    block, written by the workers that hold it; ``moment``: Σ c² xxᵀ, and for ``ensemble`` the
    corrections; ``bounds``: basis and box), each written by :func:`store.atomic_group` (staged,
    marked complete, renamed), so a killed writer leaves a pass either whole or absent. Values
    are stored as float64 bytes (``.npy``), so a resumed fit is the uninterrupted one. Every
    group carries the data's :func:`design_fingerprint` and the settings; :meth:`open` with
    ``resume`` refuses a checkpoint whose fingerprint or settings differ, naming the first
    difference.
    """

    def __init__(self, root: Path, identity: dict[str, str]) -> None:
        self.root, self.identity = root, identity

    @classmethod
    def open(
        cls, path: str | os.PathLike, design: Design, evidence: EvidenceParams, settings: PopsSettings, *, resume: bool
    ) -> Checkpoint:
        root = Path(path).absolute()
        settings_all = {**vars(settings), **vars(evidence)}
        identity = {
            "format": CHECKPOINT_FORMAT,
            **design_fingerprint(design),
            **{f"setting {k}": _setting_text(v) for k, v in sorted(settings_all.items())},
        }
        if root.exists() and not resume:
            shutil.rmtree(root)
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".*.partial-*"):  # staging of a killed writer (the lock is ours)
            shutil.rmtree(stale, ignore_errors=True)
        ckpt = cls(root, identity)
        if resume:
            for name in CHECKPOINT_PASSES:
                if ckpt._group(name) is not None:
                    ckpt._check(name)
            ckpt._check_chunks(design)
        return ckpt

    def _check_chunks(self, design: Design) -> None:
        """Refuse to resume when any chunk pass 1 read has another checksum now (an in-place edit)."""
        values = self._values("evidence")
        if values is None or "chunk_checksums" not in values:
            return
        design = design.unread
        saved, now = values["chunk_checksums"], chunk_checksums(design)
        changed = np.flatnonzero(saved != now)
        if changed.size:
            k = int(changed[0])
            first, rows = design.row_starts[k], design.X.chunks[0][k]
            raise InputError(
                f"{self.root}: cannot resume: chunk {k} (rows {first}-{first + rows - 1}) of {design.source} changed "
                f"since this checkpoint was made ({changed.size} chunk(s) differ); fit again without resuming"
            )

    def has(self, name: str) -> bool:
        """Whether pass ``name`` is checkpointed (complete)."""
        return self._group(name) is not None

    def _group(self, name: str) -> Path | None:
        path = self.root / name
        return path if is_complete(path) else None

    def _check(self, name: str) -> None:
        import zarr

        saved = json.loads(cast(str, zarr.open_group(str(self.root / name), mode="r").attrs["identity"]))
        for key in sorted(set(saved) | set(self.identity), key=list(self.identity).index):
            if saved.get(key) != self.identity.get(key):
                raise InputError(
                    f"{self.root}: cannot resume: {key} was {saved.get(key)} when this checkpoint was made and is "
                    f"{self.identity.get(key)} now; fit again without resuming (or restore the store and settings)"
                )

    @contextlib.contextmanager
    def _writing(self, name: str, values: dict[str, Any]) -> Any:
        """Stage the group of pass ``name`` (the block may add files to it), then write
        ``values`` (arrays and scalars; None recorded as such) and commit it atomically."""
        import zarr

        with atomic_group(self.root / name, overwrite=True) as staging:
            group = zarr.open_group(str(staging), mode="w", zarr_format=3)
            yield staging
            arrays: dict[str, Any] = {k: np.asarray(v) for k, v in values.items() if v is not None}
            np.savez(staging / "values.npz", **arrays)
            group.attrs.update(
                identity=json.dumps(self.identity), none=[k for k, v in values.items() if v is None], **{"pass": name}
            )

    def _values(self, name: str) -> dict[str, Any] | None:
        import zarr

        path = self._group(name)
        if path is None:
            return None
        self._check(name)
        with np.load(path / "values.npz", allow_pickle=False) as z:
            values: dict[str, Any] = {k: z[k] for k in z.files}
        values.update(dict.fromkeys(cast(list[str], zarr.open_group(str(path), mode="r").attrs["none"])))
        return values

    def _loaded(self, name: str, progress: bool) -> None:
        if progress:
            print(f"[popsdask] {CHECKPOINT_PASSES[name]} (from checkpoint {self.root})", flush=True)

    # pass 1 -------------------------------------------------------------------
    def save_evidence(self, first: Pass1, ev: Evidence) -> None:
        """Pass 1: the statistics, the :func:`block_checksum` of every chunk read, and the evidence."""
        values: dict[str, Any] = {"chunk_checksums": first.checksums, "rows_read": first.rows_read}
        values.update({f"stats.{k}": v for k, v in vars(first.stats).items()})
        values.update({f"ev.{k}": v for k, v in vars(ev).items()})
        with self._writing("evidence", values):
            pass

    def load_evidence(self, progress: bool) -> tuple[Pass1, Evidence] | None:
        v = self._values("evidence")
        if v is None:
            return None
        self._loaded("evidence", progress)
        stats = Stats(
            gram=v["stats.gram"],
            xty=v["stats.xty"],
            **{k: float(v[f"stats.{k}"]) for k in ("yty", "sw", "y_mean", "y_m2")},
            n_rows=int(v["stats.n_rows"]),
        )
        return Pass1(stats, v["chunk_checksums"], int(v["rows_read"])), Evidence(
            coef=v["ev.coef"],
            alpha=float(v["ev.alpha"]),
            lambda_=float(v["ev.lambda_"]),
            sigma=v["ev.sigma"],
            n_iter=int(v["ev.n_iter"]),
            eigvals=v["ev.eigvals"],
            eigvecs=v["ev.eigvecs"],
            sse=float(v["ev.sse"]),
            scores=v["ev.scores"],
        )

    # pass 2 -------------------------------------------------------------------
    def save_leverage(self, lev: Leverage) -> None:
        values = {
            "threshold": lev.threshold,
            "min_residual": lev.min_residual,
            "floor": lev.floor,
            "counts": np.asarray(lev.counts, dtype=np.int64),
        }
        with self._writing("leverage", values) as staging:
            (staging / "blocks").mkdir()
            # each block is written where it is held (a worker), 16–24 bytes per row
            writes = [
                delayed(_save_block, pure=False)(b, str(staging / "blocks" / f"{i:06d}.npy"))
                for i, b in enumerate(lev.blocks)
            ]
            compute(*writes)

    def load_leverage(self, progress: bool, blocks: bool = True) -> Leverage | None:
        """Pass 2 from the checkpoint; ``blocks``: also its per-chunk blocks, read once and kept
        on the workers for passes 3–4, as pass 2 leaves them (else ``Leverage.blocks`` is empty)."""
        v = self._values("leverage")
        if v is None:
            return None
        self._loaded("leverage", progress)
        counts = [int(c) for c in v["counts"]]
        paths = [str(self.root / "leverage" / "blocks" / f"{i:06d}.npy") for i in range(len(counts))] if blocks else []
        loaded = persist(*[delayed(_load_block, pure=True)(path) for path in paths]) if paths else ()
        return Leverage(
            list(loaded), float(v["threshold"]), _optional(v["min_residual"]), counts, _optional(v["floor"])
        )

    # pass 3 -------------------------------------------------------------------
    def save_moment(self, moment: Moment) -> None:
        with self._writing("moment", {"inner": moment.inner, "moment": moment.moment}):
            pass

    def save_moment_with_corrections(self, run: Callable[[Path], np.ndarray], a_inv: np.ndarray) -> Moment:
        """Pass 3 of an ``ensemble`` fit: ``run(path)`` streams the corrections to ``path``
        inside the staged group and returns Σ c² xxᵀ; both are committed together."""
        values: dict[str, Any] = {}
        with self._writing("moment", values) as staging:
            inner = run(staging / "corrections")
            values.update(inner=inner, moment=a_inv @ inner @ a_inv)
        return Moment(values["inner"], values["moment"], da.from_zarr(str(self.root / "moment" / "corrections")))

    def load_moment(self, progress: bool) -> Moment | None:
        v = self._values("moment")
        if v is None:
            return None
        self._loaded("moment", progress)
        corr = self.root / "moment" / "corrections"
        return Moment(v["inner"], v["moment"], da.from_zarr(str(corr)) if corr.exists() else None)

    # pass 4 -------------------------------------------------------------------
    def save_bounds(self, bounds: Bounds) -> None:
        with self._writing("bounds", vars(bounds)):
            pass

    def load_bounds(self, progress: bool) -> Bounds | None:
        v = self._values("bounds")
        if v is None:
            return None
        self._loaded("bounds", progress)
        return Bounds(v["basis"], v["lower"], v["upper"])

    def remove(self) -> None:
        """Delete the checkpoint (once the posterior is saved)."""
        shutil.rmtree(self.root, ignore_errors=True)
