"""Bad input, fuzzed (hypothesis, derandomized): every input gives a correct result or a clear
InputError/ValueError naming the problem; never an internal exception (IndexError, LinAlgError,
ZeroDivisionError, scipy's "array must not contain infs or NaNs", ...) and never a hang (each
example runs under a SIGALRM time limit on dask's synchronous scheduler).

"Correct" is checked without a second implementation: the returned coefficients satisfy the
regularised normal equations (XᵀWX + λ/α I) θ = XᵀWy at the returned α, λ; the box is
ordered and finite; the condition number is reported; re-chunking the same store gives the same
posterior to round-off.
"""

from __future__ import annotations

import contextlib
import re
import signal
from collections.abc import Iterator

import dask
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from popsdask import InputError, POPSRegressor, fit, open_store, write_store

SETTINGS = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
TIME_LIMIT = 60  # seconds per example: a hang fails the test instead of blocking CI


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def expire(signum, frame):
        raise TimeoutError(f"no result within {seconds} s (hang?)")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(autouse=True)
def synchronous():
    with dask.config.set(scheduler="synchronous"):
        yield


POISONS = ["none", "nan_X", "inf_X", "nan_y", "ninf_y", "neg_weight", "nan_weight", "zero_weights"]
COLUMNS = ["none", "constant", "duplicate", "zero"]


