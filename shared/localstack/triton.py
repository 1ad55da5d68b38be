"""The local Triton Inference Server: the real ``tritonserver`` of the nvidia-pytriton wheel.

The wheel ships the binary and the Python backend only (CPU works). ``TritonServer``
assembles a backend folder under ``state_dir``, starts the server on the given
ports in explicit model-control mode, waits for ``/v2/health/ready`` and stops it
again: in the foreground (tests, context manager) or detached in its own session so
that ``kinfer up`` can exit and ``stop_pid`` ends it later.

Two ways to use it: ``load_models=("*",)`` with strict readiness loads a fixed
repository at start (the demo repository in tests); ``load_models=()`` without strict
readiness starts empty, and the model agent (``kinfer agent``) loads and unloads
through the repository API what the registry says (``kinfer up``). Strict readiness
must be off then: one version that fails to load would keep Triton unready forever.
"""

from __future__ import annotations

import atexit
import ctypes.util
import errno
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PY_TAG = f"{sys.version_info.major}.{sys.version_info.minor}"
INSTALL_HINT = "install the stack extras: .venv/bin/pip install -e '.[stack]'"
_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
_STUB = "triton_python_backend_stub"


class TritonStartError(RuntimeError):
    """Triton could not be started; the message holds a one-line reason and fix, then a log tail."""


@dataclass(frozen=True)
class TritonInstall:
    """Where the nvidia-pytriton wheel keeps the pieces of a Triton server."""

    binary: Path
    backend_src: Path
    stub: Path
    libs: Path


def default_repository() -> Path:
    """The demo model repository of this checkout: ``<repo>/models/repository``."""
    return Path(__file__).resolve().parents[2] / "models" / "repository"


def find_install() -> TritonInstall:
    """Locate tritonserver, the Python backend and its stub; TritonStartError if any is missing."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonStartError(f"nvidia-pytriton is not installed: {INSTALL_HINT}")
    root = Path(list(spec.submodule_search_locations)[0])
    server = root / "tritonserver"
    install = TritonInstall(
        binary=server / "bin" / "tritonserver",
        backend_src=server / "backends" / "python",
        stub=server / "python_backend_stubs" / PY_TAG / _STUB,
        libs=root.parent / "nvidia_pytriton.libs",
    )
    for path in (install.binary, install.stub, *(install.backend_src / f for f in _BACKEND_FILES)):
        if not path.exists():
            raise TritonStartError(
                f"missing {path} (Python {PY_TAG} needs it): reinstall nvidia-pytriton; {INSTALL_HINT}"
            )
    return install


def libpython_dirs() -> list[str]:
    """Extra library folders needed to find libpython for the backend stub ([] if ld finds it)."""
    if ctypes.util.find_library(f"python{PY_TAG}"):
        return []
    base_lib = Path(sys.base_prefix) / "lib"
    if (base_lib / f"libpython{PY_TAG}.so.1.0").exists():
        return [str(base_lib)]
    raise TritonStartError(
        f"libpython{PY_TAG} not found (the Python backend stub links it): apt-get install libpython{PY_TAG}"
    )


def prepare_backend_dir(state_dir: Path, install: TritonInstall | None = None) -> Path:
    """Assemble ``<state_dir>/backends/python/`` (backend library, utils, stub); return ``<state_dir>/backends``."""
    install = install or find_install()
    target = Path(state_dir) / "backends" / "python"
    target.mkdir(parents=True, exist_ok=True)
    sources = [install.backend_src / f for f in _BACKEND_FILES] + [install.stub]
    for src in sources:
        dst = target / src.name
        if not dst.exists() or dst.stat().st_size != src.stat().st_size:
            shutil.copy2(src, dst)
    return target.parent


def triton_command(
    binary: Path,
    backend_dir: Path,
    repository: Path,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    host: str = "127.0.0.1",
    load_models: tuple[str, ...] = ("*",),
    strict_readiness: bool = True,
) -> list[str]:
    """The tritonserver command line: explicit model control loading ``load_models`` at start (none:
    the model agent loads them), quiet, sized for a small CPU box."""
    loads = [arg for model in load_models for arg in ("--load-model", model)]
    return [
        str(binary),
        "--backend-directory",
        str(backend_dir),
        "--model-repository",
        str(repository),
        "--model-control-mode",
        "explicit",
        *loads,
        "--strict-readiness",
        "true" if strict_readiness else "false",
        "--http-address",
        host,
        "--http-port",
        str(http_port),
        "--grpc-address",
        host,
        "--grpc-port",
        str(grpc_port),
        "--metrics-address",
        host,
        "--metrics-port",
        str(metrics_port),
        "--allow-gpu-metrics",
        "false",
        "--pinned-memory-pool-byte-size",
        "0",
        "--log-verbose",
        "0",
        "--exit-timeout-secs",
        "5",
        # Unique shared-memory names, so several servers on one machine do not collide.
        "--backend-config",
        f"python,shm-region-prefix-name=kinfer{grpc_port}_{os.getpid()}_",
    ]


def triton_env(libs: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment: the venv's ``python`` first on PATH (the stub runs it), the wheel's libraries."""
    env = {
        "PATH": os.pathsep.join([str(Path(sys.prefix) / "bin"), "/usr/local/bin", "/usr/bin", "/bin"]),
        "LD_LIBRARY_PATH": os.pathsep.join([str(libs), *libpython_dirs()]),
        "OMP_NUM_THREADS": "1",
        "LANG": "C.UTF-8",
    }
    env.update(extra or {})
    return env


