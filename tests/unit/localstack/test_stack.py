"""`kinfer up`'s one-line errors (a busy port, a missing binary), and `up` on a partly running
stack: it starts only what is missing and, when a step fails, stops only what it started."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from shared.localstack import data, procs, stack
from shared.localstack.procs import StackError
from shared.settings import Settings


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


# -- `kinfer up` on a partly running stack ------------------------------------------------------
SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


class FakeParts:
    """Every part of the stack as a sleeping process; health checks fail for the parts named in ``unhealthy``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, unhealthy: tuple[str, ...] = ()) -> None:
        self.spawned: list[int] = []
        self.port_checks: list[int] = []
        real_spawn = procs.spawn

        def spawn(cmd: list[str], log: Path, env: Any = None, cwd: Any = None) -> int:
            pid = real_spawn(SLEEPER, log, env, cwd)
            self.spawned.append(pid)
            return pid

        def start_plain(name: str) -> Any:
            def start(*args: Any) -> None:  # (comps, logs, say), after the settings for s3
                comps, logs, _ = args[-3:]
                stack._record(comps, name, spawn(SLEEPER, logs / f"{name}.log"), None, logs / f"{name}.log")

            return start

        def wait_http(url: str, pid: int | None, timeout: float, log: Path) -> None:
            if any(f":{port}/" in url for port in unhealthy):
                raise StackError(f"{url} was not healthy within 1s; see {log}")

        monkeypatch.setattr(stack, "state_dir", lambda: tmp_path)
        monkeypatch.setattr(stack, "_start_data", lambda settings, comps, say: None)
        monkeypatch.setattr(stack, "_start_s3", start_plain("s3"))
        monkeypatch.setattr(stack, "_start_triton", start_plain("triton"))
        monkeypatch.setattr(stack, "seed", lambda settings, say=None: None)
        monkeypatch.setattr(stack, "reconcile_batch_jobs", lambda settings, say=None: {})
        monkeypatch.setattr(stack, "_start_agent", lambda env, comps, logs, say: start_plain("agent")(comps, logs, say))
        monkeypatch.setattr(stack, "_prometheus_available", lambda say: True)  # whatever this machine has
        monkeypatch.setattr(stack, "_start_prometheus", start_plain("prometheus"))
        monkeypatch.setattr(stack.procs, "spawn", spawn)
        monkeypatch.setattr(stack.procs, "wait_http", wait_http)
        monkeypatch.setattr(stack.procs, "require_free", lambda port, what: self.port_checks.append(port))

    def stop_all(self) -> None:
        for pid in self.spawned:
            procs.stop(pid, timeout=5)


def _running(tmp_path: Path, **parts: int | None) -> dict[str, Any]:
    state = {
        "components": {n: {"pid": pid, "health": None, "log": str(tmp_path / f"{n}.log")} for n, pid in parts.items()}
    }
    stack._save(state)
    return state


@pytest.fixture
def foreign() -> Any:
    """A process `up` did not start in this run (an s3 server of an earlier `up`)."""
    import subprocess

    proc = subprocess.Popen(SLEEPER, start_new_session=True)
    yield proc
    procs.stop(proc.pid, timeout=5)
    proc.wait(5)


def test_a_failed_up_stops_only_what_it_started(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, foreign: Any) -> None:
    parts = FakeParts(monkeypatch, tmp_path, unhealthy=("8080",))
    _running(tmp_path, s3=foreign.pid, triton=2**22 + 7)  # triton recorded, but its process is gone
    said: list[str] = []
    try:
        with pytest.raises(StackError, match="8080"):
            stack.up(Settings.from_env(environ={}), say=said.append)
        assert procs.alive(foreign.pid), "up stopped a part it had not started"
        assert parts.spawned and not any(procs.alive(pid) for pid in parts.spawned)
        assert list(stack.load_state()["components"]) == ["s3"]
        assert any(m.startswith("already running: s3; starting only triton") for m in said)
        assert any(m.startswith("stopping what this run started: triton,") for m in said)
        assert 9000 not in parts.port_checks and 8001 in parts.port_checks and 8080 in parts.port_checks
        assert stack.AGENT_PORT in parts.port_checks
    finally:
        parts.stop_all()


def test_up_starts_what_is_missing_and_keeps_what_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, foreign: Any
) -> None:
    parts = FakeParts(monkeypatch, tmp_path)
    _running(tmp_path, s3=foreign.pid)
    try:
        state = stack.up(Settings.from_env(environ={}), say=lambda m: None)
        assert state["components"]["s3"]["pid"] == foreign.pid
        assert set(state["components"]) == set(stack._expected_names())
        again = len(parts.spawned)
        said: list[str] = []
        stack.up(Settings.from_env(environ={}), say=said.append)
        assert len(parts.spawned) == again and said == ["the local stack is already running (kinfer status shows it)"]
    finally:
        parts.stop_all()


