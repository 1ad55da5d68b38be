"""Run a function under the production server (``kinfer serve``: uvicorn) for HTTP tests."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
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
        if isinstance(value, bool):
            env[f.metadata["env"]] = "true" if value else "false"
        elif isinstance(value, tuple):  # comma-separated lists (CORS_ALLOWED_ORIGINS)
            env[f.metadata["env"]] = ",".join(map(str, value))
        else:
            env[f.metadata["env"]] = str(value)
    return env


@contextmanager
def serve_function(
    folder: str, target: str, port: int, settings: Any, extra_env: Mapping[str, str] | None = None
) -> Iterator[str]:
    """Serve ``functions/<folder>/main.py`` on 127.0.0.1:``port``; yields the base URL."""
    with _serve(
        ["--target", target, "--source", f"functions/{folder}/main.py"], folder, port, settings, extra_env
    ) as base:
        yield base


@contextmanager
def serve_gateway(port: int, settings: Any, extra_env: Mapping[str, str] | None = None) -> Iterator[str]:
    """The local gateway (``kinfer serve --gateway``: every public function by path) on 127.0.0.1:``port``."""
    with _serve(["--gateway"], "gateway", port, settings, extra_env) as base:
        yield base


@contextmanager
def _serve(
    args: list[str], service: str, port: int, settings: Any, extra_env: Mapping[str, str] | None
) -> Iterator[str]:
    env = {**os.environ, **settings_env(settings), "K_SERVICE": service, **dict(extra_env or {})}
    cmd = [sys.executable, "-m", "shared.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *args]
    log = tempfile.TemporaryFile()  # a file, not a pipe: a pipe nobody reads stalls the server once full
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(base + "/livez", proc, log)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _wait(url: str, proc: subprocess.Popen[bytes], log: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            out = log.read().decode(errors="replace")
            raise RuntimeError(f"server exited with {proc.returncode}:\n{out[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


class InProcessServer:
    """``functions/<folder>/main.py`` as functions-framework's async app (or, for folder ``gateway``, the local
    gateway with every public function) under uvicorn, on a free port, in a background thread of this process
    (so tests can reconfigure its services between calls)."""

    def __init__(self, folder: str, target: str) -> None:
        import threading

        import uvicorn
        from functions_framework.aio import create_asgi_app

        from tests.conftest import free_port

        if folder == "gateway":  # every public function by path, as `kinfer serve --gateway` (the CLI's view)
            from shared.cli.serve import gateway_app

            app = gateway_app()
        else:
            app = create_asgi_app(target, str(ROOT / "functions" / folder / "main.py"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"in-process server for {folder} did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
