"""``kinfer up`` / ``status`` / ``down``: the whole platform on one machine.

Every part runs as a detached process recorded in ``<state>/stack.json``:
PostgreSQL and Redis (only when the configured ones do not answer), the S3 API
server, Triton (explicit model control, started empty), the model agent beside it
(``kinfer agent``: it loads what the registry says), one uvicorn process per
function, the gateway, the event relay and, when the Debian package is installed,
Prometheus on 127.0.0.1:9090 scraping every part that serves /metrics (``shared.localstack.prometheus``).
The demo models are pushed like any model (packaged Triton folders of
``models/repository``), so the agent serves them.
``up`` starts what is not running and leaves the rest alone (on failure it stops only
what that call started); ``down`` stops everything recorded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NotRequired, TypedDict, cast

from shared import catalogue
from shared.domain import ModelState
from shared.localstack import procs
from shared.localstack.procs import StackError
from shared.settings import Settings

if TYPE_CHECKING:
    from shared.clients.db import Database
    from shared.lifecycle.artifacts import Artifacts
    from shared.localstack.activator import ActivatorStatus, PodPids
    from shared.registry import ModelRegistry

Say = Callable[[str], object]

ROOT = Path(__file__).resolve().parents[2]
RELAY_PORT, S3_PORT, TRITON_PORTS, AGENT_PORT = 8090, 9000, (8000, 8001, 8002), 8089
# With scale-to-zero on (``kinfer up --scale-to-zero``), the activator (``shared.localstack.activator``)
# listens on TRITON_PORTS' HTTP and gRPC ports and Triton itself on these (metrics stays on 8002);
# its state is served on ACTIVATOR_PORT.
TRITON_INTERNAL_PORTS, ACTIVATOR_PORT = (18000, 18001, 8002), 8092
SINK_PATH = "/kinfer/batch-chunks"
DEMO_KEY = "demo-token"
CONSOLE_URL = "http://127.0.0.1:8080/console/"
# An address the local stack allows as a backend (BACKEND_ALLOWLIST) where nothing listens: a model
# registered there shows what an unreachable backend does (probes fail, its circuit opens) without
# touching the real Triton.
UNREACHABLE_BACKEND = "127.0.0.1:8011"
LOCAL_TRACE_BUFFER_SPANS = 2000  # per process, unless kinfer up's environment sets TRACE_BUFFER_SPANS
# One uvicorn process for the inference hot path: requests coalesce within a process, and on a
# 2-core machine one process feeds Triton bigger batches than two (measured: ~2,700-3,050 vs
# ~2,200-2,400 req/s through the gateway). Knative scales pods, not processes, in production.
HOT_PATH_SERVER: tuple[str, ...] = ()


class Component(TypedDict):
    """One running part as ``stack.json`` records it."""

    pid: int | None
    health: str | None
    log: str
    private: NotRequired[bool]


class StackState(TypedDict):
    """``<state>/stack.json``: the parts started, by name."""

    components: dict[str, Component]


class ComponentStatus(TypedDict):
    """A row of ``kinfer status``."""

    name: str
    pid: int | None
    serving: list[int]
    alive: bool
    healthy: bool
    url: str | None
    log: str | None
    state: NotRequired[str]  # the next two: added by ``kinfer status``
    serving_pids: NotRequired[str]


@dataclass(frozen=True)
class Fn:
    folder: str
    target: str
    port: int
    service: str
    env: tuple[tuple[str, str], ...] = ()


def functions() -> list[Fn]:
    """Every function of the catalogue as a local process: its port, and K_SINK (the relay) for those
    that emit events; the internal registry answers without a key, as its cluster-local Service does."""
    sink = ("K_SINK", f"http://127.0.0.1:{RELAY_PORT}{SINK_PATH}")
    no_auth = ("AUTH_REQUIRED", "false")
    return [
        Fn(
            fn.folder,
            fn.target,
            fn.port,
            fn.service,
            tuple(env for env, wanted in ((sink, fn.emits_events), (no_auth, fn.local_without_auth)) if wanted),
        )
        for fn in catalogue.FUNCTIONS
    ]


def available_functions() -> list[Fn]:
    return [f for f in functions() if (ROOT / "functions" / f.folder / "main.py").is_file()]


def state_dir() -> Path:
    return ROOT / ".kinfer"


def _state_file() -> Path:
    return state_dir() / "stack.json"


def load_state() -> StackState:
    try:
        return cast(StackState, dict(json.loads(_state_file().read_text())))
    except (OSError, ValueError):
        return {"components": {}}


def _save(state: StackState) -> None:
    state_dir().mkdir(parents=True, exist_ok=True)
    _state_file().write_text(json.dumps(state, indent=2))


def base_env(settings: Settings, scale_to_zero: bool = False) -> dict[str, str]:
    """Environment every function process gets: the local endpoints of this stack. The local Triton has
    only the Python backend, so pushed ONNX files run through it (ONNX_BACKEND=python). Backends allowed:
    the local Triton (also as ``triton:8001``), ``UNREACHABLE_BACKEND`` and whatever BACKEND_ALLOWLIST of
    ``kinfer up``'s environment adds (and its CALLBACK_SIGNING_SECRET and CALLBACK_ALLOWLIST). With
    ``scale_to_zero`` Triton is not probed (as in a cluster where it scales to zero: a probe would wake it)."""
    allowed = dict.fromkeys((f"127.0.0.1:{TRITON_PORTS[1]}", UNREACHABLE_BACKEND, *settings.backend_allowlist))
    cold = {"PROBE_TRITON_URL": "false"} if scale_to_zero else {}
    return (
        cold
        | {
            "DATABASE_URL": settings.database_url,
            "REDIS_URL": settings.redis_url,
            "S3_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
            "TRITON_URL": f"127.0.0.1:{TRITON_PORTS[1]}",
            "S3_ACCESS_KEY_ID": settings.s3_access_key_id,
            "S3_SECRET_ACCESS_KEY": settings.s3_secret_access_key,
            "MODEL_REPOSITORY_URI": settings.model_repository_uri,
            "ONNX_BACKEND": "python",
            "BACKEND_ALLOWLIST": ",".join(allowed),
            "PYTHONUNBUFFERED": "1",
            # recorded spans stay readable at GET /debug/traces (admin key) without an OTLP collector
            "TRACE_BUFFER_SPANS": str(settings.trace_buffer_spans or LOCAL_TRACE_BUFFER_SPANS),
            # rollout gates decide at least every second locally (short step windows in demos and tests)
            "ROLLOUT_TICK_S": str(min(settings.rollout_tick_s, 1.0)),
            # capture settings and captured records reach every process and S3 within a second locally
            "CAPTURE_RULES_TTL_S": str(min(settings.capture_rules_ttl_s, 1.0)),
            "CAPTURE_FLUSH_S": str(min(settings.capture_flush_s, 1.0)),
        }
        | _callbacks(settings)
    )


def _callbacks(settings: Settings) -> dict[str, str]:
    """Async inference callbacks: the signing secret (``up`` fills in the stack's own, ``local_callback_secret``,
    when its environment names none) and the CALLBACK_ALLOWLIST of ``kinfer up``'s environment."""
    found = {}
    if settings.callback_signing_secret:
        found["CALLBACK_SIGNING_SECRET"] = settings.callback_signing_secret
    if settings.callback_allowlist:
        found["CALLBACK_ALLOWLIST"] = ",".join(settings.callback_allowlist)
    return found


