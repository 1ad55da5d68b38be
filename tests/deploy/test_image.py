"""The production image holds what runs in the cluster and nothing of the local stack: .dockerignore
keeps the stand-ins (shared/localstack) and the dev-only commands out, and every function and the
`kinfer` command still import and run without them (checked on a copy of what the image gets)."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
from pathlib import Path

from tests.deploy.support import ROOT

DEV_ONLY = ("shared/localstack/", "shared/cli/stack.py", "shared/cli/demo.py")


def excluded() -> list[str]:
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    return [r for r in rules if r.startswith(("shared/", "functions/"))]


def test_the_dev_only_code_stays_out_of_the_image() -> None:
    assert set(DEV_ONLY) <= set(excluded())
    assert "COPY shared ./shared" in (ROOT / "Dockerfile").read_text(), "the context decides what is copied"


def _image_tree(target: Path) -> None:
    rules = [r.rstrip("/") for r in excluded()]

    def ignored(folder: str, names: list[str]) -> set[str]:
        rel = Path(folder).relative_to(ROOT).as_posix()
        skip = {n for n in names if n == "__pycache__"}
        return skip | {n for n in names if any(fnmatch.fnmatchcase(f"{rel}/{n}", r) for r in rules)}

    for top in ("shared", "functions"):
        shutil.copytree(ROOT / top, target / top, ignore=ignored)


def test_every_function_and_the_cli_run_without_the_dev_only_code(tmp_path: Path) -> None:
    _image_tree(tmp_path)
    assert not (tmp_path / "shared" / "localstack").exists() and (tmp_path / "shared" / "cli" / "serve.py").exists()
    folders = sorted(p.parent.name for p in (tmp_path / "functions").glob("*/main.py"))
    script = f"""
import importlib, sys
# The checkout's editable install would find the excluded modules: the image has only the copy.
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
assert sys.modules.get("shared") is None
for name in {folders!r}:
    importlib.import_module(f"functions.{{name}}.main")
from shared.cli import build_parser
commands = build_parser()._subparsers._group_actions[0].choices
assert {{"serve", "db", "agent", "models", "batch", "keys"}} <= set(commands), sorted(commands)
assert not {{"up", "down", "status", "demo"}} & set(commands), sorted(commands)
import shared
assert shared.__file__.startswith({str(tmp_path)!r}), shared.__file__
try:
    import shared.localstack
except ModuleNotFoundError:
    print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr[-3000:]
