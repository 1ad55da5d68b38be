"""What `kinfer status` shows of a multi-worker function, and that kill -9 of that pid takes it down."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from shared.localstack import procs
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.integration


def test_kill_9_of_the_shown_pid_takes_every_worker_down(tmp_path: Path) -> None:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "shared.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--target",
        "run_inference",
        "--source",
        "functions/infer/main.py",
        "--workers",
        "2",
    ]
    pid = procs.spawn(cmd, tmp_path / "serve.log", {"K_SERVICE": "infer"}, ROOT)
    try:
        procs.wait_http(f"http://127.0.0.1:{port}/livez", pid, 60, tmp_path / "serve.log")
        deadline = time.monotonic() + 20
        while len(procs.serving(pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = procs.serving(pid)
        assert len(workers) == 2 and pid not in workers, workers
        os.kill(pid, signal.SIGKILL)  # the master only, as a person would
        deadline = time.monotonic() + 10
        while (procs.port_open(port) or any(procs.alive(w) for w in workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not procs.port_open(port), "the workers kept serving after their master died"
        assert not any(procs.alive(w) for w in workers)
        print(f"master {pid} killed; workers {workers} gone, port {port} closed")
    finally:
        procs.stop(pid)


def test_a_single_process_server_serves_itself(tmp_path: Path) -> None:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "shared.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--target",
        "run_inference",
        "--source",
        "functions/infer/main.py",
    ]
    pid = procs.spawn(cmd, tmp_path / "serve.log", {"K_SERVICE": "infer"}, ROOT)
    try:
        procs.wait_http(f"http://127.0.0.1:{port}/livez", pid, 60, tmp_path / "serve.log")
        assert procs.serving(pid) == [pid]
    finally:
        procs.stop(pid)
    assert procs.serving(pid) == []
