"""The registry over real HTTP under uvicorn (``kinfer serve``): two instances share one cache and never
serve stale reads."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest

from tests.conftest import free_port
from tests.integration.servers import serve_function

pytestmark = pytest.mark.integration


def call(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.fixture(scope="module")
def two_instances(base_settings: Any) -> Any:
    with (
        serve_function("models", "manage_models", free_port(), base_settings) as a,
        serve_function("models", "manage_models", free_port(), base_settings) as b,
    ):
        yield a, b


def test_write_on_one_instance_is_seen_by_the_other(two_instances: Any) -> None:
    a, b = two_instances
    name = f"http-{uuid.uuid4().hex[:8]}"
    status, created = call(
        "POST", f"{a}/v1/models", {"name": name, "version": "1", "framework": "onnx", "format": "onnx"}
    )
    assert status == 201
    for base in (a, b):  # both fill the shared cache
        assert call("GET", f"{base}/v1/models/{created['id']}")[1]["status"] == "active"
        assert call("GET", f"{base}/v1/models/by-name/{name}/1")[1]["status"] == "active"
    assert call("PATCH", f"{b}/v1/models/{created['id']}", {"status": "deprecated"})[0] == 200
    assert call("GET", f"{a}/v1/models/{created['id']}")[1]["status"] == "deprecated"
    assert call("GET", f"{a}/v1/models/by-name/{name}/1")[1]["status"] == "deprecated"
    assert call("DELETE", f"{a}/v1/models/{created['id']}")[0] == 204
    assert call("GET", f"{b}/v1/models/{created['id']}")[0] == 404


def test_http_errors_are_json_with_request_id(two_instances: Any) -> None:
    a, _ = two_instances
    req = urllib.request.Request(f"{a}/v1/models", data=b"{", method="POST", headers={"X-Request-ID": "trace-me-1"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5)
    assert err.value.code == 400
    assert err.value.headers["X-Request-ID"] == "trace-me-1"
    assert json.loads(err.value.read())["request_id"] == "trace-me-1"


def test_create_answers_location_and_unknown_filters_are_400(two_instances: Any) -> None:
    a, _ = two_instances
    body = {"name": f"loc-{uuid.uuid4().hex[:8]}", "version": "1", "framework": "onnx", "format": "onnx"}
    req = urllib.request.Request(
        f"{a}/v1/models", data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        created = json.loads(resp.read())
        assert resp.status == 201 and resp.headers["Location"] == f"/v1/models/{created['id']}"
    assert call("GET", a + resp.headers["Location"])[1]["name"] == body["name"]
    status, error = call("GET", f"{a}/v1/models?nmae={body['name']}")
    assert status == 400 and error["field"] == "nmae"
    assert error["error"] == (
        "unknown query parameter 'nmae'; allowed: q, name, framework, status, state, tag, include, limit, offset"
    )
    assert call("GET", f"{a}/v1/models?name={body['name']}")[1]["total"] == 1
