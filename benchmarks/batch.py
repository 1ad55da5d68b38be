"""Batch benchmark: N iris items submitted over HTTP -> job completed, vs direct batched Triton gRPC calls.

Self-contained: a private PostgreSQL database (dropped afterwards), the moto S3 server, the
event relay (Redis Streams) and a Triton server (or ``--triton-url``), with the batch API and
the batch worker each served by ``kinfer serve`` (uvicorn) on free ports.

    .venv/bin/python benchmarks/batch.py --items 100000

Prints a table: end-to-end items/s vs direct items/s (same items, same run), their ratio, the
CPU-seconds per million items of every process (batch API, batch worker, S3 server, Triton, this
process: the event relay and the client) next to it, the S3 requests and PostgreSQL transactions of the job
(in all and per chunk: the round trips a cluster multiplies), and the worker's peak RSS (VmHWM) after a
small and after the big job (bounded by the chunk size means the two are close). The direct calls send
``--direct-batch`` rows each (default: the model's ``max_batch_size``, as Triton reports it); the submit
body is encoded before the clock starts, and the job's end is its ``finished_at``. ``--runs N`` repeats
the big job (and the direct calls) N times on the same stack and prints each run. ``--profile DIR``
records the batch API, the worker, the S3 server and this process with py-spy (``--gil``) during the
first big job (collapsed stacks, ``DIR/<process>.txt``; py-spy is not a dependency:
``.venv/bin/pip install py-spy``).

    .venv/bin/python benchmarks/batch.py --items 100000 --runs 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.realtime import cpu_seconds  # noqa: E402
from tests.conftest import free_port  # noqa: E402

IRIS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5], [6.3, 2.8, 5.1, 1.5]]


def items(n: int) -> list[list[float]]:
    rng = np.random.default_rng(7)
    base = np.array(IRIS * (n // len(IRIS) + 1), dtype=np.float32)[:n]
    return (base + rng.normal(0, 0.05, base.shape).astype(np.float32)).round(3).tolist()


def max_batch(grpc_url: str) -> int:
    """The iris model's max_batch_size, as Triton reports it."""
    import tritonclient.grpc as grpcclient

    config = grpcclient.InferenceServerClient(grpc_url).get_model_config("iris_classifier", as_json=True)
    return int(config["config"].get("max_batch_size", 0)) or 1


def direct(grpc_url: str, rows: list[list[float]], batch: int = 64) -> float:
    """Seconds for sequential batched Triton gRPC calls over ``rows`` (``batch`` rows each)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    outputs = [grpcclient.InferRequestedOutput("label"), grpcclient.InferRequestedOutput("probabilities")]
    started = time.perf_counter()
    for i in range(0, len(rows), batch):
        array = np.asarray(rows[i : i + batch], dtype=np.float32)
        tensor = grpcclient.InferInput("features", list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        client.infer("iris_classifier", [tensor], outputs=outputs)
    return time.perf_counter() - started


def http(method: str, url: str, body: Any = None, timeout: float = 300) -> Any:
    """``body``: JSON-able, or bytes already encoded."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def submit_body(model: str, rows: list[list[float]]) -> bytes:
    """The POST /v1/batch body, encoded before the clock starts: a client sends a body it has (its
    encoding is the client's cost, not the platform's)."""
    return json.dumps({"model": model, "inputs": [{"data": r} for r in rows]}, separators=(",", ":")).encode()


POLL_S = 0.2


def run_job(api: str, body: bytes) -> tuple[float, float, dict[str, Any]]:
    """(submit seconds, total seconds until finished, final status). The end is the job's ``finished_at``
    (the database's clock, on this machine): polls can then be as sparse as a client's, without their
    interval in the measurement nor their cost in the API's CPU."""
    from datetime import datetime

    started, wall = time.perf_counter(), time.time()
    job = http("POST", f"{api}/v1/batch", body)
    submitted = time.perf_counter() - started
    while True:
        status = http("GET", f"{api}/v1/batch/{job['job_id']}")
        if status["status"] in ("completed", "failed", "cancelled"):
            seen = time.perf_counter() - started
            finished = status.get("finished_at")
            total = datetime.fromisoformat(finished).timestamp() - wall if finished else seen
            return submitted, min(seen, max(total, submitted)), status
        time.sleep(POLL_S)


