"""Lifecycle benchmark on the running local stack: seconds from `kinfer models push` to the first
successful inference, against loading the same ONNX file straight into a Triton of our own (the
baseline, same run); and failed requests while an alias is promoted and rolled back under load.

    flock /work/tmp/stack.lock sh -c '.venv/bin/kinfer up && .venv/bin/python benchmarks/lifecycle.py; \\
        .venv/bin/kinfer down'

Push: the CLI's own ``push`` (register, stream the file, checksum) then POST /v1/infer through the
gateway every 20 ms until it answers 200 (the agent mirrors the version from S3, loads it, and every
replica's heartbeat makes it ready). Baseline: the file, the config Kinfer would write and the
Python-backend runner written into a repository folder, Triton's repository API load, then
gRPC inference until it answers. Promote: 8 threads infer through alias ``production`` while it
moves between versions (promote, split, rollback) every 0.5 s; target: 0 failed requests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import percentile  # noqa: E402
from shared.cli.models import Api, push  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.lifecycle_support import linear_onnx  # noqa: E402

GATEWAY = "http://127.0.0.1:8080"
KEY = ""  # a key of its own, without the dev key's rate limit (made in main)


def infer(name: str, version: str | None = None, route_key: str | None = None, x: float = 1.0) -> tuple[int, dict]:
    body = {"model": name, "input": {"data": [x]}, **({"version": version} if version else {})}
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    if route_key:
        headers["X-Route-Key"] = route_key
    request = urllib.request.Request(
        GATEWAY + "/v1/infer", data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def push_to_first_inference(api: Api, name: str, version: str, file: Path) -> float:
    started = time.perf_counter()
    push(api, file, name, version, show_progress=False)
    while True:
        status, body = infer(name, version)
        if status == 200:
            return time.perf_counter() - started
        if status not in (503,) or time.perf_counter() - started > 120:
            raise RuntimeError(f"{name} {version}: {status} {body}")
        time.sleep(0.02)


def direct_triton(files: list[Path], work: Path) -> list[float]:
    """Write each model folder into a Triton of our own, load it through its API, infer until it answers."""
    import tritonclient.grpc as grpcclient

    from shared.lifecycle import onnxgraph, tritonconfig
    from shared.localstack.triton import TritonServer

    repo = work / "repository"
    repo.mkdir()
    ports = [free_port() for _ in range(3)]
    times = []
    with TritonServer(repo, work / "triton", *ports, load_models=(), strict_readiness=False) as triton:
        client = grpcclient.InferenceServerClient(triton.grpc_url)
        for i, file in enumerate(files):
            started = time.perf_counter()
            name = f"direct{i}"
            (repo / name / "1").mkdir(parents=True)
            (repo / name / "1" / "model.onnx").write_bytes(file.read_bytes())
            (repo / name / "1" / "model.py").write_bytes(onnxgraph.runner_source())
            config = onnxgraph.config_text(onnxgraph.load(file), name, "python", 64)
            (repo / name / "config.pbtxt").write_text(tritonconfig.with_versions(config, [1]))
            request = urllib.request.Request(
                f"{triton.http_url}/v2/repository/models/{name}/load", data=b"{}", method="POST"
            )
            urllib.request.urlopen(request, timeout=120).close()
            tensor = grpcclient.InferInput("x", [1, 1], "FP32")
            tensor.set_data_from_numpy(np.array([[1.0]], np.float32))
            client.infer(name, [tensor], model_version="1")
            times.append(time.perf_counter() - started)
        client.close()
    return times


def promote_under_load(api: Api, name: str, moves: int, threads: int = 8) -> dict:
    stop, statuses, versions, latencies = threading.Event(), Counter(), Counter(), []
    lock = threading.Lock()

    def worker(i: int) -> None:
        n = 0
        while not stop.is_set():
            started = time.perf_counter()
            status, body = infer(name, route_key=f"bench-{i}-{n % 50}")
            with lock:
                statuses[status] += 1
                latencies.append(time.perf_counter() - started)
                versions[body.get("version", "-")] += 1
            n += 1

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    path = f"/v1/models/by-name/{name}/aliases/production"
    api.call("PUT", path, {"version": "1"})
    for t in pool:
        t.start()
    plan = [
        {"version": "2"},
        None,
        {"versions": {"1": 90, "2": 10}},
        {"versions": {"1": 50, "2": 50}},
        {"version": "2"},
        None,
    ]
    started = time.perf_counter()
    for i in range(moves):
        time.sleep(0.5)
        step = plan[i % len(plan)]
        api.call("PUT", path, step) if step else api.call("POST", path + "/rollback")
    time.sleep(0.5)
    stop.set()
    for t in pool:
        t.join(30)
    elapsed = time.perf_counter() - started
    total = sum(statuses.values())
    return {
        "requests": total,
        "failed": total - statuses[200],
        "statuses": dict(statuses),
        "moves": moves,
        "versions": dict(versions),
        "rps": total / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


def bench_key() -> str:
    """An admin+infer key for this run, rate limited far above what 8 threads send (the stack's database)."""
    from shared.access.keys import create_key
    from shared.services import Services
    from shared.settings import Settings

    services = Services(Settings.from_env())
    try:
        return str(create_key(services, f"bench-{uuid.uuid4().hex[:6]}", "infer,admin", rate_limit=10_000_000)[1])
    finally:
        services.close()


def main() -> int:
    global KEY
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pushes", type=int, default=5, help="versions pushed (and direct loads timed)")
    parser.add_argument("--moves", type=int, default=12, help="alias moves under load")
    args = parser.parse_args()
    KEY = bench_key()
    api = Api(GATEWAY, KEY)
    try:
        api.call("GET", "/v1/models?limit=1")
    except OSError:
        print("the local stack is not running: start it with `kinfer up`", file=sys.stderr)
        return 1
    name = f"bench-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files = []
        for i in range(args.pushes):
            files.append(work / f"v{i + 1}.onnx")
            files[-1].write_bytes(linear_onnx(float(i + 2)))
        pushed = [push_to_first_inference(api, name, str(i + 1), f) for i, f in enumerate(files)]
        direct = direct_triton(files, work)
    load = promote_under_load(api, name, args.moves)
    base, ours = statistics.median(direct), statistics.median(pushed)
    print(f"\nPush to first inference ({args.pushes} versions of one model, local stack, median / min / max)")
    print(
        f"  direct: write folder + Triton load API + first gRPC inference   {base:6.2f} s  "
        f"{min(direct):6.2f}  {max(direct):6.2f}   1.00x"
    )
    print(
        f"  kinfer models push -> first 200 from POST /v1/infer (gateway)   {ours:6.2f} s  "
        f"{min(pushed):6.2f}  {max(pushed):6.2f}   {ours / base:.2f}x"
    )
    print(f"\nAlias moves under load ({load['moves']} promote/split/rollback moves, 8 threads, gateway)")
    print(
        f"  requests {load['requests']} ({load['rps']:.0f}/s), failed {load['failed']} (target 0), statuses "
        f"{load['statuses']}, answered by version {load['versions']}, p50 {load['p50_ms']:.1f} ms, "
        f"p99 {load['p99_ms']:.1f} ms"
    )
    return 0 if load["failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
