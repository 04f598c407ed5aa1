"""The implicit property route: tungsten properties of a whole ensemble from expansions at the MLE.

Properties (Perez et al., section III.F, Fig. 11; method of Maliyov, Grigorev & Swinburne,
arXiv:2407.02414):

* :func:`phases_implicit` — bcc and hcp relaxed volume and energy per atom (cell fully
  relaxed: ``strain="full"`` coordinates), their hcp/bcc volume ratio and energy difference;
* :func:`vacancy_implicit` — vacancy formation energy and first-neighbour migration barrier
  in a cubic bcc supercell of ``size`` cells per edge (2·size³ − 1 atoms) whose lattice constant follows each
  member's bcc lattice constant (the defect cell's strain is *imposed* from the bcc expansion,
  as in the brute-force route, where every member's vacancy cell is built at its own a0).

The saddle of the first-neighbour hop comes from a climbing-image NEB with the MLE
(:func:`hop_neb`: the brute-force route's :func:`popsdask.properties.vacancy.climbing_neb`
with this route's conventions, vacancy at the origin and 9 images; the midpoint of the hop is
not always the saddle: the twojmax-4 tungsten student has a metastable split vacancy there,
0.17 eV above the vacancy, and two symmetric saddles), and the expansion at it checks that
its Hessian has exactly one negative eigenvalue. The expansions are built once at the MLE;
members flagged by :meth:`Expansion.predict` (too far from the MLE) are recomputed by brute
force (:mod:`popsdask.properties.relax`, :func:`hop_neb`) when ``fallback=True``, and the
per-sample variable ``method`` says which route produced each value.

:func:`run_implicit` is what :func:`popsdask.properties.runner.run_properties` dispatches to for
``route="implicit"`` (``popsdask properties --route implicit``): one call per property for all
members, since the point of the route is one expansion shared by every member. The pure
expansion math (:func:`popsdask.atomistic.implicit_diff.expand`) lives in the atomistic layer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..atomistic.descriptors.snap import SnapSettings
from ..atomistic.implicit_diff import Expansion, expand
from ..atomistic.oracle import bcc_lattice_guess
from ..core.validation import InputError
from .phases import compute as compute_phases
from .phases import relax_in_symmetry
from .potential import Potential, reference_potential, resolve_members
from .relax import bcc_ground_state, relax
from .results import write_results
from .status import status_array
from .vacancy import climbing_neb, vacancy_cells
from .vacancy import compute as compute_vacancy

__all__ = [
    "IMPLICIT_PROPERTIES",
    "brute_force_phases",
    "brute_force_vacancy",
    "hcp_start",
    "hop_neb",
    "vacancy_cell",
    "mle_expansions_phases",
    "mle_expansions_vacancy",
    "phases_implicit",
    "relax_implicit",
    "run_implicit",
    "vacancy_implicit",
]

#: properties with an implicit route (names of the property modules they stand in for)
IMPLICIT_PROPERTIES = ("phases", "vacancy")

#: ideal hcp axial ratio sqrt(8/3)
CA_IDEAL = float(np.sqrt(8.0 / 3.0))

_FMAX = 1e-5  # tight MLE relaxations: the expansion point must be stationary
_STRESS = 1e-7


def _potential(label: str, theta: np.ndarray, settings: SnapSettings) -> Potential:
    return Potential(label, np.asarray(theta, dtype=float), settings)


# ------------------------------------------------------------------------------- structures
def hcp_start(a_bcc: float, element: str = "W") -> Any:
    """Ideal hcp cell (2 atoms) with the bcc volume per atom ``a_bcc³/2``."""
    from ase.build import bulk

    v_atom = a_bcc**3 / 2.0
    a = (4.0 * v_atom / (np.sqrt(3.0) * CA_IDEAL)) ** (1.0 / 3.0)
    return bulk(element, "hcp", a=a, c=CA_IDEAL * a)


def vacancy_cell(a0: float, size: int, element: str = "W") -> Any:
    """Cubic bcc supercell of ``size`` cells per edge minus the atom at the origin; atom 0 is its (½,½,½)a neighbour."""
    cell, _final, _hop = vacancy_cells(a0, size, element, at_origin=True)
    if not np.allclose(cell.positions[0], [a0 / 2] * 3):
        raise RuntimeError("vacancy cell: atom 0 is not the first neighbour of the vacancy")
    return cell


def hop_neb(
    potential: Any,
    *,
    size: int = 3,
    n_images: int = 9,
    fmax: float = 1e-3,
    max_steps: int = 2000,
    guess: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Climbing-image NEB of the first-neighbour vacancy hop at the potential's own a0.

    The vacancy sits at the origin of a cubic bcc cell of ``size`` cells per edge and atom 0 (its (½,½,½)a
    neighbour) hops into it; both end points are relaxed (positions only), then ASE's NEB
    (improved tangent, climbing image, FIRE) converges the ``n_images`` path. ``guess`` (images
    of another potential's converged path, e.g. the MLE's) is rescaled to this potential's
    lattice constant and used as the starting path instead of a linear interpolation.

    Returns
    -------
    dict with ``images`` (list of Atoms), ``energies`` (eV), ``saddle`` (index of the highest
    image), ``barrier`` (eV, NaN if not converged), ``initial_energy``, ``a0``, ``e_bcc``,
    ``converged`` and ``status``.
    """
    a0, e0 = bcc_ground_state(potential)
    initial, final, _hop = vacancy_cells(a0, size, at_origin=True)  # atom 0 hops to the origin
    res = climbing_neb(
        potential, initial, final, n_images=(len(guess) if guess is not None else n_images) - 2, fmax=fmax,
        relax_fmax=min(fmax, 1e-4), max_steps=max_steps, guess=guess,
    )  # fmt: skip
    if res["end_failure"] is not None:
        return {"barrier": float("nan"), "converged": False, "status": f"end point: {res['end_failure'][1]}"[:80]}
    if res["error"] is not None:
        return {"barrier": float("nan"), "converged": False, "status": f"NEB: {res['error']}"[:80]}
    energies, i_sad, conv, e_init = res["energies"], res["top"], res["converged"], res["e_initial"]
    return {
        "images": res["images"],
        "energies": energies,
        "saddle": i_sad,
        "barrier": float(energies[i_sad] - e_init) if conv else float("nan"),
        "initial_energy": float(e_init),
        "a0": float(a0),
        "e_bcc": float(e0),
        "converged": conv,
        "status": "ok" if conv else f"NEB not converged in {max_steps} steps",
    }


