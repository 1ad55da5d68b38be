"""Key expiry without services: parsing ``expires_in``/``expires_at``, and an expired key refused from
the auth cache the moment its time passes (the cached principal carries the expiry)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from shared.access import auth, keys
from shared.access.auth import Authenticator, KeyCache
from shared.access.ratelimit import Decision
from shared.errors import InvalidInput, Unauthorized
from shared.settings import Settings

NOW = datetime(2027, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "expires_in, after",
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("45m", timedelta(minutes=45)),
        ("3600s", timedelta(hours=1)),
        ("90", timedelta(seconds=90)),
        (120, timedelta(minutes=2)),
    ],
)
def test_expires_in_is_a_duration(expires_in: object, after: timedelta) -> None:
    assert keys.parse_expiry(expires_in=expires_in, now=NOW) == NOW + after


def test_expires_at_is_iso_8601_and_utc_without_a_zone() -> None:
    assert keys.parse_expiry(expires_at="2027-02-01T00:00:00Z", now=NOW) == datetime(2027, 2, 1, tzinfo=UTC)
    assert keys.parse_expiry(expires_at="2027-02-01T00:00:00", now=NOW) == datetime(2027, 2, 1, tzinfo=UTC)
    assert keys.parse_expiry(now=NOW) is None


@pytest.mark.parametrize(
    "given, field",
    [
        ({"expires_in": "1w"}, "expires_in"),
        ({"expires_in": "-5d"}, "expires_in"),
        ({"expires_in": True}, "expires_in"),
        ({"expires_in": "0"}, "expires_in"),
        ({"expires_in": "4000d"}, "expires_in"),
        ({"expires_at": "2026-12-31T23:59:59Z"}, "expires_at"),
        ({"expires_at": "next year"}, "expires_at"),
        ({"expires_at": 1893456000}, "expires_at"),
        ({"expires_at": "2027-02-01T00:00:00Z", "expires_in": "1d"}, "expires_in"),
    ],
)
def test_bad_expiries_are_400_naming_the_field(given: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        keys.parse_expiry(**given, now=NOW)
    assert err.value.field == field


@pytest.mark.parametrize("zero", ["0s", "0", 0, "0d", "00m"])
def test_a_zero_duration_is_said_to_need_a_positive_one_within_the_bounds(zero: object) -> None:
    with pytest.raises(InvalidInput) as err:
        keys.parse_expiry(expires_in=zero, now=NOW)
    assert err.value.field == "expires_in"
    assert err.value.message.startswith("expires_in must be positive: at least 1s and at most 3660d")


def test_status_of_a_key_says_expired_once_its_time_passed() -> None:
    base = {
        "id": "k",
        "name": "n",
        "prefix": "kf_",
        "scopes": ["infer"],
        "rate_limit_per_minute": None,
        "created_at": NOW,
        "last_used_at": None,
        "revoked_at": None,
    }
    past, future = datetime.now(UTC) - timedelta(seconds=1), datetime.now(UTC) + timedelta(days=1)
    assert keys.to_json({**base, "expires_at": past})["status"] == "expired"
    assert keys.to_json({**base, "expires_at": future})["status"] == "active"
    assert keys.to_json({**base, "expires_at": past, "revoked_at": past})["status"] == "revoked"


class _Limiter:
    async def acquire(self, identifier: str, per_minute: int) -> Decision:
        return Decision(True, per_minute, per_minute - 1, 0.0)


def test_a_cached_key_is_refused_with_key_expired_once_its_time_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    expires = datetime.now(UTC) + timedelta(hours=1)
    record = {"id": "k1", "name": "n", "scopes": ["infer"], "rate_limit_per_minute": None, "expires_at": expires}
    lookups: list[str] = []

    def authenticate(digest: str) -> dict[str, Any]:
        lookups.append(digest)
        return record

    settings = Settings.from_env(environ={}, auth_cache_ttl_s=300)
    authn = Authenticator(SimpleNamespace(authenticate=authenticate), KeyCache(300), _Limiter(), settings)
    call = SimpleNamespace(header_map={"X-API-Key": "good-key-1"}, response_headers={}, principal=None)
    assert asyncio.run(authn.authorize(call, "infer")).expires_at == expires.timestamp()
    later = expires.timestamp() + 1
    monkeypatch.setattr(auth.time, "time", lambda: later)
    with pytest.raises(Unauthorized) as err:
        asyncio.run(authn.authorize(call, "infer"))
    assert err.value.code == "key_expired" and "expired at" in err.value.message
    assert len(lookups) == 1  # answered from the cache: no database read made it so
    assert call.principal.key_id == "k1"  # counted and logged against the key