def peak_rss_mib(master_pid: int) -> float:
    """Largest VmHWM among the uvicorn parent's children (the worker processes); the server itself when it has
    none (one worker process serves in the parent)."""
    peaks = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) != master_pid:
                continue
            if (entry / "cmdline").read_bytes().find(b"shared.inference.capture") >= 0:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
        except (OSError, ValueError, IndexError):
            continue
    if not peaks:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{master_pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
    return max(peaks, default=0.0)


def serve(
    stack: ExitStack, folder: str, target: str, env: dict[str, str], workers: int, log_dir: Path
) -> tuple[str, int]:
    port = free_port()
    log = (log_dir / f"{folder}.log").open("wb")
    proc = subprocess.Popen(
        [
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
        ],
        cwd=ROOT,
        env={**os.environ, **env, "K_SERVICE": folder},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    stack.callback(lambda: (proc.terminate(), proc.wait(10), log.close()))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{folder} exited; see {log_dir / (folder + '.log')}")
        try:
            urllib.request.urlopen(url + "/health", timeout=1).close()
            return url, proc.pid
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{folder} did not start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=5_000, help="items of the memory-reference job")
    parser.add_argument("--chunk-size", type=int, help="items per chunk (default: BATCH_CHUNK_SIZE's default)")
    parser.add_argument("--pg-admin", default="postgresql+pg8000://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/1")
    parser.add_argument("--triton-url", default=None, help="an existing Triton gRPC host:port (default: start one)")
    parser.add_argument("--worker-processes", type=int, default=2)
    parser.add_argument("--relay-workers", type=int, default=8)
    parser.add_argument("--direct-batch", type=int, help="rows per direct call (default: the model's max_batch_size)")
    parser.add_argument("--runs", type=int, default=1, help="big jobs (and direct runs) on the same stack")
    parser.add_argument("--profile", metavar="DIR", help="py-spy the API and the worker during the first big job")
    args = parser.parse_args(argv)
    import logging

    from shared.settings import Settings

    args.chunk_size = args.chunk_size or Settings.from_env(environ={}).batch_chunk_size

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the in-process S3 server logs every request

    import redis
    import sqlalchemy as sa

    from shared.clients import db
    from shared.localstack.relay.server import EventRelay
    from shared.localstack.relay.wiring import Delivery, Subscription, Wiring
    from shared.localstack.s3 import S3Server
    from shared.services import Services
    from shared.settings import Settings
    from tests.integration.servers import settings_env

    uid = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="kinfer-bench-batch-"))
    db_url = sa.make_url(args.pg_admin).set(database=f"kinfer_bench_batch_{uid}").render_as_string(False)
    with ExitStack() as stack:
        allow = ("127.0.0.1:*",)  # the Triton this run starts listens on a free port
        settings = Settings.from_env(
            environ={}, database_url=db_url, redis_url=args.redis_url, auth_required=False, backend_allowlist=allow
        )
        db.ensure_database(settings)
        stack.callback(_drop_database, args.pg_admin, f"kinfer_bench_batch_{uid}")
        db.upgrade(settings)
        s3 = S3Server(port=free_port())
        s3_pid = s3.spawn(tmp / "s3.log")  # its own process: moto would otherwise share our GIL with the relay
        stack.callback(_stop_pid, s3_pid)
        grpc_url, triton_pid = (args.triton_url, None) if args.triton_url else _start_triton(stack, tmp)
        rds = redis.Redis.from_url(args.redis_url, socket_timeout=10)
        prefix = f"kinfer:bench:batch:{uid}:"
        stack.callback(lambda: [rds.delete(k) for k in rds.scan_iter(prefix + "*")])
        topic = f"kinfer.batch.chunks.{uid}"
        worker_env_settings = Settings.from_env(
            environ={},
            database_url=db_url,
            redis_url=args.redis_url,
            auth_required=False,
            s3_endpoint_url=s3.url,
            backend_allowlist=allow,
            batch_chunk_size=args.chunk_size,
            max_body_bytes=64 << 20,
            log_level="WARNING",
        )
        worker_url, worker_pid = serve(
            stack, "batch_worker", "process_batch_chunk", settings_env(worker_env_settings), args.worker_processes, tmp
        )
        sub = Subscription(
            name="batch-worker-source",
            namespace="kinfer",
            topics=(topic,),
            group="bench",
            sink=worker_url + "/",
            delivery=Delivery(retry=5, backoff_delay_s=0.2),
            initial_offset="earliest",
            ordering="unordered",
        )
        relay = EventRelay(
            rds,
            Wiring(sinks={"batch-chunks": topic}, subscriptions=(sub,)),
            port=free_port(),
            key_prefix=prefix,
            workers=args.relay_workers,
        )
        relay.start()
        stack.callback(relay.stop)
        api_settings = Settings.from_env(
            environ={}, **{**_fields(worker_env_settings), "k_sink": relay.sink_url("batch-chunks")}
        )
        api, api_pid = serve(stack, "batch", "manage_batch_jobs", settings_env(api_settings), 1, tmp)
        services = Services(settings)
        stack.callback(services.close)
        model = services.registry.create_model(
            {
                "name": f"iris-bench-{uid}",
                "version": "1",
                "framework": "onnx",
                "format": "onnx",
                "backend_url": grpc_url,
                "triton_model": "iris_classifier",
            },
        )["name"]
        rows = items(args.items)
        args.direct_batch = args.direct_batch or max_batch(grpc_url)
        direct(grpc_url, rows[:2000], args.direct_batch)  # warm up
        run_job(api, submit_body(model, items(args.chunk_size * 4 * args.worker_processes)))  # every process warm
        _, small_s, small = run_job(api, submit_body(model, items(args.small)))
        rss_small = peak_rss_mib(worker_pid)
        parts = {
            "batch API": api_pid,
            "batch worker": worker_pid,
            "S3 server": s3_pid,
            "Triton": triton_pid,
            "this process (relay, client)": os.getpid(),
        }
        print(
            f"\nbatch benchmark: {args.items:,} iris items, chunk {args.chunk_size}, worker "
            f"{args.worker_processes} uvicorn worker(s), relay {args.relay_workers} parallel"
        )
        for run in range(args.runs):
            profilers = (
                _profile(args.profile, {k: v for k, v in parts.items() if v and k != "Triton"}) if not run else []
            )
            counts_before = _round_trips(tmp / "s3.log", args.pg_admin, f"kinfer_bench_batch_{uid}")
            measured = _measure(api, model, grpc_url, rows, parts, triton_pid, args.direct_batch)
            time.sleep(11)  # PostgreSQL publishes an idle connection's statistics within 10 s
            counts_after = _round_trips(tmp / "s3.log", args.pg_admin, f"kinfer_bench_batch_{uid}")
            measured["round_trips"] = {k: counts_after[k] - counts_before[k] for k in counts_after}
            for stop in profilers:
                stop()
            _report(run, args, measured)
        print(
            f"worker peak RSS (VmHWM): {rss_small:.0f} MiB after a {args.small:,}-item job "
            f"({small_s:.1f}s), {peak_rss_mib(worker_pid):.0f} MiB after the {args.items:,}-item job(s)"
        )
    return 0


