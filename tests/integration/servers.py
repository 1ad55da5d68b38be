"""Run a function under the production server (``kinfer serve``: gunicorn gthread) for HTTP tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def settings_env(settings: Any) -> dict[str, str]:
    """The environment that reproduces ``settings`` in a child process."""
    from dataclasses import fields

    env = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        env[f.metadata["env"]] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return env


@contextmanager
def serve_function(folder: str, target: str, port: int, settings: Any,
                   extra_env: Mapping[str, str] | None = None, threads: int = 8) -> Iterator[str]:
    """Serve ``functions/<folder>/main.py`` on 127.0.0.1:``port``; yields the base URL."""
    env = {**os.environ, **settings_env(settings), "K_SERVICE": folder, **dict(extra_env or {})}
    cmd = [sys.executable, "-m", "shared.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--target", target, "--source", f"functions/{folder}/main.py", "--threads", str(threads)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(base + "/health", proc)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise RuntimeError(f"server exited with {proc.returncode}:\n{out[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")
