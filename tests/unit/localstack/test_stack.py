"""`kinfer up`'s one-line errors: a busy port, a missing binary, an old stack."""

from __future__ import annotations

import socket

import pytest

from shared.localstack import data, procs
from shared.localstack.procs import StackError


def test_busy_port_names_the_part_and_the_fix() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(StackError) as err:
            procs.require_free(port, "the gateway")
    text = str(err.value)
    assert f"port {port}" in text and "the gateway" in text and "kinfer down" in text and "\n" not in text


def test_missing_binary_says_which_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data.shutil, "which", lambda name: None)
    monkeypatch.setattr(data.glob, "glob", lambda pattern: [])
    with pytest.raises(StackError) as err:
        data._binary("initdb", "postgresql")
    assert "apt-get install -y postgresql" in str(err.value)


def test_process_helpers_see_life_and_death() -> None:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    assert procs.alive(proc.pid)
    procs.stop(proc.pid, timeout=5)
    proc.wait(5)
    assert not procs.alive(proc.pid) and not procs.alive(None)
