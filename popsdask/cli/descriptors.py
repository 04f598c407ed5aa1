"""``popsdask descriptors``: a descriptor store of configurations (qSNAP, POD or linear ACE rows)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ..atomistic.descriptors.base import backend_names, get_backend
from ..core.validation import InputError, number
from .common import add_cluster, add_overwrite, add_seed, refuse_existing

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
    names = _command_line_backends()
    p.add_argument(
        "--descriptor",
        choices=names,
        default="snap",
        help="descriptor kind: " + _listing([f"{n} ({get_backend(n).summary})" for n in names]),
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
    added = set()
    for name in names:  # each backend's own options, in a group of its own
        adder = get_backend(name).add_arguments
        func = getattr(adder, "__func__", adder)
        if func not in added:  # a subclass of another backend shares its options
            added.add(func)
            adder(p.add_argument_group(f"--descriptor {name}"))
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


def _listing(items: list[str]) -> str:
    """``a, b or c``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _command_line_backends() -> list[str]:
    """The registered backends that build their settings from options (``--descriptor``'s choices)."""
    return [name for name in backend_names() if hasattr(get_backend(name), "settings_from_args")]


def _options(name: str) -> tuple[list[argparse.Action], argparse.ArgumentParser]:
    """The options backend ``name`` adds, and a parser holding only them (for their defaults)."""
    scratch = argparse.ArgumentParser(add_help=False)
    get_backend(name).add_arguments(scratch.add_argument_group())
    return scratch._actions, scratch


def _refuse_other_backends_options(args: argparse.Namespace) -> None:
    """An option of a backend other than ``--descriptor``'s, given, is one line naming it."""
    mine = {a.dest for a in _options(args.descriptor)[0]}
    for name in _command_line_backends():
        actions, scratch = _options(name)
        given = {a.dest for a in actions if a.dest not in mine and getattr(args, a.dest) != scratch.get_default(a.dest)}
        if given:
            flags = [a.option_strings[0] for a in actions if a.dest in given]
            raise InputError(f"{'/'.join(flags)}: only with --descriptor {name}")


def run(args: argparse.Namespace) -> int:
    try:
        from ..atomistic.configurations import expand_paths, read_configurations
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
    backend = get_backend(args.descriptor)
    _refuse_other_backends_options(args)
    # the backend's options (and any file they name) are checked before the (slow) read; settings
    # known now (a parameter file's species, --elements) also fix the elements the read accepts
    settings = backend.settings_from_args(args, args.elements)
    elements = list(settings.elements) if settings is not None else args.elements
    if args.group_weights is not None:
        from ..atomistic.weights import GroupWeights

        if args.weights is not None:
            raise InputError("--group-weights: not with --weights (one weighting scheme)")
        wset: Any = GroupWeights.from_file(args.group_weights)
    else:
        weights: Any = args.weights or ("none" if args.split == "none" else "paper")
        wset = weights if weights == "none" else WeightSettings(**({} if weights == "paper" else weights))
    from ..atomistic.descriptor_store import build_descriptor_store  # Dask, xarray: once the inputs are checked

    t0 = time.perf_counter()
    res = read_configurations(
        files,
        elements=elements,
        stress_style=args.stress_units,
        energy_key=args.energy_key,
        forces_key=args.forces_key,
        index=args.index,
    )
    if settings is None and res.configurations:  # settings over the elements found
        found = sorted({s for c in res.configurations for s in c.symbols})
        settings = backend.settings_from_args(args, tuple(elements or found))
    if settings is not None:  # cells LAMMPS cannot bin at the descriptors' cutoff are skipped too
        res.skip_unfit(settings.cutoff)
    for skipped in res.errors[:20]:
        print(f"popsdask descriptors: skipped {skipped}", file=sys.stderr)
    if len(res.errors) > 20:
        print(f"popsdask descriptors: ... and {len(res.errors) - 20} more skipped", file=sys.stderr)
    cfgs = res.configurations
    if not cfgs:
        raise InputError(f"{' '.join(args.configs)}: no usable configurations ({len(res.errors)} skipped)")
    print(f"[popsdask] {res.summary()} from {len(files)} file(s) in {time.perf_counter() - t0:.1f} s", flush=True)
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


#: options a FitSNAP input file sets itself besides every backend's (given with --fitsnap-input they are refused)
FITSNAP_SETS = {
    "descriptor": "snap", "elements": None, "weights": None, "group_weights": None, "virial": False,
    "split": "random", "index": ":", "energy_key": None, "forces_key": None, "stress_units": None,
    "test_fraction": 0.25,  # [GROUPS] training and testing sizes set the split
}  # fmt: skip


def _run_fitsnap_input(args: argparse.Namespace, out: Any) -> int:
    """``popsdask descriptors --fitsnap-input FILE.in``: the store of a FitSNAP input file."""
    from ..atomistic.fitsnap_input import read_fitsnap_input
    from ..runtime.cluster import connect_from_args

    if args.configs:
        raise InputError(f"--fitsnap-input: no CONFIGS with it (its [PATH] gives the data), got {args.configs[0]!r}")
    given = [f"--{key.replace('_', '-')}" for key, default in FITSNAP_SETS.items() if getattr(args, key) != default]
    for name in _command_line_backends():  # --twojmax, --linear, ...: [BISPECTRUM] and [REFERENCE] set them
        actions, scratch = _options(name)
        value = {a.dest: getattr(args, a.dest) for a in actions}
        given += [
            a.option_strings[0]
            for a in actions
            if value[a.dest] != scratch.get_default(a.dest) and a.const in (None, value[a.dest])  # --linear: False
        ]
    if given:
        raise InputError(f"{given[0]}: not with --fitsnap-input (the input file sets it)")
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
