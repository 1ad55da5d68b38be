"""``kinfer demo``: the platform's main job, shown against a running stack over HTTP."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


def call(base: str, key: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None


def _show(step: str, status: int, body: Any) -> None:
    print(f"\n== {step} -> {status}")
    print(json.dumps(body, indent=2)[:1500])


def run_demo(base: str, key: str) -> int:
    base = base.rstrip("/")
    model = {"name": "demo-iris", "version": "1.0", "framework": "onnx", "format": "onnx",
             "backend_url": "127.0.0.1:8001", "triton_model": "iris_classifier",
             "description": "the iris classifier, registered by kinfer demo", "tags": ["demo"]}
    status, body = call(base, key, "POST", "/v1/models", model)
    if status == 409:
        status, body = call(base, key, "GET", "/v1/models/by-name/demo-iris/1.0")
    _show("register a model (POST /v1/models; 409 on re-runs, then fetched by name)", status, body)
    if status not in (200, 201):
        return 1
    status, body = call(base, key, "GET", f"/v1/models/{body['id']}")
    _show("fetch it by id (GET /v1/models/{id})", status, body)
    if status != 200:
        return 1
    status, body = call(base, key, "POST", "/v1/infer", {"model": "demo-iris", "input": {"data": IRIS_ROWS[0]}})
    _show("real-time inference (POST /v1/infer)", status, body)
    if status != 200:
        return 1
    return _batch(base, key)


def _batch(base: str, key: str) -> int:
    inputs = [{"data": IRIS_ROWS[i % 3]} for i in range(30)] + [{"data": []}]
    status, body = call(base, key, "POST", "/v1/batch", {"model": "demo-iris", "inputs": inputs})
    _show("batch job with one bad item (POST /v1/batch)", status, body)
    if status != 202:
        return 1
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, body = call(base, key, "GET", f"/v1/batch/{body['job_id']}")
        if body.get("status") in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.3)
    _show("batch job finished (GET /v1/batch/{id})", status, body)
    return 0 if body.get("status") == "completed" else 1
