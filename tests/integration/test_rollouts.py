"""The rollout controller on real PostgreSQL and Redis: a rollout splits its alias at the first step, steps
and promotes on good figures, rolls back on bad ones, decides nothing while paused, never decides while
another replica holds the leader lock, refuses a second rollout, and audits every decision with its
figures. Figures are the real per-version counters the data plane writes (``lifecycle.metrics``)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from shared.audit import Actor
from shared.errors import Conflict, NotFound
from shared.lifecycle.rollout import LOCK_KEY

pytestmark = pytest.mark.integration
ADMIN = Actor("k-admin", "admin key", "req-1")
FAST = {"steps": [10, 50, 100], "min_requests": 20, "min_step_s": 0, "max_error_rate": 0.1, "max_p99_ratio": 3}


@pytest.fixture
def model(services: Any) -> str:
    name = f"gate-{uuid.uuid4().hex[:8]}"
    for version in ("1", "2"):
        services.registry.create_model(
            {"name": name, "version": version, "framework": "onnx", "format": "onnx", "backend_url": "127.0.0.1:8001"}
        )
    services.aliases.put_alias(name, "production", {"version": "1"}, ADMIN)
    return name


def _traffic(services: Any, name: str, version: str, ok: int, failed: int = 0, seconds: float = 0.004) -> None:
    for _ in range(ok):
        services.version_recorder.record(f"{name}|{version}", "ok", seconds)
    for _ in range(failed):
        services.version_recorder.record(f"{name}|{version}", "backend_error", seconds)
    services.version_recorder.flush()


def _split(services: Any, name: str) -> dict[str, int]:
    return dict(services.aliases.get_alias(name, "production")["versions"])


def test_good_figures_step_the_alias_to_the_candidate_and_every_decision_is_audited(services: Any, model: str) -> None:
    rollouts = services.rollouts
    started = rollouts.start(model, "production", {"candidate": "2", **FAST}, ADMIN)
    assert started["state"] == "running" and started["percent"] == 10 and _split(services, model) == {"1": 90, "2": 10}
    assert rollouts.tick() == []  # no candidate traffic yet: hold
    assert "0/20 candidate requests" in rollouts.status(model, "production")["reason"]
    _traffic(services, model, "1", 100)
    _traffic(services, model, "2", 25, failed=1)
    [stepped] = rollouts.tick()
    assert stepped["percent"] == 50 and _split(services, model) == {"1": 50, "2": 50}
    assert stepped["figures"]["candidate"]["requests"] == 26 and stepped["figures"]["candidate"]["errors"] == 1
    _traffic(services, model, "2", 10)
    assert rollouts.tick() == []  # the new step counts from its own start: 10 < 20
    _traffic(services, model, "2", 10)
    _traffic(services, model, "1", 10)
    [promoted] = rollouts.tick()
    assert promoted["state"] == "promoted" and _split(services, model) == {"2": 100}
    entries = services.audit.list_page({"model": model, "action": "rollout"})["entries"]
    actions = [e["action"] for e in entries]
    assert actions == ["rollout.promote", "rollout.step", "rollout.start"]
    step = entries[1]
    assert step["after"]["figures"]["candidate"]["requests"] == 26 and step["after"]["split"] == {"1": 50, "2": 50}
    assert entries[2]["actor_key_id"] == "k-admin" and entries[1]["actor_name"] == "system:rollout-gate"


def test_errors_past_the_budget_roll_the_alias_back_to_the_baseline(services: Any, model: str) -> None:
    rollouts = services.rollouts
    rollouts.start(model, "production", {"candidate": "2", **FAST}, ADMIN)
    _traffic(services, model, "2", 8, failed=3)  # 3 errors: more than 10 % of a 20-request step allows
    [rolled] = rollouts.tick()
    assert rolled["state"] == "rolled_back" and "error rate gate: 3 of 11" in rolled["reason"]
    assert _split(services, model) == {"1": 100}
    with pytest.raises(Conflict):
        rollouts.pause(model, "production", ADMIN)  # it has ended


def test_two_starts_at_once_make_one_rollout(services: Any, model: str) -> None:
    """Both found no rollout row to lock, so both started and the second overwrote the first; a per-alias lock
    makes the second wait and see the first (409 rollout_active)."""
    from concurrent.futures import ThreadPoolExecutor

    services.registry.create_model(
        {"name": model, "version": "3", "framework": "onnx", "format": "onnx", "backend_url": "127.0.0.1:8001"}
    )

    def start(candidate: str) -> str:
        try:
            return services.rollouts.start(model, "production", {"candidate": candidate, **FAST}, ADMIN)["candidate"]
        except Conflict as exc:
            return exc.code

    for _ in range(3):
        with ThreadPoolExecutor(2) as pool:
            answers = sorted(pool.map(start, ["2", "3"]))
        winner = [a for a in answers if a in ("2", "3")]
        assert len(winner) == 1 and "rollout_active" in answers, answers
        assert services.rollouts.status(model, "production")["candidate"] == winner[0]
        assert _split(services, model) == {"1": 90, winner[0]: 10}
        services.rollouts.abort(model, "production", ADMIN)
        assert _split(services, model) == {"1": 100}


def test_a_paused_rollout_decides_nothing_until_resumed_and_abort_goes_back(services: Any, model: str) -> None:
    rollouts = services.rollouts
    rollouts.start(model, "production", {"candidate": "2", **FAST}, ADMIN)
    with pytest.raises(Conflict) as twice:
        rollouts.start(model, "production", {"candidate": "2"}, ADMIN)
    assert twice.value.code == "rollout_active"
    assert rollouts.pause(model, "production", ADMIN)["state"] == "paused"
    _traffic(services, model, "2", 50, failed=20)
    assert rollouts.tick() == [] and _split(services, model) == {"1": 90, "2": 10}
    assert rollouts.resume(model, "production", ADMIN)["state"] == "running"
    assert rollouts.tick() == []  # resuming starts a fresh window: the paused traffic is not this step's
    assert rollouts.abort(model, "production", ADMIN)["state"] == "aborted"
    assert _split(services, model) == {"1": 100}


def test_only_the_holder_of_the_leader_lock_decides(services: Any, model: str) -> None:
    rollouts = services.rollouts
    rollouts.start(model, "production", {"candidate": "2", **FAST}, ADMIN)
    _traffic(services, model, "2", 30)
    with services.db.begin() as other:  # another replica in the middle of its tick
        assert other.execute(sa.select(sa.func.pg_try_advisory_xact_lock(LOCK_KEY))).scalar()
        assert rollouts.tick() == []
        assert _split(services, model) == {"1": 90, "2": 10}
    [stepped] = rollouts.tick()
    assert stepped["percent"] == 50


def test_a_rollout_needs_an_alias_on_one_version_and_an_existing_one(services: Any, model: str) -> None:
    with pytest.raises(NotFound):
        services.rollouts.status(model, "production")
    services.aliases.put_alias(model, "production", {"versions": {"1": 50, "2": 50}}, ADMIN)
    with pytest.raises(Conflict) as split:
        services.rollouts.start(model, "production", {"candidate": "2"}, ADMIN)
    assert split.value.code == "alias_split"


# -- the HTTP API of the models function (shadow and rollout routes) ---------------------------------------
@pytest.fixture
def client(services: Any) -> Any:
    from tests.conftest import function_client

    return function_client("models", "manage_models")


def test_shadow_versions_are_set_shown_and_checked_over_http(services: Any, model: str, client: Any) -> None:
    path = f"/v1/models/by-name/{model}/aliases/production/shadow"
    resp = client.put(path, json={"shadow": {"2": 25}})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"name": model, "alias": "production", "shadow": {"2": 25}, "pairs": []}
    alias = client.get(f"/v1/models/by-name/{model}/aliases/production").json()
    assert alias["shadow"] == {"2": 25}
    target = services.registry.resolve_target(model, "production")
    assert [(p, m["version"]) for p, m in target["shadow"]] == [(25, "2")]  # the data plane's view has it
    same = client.put(path, json={"shadow": {"1": 10}})
    assert same.status_code == 409 and same.json()["code"] == "shadow_is_target"
    missing = client.put(path, json={"shadow": {"9": 10}})
    assert missing.status_code == 404 and missing.json()["code"] == "version_not_found"
    bad = client.put(path, json={"shadow": {"2": 0}})
    assert bad.status_code == 400 and bad.json()["field"] == "shadow"
    assert client.get(f"/v1/models/by-name/{model}/aliases/staging/shadow").status_code == 404
    assert client.put(path, json={"shadow": {}}).json()["shadow"] == {}
    assert "shadow" not in services.registry.resolve_target(model, "production")
    audited = services.audit.list_page({"model": model, "action": "shadow"})["entries"]
    assert [(e["before"], e["after"]) for e in audited] == [({"2": 25}, {}), ({}, {"2": 25})]


def test_a_deleted_version_stops_being_a_shadow_and_a_new_one_of_its_number_is_not_mirrored(
    services: Any, model: str
) -> None:
    services.aliases.set_shadow(model, "production", {"shadow": {"2": 25}}, ADMIN)
    services.aliases.put_alias(model, "staging", {"version": "1"}, ADMIN)
    services.aliases.set_shadow(model, "staging", {"shadow": {"2": 100}}, ADMIN)
    with services.db.read() as conn:
        two = conn.execute(sa.text("SELECT id FROM models WHERE name = :n AND version = '2'"), {"n": model}).scalar()
    services.registry.delete_model(str(two), ADMIN)
    for alias in ("production", "staging"):
        assert services.aliases.get_alias(model, alias)["shadow"] == {}
        assert "shadow" not in services.registry.resolve_target(model, alias)
    services.registry.create_model(
        {"name": model, "version": "2", "framework": "onnx", "format": "onnx", "backend_url": "127.0.0.1:8001"}
    )
    assert "shadow" not in services.registry.resolve_target(model, "production")  # nothing inherited
    audited = services.audit.list_page({"model": model, "action": "shadow"})["entries"]
    dropped = sorted(e["before"]["2"] for e in audited if e["after"] == {})
    assert dropped == [25, 100]  # one shadow.set per alias, with what it mirrored before


def test_a_rollout_is_started_paused_and_aborted_over_http(services: Any, model: str, client: Any) -> None:
    path = f"/v1/models/by-name/{model}/aliases/production/rollout"
    bad = client.post(path, json={"candidate": "2", "steps": [10]})
    assert bad.status_code == 400 and bad.json()["field"] == "steps"
    started = client.post(path, json={"candidate": "2", **FAST})
    assert started.status_code == 200 and started.json()["state"] == "running", started.text
    assert client.get(path).json()["percent"] == 10
    assert client.post(path + "/pause").json()["state"] == "paused"
    assert client.post(path + "/pause").status_code == 409
    assert client.post(path + "/bogus").status_code == 404
    assert client.post(path + "/abort").json()["state"] == "aborted"
    assert _split(services, model) == {"1": 100}


def test_an_alias_moved_by_hand_ends_its_rollout_instead_of_being_overridden(services: Any, model: str) -> None:
    rollouts = services.rollouts
    rollouts.start(model, "production", {"candidate": "2", **FAST}, ADMIN)
    services.aliases.put_alias(model, "production", {"version": "2"}, ADMIN)
    _traffic(services, model, "2", 5, failed=5)
    [ended] = rollouts.tick()
    assert ended["state"] == "aborted" and "moved to {'2': 100} outside the rollout" in ended["reason"]
    assert _split(services, model) == {"2": 100}


def test_closing_the_services_stops_the_decision_loop(base_settings: Any) -> None:
    """No tick after ``close``: a loop outliving its database logged errors into a closed stream at exit."""
    import dataclasses
    import threading
    import time

    from shared.services import Services

    services = Services(dataclasses.replace(base_settings, rollout_tick_s=0.05))
    rollouts = services.rollouts
    rollouts.ensure_ticking()
    assert any(t.name == "rollout-gate" and t.is_alive() for t in threading.enumerate())
    services.close()
    deadline = time.monotonic() + 5
    while any(t.name == "rollout-gate" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(t.name == "rollout-gate" for t in threading.enumerate()), "the decision loop still runs"
