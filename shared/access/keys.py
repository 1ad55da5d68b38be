"""API key store over the ``api_keys`` table (hash only): creation, lookup and revocation,
and the admin API over them (``/v1/keys``: the secret is answered once, on creation).

A key is ``kf_`` plus 32 random url-safe bytes. Only its SHA-256 digest is stored,
with a short prefix for display: keys are high-entropy random strings, so a fast
unsalted hash is enough (a slow password hash such as bcrypt protects guessable
secrets and would cost milliseconds on every cache miss for nothing).
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypedDict, cast

import sqlalchemy as sa

from shared import validation as v
from shared.clients.db import conflict_on
from shared.clients.schema import api_keys
from shared.domain import ApiKey, ApiKeyRecord
from shared.errors import Conflict, InvalidInput, NotFound

if TYPE_CHECKING:
    from shared.clients.db import Database

log = logging.getLogger(__name__)

SCOPES = ("infer", "batch", "admin")
KEY_PREFIX = "kf_"
MAX_KEY_LEN = 256
KEY_CHARS = re.compile(r"[A-Za-z0-9._~+/=-]+")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._:@/-]{0,127}")
MAX_RATE_LIMIT = 10_000_000
NAME_RULE = "name must be 1-128 letters, digits, spaces or . _ : @ / -"
LAST_USED_EVERY_S = 60


def hash_key(plaintext: str) -> str:
    """The SHA-256 hex digest stored for a key (see the module docstring for why SHA-256)."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def display_prefix(plaintext: str) -> str:
    """Enough of the key to recognise it in a list, never enough to guess it."""
    return plaintext[:10] if plaintext.startswith(KEY_PREFIX) else plaintext[:4]


def parse_scopes(raw: str | Iterable[str]) -> list[str]:
    """Validate scopes given as "infer,batch" or a list; at least one, each known."""
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    scopes = list(dict.fromkeys(s.strip().lower() for s in items if str(s).strip()))
    unknown = [s for s in scopes if s not in SCOPES]
    if not scopes or unknown:
        raise InvalidInput(
            f"scopes must be a non-empty subset of {', '.join(SCOPES)}"
            + (f"; unknown: {', '.join(unknown)}" if unknown else ""),
            field="scopes",
        )
    return scopes


def _validate(name: str, rate_limit: int | None, secret: str | None) -> None:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidInput(NAME_RULE, field="name")
    if rate_limit is not None and not (isinstance(rate_limit, int) and 1 <= rate_limit <= MAX_RATE_LIMIT):
        raise InvalidInput(
            f"rate_limit_per_minute must be an integer from 1 to {MAX_RATE_LIMIT}", field="rate_limit_per_minute"
        )
    if secret is not None and not (8 <= len(secret) <= MAX_KEY_LEN and KEY_CHARS.fullmatch(secret)):
        raise InvalidInput("a fixed key must be 8-256 url-safe characters", field="secret")


def _record(row: Any) -> ApiKeyRecord:
    rec = dict(row._mapping)
    rec.pop("key_hash", None)
    rec["id"] = str(rec["id"])
    return cast(ApiKeyRecord, rec)


def _public_columns() -> list[sa.Column[Any]]:
    return [c for c in api_keys.c if c.name != "key_hash"]


def _touch_due(last_used: datetime | None) -> bool:
    return last_used is None or (datetime.now(UTC) - last_used).total_seconds() >= LAST_USED_EVERY_S


def _filtered(query: Any, status: str | None) -> Any:
    if status == "active":
        return query.where(api_keys.c.revoked_at.is_(None))
    if status == "revoked":
        return query.where(api_keys.c.revoked_at.is_not(None))
    return query


def _key_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(raw))
    except ValueError:
        raise NotFound(f"no API key with id {str(raw)[:64]!r}") from None


# -- the admin API (/v1/keys) ----------------------------------------------------
CREATE_FIELDS = ("name", "scopes", "rate_limit_per_minute")
LIST_QUERY = ("status", "limit", "offset")
KEY_STATUSES = ("active", "revoked")


class CreatedKey(ApiKey):
    """``POST /v1/keys``: the new key, with its secret (the only time it is shown)."""

    key: str


class KeyPage(TypedDict):
    """``GET /v1/keys``: a page of keys (``total`` = ``total_count``)."""

    keys: list[ApiKey]
    total_count: int
    total: int
    limit: int
    offset: int


def to_json(record: ApiKeyRecord) -> ApiKey:
    """The public form of a key: never its secret or hash, only the display prefix."""
    return {
        "id": record["id"],
        "name": record["name"],
        "prefix": record["prefix"],
        "status": "revoked" if record.get("revoked_at") else "active",
        "scopes": list(record["scopes"]),
        "rate_limit_per_minute": record["rate_limit_per_minute"],
        "created_at": record["created_at"],
        "last_used_at": record.get("last_used_at"),
        "revoked_at": record.get("revoked_at"),
    }


