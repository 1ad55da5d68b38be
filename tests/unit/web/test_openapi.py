"""The OpenAPI documents: generated from the routers, valid OpenAPI 3.1, served by every HTTP function
and by the gateway, and true to the code (every route and method listed, error bodies match the schema)."""

from __future__ import annotations

import importlib
import json

import jsonschema
import pytest
from openapi_spec_validator import validate

from shared.cli.serve import gateway_app, gateway_mounts
from shared.errors import CircuitOpen, InvalidInput, NotFound
from shared.web import openapi
from shared.web.responses import error_response
from shared.web.route import OPENAPI_PATH, Route
from shared.web.routing import Router
from tests.conftest import function_client

HTTP_FUNCTIONS = {
    "models": "manage_models",
    "infer": "run_inference",
    "batch": "manage_batch_jobs",
    "backends": "serve_backends",
}


def routes_of(folder: str) -> list[Route]:
    return importlib.import_module(f"functions.{folder}.main").ROUTES.routes


def operations(doc: dict) -> set[tuple[str, str]]:
    return {(path, method.upper()) for path, item in doc["paths"].items() for method in item}


@pytest.mark.parametrize("folder", sorted(HTTP_FUNCTIONS))
def test_each_function_documents_exactly_its_routes(folder: str) -> None:
    routes = routes_of(folder)
    doc = openapi.document(routes, folder)
    validate(doc)  # OpenAPI 3.1, with every $ref resolvable
    expected = {(openapi.openapi_path(r.rule), m) for r in routes for m in r.methods}
    assert operations(doc) == expected
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    for route in routes:
        for method in route.methods:
            op = doc["paths"][openapi.openapi_path(route.rule)][method.lower()]
            names = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert names == set(openapi._PARAM.findall(route.rule)), route.rule
            assert ("security" in op) == (route.scope is not None), route.rule
            assert "(undocumented)" not in op["summary"], f"{method} {route.rule} has no summary"
            assert route.responses, f"{method} {route.rule} documents no answer"
            assert op["responses"]["default"] == {"$ref": "#/components/responses/Error"}


@pytest.mark.parametrize("folder", sorted(HTTP_FUNCTIONS))
def test_each_function_serves_its_document(folder: str) -> None:
    client = function_client(folder, HTTP_FUNCTIONS[folder])
    resp = client.get(OPENAPI_PATH)
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    assert operations(resp.json()) == operations(openapi.document(routes_of(folder), folder))


def test_the_gateway_serves_every_public_route_and_only_those() -> None:
    from starlette.testclient import TestClient

    resp = TestClient(gateway_app()).get(OPENAPI_PATH)
    assert resp.status_code == 200 and resp.headers["x-request-id"]
    doc = resp.json()
    validate(doc)
    expected = {(OPENAPI_PATH, "GET")}
    for prefix, module, _ in gateway_mounts(pages=False):
        for route in importlib.import_module(module).ROUTES.routes:
            if openapi.under_prefix(route.rule, prefix):
                expected |= {(openapi.openapi_path(route.rule), m) for m in route.methods}
    assert operations(doc) == expected
    assert ("/v1/batch/{job_id}", "DELETE") in expected and ("/livez", "GET") not in expected
    assert {("/v1/backends", "GET"), ("/v1/keys/self", "GET")} <= expected
    assert not any(path.startswith("/console") for path, _ in expected), "the console is a page, not API"
    assert ("/metrics", "GET") not in expected and ("/", "POST") not in expected  # of backends: /v1/backends only
    assert doc["paths"]["/v1/backends"]["get"]["x-kinfer-scope"] == "infer"
    assert doc["paths"]["/v1/keys/self"]["get"]["x-kinfer-scope"] == "any"


def test_the_gateway_mounts_the_console_with_its_headers() -> None:
    from starlette.testclient import TestClient

    client = TestClient(gateway_app())
    moved = client.get("/console", follow_redirects=False)
    assert moved.status_code == 308 and moved.headers["location"] == "/console/"
    page = client.get("/console/")
    assert page.status_code == 200 and "Kinfer console" in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert client.get("/consoles").status_code == 404


def test_an_undocumented_route_still_appears_generically() -> None:
    async def handler(call: object, thing: str) -> dict:
        return {}

    router = Router([Route("/v1/things/<thing>", ("POST",), handler, scope="admin")])  # the old signature
    doc = openapi.document(router.routes, "t")
    validate(doc)
    op = doc["paths"]["/v1/things/{thing}"]["post"]
    assert op["summary"] == "POST /v1/things/{thing} (undocumented)" and op["security"]
    assert op["requestBody"]["required"] is False and "200" in op["responses"]
    assert (OPENAPI_PATH, "GET") in operations(doc)  # every router documents itself


@pytest.mark.parametrize(
    "error",
    [
        InvalidInput("name is required", field="name"),
        NotFound("no such model"),
        CircuitOpen("circuit breaker open", retry_after=3),
    ],
)
def test_error_bodies_match_the_documented_schema(error: Exception) -> None:
    body = json.loads(error_response(error, "rid", "trace").body)  # type: ignore[arg-type]
    jsonschema.validate(body, openapi.ERROR_SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**body, "stack": "..."}, openapi.ERROR_SCHEMA)