def check_port_free(host: str, port: int, role: str) -> None:
    """TritonStartError naming the port if something already listens there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise TritonStartError(
                f"Triton {role} port {host}:{port} is already in use: stop what listens "
                f"there (ss -ltnp 'sport = :{port}') or choose another port"
            ) from None


def stop_pid(pid: int, timeout: float = 10.0) -> bool:
    """Stop a (detached) tritonserver by pid: SIGTERM, then SIGKILL its process group. False if not running."""
    if not _is_tritonserver(pid):
        return False
    prefix = _shm_prefix(pid)
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    _kill_group(pid)
    _remove_shm(prefix)
    return True


class TritonServer:
    """One local tritonserver process on fixed ports; a context manager (start / stop)."""

    def __init__(
        self,
        repository: Path,
        state_dir: Path,
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        log_path: Path | None = None,
        host: str = "127.0.0.1",
        env: Mapping[str, str] | None = None,
        load_models: tuple[str, ...] = ("*",),
        strict_readiness: bool = True,
    ) -> None:
        self.repository = Path(repository).resolve()
        self.load_models, self.strict_readiness = tuple(load_models), strict_readiness
        self.state_dir = Path(state_dir).resolve()
        self.ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self.host = host
        self.log_path = Path(log_path) if log_path else self.state_dir / "triton.log"
        self.pid_path = self.state_dir / "triton.pid"
        self._extra_env = dict(env or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._shm_prefix: str | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.ports['grpc']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports['metrics']}/metrics"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 60.0, detach: bool = False) -> None:
        """Start and wait until every model is ready; ``detach`` leaves it running after this process exits."""
        if self._proc is not None and self._proc.poll() is None:
            return
        started = time.monotonic()
        self._proc = self._spawn()
        if not detach:
            atexit.register(_stop_at_exit, weakref.ref(self))
        try:
            self._wait_ready(started + timeout)
        except BaseException:
            self.stop()
            raise
        log.info(
            "Triton ready at %s (grpc %s) in %.1fs, pid %d",
            self.http_url,
            self.grpc_url,
            time.monotonic() - started,
            self._proc.pid,
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL the whole process group; idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        prefix = self._shm_prefix
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("Triton pid %d ignored SIGTERM for %.0fs; killing it", proc.pid, timeout)
        _kill_group(proc.pid)  # the Python backend stubs share the session
        proc.wait()
        _remove_shm(prefix)
        self.pid_path.unlink(missing_ok=True)

    def is_ready(self) -> bool:
        """True when GET /v2/health/ready answers 200 (server up; with strict readiness, every model loaded)."""
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=1.0) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self) -> subprocess.Popen[bytes]:
        install = find_install()
        env = triton_env(install.libs, self._extra_env)
        if not self.repository.is_dir():
            raise TritonStartError(
                f"model repository {self.repository} does not exist: run .venv/bin/python models/build.py"
            )
        for role, port in self.ports.items():
            check_port_free(self.host, port, role)
        backend_dir = prepare_backend_dir(self.state_dir, install)
        cmd = triton_command(
            install.binary,
            backend_dir,
            self.repository,
            self.ports["http"],
            self.ports["grpc"],
            self.ports["metrics"],
            self.host,
            self.load_models,
            self.strict_readiness,
        )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log_file:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.state_dir,
                start_new_session=True,
            )
        self.pid_path.write_text(f"{proc.pid}\n")
        self._shm_prefix = _shm_prefix_of(cmd)
        return proc

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise TritonStartError(self._failure(f"tritonserver exited with code {self._proc.returncode}"))
            if self.is_ready():
                return
            time.sleep(0.05)
        raise TritonStartError(self._failure("Triton was not ready in time"))

    def _failure(self, what: str) -> str:
        """One line of reason (with a hint where known), then the tail of the log."""
        lines = _log_lines(self.log_path)
        reason = _reason(lines)
        if "already in use" in reason:
            what += ": a port is already in use (choose other ports or stop the other server)"
        elif "libpython" in reason:
            what += f": libpython{PY_TAG} missing (apt-get install libpython{PY_TAG})"
        return f"{what}: {reason}\n--- last lines of {self.log_path} ---\n" + "\n".join(lines[-20:])


def _log_lines(path: Path) -> list[str]:
    """The log without its blank lines and configuration tables."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip() and line[0] not in "|+"]


