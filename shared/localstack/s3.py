"""The local S3 API server: moto's server mode (MinIO binaries cannot be fetched here).

moto keeps every bucket and object in memory and has no persistence of its own. With
``data_dir`` the server persists them there (``kinfer up`` uses ``.kinfer/s3``): it loads
the folder before it listens, writes what changed every ``SNAPSHOT_INTERVAL_S`` seconds
and when it stops (SIGTERM), so buckets and objects survive ``kinfer down``/``up``; a
``kill -9`` loses at most the last interval. The folder holds one file per object
(``objects/<sha256 of bucket and key>``) and ``index.json`` (bucket regions; each object's
key, ETag, last-modified time and metadata such as its Content-Type), written atomically
after the objects it names. What is not kept: object versions, in-progress multipart
uploads, bucket policies and notification settings. ``state_dir`` holds the pid and log
files of a spawned server.

With ``keys`` (access key id -> secret; ``kinfer up`` passes S3_ACCESS_KEY_ID and
S3_SECRET_ACCESS_KEY) every request must carry a valid AWS Signature Version 4, in its
``Authorization`` header or, for presigned URLs, in its query, checked by
``shared.localstack.sigv4`` in front of moto: moto itself checks no presigned signature or
expiry, and checks header signatures only against IAM users it generates. Without ``keys``
(the tests' throwaway servers) any signature is accepted, as moto does.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, TypedDict, cast

log = logging.getLogger(__name__)


SNAPSHOT_INTERVAL_S = 2.0
INDEX = "index.json"


class _Entry(TypedDict):
    """One object of the snapshot index: where its data is and what moto needs to rebuild it."""

    bucket: str
    key: str
    file: str
    etag: str
    last_modified: str
    metadata: dict[str, str]


class _Index(TypedDict):
    """``index.json``: each bucket's region, and each object by its data file's name."""

    buckets: dict[str, str]
    objects: dict[str, _Entry]


def _backend() -> Any:
    from moto.core import DEFAULT_ACCOUNT_ID  # type: ignore[attr-defined]
    from moto.s3.models import s3_backends

    return s3_backends[DEFAULT_ACCOUNT_ID]["aws"]


def _object_file(bucket: str, key: str) -> str:
    return hashlib.sha256(f"{bucket}\0{key}".encode()).hexdigest()


def _listing(backend: Any) -> dict[str, tuple[str, list[tuple[str, Any]]]]:
    """Every bucket's region and (key, FakeKey) pairs, copied while request threads may change them."""
    for _ in range(20):
        try:
            return {
                name: (bucket.region_name, list(bucket.keys.items())) for name, bucket in list(backend.buckets.items())
            }
        except RuntimeError:  # a dict changed size while being copied: try again
            time.sleep(0.01)
    raise RuntimeError("the S3 buckets kept changing while being listed")


