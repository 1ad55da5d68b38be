"""Fault-suite fixtures: private Redis, PostgreSQL and Triton processes the tests may kill or pause
(never the machine's), functions served by `kinfer serve` against them, and a bounded load generator.

Every fault test asserts that nothing was lost or duplicated and prints its counts (run with ``-s``
to see them; ``scripts/test`` runs the suite in the default run).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.localstack import procs
from shared.localstack.data import _as_postgres, _binary
from shared.localstack.triton import TritonServer, TritonStartError, default_repository
from tests.conftest import ROOT, PrivateRedis, free_port
from tests.integration.servers import settings_env

# The worker source as knative/ wires it, with seconds instead of the production 30 s steps (8 retries,
# linear 1 s: 36 s before an event is dead-lettered, ample for a new worker to start); the production
# window is checked in tests/unit/batch.
WORKER_MANIFEST = """
apiVersion: eventing.knative.dev/v1alpha1
kind: KafkaSink
metadata: {{name: batch-chunks}}
spec: {{topic: {topic}}}
---
apiVersion: sources.knative.dev/v1beta1
kind: KafkaSource
metadata: {{name: batch-worker-source, namespace: kinfer}}
spec:
  consumerGroup: {group}
  ordering: unordered
  initialOffset: earliest
  topics: [{topic}]
  sink: {{ref: {{apiVersion: serving.knative.dev/v1, kind: Service, name: batch-worker}}}}
  delivery:
    retry: 8
    backoffPolicy: linear
    backoffDelay: PT1S
    deadLetterSink: {{ref: {{apiVersion: serving.knative.dev/v1, kind: Service, name: batch-deadletter}}}}
"""


def worker_manifest(topic: str, group: str) -> str:
    """The relay's manifest: the chunk topic delivered to the batch worker, dead letters to batch_deadletter."""
    return WORKER_MANIFEST.format(topic=topic, group=group)


class PrivatePostgres:
    """An initdb'd PostgreSQL cluster of the test's own on a free port; ``stop``/``start`` at will."""

    def __init__(self) -> None:
        try:
            self.initdb, self.pg_ctl = _binary("initdb", "postgresql"), _binary("pg_ctl", "postgresql")
        except Exception as exc:  # noqa: BLE001 - StackError names the package to install
            pytest.fail(f"cannot create a private PostgreSQL: {exc}", pytrace=False)
        self.folder = Path(tempfile.mkdtemp(prefix="kinfer-faults-pg-"))  # reachable by the postgres user
        self.data = self.folder / "data"
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self.port = free_port()
        self.url = f"postgresql+pg8000://postgres@127.0.0.1:{self.port}/kinfer_faults"
        self._run([self.initdb, "-D", str(self.data), "--auth=trust", "-U", "postgres"])
        self.start()

    def _run(self, cmd: list[str]) -> None:
        done = subprocess.run(_as_postgres(cmd), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.fail(f"{Path(cmd[0]).name} failed: {(done.stderr or done.stdout)[-500:]}", pytrace=False)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run([self.pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.folder / "pg.log"), "-w", "start"])

    def stop(self, mode: str = "immediate") -> None:
        subprocess.run(
            _as_postgres([self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop"]),
            capture_output=True,
            check=False,
        )

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    yield server
    server.remove()


@pytest.fixture
def fault_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    yield server
    server.stop()


class RestartableRedis(PrivateRedis):
    """A private redis-server that can be killed and started again on the same port."""

    def kill(self) -> None:
        self.stop()

    def restart(self) -> None:
        self.start()


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[RestartableRedis]:
    server = RestartableRedis(tmp_path)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fault_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    ports = [free_port() for _ in range(3)]
    server = TritonServer(default_repository(), tmp_path_factory.mktemp("faults-triton"), *ports)
    try:
        server.start(timeout=120)
    except TritonStartError as exc:
        pytest.fail(f"Triton could not start: {exc}", pytrace=False)
    yield server
    server.stop()


@dataclass
class Answer:
    at: float
    status: int  # 0: no answer (connection error or timeout)
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None


class Load:
    """``threads`` clients calling ``send(session) -> requests.Response`` until stopped (bounded by ``limit_s``)."""

    def __init__(
        self, send: Callable[[requests.Session], requests.Response], threads: int = 4, limit_s: float = 60.0
    ) -> None:
        self.send, self.limit_s = send, limit_s
        self.answers: list[Answer] = []
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self) -> None:
        session = requests.Session()
        deadline = time.monotonic() + self.limit_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                self.sent += 1
            try:
                resp = self.send(session)
                headers = {k.lower(): v for k, v in resp.headers.items()}
                answer = Answer(time.monotonic(), resp.status_code, headers, _json(resp))
            except requests.RequestException:
                answer = Answer(time.monotonic(), 0)
            with self._lock:
                self.answers.append(answer)

    def since(self, t: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.at >= t]

    def wait_for(self, predicate: Callable[[Answer], bool], timeout: float, after: float = 0.0) -> float | None:
        """Seconds from ``after`` until an answer after it satisfies ``predicate`` (None on timeout)."""
        start = after or time.monotonic()
        deadline = start + timeout
        while time.monotonic() < deadline:
            hit = next((a for a in self.since(start) if predicate(a)), None)
            if hit is not None:
                return hit.at - start
            time.sleep(0.02)
        return None

    def counts(self) -> Counter[int]:
        with self._lock:
            return Counter(a.status for a in self.answers)


def _json(resp: requests.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return resp.text


def assert_unavailable_answers(answers: list[Answer]) -> None:
    """Every non-200 answer is a JSON 503 with Retry-After in the error shape (never a 500 or a hang)."""
    for answer in answers:
        if answer.status == 200:
            continue
        assert answer.status == 503, (answer.status, answer.body)
        assert int(answer.headers.get("retry-after", "0")) >= 1, answer.headers
        assert isinstance(answer.body, dict) and {"error", "code", "request_id"} <= set(answer.body), answer.body


@contextmanager
def served(
    folder: str,
    target: str,
    settings: Any,
    log_dir: Path,
    extra_env: dict[str, str] | None = None,
    workers: int = 1,
    port: int | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``functions/<folder>/main.py`` under `kinfer serve` on ``port`` (default: a free one), its output in
    a log file (a pipe nobody reads would block the server once full); yields (base URL, process)."""
    port = port or free_port()
    env = {**os.environ, **settings_env(settings), "K_SERVICE": folder, **(extra_env or {})}
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
        target,
        "--source",
        f"functions/{folder}/main.py",
        "--workers",
        str(workers),
    ]
    log_path = log_dir / f"{folder}-{port}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{folder} exited: {log_path.read_text()[-2000:]}", pytrace=False)
            try:
                requests.get(f"{base}/livez", timeout=1)
                break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    pytest.fail(f"{folder} did not answer within 60 s: {log_path.read_text()[-2000:]}", pytrace=False)
                time.sleep(0.1)
        yield base, proc
    finally:
        procs.stop(proc.pid)
        proc.wait(10)