CALLBACK_SECRET_FILE = "callback-signing-secret"


def local_callback_secret() -> str:
    """The local stack's CALLBACK_SIGNING_SECRET: drawn once into ``.kinfer`` (0600: only its owner reads it) and
    kept across restarts, so the keys' callback secrets stay the same from one ``kinfer up`` to the next."""
    path = state_dir() / CALLBACK_SECRET_FILE
    state_dir().mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        path.chmod(0o600)
        kept = path.read_text().strip()
        if kept:
            return kept
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    drawn = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as out:
        out.write(drawn + "\n")
    return drawn


def local_settings(settings: Settings) -> Settings:
    """``settings`` as the stack's processes see them (for what ``up`` does in-process: seeding)."""
    return dataclasses.replace(
        settings,
        s3_endpoint_url=f"http://127.0.0.1:{S3_PORT}",
        triton_url=f"127.0.0.1:{TRITON_PORTS[1]}",
        onnx_backend="python",
    )


def repository_dir() -> Path:
    """The local model repository: the agent writes it, Triton serves it."""
    return state_dir() / "triton" / "repository"


def _serve_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "shared.cli", "serve", "--host", "127.0.0.1", *args]


def up(settings: Settings, say: Say = print, scale_to_zero: bool = False) -> StackState:
    """Start every part that is not already running; return the state (components with pid, url, log).

    Parts already running are left alone. If a step fails, only the parts this call started are
    stopped again (and forgotten), so a failed ``up`` never stops what was running before it.
    ``scale_to_zero``: Triton and its agent run behind the activator, which stops them when idle (a
    stack already running keeps the way it was started).
    """
    state = load_state()
    comps = state.setdefault("components", {})
    for name in [n for n, c in comps.items() if not procs.alive(c.get("pid"))]:
        del comps[name]  # recorded but gone: nothing to stop, start it again
    if "activator" in comps or "triton" in comps or "agent" in comps:
        if scale_to_zero != ("activator" in comps):
            say(
                f"Triton already runs {'behind' if 'activator' in comps else 'without'} the scale-to-zero "
                "activator; `kinfer down` first to change that"
            )
        scale_to_zero = "activator" in comps
    missing = [n for n in _expected_names(scale_to_zero) if n not in comps]
    if "prometheus" in missing and not _prometheus_available(say):
        missing.remove("prometheus")
    if not missing:
        say("the local stack is already running (kinfer status shows it)")
        return state
    if comps:
        say(f"already running: {', '.join(sorted(comps))}; starting only {', '.join(missing)}")
    if not settings.callback_signing_secret:  # callbacks work out of the box: the stack's own secret
        settings = dataclasses.replace(settings, callback_signing_secret=local_callback_secret())
    started: list[str] = []
    try:
        _check_ports(missing)
        _start_missing(settings, state, missing, started, say, scale_to_zero)
        for name in started:
            comp = comps[name]
            if health := comp.get("health"):
                procs.wait_http(health, comp.get("pid"), 60, Path(comp["log"]))
        say("all parts healthy; pushing the demo models and seeding the demo key")
        seed(local_settings(settings), say)
        reconcile_batch_jobs(settings, say)
    except BaseException:
        rollback(state, started, say)
        raise
    return state


