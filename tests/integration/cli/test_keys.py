"""``kinfer keys create|list|revoke`` against a real database, through ``shared.cli.main``."""

from __future__ import annotations

import re
import uuid

import pytest

from shared.access import keys
from shared.cli import main
from shared.services import Services
from shared.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, database_url: str, redis_url: str) -> Settings:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("REDIS_URL", redis_url)
    return Settings.from_env(environ={}, database_url=database_url, redis_url=redis_url)


def test_create_list_revoke_round_trip(env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    assert main(["keys", "create", "--name", name, "--scopes", "infer,batch", "--rate-limit", "600"]) == 0
    out = capsys.readouterr().out
    key = re.search(r"^key:\s+(kf_\S+)$", out, re.M).group(1)
    key_id = re.search(r"^id:\s+(\S+)$", out, re.M).group(1)

    services = Services(env)
    try:
        record = keys.authenticate(services, keys.hash_key(key))
        assert record["id"] == key_id and record["scopes"] == ["infer", "batch"]
        assert record["rate_limit_per_minute"] == 600

        assert main(["keys", "list"]) == 0
        listing = capsys.readouterr().out
        line = next(ln for ln in listing.splitlines() if key_id in ln)
        assert name in line and "infer,batch" in line and "600" in line and line.rstrip().endswith("-")
        assert key not in listing  # never the secret, only its prefix
        assert key[:10] in line

        assert main(["keys", "revoke", key_id]) == 0
        assert "revoked" in capsys.readouterr().out
        assert keys.authenticate(services, keys.hash_key(key)) is None
        assert main(["keys", "list"]) == 0
        line = next(ln for ln in capsys.readouterr().out.splitlines() if key_id in ln)
        assert not line.rstrip().endswith("-")  # a revocation time is shown
    finally:
        services.close()


@pytest.mark.parametrize("argv, message", [
    (["keys", "revoke", "not-a-uuid"], "no API key"),
    (["keys", "revoke", str(uuid.uuid4())], "no API key"),
    (["keys", "create", "--name", "x", "--scopes", "infer,root"], "unknown: root"),
])
def test_errors_exit_1_with_a_message(env: Settings, capsys: pytest.CaptureFixture[str],
                                      argv: list[str], message: str) -> None:
    assert main(argv) == 1
    assert message in capsys.readouterr().err