@st.composite
def problems(draw):
    n = draw(st.integers(1, 60))
    p = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    column = draw(st.sampled_from(COLUMNS))
    if p >= 2 and column == "constant":
        X[:, -1] = 3.0
    elif p >= 2 and column == "duplicate":
        X[:, -1] = X[:, 0]
    elif p >= 2 and column == "zero":
        X[:, -1] = 0.0
    n_zero_rows = draw(st.integers(0, n // 2))
    X[:n_zero_rows] = 0.0  # rows with leverage exactly 0
    y = np.sin(X.sum(axis=1)) + 0.1 * rng.normal(size=n)
    w = rng.uniform(0.0, 2.0, size=n) if draw(st.booleans()) else None
    if w is not None and draw(st.booleans()):
        w[: n // 3] = 0.0  # some zero weights
    ex, ey, ew = (draw(st.integers(-30, 30)) for _ in range(3))
    X *= 10.0**ex
    y *= 10.0**ey
    if w is not None:
        w *= 10.0**ew
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    X = X.astype(dtype)
    poison = draw(st.sampled_from(POISONS))
    row = draw(st.integers(0, n - 1))
    if poison == "nan_X":
        X[row, draw(st.integers(0, p - 1))] = np.nan
    elif poison == "inf_X":
        X[row, draw(st.integers(0, p - 1))] = np.inf
    elif poison == "nan_y":
        y[row] = np.nan
    elif poison == "ninf_y":
        y[row] = -np.inf
    elif poison in ("neg_weight", "nan_weight", "zero_weights"):
        w = np.ones(n) if w is None else w
        if poison == "zero_weights":
            w[:] = 0.0
        else:
            w[row] = -1.0 if poison == "neg_weight" else np.nan
    chunk_rows = draw(st.integers(1, max(1, n)))
    return {"X": X, "y": y, "w": w, "poison": poison, "row": row, "chunk_rows": chunk_rows}


EXPECTED = {
    "nan_X": r"X has a non-finite value nan at row {row}\b",
    "inf_X": r"X has a non-finite value inf at row {row}\b",
    "nan_y": r"y has a non-finite value nan at row {row}\b",
    "ninf_y": r"y has a non-finite value -inf at row {row}\b",
    "neg_weight": r"weight has a negative value -1.0 at row {row}\b",
    "nan_weight": r"weight has a non-finite value nan at row {row}\b",
    "zero_weights": r"all weights are zero|weighted design matrix is zero",
}


def check_posterior(post, X, y, w) -> None:
    """Correct result: normal equations at the returned α, λ; finite ordered box; diagnostics."""
    Xf, yf = X.astype(np.float64), y.astype(np.float64)
    wf = np.ones(len(yf)) if w is None else w
    G = (Xf * wf[:, None]).T @ Xf
    b = Xf.T @ (wf * yf)
    theta = post.coef_
    assert np.all(np.isfinite(theta)) and np.all(np.isfinite(post.sigma_))
    assert post.alpha_ > 0 and post.lambda_ > 0
    assert np.linalg.eigvalsh(post.sigma_).min() >= -1e-12 * np.abs(post.sigma_).max()
    lhs = G @ theta + (post.lambda_ / post.alpha_) * theta
    scale = np.abs(G).max() * np.abs(theta).max() + np.abs(b).max() + (post.lambda_ / post.alpha_) * np.abs(theta).max()
    np.testing.assert_allclose(lhs, b, rtol=0, atol=1e-9 * scale)
    ev = np.linalg.eigvalsh(G)
    if ev.min() > 1e-8 * ev.max():  # well-posed enough for the reported number to be checked
        assert post.condition_number_ == pytest.approx(ev.max() / ev.min(), rel=1e-6)
    else:
        assert post.condition_number_ >= 1e6 or np.isinf(post.condition_number_)
    assert np.all(np.isfinite(post.misspecification_sigma_))
    if post.basis_ is not None:
        assert np.all(np.isfinite(post.lower_)) and np.all(np.isfinite(post.upper_))
        assert np.all(post.lower_ <= post.upper_)
        assert post.basis_.shape[0] == X.shape[1]
    assert 0 < post.n_selected_ <= post.n_rows_ == X.shape[0]


@SETTINGS
@given(case=problems())
def test_fit_on_arrays_is_correct_or_refuses_clearly(case):
    X, y, w, poison = case["X"], case["y"], case["w"], case["poison"]
    n, p = X.shape
    with time_limit(TIME_LIMIT):
        try:
            post = fit(X, y, weight=w, chunk_rows=case["chunk_rows"])
        except InputError as err:
            msg = str(err)
            if n < p and f"{n} rows" in msg and f"{p} features" in msg:
                return  # the shape is checked before any pass reads the values
            if poison != "none":
                assert re.search(EXPECTED[poison].format(row=case["row"]), msg), msg
            elif "effective parameters" in msg:  # α would turn negative: Σw ≤ γ ≤ P
                assert (n if w is None else w.sum()) <= p, msg
            else:
                # the only other refusal: every weighted row is zero (zero rows x zero weights)
                Xw = X if w is None else X * (w[:, None] > 0)
                assert not np.any(Xw), msg
            return
    if poison != "none":
        pytest.fail(f"{poison} at row {case['row']} was accepted")
    assert n >= p
    check_posterior(post, X, y, w)


@SETTINGS
@given(case=problems())
def test_estimator_is_correct_or_raises_value_error(case):
    X, y, w = case["X"], case["y"], case["w"]
    with time_limit(TIME_LIMIT):
        try:
            est = POPSRegressor(chunk_rows=case["chunk_rows"], n_posterior_samples=20).fit(X, y, sample_weight=w)
        except ValueError as err:  # InputError is a ValueError; scikit-learn's input checks too
            assert str(err)
            assert (
                case["poison"] != "none"
                or X.shape[0] < X.shape[1]
                or not np.any(X if w is None else X * (w[:, None] > 0))
            ), str(err)
            return
        mean, std, hi, lo = est.predict(X, return_std=True, return_bounds=True)
    assert case["poison"] == "none"
    assert np.all(np.isfinite(mean)) and np.all(std >= 0)
    assert np.all(lo <= hi)


@st.composite
def configured_rows(draw):
    """Configurations of 1 energy row + 3k force rows; chunking splits configurations."""
    n_configs = draw(st.integers(1, 12))
    atoms = draw(st.lists(st.integers(0, 3), min_size=n_configs, max_size=n_configs))
    p = draw(st.integers(1, 4))
    config = np.concatenate([np.full(1 + 3 * a, i) for i, a in enumerate(atoms)])
    kind = np.concatenate([[0] + [1] * 3 * a for a in atoms])
    n = config.size
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    X = rng.normal(size=(n, p)) * 10.0 ** draw(st.integers(-30, 30))
    y = rng.normal(size=n)
    chunk_rows = draw(st.integers(1, n))
    f32 = draw(st.booleans())
    return X.astype(np.float32) if f32 else X, y, config, kind, chunk_rows


@pytest.mark.slow
@SETTINGS
@given(case=configured_rows())
def test_store_round_trip_and_fit_independent_of_chunking(tmp_path_factory, case):
    X, y, config, kind, chunk_rows = case
    n, p = X.shape
    root = tmp_path_factory.mktemp("fuzz")
    with time_limit(TIME_LIMIT):
        path = write_store(root / "s.zarr", X, y, config=config, kind=kind, chunk_rows=chunk_rows)
        ds = open_store(path)
        np.testing.assert_array_equal(ds["X"].values, X)
        np.testing.assert_array_equal(ds["config"].values, config)
        assert ds["X"].data.chunks[0][0] == min(chunk_rows, n)
        try:
            post = fit(path)
        except InputError as err:
            assert n < p and f"{n} rows" in str(err), str(err)
            return
        whole = fit(X.astype(np.float64), y, chunk_rows=n)
    for name in ("coef_", "sigma_", "misspecification_sigma_"):
        a, b = getattr(post, name), getattr(whole, name)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9 * max(np.abs(b).max(), 1e-300))
    check_posterior(post, X, y, None)


BAD_ARRAYS = {
    "object X": (lambda X, y: (X.astype(object), y), r"X.*(dtype object|non-numeric)"),
    "string X": (lambda X, y: (X.astype(str), y), r"X.*(<U|non-numeric|not numeric)"),
    "complex X": (lambda X, y: (X.astype(complex), y), r"X.*complex128"),
    "string y": (lambda X, y: (X, y.astype(str)), r"y.*(<U|non-numeric|not numeric)"),
    "1-D X": (lambda X, y: (X[:, 0], y), r"2.?D|2 dimensions"),
    "3-D X": (lambda X, y: (X[:, :, None], y), r"2.?D|2 dimensions"),
    "2-D y": (lambda X, y: (X, y[:, None]), r"y.*shape \(40, 1\)"),
    "short y": (lambda X, y: (X, y[:-1]), r"y.*shape \(39,\)"),
    "empty": (lambda X, y: (X[:0], y[:0]), r"empty"),
}


@pytest.mark.parametrize("case", list(BAD_ARRAYS))
@pytest.mark.parametrize("entry", ["fit", "write_store"])
def test_mismatched_shapes_and_dtypes_are_named(tmp_path, case, entry):
    rng = np.random.default_rng(5)
    X, y = BAD_ARRAYS[case][0](rng.normal(size=(40, 3)), rng.normal(size=40))
    with time_limit(TIME_LIMIT), pytest.raises(InputError, match=BAD_ARRAYS[case][1]):
        if entry == "fit":
            fit(X, y)
        else:
            write_store(tmp_path / "s.zarr", X, y)
    assert not any(tmp_path.iterdir())  # nothing half-written


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"leverage_percentile": 150.0}, "leverage_percentile=150.0"),
        ({"leverage_percentile": float("nan")}, "leverage_percentile=nan"),
        ({"percentile_clipping": 60.0}, "percentile_clipping=60.0"),
        ({"mode_threshold": -1.0}, "mode_threshold=-1.0"),
        ({"chunk_rows": 0}, "chunk_rows=0"),
        ({"posterior": "gaussian"}, "posterior='gaussian'"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    X = np.random.default_rng(6).normal(size=(40, 3))
    with pytest.raises(ValueError, match=message):
        fit(X, X[:, 0], **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"chunk_rows": 0}, "chunk_rows=0"),
        ({"kind": np.full(40, 7)}, r"unknown row kind code \[7\]"),
        ({"kind": ["energy"] * 39 + ["spin"]}, "unknown row kind 'spin'"),
        ({"configurations": {"name": [[1], [1, 2]]}}, r"configurations\['name'\]: not a rectangular array"),
        ({"config": np.array(["a"] * 40, dtype=object)}, "config: dtype object is not numeric"),
        ({"weight": np.ones(39)}, r"weight: shape \(39,\) does not match X's 40 rows"),
    ],
)
def test_bad_store_coordinates_are_named(tmp_path, kwargs, message):
    X = np.random.default_rng(7).normal(size=(40, 3))
    with pytest.raises(InputError, match=message):
        write_store(tmp_path / "s.zarr", X, X[:, 0], **kwargs)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("scale", [1e200, 1e300])