# ------------------------------------------------------------------------------- brute force
def _relax_hcp(potential: Any, a_bcc: float, fmax: float, stress_tol: float) -> Any:
    """hcp relaxed within its space group (P6_3/mmc): hcp is mechanically unstable towards bcc
    for some members, and an unconstrained relaxation slides into bcc (Burgers path)."""
    return relax_in_symmetry(
        hcp_start(a_bcc, potential.element), potential, cubic=False, fmax=fmax, stress_tol=stress_tol
    )


def brute_force_phases(potential: Any) -> dict[str, Any]:
    """bcc and hcp (symmetry-constrained) volume and energy per atom, positions and cell relaxed."""
    out: dict[str, Any] = {}
    try:
        a0, e0 = bcc_ground_state(potential)
        out["bcc"] = (a0**3 / 2.0, e0, "ok")
    except Exception as err:
        out["bcc"] = (float("nan"), float("nan"), f"bcc: {err}"[:80])
        a0 = bcc_lattice_guess(potential.element)
    r = _relax_hcp(potential, a0, 1e-4, 1e-5)
    n = len(r.atoms)
    out["hcp"] = (r.atoms.get_volume() / n, r.energy / n, "ok") if r.converged else (np.nan, np.nan, r.reason[:80])
    return out


def brute_force_vacancy(
    potential: Any,
    size: int = 3,
    *,
    guess: Sequence[Any] | None = None,
    fmax: float = 2e-3,
    max_steps: int = 500,
) -> tuple[float, float, str]:
    """(formation energy, migration barrier, status) by relaxation and CI-NEB at the member's own a0.

    ``E_f = E_vac − (N − 1) e_bcc`` with the vacancy cell relaxed at fixed cell; the barrier from
    :func:`hop_neb` (started from ``guess``, e.g. the MLE path, when given).
    """
    try:
        n_images = len(guess) if guess else 9
        res = hop_neb(potential, size=size, guess=guess, fmax=fmax, n_images=n_images, max_steps=max_steps)
    except Exception as err:
        return float("nan"), float("nan"), f"{type(err).__name__}: {err}"[:80]
    if "initial_energy" not in res:
        return float("nan"), float("nan"), res["status"]
    n = 2 * size**3 - 1
    ef = res["initial_energy"] - n * res["e_bcc"]
    return float(ef), float(res["barrier"]), res["status"]