def _start_missing(
    settings: Settings, state: StackState, missing: list[str], started: list[str], say: Say, scale_to_zero: bool = False
) -> None:
    """Start the ``missing`` parts, recording each in ``state`` (saved at once) and in ``started``."""
    comps = state["components"]
    logs = state_dir() / "logs"

    def record(names: list[str]) -> None:
        started.extend(n for n in names if n in comps and n not in started)
        _save(state)

    _start_data(settings, comps, say)
    record(["postgres", "redis"])
    if "s3" in missing:
        _start_s3(settings, comps, logs, say)
        record(["s3"])
    if "triton" in missing:
        _start_triton(comps, logs, say)
        record(["triton"])
    env = base_env(settings, scale_to_zero)
    if "activator" in missing:
        _start_activator(env, comps, logs, say)
        record(["activator"])
    if "agent" in missing:
        _start_agent(env, comps, logs, say)
        record(["agent"])
    for fn in available_functions():
        if fn.folder in missing:
            _start_function(fn, env, comps, logs)
            record([fn.folder])
    if "gateway" in missing:
        gw_env = dict(env, K_SERVICE="gateway", K_SINK=f"http://127.0.0.1:{RELAY_PORT}{SINK_PATH}")
        log = logs / "gateway.log"
        _record(
            comps,
            "gateway",
            procs.spawn(_serve_cmd("--gateway", "--port", "8080", *HOT_PATH_SERVER), log, gw_env, ROOT),
            "http://127.0.0.1:8080/health",
            log,
        )
        record(["gateway"])
    if "relay" in missing:
        _start_relay(env, comps, logs)
        record(["relay"])
    if "prometheus" in missing:
        _start_prometheus(comps, logs, say)
        record(["prometheus"])


