"""The conventions of the local gateway over real PostgreSQL, Redis and Triton: KServe v1 ``:predict``,
v2 model metadata listing every active version, Swagger UI at ``/docs`` (served locally, strict CSP),
and ``/metrics`` on the gateway and on each function's own port with per-key 4xx/429 counters."""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.conftest import free_port
from tests.integration.servers import serve_function, serve_gateway

pytestmark = pytest.mark.integration

SETOSA, VIRGINICA = [5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]


@dataclasses.dataclass
class Gateway:
    base: str
    name: str
    key: str
    key_id: str
    limited: str
    limited_id: str
    settings: Any
    admin: str = ""

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture(scope="module")
def gateway(base_settings: Any, triton: Any) -> Iterator[Gateway]:
    from shared.services import reset_services

    settings = dataclasses.replace(base_settings, triton_url=triton.grpc_url, auth_required=True)
    services = reset_services(settings)
    name = f"conv-{uuid.uuid4().hex[:8]}"
    for version, status in (("1.0", "active"), ("2.0", "active"), ("3.0", "deprecated")):
        services.registry.create_model(
            {
                "name": name,
                "version": version,
                "framework": "onnx",
                "format": "onnx",
                "backend_url": triton.grpc_url,
                "triton_model": "iris_classifier",
                "status": status,
            },
        )
    key_record, key = services.keys.create_key(f"conv-{uuid.uuid4().hex[:6]}", "infer")
    limited_record, limited = services.keys.create_key(f"conv-lim-{uuid.uuid4().hex[:6]}", "infer", rate_limit=1)
    _, admin = services.keys.create_key(f"conv-adm-{uuid.uuid4().hex[:6]}", "admin")
    reset_services(None)
    with serve_gateway(free_port(), settings) as base:
        yield Gateway(base, name, key, key_record["id"], limited, limited_record["id"], settings, admin)


# -- KServe v1 -------------------------------------------------------------------
def test_v1_predict_answers_one_prediction_per_instance(gateway: Gateway) -> None:
    url = f"{gateway.base}/v1/models/{gateway.name}:predict"
    many = requests.post(url, json={"instances": [SETOSA, VIRGINICA]}, headers=gateway.auth, timeout=30)
    assert many.status_code == 200, many.text
    body = many.json()
    assert body["predictions"] == ["setosa", "virginica"] and body["model_name"] == gateway.name
    assert body["model_version"] == "2.0" == many.headers["X-Model-Version"]  # the newest active version
    assert body["request_id"] == many.headers["X-Request-ID"]
    one = requests.post(url, json={"instances": [VIRGINICA]}, headers=gateway.auth, timeout=30).json()
    assert one["predictions"] == ["virginica"]
    named = requests.post(
        url, json={"instances": [{"features": SETOSA}, {"features": VIRGINICA}]}, headers=gateway.auth, timeout=30
    ).json()
    assert named["predictions"] == ["setosa", "virginica"]
    pinned = requests.post(
        f"{gateway.base}/v1/models/{gateway.name}/versions/1.0:predict",
        json={"instances": [SETOSA]},
        headers=gateway.auth,
        timeout=30,
    )
    assert pinned.status_code == 200 and pinned.json()["model_version"] == "1.0"


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "instances"),
        ({"instances": []}, "instances"),
        ({"instances": "x"}, "instances"),
        ({"instances": [[1.0, 2.0]]}, "instances"),
        ({"instances": [SETOSA, {"features": SETOSA}]}, "instances"),
        ({"instances": [SETOSA], "colour": 1}, "colour"),
    ],
)
def test_v1_predict_errors_are_400_in_the_error_shape(gateway: Gateway, body: dict, field: str) -> None:
    resp = requests.post(
        f"{gateway.base}/v1/models/{gateway.name}:predict", json=body, headers=gateway.auth, timeout=30
    )
    assert resp.status_code == 400, resp.text
    error = resp.json()
    assert error["field"] == field and error["code"] == "invalid_input" and isinstance(error["error"], str)
    assert error["request_id"] == resp.headers["X-Request-ID"]


def test_v1_predict_needs_a_key_and_a_known_model(gateway: Gateway) -> None:
    url = f"{gateway.base}/v1/models/{gateway.name}:predict"
    assert requests.post(url, json={"instances": [SETOSA]}, timeout=30).status_code == 401
    unknown = requests.post(
        f"{gateway.base}/v1/models/nope-{uuid.uuid4().hex[:6]}:predict",
        json={"instances": [SETOSA]},
        headers=gateway.auth,
        timeout=30,
    )
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
    deprecated = requests.post(
        f"{gateway.base}/v1/models/{gateway.name}/versions/3.0:predict",
        json={"instances": [SETOSA]},
        headers=gateway.auth,
        timeout=30,
    )
    assert deprecated.status_code == 404 and deprecated.json()["code"] == "version_not_active"