# ------------------------------------------------------------------------------- expansions
def mle_expansions_phases(theta0: np.ndarray, settings: SnapSettings, *, h: float = 1e-3) -> dict[str, Expansion]:
    """Expansions (strain ``full``) at the MLE's relaxed 2-atom bcc and hcp cells."""
    from ase.build import bulk

    mle = _potential("mle", theta0, settings)
    start = bulk(mle.element, "bcc", a=bcc_lattice_guess(mle.element), cubic=True)
    rb = relax(start, mle, cell="iso", fmax=_FMAX, stress_tol=_STRESS)
    if not rb.converged:
        raise RuntimeError(f"MLE bcc did not relax: {rb.reason}")
    a0 = float(np.cbrt(rb.atoms.get_volume()))
    rh = _relax_hcp(mle, a0, _FMAX, 1e-6)
    if not rh.converged:
        raise RuntimeError(f"MLE hcp did not relax: {rh.reason}")
    return {
        "bcc": expand(rb.atoms, theta0, settings, strain="full", h=h),
        "hcp": expand(rh.atoms, theta0, settings, strain="full", h=h),
    }


def mle_expansions_vacancy(
    theta0: np.ndarray, settings: SnapSettings, *, size: int = 3, h: float = 1e-3, n_images: int = 9
) -> dict[str, Any]:
    """Expansions at the MLE's bcc (strain ``iso``), relaxed vacancy and NEB saddle (``iso``).

    The saddle is the climbing image of a tightly converged CI-NEB (``fmax`` 1e-4 eV/Å); its
    small residual gradient is kept in the expansion (a Newton correction). Raises if the
    saddle's Hessian does not have exactly one negative eigenvalue. ``path`` holds the MLE's
    converged images (the starting path of brute-force NEBs).
    """
    from ase.build import bulk

    mle = _potential("mle", theta0, settings)
    start = bulk(mle.element, "bcc", a=bcc_lattice_guess(mle.element), cubic=True)
    rb = relax(start, mle, cell="iso", fmax=_FMAX, stress_tol=_STRESS)
    if not rb.converged:
        raise RuntimeError(f"MLE bcc did not relax: {rb.reason}")
    neb = hop_neb(mle, size=size, n_images=n_images, fmax=1e-4, max_steps=5000)
    if not neb.get("converged"):
        raise RuntimeError(f"MLE NEB: {neb['status']}")
    images = neb["images"]
    init = images[0]
    out = {
        "bcc": expand(rb.atoms, theta0, settings, strain="iso", h=h),
        "vacancy": expand(init, theta0, settings, strain="iso", h=h),
        "saddle": expand(images[neb["saddle"]], theta0, settings, strain="iso", h=h),
        "path": images,
        "neb": {k: v for k, v in neb.items() if k != "images"},
    }
    neg, _ = out["saddle"].inertia()
    if neg != 1:
        raise RuntimeError(f"hop saddle has {neg} negative Hessian eigenvalues, expected 1")
    return out


