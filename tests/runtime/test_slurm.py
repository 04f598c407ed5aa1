"""popsdask on a real SLURM: a one-node cluster on localhost, Dask workers as real batch jobs.

The module fixture installs SLURM from Debian's packages when it is missing (root and apt only),
starts private ``munged``, ``slurmctld`` and ``slurmd`` daemons in a temporary directory (their
own config via ``SLURM_CONF``, their own munge socket and key, free ports: nothing in /etc is
touched), and stops exactly those processes by PID afterwards. Workers are submitted by
``dask_jobqueue.SLURMCluster`` through :func:`popsdask.runtime.cluster.connect`. Skipped, with the
reason, only where SLURM cannot be installed (not root, no apt, no package registry).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import pytest
from distributed import get_task_stream

import popsdask
from popsdask.runtime.cluster import connect
from tests.conftest import misspecified

from .test_cluster import _assert_loopback_only, require_jobqueue

pytestmark = [pytest.mark.slurm, pytest.mark.slow]  # real batch jobs: minutes
ROOT = Path(__file__).resolve().parents[2]

SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin"])
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "sinfo")
N_ROWS, N_FEATURES, CHUNK_ROWS = 4000, 10, 500  # 8 chunks per pass
SLOW_READ_S = 0.5  # per chunk read in the cancellation test: keeps the fit running ~10 s


def _which(name: str) -> str | None:
    return shutil.which(name, path=SBIN)


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def ensure_slurm_installed() -> None:
    """Install slurm-wlm and munge with apt-get when missing; skip only if that is impossible."""
    missing = [b for b in DAEMONS + CLIENTS if _which(b) is None]
    if not missing:
        return
    why = f"SLURM is not installed ({', '.join(missing)} missing)"
    if os.geteuid() != 0:
        pytest.skip(f"{why} and this is not root, so it cannot be installed (as root: apt-get install slurm-wlm munge)")
    if _which("apt-get") is None:
        pytest.skip(f"{why} and there is no apt-get to install slurm-wlm and munge with")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=120"]
    update = subprocess.run([*apt, "update"], env=env, capture_output=True, text=True, timeout=300)
    install = subprocess.run(
        [*apt, "install", "-y", "-q", "slurm-wlm", "munge"], env=env, capture_output=True, text=True, timeout=600
    )
    if install.returncode != 0:
        out = update.stdout + update.stderr + install.stdout + install.stderr
        offline = (
            "Unable to locate package",
            "Temporary failure resolving",
            "Could not resolve",
            "Failed to fetch",
            "Network is unreachable",
            "has no installation candidate",
        )
        if any(marker in out for marker in offline):
            pytest.skip(f"{why} and the package registry is unreachable:\n{_tail(out)}")
        pytest.fail(f"apt-get install slurm-wlm munge failed:\n{_tail(out)}")
    still = [b for b in DAEMONS + CLIENTS if _which(b) is None]
    if still:
        pytest.fail(f"installed slurm-wlm and munge but {still} are still missing")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalSlurm:
    """A private one-node SLURM (munged, slurmctld, slurmd) under ``root``."""

    root: Path
    node: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": SBIN}

    def run(self, *cmd: str, check: bool = True) -> str:
        out = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=30)
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr.strip()}")
        return out.stdout

    def job_states(self) -> dict[str, str]:
        """Job id -> state of every job this controller knows (squeue)."""
        lines = self.run("squeue", "-h", "-o", "%i %T").split("\n")
        return dict(line.split() for line in lines if line.strip())

    def write_config(self) -> None:
        r = self.root
        for sub in ("state", "spool", "log", "work"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        key = r / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.conf.write_text(f"""\