@pytest.mark.parametrize("where", ["X", "y"])
def test_overflowing_magnitudes_are_refused_clearly(scale, where):
    rng = np.random.default_rng(8)
    X, y = rng.normal(size=(50, 3)), rng.normal(size=50)
    if where == "X":
        X = X * scale
    else:
        y = y * scale
    with pytest.raises(InputError, match="overflow float64"):
        fit(X, y)


def test_values_that_underflow_are_refused_clearly():
    X = np.random.default_rng(9).normal(size=(50, 3)) * 1e-200
    with pytest.raises(InputError, match="weighted design matrix is zero"):
        fit(X, np.ones(50))


def test_single_row_store_fits_one_feature_and_refuses_more(tmp_path):
    one = write_store(tmp_path / "one.zarr", [[2.0]], [1.0])
    post = fit(one)
    assert post.n_rows_ == 1 and np.isfinite(post.coef_).all()
    wide = write_store(tmp_path / "wide.zarr", [[2.0, 1.0]], [1.0])
    with pytest.raises(InputError, match="1 rows .* 2 features"):
        fit(wide)


# -- cluster options: one line before anything starts, never a hang -----------------------------
BAD_CLUSTER_OPTIONS = {
    "--scheduler-file": (["--scheduler-file", "{tmp}/nonexistent.json"], "no such file"),
    "--scheduler-file garbage": (["--scheduler-file", "{tmp}/garbage.json"], "not a scheduler file"),
    "--n-workers": (["--n-workers", "0"], "at least one worker"),
    "--memory-limit small": (["--memory-limit", "1MB"], "at least 512 MiB"),
    "--memory-limit text": (["--memory-limit", "lots"], "not a size"),
    "--interface": (["--interface", "nosuchif0"], "no such network interface"),
    "--scheduler": (["--scheduler", "tcp://127.0.0.1:1"], "no scheduler reachable"),
    "--cluster-config": (["--cluster-config", "{tmp}/x.yaml"], "slurm, pbs and lsf clusters only"),
}


