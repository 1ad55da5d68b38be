"""``GET /v1/models``: search by a part of the name, state filter, pages, and ``include=aliases`` (each name's
aliases read for the whole page in one query), against real PostgreSQL and Redis through functions-framework."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from shared.clients.schema import model_aliases
from tests.conftest import function_client

pytestmark = pytest.mark.integration


@pytest.fixture
def client(services: Any) -> Any:
    return function_client("models", "manage_models")


@pytest.fixture
def family(client: Any, services: Any) -> Iterator[str]:
    """Three names sharing a random part, two versions each, and aliases on two of them (written straight to
    the table: moving an alias through the API needs loaded versions, which is not what is tested here)."""
    part = uuid.uuid4().hex[:8]
    for name in (f"a-{part}-x", f"B-{part.upper()}-y", f"c-{part}-z"):
        for version in ("1", "2"):
            body = {"name": name, "version": version, "framework": "onnx", "format": "onnx"}
            assert client.post("/v1/models", json=body).status_code == 201
    with services.db.begin() as conn:
        conn.execute(
            sa.insert(model_aliases),
            [
                {"name": f"a-{part}-x", "alias": "production", "versions": {"2": 100}, "previous": {"1": 100}},
                {"name": f"a-{part}-x", "alias": "canary", "versions": {"1": 90, "2": 10}, "previous": None},
                {"name": f"c-{part}-z", "alias": "production", "versions": {"1": 100}, "previous": None},
            ],
        )
    yield part
    with services.db.begin() as conn:
        conn.execute(sa.delete(model_aliases).where(model_aliases.c.name.like(f"%{part}%")))


def test_include_aliases_embeds_each_names_aliases_in_one_query(client: Any, services: Any, family: str) -> None:
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    for engine in (services.db.engine, services.db.read_engine):
        sa.event.listen(engine, "before_cursor_execute", count)
    try:
        resp = client.get(f"/v1/models?q={family}&include=aliases")
    finally:
        for engine in (services.db.engine, services.db.read_engine):
            sa.event.remove(engine, "before_cursor_execute", count)
    assert resp.status_code == 200, resp.text
    page = resp.json()
    assert page["total"] == 6 and len(page["models"]) == 6
    by_name = {m["name"]: m["aliases"] for m in page["models"]}
    assert [(a["alias"], a["versions"], a["previous"]) for a in by_name[f"a-{family}-x"]] == [
        ("canary", {"1": 90, "2": 10}, None),
        ("production", {"2": 100}, {"1": 100}),
    ]
    assert [a["name"] for a in by_name[f"a-{family}-x"]] == [f"a-{family}-x"] * 2
    assert by_name[f"B-{family.upper()}-y"] == [] and [a["alias"] for a in by_name[f"c-{family}-z"]] == ["production"]
    alias_queries = [s for s in statements if "model_aliases" in s]
    assert len(alias_queries) == 1, alias_queries
    assert family not in alias_queries[0], "the names travel as bound parameters"
    assert "aliases" not in client.get(f"/v1/models?q={family}").json()["models"][0], "only when asked"


def test_q_matches_a_part_of_the_name_in_any_case_and_pages(client: Any, family: str) -> None:
    names = lambda body: sorted({m["name"] for m in body["models"]})  # noqa: E731
    assert names(client.get(f"/v1/models?q={family.upper()}").json()) == sorted(
        [f"a-{family}-x", f"B-{family.upper()}-y", f"c-{family}-z"]
    )
    assert names(client.get(f"/v1/models?q={family}-Y").json()) == [f"B-{family.upper()}-y"]
    first = client.get(f"/v1/models?q={family}&limit=4").json()
    second = client.get(f"/v1/models?q={family}&limit=4&offset=4").json()
    assert (first["total"], len(first["models"]), second["total"], len(second["models"])) == (6, 4, 6, 2)
    assert not {m["id"] for m in first["models"]} & {m["id"] for m in second["models"]}
    state = first["models"][0]["state"]
    assert client.get(f"/v1/models?q={family}&state={state}&framework=onnx&status=active").json()["total"] == 6
    other = "failed" if state != "failed" else "ready"
    assert client.get(f"/v1/models?q={family}&state={other}").json()["total"] == 0


def test_q_wildcards_are_literal(client: Any, family: str) -> None:
    assert client.get("/v1/models?q=%25").json()["total"] == 0, "% is a character, not a wildcard"
    assert client.get(f"/v1/models?q={family[:3]}_{family[4:]}").json()["total"] == 0, "_ too"


@pytest.mark.parametrize(
    ("query", "field"),
    [("include=versions", "include"), ("q=" + "x" * 129, "q"), ("state=asleep", "state"), ("limit=501", "limit")],
)
def test_bad_list_parameters_are_400_naming_them(client: Any, query: str, field: str) -> None:
    resp = client.get(f"/v1/models?{query}")
    assert resp.status_code == 400 and resp.json()["field"] == field, resp.text
    assert resp.json()["request_id"]


def test_the_openapi_document_describes_q_state_include_and_the_aliases_field(client: Any) -> None:
    op = client.get("/openapi.json").json()["paths"]["/v1/models"]["get"]
    params = {p["name"]: p["schema"] for p in op["parameters"]}
    assert params["include"] == {"enum": ["aliases"]} and params["q"]["maxLength"] == 128
    assert "ready" in params["state"]["enum"]
    item = op["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["models"]["items"]
    aliases = item["properties"]["aliases"]
    assert aliases["type"] == "array" and aliases["items"]["required"] == ["name", "alias", "versions"]