ClusterName=popsdasktest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={r}/munge.sock
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
KillWait=5
NodeName={self.node} NodeAddr=127.0.0.1 CPUs=2 RealMemory=4096 State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")

    def _spawn(self, name: str, *args: str) -> None:
        log = open(self.root / "log" / f"{name}.out", "w")  # noqa: SIM115 (closed with the process)
        self.procs[name] = subprocess.Popen([_which(name), *args], stdout=log, stderr=subprocess.STDOUT, env=self.env)
        log.close()

    def _wait(self, what: str, ready, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
            if dead:
                raise RuntimeError(f"{dead} exited while waiting for {what}:\n{self.logs()}")
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"timed out waiting for {what}:\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(
            f"== {f.name}\n{_tail(f.read_text(errors='replace'))}"
            for f in sorted((self.root / "log").glob("*"))
            if f.is_file()
        )

    def start(self) -> None:
        self.write_config()
        r = self.root
        self._spawn(
            "munged",
            "-F",
            "-f",
            f"--socket={r}/munge.sock",
            f"--key-file={r}/munge.key",
            f"--pid-file={r}/munged.pid",
            f"--log-file={r}/log/munged.log",
            f"--seed-file={r}/munged.seed",
        )
        self._wait("munged", (r / "munge.sock").exists)
        self._spawn("slurmctld", "-D", "-f", str(self.conf))
        self._wait("slurmctld", lambda: self.run("sinfo", "-h", check=False).strip() != "")
        self._spawn("slurmd", "-D", "-f", str(self.conf), "-N", self.node)
        self._wait("an idle node", lambda: self.run("sinfo", "-h", "-o", "%T", check=False).strip() == "idle")

    def stop(self) -> list[str]:
        """Cancel our jobs, stop our daemons by PID; return the stragglers killed (pid: cmd)."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--partition=debug", check=False)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self.job_states():
                time.sleep(0.3)
            self.wait_for_job_processes()
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        # job processes (dask workers) that outlived their daemons: ours by their command
        # line, which names our private root (--local-directory).
        stragglers = self._job_processes()
        for proc in stragglers:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        return [f"{p.pid}: {' '.join(p.info['cmdline'] or [])[:200]}" for p in stragglers]

    def _job_processes(self) -> list[psutil.Process]:
        ours = {os.getpid(), *(p.pid for p in self.procs.values())}
        return [
            proc
            for proc in psutil.process_iter(["pid", "cmdline", "status"])
            if proc.pid not in ours
            and proc.info["status"] != psutil.STATUS_ZOMBIE
            and str(self.root) in " ".join(proc.info["cmdline"] or [])
        ]

    def wait_for_job_processes(self, timeout: float = 20.0) -> None:
        """Give cancelled jobs' processes time to exit (SIGTERM, then SIGKILL after KillWait)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._job_processes():
            time.sleep(0.3)


@pytest.fixture(scope="module")
def slurm():
    require_jobqueue()
    ensure_slurm_installed()
    cluster = LocalSlurm(Path(tempfile.mkdtemp(prefix="popsdask-slurm-")))
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SLURM_CONF", str(cluster.conf))  # dask-jobqueue's sbatch/scancel calls
            mp.setenv("PATH", SBIN)
            cluster.start()
            yield cluster
    finally:
        stragglers = cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)
        assert not stragglers, f"job processes survived SLURM's shutdown: {stragglers}"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    X, y, w = misspecified(n=N_ROWS, p=N_FEATURES, seed=7)
    path = tmp_path_factory.mktemp("slurm") / "train.zarr"
    popsdask.write_store(path, X, y, weight=w, chunk_rows=CHUNK_ROWS)
    return path


@pytest.fixture(scope="module")
def reference(store):
    """The same fit on a LocalCluster."""
    with connect(
        "local", n_workers=2, threads_per_worker=1, memory_limit="1GiB", quiet=True, dashboard_address="127.0.0.1:0"
    ):
        return popsdask.fit(str(store))


def _worker_options(slurm: LocalSlurm) -> dict:
    # workers import this module (the slow reader below) by name: put its root on their path
    import_root = Path(__file__).resolve().parents[__name__.count(".")]
    return {
        "n_workers": 2,
        "threads_per_worker": 1,
        "memory_limit": "1GiB",
        "quiet": True,
        "interface": "lo",
        "queue": "debug",
        "walltime": "00:10:00",
        "local_directory": str(slurm.root / "work"),
        "log_directory": str(slurm.root / "log"),
        "job_script_prologue": [f'export PYTHONPATH="{import_root}:$PYTHONPATH"'],
        "dashboard_address": "127.0.0.1:0",
    }


def _jobs_by_address(client) -> dict[str, str]:
    """Worker address -> SLURM job id, for the workers connected now."""
    names = {info["name"]: addr for addr, info in client.scheduler_info()["workers"].items()}
    return {names[name]: job.job_id for name, job in client.cluster.workers.items() if name in names}


