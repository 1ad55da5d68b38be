"""Helpers shared by the benchmarks: percentiles, a keep-alive HTTP client, a served function."""

from __future__ import annotations

import http.client
import json
import statistics
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summarize(samples_s: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples_s]
    return {"p50": percentile(ms, 50), "p99": percentile(ms, 99), "mean": statistics.fmean(ms)}


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class KeepAlive:
    """One persistent HTTP/1.1 connection (what a real client pool does)."""

    def __init__(self, base: str, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(base)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        self.headers = {"Content-Type": "application/json", **(headers or {})}

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        self.conn.request(method, path, body=data, headers=self.headers)
        resp = self.conn.getresponse()
        return resp.status, resp.read()

    def close(self) -> None:
        self.conn.close()


def print_table(title: str, rows: list[tuple[str, dict[str, float], str]]) -> None:
    print(f"\n{title}")
    print(f"{'path':<44}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}   vs baseline")
    for name, stats, ratio in rows:
        print(f"{name:<44}{stats['p50']:>10.3f}{stats['p99']:>10.3f}{stats['mean']:>10.3f}   {ratio}")
