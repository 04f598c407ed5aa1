"""CPU cost of the design rows per atom: qSNAP against linear ACE of several sizes.

This is the descriptor cost for the side-by-side in the README ("Descriptor families on the W DFT
set"). It uses one process and the process CPU time, so the figure barely moves with the load of a
shared machine, unlike the stores' wall times. The configurations are every k-th of the W DFT set.
ACE needs the ``ace`` extra (python-ace, Academic Software Licence)::

    python benchmarks/descriptor_cost.py --every 100 --ace-functions 120 300
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from popsdask.atomistic.configurations import read_configurations
from popsdask.atomistic.descriptors.snap import SnapSettings

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tungsten-dft" / "W_dft.extxyz.xz"


def cpu_ms_per_atom(settings, cfgs) -> float:
    """Process CPU milliseconds per atom of ``settings.rows`` over ``cfgs`` (after one warm-up)."""
    settings.rows(cfgs[0])
    t0 = time.process_time()
    for c in cfgs:
        settings.rows(c)
    return 1e3 * (time.process_time() - t0) / sum(c.n_atoms for c in cfgs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT))
    p.add_argument("--every", type=int, default=100, help="every k-th configuration")
    p.add_argument("--twojmax", type=int, default=4, help="qSNAP 2J_max (4: 120 columns)")
    p.add_argument("--ace-functions", type=int, nargs="*", default=[120, 300], help="ACE sizes (per element)")
    args = p.parse_args()
    cfgs = read_configurations(args.data, elements=["W"], index=f"::{args.every}").configurations
    families = [(f"qSNAP 2J={args.twojmax}", SnapSettings(twojmax=args.twojmax))]
    if args.ace_functions:
        from popsdask.atomistic.descriptors.ace import AceSettings

        families += [(f"ACE {n}", AceSettings.from_size(["W"], n)) for n in args.ace_functions]
    out = {"configurations": len(cfgs), "atoms": sum(c.n_atoms for c in cfgs)}
    for name, settings in families:
        out[name] = {"columns": settings.n_features, "cpu_ms_per_atom": round(cpu_ms_per_atom(settings, cfgs), 4)}
        print(f"{name}: {settings.n_features} columns, {out[name]['cpu_ms_per_atom']:.3f} CPU ms/atom", flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