def rollback(state: StackState, started: list[str], say: Say = print) -> None:
    """Stop the parts in ``started`` (newest first, data last) and forget them; nothing else is touched."""
    if not started:
        return
    say(f"stopping what this run started: {', '.join(started)}")
    comps = state.get("components", {})
    for name in sorted(reversed(started), key=lambda n: n in ("postgres", "redis")):
        comp = comps.pop(name, None)
        if comp is not None and procs.alive(comp.get("pid")):
            _stop(name, comp)
    _save(state)


def _stop(name: str, comp: Component) -> None:
    from shared.localstack.data import stop_postgres

    if name == "postgres":
        stop_postgres(state_dir())
    elif name == "activator" and (pid := comp["pid"]) is not None:
        found = activator_status(comp)
        procs.stop(pid, timeout=20)  # it stops Triton and the agent first
        if found is not None:
            _stop_leftovers(found["pids"])
    elif (pid := comp["pid"]) is not None:  # callers stop only a live pid
        procs.stop(pid)


def _stop_leftovers(pods: PodPids) -> None:
    """Triton and the agent of an activator that died without stopping them."""
    from shared.localstack.triton import stop_pid

    if (triton := pods.get("triton")) is not None:
        stop_pid(triton)
    if (agent := pods.get("agent")) is not None and procs.alive(agent):
        procs.stop(agent)


def reconcile_batch_jobs(settings: Settings, say: Say = print) -> dict[str, list[str]]:
    """Fail the batch jobs that stopped progressing, then re-queue (or fail, when their inputs are gone)
    the chunks of the jobs left active when the stack went down (``shared.batch.reaper``)."""
    from dataclasses import replace

    from shared.services import Services

    services = Services(
        replace(
            settings, k_sink=f"http://127.0.0.1:{RELAY_PORT}{SINK_PATH}", s3_endpoint_url=f"http://127.0.0.1:{S3_PORT}"
        )
    )
    try:
        stalled = services.reaper.reap()
        outcome = services.reaper.reconcile()
    finally:
        services.close()
    outcome["failed"] = stalled + outcome["failed"]
    if outcome["requeued"] or outcome["failed"]:
        say(
            f"batch jobs: {len(outcome['requeued'])} re-queued, {len(outcome['failed'])} failed "
            "(GET /v1/batch/<id> says why)"
        )
    return outcome


def _expected_names(scale_to_zero: bool = False) -> list[str]:
    pod = ["activator"] if scale_to_zero else ["triton", "agent"]
    return ["s3", *pod, "gateway", "relay", "prometheus"] + [f.folder for f in available_functions()]


def _prometheus_available(say: Say) -> bool:
    """Whether Prometheus can start: its binary is installed and port 9090 is free (else say why not)."""
    from shared.localstack import prometheus

    if prometheus.binary() is None:
        say(
            f"Prometheus is not installed, so it is not started ({prometheus.INSTALL_HINT}); every part still "
            "serves /metrics"
        )
        return False
    if procs.port_open(prometheus.PORT):
        say(f"port {prometheus.PORT} is in use (another Prometheus?): Kinfer's Prometheus is not started")
        return False
    return True