# ------------------------------------------------------------------------------- predictions
def phases_implicit(
    theta0: np.ndarray,
    settings: SnapSettings,
    theta: np.ndarray,
    *,
    expansions: dict[str, Expansion] | None = None,
    fallback: bool = True,
    **thresholds: Any,
) -> xr.Dataset:
    """bcc/hcp volume and energy per atom of every member, by implicit expansion.

    Parameters
    ----------
    theta0 : (P,) MLE; settings : its descriptor settings
    theta : (n, P) members
    expansions : from :func:`mle_expansions_phases` (built when None)
    fallback : recompute flagged members by brute-force relaxation
    thresholds : passed to :meth:`Expansion.predict`

    Returns
    -------
    Dataset with dims (sample, phase): ``volume_per_atom`` (Å^3; first-order cell), ``energy_per_atom``
    (eV; second order), ``energy_per_atom_first``, ``status`` and ``method`` (``implicit`` or
    ``brute-force``); per sample ``volume_ratio`` (hcp/bcc) and ``energy_difference`` (hcp − bcc).
    """
    theta = np.atleast_2d(np.asarray(theta, dtype=float))
    exps = expansions or mle_expansions_phases(theta0, settings)
    phases = ["bcc", "hcp"]
    n = theta.shape[0]
    vol = np.empty((n, 2))
    en = np.empty((n, 2))
    en1 = np.empty((n, 2))
    flags = np.empty((n, 2), dtype=object)
    hchange = np.empty((n, 2))
    disp = np.empty((n, 2))
    for j, ph in enumerate(phases):
        ex = exps[ph]
        p = ex.predict(theta, **thresholds)
        na = ex.n_atoms
        vol[:, j] = p.volume / na
        en[:, j] = p.energy_second / na
        en1[:, j] = p.energy_first / na
        flags[:, j] = p.flag
        hchange[:, j] = p.hessian_change
        disp[:, j] = p.max_displacement
    method = np.full((n, 2), "implicit", dtype="<U11")
    status = np.full((n, 2), "ok", dtype=object)
    for i in range(n):
        if all(f == "ok" for f in flags[i]):
            continue
        if not fallback:
            status[i] = flags[i]
            continue
        bf = brute_force_phases(_potential(f"fallback-{i}", theta[i], settings))
        for j, ph in enumerate(phases):
            vol[i, j], en[i, j], status[i, j] = bf[ph]
            en1[i, j] = np.nan
            method[i, j] = "brute-force"
    ds = xr.Dataset(
        {
            "volume_per_atom": (("sample", "phase"), vol),
            "energy_per_atom": (("sample", "phase"), en),
            "energy_per_atom_first": (("sample", "phase"), en1),
            "status": (("sample", "phase"), status_array([str(s) for s in status.ravel()]).reshape(n, 2)),
            "method": (("sample", "phase"), method),
            "hessian_change": (("sample", "phase"), hchange),
            "max_displacement": (("sample", "phase"), disp),
            "volume_ratio": (("sample",), vol[:, 1] / vol[:, 0]),
            "energy_difference": (("sample",), en[:, 1] - en[:, 0]),
        },
        coords={"sample": np.arange(n), "phase": phases},
        attrs={"method": "implicit (second-order energies, first-order cells)", "source": "arXiv:2407.02414"},
    )
    return ds