def _assert_same_posterior(post, ref) -> None:
    np.testing.assert_allclose(post.coef_, ref.coef_, rtol=1e-10, atol=0)
    np.testing.assert_allclose(post.sigma_, ref.sigma_, rtol=1e-10, atol=0)
    np.testing.assert_allclose(post.lower_, ref.lower_, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(post.upper_, ref.upper_, rtol=1e-9, atol=1e-14)
    assert post.alpha_ == pytest.approx(ref.alpha_, rel=1e-10)
    assert post.lambda_ == pytest.approx(ref.lambda_, rel=1e-10)


def test_fit_on_slurm_workers_matches_local_cluster(slurm, store, reference):
    with connect("slurm", **_worker_options(slurm)) as client:
        client.wait_for_workers(2, timeout=90)
        jobs = _jobs_by_address(client)
        assert len(jobs) == 2
        states = slurm.job_states()
        assert all(states.get(job) == "RUNNING" for job in jobs.values()), (jobs, states)
        # the workers are the batch jobs themselves, not processes beside them
        in_job = client.run(lambda: os.environ.get("SLURM_JOB_ID"))
        assert in_job == jobs
        assert "#SBATCH -p debug" in client.cluster.job_script()
        worker_pids = list(client.run(os.getpid).values())
        _assert_loopback_only([os.getpid(), *worker_pids])

        with get_task_stream(client) as stream:
            post = popsdask.fit(str(store))
        used = {task["worker"] for task in stream.data}
        assert used == set(jobs), "both SLURM workers should have run fit tasks"
    _assert_same_posterior(post, reference)
    assert post.basis_.shape == reference.basis_.shape
    deadline = time.monotonic() + 30  # connect() closed the cluster: its jobs are cancelled
    while time.monotonic() < deadline and set(jobs.values()) & set(slurm.job_states()):
        time.sleep(0.3)
    assert not set(jobs.values()) & set(slurm.job_states())


def slow_read(block: np.ndarray) -> np.ndarray:
    """Identity that takes SLOW_READ_S: a stand-in for a slow parallel filesystem."""
    time.sleep(SLOW_READ_S)
    return block


def test_fit_survives_a_worker_job_cancelled_mid_fit(slurm, store, reference):
    ds = popsdask.open_store(store)
    X = ds["X"].data.map_blocks(slow_read, dtype=ds["X"].dtype)
    y, w = ds["y"].data, ds["weight"].data
    outcome: dict = {}

    def run_fit() -> None:
        try:
            outcome["posterior"] = popsdask.fit(X, y, weight=w)
        except BaseException as exc:  # reported by the main thread
            outcome["error"] = exc

    with connect("slurm", **_worker_options(slurm)) as client:
        client.wait_for_workers(2, timeout=90)
        jobs = _jobs_by_address(client)
        with get_task_stream(client) as stream:
            fit_thread = threading.Thread(target=run_fit, daemon=True)
            fit_thread.start()
            # wait until pass 2 has left leverage blocks in the memory of both workers: the
            # later passes need them, so losing a worker now forces recomputation
            deadline = time.monotonic() + 60
            holders: list[str] = []
            while time.monotonic() < deadline and fit_thread.is_alive():
                held = client.has_what()
                holders = [a for a, keys in held.items() if any("block_leverage" in str(k) for k in keys)]
                if len(holders) == 2:
                    break
                time.sleep(0.05)
            assert len(holders) == 2, f"leverage blocks never spread over both workers: {holders}"
            victim = holders[0]
            slurm.run("scancel", jobs[victim])
            mid_fit = fit_thread.is_alive()

            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and victim in client.scheduler_info()["workers"]:
                time.sleep(0.1)
            assert victim not in client.scheduler_info()["workers"], "the victim is still there"
            assert jobs[victim] not in {j for j, s in slurm.job_states().items() if s == "RUNNING"}
            fit_thread.join(timeout=150)
        assert not fit_thread.is_alive(), "the fit did not finish after a worker was lost"
        assert mid_fit, "the fit had already finished when the job was cancelled"
    if "error" in outcome:
        raise outcome["error"]
    _assert_same_posterior(outcome["posterior"], reference)
    leverage_runs = [t for t in stream.data if "block_leverage" in str(t["key"])]
    assert len(leverage_runs) > N_ROWS // CHUNK_ROWS, (
        "no leverage block was recomputed: the cancelled worker's results were not needed, "
        "so the test did not exercise recovery"
    )
    assert {t["worker"] for t in leverage_runs} == set(jobs)


def test_example_batch_script_runs_a_fit_inside_one_job(slurm, store, reference, tmp_path):
    """deploy/slurm-fit.sbatch as documented: scheduler in the job, srun workers, popsdask fit."""
    posterior = tmp_path / "posterior.zarr"
    run_dir = tmp_path / "run"
    exports = ",".join(
        [
            "ALL",
            f"STORE={store}",
            f"POSTERIOR={posterior}",
            "POPSDASK_INTERFACE=lo",
            f"POPSDASK_RUN_DIR={run_dir}",
            f"TMPDIR={slurm.root / 'work'}",
        ]
    )
    job = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "-N1",
            "-n2",
            "--ntasks-per-node=2",
            "--cpus-per-task=1",
            "--mem=2G",
            "-p",
            "debug",
            "-t",
            "00:05:00",
            f"--output={tmp_path / 'job.out'}",
            f"--export={exports}",
            str(ROOT / "deploy" / "slurm-fit.sbatch"),
        ],
        env=slurm.env,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        check=True,
    ).stdout.strip()
    deadline = time.monotonic() + 150  # poll faster than `sbatch --wait` does
    while time.monotonic() < deadline and job in slurm.job_states():
        time.sleep(0.5)
    record = slurm.run("scontrol", "show", "job", "-o", job)
    log = (tmp_path / "job.out").read_text() if (tmp_path / "job.out").exists() else ""
    assert "JobState=COMPLETED" in record and "ExitCode=0:0" in record, f"{record}\n{log}\n{slurm.logs()}"
    assert "popsdask: dashboard http://127.0.0.1:8787" in log
    workers = sorted(run_dir.glob("worker-*.log"))
    assert len(workers) == 2 and all("Registered to" in w.read_text() for w in workers)
    _assert_same_posterior(popsdask.Posterior.load(posterior), reference)


if __name__ == "__main__":  # pragma: no cover - manual: python -m tests.test_slurm
    sys.exit(pytest.main([__file__, "-v"]))