def _check_ports(missing: list[str]) -> None:
    """Every port a part about to start needs is free (checked before anything starts)."""
    wanted = {
        "s3": [(S3_PORT, "the S3 server")],
        "triton": [(p, "Triton") for p in TRITON_PORTS],
        "agent": [(AGENT_PORT, "the model agent")],
        "activator": [
            *((p, "the scale-to-zero activator") for p in (*TRITON_PORTS[:2], ACTIVATOR_PORT)),
            *((p, "Triton (behind the activator)") for p in TRITON_INTERNAL_PORTS),
            (AGENT_PORT, "the model agent"),
        ],
        "gateway": [(8080, "the gateway")],
        "relay": [(RELAY_PORT, "the event relay")],
    }
    wanted.update({fn.folder: [(fn.port, f"the {fn.folder} function")] for fn in available_functions()})
    for name in missing:
        for port, what in wanted.get(name, []):
            procs.require_free(port, what)


def _record(comps: dict[str, Component], name: str, pid: int | None, health: str | None, log: Path) -> None:
    comps[name] = {"pid": pid, "health": health, "log": str(log)}


def _start_data(settings: Settings, comps: dict[str, Component], say: Say) -> None:
    from shared.clients import db
    from shared.localstack.data import ensure_postgres, ensure_redis, pg_data_dir

    pg_pid = ensure_postgres(settings, state_dir())
    if pg_pid:
        folder = pg_data_dir(state_dir())
        say(f"started a private PostgreSQL under {folder}")
        comps["postgres"] = {"pid": pg_pid, "health": None, "log": str(folder / "server.log"), "private": True}
    redis_pid = ensure_redis(settings, state_dir())
    if redis_pid:
        say(f"started a private Redis under {state_dir() / 'redis'}")
        comps["redis"] = {"pid": redis_pid, "health": None, "log": str(state_dir() / "redis" / "redis.log")}
    db.ensure_database(settings)
    db.upgrade(settings)
    say("database migrated")


def _start_s3(settings: Settings, comps: dict[str, Component], logs: Path, say: Say) -> None:
    from shared.localstack.s3 import S3Server

    logs.mkdir(parents=True, exist_ok=True)
    keys = {settings.s3_access_key_id: settings.s3_secret_access_key}  # the keys base_env gives every process
    pid = S3Server(port=S3_PORT, data_dir=state_dir() / "s3", keys=keys).spawn(logs / "s3.log")
    _record(comps, "s3", pid, None, logs / "s3.log")
    say(f"S3 API server on http://127.0.0.1:{S3_PORT} (data kept in {state_dir() / 's3'})")


def _start_triton(comps: dict[str, Component], logs: Path, say: Say) -> None:
    from shared.localstack.triton import TritonServer, TritonStartError

    repository = repository_dir()
    repository.mkdir(parents=True, exist_ok=True)
    server = TritonServer(
        repository,
        state_dir() / "triton",
        *TRITON_PORTS,
        log_path=logs / "triton.log",
        load_models=(),
        strict_readiness=False,
    )
    try:
        server.start(timeout=120, detach=True)
    except TritonStartError as exc:
        raise StackError(str(exc).splitlines()[0]) from None
    _record(comps, "triton", server.pid, f"{server.http_url}/v2/health/ready", logs / "triton.log")
    say(f"Triton on {server.http_url} (gRPC {server.grpc_url})")


def _agent_env(env: dict[str, str], triton_http_port: int) -> dict[str, str]:
    return dict(
        env,
        K_SERVICE="model-agent",
        AGENT_TRITON_HTTP=f"http://127.0.0.1:{triton_http_port}",
        AGENT_REPOSITORY_DIR=str(repository_dir()),
        AGENT_PORT=str(AGENT_PORT),
        AGENT_SYNC_S="2",
        UNLOAD_GRACE_S="10",
    )


