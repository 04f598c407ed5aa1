"""Reading atomic structures and the per-structure quantities a corrector needs.

Only ASE and numpy are used here; nothing in this module imports torch.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.validation import InputError

__all__ = ["read_structures", "reference_energy", "element_counts", "elements_of"]

_OPENERS: dict[str, Callable[..., Any]] = {".xz": lzma.open, ".lzma": lzma.open, ".gz": gzip.open, ".bz2": bz2.open}


def read_structures(path: str | os.PathLike, index: str | int | slice = ":", format: str | None = None) -> list[Any]:
    """Read structures with ASE, decompressing ``.xz``/``.gz``/``.bz2`` files only once.

    ``ase.io.read`` on a compressed extended-XYZ file seeks in the compressed stream frame by
    frame, which costs time quadratic in the number of frames (minutes for ten thousand
    frames); this reads the decompressed text into memory first.

    Parameters
    ----------
    path : path-like
        Any file ASE reads (extxyz, ASE database, VASP OUTCAR, ...), optionally compressed.
    index : str, int or slice
        Frames to read, in ASE's syntax (default: all).
    format : str, optional
        ASE format name; guessed from the file name (without the compression suffix) if omitted.

    Returns
    -------
    list of ase.Atoms
    """
    import ase.io

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"structure file not found: {p}")
    opener = _OPENERS.get(p.suffix.lower())
    if opener is None:
        images = ase.io.read(str(p), index=index, format=format)
    else:
        inner = p.with_suffix("")
        fmt = format
        if fmt is None:
            fmt = "extxyz" if inner.suffix.lower() in (".xyz", ".extxyz") else None
        if fmt is None:
            from ase.io.formats import filetype

            fmt = filetype(str(inner), read=False)
        with opener(p, "rt") as fh:
            text = fh.read()
        images = ase.io.read(io.StringIO(text), index=index, format=fmt)
    return list(images) if isinstance(images, list) else [images]


def reference_energy(atoms: Any, energy_key: str | None = None) -> float:
    """Reference total energy (eV) of one structure.

    Parameters
    ----------
    atoms : ase.Atoms
    energy_key : str, optional
        Key in ``atoms.info``; when omitted, the energy of the attached (single-point)
        calculator, as ASE's extxyz reader provides.
    """
    if energy_key is not None:
        if energy_key not in atoms.info:
            raise InputError(
                f"structure {atoms.get_chemical_formula()}: no info[{energy_key!r}] (keys: {sorted(atoms.info)})"
            )
        return float(atoms.info[energy_key])
    if atoms.calc is None:
        raise InputError(
            f"structure {atoms.get_chemical_formula()}: no reference energy (no calculator "
            "results); pass energy_key naming the atoms.info entry that holds it"
        )
    return float(atoms.get_potential_energy())


def elements_of(structures: Iterable[Any]) -> list[str]:
    """Chemical symbols present in ``structures``, ordered by atomic number."""
    from ase.data import atomic_numbers

    zs: set[int] = set()
    for atoms in structures:
        zs.update(int(z) for z in np.unique(atoms.numbers))
    symbols = {z: s for s, z in atomic_numbers.items() if z > 0}
    return [symbols[z] for z in sorted(zs)]


def element_counts(structures: Sequence[Any], elements: Sequence[str]) -> np.ndarray:
    """Number of atoms of each element (columns in the order of ``elements``).

    Raises
    ------
    InputError
        If a structure holds an element that is not in ``elements``.
    """
    from ase.data import atomic_numbers

    col = {atomic_numbers[s]: j for j, s in enumerate(elements)}
    out = np.zeros((len(structures), len(elements)), dtype=np.float64)
    for i, atoms in enumerate(structures):
        zs, counts = np.unique(atoms.numbers, return_counts=True)
        for z, c in zip(zs, counts, strict=True):
            if int(z) not in col:
                raise InputError(
                    f"structure {i} ({atoms.get_chemical_formula()}) holds element Z={int(z)}, "
                    f"which is not among the store's elements {list(elements)}"
                )
            out[i, col[int(z)]] = c
    return out