def vacancy_implicit(
    theta0: np.ndarray,
    settings: SnapSettings,
    theta: np.ndarray,
    *,
    size: int = 3,
    expansions: dict[str, Any] | None = None,
    fallback: bool = True,
    **thresholds: Any,
) -> xr.Dataset:
    """Vacancy formation energy and first-neighbour migration barrier of every member.

    The vacancy and saddle cells follow each member's bcc lattice constant: their (isotropic)
    strain is imposed from the bcc expansion's predicted volume, the positions relax.

    Returns
    -------
    Dataset with dim sample: ``formation_energy``, ``migration_barrier`` (eV, second order),
    ``formation_energy_first``, ``migration_barrier_first`` (first order), ``lattice_constant``
    (Å), ``status_formation``, ``status_barrier`` ("ok" or why the member was flagged; the
    brute-force status when it fell back), ``method`` (``implicit``, ``brute-force`` or
    ``mixed``) and the validity diagnostics of each expansion.
    """
    theta = np.atleast_2d(np.asarray(theta, dtype=float))
    exps = expansions or mle_expansions_vacancy(theta0, settings, size=size)
    n = theta.shape[0]
    pb = exps["bcc"].predict(theta, **thresholds)
    a_cubic = np.cbrt(pb.volume)  # 2-atom cubic cell
    a00 = float(np.cbrt(exps["bcc"].atoms.get_volume()))
    strain = a_cubic / a00 - 1.0
    ev, es = exps["vacancy"], exps["saddle"]
    pv = ev.predict(theta, imposed_strain=(strain * ev.length)[:, None], **thresholds)
    ps = es.predict(theta, imposed_strain=(strain * es.length)[:, None], n_negative_expected=1, **thresholds)
    ef, ef1, eb, eb1 = _formation_and_barrier(exps, pb, pv, ps)
    n_vac = 2 * size**3 - 1
    st_f, st_b, method = [], [], []
    for i in range(n):
        why_f = [f"{k}: {p.flag[i]}" for k, p in (("bcc", pb), ("vacancy", pv)) if p.flag[i] != "ok"]
        why_b = [f"{k}: {p.flag[i]}" for k, p in (("vacancy", pv), ("saddle", ps)) if p.flag[i] != "ok"]
        if fallback and (why_f or why_b):
            bf_f, bf_b, st = brute_force_vacancy(
                _potential(f"fallback-{i}", theta[i], settings), size=size, guess=exps.get("path")
            )
            if why_f:
                ef[i], ef1[i], a_cubic[i] = bf_f, np.nan, np.nan
            if why_b:
                eb[i], eb1[i] = bf_b, np.nan
            method.append("brute-force" if why_f and why_b else ("mixed"))
            st_f.append(st if why_f else "ok")
            st_b.append(st if why_b else "ok")
            continue
        st_f.append("; ".join(why_f)[:120] or "ok")
        st_b.append("; ".join(why_b)[:120] or "ok")
        method.append("implicit")
    diag = _validity({"bcc": pb, "vacancy": pv, "saddle": ps})
    return xr.Dataset(
        {
            "formation_energy": (("sample",), ef),
            "migration_barrier": (("sample",), eb),
            "formation_energy_first": (("sample",), ef1),
            "migration_barrier_first": (("sample",), eb1),
            "lattice_constant": (("sample",), a_cubic),
            "status_formation": (("sample",), status_array(st_f)),
            "status_barrier": (("sample",), status_array(st_b)),
            "method": (("sample",), np.array(method, dtype="<U11")),
            **diag,
        },
        coords={"sample": np.arange(n)},
        attrs={
            "method": "implicit (second-order energies)",
            "cell": f"{size}x{size}x{size} cubic bcc, {n_vac} atoms with the vacancy",
            "saddle": "first-neighbour hop, climbing image of the MLE CI-NEB",
            "source": "arXiv:2407.02414",
        },
    )