def _start_activator(env: dict[str, str], comps: dict[str, Component], logs: Path, say: Say) -> None:
    """Triton and its agent behind the scale-to-zero activator (``shared.localstack.activator``), which
    starts them now and again on the first connection after they were stopped for being idle."""
    from shared.localstack.triton import find_install

    find_install()  # a missing wheel fails here, with the fix, not in the activator's log
    repository_dir().mkdir(parents=True, exist_ok=True)
    routes = [f"--route={a}:{b}" for a, b in zip(TRITON_PORTS[:2], TRITON_INTERNAL_PORTS[:2], strict=True)]
    cmd = [
        sys.executable,
        "-m",
        "shared.localstack.activator",
        *routes,
        f"--status-port={ACTIVATOR_PORT}",
        f"--triton-ports={','.join(map(str, TRITON_INTERNAL_PORTS))}",
        f"--repository={repository_dir()}",
        f"--state-dir={state_dir() / 'triton'}",
        f"--triton-log={logs / 'triton.log'}",
        f"--agent-log={logs / 'agent.log'}",
        f"--agent-ready=http://127.0.0.1:{AGENT_PORT}/ready",
        f"--backend=127.0.0.1:{TRITON_PORTS[1]}",
    ]
    log = logs / "activator.log"
    activator_env = dict(_agent_env(env, TRITON_INTERNAL_PORTS[0]), K_SERVICE="activator")
    pid = procs.spawn(cmd, log, activator_env, ROOT)
    _record(comps, "activator", pid, f"http://127.0.0.1:{ACTIVATOR_PORT}/health", log)
    say(
        f"Triton scales to zero: the activator on {TRITON_PORTS[0]}/{TRITON_PORTS[1]} stops it after "
        f"LOCAL_SCALE_TO_ZERO_IDLE_S idle and wakes it on the next request (state: http://127.0.0.1:{ACTIVATOR_PORT}/status)"
    )


def _start_agent(env: dict[str, str], comps: dict[str, Component], logs: Path, say: Say) -> None:
    """The model agent beside Triton: loads what the registry says into Triton, reports readiness."""
    agent_env = _agent_env(env, TRITON_PORTS[0])
    log = logs / "agent.log"
    cmd = [sys.executable, "-m", "shared.cli", "agent"]
    _record(comps, "agent", procs.spawn(cmd, log, agent_env, ROOT), f"http://127.0.0.1:{AGENT_PORT}/ready", log)
    say(f"model agent beside Triton (status http://127.0.0.1:{AGENT_PORT}/status)")


def _start_function(fn: Fn, env: dict[str, str], comps: dict[str, Component], logs: Path) -> None:
    fn_env = dict(env, K_SERVICE=fn.service, **dict(fn.env))
    cmd = _serve_cmd(
        "--target",
        fn.target,
        "--source",
        f"functions/{fn.folder}/main.py",
        "--port",
        str(fn.port),
        *(HOT_PATH_SERVER if fn.folder == "infer" else ()),
    )
    log = logs / f"{fn.folder}.log"
    _record(comps, fn.folder, procs.spawn(cmd, log, fn_env, ROOT), f"http://127.0.0.1:{fn.port}/health", log)


def _start_prometheus(comps: dict[str, Component], logs: Path, say: Say) -> None:
    from shared.localstack import prometheus

    executable = prometheus.binary()
    assert executable is not None  # _prometheus_available checked it
    cmd = prometheus.command(executable, state_dir() / "prometheus", TRITON_PORTS[2], AGENT_PORT, RELAY_PORT)
    log = logs / "prometheus.log"
    _record(comps, "prometheus", procs.spawn(cmd, log, None, ROOT), prometheus.ready_url(), log)
    say(f"Prometheus on http://127.0.0.1:{prometheus.PORT} (scraping every part's /metrics)")


def _start_relay(env: dict[str, str], comps: dict[str, Component], logs: Path) -> None:
    targets = [f"{fn.service}=http://127.0.0.1:{fn.port}/" for fn in available_functions()]
    cmd = [
        sys.executable,
        "-m",
        "shared.localstack.relay.server",
        "--port",
        str(RELAY_PORT),
        "--manifests",
        str(ROOT / "knative" / "base"),
    ]
    for target in targets:
        cmd += ["--target", target]
    log = logs / "relay.log"
    _record(
        comps,
        "relay",
        procs.spawn(cmd, log, dict(env, K_SERVICE="relay"), ROOT),
        f"http://127.0.0.1:{RELAY_PORT}/health",
        log,
    )


