"""The audit log on real PostgreSQL, Redis and the S3 server, through the models, keys and batch functions:
each admin action writes exactly one entry (who, before, after, request id); a refused one writes none;
``GET /v1/audit`` is admin only, filters and pages, and no route changes an entry."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.audit import Actor
from shared.batch import store
from shared.localstack.s3 import S3Server
from shared.services import Services, get_services, reset_services
from shared.settings import Settings
from tests.conftest import free_port, function_client
from tests.lifecycle_support import linear_onnx

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server(port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def admin(base_settings: Settings, s3: S3Server) -> Iterator[dict[str, Any]]:
    """Auth on; an admin key named ``auditor-*`` (its id in ``id``) and its headers (``headers``)."""
    uid = uuid.uuid4().hex[:8]
    settings = dataclasses.replace(
        base_settings,
        auth_required=True,
        auth_cache_ttl_s=0,
        s3_endpoint_url=s3.url,
        model_repository_uri=f"s3://models-{uid}/repo",
        onnx_backend="python",
        callback_signing_secret="audit-test-master-secret",
    )
    services: Services = reset_services(settings)  # type: ignore[assignment]
    record, secret = services.keys.create_key(f"auditor-{uid}", "admin")
    yield {"id": record["id"], "name": record["name"], "headers": {"Authorization": f"Bearer {secret}"}}
    reset_services(None)


@pytest.fixture(scope="module")
def models() -> Any:
    return function_client("models", "manage_models")


@pytest.fixture(scope="module")
def keys() -> Any:
    return function_client("keys", "manage_api_keys")


@pytest.fixture(scope="module")
def batch() -> Any:
    return function_client("batch", "manage_batch_jobs")


def entries(keys: Any, admin: dict[str, Any], **query: str) -> list[dict[str, Any]]:
    resp = keys.get("/v1/audit", params={"limit": "500", **query}, headers=admin["headers"])
    assert resp.status_code == 200, resp.text
    return list(resp.json()["entries"])


def register(models: Any, admin: dict[str, Any], name: str, version: str, **body: Any) -> dict[str, Any]:
    payload = {"name": name, "version": version, "framework": "onnx", "format": "onnx", **body}
    resp = models.post("/v1/models", json=payload, headers=admin["headers"])
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def test_every_model_action_writes_one_entry_with_before_and_after(
    models: Any, keys: Any, admin: dict[str, Any]
) -> None:
    name = f"audited-{uuid.uuid4().hex[:8]}"
    h = {**admin["headers"], "X-Request-ID": "req-audit-1"}
    v1 = register(models, admin, name, "1", description="first")
    register(models, admin, name, "2")
    assert models.patch(f"/v1/models/{v1['id']}", json={"description": "better"}, headers=h).status_code == 200
    alias = f"/v1/models/by-name/{name}/aliases/production"
    assert models.put(alias, json={"version": "1"}, headers=admin["headers"]).status_code == 200
    assert models.put(alias, json={"version": "1"}, headers=admin["headers"]).status_code == 200  # no change
    split = models.put(alias, json={"versions": {"1": 90, "2": 10}}, headers=admin["headers"])
    assert split.status_code == 200, split.text
    assert models.post(f"{alias}/rollback", headers=admin["headers"]).status_code == 200
    assert models.delete(alias, headers=admin["headers"]).status_code == 204
    assert models.delete(f"/v1/models/{v1['id']}", headers=admin["headers"]).status_code == 204

    log = list(reversed(entries(keys, admin, model=name)))
    assert [e["action"] for e in log] == [
        "version.register",
        "version.register",
        "version.update",
        "alias.move",
        "alias.split",
        "alias.rollback",
        "alias.delete",
        "version.delete",
    ]
    assert {(e["actor_key_id"], e["actor_name"]) for e in log} == {(admin["id"], admin["name"])}
    register1, _, update, move, splitted, rollback, deleted, gone = log
    assert register1["target"] == f"version:{name}/1" and register1["before"] is None
    assert register1["after"]["id"] == v1["id"] and register1["after"]["description"] == "first"
    assert update["before"]["description"] == "first" and update["after"]["description"] == "better"
    assert update["request_id"] == "req-audit-1"
    assert move["target"] == f"alias:{name}/production" and move["before"] is None
    assert move["after"]["versions"] == {"1": 100}
    assert splitted["before"]["versions"] == {"1": 100} and splitted["after"]["versions"] == {"1": 90, "2": 10}
    assert rollback["before"]["versions"] == {"1": 90, "2": 10} and rollback["after"]["versions"] == {"1": 100}
    assert deleted["before"]["versions"] == {"1": 100} and deleted["after"] is None
    assert gone["target"] == f"version:{name}/1" and gone["before"]["id"] == v1["id"] and gone["after"] is None
    assert all(e["request_id"] for e in log) and all(e["at"] for e in log)


def test_a_refused_action_writes_no_entry(models: Any, keys: Any, admin: dict[str, Any]) -> None:
    name = f"refused-{uuid.uuid4().hex[:8]}"
    v1 = register(models, admin, name, "1")
    alias = f"/v1/models/by-name/{name}/aliases/production"
    assert models.put(alias, json={"version": "1"}, headers=admin["headers"]).status_code == 200
    before = entries(keys, admin, model=name)
    refused = [
        models.put(alias, json={"version": "9"}, headers=admin["headers"]),  # no such version: 404
        models.delete(f"/v1/models/{v1['id']}", headers=admin["headers"]),  # aliased: 409
        models.patch(f"/v1/models/{v1['id']}", json={"status": "inactive"}, headers=admin["headers"]),  # 409
        models.patch(f"/v1/models/{v1['id']}", json={"framework": "cobol"}, headers=admin["headers"]),  # 400
        models.post(f"{alias.replace('production', 'staging')}/rollback", headers=admin["headers"]),  # 404
        models.post(
            "/v1/models",
            json={"name": name, "version": "1", "framework": "onnx", "format": "onnx"},
            headers=admin["headers"],
        ),  # duplicate: 409
    ]
    assert [r.status_code for r in refused] == [404, 409, 409, 400, 404, 409]
    assert entries(keys, admin, model=name) == before


def test_an_entry_rolls_back_with_its_transaction(keys: Any, admin: dict[str, Any]) -> None:
    target = f"model:rolled-back-{uuid.uuid4().hex[:8]}"
    with pytest.raises(RuntimeError), get_services().registry.writing() as write:
        write.audit(Actor("k", "n"), "version.update", target, None, {"x": 1})
        raise RuntimeError("the change fails after its entry was written")
    get_services().audit.record(
        None,
        actor=Actor.system("test"),
        action="rollout.step",
        target=target,
        before={"1": 100},
        after={"1": 90, "2": 10},
    )
    [kept] = entries(keys, admin, target=target)
    assert kept["action"] == "rollout.step" and kept["actor_name"] == "system:test" and kept["actor_key_id"] is None


def test_a_push_is_audited_from_registration_to_upload(models: Any, keys: Any, admin: dict[str, Any]) -> None:
    name = f"pushed-{uuid.uuid4().hex[:8]}"
    created = register(models, admin, name, "1", upload=True)
    up = models.put(
        f"/v1/models/{created['id']}/artifact",
        content=linear_onnx(2.0),
        headers={**admin["headers"], "Content-Type": "application/octet-stream"},
    )
    assert up.status_code == 200, up.text
    push, registered = entries(keys, admin, model=name)
    assert registered["action"] == "version.register" and registered["after"]["state"] == "awaiting_upload"
    assert push["action"] == "version.push" and push["before"]["state"] == "awaiting_upload"
    assert push["after"]["state"] == "pending" and push["after"]["artifact_sha256"] == up.json()["artifact_sha256"]
    bad = models.put(
        f"/v1/models/{created['id']}/artifact",
        content=b"not a model",
        headers={**admin["headers"], "Content-Type": "application/octet-stream"},
    )
    assert bad.status_code == 409 and len(entries(keys, admin, model=name)) == 2


def test_key_actions_are_audited_without_secrets(keys: Any, admin: dict[str, Any]) -> None:
    h = admin["headers"]
    created = keys.post("/v1/keys", json={"name": "audited-app", "scopes": ["infer"], "expires_in": "30d"}, headers=h)
    assert created.status_code == 201, created.text
    key = created.json()
    rotated = keys.post("/v1/keys/self/callback-secret", headers={"Authorization": f"Bearer {key['key']}"})
    assert rotated.status_code == 200, rotated.text
    assert keys.delete(f"/v1/keys/{key['id']}", headers=h).status_code == 200
    assert keys.delete(f"/v1/keys/{key['id']}", headers=h).status_code == 200  # already revoked: no change
    assert keys.delete(f"/v1/keys/{uuid.uuid4()}", headers=h).status_code == 404
    log = entries(keys, admin, target=f"key:{key['id']}")
    assert [e["action"] for e in log] == ["key.revoke", "key.rotate_callback_secret", "key.create"]
    revoke, rotate, create = log
    assert create["before"] is None and create["after"]["scopes"] == ["infer"]
    stored, answered = (
        datetime.fromisoformat(t.replace("Z", "+00:00")) for t in (create["after"]["expires_at"], key["expires_at"])
    )
    assert stored == answered > datetime.now(UTC) + timedelta(days=29)
    assert revoke["before"]["status"] == "active" and revoke["after"]["status"] == "revoked"
    assert rotate["after"]["callback_secret_rotated_at"] > rotate["before"]["callback_secret_rotated_at"]
    text = str(log)
    for secret in (key["key"], key["callback_secret"], rotated.json()["callback_secret"]):
        assert secret not in text
    assert [e["actor_key_id"] for e in log] == [admin["id"], key["id"], admin["id"]]  # the key rotates its own


def test_a_batch_cancel_is_audited(batch: Any, keys: Any, admin: dict[str, Any]) -> None:
    job_id = uuid.uuid4()
    with get_services().db.begin() as conn:
        store.insert_job(
            conn,
            {
                "id": job_id,
                "owner": admin["id"],
                "model_name": "m",
                "model_version": "1",
                "model_id": uuid.uuid4(),
                "status": "processing",
                "total": 10,
                "chunk_size": 5,
                "chunks_total": 2,
                "input_url": None,
                "intake_key": None,
            },
        )
    assert batch.delete(f"/v1/batch/{job_id}", headers=admin["headers"]).status_code == 200
    assert batch.delete(f"/v1/batch/{job_id}", headers=admin["headers"]).status_code == 409
    [entry] = entries(keys, admin, target=f"job:{job_id}")
    assert entry["action"] == "job.cancel" and entry["actor_key_id"] == admin["id"]
    assert entry["before"]["status"] == "processing" and entry["after"]["status"] == "cancelled"


def test_only_admin_keys_read_the_log_and_nothing_changes_it(keys: Any, admin: dict[str, Any]) -> None:
    _, infer_key = get_services().keys.create_key(f"reader-{uuid.uuid4().hex[:6]}", "infer,batch")
    refused = keys.get("/v1/audit", headers={"Authorization": f"Bearer {infer_key}"})
    assert refused.status_code == 403 and "'admin' scope" in refused.json()["error"]
    assert keys.get("/v1/audit").status_code == 401
    for method in ("post", "put", "patch", "delete"):
        assert getattr(keys, method)("/v1/audit", headers=admin["headers"]).status_code == 405, method
        assert getattr(keys, method)("/v1/audit/1", headers=admin["headers"]).status_code in (404, 405), method


def test_filters_and_paging(models: Any, keys: Any, admin: dict[str, Any]) -> None:
    name = f"paged-{uuid.uuid4().hex[:8]}"
    start = datetime.now(UTC) - timedelta(seconds=1)
    for version in ("1", "2", "3", "4", "5"):
        register(models, admin, name, version)
    alias = f"/v1/models/by-name/{name}/aliases/staging"
    assert models.put(alias, json={"version": "3"}, headers=admin["headers"]).status_code == 200
    assert len(entries(keys, admin, model=name)) == 6
    assert [e["target"] for e in entries(keys, admin, model=name, action="alias")] == [f"alias:{name}/staging"]
    assert len(entries(keys, admin, model=name, action="version.register")) == 5
    assert len(entries(keys, admin, model=name, actor=admin["id"], since=start.isoformat())) == 6
    assert entries(keys, admin, model=name, until=start.isoformat()) == []
    assert entries(keys, admin, model=name, actor=str(uuid.uuid4())) == []

    first = keys.get("/v1/audit", params={"model": name, "limit": "4"}, headers=admin["headers"]).json()
    assert first["total"] == 6 and len(first["entries"]) == 4 and first["next_cursor"] == first["entries"][-1]["id"]
    rest = keys.get(
        "/v1/audit", params={"model": name, "limit": "4", "cursor": first["next_cursor"]}, headers=admin["headers"]
    ).json()
    assert len(rest["entries"]) == 2 and rest["next_cursor"] is None
    ids = [int(e["id"]) for e in first["entries"] + rest["entries"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 6
    offset = keys.get("/v1/audit", params={"model": name, "limit": "2", "offset": "4"}, headers=admin["headers"])
    assert [e["id"] for e in offset.json()["entries"]] == [e["id"] for e in rest["entries"]]


@pytest.mark.parametrize(
    "query,field",
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-01"}, "until"),
        ({"actor": "not-a-uuid"}, "actor"),
        ({"cursor": "abc"}, "cursor"),
        ({"action": "DROP TABLE"}, "action"),
        ({"color": "red"}, "color"),
    ],
)
def test_bad_queries_are_400_naming_the_field(keys: Any, admin: dict[str, Any], query: dict, field: str) -> None:
    resp = keys.get("/v1/audit", params=query, headers=admin["headers"])
    assert resp.status_code == 400 and resp.json()["field"] == field, resp.text


def test_migration_0009_creates_the_table_the_code_uses_and_goes_back(base_settings: Settings) -> None:
    import sqlalchemy as sa

    from shared.clients import db
    from shared.clients.schema import audit_log
    from tests.conftest import PG_ADMIN_URL

    name = f"kinfer_audit_{uuid.uuid4().hex[:8]}"
    url = sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    settings = Settings.from_env(environ={}, database_url=url, redis_url=base_settings.redis_url)
    db.ensure_database(settings)
    engine = sa.create_engine(url)
    try:
        db.upgrade(settings, "0009_audit_log")
        columns = {c["name"]: c for c in sa.inspect(engine).get_columns("audit_log")}
        assert set(columns) == set(audit_log.c.keys())
        assert {n: c["nullable"] for n, c in columns.items()} == {c.name: c.nullable for c in audit_log.c}
        indexes = {i["name"] for i in sa.inspect(engine).get_indexes("audit_log")}
        assert indexes == {i.name for i in audit_log.indexes}
        with engine.begin() as conn:
            with pytest.raises(sa.exc.ProgrammingError):  # GENERATED ALWAYS: ids come from the sequence only
                with conn.begin_nested():
                    conn.execute(
                        sa.text("INSERT INTO audit_log (id, actor_name, action, target) VALUES (1, 'a', 'b', 'c')")
                    )
        _downgrade(settings, "0008_key_expiry")
        assert "audit_log" not in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _downgrade(settings: Settings, revision: str) -> None:
    from alembic import command

    from shared.clients import db

    command.downgrade(db.alembic_config(settings), revision)


def test_an_action_prefix_is_matched_literally(keys: Any, admin: dict[str, Any]) -> None:
    target = f"model:literal-{uuid.uuid4().hex[:8]}"
    for action in ("ab.x", "a_.x"):
        get_services().audit.record(
            None, actor=Actor.system("test"), action=action, target=target, before=None, after=1
        )
    assert [e["action"] for e in entries(keys, admin, target=target, action="a_")] == ["a_.x"]
