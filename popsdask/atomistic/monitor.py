"""A simulation monitor that needs nothing but LAMMPS: a posterior's energy band and a per-atom
grade computed inside a running MD from ``compute sna/atom`` (SNAP) or ``compute pod/atom``
(POD), printed, dumped, and a halt.

Every summary of :class:`popsdask.engine.linear_band.LinearBand` is a fixed matrix applied to
the configuration's energy row x (P,), and x is a sum over atoms of ``compute sna/atom``'s
columns (per element, plus the atom counts of the β0 columns). LAMMPS evaluates such products
with vector-style variables: per column p a constant vector ``[M_p1, ..., M_pL]`` and one
vector formula Σₚ xₚ·M_p (an element-wise sum, no per-step parsing of numbers), so:

* ``mle`` = x·coef, ``mean`` = x·(coef + μ);
* ``std`` = ‖Lᵀx‖ (L the members' covariance factor), ``min``/``max`` = mle + min/max over the
  members of x·δθₛ (the same draws as ``popsdask predict``), calibrated as ``predict``
  calibrates energies when the posterior is calibrated;
* ``box_min``/``box_max`` = mle + a·mid ∓ |a|·half, a = Uᵀx, the exact envelope of a box posterior;
* ``support`` = ‖Rᵀx‖², R Rᵀ = α·Σ, the configuration's regularised leverage;
* the per-atom grade g_i = Σⱼ (wⱼ·bᵢ)², bᵢ atom i's row: atom i's support score α·bᵢᵀΣbᵢ
  projected on ``modes`` directions (:func:`grade_modes`; a lower bound, exact at full rank),
  one atom-style variable per direction so that the formulas stay short.

The run halts (``fix halt``) when the calibrated energy std per atom, ``std/N`` (eV/atom),
exceeds a threshold: by default the largest value of the same quantity over the energy rows of
the store the posterior was fitted to, i.e. the configuration is more uncertain than any the fit
and its calibration saw. LAMMPS's ``-var pops_halt VALUE`` overrides it at run time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.validation import InputError
from ..engine.linear_band import LinearBand
from ..engine.posterior import Posterior
from ..io.store import atomic_directory, commit_directory, discard_directory
from . import lammps_text
from .descriptors.pod import PodSettings
from .descriptors.snap import SnapSettings

__all__ = [
    "MONITORED_BACKENDS",
    "MONITOR_INPUT",
    "MONITOR_OUTPUTS",
    "energy_rows",
    "grade_modes",
    "monitor_input",
    "training_halt",
    "write_monitor",
]

MONITOR_INPUT = "monitor.lmp"
#: descriptor backends with a LAMMPS per-atom compute of their rows
MONITORED_BACKENDS = ("snap", "pod")
#: the columns of the band file ``fix print`` writes (``pops_band`` variable names, in order)
MONITOR_OUTPUTS = ("mle", "mean", "std", "min", "max", "box_min", "box_max", "support", "std_atom", "grade_max")


def _num(v: float) -> str:
    """A float as LAMMPS reads it back exactly (shortest round-trip repr)."""
    return repr(float(v))


def _linear(terms: Sequence[str], coefs: np.ndarray) -> str:
    """``t0*c0+t1*c1...`` without spaces, zero coefficients left out ("0" when none remain)."""
    out = ""
    for t, c in zip(terms, coefs, strict=True):
        if c != 0.0:
            out += ("-" if c < 0 else ("+" if out else "")) + f"{t}*{_num(abs(c))}"
    return out or "0"


@dataclass(frozen=True)
class _Layout:
    """A backend's per-atom compute (ID ``pops_sna``) and its columns' place in a row: per element
    a count column (``count``: 0 or 1) then ``per_atom`` descriptor columns."""

    compute: str
    count: int
    per_atom: int
    elements: tuple[str, ...]
    model: str

    @property
    def block(self) -> int:
        return self.count + self.per_atom


def _layout(settings: Any) -> _Layout:
    """The :class:`_Layout` of SNAP (``compute sna/atom``) or POD (``compute pod/atom`` of the
    parameter file written beside the monitor as ``mle_param.pod``); InputError for others."""
    elements = tuple(settings.elements)
    if isinstance(settings, SnapSettings):
        cmd = settings.compute_command("pops_sna", style="sna/atom")
        return _Layout(cmd, int(settings.beta0_columns), settings.n_descriptors, elements, settings.model)
    if isinstance(settings, PodSettings):
        cmd = f'compute pops_sna all pod/atom {lammps_text.path("mle_param.pod")} "" {" ".join(elements)}'
        return _Layout(cmd, 1, settings.n_features // len(elements) - 1, elements, "POD")
    raise InputError(
        f"--monitor: the {settings.backend} descriptors have no LAMMPS per-atom compute the monitor can sum "
        "(it needs SNAP's compute sna/atom or POD's compute pod/atom)"
    )


def _row_terms(layout: _Layout, intercept: bool) -> tuple[list[str], list[str]]:
    """(equal-style definitions, names) of the energy row's columns in the store's order (a
    vector-style formula takes equal-style variables, not elements of a compute's vector)."""
    lines, terms = [], []
    for t in range(len(layout.elements)):
        if layout.count:
            terms.append(f"v_pops_n{t + 1}")
        for k in range(layout.per_atom):
            lines.append(f"variable pops_x{t + 1}_{k + 1} equal c_pops_x{t + 1}[{k + 1}]")
            terms.append(f"v_pops_x{t + 1}_{k + 1}")
    return lines, terms + (["1"] if intercept else [])


def _family(name: str, terms: Sequence[str], M: np.ndarray) -> list[str]:
    """Constant vectors ``pops_<name>_p`` = M[p] and ``pops_<name>`` = Σₚ termₚ·M[p] (a (P, L) matrix)."""
    lines, parts = [], []
    for p, (term, row) in enumerate(zip(terms, M, strict=True)):
        if np.any(row != 0.0):
            lines.append(f"variable pops_{name}_{p} vector [" + ",".join(_num(v) for v in row) + "]")
            parts.append(f"{term}*v_pops_{name}_{p}" if term != "1" else f"v_pops_{name}_{p}")
    if not parts:  # a matrix of zeros (a posterior without spread): a zero vector
        lines.append(f"variable pops_{name}_0 vector [" + ",".join("0" for _ in range(M.shape[1])) + "]")
        parts.append(f"0*v_pops_{name}_0")
    return [*lines, f"variable pops_{name} vector " + "+".join(parts)]


def _atom_grade(layout: _Layout, modes: np.ndarray) -> list[str]:
    """Atom-style ``pops_g<j>`` = wⱼ·bᵢ per mode and ``pops_grade`` = Σⱼ pops_gⱼ²."""
    nb, c0, nd = layout.block, layout.count, layout.per_atom
    sna = [f"c_pops_sna[{k + 1}]" for k in range(nd)]
    lines = []
    for j, w in enumerate(modes.T):
        per_type = []
        for t in range(len(layout.elements)):
            block = w[t * nb : (t + 1) * nb]
            expr = _linear(sna, block[c0:])
            expr = f"{_num(block[0])}+{expr}" if c0 and block[0] != 0.0 else expr
            per_type.append(expr if len(layout.elements) == 1 else f"(type=={t + 1})*({expr})")
        lines.append(f"variable pops_g{j} atom " + "+".join(per_type))
    # one reference per mode: each reference of an atom-style variable evaluates it anew
    grade = "+".join(f"v_pops_g{j}^2" for j in range(modes.shape[1])) or "0"
    return [*lines, f"variable pops_grade atom {grade}"]


def _calibration(band: LinearBand) -> tuple[dict[str, float], bool, float] | None:
    """The energy kind's (scales, per atom?, z) of a calibrated posterior, None without one."""
    if not band.calibration:
        return None
    from scipy.stats import norm

    kinds = band.calibration["kinds"]
    per_atom = "energy_per_atom" in kinds
    c = kinds.get("energy_per_atom" if per_atom else "energy")
    if c is None:
        return None
    z = float(norm.ppf((1.0 + float(band.calibration["level"])) / 2.0))
    return {k: float(c[k]) for k in ("std_scale", "std_offset", "envelope_scale", "envelope_offset")}, per_atom, z


def _root(metric: np.ndarray) -> np.ndarray:
    """(P, r) R with R Rᵀ = ``metric`` (positive semi-definite), r its numerical rank."""
    w, v = np.linalg.eigh(metric)
    keep = w > w.max(initial=0.0) * 1e-14
    return v[:, keep] * np.sqrt(w[keep])


def grade_modes(
    root: np.ndarray, atom_rows: np.ndarray | None, modes: int, intercept: bool = False
) -> tuple[np.ndarray, float]:
    """(P, m) directions wⱼ of the per-atom grade Σⱼ (wⱼ·b)² ≤ α·bᵀΣb = ‖Rᵀb‖², and the fraction of
    Σ‖Rᵀa‖² over ``atom_rows`` a (n, P) that they keep.

    The directions are R vⱼ with vⱼ the leading right singular vectors of ``atom_rows`` @ R: the
    m-dimensional part of the support score that carries most of it on typical atoms (the leading
    eigenvectors of α·Σ alone point where no atom's row reaches). Without ``atom_rows``, those
    eigenvectors. The intercept column (last, with ``intercept``) is no part of an atom's row.
    """
    m = max(0, min(int(modes), root.shape[1]))
    if atom_rows is None:
        order = np.argsort(np.einsum("ij,ij->j", root, root))[::-1][:m]
        return root[:, order], float("nan")
    A = np.array(atom_rows, dtype=np.float64)
    if intercept:
        A[:, -1] = 0.0
    Y = A @ root
    _, sv, vt = np.linalg.svd(Y, full_matrices=False)
    total = float(np.sum(sv**2))
    return root @ vt[:m].T, float(np.sum(sv[:m] ** 2) / total) if total > 0 else 1.0


def energy_rows(store: Any, intercept: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(X (n, P), n_atoms (n,)) of the energy rows of an opened descriptor store (every split),
    with the intercept column when the posterior has one; read without a cluster."""
    import dask

    from ..io.store import KIND_CODES

    with dask.config.set(scheduler="synchronous"):
        rows = np.flatnonzero(store["kind"].values == KIND_CODES["energy"])
        X = np.asarray(store["X"].data[rows].compute(), dtype=np.float64)
        n_atoms = store["n_atoms"].values[store["config"].values[rows]].astype(np.float64)
    return (np.column_stack([X, np.ones(len(rows))]) if intercept else X), n_atoms


def training_halt(band: LinearBand, X: np.ndarray, n_atoms: np.ndarray) -> float:
    """The largest calibrated energy std per atom (eV/atom) over energy rows ``X`` (n, P) of
    configurations of ``n_atoms`` atoms: the monitor's default halt threshold."""
    out = band(X, n_atoms=n_atoms, envelope=False)
    return float(np.max(out["std"] / np.asarray(n_atoms, dtype=np.float64)))


def monitor_input(
    band: LinearBand,
    settings: SnapSettings | PodSettings,
    *,
    intercept: bool = False,
    every: int = 100,
    halt: float,
    modes: int = 4,
    band_file: str = "monitor-band.txt",
    dump_file: str = "monitor.dump",
    atom_rows: np.ndarray | None = None,
) -> str:
    """The LAMMPS text of the monitor (see the module docstring).

    Parameters
    ----------
    band : the posterior's band (its members: ``predict``'s for the same options)
    settings : SNAP or POD settings of the store the posterior was fitted to
    intercept : the posterior has an intercept column (last)
    every : default output interval in steps (``-var pops_every N``)
    halt : default threshold of the calibrated energy std per atom, eV/atom (``-var pops_halt X``)
    modes : directions in the per-atom grade (see :func:`grade_modes`)
    atom_rows : (n, P) typical per-atom rows (training energy rows / atoms) ranking the directions
    band_file, dump_file : default names of the band file and the per-atom dump
        (``-var pops_band_file F``, ``-var pops_dump_file F``)
    """
    every = lammps_text.integer(every, "every")
    halt = lammps_text.number(halt, "halt threshold")
    if every < 1 or modes < 0 or halt <= 0:
        raise InputError(f"monitor: every={every} and modes={modes} must be positive, halt={halt} > 0")
    lammps_text.path(band_file)
    lammps_text.path(dump_file)
    layout = _layout(settings)
    columns, terms = _row_terms(layout, intercept)
    if len(terms) != band.coef.size:
        raise InputError(
            f"the posterior has {band.coef.size} parameters, the descriptors {len(terms)} columns "
            "(was it fitted with an intercept or to another store?)"
        )
    ne = len(layout.elements)
    root = _root(band.metric)
    lead, captured = grade_modes(root, atom_rows, modes, intercept)
    cal = _calibration(band)
    lines = [
        f"# popsdask monitor of a {layout.model} posterior ({band.coef.size} parameters, "
        f"{band.draws.shape[0]} members, {'calibrated' if cal else 'not calibrated'}); per-atom grade: "
        f"{lead.shape[1]} modes, {captured:.3g} of the support of the mean training atom.",
        "# include it after the box, the atoms and the pair style exist (e.g. include mle.mod), before run.",
        "# outputs every ${pops_every} steps: thermo columns v_pops_*, ${pops_band_file} (one line per",
        "# output, full precision) and ${pops_dump_file} (positions and the per-atom grade);",
        "# fix halt stops the run when the calibrated energy std per atom v_pops_std_atom > ${pops_halt} eV/atom.",
        "# override on the LAMMPS command line: -var pops_every N -var pops_halt X -var pops_band_file F",
        "#   -var pops_dump_file F -var pops_on_halt continue|soft|hard",
        f"variable pops_every index {every}",
        f"variable pops_halt index {_num(halt)}",
        f"variable pops_band_file index {band_file}",
        f"variable pops_dump_file index {dump_file}",
        "variable pops_on_halt index continue",
        layout.compute,
    ]
    for t in range(ne):
        group = "all" if ne == 1 else f"pops_t{t + 1}"
        if ne > 1:
            lines.append(f"group pops_t{t + 1} type {t + 1}")
        lines.append(f"compute pops_x{t + 1} {group} reduce sum c_pops_sna[*]")
        lines.append(f"variable pops_n{t + 1} equal count({group})")
    lines += [*columns, "variable pops_natoms equal count(all)"]
    lines += _family("m", terms, np.column_stack([band.coef, band.mean_shift]))
    lines += _family("q", terms, band.factor if band.factor.shape[1] else np.zeros((len(terms), 1)))
    lines += _family("d", terms, band.draws.T)
    lines += _family("s", terms, root if root.shape[1] else np.zeros((len(terms), 1)))
    lines += [
        "variable pops_mle equal v_pops_m[1]",
        "variable pops_mean equal v_pops_m[1]+v_pops_m[2]",
        # special functions (sum, min, max) take a variable, not an expression
        "variable pops_q2 vector v_pops_q*v_pops_q",
        "variable pops_s2 vector v_pops_s*v_pops_s",
        "variable pops_std_raw equal sqrt(sum(v_pops_q2))",
        "variable pops_min_raw equal v_pops_mle+min(v_pops_d)",
        "variable pops_max_raw equal v_pops_mle+max(v_pops_d)",
        "variable pops_support equal sum(v_pops_s2)",
    ]
    if band.box is not None:
        basis, lower, upper = band.box
        lines += _family("a", terms, basis)
        lines += [
            "variable pops_mid vector [" + ",".join(_num(x) for x in (lower + upper) / 2.0) + "]",
            "variable pops_half vector [" + ",".join(_num(x) for x in (upper - lower) / 2.0) + "]",
            "variable pops_centre vector v_pops_a*v_pops_mid",
            "variable pops_radius vector abs(v_pops_a)*v_pops_half",
            "variable pops_box_min equal v_pops_mle+sum(v_pops_centre)-sum(v_pops_radius)",
            "variable pops_box_max equal v_pops_mle+sum(v_pops_centre)+sum(v_pops_radius)",
        ]
    else:
        lines += ["variable pops_box_min equal v_pops_min_raw", "variable pops_box_max equal v_pops_max_raw"]
    if cal is None:
        lines += [f"variable pops_{k} equal v_pops_{k}_raw" for k in ("std", "min", "max")]
    else:  # apply_scales of popsdask.calibration.conformal: offsets per atom for a per-atom calibration
        c, per_atom, z = cal
        n = "*v_pops_natoms" if per_atom else ""
        lines += [
            f"variable pops_std equal {_num(c['std_scale'])}*(v_pops_std_raw+{_num(c['std_offset'])}{n})",
            f"variable pops_floor equal {_num(z)}*v_pops_std",
            f"variable pops_below equal {_num(c['envelope_scale'])}*(v_pops_mle-v_pops_min_raw+"
            f"{_num(c['envelope_offset'])}{n})",
            f"variable pops_above equal {_num(c['envelope_scale'])}*(v_pops_max_raw-v_pops_mle+"
            f"{_num(c['envelope_offset'])}{n})",
            # the wider on each side of the scaled envelope and mle ± z·std'
            "variable pops_min equal v_pops_mle-ternary(v_pops_below>v_pops_floor,v_pops_below,v_pops_floor)",
            "variable pops_max equal v_pops_mle+ternary(v_pops_above>v_pops_floor,v_pops_above,v_pops_floor)",
        ]
    lines += ["variable pops_std_atom equal v_pops_std/v_pops_natoms"]
    lines += _atom_grade(layout, lead)
    lines += [
        # evaluated once per output, stored for the dump and the maximum
        "fix pops_grade all ave/atom 1 1 ${pops_every} v_pops_grade",
        "compute pops_gmax all reduce max f_pops_grade",
        "variable pops_grade_max equal c_pops_gmax",
        "thermo ${pops_every}",
        "thermo_style custom step temp pe press v_pops_mle v_pops_std v_pops_min v_pops_max v_pops_std_atom "
        "v_pops_grade_max",
        'fix pops_band all print ${pops_every} "$(step) '
        + " ".join(f"$(v_pops_{k}:%.17g)" for k in MONITOR_OUTPUTS)
        + '" file ${pops_band_file} screen no title "# step '
        + " ".join(MONITOR_OUTPUTS)
        + '"',
        "dump pops_dump all custom ${pops_every} ${pops_dump_file} id type x y z f_pops_grade",
        "dump_modify pops_dump format float %.17g",
        "fix pops_halt all halt ${pops_every} v_pops_std_atom > ${pops_halt} error ${pops_on_halt} message yes",
    ]
    return "\n".join(lammps_text.commands(lines)) + "\n"


def write_monitor(
    posterior: Posterior | str | os.PathLike,
    settings: SnapSettings | PodSettings,
    output: str | os.PathLike,
    *,
    training: tuple[np.ndarray, np.ndarray] | None = None,
    halt: float | None = None,
    every: int = 100,
    modes: int = 4,
    n_samples: int | None = None,
    method: str = "uniform",
    seed: int | None = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the monitor ``DIR/monitor.lmp`` and the MLE's potential ``DIR/mle.*`` (run LAMMPS in DIR).

    Parameters
    ----------
    posterior : Posterior or path of a saved posterior fitted on ``settings``'s columns
    settings : the SNAP or POD settings of the store the posterior was fitted to
    output : directory to create
    training : (X (n, P) energy rows, n_atoms (n,)) of the fitted store, for the default threshold
    halt : threshold of the calibrated energy std per atom (eV/atom); default from ``training``
    every, modes : output interval (steps) and eigenvectors in the per-atom grade
    n_samples, method, seed : the members of ``min``/``max``, as ``popsdask predict``'s options
    overwrite : replace an existing directory

    Returns
    -------
    dict with the directory, the input, the threshold and where it came from.
    """
    post = posterior if isinstance(posterior, Posterior) else Posterior.load(posterior)
    band = LinearBand.from_posterior(post, n_samples=n_samples, method=method, seed=seed)
    intercept = bool(post.settings.get("fit_intercept", False))
    if halt is None:
        if training is None:
            raise InputError("monitor: give a halt threshold or the training energy rows")
        halt, source = training_halt(band, *training), f"largest over {len(training[1])} training energy rows"
    else:
        source = "given"
    atom_rows = None if training is None else training[0] / np.asarray(training[1], dtype=np.float64)[:, None]
    text = monitor_input(band, settings, intercept=intercept, every=every, halt=halt, modes=modes, atom_rows=atom_rows)
    final, staging = atomic_directory(output)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass overwrite=True to replace it")
    theta = band.coef[:-1] if intercept else band.coef
    try:
        staging.mkdir(parents=True)
        paths = settings.write_potential(theta, staging / "mle", comment="MLE")
        cmds = settings.pair_commands({k: p.name for k, p in paths.items()})
        paths["mod"].write_text(
            f"# popsdask {_layout(settings).model} potential, MLE: LAMMPS pair style (metal units)\n"
            + "\n".join(lammps_text.commands(cmds))
            + "\n"
        )
        (staging / MONITOR_INPUT).write_text(text)
        meta = {
            "posterior": str(posterior) if isinstance(posterior, (str, os.PathLike)) else "<in memory>",
            "every": int(every),
            "halt": float(halt),
            "halt_source": source,
            "modes": int(modes),
            "n_members": int(band.draws.shape[0]),
            "method": method,
            "seed": seed,
            "calibrated": band.calibrated,
            "outputs": list(MONITOR_OUTPUTS),
        }
        (staging / "monitor.json").write_text(json.dumps(meta, indent=2) + "\n")
        commit_directory(staging, final, overwrite)
    except BaseException:
        discard_directory(staging, settle=0.0, attempts=2)
        raise
    return {"directory": str(final), "input": str(final / MONITOR_INPUT), "halt": float(halt), "halt_source": source}