def _cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its descendants; this process's children are counted on their own."""
    return cpu_seconds(pid, descendants=pid != os.getpid())


def _measure(
    api: str,
    model: str,
    grpc_url: str,
    rows: list[list[float]],
    parts: dict[str, int | None],
    triton_pid: int | None,
    batch: int,
) -> dict[str, Any]:
    """One direct run and one big job: their seconds, and the CPU seconds each process spent in each."""
    triton_before = _cpu(triton_pid) if triton_pid else 0.0
    me_before = _cpu(os.getpid())
    direct_s = direct(grpc_url, rows, batch)
    direct_cpu = {"Triton": _cpu(triton_pid) - triton_before if triton_pid else 0.0}
    direct_cpu["this process (client)"] = _cpu(os.getpid()) - me_before
    body = submit_body(model, rows)
    before = {name: _cpu(pid) for name, pid in parts.items() if pid}
    submit_s, total_s, big = run_job(api, body)
    used = {name: _cpu(pid) - before[name] for name, pid in parts.items() if pid}
    assert big["status"] == "completed" and big["succeeded"] == len(rows), big
    return {"direct_s": direct_s, "direct_cpu": direct_cpu, "submit_s": submit_s, "total_s": total_s, "used": used}


def _round_trips(s3_log: Path, pg_admin: str, database: str) -> dict[str, int]:
    """Requests the S3 server has logged and transactions PostgreSQL has counted for the job database so far."""
    import sqlalchemy as sa

    with s3_log.open("rb") as f:
        s3 = sum(1 for line in f if b'HTTP/1.1"' in line)
    engine = sa.create_engine(pg_admin)
    try:
        with engine.connect() as conn:
            xacts = conn.execute(
                sa.text("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = :name"),
                {"name": database},
            ).scalar_one()
    finally:
        engine.dispose()
    return {"S3 requests": s3, "PostgreSQL transactions": int(xacts)}


