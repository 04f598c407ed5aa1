"""The documentation: it describes the product (no account of how it was developed), it builds with
warnings as errors, and its Python blocks (the README quick start and the guides') run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDES = ("docs/getting-started", "docs/user-guide")
# a Python block preceded by this comment is shown, not run (it needs a cluster, a model or a data set)
NOT_RUN = re.compile(r"<!-- not run: [^>]+ -->\n\s*```python\n")

# Wording about how the project was made rather than about the product. Upstream references such as
# dask/distributed#3088 are fine; "#3088" alone, "issue 21", "session 12" are not.
PROCESS_WORDING = {
    "numbered work period": re.compile(r"\b(?:session|stop)\s*#?\d+", re.I),
    "work period": re.compile(r"\b(?:this|that|same|earlier|later|previous|next) session\b", re.I),
    "load average": re.compile(r"\bload(?: averages?)?\s*(?:of\s*)?[~≈]?\s*\d", re.I),
    "workstream": re.compile(r"\bworkstreams?\b", re.I),
    "issue number": re.compile(r"\bissues?\s*#?\d+|(?<![\w/.-])#\d+\b", re.I),
    "machine path": re.compile(r"(?<![\w.])/(?:work|tmp)/"),
}
TEXT_SUFFIXES = {".md", ".rst", ".py", ".json", ".txt", ".toml", ".yaml", ".yml", ".sh", ""}


def _documents() -> list[Path]:
    files = [ROOT / "README.md"]
    for top in ("docs", "benchmarks", "popsdask"):
        for path in sorted((ROOT / top).rglob("*")):
            parts = path.relative_to(ROOT).parts
            if path.is_file() and path.suffix in TEXT_SUFFIXES and "__pycache__" not in parts:
                if parts[:2] not in (("docs", "_build"), ("docs", "api")):  # build output
                    files.append(path)
    return files


def test_no_account_of_the_development_process() -> None:
    found = []
    for path in _documents():
        rel = path.relative_to(ROOT)
        for what, pattern in PROCESS_WORDING.items():
            if pattern.search(path.name):
                found.append(f"{rel}: {what} in the file name")
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for what, pattern in PROCESS_WORDING.items():
                if pattern.search(line):
                    found.append(f"{rel}:{n}: {what}: {line.strip()[:120]}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    "line",
    [
        "took 20.6 s in this session at load average ~8",
        "see issue 21 and #18",
        "results in /work/runs/chaos/x.json",
        "benchmarks/results/1m-f64-session12.json",
        "three other workstreams",
        "2 shared cores, load 8–12",
    ],
)
def test_the_wording_check_catches(line: str) -> None:
    assert any(p.search(line) for p in PROCESS_WORDING.values())


@pytest.mark.parametrize(
    "line",
    [
        "dask/distributed#3088 accepted the race",
        "LammpsSession keeps one LAMMPS",
        "peak RSS and the load average around the case",
    ],
)
def test_the_wording_check_allows(line: str) -> None:
    assert not any(p.search(line) for p in PROCESS_WORDING.values())


def python_blocks(text: str) -> list[str]:
    """The ```python blocks of a Markdown text, without those marked ``<!-- not run: ... -->``."""
    skipped = {m.end() for m in NOT_RUN.finditer(text)}
    return [
        m.group(1)
        for m in re.finditer(r"```python\n(.*?)\n```", text, re.S)
        if m.start() + len("```python\n") not in skipped
    ]


def readme_quick_start() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return python_blocks(text.split("\n## Python quick start\n", 1)[1])[0]


def run_as_script(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """A block saved as a file and run by a fresh interpreter (Dask worker processes re-import it)."""
    script = cwd / "block.py"
    script.write_text(code, encoding="utf-8")
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=900, cwd=cwd)


def _guide_blocks() -> list:
    blocks = []
    for folder in GUIDES:
        for page in sorted((ROOT / folder).glob("*.md")):
            for k, code in enumerate(python_blocks(page.read_text(encoding="utf-8"))):
                blocks.append(pytest.param(code, id=f"{page.stem}-{k}"))
    return blocks


def test_guides_show_the_readme_quick_start() -> None:
    quickstart = (ROOT / "docs/getting-started/quickstart.md").read_text(encoding="utf-8")
    assert readme_quick_start() in python_blocks(quickstart)


def test_not_run_marker_is_honoured() -> None:
    text = "<!-- not run: needs SLURM -->\n```python\nraise SystemExit(1)\n```\n\n```python\nx = 1\n```\n"
    assert python_blocks(text) == ["x = 1"]


@pytest.mark.slow
def test_readme_quick_start_runs_as_a_script(tmp_path: Path) -> None:
    code = readme_quick_start()
    assert 'if __name__ == "__main__":' in code  # the LocalCluster's workers re-import the script
    proc = run_as_script(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pass 4/4" in proc.stdout and "envelope violation" in proc.stdout
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["energy"]["n"] == 2000 and metrics["force"]["n"] == 12000


@pytest.mark.slow
@pytest.mark.parametrize("code", [b for b in _guide_blocks() if b.values[0] != readme_quick_start()])
def test_guide_python_block_runs(code: str, tmp_path: Path) -> None:
    (tmp_path / "deploy").symlink_to(ROOT / "deploy")  # blocks name the repository's deploy/ files
    proc = run_as_script(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "docs", str(tmp_path / "html")],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert (tmp_path / "html" / "api" / "generated" / "popsdask.engine.estimator.html").exists()
