"""Aliases: canary splits that are sticky per caller, and promote/rollback with zero failed requests
while eight threads infer continuously over real HTTP."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from typing import Any

import pytest

from tests.integration.lifecycle.conftest import Lifecycle, unique
from tests.lifecycle_support import linear_onnx

pytestmark = pytest.mark.integration
K = {"1": 2.0, "2": 3.0, "3": 5.0}


@pytest.fixture(scope="module")
def model(life: Lifecycle) -> str:
    name = unique("canary")
    for version in ("1", "2"):
        assert life.push(name, version, linear_onnx(K[version]))["state"] == "ready"
    return name


def alias_path(name: str, alias: str = "production") -> str:
    return f"/v1/models/by-name/{name}/aliases/{alias}"


def test_an_alias_points_at_one_version_and_is_the_default(life: Lifecycle, model: str) -> None:
    resp = life.models.put(alias_path(model), json={"version": "1"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["versions"] == {"1": 100} and resp.json()["previous"] is None
    assert life.infer(model, 1.0).json()["version"] == "1", "no version: the production alias"
    assert life.infer(model, 1.0, "production").json()["version"] == "1"
    assert life.infer(model, 1.0, "2").json()["version"] == "2", "a pinned version still answers"
    listed = life.models.get(f"/v1/models/by-name/{model}/aliases").json()["aliases"]
    assert [a["alias"] for a in listed] == ["production"]


def test_a_90_10_split_lands_within_3_points_and_is_sticky(life: Lifecycle, model: str) -> None:
    resp = life.models.put(alias_path(model, "canary"), json={"versions": {"1": 90, "2": 10}})
    assert resp.status_code == 200, resp.text
    answered = {}
    for i in range(1000):
        got = life.infer(model, 1.0, "canary", route_key=f"caller-{i}")
        assert got.status_code == 200, got.text
        answered[i] = got.json()["version"]
        assert got.json()["outputs"]["y"] == [K[answered[i]]]
    share = Counter(answered.values())["2"] / 10
    assert 7.0 <= share <= 13.0, f"version 2 got {share}% of 1,000 requests"
    for i in range(0, 1000, 20):  # the same caller keeps its version
        assert life.infer(model, 1.0, "canary", route_key=f"caller-{i}").json()["version"] == answered[i]


@pytest.mark.parametrize(
    "body,field",
    [
        ({"versions": {"1": 90, "2": 20}}, "versions"),
        ({"versions": {"1": 0, "2": 100}}, "versions"),
        ({"versions": {}}, "versions"),
        ({"version": "v1"}, "version"),
        ({"version": "1", "versions": {}}, "versions"),
        ({"versions": {"1": 50.5, "2": 49.5}}, "versions"),
        ({"other": 1}, "other"),
    ],
)
def test_bad_alias_bodies_are_400(life: Lifecycle, model: str, body: dict, field: str) -> None:
    resp = life.models.put(alias_path(model, "bad"), json=body)
    assert resp.status_code == 400 and resp.json()["field"] == field, resp.text


def test_alias_moves_to_missing_or_unready_versions_are_refused(life: Lifecycle, model: str) -> None:
    assert life.models.put(alias_path(model), json={"version": "9"}).json()["code"] == "version_not_found"
    assert life.models.put(alias_path("no-such-model-x"), json={"version": "1"}).status_code == 404
    waiting = life.register(model, "7")  # awaiting its upload: never routed to
    resp = life.models.put(alias_path(model), json={"version": "7"})
    assert resp.status_code == 409 and resp.json()["code"] == "version_not_ready"
    assert "awaiting_upload" in resp.json()["error"]
    assert life.models.put(alias_path(model, "9lives"), json={"version": "1"}).json()["field"] == "alias"
    life.models.delete(f"/v1/models/{waiting['id']}")


def test_an_aliased_version_cannot_be_deleted_or_deactivated(life: Lifecycle, model: str) -> None:
    life.models.put(alias_path(model), json={"version": "1"})
    v1 = life.models.get(f"/v1/models/by-name/{model}/1").json()
    for resp in (
        life.models.delete(f"/v1/models/{v1['id']}"),
        life.models.patch(f"/v1/models/{v1['id']}", json={"status": "deprecated"}),
    ):
        assert resp.status_code == 409 and resp.json()["code"] == "version_aliased", resp.text
        assert "production" in resp.json()["error"]
        # what to do names what works for any alias, a canary's split included
        assert f"kinfer models delete-alias {model} ALIAS" in resp.json()["error"], resp.text


def test_rollback_without_a_previous_target_is_409(life: Lifecycle, model: str) -> None:
    resp = life.models.put(alias_path(model, "fresh"), json={"version": "2"})
    assert resp.status_code == 200
    resp = life.models.post(alias_path(model, "fresh") + "/rollback")
    assert resp.status_code == 409 and resp.json()["code"] == "no_previous_target"
    assert life.models.delete(alias_path(model, "fresh")).status_code == 204
    assert life.models.get(alias_path(model, "fresh")).status_code == 404


class Load:
    """Eight threads calling POST /v1/infer (no version: alias production) until stopped."""

    def __init__(self, url: str, name: str, threads: int = 8) -> None:
        self.url, self.name = url, name
        self.statuses: Counter[int] = Counter()
        self.versions: Counter[str] = Counter()
        self.wrong: list[Any] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(threads)]
        for t in self.threads:
            t.start()

    def run(self, i: int) -> None:
        while not self.stop.is_set():
            x = float(i + 1)
            data = json.dumps({"model": self.name, "input": {"data": [x]}}).encode()
            request = urllib.request.Request(
                self.url + "v1/infer", data=data, method="POST", headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as resp:
                    body = json.loads(resp.read())
                    self.statuses[resp.status] += 1
                    self.versions[body["version"]] += 1
                    if body["outputs"]["y"] != [K[body["version"]] * x]:
                        self.wrong.append(body)
            except urllib.error.HTTPError as exc:
                self.statuses[exc.code] += 1
                self.wrong.append(exc.read()[:300])

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def test_promote_and_rollback_under_load_fail_no_request(life: Lifecycle, model: str) -> None:
    from tests.integration.servers import InProcessServer

    server = InProcessServer("infer", "run_inference")
    assert life.models.put(alias_path(model), json={"version": "1"}).status_code == 200
    load = Load(server.url, model)
    try:
        time.sleep(1.0)
        v3 = life.push(model, "3", linear_onnx(K["3"]))  # loaded while version 1 serves
        assert v3["state"] == "ready", v3
        steps = [
            ("PUT", {"version": "3"}),
            ("POST", None),
            ("PUT", {"versions": {"1": 50, "3": 50}}),
            ("PUT", {"version": "2"}),
            ("POST", None),
        ]
        for method, body in steps:
            time.sleep(1.0)
            resp = (
                life.models.put(alias_path(model), json=body)
                if method == "PUT"
                else life.models.post(alias_path(model) + "/rollback")
            )
            assert resp.status_code == 200, resp.text
        assert resp.json()["versions"] == {"1": 50, "3": 50}, "the last rollback went back to the split"
        time.sleep(1.0)
    finally:
        load.finish()
        server.stop()
    total = sum(load.statuses.values())
    print(f"\n{total} requests during promote/rollback: statuses {dict(load.statuses)}, versions {dict(load.versions)}")
    assert set(load.statuses) == {200}, load.wrong[:5]
    assert not load.wrong and total > 100
    assert {"1", "2", "3"} <= set(load.versions), "every version served in turn"


def test_alias_moves_are_503_when_the_heartbeats_cannot_be_read(life: Lifecycle, model: str) -> None:
    import dataclasses

    from shared.services import reset_services

    reset_services(dataclasses.replace(life.settings, redis_url="redis://127.0.0.1:1/0"))
    try:
        resp = life.models.put(alias_path(model), json={"version": "2"})
        assert resp.status_code == 503 and resp.json()["code"] == "unavailable" and resp.headers["Retry-After"]
    finally:
        reset_services(life.settings)


def _race(svc: Any, model: str, row: dict[str, Any], deactivate: bool) -> dict[str, str]:
    """Move alias "race" to ``row``'s version while deleting (or deactivating) it; each side's outcome."""
    import threading

    from shared.errors import KinferError

    barrier, outcome = threading.Barrier(2), {}

    def move() -> None:
        barrier.wait()
        try:
            svc.aliases.put_alias(model, "race", {"version": row["version"]})
            outcome["move"] = "ok"
        except KinferError as exc:
            outcome["move"] = exc.code

    def kill() -> None:
        barrier.wait()
        try:
            if deactivate:
                svc.registry.update_model(row["id"], {"status": "inactive"})
            else:
                svc.registry.delete_model(row["id"])
            outcome["kill"] = "ok"
        except KinferError as exc:
            outcome["kill"] = exc.code

    threads = [threading.Thread(target=move), threading.Thread(target=kill)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return outcome


def test_an_alias_move_racing_a_delete_or_a_deactivation_never_both_succeed(life: Lifecycle, model: str) -> None:
    """Either the move wins (the version stays, the delete or deactivation is 409) or the other side wins
    (the move is refused): never an alias pointing at a dead version."""
    from shared.errors import KinferError

    svc = life.services()
    both = []
    for i in range(16):
        row = svc.registry.create_model(  # a version without files: ready at once, cheap to make 16 times
            {"name": model, "version": f"9{i}", "framework": "onnx", "format": "onnx", "triton_model": model},
        )
        svc.aliases.put_alias(model, "race", {"version": "1"})
        if _race(svc, model, row, deactivate=i % 2 == 1) == {"move": "ok", "kill": "ok"}:
            both.append(row["version"])
        svc.aliases.put_alias(model, "race", {"version": "1"})
        try:
            svc.registry.delete_model(row["id"])
        except KinferError:
            pass  # the delete won the race
    svc.aliases.delete_alias(model, "race")
    assert not both, f"the alias moved to a version that was deleted or deactivated meanwhile: {both}"