def test_a_busy_port_of_a_missing_part_starts_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, foreign: Any
) -> None:
    parts = FakeParts(monkeypatch, tmp_path)

    def busy(port: int, what: str) -> None:
        if port == 8090:
            raise StackError(f"port {port} (needed for {what}) is already in use")

    monkeypatch.setattr(stack.procs, "require_free", busy)
    _running(tmp_path, s3=foreign.pid)
    with pytest.raises(StackError, match="8090"):
        stack.up(Settings.from_env(environ={}), say=lambda m: None)
    assert parts.spawned == [] and procs.alive(foreign.pid)
    assert list(stack.load_state()["components"]) == ["s3"]


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


def test_kinfer_up_adds_the_backend_allowlist_of_its_environment_to_its_own() -> None:
    from shared.localstack import stack
    from shared.settings import Settings

    default = stack.base_env(Settings.from_env(environ={}))["BACKEND_ALLOWLIST"].split(",")
    assert default == ["127.0.0.1:8001", stack.UNREACHABLE_BACKEND]
    wider = stack.base_env(Settings.from_env(environ={"BACKEND_ALLOWLIST": "gpu-*:8001, 127.0.0.1:8001"}))
    assert wider["BACKEND_ALLOWLIST"].split(",") == [*default, "gpu-*:8001"]


def test_base_env_passes_the_callback_settings_it_is_given() -> None:
    off = stack.base_env(Settings.from_env(environ={}))
    assert "CALLBACK_SIGNING_SECRET" not in off and "CALLBACK_ALLOWLIST" not in off
    on = stack.base_env(
        Settings.from_env(environ={"CALLBACK_SIGNING_SECRET": "s3cret", "CALLBACK_ALLOWLIST": "127.0.0.1:*"})
    )
    assert on["CALLBACK_SIGNING_SECRET"] == "s3cret" and on["CALLBACK_ALLOWLIST"] == "127.0.0.1:*"


def test_kinfer_up_draws_a_callback_signing_secret_once_keeps_it_private_and_reuses_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import stat

    monkeypatch.setattr(stack, "state_dir", lambda: tmp_path / ".kinfer")
    first = stack.local_callback_secret()
    path = tmp_path / ".kinfer" / stack.CALLBACK_SECRET_FILE
    assert len(first) >= 40 and path.read_text().strip() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    assert stack.local_callback_secret() == first and stat.S_IMODE(path.stat().st_mode) == 0o600  # reused
    path.write_text("")
    assert stack.local_callback_secret() not in ("", first)  # an emptied file gets a new one


def test_kinfer_up_hands_its_callback_secret_to_every_function_unless_its_environment_names_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(stack, "state_dir", lambda: tmp_path)
    seen: list[Settings] = []

    def start(settings: Settings, *args: Any, **kwargs: Any) -> None:
        seen.append(settings)
        raise procs.StackError("stop here")

    monkeypatch.setattr(stack, "_check_ports", lambda missing: None)
    monkeypatch.setattr(stack, "_start_missing", start)
    monkeypatch.setattr(stack, "_prometheus_available", lambda say: False)
    for environ in ({}, {}, {"CALLBACK_SIGNING_SECRET": "operator-set"}):
        with pytest.raises(procs.StackError):
            stack.up(Settings.from_env(environ=environ), say=lambda m: None)
    drawn = (tmp_path / stack.CALLBACK_SECRET_FILE).read_text().strip()
    assert [s.callback_signing_secret for s in seen] == [drawn, drawn, "operator-set"]
    assert stack.base_env(seen[0])["CALLBACK_SIGNING_SECRET"] == drawn


def test_kinfer_ups_s3_server_checks_signatures_with_the_stacks_keys(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from shared.localstack.s3 import S3Server

    seen: list[Any] = []
    monkeypatch.setattr(stack, "state_dir", lambda: tmp_path)
    monkeypatch.setattr(S3Server, "spawn", lambda self, log: seen.append(self.keys) or 4242)
    settings = Settings.from_env(environ={"S3_ACCESS_KEY_ID": "id1", "S3_SECRET_ACCESS_KEY": "sec1"})
    comps: dict[str, Any] = {}
    stack._start_s3(settings, comps, tmp_path / "logs", lambda m: None)  # type: ignore[arg-type]
    assert seen == [{"id1": "sec1"}] and comps["s3"]["pid"] == 4242
