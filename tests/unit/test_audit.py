"""The audit log's invariants without services: append-only in the code and the API, entries as plain JSON
without secrets, actors and targets named consistently."""

from __future__ import annotations

import importlib
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from shared import audit
from shared.audit import Actor
from shared.catalogue import FUNCTIONS
from shared.errors import InvalidInput

ROOT = Path(__file__).resolve().parents[2]
CHANGES = re.compile(
    r"audit_log\s*\.\s*(update|delete)\s*\(|(update|delete)\(\s*(schema\.)?audit_log\b|"
    r"\bUPDATE\s+audit_log\b|\bDELETE\s+FROM\s+audit_log\b|\bTRUNCATE\b[^\n]*audit_log",
    re.I,
)


def test_no_code_updates_or_deletes_an_audit_entry() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{text[: m.start()].count(chr(10)) + 1}"
        for base in ("shared", "functions")
        for path in (ROOT / base).rglob("*.py")
        if "migrations" not in path.parts
        for text in [path.read_text()]
        for m in CHANGES.finditer(text)
    ]
    assert offenders == []


def test_the_probe_finds_a_change_when_there_is_one() -> None:
    for line in ("conn.execute(audit_log.update().values(x=1))", "sa.delete(audit_log)", "DELETE FROM audit_log"):
        assert CHANGES.search(line), line


def test_no_function_routes_a_change_of_the_audit_log() -> None:
    audit_routes = []
    for fn in FUNCTIONS:
        router = importlib.import_module(fn.module).ROUTES
        audit_routes += [(fn.folder, r.rule, r.methods, r.scope) for r in router.routes if "audit" in r.rule]
    assert audit_routes == [("keys", "/v1/audit", ("GET",), "admin")]


def test_entries_are_plain_json_without_secrets() -> None:
    when = datetime(2026, 12, 7, 16, 0, tzinfo=UTC)
    kid = uuid.uuid4()
    value = {
        "id": kid,
        "at": when,
        "scopes": ("infer",),
        "weight": Decimal("0.5"),
        "key": "kf_secret",
        "nested": [{"callback_secret": "kcs_x", "key_hash": "ab", "name": "n"}],
    }
    assert audit.plain(value) == {
        "id": str(kid),
        "at": "2026-12-07T16:00:00+00:00",
        "scopes": ["infer"],
        "weight": "0.5",
        "nested": [{"name": "n"}],
    }
    assert audit.plain({"blob": "x" * (audit.MAX_JSON_BYTES + 1)})["truncated"] is True
    with pytest.raises(TypeError):
        audit.plain({"f": object()})


@dataclass(frozen=True)
class _Principal:
    key_id: str
    name: str


def test_actors_and_targets() -> None:
    assert Actor.of(_Principal("k1", "ops"), "r1", "t1") == Actor("k1", "ops", "r1", "t1")
    assert Actor.of(None, "r2").key_id is None and Actor.of(None).key_name.startswith("anonymous")
    assert Actor.system("rollout-gate") == Actor(None, "system:rollout-gate")
    assert audit.target("alias", "iris", "production") == "alias:iris/production"
    assert audit.model_of("alias:iris/production") == "iris" and audit.model_of("version:iris/3") == "iris"
    assert audit.model_of("key:1234") is None and audit.model_of("job:1") is None


@pytest.mark.parametrize("action", ["alias.move", "rollout.step", "key.rotate_callback_secret", "capture.set"])
def test_good_action_names(action: str) -> None:
    assert audit.ACTION.fullmatch(action)


@pytest.mark.parametrize("action", ["", "Alias.Move", "alias move", "alias.", "a;drop"])
def test_bad_action_names_are_refused_before_any_sql(action: str) -> None:
    with pytest.raises(ValueError):
        audit.append(None, actor=None, action=action, target="model:m", before=None, after=None)  # type: ignore[arg-type]


def test_bad_filters_name_their_field() -> None:
    for args, field in (({"since": "soon"}, "since"), ({"actor": "x"}, "actor"), ({"action": "A B"}, "action")):
        with pytest.raises(InvalidInput) as raised:
            audit._filters(args)
        assert raised.value.field == field


def test_the_gateways_openapi_document_has_the_audit_route() -> None:
    from starlette.testclient import TestClient

    from shared.cli.serve import gateway_app

    doc = TestClient(gateway_app()).get("/openapi.json").json()
    operation = doc["paths"]["/v1/audit"]["get"]
    assert operation["x-kinfer-scope"] == "admin" and set(doc["paths"]["/v1/audit"]) == {"get"}
    names = {p["name"] for p in operation["parameters"]}
    assert {"action", "target", "model", "actor", "since", "until", "limit", "offset", "cursor"} <= names


def test_the_cli_says_what_changed_and_reads_ages() -> None:
    import argparse

    from shared.cli.audit import change, moment

    assert change(None, {"versions": {"1": 100}}) == "created" and change({"a": 1}, None) == "deleted"
    moved = change({"versions": {"1": 100}, "updated_at": "t1"}, {"versions": {"1": 90, "2": 10}, "updated_at": "t2"})
    assert moved == 'versions: {"1":100} -> {"1":90,"2":10}'
    assert datetime.fromisoformat(moment("2d")) < datetime.now(UTC) - timedelta(hours=47)
    assert moment("2026-12-01T00:00:00") == "2026-12-01T00:00:00+00:00"
    with pytest.raises(argparse.ArgumentTypeError):
        moment("yesterday")
