"""The README's examples run as written: every ``bash`` block of README.md (but those marked
``<!-- readme-test: skip (reason) -->``), in order, in one shell, against the local stack.

The shell starts in the repository root without ``.venv/bin`` on PATH and with its own
config folder, as a new user's would; the README's own setup block makes ``kinfer`` callable.
curl fails on an HTTP error status (``--fail-with-body``), every command must succeed.
"""

from __future__ import annotations

import os
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from tests.e2e.conftest import http
from tests.readme import ROOT, bash_blocks, script

pytestmark = pytest.mark.e2e

# Registered by the README (my-iris is deleted again, linear keeps its versions and alias): a rerun on the
# same stack starts from none of them.
README_MODELS = ("my-iris", "linear")


def _clean(stack: dict[str, str]) -> None:
    for name in README_MODELS:
        quoted = urllib.parse.quote(name)
        _, aliases, _ = http("GET", f"{stack['gateway']}/v1/models/by-name/{quoted}/aliases", key=stack["key"])
        for alias in (aliases or {}).get("aliases", []):
            http("DELETE", f"{stack['gateway']}/v1/models/by-name/{quoted}/aliases/{alias['alias']}", key=stack["key"])
        _, page, _ = http("GET", f"{stack['gateway']}/v1/models?name={quoted}", key=stack["key"])
        for model in page["models"]:
            http("DELETE", f"{stack['gateway']}/v1/models/{model['id']}", key=stack["key"])


def _env(home: Path) -> dict[str, str]:
    venv_bin = str(ROOT / ".venv" / "bin")
    path = [p for p in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep) if p and p != venv_bin]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KINFER_", "VIRTUAL_ENV"))}
    return {
        **env,
        "PATH": os.pathsep.join(path),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "KINFER_NO_LINK": "1",
    }


def test_every_runnable_readme_block_runs_as_written(stack: dict[str, str], tmp_path: Path) -> None:
    blocks = bash_blocks()
    assert [b.code for b in blocks[:2]] == ["scripts/up", "scripts/test"], "the two commands stay at the top"
    _clean(stack)
    done = subprocess.run(
        ["bash", "-c", script(blocks)], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=600
    )
    markers = [line for line in done.stderr.splitlines() if line.startswith("::readme block")]
    where = markers[-1].removeprefix("::") if markers else "before the first block"
    assert done.returncode == 0, (
        f"the README {where} failed (exit {done.returncode}):\n"
        f"--- stdout (tail)\n{done.stdout[-4000:]}\n--- stderr (tail)\n{done.stderr[-4000:]}"
    )
    ran = sum(1 for b in blocks if b.skip is None)
    assert len(markers) == ran and ran >= 10
