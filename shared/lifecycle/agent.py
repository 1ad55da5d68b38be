"""The model agent: beside each Triton, it loads what the registry says, and says what is loaded.

One agent per Triton replica (a sidecar in its pod, a process of ``kinfer up``), talking to
its own Triton on localhost through Triton's repository API (explicit model control). It
reconciles at start (a full resync: a replica that scales up from zero loads every version
before its readiness says so), whenever a registry write is announced (Redis pub/sub) and
every AGENT_SYNC_S anyway:

- wanted: every active version in state pending, loading or ready whose backends include this
  agent's backend (AGENT_BACKEND, default TRITON_URL). Versions Kinfer manages are mirrored
  from the S3 model repository into AGENT_REPOSITORY_DIR (Triton's repository) one version
  folder at a time, with a ``config.pbtxt`` whose ``version_policy`` lists exactly the versions
  to load; registered models whose files Kinfer does not manage are mirrored as they are;
- new versions are loaded one at a time (Triton keeps serving the loaded ones while it loads,
  and keeps them when a load fails), so a failure names its version: the version becomes
  ``failed`` with Triton's reason, and nothing else changes;
- a version no longer wanted is unloaded UNLOAD_GRACE_S after it stopped being wanted;
- after each pass the agent beats (``replicas``) with what its Triton has loaded, and moves a
  version to ``ready`` once every live replica of every backend of that version has it.

Only models in its own repository folder are ever unloaded; the agent never touches others.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared import registry
from shared.domain import ModelState
from shared.endpoints import resolve
from shared.errors import InvalidInput, NotFound
from shared.lifecycle import packages, replicas, repository, tritonconfig
from shared.lifecycle.repository import Layout
from shared.lifecycle.tritonapi import TritonRepositoryApi, TritonUnreachable

if TYPE_CHECKING:
    from shared.clients.cache import Cache
    from shared.domain import ModelVersion
    from shared.lifecycle.replicas import AgentStatus, Replicas
    from shared.registry import ModelRegistry
    from shared.settings import Settings

log = logging.getLogger(__name__)
# A version's reason is public (the API, the console): it says what to do, never where the files were (logged).
FILES_GONE = (
    "the files of this version are missing from the model repository (deleted, or this registry's database is "
    "shared with another install's storage); delete this version and push it again"
)

CONFIG = "config.pbtxt"
LIVE = (ModelState.PENDING, ModelState.LOADING, ModelState.READY)  # the states of a version an agent loads
LOADING = (ModelState.PENDING, ModelState.LOADING)  # loaded nowhere, or not everywhere yet


@dataclass
class Wanted:
    """What this agent's Triton should serve: managed versions (model id per Triton version), unmanaged models."""

    managed: dict[str, dict[int, ModelVersion]] = field(default_factory=dict)
    unmanaged: set[str] = field(default_factory=set)


