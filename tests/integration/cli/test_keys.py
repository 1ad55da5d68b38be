"""``kinfer keys`` over the admin API (a real keys function on real PostgreSQL and Redis), and
``kinfer keys bootstrap``, the one database-direct path (the first admin key only)."""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from shared.access import keys
from shared.cli import main
from shared.services import Services, reset_services
from shared.settings import Settings
from tests.integration.servers import InProcessServer

pytestmark = pytest.mark.integration


@pytest.fixture
def api(base_settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The keys function on a free port; KINFER_URL / KINFER_API_KEY point the CLI at it with an admin key."""
    services: Services = reset_services(dataclasses.replace(base_settings, auth_required=True, auth_cache_ttl_s=0))
    _, admin = services.keys.create_key(f"cli-admin-{uuid.uuid4().hex[:6]}", "admin")
    server = InProcessServer("keys", "manage_api_keys")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("KINFER_URL", server.url.rstrip("/"))
    monkeypatch.setenv("KINFER_API_KEY", admin)
    yield {"services": services, "url": server.url.rstrip("/"), "admin": admin}
    server.stop()
    reset_services(None)


def test_create_list_show_revoke_round_trip(api: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    assert main(["keys", "create", "--name", name, "--scopes", "infer,batch", "--rate-limit", "600"]) == 0
    out, err = capsys.readouterr()
    key = re.search(r"^key:\s+(kf_\S+)$", out, re.M).group(1)
    key_id = re.search(r"^id:\s+(\S+)$", out, re.M).group(1)
    assert "not shown again" in err
    record = api["services"].keys.authenticate(keys.hash_key(key))
    assert record["id"] == key_id and record["scopes"] == ["infer", "batch"] and record["rate_limit_per_minute"] == 600

    assert main(["keys", "list", "--limit", "1000"]) == 0
    listing = capsys.readouterr().out
    line = next(ln for ln in listing.splitlines() if key_id in ln)
    assert name in line and "infer,batch" in line and "600" in line and "active" in line
    assert key not in listing and key[:10] in line  # never the secret, only its prefix
    assert listing.splitlines()[0].split()[:4] == ["ID", "NAME", "PREFIX", "STATUS"]

    assert main(["keys", "show", key_id, "-o", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["id"] == key_id and "key" not in shown

    assert main(["keys", "revoke", key_id]) == 0
    assert f"revoked {key_id} ({name})" in capsys.readouterr().out
    assert api["services"].keys.authenticate(keys.hash_key(key)) is None
    assert main(["keys", "list", "--status", "revoked", "--limit", "1000", "-o", "yaml"]) == 0
    revoked = yaml.safe_load(capsys.readouterr().out)
    assert key_id in {k["id"] for k in revoked["keys"]} and revoked["total_count"] >= 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["keys", "revoke", "not-a-uuid"], "error: not_found: no API key"),
        (["keys", "revoke", str(uuid.uuid4())], "error: not_found: no API key"),
        (["keys", "create", "--name", "x", "--scopes", "infer,root"], "error: invalid_input: scopes must be"),
    ],
)
def test_api_errors_exit_1_with_one_line(
    api: dict[str, Any], capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(argv) == 1
    # the CLI's own lines (the in-process API logs to the same stderr): one, the error, and no hint
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error: ", "hint: "))]
    assert len(err) == 1 and err[0].startswith(message) and "HTTP 4" in err[0] and "request id" in err[0]


def test_a_key_without_the_admin_scope_is_told_so(
    api: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, batch_key = api["services"].keys.create_key(f"cli-b-{uuid.uuid4().hex[:6]}", "batch")
    assert main(["keys", "list", "--key", batch_key]) == 1  # the flag wins over KINFER_API_KEY
    err = capsys.readouterr().err
    assert "error: forbidden: this API key lacks the 'admin' scope" in err and "HTTP 403" in err


@pytest.fixture
def empty_db(base_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
    """The bootstrap path against a database without any active admin key (a private copy of the schema)."""
    from shared.clients import db

    url = sa.make_url(base_settings.database_url).set(database=f"kinfer_boot_{uuid.uuid4().hex[:8]}")
    settings = dataclasses.replace(base_settings, database_url=url.render_as_string(hide_password=False))
    db.ensure_database(settings)
    db.upgrade(settings)
    monkeypatch.setenv("DATABASE_URL", settings.database_url.replace("postgresql+pg8000://", "postgresql://"))
    monkeypatch.setenv("REDIS_URL", base_settings.redis_url)
    services = Services(settings)
    yield services
    services.close()
    admin = sa.create_engine(
        sa.make_url(base_settings.database_url).set(database="postgres"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
    admin.dispose()


def test_bootstrap_creates_the_first_admin_key_and_only_the_first(
    empty_db: Services, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "bootstrap", "--name", "first-admin"]) == 0
    key = re.search(r"^key:\s+(kf_\S+)$", capsys.readouterr().out, re.M).group(1)
    assert empty_db.keys.authenticate(keys.hash_key(key))["scopes"] == ["admin"]
    assert main(["keys", "bootstrap", "--name", "second-admin"]) == 2
    err = capsys.readouterr().err
    assert "an active admin key exists already (first-admin" in err and "kinfer keys create" in err
