"""Detached processes of the local stack: spawn, find, wait for, stop.

Each process runs in its own session (so ``kinfer up`` can exit while it keeps
running) and is stopped by signalling its whole process group.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path


class StackError(RuntimeError):
    """A one-line, actionable reason why the local stack cannot start."""


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_free(port: int, what: str) -> None:
    if port_open(port):
        raise StackError(
            f"port {port} (needed for {what}) is already in use: stop whatever listens there "
            f"(`ss -ltnp 'sport = :{port}'` shows it) or run `kinfer down` if it is an old stack"
        )


def spawn(cmd: list[str], log_path: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    full_env.update(env or {})
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )
    return proc.pid


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is not alive, once its other threads are gone too (they hold its sockets)
        with open(f"/proc/{pid}/stat") as f:
            zombie = f.read().split(")")[-1].split()[0] == "Z"
        return not zombie or len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:
        return True


def serving(pid: int | None) -> list[int]:
    """The processes that serve for ``pid``: its uvicorn worker processes (multiprocessing children,
    not the resource tracker) when it has any, else ``pid`` itself; [] when it is not alive."""
    if not alive(pid):
        return []
    assert pid is not None
    workers = []
    for child in _children(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if b"spawn_main" in cmdline and alive(child):
            workers.append(child)
    return sorted(workers) or [pid]


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return found


def stop(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the process group, wait, then SIGKILL it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                return
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 2)
        while time.monotonic() < deadline:
            if not alive(pid):
                return
            time.sleep(0.05)


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(200 <= resp.status < 300)
    except OSError:
        return False


def wait_http(url: str, pid: int | None, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http_ok(url):
            return
        if pid is not None and not alive(pid):
            raise StackError(f"{url} did not come up: the process exited; see {log_path}")
        time.sleep(0.1)
    raise StackError(f"{url} was not healthy within {timeout:.0f}s; see {log_path}")
