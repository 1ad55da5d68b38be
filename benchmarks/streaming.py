"""Token streaming overhead: time to first token and tokens/s through the infer function and the gateway
(``POST /v1/completions``, ``/openai/v1/chat/completions``, server-sent events) vs straight from Triton's
gRPC stream (``ModelStreamInfer`` through ``tritonclient.grpc.aio``'s ``stream_infer``), in one run.

The model is the demo ``tiny_lm`` (Triton Python backend, decoupled: one response per token). Every
target generates the same greedy completion of ``--tokens`` tokens. Per target:

- sequential (one stream at a time, ``--requests`` streams): time to first token p50/p99 (the request
  sent -> the first token's bytes read), decode rate p50 ((tokens - 1) / (last token - first token)),
  and the whole stream p50;
- concurrent (``-c`` streams at once for ``--duration`` seconds): tokens/s over all streams, and the CPU
  milliseconds per token of the process that serves the target (Triton's own for the direct target).

Ratios are to direct Triton in the same run (the machine's cores are shared by Triton, the servers and
this client: compare ratios, and look at the range over ``--runs``).

    .venv/bin/python benchmarks/streaming.py                   # self-contained: Triton, a DB, function, gateway
    .venv/bin/python benchmarks/streaming.py --tokens 256 -c 8 --runs 3
    .venv/bin/python benchmarks/streaming.py --stack           # against `kinfer up` (ports 8001/8082/8080)

The self-contained mode reuses ``benchmarks/realtime.py``'s harness (Triton from ``models/repository``, a
scratch database, ``kinfer serve`` for the function and the gateway, a key with a high rate limit) and
registers ``tiny_lm`` in it. Run it under ``flock /tmp/kinfer-e2e.lock`` (it starts Triton).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import percentile  # noqa: E402
from benchmarks.realtime import Endpoints, cpu_seconds, local_stack, self_contained  # noqa: E402

MODEL = "tiny_lm"
PROMPT = "once upon a time the"


@dataclass
class Stream:
    """One measured stream: seconds from the request to the first token and to the last, and its tokens."""

    first_s: float
    last_s: float
    tokens: int

    @property
    def decode_tps(self) -> float:
        span = self.last_s - self.first_s
        return (self.tokens - 1) / span if self.tokens > 1 and span > 0 else float("nan")


StreamFn = Callable[[], Stream]


# -- direct Triton ------------------------------------------------------------------------------------------
def triton_streamer(grpc_url: str, tokens: int) -> tuple[StreamFn, Callable[[], None]]:
    """Streams straight from Triton: ``tritonclient.grpc.aio``'s ``stream_infer``, one gRPC stream per
    generation (as the infer function opens one per request), one client and event loop per caller thread."""
    import asyncio

    import numpy as np
    import tritonclient.grpc.aio as aioclient

    local = threading.local()
    owned: list[tuple[asyncio.AbstractEventLoop, Any]] = []
    lock = threading.Lock()

    def inputs() -> list[Any]:
        def tensor(name: str, datatype: str, value: Any) -> Any:
            t = aioclient.InferInput(name, [1], datatype)
            t.set_data_from_numpy(np.array([value], dtype=np.object_ if datatype == "BYTES" else np.bool_))
            return t

        return [
            tensor("text_input", "BYTES", PROMPT.encode()),
            tensor("stream", "BOOL", True),
            tensor("sampling_parameters", "BYTES", json.dumps({"max_tokens": tokens}).encode()),
            tensor("exclude_input_in_output", "BOOL", True),
        ]

    async def generate(client: Any, tensors: list[Any]) -> Stream:
        async def requests() -> Any:
            yield {"model_name": MODEL, "inputs": tensors}  # then half-close: Triton ends the stream when done

        started = time.perf_counter()
        first = last = 0.0
        count = 0
        async for result, error in client.stream_infer(requests()):
            if error is not None:
                raise RuntimeError(f"Triton stream failed: {error}")
            text = result.as_numpy("text_output")
            if text is not None and text.size and text.reshape(-1)[0]:
                now = time.perf_counter() - started
                count += 1
                first = first or now
                last = now
        return Stream(first, last, count)

    def one() -> Stream:
        state = getattr(local, "state", None)
        if state is None:
            loop = asyncio.new_event_loop()
            client = loop.run_until_complete(_aio_client(aioclient, grpc_url))
            state = local.state = (loop, client, inputs())
            with lock:
                owned.append((loop, client))
        loop, client, tensors = state
        return loop.run_until_complete(generate(client, tensors))  # type: ignore[no-any-return]

    def close() -> None:
        for loop, client in owned:
            with contextlib.suppress(Exception):
                loop.run_until_complete(client.close())
            loop.close()

    return one, close


async def _aio_client(aioclient: Any, url: str) -> Any:
    return aioclient.InferenceServerClient(url)  # grpc.aio channels belong to the loop that makes them


# -- over HTTP (server-sent events) ---------------------------------------------------------------------------
def sse_streamer(base: str, path: str, model: str, key: str | None, tokens: int) -> tuple[StreamFn, Callable[[], None]]:
    """Streams over HTTP/1.1 keep-alive, one connection per caller thread, reading events as they arrive."""
    parts = urlsplit(base)
    chat = "chat" in path
    body = {"model": model, "max_tokens": tokens, "stream": True}
    body.update({"messages": [{"role": "user", "content": PROMPT}]} if chat else {"prompt": PROMPT})
    payload = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    local = threading.local()
    conns: list[http.client.HTTPConnection] = []

    def one() -> Stream:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
            conns.append(conn)
        started = time.perf_counter()
        conn.request("POST", path, body=payload, headers=headers)
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"{base}{path}: {resp.status} {resp.read()[:300]!r}")
        first = last = 0.0
        count = 0
        while True:
            line = resp.readline()
            if not line:
                raise RuntimeError(f"{base}{path}: the stream ended without [DONE]")
            if not line.startswith(b"data: "):
                continue
            if line.startswith(b"data: [DONE]"):
                resp.read()
                return Stream(first, last, count)
            now = time.perf_counter() - started
            choice = json.loads(line[6:])["choices"]
            text = (choice[0].get("delta", {}).get("content") if chat else choice[0].get("text")) if choice else None
            if text:
                count += 1
                first = first or now
                last = now

    def close() -> None:
        for conn in conns:
            conn.close()

    return one, close


# -- measuring ------------------------------------------------------------------------------------------------
def sequential(one: StreamFn, n: int) -> list[Stream]:
    one()  # warm-up: connections, caches, the model's first call
    return [one() for _ in range(n)]


def concurrent(one: StreamFn, connections: int, seconds: float) -> tuple[float, int]:
    """(tokens per second over all streams, streams completed) with ``connections`` streams always open."""
    stop = time.monotonic() + seconds
    counts = [0] * connections
    streams = [0] * connections
    errors: list[BaseException] = []

    def loop(i: int) -> None:
        try:
            while time.monotonic() < stop:
                counts[i] += one().tokens
                streams[i] += 1
        except BaseException as exc:  # noqa: BLE001 - reported after the run
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(connections)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} streams failed; the first: {errors[0]}")
    return sum(counts) / elapsed, sum(streams)


Maker = Callable[[], tuple[StreamFn, Callable[[], None]]]


def targets(ep: Endpoints, model: str, tokens: int) -> list[tuple[str, str, Maker]]:
    """(name, the role of the process that serves it, its streamer) per target; direct Triton first."""
    found: list[tuple[str, str, Maker]] = [
        ("triton grpc stream", "triton", lambda: triton_streamer(ep.triton_grpc, tokens)),
        (
            "function /v1/completions",
            "function",
            lambda: sse_streamer(ep.function, "/v1/completions", model, ep.key, tokens),
        ),
    ]
    if ep.gateway:
        gateway = ep.gateway
        found += [
            (
                "gateway /v1/completions",
                "gateway",
                lambda: sse_streamer(gateway, "/v1/completions", model, ep.key, tokens),
            ),
            (
                "gateway /openai/v1/chat/completions",
                "gateway",
                lambda: sse_streamer(gateway, "/openai/v1/chat/completions", model, ep.key, tokens),
            ),
        ]
    return found


def run(ep: Endpoints, model: str, tokens: int, n: int, connections: int, seconds: float) -> list[dict[str, Any]]:
    rows = []
    for name, role, make in targets(ep, model, tokens):
        one, close = make()
        try:
            seq = sequential(one, n)
            if any(s.tokens != tokens for s in seq):
                raise RuntimeError(f"{name}: a stream carried {[s.tokens for s in seq]} tokens, not {tokens}")
            before = cpu_seconds(ep.pids[role]) if role in ep.pids else float("nan")
            tps, streams = concurrent(one, connections, seconds)
            cpu = cpu_seconds(ep.pids[role]) - before if role in ep.pids else float("nan")
        finally:
            close()
        ttft = [s.first_s * 1000 for s in seq]
        rows.append(
            {
                "target": name,
                "ttft_p50_ms": percentile(ttft, 50),
                "ttft_p99_ms": percentile(ttft, 99),
                "decode_tps": statistics.median(s.decode_tps for s in seq),
                "stream_p50_ms": percentile([s.last_s * 1000 for s in seq], 50),
                "tps": tps,
                "streams": streams,
                # the serving process's CPU per token under load (Triton's own for the direct target)
                "cpu_ms_per_token": cpu * 1000 / (streams * tokens) if streams else float("nan"),
            }
        )
    return rows


def table(rows: list[dict[str, Any]], connections: int) -> str:
    base = rows[0]
    head = (
        f"{'target':<38}{'TTFT ms p50':>12}{'p99':>8}{'added':>8}{'x':>6}{'decode tok/s':>14}{'x':>6}"
        f"{'stream ms':>11}{f'c{connections} tok/s':>11}{'x':>6}{'CPU ms/tok':>12}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['target']:<38}{r['ttft_p50_ms']:>12.2f}{r['ttft_p99_ms']:>8.2f}"
            f"{r['ttft_p50_ms'] - base['ttft_p50_ms']:>8.2f}{r['ttft_p50_ms'] / base['ttft_p50_ms']:>6.2f}"
            f"{r['decode_tps']:>14.0f}{r['decode_tps'] / base['decode_tps']:>6.2f}"
            f"{r['stream_p50_ms']:>11.1f}{r['tps']:>11.0f}{r['tps'] / base['tps']:>6.2f}{r['cpu_ms_per_token']:>12.3f}"
        )
    return "\n".join(lines)


@contextlib.contextmanager
def self_contained_lm(workers: int, extra_env: dict[str, str]) -> Iterator[Endpoints]:
    """``benchmarks.realtime.self_contained`` (Triton, database, function, gateway, key) with tiny_lm registered."""
    from shared.services import Services

    with self_contained(workers, True, extra_env) as ep:
        services = Services(ep.settings)
        try:
            services.registry.create_model(
                {
                    "name": MODEL,
                    "version": "1",
                    "framework": "python",
                    "format": "python",
                    "backend_url": ep.triton_grpc,
                    "triton_model": MODEL,
                    "metadata": {"task": "text-generation"},
                }
            )
        finally:
            services.close()
        yield ep


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stack", action="store_true", help="measure the running `kinfer up` stack (fixed ports)")
    p.add_argument("--api-key", help="--stack: the key to send (default: create one with a high rate limit)")
    p.add_argument("--model", default=MODEL, help="--stack: the registry model to stream from (default tiny_lm)")
    p.add_argument("--tokens", type=int, default=128, help="tokens per stream (max_tokens; 2-512)")
    p.add_argument("-n", "--requests", type=int, default=50, help="sequential streams per target")
    p.add_argument("-c", "--connections", type=int, default=4, help="concurrent streams")
    p.add_argument("-d", "--duration", type=float, default=5, help="seconds of concurrent streaming per target")
    p.add_argument("--runs", type=int, default=1, help="repeat the whole set")
    p.add_argument("--workers", type=int, default=1, help="uvicorn workers per server (self-contained)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra setting (repeatable)")
    args = p.parse_args(argv)
    if not 2 <= args.tokens <= 512:
        p.error("--tokens must be from 2 to 512")
    extra = dict(item.split("=", 1) for item in args.env)
    with contextlib.ExitStack() as stack:
        ep = local_stack(args.api_key) if args.stack else stack.enter_context(self_contained_lm(args.workers, extra))
        model = args.model if args.stack else MODEL
        for i in range(args.runs):
            rows = run(ep, model, args.tokens, args.requests, args.connections, args.duration)
            print(
                f"\nrun {i + 1}/{args.runs}: {args.tokens} tokens per stream; {args.requests} sequential streams, "
                f"then {args.connections} concurrent for {args.duration:g}s; ratios (x) to direct Triton",
                flush=True,
            )
            print(table(rows, args.connections), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