def _report(run: int, args: argparse.Namespace, m: dict[str, Any]) -> None:
    n = args.items
    per_m = 1_000_000 / n
    e2e_rate, direct_rate = n / m["total_s"], n / m["direct_s"]
    print(f"\nrun {run + 1} of {args.runs}")
    print(f"{'path':<44}{'seconds':>10}{'items/s':>12}{'ratio':>8}{'CPU-s/M items':>15}")
    direct_cpu = sum(m["direct_cpu"].values()) * per_m
    label = f"direct Triton gRPC, sequential batches of {args.direct_batch}"
    print(f"{label:<44}{m['direct_s']:>10.2f}{direct_rate:>12,.0f}{1:>8.2f}{direct_cpu:>15.1f}")
    total_cpu = sum(m["used"].values()) * per_m
    print(
        f"{'batch job: POST -> completed (end to end)':<44}{m['total_s']:>10.2f}{e2e_rate:>12,.0f}"
        f"{e2e_rate / direct_rate:>8.2f}{total_cpu:>15.1f}"
    )
    print(f"{'  of which POST /v1/batch (202)':<44}{m['submit_s']:>10.2f}")
    print(
        "CPU-seconds per million items, direct: "
        + ", ".join(f"{k} {s * per_m:.1f}" for k, s in m["direct_cpu"].items())
    )
    print(
        "CPU-seconds per million items, batch job: "
        + ", ".join(f"{name} {s * per_m:.1f}" for name, s in m["used"].items())
        + f"; all {total_cpu:.1f}"
    )
    chunks = -(-n // args.chunk_size)
    print(
        f"round trips of the job ({chunks} chunks; other services' background reads included): "
        + ", ".join(f"{k} {v:,} ({v / chunks:.1f} per chunk)" for k, v in m.get("round_trips", {}).items())
    )


def _profile(folder: str | None, pids: dict[str, int]) -> list[Any]:
    """py-spy recorders (collapsed stacks) of ``pids`` and their children; each returned callable stops one."""
    if not folder:
        return []
    import shutil
    import signal

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    Path(folder).mkdir(parents=True, exist_ok=True)
    stops = []
    for name, pid in pids.items():
        out = Path(folder) / (name.replace(" ", "_") + ".txt")
        proc = subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(pid),
                "--subprocesses",
                "--format",
                "raw",
                "--gil",
                "--rate",
                "250",
                "-o",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        stops.append(lambda proc=proc: (proc.send_signal(signal.SIGINT), proc.wait(30)))
    time.sleep(1.0)  # py-spy attaches
    return stops


def _fields(settings: Any) -> dict[str, Any]:
    from dataclasses import fields

    return {f.name: getattr(settings, f.name) for f in fields(settings)}


def _start_triton(stack: ExitStack, tmp: Path) -> tuple[str, int | None]:
    from shared.localstack.triton import TritonServer, default_repository

    ports = [free_port() for _ in range(3)]
    server = TritonServer(
        default_repository(), tmp / "triton", http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2]
    )
    (tmp / "triton").mkdir(exist_ok=True)
    server.start(timeout=180)
    stack.callback(server.stop)
    return server.grpc_url, server.pid


def _stop_pid(pid: int) -> None:
    import signal

    os.kill(pid, signal.SIGTERM)


def _drop_database(admin_url: str, name: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