def _formation_and_barrier(
    exps: dict[str, Expansion], pb: Any, pv: Any, ps: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(S,) vacancy formation energies and migration barriers (eV), second and first order,
    from the members' predicted bcc, vacancy and saddle energies."""
    nv = exps["vacancy"].n_atoms
    e_bcc2 = pb.energy_second / exps["bcc"].n_atoms
    e_bcc1 = pb.energy_first / exps["bcc"].n_atoms
    ef = pv.energy_second - nv * e_bcc2
    ef1 = pv.energy_first - nv * e_bcc1
    eb = ps.energy_second - pv.energy_second
    eb1 = ps.energy_first - pv.energy_first
    return ef, ef1, eb, eb1


def _validity(predictions: dict[str, Any]) -> dict[str, tuple[tuple[str], np.ndarray]]:
    """The validity diagnostics of each expansion's predictions, per member, as variables."""
    return {
        f"{name}_{key}": (("sample",), getattr(p, name))
        for key, p in predictions.items()
        for name in ("hessian_change", "max_displacement", "rel_energy_change")
    }


def relax_implicit(
    atoms: Any,
    theta0: np.ndarray,
    settings: SnapSettings,
    theta: np.ndarray,
    *,
    cell: str = "none",
    fallback: bool = True,
    expansion: Expansion | None = None,
    fmax: float = 1e-4,
    **thresholds: Any,
) -> xr.Dataset:
    """Relaxed energies, positions and volumes of one structure for a batch of members.

    Parameters
    ----------
    atoms : a minimum of θ0 (relaxed with ``cell`` degrees of freedom)
    theta0 : (P,) expansion point; settings : descriptor settings
    theta : (n, P) members
    cell : ``none``, ``iso``, ``aniso`` or ``full`` (strain coordinates relaxed, as in
        :func:`popsdask.properties.relax.relax`)
    fallback : relax flagged members by brute force (``relax`` with that member)
    expansion : a prebuilt :func:`expand` result (else built here)
    fmax : force tolerance of the brute-force relaxations (eV/Å)

    Returns
    -------
    Dataset (sample; atom, xyz; cell vectors) with ``energy`` (second order), ``energy_first``,
    ``volume``, ``positions``, ``cell``, ``status`` (flag or brute-force reason) and ``method``.
    """
    theta = np.atleast_2d(np.asarray(theta, dtype=float))
    ex = expansion or expand(atoms, theta0, settings, strain=cell)
    p = ex.predict(theta, **thresholds)
    e2, e1, vol = p.energy_second.copy(), p.energy_first.copy(), p.volume.copy()
    pos, cells = p.positions.copy(), p.cells.copy()
    status, method = [], []
    for i in range(theta.shape[0]):
        if p.flag[i] == "ok" or not fallback:
            status.append(str(p.flag[i]))
            method.append("implicit")
            continue
        r = relax(atoms, _potential(f"fallback-{i}", theta[i], settings), cell=cell, fmax=fmax, max_steps=5000)
        e2[i], e1[i] = (r.energy if r.converged else np.nan), np.nan
        vol[i] = r.atoms.get_volume()
        pos[i], cells[i] = r.atoms.positions, r.atoms.cell[:]
        status.append(r.reason[:80])
        method.append("brute-force")
    return xr.Dataset(
        {
            "energy": (("sample",), e2),
            "energy_first": (("sample",), e1),
            "volume": (("sample",), vol),
            "positions": (("sample", "atom", "xyz"), pos),
            "cell": (("sample", "vector", "xyz"), cells),
            "status": (("sample",), status_array(status)),
            "method": (("sample",), np.array(method, dtype="<U11")),
            "hessian_change": (("sample",), p.hessian_change),
            "max_displacement": (("sample",), p.max_displacement),
            "rel_energy_change": (("sample",), p.rel_energy_change),
        },
        coords={"sample": np.arange(theta.shape[0])},
        attrs={"method": "implicit", "cell": cell, "expansion_seconds": ex.seconds},
    )


def _reference_values(name: str, reference: Any, options: dict[str, Any]) -> xr.Dataset | None:
    """The reference (teacher) potential's values by the brute-force property module."""
    if not reference:
        return None
    ref = reference_potential(reference if isinstance(reference, str) else "W_2940_2017_2")
    try:
        if name == "phases":
            return compute_phases(ref, phases=("bcc", "hcp"), bulk_modulus=False)
        return compute_vacancy(ref, size=int(options.get("size", 3)))
    except Exception as err:  # the reference failing must not lose the members' results
        return xr.Dataset(attrs={"error": f"{type(err).__name__}: {err}"[:200]})


def _as_store_layout(name: str, ds: xr.Dataset, labels: Sequence[str], exps: dict[str, Any]) -> xr.Dataset:
    """Rename the implicit Dataset to the runner's combined layout (see popsdask.properties.runner)."""
    samples = np.array(labels, dtype=f"<U{max(len(x) for x in labels)}")
    if name == "phases":
        vpa, epa = ds.volume_per_atom, ds.energy_per_atom
        out = xr.Dataset(
            {
                "energy": epa - epa.sel(phase="bcc"),
                "volume_ratio": vpa / vpa.sel(phase="bcc"),
                "energy_per_atom": epa,
                "energy_per_atom_first": ds.energy_per_atom_first,
                "volume_per_atom": vpa,
                "status": ds.status,
                "method": ds.method,
            }
        )
        mle = {ph: exps[ph] for ph in ("bcc", "hcp")}
        e_m = np.array([mle[ph].energy0 / mle[ph].n_atoms for ph in ("bcc", "hcp")])
        v_m = np.array([mle[ph].atoms.get_volume() / mle[ph].n_atoms for ph in ("bcc", "hcp")])
        out["energy_mle"] = ("phase", e_m - e_m[0])
        out["volume_ratio_mle"] = ("phase", v_m / v_m[0])
        out["energy_per_atom_mle"] = ("phase", e_m)
        out["volume_per_atom_mle"] = ("phase", v_m)
    else:
        out = xr.Dataset(
            {
                "formation_energy": ds.formation_energy,
                "barrier": ds.migration_barrier,
                "formation_energy_first": ds.formation_energy_first,
                "barrier_first": ds.migration_barrier_first,
                "a0": ds.lattice_constant,
                "status": ("sample", status_array([f"{a}; {b}" if a != b else a for a, b in
                                              zip(ds.status_formation.values, ds.status_barrier.values, strict=True)])),
                "method": ds.method,
            }
        )  # fmt: skip
        neb = exps["neb"]
        out["barrier_mle"] = neb["barrier"]
        out["formation_energy_mle"] = neb["initial_energy"] - exps["vacancy"].n_atoms * neb["e_bcc"]
        out["a0_mle"] = neb["a0"]
    return out.assign_coords(sample=samples)


def run_implicit(
    posterior_or_members: Any,
    settings: Any,
    properties: Sequence[str],
    store_path: Any,
    *,
    n_samples: int = 100,
    seed: int = 0,
    sampling: str = "uniform",
    reference: bool | str = True,
    options: dict[str, dict[str, Any]] | None = None,
    progress: bool = True,
) -> dict[str, xr.Dataset]:
    """``popsdask properties --route implicit``: the runner signature of ``run_resample``
    without ``client`` (the predictions are matrix products; the few fallbacks run here).

    The expansions are built once at the MLE (the member labelled ``"mle"``) and every member is
    predicted from them; flagged members fall back to brute force in this process (option
    ``fallback``, default True). Only :data:`IMPLICIT_PROPERTIES` are available (``phases``
    covers bcc and hcp). The reference values come from the brute-force property modules.
    Results go to ``<store_path>/<property>.zarr`` in the runner's combined layout, with
    ``method`` per sample (``implicit``, ``brute-force`` or ``mixed``) and the first-order
    values beside the second-order ones.
    """
    bad = [p for p in properties if p not in IMPLICIT_PROPERTIES]
    if bad:
        raise InputError(f"route implicit: no implicit route for {bad}; available {list(IMPLICIT_PROPERTIES)}")
    members = resolve_members(posterior_or_members, settings, n_samples, seed, sampling)
    mle = next((m for m in members if m.label == "mle"), None)
    if mle is None or mle.theta is None:
        raise InputError("route implicit needs the MLE member (label 'mle') with θ")
    snap = mle.settings
    if not isinstance(snap, SnapSettings):
        raise InputError(f"route implicit needs SNAP descriptor gradients, not {type(snap).__name__}")
    samples = [m for m in members if m.label != "mle"]
    theta = np.stack([np.asarray(m.theta, dtype=float) for m in samples])
    options = dict(options or {})
    store = Path(store_path)
    store.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in properties:
        opts = dict(options.get(name, {}))
        t0 = time.perf_counter()
        if name == "phases":
            exps = mle_expansions_phases(mle.theta, snap)
            t1 = time.perf_counter()
            ds = phases_implicit(mle.theta, snap, theta, expansions=exps, **opts)
        else:
            size = int(opts.pop("size", 3))
            exps = mle_expansions_vacancy(mle.theta, snap, size=size)
            t1 = time.perf_counter()
            ds = vacancy_implicit(mle.theta, snap, theta, size=size, expansions=exps, **opts)
            opts["size"] = size
        t2 = time.perf_counter()
        res = _as_store_layout(name, ds, [m.label for m in samples], exps)
        ref = _reference_values(name, reference, opts)
        if ref is not None and "error" not in ref.attrs:
            for v in map(str, res.data_vars):
                if v in ref and not v.endswith("_mle"):
                    res[f"{v}_reference"] = ref[v]
        res.attrs.update(
            {
                "method": "implicit",
                "implicit_setup_s": t1 - t0,
                "implicit_predict_s": t2 - t1,
                "n_brute_force": int(np.sum(ds.method.values != "implicit")),
                "source": "Maliyov, Grigorev & Swinburne, arXiv:2407.02414",
                "seed": seed,
                "sampling": sampling,
            }
        )
        if progress:
            print(f"{name}: implicit setup {t1 - t0:.1f} s, {len(samples)} members {t2 - t1:.1f} s", flush=True)
        write_results(res, store / f"{name}.zarr")
        out[name] = res
    return out