def seed(settings: Settings, say: Say = print, timeout: float = 120) -> None:
    """The dev API key and the demo models, pushed as packaged Triton folders; waits until they serve.

    Idempotent: a demo version that exists is kept, unless its files are gone from the model
    repository (the local S3 server keeps objects in memory): then it is pushed again.
    """
    from shared.services import Services

    services = Services(settings)
    try:
        services.keys.ensure_key("demo", DEMO_KEY, ["infer", "batch", "admin"])
        from shared.errors import KinferError

        pushed = []
        for body in DEMO_MODELS:
            try:
                pushed.append(_seed_model(services.registry, services.artifacts, services.db, body))
            except KinferError as exc:
                raise StackError(f"pushing the demo model {body['name']} failed: {exc.message}") from None
        _wait_ready(services.registry, [p for p in pushed if p], timeout, say)
    finally:
        services.close()


def _seed_model(registry: ModelRegistry, artifacts: Artifacts, db: Database, body: DemoModel) -> str | None:
    """Push one demo model unless it is in place; the id of the version to wait for."""
    from shared.errors import NotFound
    from shared.lifecycle import repository
    from shared.lifecycle.repository import Layout
    from shared.localstack.triton import default_repository

    try:
        found = registry.get_model_by_name(body["name"], body["version"])
    except NotFound:
        found = None
    layout = Layout.of(artifacts.settings)
    if found is not None and found["repository_uri"] and found["state"] != ModelState.FAILED:
        version = found["triton_version"]
        try:
            in_place = version is not None and bool(
                repository.list_keys(artifacts.s3, layout.bucket, layout.version_prefix(found["triton_model"], version))
            )
        except NotFound:  # the S3 server restarted without its buckets
            in_place = False
        if in_place:
            return str(found["id"]) if found["state"] != ModelState.READY else None
    if found is not None:
        registry.delete_model(found["id"])
    _claim_demo_name(db, body["name"])
    package = pack_folder(default_repository() / body["name"], state_dir() / f"{body['name']}.tar.gz")
    return str(artifacts.push_file(body, package)["id"])


def _claim_demo_name(db: Database, name: str) -> None:
    """The demo's Triton model name belongs to the demo on the local stack.

    A database from before Kinfer managed model files has the demo registered as files it does not
    manage, and other registrations may point at the same Triton model; a push would then refuse
    the name as "served from files Kinfer does not manage". Those files were the demo's own.
    """
    import sqlalchemy as sa
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    from shared.clients.schema import triton_models

    with db.begin() as conn:
        conn.execute(
            pg_insert(triton_models)
            .values(name=name, owner=name, last_version=0)
            .on_conflict_do_nothing(index_elements=["name"])
        )
        owner = conn.execute(sa.select(triton_models.c.owner).where(triton_models.c.name == name)).scalar_one()
    if owner != name:
        raise StackError(
            f"the demo's Triton model {name!r} holds the versions of model {owner!r}; delete that "
            "model's versions (kinfer models delete) or use a fresh database"
        )


def pack_folder(folder: Path, target: Path) -> Path:
    """A Triton model folder as a .tar.gz package (what ``kinfer models push`` takes)."""
    import tarfile

    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, "w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
    return target


def _wait_ready(registry: ModelRegistry, ids: list[str], timeout: float, say: Say) -> None:
    deadline = time.monotonic() + timeout
    for model_id in ids:
        while True:
            model = registry.get_model(model_id)
            if model["state"] == ModelState.READY:
                say(f"{model['name']} {model['version']} is served (Triton version {model['triton_version']})")
                break
            if model["state"] == ModelState.FAILED or time.monotonic() > deadline:
                raise StackError(
                    f"demo model {model['name']} did not load ({model['state']}: "
                    f"{model['state_reason'] or 'timed out'}); see .kinfer/logs/agent.log"
                )
            time.sleep(0.2)


class DemoModel(TypedDict):
    """A demo model's registration body."""

    name: str
    version: str
    framework: str
    format: str
    description: str
    tags: list[str]
    metadata: NotRequired[dict[str, object]]