def _reason(lines: list[str]) -> str:
    """The most telling error of a Triton log: a model that failed to load, else the last error line."""
    errors = [
        line for line in lines if (line.startswith("E") or "error" in line.lower()) and "CudaDriverHelper" not in line
    ]  # harmless on a CPU-only machine
    failed = [line for line in errors if "failed to load '" in line]
    if not errors:
        return "no error in the log"
    picked = failed[0] if failed else errors[-1]
    message = picked.split("] ", 1)[-1].strip().strip('"')
    return message.split("\\n", 1)[0]  # Triton escapes the traceback's newlines


def _stop_at_exit(ref: weakref.ReferenceType[TritonServer]) -> None:
    server = ref()
    if server is not None:
        server.stop()


def _is_tritonserver(pid: int) -> bool:
    """Guard against pid reuse: only signal a process whose command is tritonserver."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return False
    return cmdline.endswith(b"tritonserver")


def _shm_prefix(pid: int) -> str | None:
    """The Python backend's shared-memory name prefix, read from the server's command line."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    return _shm_prefix_of(args)


def _shm_prefix_of(args: list[str]) -> str | None:
    marker = "shm-region-prefix-name="
    return next((a.split(marker, 1)[1] for a in args if marker in a), None)


def _remove_shm(prefix: str | None) -> None:
    """Delete regions a killed server left in /dev/shm (a clean shutdown leaves none)."""
    if not prefix or not prefix.startswith("kinfer"):
        return
    for leftover in Path("/dev/shm").glob(f"{prefix}*"):
        leftover.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _kill_group(pgid: int, timeout: float = 5.0) -> None:
    """SIGKILL every process of the group and wait until none is left: SIGKILL is delivered
    asynchronously, and members that are our own children are reaped here (else they stay zombies)."""
    deadline = time.monotonic() + timeout
    try:
        os.killpg(pgid, signal.SIGKILL)
        while time.monotonic() < deadline:
            try:
                os.waitpid(-pgid, os.WNOHANG)
            except ChildProcessError:
                pass
            os.killpg(pgid, 0)
            time.sleep(0.02)
    except (ProcessLookupError, PermissionError):
        pass
