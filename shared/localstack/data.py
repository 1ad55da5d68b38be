"""PostgreSQL and Redis for the local stack: use the configured ones when they answer,
otherwise start private ones from the Debian binaries under the state folder."""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from sqlalchemy.engine import make_url

from shared.localstack.procs import StackError, port_open
from shared.settings import Settings


def _binary(name: str, package: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise StackError(f"{name} not found: install it with `apt-get install -y {package}`")
    return found


def _as_postgres(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: drop to the postgres user when we are root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def ensure_postgres(settings: Settings, state: Path) -> int | None:
    """Return None when the configured server answers, else start a private one and return its pid."""
    url = make_url(settings.database_url)
    host, port = url.host or "127.0.0.1", url.port or 5432
    if port_open(port, host):
        return None
    if host not in ("127.0.0.1", "localhost"):
        raise StackError(f"PostgreSQL at {host}:{port} (DATABASE_URL) does not answer")
    initdb, pg_ctl = _binary("initdb", "postgresql"), _binary("pg_ctl", "postgresql")
    data = pg_data_dir(state)
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(data, "postgres", "postgres")
        _run(_as_postgres([initdb, "-D", str(data), "--auth=trust", "-U", url.username or "postgres"]), "initdb")
    log = data / "server.log"
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    _run(_as_postgres([pg_ctl, "-D", str(data), "-o", options, "-l", str(log), "-w", "start"]), "pg_ctl start")
    return int((data / "postmaster.pid").read_text().split()[0])


def ensure_redis(settings: Settings, state: Path) -> int | None:
    """Return None when the configured Redis answers, else start a private one and return its pid."""
    from urllib.parse import urlsplit

    parts = urlsplit(settings.redis_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    if port_open(port, host):
        return None
    if host not in ("127.0.0.1", "localhost"):
        raise StackError(f"Redis at {host}:{port} (REDIS_URL) does not answer")
    server = shutil.which("redis-server")
    if not server:
        raise StackError("redis-server not found: install it with `apt-get install -y redis-server`")
    folder = state / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    pidfile = folder / "redis.pid"
    _run(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "yes",
            "--dir",
            str(folder),
            "--pidfile",
            str(pidfile),
            "--logfile",
            str(folder / "redis.log"),
        ],
        "redis-server",
    )
    deadline = time.monotonic() + 5
    while not (pidfile.exists() and port_open(port, host)):
        if time.monotonic() > deadline:
            raise StackError(f"redis-server did not start; see {folder / 'redis.log'}")
        time.sleep(0.05)
    return int(pidfile.read_text().strip())


def pg_data_dir(state: Path) -> Path:
    """``<state>/postgres``, or, when root runs us from a folder the postgres user cannot
    reach (a 0700 home, say), a folder of its own under /var/lib/postgresql."""
    preferred = state / "postgres"
    if os.geteuid() != 0 or _postgres_can_reach(state):
        return preferred
    digest = hashlib.sha256(str(state.resolve()).encode()).hexdigest()[:10]
    return Path("/var/lib/postgresql") / f"kinfer-{digest}"


def _postgres_can_reach(folder: Path) -> bool:
    done = subprocess.run(
        ["runuser", "-u", "postgres", "--", "test", "-x", str(folder)], capture_output=True, check=False
    )
    return done.returncode == 0


def stop_postgres(state: Path) -> None:
    data = pg_data_dir(state)
    if (data / "postmaster.pid").exists():
        subprocess.run(
            _as_postgres([_binary("pg_ctl", "postgresql"), "-D", str(data), "-m", "fast", "-w", "stop"]),
            capture_output=True,
            check=False,
        )


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise StackError(f"{what} failed: {detail[-1] if detail else 'exit code ' + str(done.returncode)}")
