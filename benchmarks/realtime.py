"""Real-time inference overhead: direct Triton gRPC vs POST /v1/infer (function, and gateway if given).

Same model, same run: sequential latency (p50/p99) and throughput at a given concurrency,
printed as a table with ratios to direct Triton.

    python benchmarks/realtime.py --self-contained            # starts Triton, a DB, and the infer function
    python benchmarks/realtime.py --triton 127.0.0.1:8001 --target http://127.0.0.1:8082 \\
        --gateway http://127.0.0.1:8080 --model iris_classifier --api-key demo-token
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ROW = [5.1, 3.5, 1.4, 0.2]


def direct_caller(url: str, triton_model: str) -> Callable[[], None]:
    """One gRPC client shared by every thread (as the infer function does)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    array = np.array([ROW], dtype=np.float32)
    outputs = [grpcclient.InferRequestedOutput(n) for n in ("label", "probabilities")]

    def call() -> None:
        tensor = grpcclient.InferInput("features", [1, 4], "FP32")
        tensor.set_data_from_numpy(array)
        client.infer(triton_model, [tensor], outputs=outputs)

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

    for _ in range(concurrency):  # warm every per-thread connection
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


def run(targets: dict[str, Callable[[], None]], n: int, concurrency: int) -> list[dict]:
    rows = []
    for name, call in targets.items():
        p50, p99 = sequential(call, n)
        rps = throughput(call, n, concurrency)
        rows.append({"target": name, "p50_ms": p50, "p99_ms": p99, "rps": rps})
    return rows


def table(rows: list[dict], concurrency: int) -> str:
    base = rows[0]
    lines = [f"{'target':<12} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {f'rps@{concurrency}':>9} {'rps ratio':>9}"]
    for r in rows:
        lines.append(f"{r['target']:<12} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {r['p50_ms'] - base['p50_ms']:8.3f} "
                     f"{r['rps']:9.0f} {r['rps'] / base['rps']:9.2f}")
    return "\n".join(lines)


@contextlib.contextmanager
def self_contained(workers: int) -> Iterator[tuple[str, str, str]]:
    """Start Triton, a scratch database and the infer function; yields (triton url, function url, model)."""
    sys.path.insert(0, str(ROOT))
    import os
    import subprocess

    import sqlalchemy as sa

    from shared import registry
    from shared.clients import db
    from shared.localstack.triton import TritonServer, default_repository
    from shared.services import reset_services
    from shared.settings import Settings
    from tests.conftest import PG_ADMIN_URL, free_port
    from tests.integration.servers import settings_env

    with tempfile.TemporaryDirectory() as state, TritonServer(
            default_repository(), Path(state), free_port(), free_port(), free_port()) as triton:
        name = f"kinfer_bench_{uuid.uuid4().hex[:8]}"
        url = sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
        settings = Settings.from_env(environ={}, database_url=url, redis_url="redis://127.0.0.1:6379/1",
                                     auth_required=False, triton_url=triton.grpc_url, log_level="WARNING")
        db.ensure_database(settings)
        db.upgrade(settings)
        model = f"bench-{uuid.uuid4().hex[:6]}"
        registry.create_model(reset_services(settings), {"name": model, "version": "1", "framework": "onnx",
                                                         "format": "onnx", "backend_url": triton.grpc_url,
                                                         "triton_model": "iris_classifier"})
        reset_services(None)
        port = free_port()
        env = {**os.environ, **settings_env(settings), "K_SERVICE": "infer"}
        cmd = [sys.executable, "-m", "shared.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--target", "run_inference", "--source", "functions/infer/main.py",
               "--workers", str(workers)]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
        try:
            _wait_http(f"http://127.0.0.1:{port}/health")
            yield triton.grpc_url, f"http://127.0.0.1:{port}", model
        finally:
            proc.terminate()
            proc.wait(10)
            admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def _wait_http(url: str, timeout: float = 30) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--triton", default="127.0.0.1:8001", help="Triton gRPC host:port")
    p.add_argument("--target", default="http://127.0.0.1:8082", help="infer function base URL")
    p.add_argument("--gateway", help="gateway base URL (optional third row)")
    p.add_argument("--model", default="iris_classifier", help="registry model name")
    p.add_argument("--triton-model", default="iris_classifier")
    p.add_argument("--api-key", help="sent as Authorization: Bearer")
    p.add_argument("-n", "--requests", type=int, default=2000)
    p.add_argument("-c", "--concurrency", type=int, default=8)
    p.add_argument("--self-contained", action="store_true", help="start Triton, a DB and the function here")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (self-contained)")
    args = p.parse_args(argv)
    with contextlib.ExitStack() as stack:
        triton, target, model = args.triton, args.target, args.model
        if args.self_contained:
            triton, target, model = stack.enter_context(self_contained(args.workers))
        targets = {"triton-grpc": direct_caller(triton, args.triton_model),
                   "function": http_caller(target, model, args.api_key)}
        if args.gateway:
            targets["gateway"] = http_caller(args.gateway, model, args.api_key)
        rows = run(targets, args.requests, args.concurrency)
    print(table(rows, args.concurrency))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