class KeyStore:
    """The ``api_keys`` table: creating, finding, listing and revoking keys, and the admin API's pages."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create_key(
        self, name: str, scopes: str | Iterable[str], rate_limit: int | None = None, secret: str | None = None
    ) -> tuple[ApiKeyRecord, str]:
        """Store a new key; returns (record, plaintext). The plaintext is shown once and never stored."""
        scope_list = parse_scopes(scopes)
        _validate(name, rate_limit, secret)
        plaintext = secret or new_secret()
        values = {
            "id": uuid.uuid4(),
            "name": name,
            "key_hash": hash_key(plaintext),
            "prefix": display_prefix(plaintext),
            "scopes": scope_list,
            "rate_limit_per_minute": rate_limit,
        }
        with conflict_on("a key with this secret already exists", field="secret"), self.db.begin() as conn:
            row = conn.execute(api_keys.insert().values(**values).returning(*_public_columns())).one()
        log.info("api key created: id=%s name=%s scopes=%s", values["id"], name, ",".join(scope_list))
        return _record(row), plaintext

    def ensure_key(self, name: str, secret: str, scopes: str | Iterable[str]) -> ApiKeyRecord | None:
        """Create the fixed key ``secret`` unless it exists (idempotent; a revoked key stays revoked)."""
        found = self.find_by_hash(hash_key(secret), include_revoked=True)
        if found is not None:
            return found
        try:
            return self.create_key(name, scopes, secret=secret)[0]
        except Conflict:  # another process seeded it first
            return self.find_by_hash(hash_key(secret), include_revoked=True)

    def find_by_hash(self, key_hash: str, include_revoked: bool = False) -> ApiKeyRecord | None:
        """The key record for a digest (active only unless ``include_revoked``)."""
        query = sa.select(*_public_columns()).where(api_keys.c.key_hash == key_hash)
        if not include_revoked:
            query = query.where(api_keys.c.revoked_at.is_(None))
        with self.db.begin() as conn:
            row = conn.execute(query).first()
        return _record(row) if row is not None else None

    def authenticate(self, key_hash: str) -> ApiKeyRecord | None:
        """Look up an active key; touch ``last_used_at`` only when it is a minute old (not every request)."""
        query = sa.select(*_public_columns()).where(api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None))
        with self.db.begin() as conn:
            row = conn.execute(query).first()
            if row is not None and _touch_due(row.last_used_at):
                conn.execute(api_keys.update().where(api_keys.c.id == row.id).values(last_used_at=sa.func.now()))
        return _record(row) if row is not None else None

    def list_keys(self, *, status: str | None = None, limit: int | None = None, offset: int = 0) -> list[ApiKeyRecord]:
        """Keys, oldest first; ``status`` "active" or "revoked" filters."""
        query = _filtered(sa.select(*_public_columns()), status).order_by(api_keys.c.created_at, api_keys.c.id)
        with self.db.begin() as conn:
            return [_record(r) for r in conn.execute(query.limit(limit).offset(offset))]

    def get_key(self, key_id: str) -> ApiKeyRecord:
        kid = _key_id(key_id)
        with self.db.begin() as conn:
            row = conn.execute(sa.select(*_public_columns()).where(api_keys.c.id == kid)).first()
        if row is None:
            raise NotFound(f"no API key with id {kid}")
        return _record(row)

    def revoke_key(self, key_id: str) -> ApiKeyRecord:
        """Mark a key revoked (idempotent: revoking twice keeps the first time); NotFound if unknown."""
        kid = _key_id(key_id)
        stmt = (
            api_keys.update()
            .where(api_keys.c.id == kid)
            .values(revoked_at=sa.func.coalesce(api_keys.c.revoked_at, sa.func.now()))
            .returning(*_public_columns())
        )
        with self.db.begin() as conn:
            row = conn.execute(stmt).first()
        if row is None:
            raise NotFound(f"no API key with id {key_id}")
        log.info("api key revoked: id=%s", kid)
        return _record(row)

    def create_from_body(self, body: object) -> CreatedKey:
        """POST /v1/keys: the new key with its secret in ``key`` (the only time it is shown)."""
        fields = v.require_object(body)
        v.reject_unknown(fields, CREATE_FIELDS)
        if "name" not in fields or "scopes" not in fields:
            missing = "name" if "name" not in fields else "scopes"
            raise InvalidInput(f"{missing} is required", field=missing)
        scopes = fields["scopes"]
        if not (isinstance(scopes, str) or (isinstance(scopes, list) and all(isinstance(s, str) for s in scopes))):
            raise InvalidInput('scopes must be a list like ["infer", "batch"]', field="scopes")
        rate = fields.get("rate_limit_per_minute")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int)):
            raise InvalidInput("rate_limit_per_minute must be an integer or null", field="rate_limit_per_minute")
        name = fields["name"]
        if not isinstance(name, str):  # as ``create_key`` would answer: a bad scope first, then the name
            parse_scopes(scopes)
            raise InvalidInput(NAME_RULE, field="name")
        record, plaintext = self.create_key(name, scopes, rate_limit=rate)
        return {**to_json(record), "key": plaintext}

    def list_page(self, args: Mapping[str, str]) -> KeyPage:
        """GET /v1/keys: ``{"keys", "total_count", "total", "limit", "offset"}`` (``total`` = ``total_count``)."""
        limit = v.integer(args.get("limit"), "limit", default=100, lo=1, hi=1000)
        offset = v.integer(args.get("offset"), "offset", default=0, lo=0, hi=10_000_000)
        status = v.choice(args["status"], "status", KEY_STATUSES) if args.get("status") else None
        with self.db.begin() as conn:
            total = conn.execute(_filtered(sa.select(sa.func.count()).select_from(api_keys), status)).scalar_one()
        page = self.list_keys(status=status, limit=limit, offset=offset)
        return {
            "keys": [to_json(r) for r in page],
            "total_count": total,
            "total": total,
            "limit": limit,
            "offset": offset,
        }
