"""`kinfer up`'s one-line errors: a busy port, a missing binary, an old stack."""

from __future__ import annotations

import socket
from typing import Any

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


def test_the_stack_runs_the_model_agent_and_serves_onnx_through_the_python_backend(tmp_path: Any) -> None:
    import tarfile

    from shared.localstack import stack
    from shared.settings import Settings

    assert "agent" in stack._expected_names()
    env = stack.base_env(Settings.from_env(environ={}))
    assert env["ONNX_BACKEND"] == "python" and env["TRITON_URL"] == "127.0.0.1:8001"
    local = stack.local_settings(Settings.from_env(environ={"S3_ENDPOINT_URL": "http://elsewhere:1"}))
    assert (local.onnx_backend, local.s3_endpoint_url) == ("python", "http://127.0.0.1:9000")
    folder = tmp_path / "m"
    (folder / "1" / "__pycache__").mkdir(parents=True)
    (folder / "config.pbtxt").write_text("x")
    (folder / "1" / "model.py").write_text("y")
    (folder / "1" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"z")
    with tarfile.open(stack.pack_folder(folder, tmp_path / "m.tar.gz")) as tar:
        assert sorted(tar.getnames()) == ["1/model.py", "config.pbtxt"]
