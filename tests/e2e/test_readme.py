"""The README's examples run as written: every ``bash`` block of README.md (but those marked
``<!-- readme-test: skip (reason) -->``), in order, in one shell, against the local stack; then the
blocks that register models once more, on the same stack, as a user running the walk-through again would.

The shell starts in the repository root without ``.venv/bin`` on PATH and with its own
config folder, as a new user's would; the README's own setup block makes ``kinfer`` callable.
curl fails on an HTTP error status (``--fail-with-body``), every command must succeed.
"""

from __future__ import annotations

import os
import re
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from tests.e2e.conftest import http
from tests.readme import ROOT, bash_blocks, script

pytestmark = pytest.mark.e2e

# Registered by the README (my-iris is deleted again, linear and first-model keep their versions): a rerun on the
# same stack starts from none of them.
README_MODELS = ("my-iris", "linear", "first-model")
# a block that pushes or registers a model version
REGISTERS = re.compile(r"kinfer models push|-XPOST localhost:8080/v1/models\b(?!/)")


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

    # run again on the same stack: the blocks that register models start over by themselves (a new user's second
    # walk-through, whose database kept the first one's rows: 409 "already exists" before they did)
    again = [b for b in blocks if b.skip is None and REGISTERS.search(b.code)]
    assert len(again) >= 3, "the walk-through's blocks that push or register models"
    done = subprocess.run(
        ["bash", "-c", script(again)], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=600
    )
    markers = [line for line in done.stderr.splitlines() if line.startswith("::readme block")]
    where = markers[-1].removeprefix("::") if markers else "before the first block"
    assert done.returncode == 0, (
        f"the README {where} failed when run a second time (exit {done.returncode}):\n"
        f"--- stdout (tail)\n{done.stdout[-4000:]}\n--- stderr (tail)\n{done.stderr[-4000:]}"
    )
