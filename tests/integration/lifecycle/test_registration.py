"""Registration that says what to fix: backend_url checked against the allow-list before anything is
contacted, then as Triton gRPC (4xx), with a warning when it is down right now or does not serve the model; and
resolution errors that tell an unknown model from one without an active version."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from tests.conftest import free_port
from tests.integration.lifecycle.conftest import Lifecycle, unique
from tests.lifecycle_support import linear_onnx

pytestmark = pytest.mark.integration


def body(**over: Any) -> dict[str, Any]:
    return {"name": unique("ext"), "version": "1", "framework": "onnx", "format": "onnx", **over}


@pytest.fixture(scope="module")
def loaded(life: Lifecycle) -> str:
    """A Triton model the test Triton serves."""
    name = unique("served")
    assert life.push(name, "1", linear_onnx(2.0))["state"] == "ready"
    return name


def test_a_backend_that_serves_the_model_registers_cleanly(life: Lifecycle, loaded: str) -> None:
    resp = life.models.post("/v1/models", json=body(backend_url=life.triton.grpc_url, triton_model=loaded))
    assert resp.status_code == 201 and "warnings" not in resp.json(), resp.text


def test_tritons_http_port_is_a_400_that_says_so(life: Lifecycle, loaded: str) -> None:
    http = life.triton.http_url.removeprefix("http://")
    resp = life.models.post("/v1/models", json=body(backend_url=f"http://{http}", triton_model=loaded))
    assert resp.status_code == 400 and resp.json()["code"] == "backend_not_triton", resp.text
    assert "HTTP port" in resp.json()["error"] and resp.json()["field"] == "backend_url"


def test_a_model_the_backend_does_not_serve_registers_with_a_warning(life: Lifecycle, loaded: str) -> None:
    """The original platform's registry is metadata: a model whose files come later still registers."""
    resp = life.models.post("/v1/models", json=body(backend_url=life.triton.grpc_url, triton_model="nope"))
    assert resp.status_code == 201, resp.text
    [warning] = resp.json()["warnings"]
    assert "does not serve 'nope'" in warning and loaded in warning and "kinfer models push" in warning


def test_a_backend_that_is_down_registers_with_a_warning(life: Lifecycle) -> None:
    resp = life.models.post("/v1/models", json=body(backend_url=f"127.0.0.1:{free_port()}"))
    assert resp.status_code == 201, resp.text
    assert "does not answer right now" in resp.json()["warnings"][0]


def test_a_backend_outside_the_allow_list_is_never_contacted(life: Lifecycle) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    life.configure(backend_allowlist=(life.triton.grpc_url,))
    try:
        for field, value in (("backend_url", f"127.0.0.1:{port}"), ("backend_urls", [f"127.0.0.1:{port}"])):
            resp = life.models.post("/v1/models", json=body(**{field: value}))
            assert resp.status_code == 400 and resp.json()["code"] == "backend_not_allowed", resp.text
            assert resp.json()["field"] == field and "BACKEND_ALLOWLIST" in resp.json()["error"]
        created = life.models.post("/v1/models", json=body(backend_url=f"127.0.0.1:{free_port()}")).status_code
        assert created == 400
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()
        life.configure()


def test_an_update_is_held_to_the_allow_list_too(life: Lifecycle) -> None:
    created = life.models.post("/v1/models", json=body(backend_url=f"127.0.0.1:{free_port()}")).json()
    resp = life.models.patch(f"/v1/models/{created['id']}", json={"backend_url": "10.0.0.1:6379"})
    assert resp.status_code == 400 and resp.json()["code"] == "backend_not_allowed"


def test_unknown_model_and_no_active_version_are_told_apart(life: Lifecycle, loaded: str) -> None:
    typo = loaded[:-2]
    resp = life.infer(typo, 1.0)
    assert resp.status_code == 404 and resp.json()["code"] == "not_found"
    assert f"did you mean {loaded!r}" in resp.json()["error"]
    aliases = life.models.get(f"/v1/models/by-name/{typo}/aliases")  # the same answer, not an empty list
    assert aliases.status_code == 404 and aliases.json()["code"] == "not_found", aliases.text
    assert f"did you mean {loaded!r}" in aliases.json()["error"]
    idle = unique("idle")
    created = life.models.post("/v1/models", json=body(name=idle, status="inactive", triton_model=loaded))
    assert created.status_code == 201
    assert life.models.get(f"/v1/models/by-name/{idle}/aliases").json() == {"name": idle, "aliases": []}
    resp = life.infer(idle, 1.0)
    assert resp.status_code == 404 and resp.json()["code"] == "no_active_version"
    assert "1 inactive" in resp.json()["error"]
    unknown = life.infer(loaded, 1.0, "4")
    assert unknown.json()["code"] == "version_not_found" and "versions: 1 active" in unknown.json()["error"]
    inactive = life.infer(idle, 1.0, "1")
    assert inactive.json()["code"] == "version_not_active"
    far = life.infer("zzzz-nothing-like-it", 1.0)
    assert far.json()["code"] == "not_found" and "GET /v1/models" in far.json()["error"]


def test_a_managed_triton_model_cannot_be_taken_by_another_name(life: Lifecycle, loaded: str) -> None:
    resp = life.models.post("/v1/models", json=body(upload=True, triton_model=loaded))
    assert resp.status_code == 409 and resp.json()["code"] == "triton_model_taken", resp.text
    resp = life.models.post("/v1/models", json=body(upload=True, triton_version=3))
    assert resp.status_code == 400 and resp.json()["field"] == "triton_version"


def test_an_update_that_moves_the_backend_or_model_is_checked_like_a_registration(life: Lifecycle, loaded: str) -> None:
    created = life.models.post("/v1/models", json=body(backend_url=life.triton.grpc_url, triton_model=loaded)).json()
    assert "warnings" not in created
    down = life.models.patch(f"/v1/models/{created['id']}", json={"backend_url": f"127.0.0.1:{free_port()}"})
    assert down.status_code == 200 and "does not answer right now" in down.json()["warnings"][0], down.text
    back = life.models.patch(f"/v1/models/{created['id']}", json={"backend_url": life.triton.grpc_url})
    assert back.status_code == 200 and "warnings" not in back.json(), back.text
    absent = unique("absent")
    other = life.models.patch(f"/v1/models/{created['id']}", json={"triton_model": absent})
    assert other.status_code == 200 and f"does not serve {absent!r}" in other.json()["warnings"][0], other.text
    plain = life.models.patch(f"/v1/models/{created['id']}", json={"description": "no backend change"})
    assert plain.status_code == 200 and "warnings" not in plain.json()