class Snapshot:
    """Buckets and objects of moto's S3 backend, persisted under ``folder`` (see the module docstring)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.objects = self.folder / "objects"
        self._saved: _Index = {"buckets": {}, "objects": {}}
        self._lock = threading.Lock()

    def restore(self) -> int:
        """Load the folder into the (empty) backend; how many objects were loaded."""
        try:
            index = cast(_Index, json.loads((self.folder / INDEX).read_text()))
        except (OSError, ValueError):
            return 0
        backend, loaded = _backend(), 0
        for name, region in index.get("buckets", {}).items():
            if name not in backend.buckets:
                backend.create_bucket(name, region)
        for entry in index.get("objects", {}).values():
            try:
                value = (self.objects / entry["file"]).read_bytes()
            except OSError:
                log.warning("S3 snapshot: the data of s3://%s/%s is missing; skipped", entry["bucket"], entry["key"])
                continue
            key = backend.put_object(
                entry["bucket"], entry["key"], value, etag=entry["etag"].strip('"'), disable_notification=True
            )
            key.set_metadata(dict(entry["metadata"]))
            key.last_modified = datetime.fromisoformat(entry["last_modified"])
            loaded += 1
        self._saved = index
        return loaded

    def save(self) -> int:
        """Write what changed since the last save; how many objects were written."""
        with self._lock:
            listing = _listing(_backend())
            objects: dict[str, _Entry] = {}
            written = 0
            for bucket, (_, keys) in listing.items():
                for name, key in keys:
                    file = _object_file(bucket, name)
                    entry: _Entry = {
                        "bucket": bucket,
                        "key": name,
                        "file": file,
                        "etag": key.etag,
                        "last_modified": key.last_modified.isoformat(),
                        "metadata": dict(key.metadata),
                    }
                    if self._saved["objects"].get(file) != entry:
                        self._write(self.objects / file, key.value)
                        written += 1
                    objects[file] = entry
            index: _Index = {"buckets": {b: region for b, (region, _) in listing.items()}, "objects": objects}
            if index != self._saved:
                self._write(self.folder / INDEX, json.dumps(index).encode())
                for gone in set(self._saved["objects"]) - set(objects):
                    (self.objects / gone).unlink(missing_ok=True)
                self._saved = index
            return written

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def run(self, stopping: threading.Event, interval: float = SNAPSHOT_INTERVAL_S) -> None:
        """Save every ``interval`` seconds until ``stopping`` is set (errors are logged, never fatal)."""
        while not stopping.wait(interval):
            try:
                self.save()
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("S3 snapshot failed; retrying in %.0fs", interval)


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

    def __init__(
        self,
        port: int = 9000,
        host: str = "127.0.0.1",
        state_dir: str | Path | None = None,
        data_dir: str | Path | None = None,
        keys: Mapping[str, str] | None = None,
    ) -> None:
        self.port = port
        self.host = host
        self.state_dir = Path(state_dir) if state_dir else None
        self.data_dir = Path(data_dir) if data_dir else None
        self.keys = dict(keys) if keys else None  # None: signatures are not checked
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Serve in a background thread of this process; PortBusy when the port is taken."""
        from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app  # type: ignore[attr-defined]
        from werkzeug.serving import make_server

        _check_port_free(self.host, self.port)
        app: Any = DomainDispatcherApplication(create_backend_app)
        if self.keys:
            from shared.localstack.sigv4 import SignatureCheck

            app = SignatureCheck(app, self.keys)
        try:
            self._server = make_server(self.host, self.port, app, threaded=True, request_handler=MotoRequestHandler)
        except (OSError, SystemExit) as exc:
            raise PortBusy(f"cannot start the S3 server on {self.host}:{self.port}: {exc}") from None
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), name="s3-server", daemon=True)
        self._thread.start()
        if not _wait_listening(self.host, self.port, timeout):
            self.stop()
            raise RuntimeError(f"the S3 server did not listen on {self.url} within {timeout}s")
        log.info(
            "S3 server listening on %s (moto, in-memory; %s)",
            self.url,
            "signatures checked" if self.keys else "signatures NOT checked",
        )

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
        cmd = [sys.executable, "-m", "shared.localstack.s3", "--host", self.host, "--port", str(self.port)]
        if self.data_dir is not None:
            cmd += ["--data-dir", str(self.data_dir)]
        env = dict(os.environ)
        if self.keys:  # one key pair, in the environment (never on the command line, which ps shows)
            ((key_id, secret),) = self.keys.items()
            cmd += ["--check-signatures"]
            env |= {"S3_ACCESS_KEY_ID": key_id, "S3_SECRET_ACCESS_KEY": secret}
        with open(log_path or os.devnull, "ab") as out:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
        if not _wait_listening(self.host, self.port, timeout) or proc.poll() is not None:
            proc.kill()
            raise RuntimeError(f"the S3 server did not start on {self.url}; see {log_path or 'its output'}")
        if self.state_dir is not None:
            (self.state_dir / "s3.pid").write_text(str(proc.pid))
        return proc.pid


def main(argv: list[str] | None = None) -> int:
    """``python -m shared.localstack.s3 --port 9000 [--data-dir DIR]``: serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description="Local S3 API server (moto; persisted with --data-dir)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--data-dir", help="load buckets and objects from here and keep them here")
    parser.add_argument(
        "--check-signatures",
        action="store_true",
        help="refuse requests not signed (SigV4) with S3_ACCESS_KEY_ID/S3_SECRET_ACCESS_KEY",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    snapshot = Snapshot(args.data_dir) if args.data_dir else None
    if snapshot is not None:
        log.info("S3 data in %s: %d object(s) loaded", args.data_dir, snapshot.restore())
    keys = None
    if args.check_signatures:
        from shared.settings import Settings

        settings = Settings.from_env()
        keys = {settings.s3_access_key_id: settings.s3_secret_access_key}
    server = S3Server(port=args.port, host=args.host, keys=keys)
    try:
        server.start()
    except PortBusy as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    if snapshot is not None:
        threading.Thread(target=snapshot.run, args=(stopping,), name="s3-snapshot", daemon=True).start()
    stopping.wait()
    server.stop()
    if snapshot is not None:
        log.info("S3 data saved to %s (%d object(s) written)", args.data_dir, snapshot.save())
    return 0


if __name__ == "__main__":
    sys.exit(main())
