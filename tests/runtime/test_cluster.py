"""popsdask.runtime.cluster: real LocalClusters, real schedulers, dask-jobqueue job scripts (no submission).

The SLURM end-to-end test (jobs really submitted, one cancelled mid-fit) is tests/runtime/test_slurm.py.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import dask
import dask.array as da
import psutil
import pytest
from distributed import Security
from distributed.core import Status

from popsdask.runtime.cluster import connect, connect_from_args, load_cluster_config
from popsdask.runtime.options import add_cluster_arguments
from tests.conftest import LISTENING_BEFORE

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
QUIET = {"quiet": True}
SMALL = {"n_workers": 1, "threads_per_worker": 1, "memory_limit": "1GB", "quiet": True}


def _listening(pids: list[int]) -> list[tuple[int, str, int]]:
    """(pid, ip, port) of every TCP socket in LISTEN state owned by these processes."""
    found = []
    for pid in pids:
        for con in psutil.Process(pid).net_connections(kind="inet"):
            if con.status == psutil.CONN_LISTEN:
                found.append((pid, con.laddr.ip, con.laddr.port))
    return found


def _assert_loopback_only(pids: list[int]) -> None:
    """No socket of these processes, or of their parents (nannies), listens beyond loopback."""
    pids = sorted({*pids, *(psutil.Process(p).ppid() for p in pids if p != os.getpid())})
    pids = [p for p in pids if p > 1 and psutil.pid_exists(p)]
    # sockets the test process held before any cluster (e.g. MPICH's, once an earlier test
    # loaded LAMMPS in-process) are not the cluster's
    sockets = [s for s in _listening(pids) if s not in LISTENING_BEFORE]
    assert sockets, "no listening sockets found: the check would be vacuous"
    exposed = [s for s in sockets if not ipaddress.ip_address(s[1]).is_loopback]
    assert not exposed, f"sockets listening beyond loopback: {exposed}"


def require_jobqueue() -> None:
    """Skip unless dask-jobqueue (the hpc extra) is installed."""
    pytest.importorskip("dask_jobqueue", reason="hpc extra (dask-jobqueue) not installed")


def require_cryptography() -> None:
    """Skip unless cryptography (the hpc extra; TLS certificates) is installed."""
    pytest.importorskip("cryptography", reason="hpc extra (cryptography, for TLS) not installed")


def _parser() -> argparse.ArgumentParser:
    return add_cluster_arguments(argparse.ArgumentParser(prog="popsdask fit"))


# ------------------------------------------------------------------------------ imports
def test_importing_cluster_does_not_import_dask_jobqueue():
    code = "import sys, popsdask.runtime.cluster; print('dask_jobqueue' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_dask_jobqueue_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # makes `import dask_jobqueue` fail
    for kind in ("slurm", "pbs", "lsf"):
        with pytest.raises(ImportError, match=r"pip install 'popsdask\[hpc\]'"):
            with connect(kind, **QUIET):
                pass


# ------------------------------------------------------------------------------ LocalCluster
def test_local_cluster_listens_on_loopback_only_and_computes():
    with connect(n_workers=2, threads_per_worker=1, memory_limit="1GB", quiet=True) as client:
        info = client.scheduler_info()
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        assert len(info["workers"]) == 2
        assert all(addr.startswith("tcp://127.0.0.1:") for addr in info["workers"])
        assert client.dashboard_link.startswith("http://127.0.0.1:")
        worker_pids = list(client.run(os.getpid).values())
        assert os.getpid() not in worker_pids  # processes=True
        _assert_loopback_only([os.getpid(), *worker_pids])
        x = da.arange(1000, chunks=100, dtype=float)
        assert float(x.sum().compute()) == 499500.0  # default client: runs on the cluster


def _die_until(counter: str, deaths: int) -> int:
    """Kill this worker process the first ``deaths`` times it runs (the count kept in a file)."""
    n = int(Path(counter).read_text()) if Path(counter).exists() else 0
    if n < deaths:
        Path(counter).write_text(str(n + 1))
        os._exit(1)
    return n


def test_a_task_outlives_more_worker_deaths_than_dasks_default(tmp_path):
    """dask fails a task after 3 workers die under it; the nannies restart them, so more are allowed."""
    assert dask.config.get("distributed.scheduler.allowed-failures") == 3
    with connect(n_workers=1, threads_per_worker=1, memory_limit="1GB", quiet=True) as client:
        assert client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures) == 20
        future = client.submit(_die_until, str(tmp_path / "deaths"), 4, pure=False)
        assert future.result(timeout=120) == 4  # 4 > 3 deaths, then the task ran
    with dask.config.set({"distributed.scheduler.allowed-failures": 50}):  # a higher setting is kept
        with connect(n_workers=1, threads_per_worker=1, quiet=True) as client:
            assert client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures) == 50


def test_dashboard_link_printed_unless_quiet_and_everything_closed(capsys):
    with connect(n_workers=1, threads_per_worker=1, interface="lo") as client:
        cluster = client.cluster
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
    err = capsys.readouterr().err
    assert "dashboard: http://127.0.0.1:" in err and "LocalCluster" in err
    assert client.status == "closed"
    assert cluster.status == Status.closed

    with connect(**SMALL):
        pass
    assert capsys.readouterr().err == ""


def test_unknown_interface_is_a_clear_error():
    with pytest.raises(ValueError, match="nosuchnic0"):
        with connect(interface="nosuchnic0", **QUIET):
            pass


def test_adapt_scales_a_local_cluster_from_zero():
    options = {"threads_per_worker": 1, "memory_limit": "1GB", "quiet": True}
    with connect(n_workers=0, adapt=(0, 1), **options) as c:
        assert c.cluster._adaptive is not None
        assert len(c.scheduler_info()["workers"]) == 0
        assert int(da.ones(100, chunks=10).sum().compute()) == 100  # needs the adaptive worker


def test_tls_security_passes_through():
    require_cryptography()
    security = Security.temporary()
    with connect(n_workers=1, threads_per_worker=1, security=security, quiet=True) as client:
        assert client.scheduler.address.startswith("tls://127.0.0.1:")
        assert client.submit(sum, [1, 2, 3]).result() == 6


# ------------------------------------------------------------------------------ existing schedulers
def test_existing_scheduler_by_address_and_by_file_is_left_running(tmp_path):
    sched_file = tmp_path / "scheduler.json"
    with connect(scheduler_kwargs={"scheduler_file": str(sched_file)}, **SMALL) as owner:
        address = owner.scheduler.address
        with connect(address, **QUIET) as client:
            assert client.scheduler.address == address
            assert client.submit(pow, 2, 10).result() == 1024
        assert client.status == "closed"
        assert sched_file.exists()
        with connect(scheduler_file=str(sched_file), **QUIET) as client:
            assert client.scheduler.address == address
        # the scheduler we connected to was not ours to close
        assert owner.submit(pow, 3, 3).result() == 27
        assert owner.cluster.status == Status.running

        args = _parser().parse_args(["--scheduler", address])
        with connect_from_args(args) as client:
            assert client.scheduler.address == address
        args = _parser().parse_args(["--scheduler-file", str(sched_file)])
        with connect_from_args(args) as client:
            assert client.scheduler.address == address
        assert owner.submit(pow, 2, 2).result() == 4


@pytest.mark.parametrize(
    ("cluster", "kwargs", "message"),
    [
        ("slrum", {}, "unknown cluster 'slrum'"),
        ("tcp://127.0.0.1:1", {"n_workers": 2}, "cannot apply to an existing scheduler"),
        ("tcp://127.0.0.1:1", {"scheduler_file": "s.json"}, "not both"),
        ("local", {"config": "deploy/slurm.yaml"}, "slurm, pbs and lsf clusters only"),
        (None, {"adapt": (3, 1)}, "minimum <= maximum"),
        (None, {"n_workers": -1}, "n_workers must be >= 0"),
        (None, {"threads_per_worker": 0}, "threads_per_worker must be >= 1"),
    ],
)
def test_invalid_requests_fail_before_starting_anything(cluster, kwargs, message):
    before = len(psutil.Process().children(recursive=True))
    with pytest.raises(ValueError, match=message):
        with connect(cluster, quiet=True, **kwargs):
            pass
    assert len(psutil.Process().children(recursive=True)) == before


# ------------------------------------------------------------------------------ argument parsing
def test_cluster_arguments_parse():
    args = _parser().parse_args(
        "--cluster slurm --n-workers 4 --threads-per-worker 2 --memory-limit 4GB --adapt 1 8 "
        "--interface ib0 --cluster-config deploy/slurm.yaml".split()
    )
    assert (args.cluster, args.n_workers, args.threads_per_worker) == ("slurm", 4, 2)
    assert (args.memory_limit, args.adapt, args.interface) == ("4GB", [1, 8], "ib0")
    assert args.cluster_config == "deploy/slurm.yaml" and args.scheduler is None
    defaults = _parser().parse_args([])
    assert all(v is None for v in vars(defaults).values())


@pytest.mark.parametrize(
    "argv",
    [
        ["--adapt", "1"],
        ["--n-workers", "-1"],
        ["--threads-per-worker", "0"],
        ["--n-workers", "two"],
        ["--cluster", "slurm", "--scheduler", "tcp://h:8786"],
        ["--scheduler", "tcp://h:8786", "--scheduler-file", "s.json"],
    ],
)
def test_bad_cluster_arguments_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(argv)
    assert exc.value.code == 2
    assert "usage: popsdask fit" in capsys.readouterr().err


# ------------------------------------------------------------------------------ batch systems
EXPECTED_SCRIPT_LINES = {
    "slurm": ["#SBATCH -J popsdask-worker", "#SBATCH --cpus-per-task=4", "#SBATCH --mem=16G", "#SBATCH -t 02:00:00"],
    "pbs": [
        "#PBS -N popsdask-worker",
        "#PBS -l select=1:ncpus=4:mem=16GB",
        "#PBS -l walltime=02:00:00",
        "cd $PBS_O_WORKDIR",
    ],
    "lsf": ["#BSUB -J popsdask-worker", "#BSUB -n 4", "#BSUB -W 02:00"],
}


@pytest.mark.parametrize("kind", ["slurm", "pbs", "lsf"])
def test_deploy_config_produces_the_documented_job_script(kind):
    require_jobqueue()
    default_name = dask.config.get(f"jobqueue.{kind}.name", None)
    with (
        pytest.warns(UserWarning, match="loopback 'lo' only and workers on other nodes"),
        connect(kind, config=str(DEPLOY / f"{kind}.yaml"), **QUIET) as client,
    ):
        script = client.cluster.job_script()
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        _assert_loopback_only([os.getpid()])
        assert dask.config.get(f"jobqueue.{kind}.name") == "popsdask-worker"
        assert client.scheduler_info()["workers"] == {}  # nothing submitted without n_workers
    for line in EXPECTED_SCRIPT_LINES[kind]:
        assert line in script.splitlines(), (line, script)
    assert "source $HOME/venvs/popsdask/bin/activate" in script
    assert "OMP_NUM_THREADS=1" in script
    assert "--nthreads 4" in script and "--memory-limit 16.00GiB" in script
    assert "--local-directory $TMPDIR" in script
    assert "--dashboard-address 127.0.0.1:0" in script  # the workers' own diagnostics server
    assert "--interface lo" in script and "tcp://127.0.0.1:" in script
    assert "0.0.0.0" not in script
    # the file's settings applied only inside the block
    assert dask.config.get(f"jobqueue.{kind}.name", None) == default_name


def test_command_line_overrides_the_config_file():
    require_jobqueue()
    args = _parser().parse_args(
        f"--cluster slurm --cluster-config {DEPLOY / 'slurm.yaml'} --threads-per-worker 2 "
        "--memory-limit 3GiB --interface lo".split()
    )
    args.quiet = True
    with connect_from_args(args, queue="short", account="proj42", walltime="00:20:00") as client:
        script = client.cluster.job_script()
    lines = script.splitlines()
    for line in [
        "#SBATCH --cpus-per-task=2",
        "#SBATCH --mem=3G",
        "#SBATCH -p short",
        "#SBATCH -A proj42",
        "#SBATCH -t 00:20:00",
    ]:
        assert line in lines, (line, script)
    assert "--nthreads 2" in script and "--memory-limit 3.00GiB" in script


def test_slurm_processes_split_threads_and_memory(tmp_path):
    require_jobqueue()
    size = {"threads_per_worker": 2, "memory_limit": "2GiB", "interface": "lo", **QUIET}
    with connect("slurm", processes=3, **size) as c:
        script = c.cluster.job_script()
    assert "#SBATCH --cpus-per-task=6" in script and "#SBATCH --mem=6G" in script
    assert "--nworkers 3" in script and "--nthreads 2" in script


def test_tls_security_passes_through_to_job_scripts(tmp_path):
    require_jobqueue()
    require_cryptography()
    with connect(
        "slurm",
        security=True,
        shared_temp_directory=str(tmp_path),
        interface="lo",
        threads_per_worker=1,
        memory_limit="1GiB",
        **QUIET,
    ) as c:
        assert c.scheduler.address.startswith("tls://127.0.0.1:")
        script = c.cluster.job_script()
    assert "tls://127.0.0.1:" in script and "--tls-ca-file" in script and "--tls-key" in script


def test_named_interface_is_used_by_scheduler_and_workers():
    require_jobqueue()
    size = {"threads_per_worker": 1, "memory_limit": "1GiB", **QUIET}
    with connect("pbs", interface="lo", **size) as c:
        assert c.scheduler.address.startswith("tcp://127.0.0.1:")
        assert "--interface lo" in c.cluster.job_script()
    with pytest.raises(ValueError, match="nosuchnic0"):
        with connect("pbs", interface="nosuchnic0", **size):
            pass


def test_missing_job_size_names_the_options():
    require_jobqueue()
    with pytest.raises(ValueError, match="--threads-per-worker.*--memory-limit"):
        with connect("lsf", interface="lo", **QUIET):
            pass


def test_cluster_config_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cluster_config(tmp_path / "missing.yaml")
    wrong = tmp_path / "pbs_only.yaml"
    wrong.write_text("jobqueue:\n  pbs:\n    cores: 2\n")
    match = r"no 'jobqueue.slurm' section \(found jobqueue sections: \['pbs'\]\)"
    with pytest.raises(ValueError, match=match):
        load_cluster_config(wrong, "slurm")
    listing = tmp_path / "list.yaml"
    listing.write_text("- cores\n- 2\n")
    with pytest.raises(ValueError, match="must be a YAML mapping"):
        load_cluster_config(listing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("jobqueue: {slurm: [\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_cluster_config(broken)
    flat = load_cluster_config(wrong, "pbs")
    assert flat == {"jobqueue.pbs.cores": 2}


def test_deploy_configs_document_every_field():
    """Every setting in deploy/*.yaml carries a comment (the issue asks for documented fields)."""
    for kind in ("slurm", "pbs", "lsf"):
        text = (DEPLOY / f"{kind}.yaml").read_text().splitlines()
        flat = load_cluster_config(DEPLOY / f"{kind}.yaml", kind)
        for key in flat:
            leaf = key.rsplit(".", 1)[1]
            lines = [ln for ln in text if ln.strip().startswith(f"{leaf}:")]
            assert lines, key
            assert all("#" in ln for ln in lines), f"{kind}.yaml: {leaf} has no comment"
        for field in ("cores", "memory", "walltime", "queue", "local-directory", "interface", "job-script-prologue"):
            assert f"jobqueue.{kind}.{field}" in flat or any(k.startswith(f"jobqueue.{kind}.{field}") for k in flat), (
                kind,
                field,
            )
        assert any(k in flat for k in (f"jobqueue.{kind}.account", f"jobqueue.{kind}.project"))
