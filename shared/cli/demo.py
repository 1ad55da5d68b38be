"""``kinfer demo``: the platform's main job, shown against a running stack over HTTP.

It pushes one model file (the iris classifier's ONNX file: Kinfer writes its Triton
configuration), waits until every Triton replica has loaded it, infers through it, and
runs a batch job with a bad item in it.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from shared.domain import JobStatus, ModelState, ModelVersion

if TYPE_CHECKING:
    from shared.cli.models import Api

IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
MODEL_FILE = Path(__file__).resolve().parents[2] / "models" / "production" / "iris_classifier" / "1" / "model.onnx"
NAME, VERSION = "demo-iris", "1.0"


def call(base: str, key: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        base + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None


def _show(step: str, status: int, body: object) -> None:
    print(f"\n== {step} -> {status}")
    print(json.dumps(body, indent=2)[:1500])


def run_demo(base: str, key: str) -> int:
    base = base.rstrip("/")
    model = _push(base, key)
    if model is None:
        return 1
    status, body = call(base, key, "POST", "/v1/infer", {"model": NAME, "input": {"data": IRIS_ROWS[0]}})
    _show("real-time inference (POST /v1/infer)", status, body)
    if status != 200:
        return 1
    return _batch(base, key)


def _push(base: str, key: str) -> ModelVersion | None:
    """Push the ONNX file as demo-iris 1.0 (kept from an earlier run unless it failed) and wait until it is ready."""
    from shared.cli.errors import ApiError
    from shared.cli.models import Api, wait_ready

    api = Api(base, key)
    try:
        model = _push_or_reuse(api, base, key)
    except OSError as exc:
        print(f"\n== the API at {base} does not answer ({exc}); is the stack up? (kinfer up)")
        return None
    except ApiError as exc:
        print(f"\n== push failed: {exc}")
        return None
    started = time.monotonic()
    try:
        model = wait_ready(api, model["id"], timeout=120)
    except (ApiError, ValueError) as exc:
        print(f"\n== {NAME} {VERSION} did not load: {exc}")
        return None
    _show(f"{model['state']} after {time.monotonic() - started:.1f}s (GET /v1/models/{{id}})", 200, _brief(model))
    return model if model["state"] == ModelState.READY else None


def _push_or_reuse(api: Api, base: str, key: str) -> ModelVersion:
    from shared.cli.errors import ApiError
    from shared.cli.models import push

    for attempt in (1, 2):
        try:
            model = push(
                api, MODEL_FILE, NAME, VERSION, description="the iris classifier, pushed by kinfer demo", tags=["demo"]
            )
            _show(f"push {MODEL_FILE.name} as {NAME} {VERSION} (POST /v1/models, PUT .../artifact)", 200, _brief(model))
            return model.copy()
        except ApiError as exc:
            if exc.status != 409 or attempt == 2:
                raise
        status, found = call(base, key, "GET", f"/v1/models/by-name/{NAME}/{VERSION}")
        if found.get("state") != ModelState.FAILED:
            _show(f"{NAME} {VERSION} was pushed by an earlier run (GET /v1/models/by-name/...)", status, _brief(found))
            return cast(ModelVersion, dict(found))
        print(f"\n== {NAME} {VERSION} of an earlier run failed ({found.get('state_reason')}): pushed again")
        call(base, key, "DELETE", f"/v1/models/{found['id']}")
    raise AssertionError("unreachable")


def _brief(model: Mapping[str, object]) -> dict[str, object]:
    keys = (
        "id",
        "name",
        "version",
        "state",
        "state_reason",
        "triton_model",
        "triton_version",
        "artifact_format",
        "artifact_bytes",
    )
    return {k: model.get(k) for k in keys}


def _batch(base: str, key: str) -> int:
    inputs = [{"data": IRIS_ROWS[i % 3]} for i in range(30)] + [{"data": []}]
    status, body = call(base, key, "POST", "/v1/batch", {"model": NAME, "inputs": inputs})
    _show("batch job with one bad item (POST /v1/batch)", status, body)
    if status != 202:
        return 1
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, body = call(base, key, "GET", f"/v1/batch/{body['job_id']}")
        if body.get("status") in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED):
            break
        time.sleep(0.3)
    _show("batch job finished (GET /v1/batch/{id})", status, body)
    return 0 if body.get("status") == JobStatus.COMPLETED else 1
