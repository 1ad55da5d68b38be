"""Cold start of the infer function (Knative scales it to zero): import time, then a served process's
first answers.

1. ``python -X importtime -c 'import functions.infer.main'``: the module import, median and range over runs.
2. ``kinfer serve`` of the infer function, started from nothing (against a real Triton, database and
   Redis): seconds until it listens (``/livez``), then the latency of its first ``/v1/infer`` (connections to
   PostgreSQL, Redis and Triton made, lazy imports paid, key and model looked up) and of the second.

    .venv/bin/python benchmarks/coldstart.py --runs 5
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

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


def span(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)
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
