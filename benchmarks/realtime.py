"""Real-time inference overhead: Kinfer's infer function and gateway vs direct Triton, in one run.

Two modes, each with every target measured in the same run (ratios, never absolute bars):

``--mode wrk`` (default): HTTP load by ``wrk`` (Debian package ``wrk``; installed with
apt-get when missing and allowed, else the command to run is printed) with the Lua script
``benchmarks/wrk/infer.lua`` (one iris row, Kinfer's ``/v1/infer`` body or the KServe v2
JSON body). Targets: Triton's own HTTP endpoint (``/v2/models/iris_classifier/infer``),
the infer function and the gateway, each with both bodies. Per target: sequential latency
(1 connection; p50/p99 and the p50 added over direct Triton), throughput at ``-c``
connections (req/s, ratio to direct Triton, p50/p99 under load), and CPU seconds per 1,000
requests of every process in the path: the serving function's (or gateway's), Triton's own, and the
load generator's (wrk, the client: it must not be the bottleneck).

``--mode python``: the older Python client, /v1/infer vs direct Triton gRPC (sequential
p50/p99 and throughput over threads).

    .venv/bin/python benchmarks/realtime.py                     # self-contained: Triton, a DB, function, gateway
    .venv/bin/python benchmarks/realtime.py --runs 3 --duration 8
    .venv/bin/python benchmarks/realtime.py --stack             # against `kinfer up` (ports 8000/8082/8080)
    .venv/bin/python benchmarks/realtime.py --shadow 10 --only /v1/infer   # shadow off, then 10 %, same run
    .venv/bin/python benchmarks/realtime.py --capture 100 --only /v1/infer  # capture off, then 100 %, same run

``--shadow PCT`` (self-contained): the model gets a second version and a ``production`` alias; every target
is measured with no shadow, then again while PCT % of the alias's requests are mirrored to version 2.

``--capture PCT`` (self-contained): a local S3 server takes the capture bucket; every target is measured
with capture off, then again while PCT % of the model's requests are captured (``kinfer capture set``).

With ``--shadow`` and/or ``--capture``, each feature set is measured next to an off measurement of its own
(the column "vs off" divides by it): the shared machine's speed drifts over a run, so a ratio against an off
run taken minutes earlier measured the drift as much as the feature.

``--ab PAIRS`` (with ``--shadow``/``--capture``): instead of switching the features between phases, the model
keeps them on and a second name of the same Triton model (``iris_plain``) has none; wrk alternates slices of
``-d`` seconds between the two, PAIRS pairs per target, and "on/off" divides the two sides' requests per
second over all their slices (the per-pair ratios' spread beside it). Drift on a shared machine falls on
both sides alike, which paired phases minutes long could not promise:

    .venv/bin/python benchmarks/realtime.py --shadow 10 --capture 100 --only "function /v1/infer" --ab 8 -d 3 --runs 3

The machine's cores are shared: run it under ``flock /work/tmp/stack.lock`` (or your
equivalent) and look at the range over ``--runs``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LUA = ROOT / "benchmarks" / "wrk" / "infer.lua"
ROW = [5.1, 3.5, 1.4, 0.2]
TRITON_MODEL = "iris_classifier"
PLAIN_MODEL = "iris_plain"  # --ab: the same Triton model under a name that nothing captures or mirrors
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Endpoints:
    """Where the targets listen, the registry model and key to use, and which pids serve each."""

    triton_http: str
    triton_grpc: str
    function: str
    gateway: str | None
    model: str
    key: str | None
    pids: dict[str, int] = field(default_factory=dict)  # "triton", "function", "gateway" -> pid (tree root)
    settings: Any = None  # self-contained: the served settings (to switch the shadow on)


# -- processes and CPU ---------------------------------------------------------------------
def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _children_cpu() -> float:
    """User + system CPU seconds of this process's finished children (each wrk run, once it has exited)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_seconds(root: int, descendants: bool = True) -> float:
    """User + system CPU seconds of ``root`` and (unless told otherwise) every live descendant (uvicorn
    workers, Triton's backend stubs)."""
    tree, total, todo = _children() if descendants else {}, 0.0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(tree.get(pid, []))
        try:
            fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


