"""``kinfer usage`` and the token-limit flags of ``kinfer keys`` over the real keys function (PostgreSQL, Redis)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.cli import main
from shared.services import Services, reset_services
from shared.settings import Settings
from tests.integration.servers import InProcessServer

pytestmark = pytest.mark.integration


@pytest.fixture
def api(base_settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Services]:
    services: Services = reset_services(dataclasses.replace(base_settings, auth_required=True, auth_cache_ttl_s=0))
    _, admin = services.keys.create_key(f"cli-usage-admin-{uuid.uuid4().hex[:6]}", "admin")
    server = InProcessServer("keys", "manage_api_keys")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("KINFER_URL", server.url.rstrip("/"))
    monkeypatch.setenv("KINFER_API_KEY", admin)
    yield services
    server.stop()
    reset_services(None)


def test_keys_create_and_update_set_the_token_limit(api: Services, capsys: pytest.CaptureFixture[str]) -> None:
    name = f"cli-tok-{uuid.uuid4().hex[:6]}"
    assert main(["keys", "create", "--name", name, "--scopes", "infer", "--tokens-per-minute", "100"]) == 0
    out = capsys.readouterr().out
    key_id = re.search(r"^id:\s+(\S+)$", out, re.M).group(1)  # type: ignore[union-attr]
    assert re.search(r"^tokens_per_minute:\s+100$", out, re.M), out
    assert main(["keys", "update", key_id, "--tokens-per-minute", "2500", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens_per_minute"] == 2500
    assert main(["keys", "list", "--status", "active", "--limit", "1000"]) == 0
    [row] = [line for line in capsys.readouterr().out.splitlines() if line.startswith(key_id)]
    assert " 2500 " in row
    assert main(["keys", "update", key_id, "--tokens-per-minute", "none", "--rate-limit", "90", "-o", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["tokens_per_minute"] is None and shown["rate_limit_per_minute"] == 90
    assert main(["keys", "update", key_id, "--tokens-per-minute", "0"]) == 2  # the API's 400 on a flag: usage
    assert "tokens_per_minute" in capsys.readouterr().err


def test_usage_prints_the_recorded_tokens(
    api: Services, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    record, secret = api.keys.create_key(f"cli-tok-{uuid.uuid4().hex[:6]}", "infer")
    principal = api.auth.principal_for(secret)

    async def spend() -> None:
        await api.tokens.record(principal, "tiny_lm", 7, 21)
        await api.tokens.record(principal, "tiny_lm", 3, 9)

    asyncio.run(spend())
    api.tokens.flush()

    assert main(["usage", "--key-id", record["id"], "--since", "1h"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["KEY", "MODEL", "PROMPT", "COMPLETION", "TOTAL", "REQUESTS"]
    assert lines[1].split() == [record["id"], "tiny_lm", "10", "30", "40", "2"]
    assert lines[2].startswith("total 40 tokens (10 prompt, 30 completion) in 2 requests")

    assert main(["usage", "--key-id", record["id"], "--by", "hour", "-o", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["by"] == "hour" and report["totals"]["total_tokens"] == 40
    assert [r["total_tokens"] for r in report["usage"]] in ([40], [28, 12])  # unless the hour turned in between

    monkeypatch.setenv("KINFER_API_KEY", secret)  # the key itself: its own usage without --key-id
    assert main(["usage", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["total_tokens"] == 40
    assert main(["usage", "--key-id", str(uuid.uuid4())]) != 0  # another key's: admin keys only
    assert "own usage" in capsys.readouterr().err
    assert main(["usage", "--since", "2030-01-01T00:00:00Z", "--until", "2029-01-01T00:00:00Z"]) == 2
