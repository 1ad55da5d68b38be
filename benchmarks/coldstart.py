"""Cold start of the infer function (Knative scales it to zero): import time, then a served process's
first answers.

1. ``python -X importtime -c 'import functions.infer.main'``: the module import, median and range over runs.
2. ``kinfer serve`` of the infer function, started from nothing (against a real Triton, database and
   Redis): seconds until it listens (``/livez``), then the latency of its first ``/v1/infer`` (connections to
   PostgreSQL, Redis and Triton made, lazy imports paid, key and model looked up) and of the second.

    .venv/bin/python benchmarks/coldstart.py --runs 5

3. ``--from-zero``: Triton scaled to zero behind the local activator (``shared.localstack.activator``, what
   ``kinfer up --scale-to-zero`` runs), the infer function reaching it only through the activator: per run,
   the time to the first answer of a sync request with ``Prefer: wait=60``, the same for a direct Triton
   start (the baseline: ``tritonserver`` started, every model loaded, the first v2 infer answered), and
   how many of a stream of requests (one every 50 ms, with and without ``Prefer: wait``) failed while it
   woke. Async (``Prefer: respond-async``): the event relay (its own process, wired from ``knative/base``
   as ``kinfer up`` runs it), ``batch_worker`` and ``batch_deadletter`` run too; per run, the time from
   the submit (202) to the result read by polling ``GET /v1/requests/{id}`` while Triton wakes (the worker
   is what wakes it), and how many of a stream of async requests submitted over a wake (one every 50 ms)
   were lost: not ``succeeded`` with the right answer within 180 s of the last submit (must be 0: the
   exit status is 1 otherwise).

    .venv/bin/python benchmarks/coldstart.py --from-zero --runs 5
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.realtime import ROW, TRITON_MODEL, backing, served_env  # noqa: E402


def import_seconds() -> float:
    out = (
        subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import functions.infer.main"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        .stderr.strip()
        .splitlines()
    )
    last = [line for line in out if line.endswith("functions.infer.main")][-1]
    return int(last.split("|")[1]) / 1e6


def first_answers(env: dict[str, str], port: int, key: str | None, log: Path) -> tuple[float, float, float]:
    """(seconds until /livez answers, first /v1/infer ms, second /v1/infer ms) of a fresh process."""
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
        "run_inference",
        "--source",
        "functions/infer/main.py",
    ]
    started = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(env, K_SERVICE="infer"), stdout=out, stderr=subprocess.STDOUT)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the function exited; see {log}")
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/livez")
                conn.getresponse().read()
                break
            time.sleep(0.005)
        listening = time.perf_counter() - started
        body = json.dumps({"model": TRITON_MODEL, "input": {"data": ROW}})
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        latencies = []
        for _ in range(2):
            t0 = time.perf_counter()
            conn.request("POST", "/v1/infer", body, headers)
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
            latencies.append((time.perf_counter() - t0) * 1000)
        return listening, latencies[0], latencies[1]
    finally:
        proc.terminate()
        proc.wait(10)


def post(url: str, body: bytes, headers: dict[str, str], timeout: float = 180) -> tuple[int, dict[str, str]]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, body, {"Content-Type": "application/json", **headers}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            resp.read()
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}


def direct_start(state: Path) -> float:
    """Seconds from starting tritonserver (every demo model loaded) to its first v2 infer answer."""
    from shared.localstack.triton import TritonServer, default_repository
    from tests.conftest import free_port

    server = TritonServer(default_repository(), state, free_port(), free_port(), free_port())
    body = json.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [ROW]}]}).encode()
    started = time.perf_counter()
    try:
        server.start(timeout=120)
        code, _ = post(f"{server.http_url}/v2/models/{TRITON_MODEL}/infer", body, {})
        if code != 200:
            raise RuntimeError(f"direct Triton infer answered {code}")
        return time.perf_counter() - started
    finally:
        server.stop()


def stream_over_wake(running: Any, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, int]:
    """(requests, failed): one request every 50 ms from the scale-down until the activator serves again
    and one more second, each in its own thread."""
    from concurrent.futures import ThreadPoolExecutor

    assert running.scale_to_zero()
    futures = []
    with ThreadPoolExecutor(64) as pool:
        deadline = None
        while deadline is None or time.monotonic() < deadline:
            futures.append(pool.submit(post, url, body, headers))
            if deadline is None and running.activator.state == "serving":
                deadline = time.monotonic() + 1.0
            time.sleep(0.05)
        codes = [f.result()[0] for f in futures]
    return len(codes), sum(1 for c in codes if c != 200)


def get_json(url: str, timeout: float = 30) -> tuple[int, dict[str, Any]]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, cast(dict[str, Any], json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        return exc.code, cast(dict[str, Any], json.loads(exc.read() or b"{}"))


ASYNC_DEADLINE_S = 180.0  # an async request not final this long after the last submit counts as lost


def async_outcomes(base: str, locations: list[str]) -> list[dict[str, Any]]:
    """Poll each ``GET /v1/requests/{id}`` until it is final (``succeeded``/``failed``) or the deadline."""
    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + ASYNC_DEADLINE_S
    while len(found) < len(locations) and time.monotonic() < deadline:
        for loc in locations:
            if loc not in found:
                code, body = get_json(base + loc)
                if code == 200 and body["status"] in ("succeeded", "failed"):
                    found[loc] = body
        time.sleep(0.05)
    return [found.get(loc, {"status": "lost"}) for loc in locations]


def answered(outcome: dict[str, Any]) -> bool:
    """A final async outcome with the right answer (the iris row is a setosa)."""
    return outcome["status"] == "succeeded" and outcome["result"].get("prediction") == "setosa"


def async_first(running: Any, base: str, body: bytes) -> tuple[float, int, float]:
    """Triton scaled to zero; (seconds from the submit to the result read, delivery attempts, seconds the
    worker ran it: ``started_at`` to ``finished_at``, waiting for Triton included)."""
    assert running.scale_to_zero()
    t0 = time.perf_counter()
    code, headers = post(f"{base}/v1/infer", body, {"Prefer": "respond-async"})
    if code != 202:
        raise RuntimeError(f"Prefer: respond-async answered {code}")
    loc = headers["location"]
    while True:
        code, found = get_json(base + loc)
        if code == 200 and found["status"] in ("succeeded", "failed"):
            break
        if time.perf_counter() - t0 > ASYNC_DEADLINE_S:
            raise RuntimeError(f"async request {loc} not final after {ASYNC_DEADLINE_S:.0f}s")
        time.sleep(0.05)
    if not answered(found):
        raise RuntimeError(f"async request {loc} ended {found['status']}: {found.get('result')}")
    from datetime import datetime

    ran = datetime.fromisoformat(found["finished_at"]) - datetime.fromisoformat(found["started_at"])
    return time.perf_counter() - t0, int(found["attempts"]), ran.total_seconds()


def async_over_wake(running: Any, base: str, body: bytes) -> tuple[int, int, int]:
    """(submitted, lost, redelivered): one async request every 50 ms from the scale-down until the
    activator serves again and one more second; then each polled until final."""
    assert running.scale_to_zero()
    locations = []
    deadline = None
    while deadline is None or time.monotonic() < deadline:
        code, headers = post(f"{base}/v1/infer", body, {"Prefer": "respond-async"})
        if code != 202:
            raise RuntimeError(f"Prefer: respond-async answered {code}")
        locations.append(headers["location"])
        if deadline is None and running.activator.state == "serving":
            deadline = time.monotonic() + 1.0
        time.sleep(0.05)
    outcomes = async_outcomes(base, locations)
    lost = sum(1 for o in outcomes if not answered(o))
    return len(locations), lost, sum(1 for o in outcomes if o.get("attempts", 0) > 1)


@contextlib.contextmanager
def event_path(settings: Any, state: Path) -> Any:
    """What async inference needs besides the infer function, as ``kinfer up`` runs it: ``batch_worker``
    and ``batch_deadletter`` (``kinfer serve``) and the event relay (its own process, wired from
    ``knative/base``); yields ``settings`` with K_SINK pointing at the relay."""
    import uuid

    import redis

    from shared.localstack import procs
    from shared.localstack.relay import server as relay_server
    from tests.conftest import free_port
    from tests.integration.servers import serve_function

    relay_port, uid = free_port(), uuid.uuid4().hex[:8]
    settings = dataclasses.replace(
        settings,
        k_sink=f"http://127.0.0.1:{relay_port}/kinfer/batch-chunks",
        request_max_active=10_000,  # one anonymous caller submits the whole stream (100 per key by default)
    )
    prefix = f"kinfer:bench:{uid}:"
    nowhere = f"http://127.0.0.1:{free_port()}/"  # batch-intake and backends: no events for them here
    with contextlib.ExitStack() as stack:
        worker = stack.enter_context(serve_function("batch_worker", "process_batch_chunk", free_port(), settings))
        dead = stack.enter_context(serve_function("batch_deadletter", "fail_dead_chunk", free_port(), settings))
        pid = relay_server.spawn(
            {
                "batch-worker": f"{worker}/",
                "batch-deadletter": f"{dead}/",
                "batch-intake": nowhere,
                "backends": nowhere,
            },
            port=relay_port,
            redis_url=settings.redis_url,
            log_path=state / "relay.log",
            key_prefix=prefix,
        )
        stack.callback(procs.stop, pid)
        client = redis.Redis.from_url(settings.redis_url)
        stack.callback(lambda: [client.delete(k) for k in client.scan_iter(f"{prefix}*")])
        yield settings


def from_zero(runs: int) -> int:
    """The ``--from-zero`` rows (see the module docstring)."""
    from benchmarks.realtime import backing
    from shared.localstack.activator import Activator, ActivatorThread, Route, TritonPod
    from shared.localstack.triton import TritonServer, default_repository
    from shared.services import Services
    from shared.settings import Settings
    from tests.conftest import free_port
    from tests.integration.servers import serve_function

    sync_s, baseline_s, wakes, async_s, attempts, async_ran_s, async_wakes = [], [], [], [], [], [], []
    plain: list[tuple[int, int]] = []
    waiting: list[tuple[int, int]] = []
    streams: list[tuple[int, int, int]] = []
    with backing(auth=False) as b:
        b.triton.stop()  # type: ignore[attr-defined]  # backing's own Triton: this harness starts its own
        internal = [free_port() for _ in range(3)]
        public = free_port()
        pod = TritonPod(TritonServer(default_repository(), b.state / "pod", internal[0], internal[1], internal[2]))
        running = ActivatorThread(Activator(pod, (Route(public, internal[1]),), idle_s=3600, hold_s=120))
        backend = f"127.0.0.1:{public}"
        settings = dataclasses.replace(
            cast(Settings, b.settings),
            triton_url=backend,
            probe_triton_url=False,
            backend_allowlist=("*",),
            check_backends=False,
        )
        services = Services(settings)
        name = f"{TRITON_MODEL}-zero"
        services.registry.create_model(
            {
                "name": name,
                "version": "1",
                "framework": "onnx",
                "format": "onnx",
                "backend_url": backend,
                "triton_model": TRITON_MODEL,
            }
        )
        services.close()
        try:
            with (
                event_path(settings, b.state) as settings,
                serve_function("infer", "run_inference", free_port(), settings) as base,
            ):
                url = f"{base}/v1/infer"
                body = json.dumps({"model": name, "input": {"data": ROW}}).encode()
                if post(url, body, {"Prefer": "wait=60"})[0] != 200:
                    raise RuntimeError("the warm request failed")
                for i in range(runs):
                    assert running.scale_to_zero()
                    t0 = time.perf_counter()
                    code, _ = post(url, body, {"Prefer": "wait=60"})
                    if code != 200:
                        raise RuntimeError(f"sync with Prefer: wait answered {code}")
                    sync_s.append(time.perf_counter() - t0)
                    wakes.append(running.activator.last_wake_s or 0.0)
                    plain.append(stream_over_wake(running, url, body, {}))
                    waiting.append(stream_over_wake(running, url, body, {"Prefer": "wait=60"}))
                    seconds, tries, ran = async_first(running, base, body)
                    async_s.append(seconds)
                    attempts.append(tries)
                    async_ran_s.append(ran)
                    async_wakes.append(running.activator.last_wake_s or 0.0)
                    streams.append(async_over_wake(running, base, body))
                    baseline_s.append(direct_start(b.state / f"direct-{i}"))
        finally:
            running.close()
    print(f"\nfrom zero (Triton stopped behind the local activator), {runs} runs: median (min-max)")
    print(f"{'direct Triton start -> first answer':<46}{span([s * 1000 for s in baseline_s], '.0f')} ms")
    print(f"{'sync Prefer: wait=60 -> first answer':<46}{span([s * 1000 for s in sync_s], '.0f')} ms")
    print(f"{'  of which the activator waking Triton':<46}{span([s * 1000 for s in wakes], '.0f')} ms")
    for label, rows in (("no Prefer", plain), ("Prefer: wait=60", waiting)):
        sent, failed = sum(r[0] for r in rows), sum(r[1] for r in rows)
        print(f"{'failed while waking, ' + label:<46}{failed} of {sent} ({span([r[1] for r in rows], '.0f')} per wake)")
    print(
        f"{'async Prefer: respond-async -> result':<46}{span([s * 1000 for s in async_s], '.0f')} ms "
        f"(delivery attempts {span([float(a) for a in attempts], '.0f')}; REQUEST_WAIT_S={settings.request_wait_s:g})"
    )
    print(f"{'  of which the worker running it':<46}{span([s * 1000 for s in async_ran_s], '.0f')} ms")
    print(f"{'  of which the activator waking Triton':<46}{span([s * 1000 for s in async_wakes], '.0f')} ms")
    sent, lost = sum(r[0] for r in streams), sum(r[1] for r in streams)
    redelivered = sum(r[2] for r in streams)
    print(
        f"{'async lost while waking':<46}{lost} of {sent} ({span([r[1] for r in streams], '.0f')} per wake; "
        f"{redelivered} ran again after a retryable failure)"
    )
    return 1 if lost else 0  # an async request lost over a wake is a bug, not a slow run


def span(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--from-zero", action="store_true", help="Triton scaled to zero behind the local activator")
    args = p.parse_args(argv)
    if args.from_zero:
        return from_zero(args.runs)
    imports = [import_seconds() for _ in range(args.runs)]
    from tests.conftest import free_port

    with backing(auth=True) as b:
        env = served_env(b, {})
        runs = [first_answers(env, free_port(), b.key, b.state / f"cold-{i}.log") for i in range(args.runs)]
    print(f"\ninfer function cold start, {args.runs} runs: median (min-max)")
    print(f"{'import functions.infer.main':<42}{span([s * 1000 for s in imports], '.0f')} ms")
    print(f"{'process start -> /livez answers':<42}{span([r[0] * 1000 for r in runs], '.0f')} ms")
    print(f"{'first /v1/infer (connections, lookups)':<42}{span([r[1] for r in runs], '.1f')} ms")
    print(f"{'second /v1/infer':<42}{span([r[2] for r in runs], '.1f')} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
