"""Potentials out: θ as ``.snapcoeff``/``.snapparam`` files, their LAMMPS pair commands, and
an ASE calculator running them.

Any coefficient vector θ over the store's columns — the MLE, a posterior sample, or a hand-made
one — is written with :func:`write_snap_potential` and run with :func:`snap_calculator` (a
:class:`~popsdask.atomistic.calculator.LammpsCalculator`, the one protocol by which popsdask
evaluates a fitted potential on atoms, so that what is measured is what LAMMPS's
``pair_style snap`` computes).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ...core.validation import InputError
from .. import lammps_text
from ..calculator import LammpsCalculator
from .snap import SnapSettings

__all__ = ["pair_commands_for", "snap_calculator", "write_snap_potential"]


def write_snap_potential(
    theta: Any, settings: SnapSettings, prefix: str | os.PathLike, *, comment: str = ""
) -> dict[str, Path]:
    """Write θ as ``<prefix>.snapcoeff``, ``<prefix>.snapparam`` and ``<prefix>.mod``.

    Parameters
    ----------
    theta : (n_features,) coefficients over the store's columns (per element: β0, linear,
        quadratic terms, i.e. the ``.snapcoeff`` order; β0 is 0 without ``beta0_columns``, and
        minus the settings' ``energy_shift``)
    settings : the descriptor settings of the store
    prefix : path prefix of the files
    comment : first-line comment (e.g. which sample)

    Returns
    -------
    dict with ``snapcoeff``, ``snapparam`` and ``mod`` (LAMMPS commands using them) paths.
    """
    theta = np.asarray(theta, dtype=float).ravel()
    if theta.shape != (settings.n_features,):
        raise InputError(f"write_snap_potential: θ has {theta.size} values, the descriptors have {settings.n_features}")
    if not np.all(np.isfinite(theta)):
        raise InputError("write_snap_potential: θ has non-finite values")
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    nb, c0, nd = settings.n_block, int(settings.beta0_columns), settings.n_descriptors
    beta0 = settings.exported_beta0(theta)
    lines = [f"# popsdask qSNAP coefficients {comment}".rstrip(), f"{len(settings.elements)} {1 + nd}"]
    for t, el in enumerate(settings.elements):
        lines.append(f"{el} {settings.radii[t]!r} {settings.element_weights[t]!r}")
        lines += [f"{v:.17g}" for v in (beta0[t], *theta[t * nb + c0 : (t + 1) * nb])]
    paths = {
        "snapcoeff": prefix.with_name(prefix.name + ".snapcoeff"),
        "snapparam": prefix.with_name(prefix.name + ".snapparam"),
        "mod": prefix.with_name(prefix.name + ".mod"),
    }
    paths["snapcoeff"].write_text("\n".join(lines) + "\n")
    paths["snapparam"].write_text(settings.snapparam_text())
    cmds = lammps_text.commands(pair_commands_for(settings, paths["snapcoeff"], paths["snapparam"]))
    paths["mod"].write_text("# LAMMPS pair style of this potential (metal units)\n" + "\n".join(cmds) + "\n")
    return paths


def pair_commands_for(settings: SnapSettings, snapcoeff: str | os.PathLike, snapparam: str | os.PathLike) -> list[str]:
    """LAMMPS ``pair_style``/``pair_coeff`` commands for SNAP files plus the reference pair."""
    els = " ".join(settings.elements)
    files = f"{lammps_text.path(snapcoeff)} {lammps_text.path(snapparam)}"
    if not settings.reference_style:
        return ["pair_style snap", f"pair_coeff * * {files} {els}"]
    style, coeffs = settings.reference_commands("")
    return [
        f"pair_style hybrid/overlay {style} snap",
        *coeffs,
        f"pair_coeff * * snap {files} {els}",
    ]


def snap_calculator(
    theta: Any,
    settings: SnapSettings,
    directory: str | os.PathLike | None = None,
    *,
    label: str = "qsnap",
) -> LammpsCalculator:
    """ASE calculator running ``pair_style snap`` (plus the reference pair) for θ.

    The potential files are written to ``directory`` (default: a new temporary directory),
    so the calculator can be pickled to Dask workers along with their paths on a shared
    file system.
    """
    d = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="popsdask-snap-"))
    paths = write_snap_potential(theta, settings, d / label)
    return LammpsCalculator(
        pair_commands_for(settings, paths["snapcoeff"], paths["snapparam"]),
        settings.elements,
        settings.atom_masses(),
        label=label,
    )
