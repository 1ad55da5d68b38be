"""Observability of the whole local stack: Prometheus on 9090 scraping every part (the original
platform's end-to-end metrics check queries it there), /metrics on the ports that were 404, batch
metrics after a job, a 4xx logged at info with its request id, and the recent spans of a request."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ROOT, http

pytestmark = pytest.mark.e2e

PROMETHEUS_URL = "http://localhost:9090"  # the seed's PROMETHEUS_URL
IRIS = [5.1, 3.5, 1.4, 0.2]


def eventually(check: Any, timeout: float = 60, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(interval)


def query(promql: str) -> list[dict[str, Any]]:
    status, body, _ = http("GET", f"{PROMETHEUS_URL}/api/v1/query?{urllib.parse.urlencode({'query': promql})}")
    assert status == 200 and body["status"] == "success", body
    return list(body["data"]["result"])


def test_prometheus_scrapes_every_part_and_kinfer_status_lists_it(stack: dict[str, str]) -> None:
    status, _, _ = http("GET", f"{PROMETHEUS_URL}/-/ready")
    assert status == 200
    jobs = {"gateway", "backends", "infer", "models", "batch", "batch_worker", "keys", "triton", "prometheus"}

    def all_up() -> bool:
        found = {r["metric"]["job"]: r["value"][1] for r in query("up")}
        return jobs <= set(found) and all(found[j] == "1" for j in jobs)

    assert eventually(all_up, timeout=60), query("up")
    listed = subprocess.run(
        [sys.executable, "-m", "shared.cli", "status", "-o", "json"], cwd=ROOT, capture_output=True, text=True
    )
    rows = json.loads(listed.stdout)
    rows = rows.get("components", rows) if isinstance(rows, dict) else rows
    prometheus = [r for r in rows if r["name"] == "prometheus"]
    assert prometheus and prometheus[0]["healthy"], listed.stdout


@pytest.mark.parametrize("port", [8080, 8082, 8083, 8086])
def test_the_ports_that_were_404_serve_metrics(stack: dict[str, str], port: int) -> None:
    key = None
    if port == 8080:  # the public gateway: every key's figures, to an admin key only
        assert http("GET", f"http://127.0.0.1:{port}/metrics")[0] == 401
        key = stack["key"]
    status, body, headers = http("GET", f"http://127.0.0.1:{port}/metrics", key=key)
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert "kinfer_http_client_errors_total" in body


def _succeeded_items(port: int = 8086) -> float:
    """``kinfer_batch_items_total{outcome="succeeded"}`` of the batch worker process, read from its port."""
    _, text, _ = http("GET", f"http://127.0.0.1:{port}/metrics")
    for line in text.splitlines():
        if line.startswith('kinfer_batch_items_total{outcome="succeeded"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_batch_metrics_count_a_job_and_prometheus_has_them(stack: dict[str, str]) -> None:
    before = _succeeded_items()
    status, job, _ = http(
        "POST",
        f"{stack['gateway']}/v1/batch",
        {"model": "iris_classifier", "inputs": [{"data": IRIS}] * 3},
        stack["key"],
    )
    assert status == 202, job
    done = eventually(
        lambda: (lambda b: b if b["status"] in ("completed", "failed") else None)(
            http("GET", f"{stack['gateway']}/v1/batch/{job['job_id']}", key=stack["key"])[1]
        ),
        timeout=120,
    )
    assert done and done["status"] == "completed"
    after = _succeeded_items()
    assert after >= before + 3

    def scraped() -> bool:  # the series of this worker process (a restarted worker resets it, as counters do)
        found = query('kinfer_batch_items_total{job="batch_worker",outcome="succeeded"}')
        return bool(found) and float(found[0]["value"][1]) >= after

    assert eventually(scraped, timeout=60), query('kinfer_batch_items_total{job="batch_worker"}')
    assert query('kinfer_batch_chunks_total{job="batch_worker",outcome="done"}')
    assert query('kinfer_batch_chunk_queue_age_seconds_count{job="batch_worker"}')


def test_a_4xx_is_logged_at_info_with_its_request_id(stack: dict[str, str]) -> None:
    request_id = f"e2e-4xx-{uuid.uuid4().hex[:12]}"
    status, body, _ = http(
        "POST",
        f"{stack['gateway']}/v1/infer",
        {"model": f"nope-{uuid.uuid4().hex[:6]}", "input": {"data": IRIS}},
        stack["key"],
        headers={"X-Request-ID": request_id},
    )
    assert status == 404 and body["request_id"] == request_id
    log = Path(ROOT / ".kinfer" / "logs" / "gateway.log")

    def logged() -> dict[str, Any] | None:
        for line in log.read_text(errors="replace").splitlines():
            if request_id in line and "client error 404" in line:
                return dict(json.loads(line))
        return None

    found = eventually(logged, timeout=10, interval=0.2)
    assert found and found["level"] == "INFO" and found["request_id"] == request_id
    assert "POST /v1/infer" in found["msg"] and "key_id=" in found["msg"] and stack["key"] not in found["msg"]


def test_the_spans_of_a_request_are_readable_without_a_restart(stack: dict[str, str]) -> None:
    trace_id = uuid.uuid4().hex
    status, answer, _ = http(
        "POST",
        f"{stack['gateway']}/v1/infer",
        {"model": "iris_classifier", "input": {"data": IRIS}},
        stack["key"],
        headers={"traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"},  # sampled: recorded
    )
    assert status == 200 and answer["trace_id"] == trace_id
    status, page, _ = http("GET", f"{stack['gateway']}/debug/traces?trace_id={trace_id}", key=stack["key"])
    assert status == 200, page
    names = [s["name"] for s in page["spans"]]
    assert "POST /v1/infer" in names and all(s["trace_id"] == trace_id for s in page["spans"])
    assert http("GET", f"{stack['gateway']}/debug/traces")[0] == 401