# -- wrk mode ------------------------------------------------------------------------------
def ensure_wrk(install: bool) -> str:
    found = shutil.which("wrk")
    if found:
        return found
    how = "apt-get install -y wrk   (Debian/Ubuntu package 'wrk'; as root, or with sudo)"
    if install and os.geteuid() == 0:
        print("wrk is missing; installing it with apt-get", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "wrk"], check=False, stdout=subprocess.DEVNULL)
        if not shutil.which("wrk"):
            subprocess.run(["apt-get", "update"], check=False, stdout=subprocess.DEVNULL)
            subprocess.run(["apt-get", "install", "-y", "wrk"], check=False, stdout=subprocess.DEVNULL)
        found = shutil.which("wrk")
        if found:
            return found
    raise SystemExit(f"this benchmark needs wrk: {how}")


def wrk(
    binary: str, url: str, kind: str, model: str, key: str | None, connections: int, threads: int, seconds: float
) -> dict[str, float]:
    """One wrk run; the numbers the Lua script's ``done`` prints (latencies in microseconds)."""
    env = {**os.environ, "KINFER_WRK_KIND": kind, "KINFER_WRK_MODEL": model, "KINFER_WRK_KEY": key or ""}
    cmd = [
        binary,
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    for line in out.stdout.splitlines():
        if line.startswith("KINFER_WRK "):
            stats = json.loads(line.split(" ", 1)[1])
            if stats["status_errors"] or stats["socket_errors"]:
                raise RuntimeError(
                    f"wrk against {url} ({kind}): {stats['status_errors']} non-2xx answers, "
                    f"{stats['socket_errors']} socket errors; check the target's log"
                )
            stats["rps"] = stats["requests"] / (stats["duration_us"] / 1e6)
            return stats
    raise RuntimeError(f"wrk printed no result for {url}:\n{out.stdout}\n{out.stderr}")


def wrk_targets(ep: Endpoints) -> list[tuple[str, str, str, str, str | None, str]]:
    """(name, base url, body kind, model in the request, key, pid role) per target; direct Triton first."""
    targets = [
        ("triton-http v2", f"http://{ep.triton_http}", "v2", TRITON_MODEL, None, "triton"),
        ("function /v1/infer", ep.function, "v1", ep.model, ep.key, "function"),
        ("function /v2", ep.function, "v2", ep.model, ep.key, "function"),
    ]
    if ep.gateway:
        targets += [
            ("gateway /v1/infer", ep.gateway, "v1", ep.model, ep.key, "gateway"),
            ("gateway /v2", ep.gateway, "v2", ep.model, ep.key, "gateway"),
        ]
    return targets


def run_wrk(
    ep: Endpoints,
    binary: str,
    connections: int,
    threads: int,
    seconds: float,
    seq_seconds: float,
    only: set[str] | None = None,
) -> list[dict]:
    rows = []
    for name, base, kind, model, key, role in wrk_targets(ep):
        if only and role != "triton" and not any(o in name for o in only):
            continue
        wrk(binary, base, kind, model, key, connections, threads, 1)  # warm-up: connections, caches
        seq = wrk(binary, base, kind, model, key, 1, 1, seq_seconds)
        cpu_before = {r: cpu_seconds(pid) for r, pid in ep.pids.items()}
        client_before = _children_cpu()
        load = wrk(binary, base, kind, model, key, connections, threads, seconds)
        per_k = {r: (cpu_seconds(pid) - cpu_before[r]) / load["requests"] * 1000 for r, pid in ep.pids.items()}
        client_per_k = (_children_cpu() - client_before) / load["requests"] * 1000
        rows.append(
            {
                "target": name,
                "role": role,
                "seq_p50_ms": seq["p50_us"] / 1000,
                "seq_p99_ms": seq["p99_us"] / 1000,
                "rps": load["rps"],
                "p50_ms": load["p50_us"] / 1000,
                "p99_ms": load["p99_us"] / 1000,
                "cpu_s_per_1k": per_k.get(role, float("nan")),
                "triton_cpu_s_per_1k": per_k.get("triton", float("nan")),
                "client_cpu_s_per_1k": client_per_k,
            }
        )
    return rows


def wrk_table(rows: list[dict], connections: int) -> str:
    base, w = rows[0], max(20, *(len(r["target"]) + 1 for r in rows))
    head = (
        f"{'target':<{w}}{'seq p50':>9}{'seq p99':>9}{'+p50':>8}{f'req/s@{connections}':>11}{'ratio':>7}"
        f"{'p50':>8}{'p99':>8}{'CPU s/1k':>10}{'Triton s/1k':>12}{'wrk s/1k':>10}{'vs off':>8}"
    )
    lines = [
        head,
        f"{'':<{w}}{'ms':>9}{'ms':>9}{'ms':>8}{'':>11}{'':>7}{'ms':>8}{'ms':>8}{'(server)':>10}{'':>12}{'(client)':>10}{'req/s':>8}",
    ]
    for r in rows:
        off = vs_off(r, rows)
        lines.append(
            f"{r['target']:<{w}}{r['seq_p50_ms']:9.3f}{r['seq_p99_ms']:9.3f}"
            f"{r['seq_p50_ms'] - base['seq_p50_ms']:8.3f}{r['rps']:11,.0f}{r['rps'] / base['rps']:7.2f}"
            f"{r['p50_ms']:8.2f}{r['p99_ms']:8.2f}{r['cpu_s_per_1k']:10.3f}{r['triton_cpu_s_per_1k']:12.3f}"
            f"{r.get('client_cpu_s_per_1k', float('nan')):10.3f}{'' if off is None else f'{off:.2f}':>8}"
        )
    return "\n".join(lines)


def vs_off(row: dict, rows: list[dict]) -> float | None:
    """A feature row's throughput over its target's with every feature off (its paired off measurement, else the
    run's plain one); None for an off row."""
    if "off_rps" in row:
        return row["rps"] / row["off_rps"]
    plain = row.get("off_target")
    found = next((r for r in rows if r["target"] == plain), None) if plain else None
    return None if found is None else row["rps"] / found["rps"]


def ranges_table(runs: list[list[dict]]) -> str:
    """Min-max over runs of each target's figures (ratios taken within each run)."""
    w = max(20, *(len(r["target"]) + 1 for r in runs[0]))
    lines = [
        f"{'target':<{w}}{'req/s':>16}{'ratio':>12}{'+seq p50 ms':>14}{'p99 ms (load)':>16}{'CPU s/1k':>14}"
        f"{'vs off':>12}"
    ]
    for i, first in enumerate(runs[0]):
        per = [run[i] for run in runs if i < len(run)]
        base = [run[0] for run in runs if i < len(run)]

        def span(values: list[float], fmt: str) -> str:
            lo, hi = min(values), max(values)
            return f"{lo:{fmt}}-{hi:{fmt}}" if len(values) > 1 else f"{lo:{fmt}}"

        offs = [o for run in runs if i < len(run) if (o := vs_off(run[i], run)) is not None]
        lines.append(
            f"{first['target']:<{w}}{span([r['rps'] for r in per], ',.0f'):>16}"
            f"{span([r['rps'] / b['rps'] for r, b in zip(per, base, strict=True)], '.2f'):>12}"
            f"{span([r['seq_p50_ms'] - b['seq_p50_ms'] for r, b in zip(per, base, strict=True)], '.3f'):>14}"
            f"{span([r['p99_ms'] for r in per], '.2f'):>16}"
            f"{span([r['cpu_s_per_1k'] for r in per], '.3f'):>14}"
            f"{span(offs, '.2f') if offs else '':>12}"
        )
    return "\n".join(lines)


# -- python mode -----------------------------------------------------------------------------
def direct_caller(url: str) -> Callable[[], None]:
    """One gRPC client shared by every thread."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    array = np.array([ROW], dtype=np.float32)
    outputs = [grpcclient.InferRequestedOutput(n) for n in ("label", "probabilities")]

    def call() -> None:
        tensor = grpcclient.InferInput("features", [1, 4], "FP32")
        tensor.set_data_from_numpy(array)
        client.infer(TRITON_MODEL, [tensor], outputs=outputs)

    return call


def http_caller(base: str, model: str, api_key: str | None) -> Callable[[], None]:
    """A keep-alive http.client connection per thread (the lightest Python HTTP client)."""
    parts = urlsplit(base)
    body = json.dumps({"model": model, "input": {"data": ROW}}).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    local = threading.local()

    def call() -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        conn.request("POST", "/v1/infer", body, headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")

    return call


def sequential(call: Callable[[], None], n: int) -> tuple[float, float]:
    """(p50, p99) latency in ms of ``n`` sequential calls (after a warm-up)."""
    for _ in range(min(50, n)):
        call()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def throughput(call: Callable[[], None], n: int, concurrency: int) -> float:
    """Requests per second of ``n`` calls spread over ``concurrency`` threads."""
    per_thread = max(1, n // concurrency)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(per_thread):
                call()
        except BaseException as exc:  # report, don't hang
            errors.append(exc)

    for _ in range(concurrency):
        call()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} worker(s) failed: {errors[0]}")
    return per_thread * concurrency / elapsed


def run_python(ep: Endpoints, n: int, concurrency: int) -> str:
    targets = {"triton-grpc": direct_caller(ep.triton_grpc), "function": http_caller(ep.function, ep.model, ep.key)}
    if ep.gateway:
        targets["gateway"] = http_caller(ep.gateway, ep.model, ep.key)
    rows = []
    for name, call in targets.items():
        p50, p99 = sequential(call, n)
        rows.append({"target": name, "p50_ms": p50, "p99_ms": p99, "rps": throughput(call, n, concurrency)})
    base = rows[0]
    lines = [f"{'target':<12} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {f'rps@{concurrency}':>9} {'rps ratio':>9}"]
    for r in rows:
        lines.append(
            f"{r['target']:<12} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {r['p50_ms'] - base['p50_ms']:8.3f} "
            f"{r['rps']:9.0f} {r['rps'] / base['rps']:9.2f}"
        )
    return "\n".join(lines)


# -- the system under test --------------------------------------------------------------------
@dataclass
class Backing:
    """What the served functions need: Triton, a scratch database with the model, a key."""

    triton: object
    settings: object
    key: str | None
    state: Path


@contextlib.contextmanager
def backing(auth: bool, shadow: bool = False, capture: bool = False) -> Iterator[Backing]:
    """Triton, a scratch database (dropped afterwards) holding the iris model, and a high-limit key."""
    import sqlalchemy as sa

    from shared.access import keys
    from shared.clients import db
    from shared.localstack.triton import TritonServer, default_repository
    from shared.services import Services
    from shared.settings import Settings
    from tests.conftest import PG_ADMIN_URL, free_port

    with tempfile.TemporaryDirectory() as state, contextlib.ExitStack() as stack:
        triton = stack.enter_context(
            TritonServer(default_repository(), Path(state), free_port(), free_port(), free_port())
        )
        name = f"kinfer_bench_{uuid.uuid4().hex[:8]}"
        capturing: dict[str, Any] = {}
        if capture:  # a local S3 server for the capture bucket
            import logging

            from shared.localstack.s3 import S3Server

            logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per PUT
            s3 = S3Server(port=free_port())
            s3.start()
            stack.callback(s3.stop)
            # CAPTURE_RULES_TTL_S stays at its default (5 s): each reload is a database read on the writer thread
            # (about 28 ms of its CPU here), so 0.5 s made capture look twice as dear as it is in production
            capturing = {"s3_endpoint_url": s3.url}
        url = sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
        stack.callback(_drop_database, PG_ADMIN_URL, name)
        settings = Settings.from_env(
            environ={},
            database_url=url,
            redis_url="redis://127.0.0.1:6379/1",
            auth_required=auth,
            triton_url=triton.grpc_url,
            log_level="WARNING",
            **capturing,
        )
        db.ensure_database(settings)
        db.upgrade(settings)
        services = Services(settings)
        try:
            services.registry.create_model(
                {
                    "name": TRITON_MODEL,
                    "version": "1",
                    "framework": "onnx",
                    "format": "onnx",
                    "backend_url": triton.grpc_url,
                    "triton_model": TRITON_MODEL,
                },
            )
            if shadow or capture:  # the same Triton model under a name with no feature (--ab's off side)
                services.registry.create_model(
                    {
                        "name": PLAIN_MODEL,
                        "version": "1",
                        "framework": "onnx",
                        "format": "onnx",
                        "backend_url": triton.grpc_url,
                        "triton_model": TRITON_MODEL,
                    },
                )
            if shadow:  # a second version to mirror to, behind the production alias
                services.registry.create_model(
                    {
                        "name": TRITON_MODEL,
                        "version": "2",
                        "framework": "onnx",
                        "format": "onnx",
                        "backend_url": triton.grpc_url,
                        "triton_model": TRITON_MODEL,
                    },
                )
                services.aliases.put_alias(TRITON_MODEL, "production", {"version": "1"})
            key = (
                services.keys.create_key(f"bench-{uuid.uuid4().hex[:6]}", "infer", rate_limit=keys.MAX_RATE_LIMIT)[1]
                if auth
                else None
            )
        finally:
            services.close()
        yield Backing(triton, settings, key, Path(state))


def served_env(b: Backing, extra_env: dict[str, str]) -> dict[str, str]:
    from tests.integration.servers import settings_env

    return {**os.environ, **settings_env(b.settings), **extra_env}


@contextlib.contextmanager
def self_contained(
    workers: int, auth: bool, extra_env: dict[str, str], shadow: bool = False, capture: bool = False
) -> Iterator[Endpoints]:
    """``backing`` plus the infer function and the gateway (``kinfer serve``) on free ports."""
    with backing(auth, shadow, capture) as b, contextlib.ExitStack() as stack:
        env = served_env(b, extra_env)
        function = _serve(
            stack,
            ["--target", "run_inference", "--source", "functions/infer/main.py"],
            workers,
            dict(env, K_SERVICE="infer"),
            b.state / "function.log",
        )
        gateway = _serve(stack, ["--gateway"], workers, dict(env, K_SERVICE="gateway"), b.state / "gateway.log")
        triton: Any = b.triton
        yield Endpoints(
            triton.http_url.removeprefix("http://"),
            triton.grpc_url,
            function[0],
            gateway[0],
            TRITON_MODEL,
            b.key,
            {"triton": triton.pid or 0, "function": function[1], "gateway": gateway[1]},
            b.settings,
        )


def set_shadow(ep: Endpoints, percent: int) -> None:
    """Mirror ``percent`` % of the production alias's requests to version 2 (0: off), then wait out the serving
    processes' resolution cache (``shared.inference.resolve``: at most about 1.25 s)."""
    from shared.services import Services

    services = Services(ep.settings)
    try:
        services.aliases.set_shadow(TRITON_MODEL, "production", {"shadow": {"2": percent} if percent else {}})
    finally:
        services.close()
    time.sleep(2)


def feature_phases(ep: Endpoints, shadow: int, capture: int) -> list[tuple[str, Callable[[bool], None]]]:
    """(label, switch on/off) of each measured feature set: the shadow, capture, and both at once."""
    phases: list[tuple[str, Callable[[bool], None]]] = []
    if shadow:
        phases.append((f"+shadow {shadow}%", lambda on: set_shadow(ep, shadow if on else 0)))
    if capture:
        phases.append((f"+capture {capture}%", lambda on: set_capture(ep, capture if on else 0)))
    if shadow and capture:

        def both(on: bool) -> None:
            set_shadow(ep, shadow if on else 0)
            set_capture(ep, capture if on else 0)

        phases.append((f"+capture {capture}% +shadow {shadow}%", both))
    return phases


def set_capture(ep: Endpoints, percent: int) -> None:
    """Capture ``percent`` % of the model's requests (0: no capture setting), then wait out the serving
    processes' copy of the settings (CAPTURE_RULES_TTL_S, its default 5 s)."""
    from shared.audit import Actor
    from shared.services import Services

    services = Services(ep.settings)
    try:
        if percent:
            services.capture_rules.put(TRITON_MODEL, {"sample_percent": percent}, Actor.system("benchmark"))
        else:
            services.capture_rules.delete(TRITON_MODEL, None, Actor.system("benchmark"))
    finally:
        services.close()
    time.sleep(6)


def _serve(
    stack: contextlib.ExitStack, args: list[str], workers: int, env: dict[str, str], log_path: Path
) -> tuple[str, int]:
    from tests.conftest import free_port

    port = free_port()
    log = log_path.open("wb")
    cmd = [
        sys.executable,
        "-m",
        "shared.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        *args,
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def stop() -> None:
        proc.terminate()
        proc.wait(10)
        log.close()

    stack.callback(stop)
    _wait_http(f"http://127.0.0.1:{port}/livez", proc, log_path)
    return f"http://127.0.0.1:{port}", proc.pid


def _wait_http(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 60) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited; its log:\n{log_path.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def _drop_database(admin_url: str, name: str) -> None:
    import sqlalchemy as sa

    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def local_stack(api_key: str | None) -> Endpoints:
    """The `kinfer up` ports; a key with a high rate limit is created unless one is given."""
    from shared.localstack.stack import load_state

    key = api_key
    if key is None:
        from shared.access import keys
        from shared.services import Services
        from shared.settings import Settings

        services = Services(Settings.from_env())
        try:
            key = services.keys.create_key(f"bench-{uuid.uuid4().hex[:6]}", "infer", rate_limit=keys.MAX_RATE_LIMIT)[1]
        finally:
            services.close()
    comps = load_state().get("components", {})
    roles = (("triton", "triton"), ("function", "infer"), ("gateway", "gateway"))
    pids = {role: int(comps[name]["pid"]) for role, name in roles if comps.get(name, {}).get("pid")}
    return Endpoints(
        "127.0.0.1:8000", "127.0.0.1:8001", "http://127.0.0.1:8082", "http://127.0.0.1:8080", TRITON_MODEL, key, pids
    )


def run_phases(
    ep: Endpoints,
    binary: str,
    args: argparse.Namespace,
    only: set[str] | None,
    phases: list[tuple[str, Callable[[bool], None]]],
    flip: bool,
) -> list[dict]:
    """Every target with the features off, then each feature set next to an off measurement of its own.

    The machine's speed drifts within a run (a shared VM: direct Triton moved by a third between runs), so a
    feature's "vs off" divides by the off measurement taken just before or just after it, never by one taken
    minutes earlier; the order within each pair alternates (``flip``: every other run starts with the feature
    on), so neither side always runs on a warmer server."""
    measure = lambda: run_wrk(ep, binary, args.connections, args.threads, args.duration, args.seq_duration, only)  # noqa: E731
    rows = measure()
    for n, (label, switch) in enumerate(phases):
        on_first = flip != (n % 2 == 1)
        if on_first:
            switch(True)
            on = measure()
            switch(False)
            off = measure()
        else:
            off = measure() if n else rows  # the first pair's off side is the plain measurement itself
            switch(True)
            on = measure()
            switch(False)
        plain = {r["target"]: r for r in off}
        rows += [
            dict(r, target=f"{r['target']} {label}", off_target=r["target"], off_rps=plain[r["target"]]["rps"])
            for r in on
            if r["role"] != "triton"
        ]
    return rows


def run_ab(ep: Endpoints, binary: str, args: argparse.Namespace, only: set[str] | None) -> list[dict]:
    """Features on and off in alternating slices of ``-d`` seconds, ``--ab`` pairs per target, no switch between.

    The "on" side calls the model that carries the capture setting and the shadow (``TRITON_MODEL``), the "off"
    side ``PLAIN_MODEL``, the same Triton model under a name with neither; both are served by the same
    processes, so a slow spell of the machine falls on both sides alike. Each pair alternates which side goes
    first, and a pause of ``--ab-gap`` seconds after every slice lets the capture writer finish the records of
    an "on" slice (``CAPTURE_FLUSH_S`` is 1 s in this mode) before the next slice is measured. The CPU columns
    include the pause; requests per second do not, so the last partial flush of each "on" slice (at most
    ``CAPTURE_BATCH_MAX`` records, under a third of a 3 s slice's at 1,000 req/s) does not compete with its
    requests: on/off reads at most about 1 % high here (the writer thread and process: about 0.02 ms a record).
    With no feature on, the two names serve alike (on/off 1.02, 3 us apart per request)."""
    rows = []
    for name, base, kind, _, key, role in wrk_targets(ep):
        if role == "triton" or (only and not any(o in name for o in only)):
            continue
        sides: dict[str, list[dict]] = {"on": [], "off": []}
        for model in (ep.model, PLAIN_MODEL):  # warm-up: connections, caches, the capture writer's first writes
            wrk(binary, base, kind, model, key, args.connections, args.threads, 5)
        for k in range(args.ab):
            for side in ("on", "off") if k % 2 == 0 else ("off", "on"):
                model = ep.model if side == "on" else PLAIN_MODEL
                before = {r: cpu_seconds(pid) for r, pid in ep.pids.items()}
                load = wrk(binary, base, kind, model, key, args.connections, args.threads, args.duration)
                time.sleep(args.ab_gap)  # the slice's last capture flush and shadow calls: charged to it
                load["cpu"] = {r: cpu_seconds(pid) - before[r] for r, pid in ep.pids.items()}
                sides[side].append(load)
        row: dict[str, Any] = {"target": name, "role": role}
        for side, loads in sides.items():
            n = sum(x["requests"] for x in loads)
            row[f"{side}_rps"] = n / (sum(x["duration_us"] for x in loads) / 1e6)
            row[f"{side}_cpu_ms"] = sum(x["cpu"].get(role, 0.0) for x in loads) / n * 1e6 / 1000
            row[f"{side}_triton_cpu_ms"] = sum(x["cpu"].get("triton", 0.0) for x in loads) / n * 1e6 / 1000
        row["pairs"] = [a["rps"] / b["rps"] for a, b in zip(sides["on"], sides["off"], strict=True)]
        rows.append(row)
    return rows


def ab_table(rows: list[dict], label: str) -> str:
    w = max(20, *(len(r["target"]) + 1 for r in rows))
    lines = [
        f"{'target':<{w}}{'off req/s':>11}{f'{label} req/s':>{len(label) + 8}}{'on/off':>8}"
        f"{'pairs min/median/max':>23}{'CPU ms/req off -> on':>23}{'Triton ms/req off -> on':>26}"
    ]
    for r in rows:
        pairs = sorted(r["pairs"])
        spread = f"{pairs[0]:.2f} / {statistics.median(pairs):.2f} / {pairs[-1]:.2f}"
        cpu = f"{r['off_cpu_ms']:.3f} -> {r['on_cpu_ms']:.3f}"
        triton = f"{r['off_triton_cpu_ms']:.3f} -> {r['on_triton_cpu_ms']:.3f}"
        lines.append(
            f"{r['target']:<{w}}{r['off_rps']:11,.0f}{r['on_rps']:{len(label) + 8},.0f}"
            f"{r['on_rps'] / r['off_rps']:8.3f}{spread:>23}{cpu:>23}{triton:>26}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("wrk", "python"), default="wrk")
    p.add_argument("--stack", action="store_true", help="measure the running `kinfer up` stack (fixed ports)")
    p.add_argument("--api-key", help="--stack: the key to send (default: create one with a high rate limit)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="uvicorn worker processes per server (self-contained; default 1: coalescing merges "
        "within a process, and on 2 cores one process feeds Triton bigger batches than two)",
    )
    p.add_argument("--no-auth", action="store_true", help="self-contained: serve without API keys")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra setting for the served function and gateway (repeatable)",
    )
    p.add_argument("-c", "--connections", type=int, default=8)
    p.add_argument("-t", "--threads", type=int, default=2, help="wrk threads")
    p.add_argument("-d", "--duration", type=float, default=8, help="seconds per wrk load run")
    p.add_argument("--seq-duration", type=float, default=4, help="seconds per sequential (1 connection) run")
    p.add_argument("--runs", type=int, default=1, help="repeat the whole set; ranges are printed")
    p.add_argument("--only", action="append", help="only targets whose name contains this (plus direct Triton)")
    p.add_argument("--no-install", action="store_true", help="never apt-get install wrk")
    p.add_argument("-n", "--requests", type=int, default=2000, help="python mode: requests per measurement")
    p.add_argument(
        "--shadow",
        type=int,
        default=0,
        metavar="PCT",
        help="self-contained wrk mode: measure again while PCT %% of requests are mirrored to a shadow version",
    )
    p.add_argument(
        "--capture",
        type=int,
        default=0,
        metavar="PCT",
        help="self-contained wrk mode: measure again while PCT %% of requests are captured to S3",
    )
    p.add_argument(
        "--ab",
        type=int,
        default=0,
        metavar="PAIRS",
        help="with --shadow/--capture: alternate PAIRS slices of -d seconds with the features on and off "
        "(two model names, no switching) instead of the paired phases; prints on/off per target",
    )
    p.add_argument("--ab-gap", type=float, default=1.5, help="--ab: seconds of pause after each slice")
    args = p.parse_args(argv)
    if args.ab and not (args.shadow or args.capture):
        p.error("--ab needs --shadow and/or --capture (the features to compare)")
    if args.shadow and (args.stack or args.mode != "wrk" or not 0 < args.shadow <= 100):
        p.error("--shadow PCT (1-100) needs the self-contained wrk mode")
    if args.capture and (args.stack or args.mode != "wrk" or not 0 < args.capture <= 100):
        p.error("--capture PCT (1-100) needs the self-contained wrk mode")
    extra = dict(item.split("=", 1) for item in args.env)
    if args.ab:  # an "on" slice's last records are written within the pause after it (see run_ab)
        extra.setdefault("CAPTURE_FLUSH_S", "1")
    binary = ensure_wrk(not args.no_install) if args.mode == "wrk" else ""
    with contextlib.ExitStack() as stack:
        if args.stack:
            ep = local_stack(args.api_key)
        else:
            ep = stack.enter_context(
                self_contained(args.workers, not args.no_auth, extra, args.shadow > 0, args.capture > 0)
            )
        if args.mode == "python":
            print(run_python(ep, args.requests, args.connections))
            return 0
        runs = []
        only = set(args.only) if args.only else None
        if args.capture:  # the capture writer process starts with the first setting (boto3's import, ~0.5 s of
            # CPU, once per process): start it before the first measured phase, which would otherwise carry it
            set_capture(ep, args.capture)
            for _, base, kind, model, key, role in wrk_targets(ep):
                if role != "triton":
                    wrk(binary, base, kind, model, key, args.connections, args.threads, 2)
            set_capture(ep, 0)
        if args.ab:
            print(f"A/B: on = {ep.model} (capture {args.capture} %, shadow {args.shadow} %), off = {PLAIN_MODEL}")
            if args.shadow:
                set_shadow(ep, args.shadow)
            if args.capture:
                set_capture(ep, args.capture)
            ab_runs = []
            for i in range(args.runs):
                ab_runs.append(run_ab(ep, binary, args, only))
                print(
                    f"\nrun {i + 1}/{args.runs}: {args.ab} pairs of wrk -c{args.connections} -t{args.threads} "
                    f"-d{args.duration:g}s, on and off alternating; {args.workers} uvicorn worker(s) per server"
                )
                print(ab_table(ab_runs[-1], "on"), flush=True)
            if args.runs > 1:
                print(f"\non/off over {args.runs} runs:")
                for i, first in enumerate(ab_runs[0]):
                    ratios = ", ".join(f"{run[i]['on_rps'] / run[i]['off_rps']:.3f}" for run in ab_runs)
                    print(f"  {first['target']}: {ratios}")
            return 0
        for i in range(args.runs):
            rows = run_phases(ep, binary, args, only, feature_phases(ep, args.shadow, args.capture), flip=i % 2 == 1)
            runs.append(rows)
            print(
                f"\nrun {i + 1}/{args.runs}: wrk -c{args.connections} -t{args.threads} -d{args.duration:g}s "
                f"(sequential: -c1 -d{args.seq_duration:g}s); {args.workers} uvicorn worker(s) per server"
            )
            print(wrk_table(rows, args.connections), flush=True)
        if args.runs > 1:
            print(f"\nranges over {args.runs} runs (min-max)")
            print(ranges_table(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
