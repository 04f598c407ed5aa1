"""Ensemble members out: the MLE and N posterior members as LAMMPS potential files, plus one
LAMMPS input that runs a user's input once per member and collects a thermo quantity.

The members are θ = coef + δθ with δθ from :meth:`popsdask.Posterior.perturbations`, the same
seeded draws as :func:`popsdask.predict_ensemble` for the same ``n``, ``method`` and ``seed``,
so member ``k`` here is sample ``k - 1`` of a prediction store. The directory is written beside
its target and renamed into place (:func:`popsdask.io.store.atomic_group` semantics for a plain
directory): it appears complete or not at all.

Layout of ``DIR``::

    mle.snapcoeff  mle.snapparam  mle.mod            # .mod: pair_style/pair_coeff commands
    member-0001.snapcoeff ... member-NNNN.mod
    ensemble.lmp                                     # lmp -in DIR/ensemble.lmp -var input IN ...
    members.json                                     # posterior, method, seed, names

The files name each other by relative paths (their names: they share the directory), so the
directory can be moved: LAMMPS resolves them against its working directory, so it runs inside it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from ..core.validation import InputError
from ..engine.posterior import Posterior
from ..io.store import atomic_directory, commit_directory, discard_directory
from . import lammps_text
from .descriptors.base import DescriptorBackend

__all__ = ["ENSEMBLE_INPUT", "export_members", "member_thetas"]

ENSEMBLE_INPUT = "ensemble.lmp"


def member_thetas(post: Posterior, n_members: int, method: str = "uniform", seed: int | None = 0) -> np.ndarray:
    """(n_members, P) parameter vectors, identical to the ``theta`` of a prediction store made
    with the same ``n_samples``, ``method`` and ``seed``."""
    return post.coef_[None, :] + post.perturbations(n_members, method, seed)


def _mod_text(model: str, what: str, commands: list[str]) -> str:
    """A member's ``.mod``: its pair commands, naming its files relative to its directory."""
    head = [
        f"# popsdask {model} potential, {what}: LAMMPS pair style (metal units)",
        "# its files are named relative to the directory of this file: run LAMMPS there",
    ]
    return "\n".join([*head, *lammps_text.commands(commands), ""])


def _ensemble_input(names: list[str], quantity: str) -> str:
    """LAMMPS input looping over the members (LAMMPS's ``clear`` keeps input variables)."""
    cont = " &\n    "
    return "\n".join(
        [
            "# popsdask ensemble driver: runs ${input} once per potential, records ${quantity} after it.",
            "#   cd DIR && lmp -in ensemble.lmp -var input /path/to/bcc.lmp [-var quantity pe/atoms] [-var out FILE]",
            "# (the potentials' files are named relative to DIR, the directory of this file)",
            "# ${input} builds the system (units metal), runs `include ${potential}` where its pair style",
            "# goes, and ends with its run/minimize; one line per potential is appended to ${out}.",
            f'variable quantity index "{lammps_text.expression(quantity, "quantity")}"',
            "variable out index ensemble.txt",
            'print "# member ${quantity}" file ${out} screen no',
            "variable popsdask_name index" + cont + cont.join(names),
            # each value is a quoted path, so that `include ${potential}` reads one word
            "variable potential index" + cont + cont.join(f"'{lammps_text.path(n + '.mod')}'" for n in names),
            "label popsdask_loop",
            "clear",
            "include ${input}",
            "variable popsdask_value equal ${quantity}",
            'print "${popsdask_name} $(v_popsdask_value:%.15g)" append ${out} screen no',
            "next popsdask_name potential",
            "jump SELF popsdask_loop",
            "",
        ]
    )


def export_members(
    posterior: Posterior | str | os.PathLike,
    settings: DescriptorBackend,
    output: str | os.PathLike,
    *,
    n_members: int,
    method: str = "uniform",
    seed: int | None = 0,
    quantity: str = "pe/atoms",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the MLE and ``n_members`` posterior members as potential files (``pair_style snap``
    for SNAP; any :class:`~popsdask.atomistic.descriptors.base.DescriptorBackend`).

    Parameters
    ----------
    posterior : Posterior or path of a saved posterior fitted on ``settings``'s columns
    settings : the descriptor settings of the store the posterior was fitted to
    output : directory to create
    n_members, method, seed : the posterior draws (as ``predict``'s ``--n-samples``, ``--method``,
        ``--seed``)
    quantity : default LAMMPS equal-style expression the driver records (``-var quantity``)
    overwrite : replace an existing directory

    Returns
    -------
    dict with the directory, the driver input, member names and θ (n_members + 1, P), MLE first.
    """
    post = posterior if isinstance(posterior, Posterior) else Posterior.load(posterior)
    if isinstance(n_members, bool) or int(n_members) < 1:
        raise InputError(f"n_members={n_members!r}: must be a positive integer")
    if post.n_features != settings.n_features:
        raise InputError(
            f"the posterior has {post.n_features} parameters, the descriptors {settings.n_features} columns "
            "(was it fitted with an intercept or to another store?)"
        )
    final, staging = atomic_directory(output)
    lammps_text.expression(quantity, "quantity")  # it reaches the driver input: refused before writing
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass overwrite=True to replace it")
    theta = np.vstack([post.coef_[None, :], member_thetas(post, int(n_members), method, seed)])
    width = max(4, len(str(theta.shape[0] - 1)))
    names = ["mle"] + [f"member-{k:0{width}d}" for k in range(1, theta.shape[0])]
    model = settings.store_attrs()["descriptor"]["name"]
    try:
        staging.mkdir(parents=True)
        for name, th in zip(names, theta, strict=True):
            what = "MLE" if name == "mle" else f"posterior {method} sample {name[7:]} of {n_members}, seed {seed}"
            paths = settings.write_potential(th, staging / name, comment=what)
            # the .mod names the files relative to the directory, wherever it is moved
            cmds = settings.pair_commands({k: p.name for k, p in paths.items()})
            paths["mod"].write_text(_mod_text(model, what, cmds))
        (staging / ENSEMBLE_INPUT).write_text(_ensemble_input(names, quantity))
        meta = {
            "posterior": str(posterior) if isinstance(posterior, (str, os.PathLike)) else "<in memory>",
            "n_members": int(n_members),
            "method": method,
            "seed": seed,
            "members": names,
            "note": "member k is sample k-1 of popsdask predict with the same --n-samples, --method, --seed",
            **{k: v for k, v in settings.store_attrs().items() if k in ("descriptor", "snap")},
        }
        (staging / "members.json").write_text(json.dumps(meta, indent=2) + "\n")
        commit_directory(staging, final, overwrite)
    except BaseException:
        discard_directory(staging, settle=0.0, attempts=2)
        raise
    return {"directory": str(final), "input": str(final / ENSEMBLE_INPUT), "names": names, "theta": theta}
