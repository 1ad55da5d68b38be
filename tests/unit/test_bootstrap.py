"""`scripts/bootstrap.sh` puts `kinfer` on PATH: a symlink in ~/.local/bin (or KINFER_BIN_DIR) to this
checkout's .venv/bin/kinfer, never replacing another checkout's or install's kinfer."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KINFER = ROOT / ".venv" / "bin" / "kinfer"


@pytest.fixture(autouse=True)
def bootstrapped() -> None:
    stamp = ROOT / ".venv" / ".kinfer-installed"
    inputs = (ROOT / "pyproject.toml").read_bytes() + (ROOT / "requirements-dev.lock").read_bytes()
    want = hashlib.sha256(inputs).hexdigest()
    if not stamp.is_file() or stamp.read_text().strip() != want:
        pytest.fail(
            ".venv is not bootstrapped for this pyproject.toml and requirements-dev.lock: run "
            "scripts/bootstrap.sh (scripts/test does)",
            pytrace=False,
        )


def bootstrap(home: Path, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k not in ("KINFER_NO_LINK", "KINFER_BIN_DIR")}
    done = subprocess.run(
        [str(ROOT / "scripts" / "bootstrap.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, "HOME": str(home), "PATH": "/usr/bin:/bin", **env},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_bootstrap_links_kinfer_into_local_bin_and_says_how_to_reach_it(tmp_path: Path) -> None:
    said = bootstrap(tmp_path)
    link = tmp_path / ".local" / "bin" / "kinfer"
    assert link.is_symlink() and link.resolve() == KINFER.resolve()
    assert "is not on PATH" in said and "source .venv/bin/activate" in said
    version = subprocess.run(
        ["kinfer", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": f"{link.parent}:/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert version.returncode == 0 and version.stdout.startswith("kinfer ")
    assert bootstrap(tmp_path) == ""  # again: quiet, nothing changes


def test_another_kinfer_is_left_alone_and_a_dangling_link_replaced(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    other = tmp_path / "other-kinfer"
    other.write_text("#!/bin/sh\n")
    (bin_dir / "kinfer").symlink_to(other)
    said = bootstrap(tmp_path, KINFER_BIN_DIR=str(bin_dir))
    assert "left as is" in said and (bin_dir / "kinfer").resolve() == other.resolve()
    other.unlink()  # that checkout is gone
    bootstrap(tmp_path, KINFER_BIN_DIR=str(bin_dir))
    assert (bin_dir / "kinfer").resolve() == KINFER.resolve()
    assert bootstrap(tmp_path, KINFER_BIN_DIR=str(tmp_path / "none"), KINFER_NO_LINK="1") == ""
    assert not (tmp_path / "none").exists()
