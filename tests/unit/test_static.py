"""Static rules the code keeps (configuration in pyproject.toml): mypy on shared/, ruff on the
whole repository, and the package layering of shared/ (import-linter)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

BIN = Path(sys.executable).parent


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_mypy_finds_no_errors_in_shared() -> None:
    done = run(sys.executable, "-m", "mypy")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_ruff_finds_nothing() -> None:
    done = run(str(BIN / "ruff"), "check", "--output-format", "concise", ".")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_packages_import_only_the_layers_below_them() -> None:
    done = run(str(BIN / "lint-imports"), "--no-cache")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "Contracts: 1 kept, 0 broken." in done.stdout


def test_a_module_importing_upwards_breaks_the_layering(tmp_path: Path) -> None:
    """The contract is live: a domain module that imports the web layer is reported."""
    probe = ROOT / "shared" / "batch" / "_layering_probe.py"
    probe.write_text("from shared.web import http  # noqa: F401\n")
    try:
        done = run(str(BIN / "lint-imports"), "--no-cache")
    finally:
        probe.unlink()
    assert done.returncode != 0 and "shared.batch._layering_probe -> shared.web.http" in done.stdout