# -- KServe v2 metadata ------------------------------------------------------------
def test_v2_metadata_lists_every_active_version(gateway: Gateway) -> None:
    meta = requests.get(f"{gateway.base}/v2/models/{gateway.name}", headers=gateway.auth, timeout=30)
    assert meta.status_code == 200, meta.text
    assert meta.json()["versions"] == ["1.0", "2.0"]  # 3.0 is deprecated
    one = requests.get(f"{gateway.base}/v2/models/{gateway.name}/versions/1.0", headers=gateway.auth, timeout=30)
    assert one.json()["versions"] == ["1.0"]


# -- Swagger UI ------------------------------------------------------------------------
def test_docs_serves_swagger_ui_from_this_origin_with_a_self_only_csp(gateway: Gateway) -> None:
    page = requests.get(f"{gateway.base}/docs", timeout=30)  # redirected to /docs/
    assert page.status_code == 200 and page.url.endswith("/docs/") and "text/html" in page.headers["Content-Type"]
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self';" in csp and "unsafe-inline" not in csp
    scripts = re.findall(r'<script src="([^"]+)"', page.text)
    assert scripts and all(s.startswith("/docs/") for s in scripts) and "<script>" not in page.text
    assert "http" not in "".join(re.findall(r'(?:src|href)="([^"]+)"', page.text))  # no CDN
    for src in [*scripts, "/docs/swagger-ui.css"]:
        asset = requests.get(gateway.base + src, timeout=30)
        assert asset.status_code == 200 and asset.content, src
        assert asset.headers["Content-Security-Policy"] == csp
    assert "/openapi.json" in requests.get(f"{gateway.base}/docs/init.js", timeout=30).text
    assert "SwaggerUIBundle" in requests.get(f"{gateway.base}/docs/swagger-ui-bundle.js", timeout=30).text
    missing = requests.get(f"{gateway.base}/docs/../../etc/passwd", timeout=30)
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    document = requests.get(f"{gateway.base}/openapi.json", timeout=30).json()
    assert "/v1/models/{name}:predict" in document["paths"]


# -- metrics ---------------------------------------------------------------------------
def _sample(text: str, name: str, labels: dict[str, str]) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_gateway_metrics_count_4xx_and_429_per_key_id_never_the_secret(gateway: Gateway) -> None:
    url = f"{gateway.base}/v1/models/{gateway.name}:predict"
    limited = {"Authorization": f"Bearer {gateway.limited}"}
    statuses = [
        requests.post(url, json={"instances": [SETOSA]}, headers=limited, timeout=30).status_code for _ in range(3)
    ]
    assert statuses[0] == 200 and 429 in statuses
    requests.post(url, json={"instances": [SETOSA]}, headers={"Authorization": "Bearer kf_not_a_key_123"}, timeout=30)
    assert requests.get(f"{gateway.base}/metrics", timeout=30).status_code == 401  # every key's figures: admin only
    assert requests.get(f"{gateway.base}/metrics", headers=gateway.auth, timeout=30).status_code == 403
    metrics = requests.get(f"{gateway.base}/metrics", headers={"Authorization": f"Bearer {gateway.admin}"}, timeout=30)
    assert metrics.status_code == 200 and metrics.headers["Content-Type"].startswith("text/plain")
    text = metrics.text
    labels = {"key_id": gateway.limited_id, "status": "429", "code": "rate_limited"}
    assert _sample(text, "kinfer_http_client_errors_total", labels) == statuses.count(429)
    assert _sample(text, "kinfer_http_client_errors_total", {"key_id": "none", "status": "401"}) >= 1
    assert gateway.limited not in text and "kf_not_a_key_123" not in text


@pytest.mark.parametrize(
    "folder, target", [("infer", "run_inference"), ("models", "manage_models"), ("keys", "manage_api_keys")]
)
def test_each_function_serves_metrics_on_its_own_port(gateway: Gateway, folder: str, target: str) -> None:
    with serve_function(folder, target, free_port(), gateway.settings) as base:
        requests.get(f"{base}/openapi.json", timeout=30)
        resp = requests.get(f"{base}/metrics", timeout=30)
    assert resp.status_code == 200, resp.text
    assert "# TYPE kinfer_http_client_errors_total counter" in resp.text
    assert "# TYPE kinfer_batch_items_total counter" in resp.text
