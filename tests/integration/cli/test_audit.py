"""``kinfer audit`` over the real keys function (which serves ``GET /v1/audit``) on PostgreSQL and Redis."""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.cli import main
from shared.services import Services, reset_services
from shared.settings import Settings
from tests.integration.servers import InProcessServer

pytestmark = pytest.mark.integration


@pytest.fixture
def api(base_settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, Any]]:
    services: Services = reset_services(dataclasses.replace(base_settings, auth_required=True, auth_cache_ttl_s=0))
    name = f"cli-auditor-{uuid.uuid4().hex[:6]}"
    _, admin = services.keys.create_key(name, "admin")
    server = InProcessServer("keys", "manage_api_keys")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("KINFER_URL", server.url.rstrip("/"))
    monkeypatch.setenv("KINFER_API_KEY", admin)
    yield {"services": services, "admin_name": name}
    server.stop()
    reset_services(None)


def test_audit_lists_what_the_keys_commands_did(api: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "create", "--name", f"cli-{uuid.uuid4().hex[:6]}", "--scopes", "infer"]) == 0
    key_id = re.search(r"^id:\s+(\S+)$", capsys.readouterr().out, re.M).group(1)
    assert main(["keys", "revoke", key_id]) == 0
    capsys.readouterr()

    assert main(["audit", "--target", f"key:{key_id}", "--since", "10m"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["TIME", "ACTOR", "ACTION", "TARGET", "CHANGE"]
    assert len(table) == 3 and "key.revoke" in table[1] and "key.create" in table[2]
    assert api["admin_name"] in table[1] and "status: active -> revoked" in table[1] and "created" in table[2]

    assert main(["audit", "--target", f"key:{key_id}", "--action", "key.revoke", "-o", "json"]) == 0
    [entry] = json.loads(capsys.readouterr().out)["entries"]
    assert entry["before"]["status"] == "active" and entry["after"]["status"] == "revoked"
    assert main(["audit", "--target", f"key:{key_id}", "--limit", "1", "-o", "yaml"]) == 0
    page = yaml.safe_load(capsys.readouterr().out)
    assert [e["action"] for e in page["entries"]] == ["key.revoke"] and page["next_cursor"]
    assert main(["audit", "--target", f"key:{key_id}", "--cursor", page["next_cursor"], "-o", "json"]) == 0
    assert [e["action"] for e in json.loads(capsys.readouterr().out)["entries"]] == ["key.create"]
    assert main(["audit", "--target", f"key:{key_id}", "--until", "2000-01-01T00:00:00Z", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == []


def test_audit_needs_an_admin_key(
    api: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, reader = api["services"].keys.create_key(f"cli-reader-{uuid.uuid4().hex[:6]}", "infer")
    monkeypatch.setenv("KINFER_API_KEY", reader)
    assert main(["audit"]) != 0
    assert "admin" in capsys.readouterr().err
