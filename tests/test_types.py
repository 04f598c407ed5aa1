"""The package type-checks with the committed mypy configuration (pyproject.toml ``[tool.mypy]``:
the flags of ``--strict`` on ``popsdask.core``, the default checks elsewhere)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytest.importorskip("mypy", reason="test extra (mypy) not installed")


@pytest.mark.slow
def test_mypy_passes_on_the_package():
    proc = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=1800
    )  # the files to check and the flags come from pyproject.toml
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    assert "Success: no issues found" in proc.stdout
