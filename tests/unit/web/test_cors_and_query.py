"""dispatch: OPTIONS and CORS preflight (CORS_ALLOWED_ORIGINS), CORS headers on answers, and
query-parameter allow-lists (unknown or repeated parameters are 400 naming them)."""

from __future__ import annotations

import asyncio
import importlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.requests import Request

from shared.settings import Settings
from shared.web.dispatch import dispatch
from shared.web.request import Call
from shared.web.route import Route
from shared.web.routing import Router

ROOT = Path(__file__).resolve().parents[3]


def _list(call: Call) -> dict:
    return {"limit": call.query("limit")}


def _create(call: Call) -> tuple[int, dict, dict]:
    return 201, {"id": "1"}, {"Location": "/v1/things/1"}


ROUTER = Router(
    [
        Route("/v1/things", ("GET",), _list, query=("limit", "offset")),
        Route("/v1/things", ("POST",), _create, query=()),
        Route("/v1/free", ("GET",), lambda call: {"ok": True}),
    ]
)


def run(
    method: str, path: str, query: str = "", headers: dict[str, str] | None = None, origins: str = ""
) -> tuple[int, dict[str, str], Any]:
    settings = Settings.from_env(environ={"CORS_ALLOWED_ORIGINS": origins}, auth_required=False)
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }

    async def receive() -> dict:
        return {"type": "http.request", "body": b"{}" if method == "POST" else b"", "more_body": False}

    response = asyncio.run(dispatch(Request(scope, receive), ROUTER, SimpleNamespace(settings=settings), "test"))
    body = json.loads(response.body) if response.body else None
    return response.status_code, dict(response.headers), body


def test_unknown_query_parameter_is_400_naming_it_and_the_allowed_ones() -> None:
    status, headers, body = run("GET", "/v1/things", "limit=2&colour=red")
    assert status == 400 and body["code"] == "invalid_input" and body["field"] == "colour"
    assert "unknown query parameter 'colour'" in body["error"] and "limit, offset" in body["error"]
    assert headers["x-request-id"] == body["request_id"]
    assert run("GET", "/v1/things", "limit=2&offset=1")[2] == {"limit": "2"}


def test_a_route_without_parameters_rejects_any_and_a_repeated_one_is_400() -> None:
    status, _, body = run("POST", "/v1/things", "dry_run=1")
    assert status == 400 and "takes no query parameters" in body["error"] and body["field"] == "dry_run"
    status, _, body = run("GET", "/v1/things", "limit=1&limit=2")
    assert status == 400 and "given more than once" in body["error"] and body["field"] == "limit"


def test_a_route_that_declares_no_allow_list_is_not_checked() -> None:
    assert run("GET", "/v1/free", "anything=1")[0] == 200


def test_options_answers_allow_for_a_routed_path_and_404_otherwise() -> None:
    status, headers, body = run("OPTIONS", "/v1/things")
    assert status == 204 and headers["allow"] == "GET, HEAD, OPTIONS, POST" and body is None
    assert "access-control-allow-origin" not in headers
    status, _, body = run("OPTIONS", "/v1/nothing")
    assert status == 404 and body["code"] == "not_found"


def test_preflight_from_an_allowed_origin_lists_methods_and_headers_without_credentials() -> None:
    pre = {
        "Origin": "https://app.example.com",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    status, headers, _ = run("OPTIONS", "/v1/things", headers=pre, origins="https://app.example.com")
    assert status == 204
    assert headers["access-control-allow-origin"] == "https://app.example.com"
    assert headers["access-control-allow-methods"] == "GET, HEAD, OPTIONS, POST"
    assert {"Authorization", "Content-Type", "X-API-Key"} <= set(headers["access-control-allow-headers"].split(", "))
    assert headers["vary"] == "Origin" and int(headers["access-control-max-age"]) > 0
    assert "access-control-allow-credentials" not in headers


def test_preflight_from_another_origin_is_403_naming_the_setting() -> None:
    pre = {"Origin": "https://evil.example.com", "Access-Control-Request-Method": "GET"}
    status, headers, body = run("OPTIONS", "/v1/things", headers=pre, origins="https://app.example.com")
    assert status == 403 and "CORS_ALLOWED_ORIGINS" in body["error"]
    assert "access-control-allow-origin" not in headers


def test_answers_to_an_allowed_origin_expose_ids_and_location() -> None:
    status, headers, _ = run("POST", "/v1/things", headers={"Origin": "http://localhost:3000"}, origins="*")
    assert status == 201 and headers["location"] == "/v1/things/1"
    assert headers["access-control-allow-origin"] == "http://localhost:3000"
    exposed = headers["access-control-expose-headers"].split(", ")
    assert {"X-Request-ID", "X-Trace-ID", "Location", "Retry-After"} <= set(exposed)
    # errors too: a browser client must be able to read the JSON error
    status, headers, _ = run("GET", "/v1/things", "bad=1", headers={"Origin": "http://localhost:3000"}, origins="*")
    assert status == 400 and headers["access-control-allow-origin"] == "http://localhost:3000"
    # CORS off (the default): no CORS headers at all
    assert "access-control-allow-origin" not in run("GET", "/v1/things", headers={"Origin": "http://x.test"})[1]


@pytest.mark.parametrize("folder", sorted(p.parent.name for p in (ROOT / "functions").glob("*/main.py")))
def test_every_http_route_of_every_function_declares_its_query_parameters(folder: str) -> None:
    module = importlib.import_module(f"functions.{folder}.main")
    router = getattr(module, "ROUTES", None)
    if router is None:
        return  # an event function (shared.web.events), no routes
    undeclared = [f"{'/'.join(r.methods)} {r.rule}" for r in router.routes if r.query is None]
    assert not undeclared, f"functions/{folder}: give these routes query=(...) (their query parameters): {undeclared}"
