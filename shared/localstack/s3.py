"""The local S3 API server: moto's server mode (MinIO binaries cannot be fetched here).

moto keeps every bucket and object in memory: fine for development, but the data
is gone when the server stops. ``state_dir`` only holds the pid and log files of
a spawned server; it does not persist objects.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class PortBusy(RuntimeError):
    """The port the server should listen on is already taken."""


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortBusy(f"cannot start the S3 server: port {host}:{port} is already in use") from None
            raise


def _wait_listening(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class S3Server:
    """moto's S3 API on ``host:port``: in-process (``start``/``stop``) or detached (``spawn``)."""

    def __init__(self, port: int = 9000, host: str = "127.0.0.1", state_dir: str | Path | None = None) -> None:
        self.port = port
        self.host = host
        self.state_dir = Path(state_dir) if state_dir else None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Serve in a background thread of this process; PortBusy when the port is taken."""
        from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        _check_port_free(self.host, self.port)
        app = DomainDispatcherApplication(create_backend_app)
        try:
            self._server = make_server(self.host, self.port, app, threaded=True,
                                       request_handler=MotoRequestHandler)
        except (OSError, SystemExit) as exc:
            raise PortBusy(f"cannot start the S3 server on {self.host}:{self.port}: {exc}") from None
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), name="s3-server", daemon=True)
        self._thread.start()
        if not _wait_listening(self.host, self.port, timeout):
            self.stop()
            raise RuntimeError(f"the S3 server did not listen on {self.url} within {timeout}s")
        log.info("S3 server listening on %s (moto, in-memory)", self.url)

    def stop(self) -> None:
        """Stop the in-process server (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def spawn(self, log_path: str | Path | None = None, timeout: float = 15.0) -> int:
        """Start a detached server process (own session) that outlives the caller; returns its pid."""
        _check_port_free(self.host, self.port)
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            log_path = log_path or self.state_dir / "s3.log"
        with open(log_path or os.devnull, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "shared.localstack.s3", "--host", self.host, "--port", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        if not _wait_listening(self.host, self.port, timeout) or proc.poll() is not None:
            proc.kill()
            raise RuntimeError(f"the S3 server did not start on {self.url}; see {log_path or 'its output'}")
        if self.state_dir is not None:
            (self.state_dir / "s3.pid").write_text(str(proc.pid))
        return proc.pid


def main(argv: list[str] | None = None) -> int:
    """``python -m shared.localstack.s3 --port 9000``: serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description="Local S3 API server (moto, in-memory)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    server = S3Server(port=args.port, host=args.host)
    try:
        server.start()
    except PortBusy as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    stopping.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
