"""Fixtures shared by the whole suite: a private PostgreSQL database, Redis, settings, services,
free ports, and (for integration tests) a real Triton server.

Integration fixtures never skip: a service that cannot be reached fails the test with
the reason and the fix.
"""

from __future__ import annotations

import os
import random
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("KINFER_TEST_PG", "postgresql+pg8000://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("KINFER_TEST_REDIS", "redis://127.0.0.1:6379/1")


_handed_out: set[int] = set()


def free_port() -> int:
    """A free TCP port in 20000-30000 (below the ephemeral range, which collides with client sockets), never one
    this process was given before: a server is often started after several ports are drawn, and two draws of the
    same free port (a Triton given one port for gRPC and metrics) failed a CI run."""
    for _ in range(200):
        port = random.randint(20000, 30000)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port found in 20000-30000")


_open_clients: list[Any] = []


def function_client(folder: str, target: str) -> Any:
    """``functions/<folder>/main.py`` as functions-framework's async (ASGI) app, driven in process (httpx).

    The client is entered (as ``with TestClient(...)`` does): every request then runs on one event
    loop, as under uvicorn, so the loop-bound async clients (grpc.aio, redis.asyncio) are reused
    instead of being made per request. Clients are closed at the end of the session.
    """
    from functions_framework.aio import create_asgi_app
    from starlette.testclient import TestClient

    client = TestClient(create_asgi_app(target, str(ROOT / "functions" / folder / "main.py")))
    client.__enter__()
    _open_clients.append(client)
    return client


@pytest.fixture(scope="session", autouse=True)
def _close_function_clients() -> Iterator[None]:
    yield
    while _open_clients:
        _open_clients.pop().__exit__(None, None, None)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh, migrated database for this test session, dropped afterwards."""
    from shared.clients import db

    name = f"kinfer_test_{uuid.uuid4().hex[:10]}"
    url = sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    settings = Settings.from_env(environ={}, database_url=url)
    try:
        db.ensure_database(settings)
    except sa.exc.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({exc.orig}); start it "
            "(scripts/test does) or set KINFER_TEST_PG",
            pytrace=False,
        )
    db.upgrade(settings)
    yield url
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"Redis is not reachable at {REDIS_URL} ({exc}); start it (scripts/test does) or set KINFER_TEST_REDIS",
            pytrace=False,
        )
    return REDIS_URL


@pytest.fixture(scope="session")
def base_settings(database_url: str, redis_url: str) -> Settings:
    """Settings for integration tests: real services, auth off unless a test turns it on; any backend_url
    allowed and none probed at registration (the lifecycle tests turn both checks on)."""
    return Settings.from_env(
        environ={},
        database_url=database_url,
        redis_url=redis_url,
        auth_required=False,
        service_name="kinfer-test",
        backend_allowlist=("*",),
        check_backends=False,
    )


@pytest.fixture
def services(base_settings: Settings) -> Iterator[object]:
    """Fresh process services bound to the test settings (the functions use these too)."""
    from shared.services import reset_services

    yield reset_services(base_settings)
    reset_services(None)


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real Triton server (nvidia-pytriton's tritonserver) serving the demo models."""
    from shared.localstack.triton import TritonServer, TritonStartError, default_repository

    ports = [free_port() for _ in range(3)]
    server = TritonServer(
        default_repository(),
        tmp_path_factory.mktemp("triton"),
        http_port=ports[0],
        grpc_port=ports[1],
        metrics_port=ports[2],
    )
    try:
        server.start(timeout=120)
    except TritonStartError as exc:
        pytest.fail(f"Triton could not start: {exc}", pytrace=False)
    yield server
    server.stop()


class PrivateRedis:
    """A redis-server of the test's own, so fault tests can pause or kill it (never the machine's)."""

    def __init__(self, folder: Path) -> None:
        import shutil

        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(
                "redis-server is not installed (Debian package redis-server; scripts/test installs it)", pytrace=False
            )
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.command = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ]
        self.start()

    def start(self) -> None:
        """Start the server (again, after ``stop``) on the same port, empty."""
        import subprocess

        self.proc = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_up()

    def _wait_up(self) -> None:
        import time

        import redis

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.2).ping()
                return
            except redis.RedisError:
                time.sleep(0.05)
        pytest.fail(f"private redis-server on port {self.port} did not start", pytrace=False)

    def pause(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.resume()
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    yield server
    server.stop()