class ModelAgent:
    """Reconciles one local Triton with the registry; see the module docstring."""

    def __init__(
        self,
        registry: ModelRegistry,
        replicas: Replicas,
        cache: Cache,
        s3: Any,
        settings: Settings,
        triton: TritonRepositoryApi | None = None,
        repository_dir: Path | None = None,
        replica: str | None = None,
    ) -> None:
        self.registry = registry
        self.replicas = replicas
        self.cache = cache
        self.s3 = s3
        self.settings = settings
        self.triton = triton or TritonRepositoryApi(
            settings.agent_triton_http, settings.triton_admin_header, settings.triton_admin_key
        )
        self.dir = Path(repository_dir or settings.agent_repository_dir)
        self.backend = resolve(settings.agent_backend or settings.triton_url, settings.triton_url)
        self.replica = replica or f"{socket.gethostname()}-{os.getpid()}"
        self.layout = Layout.of(settings)
        self.synced = False  # the first full pass is done: every wanted version loaded or failed
        self.failed: dict[tuple[str, int], str] = {}  # loads that failed here (not retried by this agent)
        self.unwanted_since: dict[tuple[str, int | None], float] = {}
        self.last_error = ""
        self._served = False  # this agent's Triton served something after a pass
        self._stop = threading.Event()
        self._lock = threading.Lock()

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        """Reconcile until ``stop()``: at once, on every announced registry write, and every AGENT_SYNC_S."""
        self.dir.mkdir(parents=True, exist_ok=True)
        subscription = self.cache.subscribe(registry.EVENTS_CHANNEL)
        try:
            while not self._stop.is_set():
                self.reconcile_once()
                subscription.wait(self.settings.agent_sync_s)
        finally:
            subscription.close()
            self.replicas.forget(self.backend, self.replica)

    def stop(self) -> None:
        self._stop.set()

    def reconcile_once(self) -> None:
        """One pass: compare, load/unload, beat, promote. Never raises (the loop must go on).

        ``synced`` (the readiness) turns true after the first pass in which every wanted version
        was loaded or failed, and false again only when Triton stops answering or comes back
        without the models it had (a restart): an S3 or database hiccup later does not take a
        serving replica out of rotation.
        """
        with self._lock:
            try:
                loaded = self.triton.loaded()
            except TritonUnreachable as exc:
                self.synced, self.last_error = False, str(exc)
                self.unwanted_since.clear()
                self._beat()
                return
            if self._served and not any(loaded.values()):
                self.synced = False  # Triton restarted empty: not ready until everything is back
            try:
                errors = self._apply(self.wanted(), loaded)
            except Exception as exc:  # the database: keep what is loaded, retry next pass
                errors = [f"{type(exc).__name__}: {str(exc)[:200]}"]
            if errors:
                self.last_error = errors[0]
                log.warning("model agent pass incomplete: %s", "; ".join(errors)[:500])
            else:
                self.synced, self.last_error = True, ""
            self._beat()

    # -- what the registry wants --------------------------------------------------------------
    def wanted(self) -> Wanted:
        wanted = Wanted()
        for model in self.registry.versions_in_states(LIVE, active=True):
            if self.backend not in self.replicas.backends_of(model):
                continue
            if model["repository_uri"] is not None and model["triton_version"] is not None:
                wanted.managed.setdefault(model["triton_model"], {})[int(model["triton_version"])] = model
            else:
                wanted.unmanaged.add(model["triton_model"])
        wanted.unmanaged -= set(wanted.managed)  # a managed Triton model is loaded by version
        return wanted

    # -- making it so -------------------------------------------------------------------------------
    def _apply(self, wanted: Wanted, loaded: dict[str, set[int]]) -> list[str]:
        """Reconcile every model on its own (one broken model never blocks the others); the errors."""
        mine = {p.name for p in self.dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
        steps: list[tuple[str, Callable[..., None], tuple[Any, ...]]] = [
            (tm, self._managed, (versions,)) for tm, versions in sorted(wanted.managed.items())
        ]
        steps += [(tm, self._unmanaged, ()) for tm in sorted(wanted.unmanaged)]
        steps += [(tm, self._retire, ()) for tm in sorted(mine - set(wanted.managed) - wanted.unmanaged)]
        errors = []
        for tm, step, args in steps:
            try:
                step(tm, *args, loaded.get(tm, set()))
            except TritonUnreachable:
                raise
            except Exception as exc:  # S3 or database trouble with this model: retried next pass
                errors.append(f"{tm}: {type(exc).__name__}: {str(exc)[:200]}")
        self._served = bool(wanted.managed or wanted.unmanaged)
        return errors

    def _managed(self, tm: str, versions: dict[int, ModelVersion], have: set[int]) -> None:
        want = {n for n in versions if (tm, n) not in self.failed}
        keep = {n for n in have - want if not self._grace_over(tm, n)}
        for n in want:
            self.unwanted_since.pop((tm, n), None)
        target, folder = want | keep, self.dir / tm
        if target == have and self._on_disk(folder, target):
            return
        try:
            config = self._fetch_model_files(tm)
        except NotFound as exc:
            for n in target - have:
                self._fail(tm, n, versions, exc.message, files_gone=True)
            return
        new = []
        for n in sorted(target - have):
            try:
                self._fetch_version(tm, n)
            except NotFound as exc:  # its files are gone from the model repository: it cannot load anywhere
                self._fail(tm, n, versions, exc.message, files_gone=True)
                target.discard(n)
                continue
            new.append(n)
            if n in versions and versions[n]["state"] == ModelState.PENDING:
                self.registry.set_state(versions[n]["id"], ModelState.LOADING, only_from=(ModelState.PENDING,))
        serving, current = set(have), have & target  # what Triton serves; what it should keep serving
        if len(new) > 1:  # a fresh replica: everything in one load, one by one only if that fails
            self._write_config(folder, config, target)
            if self.triton.load(tm) is None:
                serving = current = set(target)
                new = []
        for n in new:
            self._write_config(folder, config, current | {n})
            error = self.triton.load(tm)
            if error is None:
                current.add(n)
                serving = set(current)
                log.info("loaded %s version %d", tm, n)
                continue
            self._fail(tm, n, versions, error)
        self._write_config(folder, config, current)  # the disk says what Triton serves
        if serving != current:  # versions to drop (their grace is over)
            if current:
                self.triton.load(tm)
            else:
                self.triton.unload(tm)
        self._prune(folder, current)

    def _fail(self, tm: str, n: int, versions: dict[int, ModelVersion], reason: str, files_gone: bool = False) -> None:
        """Record a version this replica could not load. Triton's refusal fails a version that is not
        ready elsewhere; files missing from the repository fail it everywhere (no replica can load it)."""
        log.warning("loading %s version %d failed: %s", tm, n, reason)
        self.failed[(tm, n)] = reason
        if n in versions:
            states = LIVE if files_gone else LOADING
            self.registry.set_state(versions[n]["id"], ModelState.FAILED, reason, only_from=states)

    def _grace_over(self, tm: str, n: int | None) -> bool:
        since = self.unwanted_since.setdefault((tm, n), time.monotonic())
        return time.monotonic() - since >= self.settings.unload_grace_s

    def _unmanaged(self, tm: str, have: set[int]) -> None:
        self.unwanted_since.pop((tm, None), None)
        if have or (tm, 0) in self.failed:
            return
        folder = self.dir / tm
        try:
            written = repository.mirror(self.s3, self.layout.bucket, self.layout.model_prefix(tm), folder)
        except NotFound:  # no repository bucket yet
            written = 0
        if not written:
            return  # not in the model repository (yet): another Triton's model, or not uploaded; next pass
        error = self.triton.load(tm)
        if error is not None:
            log.warning("loading %s (files Kinfer does not manage) failed: %s", tm, error)
            self.failed[(tm, 0)] = error

    def _retire(self, tm: str, have: set[int]) -> None:
        """A model of this folder that nothing wants any more: unloaded after the grace period."""
        if have and not self._grace_over(tm, None):
            return
        if have:
            self.triton.unload(tm)
            log.info("unloaded %s", tm)
        shutil.rmtree(self.dir / tm, ignore_errors=True)
        self.unwanted_since.pop((tm, None), None)

    # -- files ------------------------------------------------------------------------------------------
    def _fetch_model_files(self, tm: str) -> str:
        """Model-level files (config.pbtxt, labels.txt, ...) into the model folder; the config text."""
        prefix = self.layout.model_prefix(tm)
        folder = self.dir / tm
        folder.mkdir(parents=True, exist_ok=True)
        (folder / (CONFIG + ".base")).unlink(missing_ok=True)
        try:
            keys = repository.list_keys(self.s3, self.layout.bucket, prefix)
        except NotFound:  # the bucket itself is gone
            keys = {}
        for key in keys:
            rel = key[len(prefix) :]
            first = rel.split("/", 1)[0]
            if not rel or first.isdigit() or ".." in rel.split("/") or rel.startswith("."):
                continue
            if packages.reserved(rel):  # only the stored, checked config.pbtxt configures the model
                log.warning("ignoring %s in the model repository: a name packages may not use", self.layout.uri(key))
                continue
            target = folder / (rel + ".base" if rel == CONFIG else rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            repository.download(self.s3, self.layout.bucket, key, target)
        base = folder / (CONFIG + ".base")
        if not base.is_file():
            log.warning("%s is missing from the model repository", self.layout.uri(prefix + CONFIG))
            raise NotFound(FILES_GONE)
        text = base.read_text(encoding="utf-8")
        try:  # stored before pushes were checked for it: an environment outside the model's folder never loads
            tritonconfig.env_path(tritonconfig.parse(text))
        except InvalidInput as exc:
            raise NotFound(f"config.pbtxt of {tm} is refused: {exc.message}") from None
        return text

    def _fetch_version(self, tm: str, n: int) -> None:
        target = self.dir / tm / str(n)
        if target.is_dir() and any(target.iterdir()):
            return
        prefix = self.layout.version_prefix(tm, n)
        if not repository.mirror(self.s3, self.layout.bucket, prefix, target):
            shutil.rmtree(target, ignore_errors=True)
            log.warning("the files of %s version %d are missing from %s", tm, n, self.layout.uri(prefix))
            raise NotFound(FILES_GONE)

    def _write_config(self, folder: Path, config: str, versions: set[int]) -> None:
        text = tritonconfig.with_versions(config, sorted(versions))
        temp = folder / f".{CONFIG}.tmp"
        temp.write_text(text, encoding="utf-8")
        os.replace(temp, folder / CONFIG)

    def _on_disk(self, folder: Path, versions: set[int]) -> bool:
        try:
            config = tritonconfig.parse((folder / CONFIG).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return set(config.version_policy.specific.versions) == versions

    def _prune(self, folder: Path, keep: set[int]) -> None:
        if not folder.is_dir():
            return
        for child in folder.iterdir():
            if child.is_dir() and child.name.isdigit() and int(child.name) not in keep:
                shutil.rmtree(child, ignore_errors=True)

    # -- readiness ----------------------------------------------------------------------------------
    def status(self) -> AgentStatus:
        loaded: dict[str, list[int]]
        try:
            loaded = {tm: sorted(v) for tm, v in self.triton.loaded().items() if v}
            triton = "up"
        except TritonUnreachable:
            loaded, triton = {}, "unreachable"
        return {
            "backend": self.backend,
            "synced": self.synced and triton == "up",
            "triton": triton,
            "loaded": loaded,
            "failed": {f"{tm}/{n}": why for (tm, n), why in self.failed.items()},
            "error": self.last_error,
        }

    def _beat(self) -> None:
        status = self.status()
        ttl = self.settings.agent_heartbeat_ttl_s
        if self.replicas.beat(self.backend, self.replica, status, ttl) and status["synced"]:
            self._promote(status)

    def _promote(self, status: AgentStatus) -> None:
        """Versions loaded here that every live replica of their backends has: ``ready``."""
        try:
            for model in self.registry.versions_in_states(LOADING, managed=True):
                if not replicas.has(status, model["triton_model"], model["triton_version"]):
                    continue
                if not self.replicas.not_ready(model):
                    self.registry.set_state(model["id"], ModelState.READY, only_from=LOADING)
                    log.info("%s version %s is ready on every replica", model["name"], model["version"])
        except Exception as exc:  # the next pass tries again
            log.warning("could not promote loaded versions: %s", type(exc).__name__)


# -- the agent's own HTTP endpoint (readiness for Knative, status for people) -------------------------
def agent_metrics(status: AgentStatus) -> bytes:
    """The agent's ``/metrics`` (Prometheus text) from its status."""
    loaded = sum(len(versions) for versions in status["loaded"].values())
    gauges = (
        ("kinfer_agent_synced", "1 once the agent has synced the registry into a live Triton", int(status["synced"])),
        ("kinfer_agent_triton_up", "1 when the agent's Triton answers", int(status["triton"] == "up")),
        ("kinfer_agent_loaded_versions", "Triton model versions loaded by this agent", loaded),
        ("kinfer_agent_failed_versions", "versions this agent could not load", len(status["failed"])),
    )
    lines = [f"# HELP {n} {h}\n# TYPE {n} gauge\n{n} {v}" for n, h, v in gauges]
    return ("\n".join(lines) + "\n").encode()


def serve_status(agent: ModelAgent, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:  # noqa: S104
    """``/ready`` (200 once the first full sync is done and Triton answers), ``/livez``, ``/status``, and
    ``/metrics`` (Prometheus text: synced, Triton up, versions loaded and failed)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            body: dict[str, object]
            if self.path == "/livez":
                code, body = 200, {"status": "alive"}
            elif self.path == "/ready":
                ready = agent.synced and agent.triton.live()
                code, body = (200 if ready else 503), {"ready": ready, "error": agent.last_error}
            elif self.path == "/status":
                code, body = 200, dict(agent.status(), replica=agent.replica)
            elif self.path == "/metrics":
                self._send(200, agent_metrics(agent.status()), "text/plain; version=0.0.4; charset=utf-8")
                return
            else:
                code, body = 404, {"error": f"no route for GET {self.path[:100]}", "code": "not_found"}
            self._send(code, json.dumps(body).encode(), "application/json")

        def _send(self, code: int, data: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet: probes every second
            return

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="agent-status", daemon=True).start()
    return server