DEMO_MODELS: tuple[DemoModel, ...] = (
    {
        "name": "iris_classifier",
        "version": "1",
        "framework": "onnx",
        "format": "onnx",
        "description": "Logistic regression on the iris data set (ONNX, run by onnxruntime)",
        "tags": ["demo", "classification"],
        "metadata": {"labels": ["setosa", "versicolor", "virginica"]},
    },
    {
        "name": "vector_scorer",
        "version": "1",
        "framework": "python",
        "format": "python",
        "description": "z-score normalisation + softmax over a variable-length FP32 vector",
        "tags": ["demo", "scoring"],
    },
    {
        "name": "text_sentiment",
        "version": "1",
        "framework": "python",
        "format": "python",
        "description": "Naive Bayes sentiment of English text (BYTES in, negative/positive out), numpy only",
        "tags": ["demo", "classification", "text"],
        "metadata": {"labels": ["negative", "positive"], "task": "text-classification"},
    },
    {
        "name": "tiny_lm",
        "version": "1",
        "framework": "python",
        "format": "python",
        "description": "Word bigram language model of the Zen of Python; streams tokens (decoupled, vLLM tensors)",
        "tags": ["demo", "generative"],
        "metadata": {"task": "text-generation"},
    },
)


def status() -> list[ComponentStatus]:
    rows: list[ComponentStatus] = []
    for name, comp in load_state().get("components", {}).items():
        alive = procs.alive(comp.get("pid"))
        health = comp.get("health")
        healthy = alive and (procs.http_ok(health) if health else True)
        rows.append(
            {
                "name": name,
                "pid": comp.get("pid"),
                "serving": procs.serving(comp.get("pid")),
                "alive": alive,
                "healthy": healthy,
                "url": comp.get("health"),
                "log": comp.get("log"),
            }
        )
        if name == "activator" and alive:
            rows[-1]["state"] = "up"
            rows += _pod_rows(activator_status(comp), Path(comp["log"]).parent)
    return rows


def activator_status(comp: Component) -> ActivatorStatus | None:
    """The activator's ``/status`` (None when it does not answer)."""
    import urllib.request

    url = (comp.get("health") or "").replace("/health", "/status")
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return cast(ActivatorStatus, json.loads(resp.read()))
    except (OSError, ValueError):
        return None


def _pod_rows(found: ActivatorStatus | None, logs: Path) -> list[ComponentStatus]:
    """Triton and the agent behind the activator: their state is the activator's (serving, waking,
    stopping, idle-stopped); scaled to zero is healthy (the next request wakes them)."""
    state = found["state"] if found else "unknown"
    pids: PodPids = found["pids"] if found else {"triton": None, "agent": None}
    urls = {
        "triton": f"http://127.0.0.1:{TRITON_INTERNAL_PORTS[0]}/v2/health/ready",
        "agent": f"http://127.0.0.1:{AGENT_PORT}/ready",
    }
    rows: list[ComponentStatus] = []
    for part in ("triton", "agent"):
        pid = pids["triton"] if part == "triton" else pids["agent"]
        alive = procs.alive(pid)
        healthy = state == "idle-stopped" or (state == "serving" and alive and procs.http_ok(urls[part]))
        rows.append(
            {
                "name": part,
                "pid": pid,
                "serving": procs.serving(pid),
                "alive": alive,
                "healthy": healthy or state == "waking",
                "url": urls[part],
                "log": str(logs / f"{part}.log"),
                "state": state,
            }
        )
    return rows


def down(say: Say = print) -> int:
    """Stop every recorded part (functions first, data last); returns how many were stopped."""
    state = load_state()
    comps = state.get("components", {})
    stopped = 0
    for name in sorted(comps, key=lambda n: ["postgres", "redis"].index(n) + 1 if n in ("postgres", "redis") else 0):
        comp = comps[name]
        if not procs.alive(comp.get("pid")):
            continue
        _stop(name, comp)
        stopped += 1
        say(f"stopped {name}")
    state["components"] = {}
    _save(state)
    return stopped