@pytest.mark.parametrize("case", sorted(BAD_CLUSTER_OPTIONS))
def test_bad_cluster_options_are_one_line_before_a_cluster_starts(tmp_path, capsys, case):
    """Each option used to hang (scheduler file, zero workers, a memory limit workers restart under
    for ever) or end in a traceback after the cluster started; now exit 2, one line naming the
    option, within seconds, and nothing written."""
    from popsdask.cli import main

    X, y = np.random.default_rng(0).normal(size=(50, 2)), np.zeros(50)
    store = write_store(tmp_path / "s.zarr", X, y)
    (tmp_path / "garbage.json").write_text("{not json")
    (tmp_path / "x.yaml").write_text("jobqueue: {slurm: {cores: 1}}\n")
    options, message = BAD_CLUSTER_OPTIONS[case]
    out = tmp_path / "post.zarr"
    with time_limit(30):
        code = main(["fit", str(store), "-o", str(out), "--quiet", *(o.format(tmp=tmp_path) for o in options)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert message in err[0] and options[0] in err[0]
    assert not out.exists()


@SETTINGS
@given(
    n_workers=st.one_of(st.none(), st.integers(-3, 0)),
    memory=st.one_of(st.none(), st.text(max_size=8), st.floats(allow_nan=True), st.integers(-10, 2**20)),
    interface=st.one_of(st.none(), st.text(min_size=1, max_size=12)),
)
def test_cluster_options_are_refused_as_input_errors(n_workers, memory, interface):
    """Whatever the options, the check before a cluster starts raises InputError or passes."""
    from popsdask.runtime.preflight import check_cluster_options

    with contextlib.suppress(InputError):
        check_cluster_options(n_workers=n_workers, memory_limit=memory, interface=interface)
        assert n_workers is None and interface in (None, "lo", "eth0")


@pytest.mark.parametrize(("nonzero", "weight"), [(1, 1.0), (6, 0.5)])
def test_weights_on_too_few_rows_are_refused_not_fitted(tmp_path, capsys, nonzero, weight):
    """A store whose weights sum to no more than the parameters gave α < 0 (then λ < 0 and a
    covariance with negative eigenvalues) with exit 0; scikit-learn's BayesianRidge counts the
    zero-weight rows as samples instead. Now one line, exit 2, and nothing written."""
    from sklearn.linear_model import BayesianRidge

    from popsdask.cli import main

    rng = np.random.default_rng(7)
    X = rng.normal(size=(300, 6))
    y = np.sin(X.sum(axis=1))
    w = np.zeros(300)
    w[rng.choice(300, nonzero, replace=False)] = weight
    assert BayesianRidge().fit(X, y, sample_weight=w).alpha_ > 0  # its n_samples is 300 rows
    store = write_store(tmp_path / "s.zarr", X, y, weight=w)
    out = tmp_path / "post.zarr"
    assert main(["fit", str(store), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weights sum to" in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("case", ["ev-curve", "n < p"])
def test_refusals_known_from_metadata_come_before_a_cluster(tmp_path, capsys, monkeypatch, case):
    """`--ev-curve abc` and a store with fewer rows than features used to be refused only after
    the Dask cluster had started."""
    from popsdask.cli import main
    from popsdask.runtime import cluster

    def no_cluster(*args, **kwargs):
        raise AssertionError("a cluster was started before the refusal")

    monkeypatch.setattr(cluster, "connect_from_args", no_cluster)
    rng = np.random.default_rng(0)
    store = write_store(tmp_path / "s.zarr", rng.normal(size=(40, 3)), rng.normal(size=40))
    few = write_store(tmp_path / "few.zarr", rng.normal(size=(3, 5)), rng.normal(size=3))
    post = fit(store).save(tmp_path / "post.zarr")
    argv = {
        "ev-curve": ["predict", str(post), str(store), "-o", str(tmp_path / "p.zarr"), "--ev-curve", "abc"],
        "n < p": ["fit", str(few), "-o", str(tmp_path / "q.zarr")],
    }[case]
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("--ev-curve 'abc'" in err[0] or "3 rows" in err[0] and "5 features" in err[0]), err


@SETTINGS
@given(seed=st.integers(0, 2**16), n=st.integers(1, 6), r=st.floats(0.05, 1.2), skew=st.floats(0.0, 1.5))
def test_closest_pair_agrees_with_brute_force_over_periodic_images(seed, n, r, skew):
    """The overlapping-atoms check (minimum image in fractional coordinates, or ASE's neighbour
    list for thin cells) against every pair over images -2..2 along each periodic axis."""
    import itertools

    pytest.importorskip("ase", reason="atomistic extra (ase) not installed")
    from popsdask.atomistic.configurations import closest_pair

    rng = np.random.default_rng(seed)
    cell = np.diag(rng.uniform(1.5, 4.0, 3)) + skew * np.triu(rng.normal(size=(3, 3)), 1)
    pbc = rng.integers(0, 2, 3).astype(bool)
    pos = rng.uniform(0, 1, (n, 3)) @ cell
    shifts = [np.array(s) @ cell for s in itertools.product(*[(-2, -1, 0, 1, 2) if p else (0,) for p in pbc])]
    brute = min(
        (np.linalg.norm(pos[i] - pos[j] + s) for i in range(n) for j in range(n) for s in shifts if i != j or s.any()),
        default=np.inf,
    )
    found = closest_pair(cell, pbc, pos, r)
    assert (found is not None) == (brute < r), (found, brute)
    if found is not None:
        assert found[2] < r


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_workers": 0}, "at least one worker"),
        ({"memory_limit": "1MB"}, "at least 512 MiB"),
        ({"memory_limit": "lots"}, "not a size"),
        ({"interface": "nosuchif0"}, "no such network interface"),
        ({"scheduler_file": "/nonexistent.json"}, "no such file"),
        ({"cluster": "tcp://127.0.0.1:1"}, "no scheduler reachable"),
    ],
)
def test_connect_refuses_cluster_options_before_starting(kwargs, message):
    """The Python API (connect) runs the same checks as the command line."""
    from popsdask.runtime.cluster import connect

    with time_limit(30), pytest.raises(InputError, match=message), connect(quiet=True, **kwargs):
        pytest.fail("a cluster started")


# -- attribute injection and hand-edited posteriors, fuzzed -------------------------------------
_JSONISH = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.lists(st.text(max_size=10), max_size=3),
)


@SETTINGS
@given(key=st.sampled_from(["elements", "reference_style", "reference_coeffs", "twojmax", "rcutfac", "radii"]),
       value=_JSONISH)  # fmt: skip
def test_descriptor_settings_from_attrs_never_write_a_second_lammps_command(key, value):
    """Whatever a store's attributes hold, the settings are refused (InputError) or every LAMMPS
    command written from them is one line free of LAMMPS's comment, variable and quote characters."""
    pytest.importorskip("ase", reason="atomistic extra (ase) not installed")
    from popsdask.atomistic.descriptors.base import backend_from_attrs
    from popsdask.atomistic.descriptors.snap import SnapSettings, zbl_reference

    attrs = SnapSettings(elements=("W",), twojmax=2, quadratic=False, **zbl_reference(["W"])).to_attrs()
    attrs[key] = value
    try:
        settings = backend_from_attrs({"descriptor": {"backend": "snap", "settings": attrs}})
    except InputError:
        return
    commands = settings.descriptor_pair_commands() + settings.pair_commands(
        {"snapcoeff": "/a b/c.snapcoeff", "snapparam": "/a b/c.snapparam"}
    )
    for line in [*commands, settings.compute_command()]:
        unquoted = re.sub(r'"[^"]*"', "", line)
        assert "\n" not in line and not re.search(r"[#$&'\"]", unquoted), line


@pytest.fixture(scope="module")
def saved_posterior(tmp_path_factory):
    from tests.conftest import misspecified

    X, y, w = misspecified(300, 3, seed=5)
    return fit(X, y, weight=w).save(tmp_path_factory.mktemp("posterior") / "post.zarr")


@SETTINGS
@given(key=st.sampled_from(["alpha", "lambda", "n_rows", "leverage_threshold", "settings", "calibration"]),
       value=_JSONISH)  # fmt: skip
def test_hand_edited_posterior_attributes_load_valid_or_are_refused(saved_posterior, tmp_path_factory, key, value):
    """Any JSON value in a posterior's attributes: the load refuses it (InputError naming it) or
    gives a posterior whose precisions are positive and finite."""
    import json
    import shutil

    from popsdask import Posterior

    path = tmp_path_factory.mktemp("edited") / "post.zarr"
    shutil.copytree(saved_posterior, path)
    meta = path / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"][key] = value
    meta.write_text(json.dumps(doc))
    try:
        post = Posterior.load(path)
    except InputError as err:
        assert key in str(err) and "\n" not in str(err)
        return
    assert np.isfinite(post.alpha_) and post.alpha_ > 0 and np.isfinite(post.lambda_) and post.lambda_ > 0
