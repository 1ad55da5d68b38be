"""API key store over the ``api_keys`` table (hash only): creation, lookup and revocation,
and the admin API over them (``/v1/keys``: the secret is answered once, on creation).

A key is ``kf_`` plus 32 random url-safe bytes. Only its SHA-256 digest is stored,
with a short prefix for display: keys are high-entropy random strings, so a fast
unsalted hash is enough (a slow password hash such as bcrypt protects guessable
secrets and would cost milliseconds on every cache miss for nothing).

Each key also has a callback signing secret (async inference callbacks, ``shared.batch.callbacks``): derived,
never stored. ``HMAC-SHA256(CALLBACK_SIGNING_SECRET, key id + callback_salt)``, where the salt is random per
key and drawn again by a rotation. A database dump alone (salts, hashes) cannot sign a callback, no
ciphertext or key-encryption scheme is needed, and the owner can be shown it again after a rotation.
Changing CALLBACK_SIGNING_SECRET changes every key's secret at once.

A key may expire (``expires_at``, set at creation from ``expires_at`` or ``expires_in``): its row
stays, listed with status ``expired``, and ``shared.access.auth`` answers it 401 ``key_expired``.

A key's limits are ``rate_limit_per_minute`` (requests; None: the platform's RATE_LIMIT_PER_MINUTE) and
``tokens_per_minute`` (prompt + completion tokens of the OpenAI-compatible routes, ``shared.access.tokens``;
None: no token limit), set at creation and changed by ``PATCH /v1/keys/{id}`` (audited ``key.update``); a
change reaches every instance within AUTH_CACHE_TTL_S.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict, cast

import sqlalchemy as sa

from shared import audit
from shared import validation as v
from shared.audit import Actor
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
MAX_TOKENS_PER_MINUTE = 100_000_000
NAME_RULE = "name must be 1-128 letters, digits, spaces or . _ : @ / -"
LAST_USED_EVERY_S = 60
MAX_EXPIRY = timedelta(days=3660)  # about ten years
DURATION = re.compile(r"([0-9]{1,7})([smhd]?)")
UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
EXPIRY_RULE = (
    "give expires_at as an ISO 8601 time (2027-01-31T00:00:00Z) or expires_in as a duration "
    "(30d, 12h, 45m, 3600s or seconds)"
)


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


def _validate(name: str, rate_limit: int | None, secret: str | None, tokens_per_minute: int | None = None) -> None:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidInput(NAME_RULE, field="name")
    _validate_limits(rate_limit, tokens_per_minute)
    if secret is not None and not (8 <= len(secret) <= MAX_KEY_LEN and KEY_CHARS.fullmatch(secret)):
        raise InvalidInput("a fixed key must be 8-256 url-safe characters", field="secret")


def _validate_limits(rate_limit: object, tokens_per_minute: object) -> None:
    """Each limit is None (the default: the platform's request limit, no token limit) or an integer in range."""
    for value, field, top in (
        (rate_limit, "rate_limit_per_minute", MAX_RATE_LIMIT),
        (tokens_per_minute, "tokens_per_minute", MAX_TOKENS_PER_MINUTE),
    ):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top):
            raise InvalidInput(f"{field} must be an integer from 1 to {top:,}, or null", field=field)


def parse_expiry(expires_at: object = None, expires_in: object = None, now: datetime | None = None) -> datetime | None:
    """When a new key expires: ``expires_at`` (ISO 8601; UTC when it names no zone) or ``expires_in``
    (a duration, see ``EXPIRY_RULE``), not both; in the future and at most ``MAX_EXPIRY`` ahead."""
    now = now or datetime.now(UTC)
    if expires_at is not None and expires_in is not None:
        raise InvalidInput("give expires_at or expires_in, not both", field="expires_in")
    if expires_in is not None:
        field = "expires_in"
        text = str(expires_in) if isinstance(expires_in, int) and not isinstance(expires_in, bool) else expires_in
        found = DURATION.fullmatch(text.strip().lower()) if isinstance(text, str) else None
        if found is None:
            raise InvalidInput(f"expires_in must be a duration; {EXPIRY_RULE}", field=field)
        if int(found.group(1)) == 0:
            raise InvalidInput(
                f"expires_in must be positive: at least 1s and at most {MAX_EXPIRY.days}d (30d, 12h, 45m, 3600s)",
                field=field,
            )
        when = now + timedelta(seconds=int(found.group(1)) * UNIT_S[found.group(2)])
    elif expires_at is not None:
        field = "expires_at"
        parsed = _iso_time(expires_at)
        if parsed is None:
            raise InvalidInput(f"expires_at must be an ISO 8601 time; {EXPIRY_RULE}", field=field)
        when = parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    else:
        return None
    if when <= now:
        raise InvalidInput(f"{field} must be in the future", field=field)
    if when - now > MAX_EXPIRY:
        raise InvalidInput(f"{field} may be at most {MAX_EXPIRY.days} days ahead", field=field)
    return when


def _iso_time(value: object) -> datetime | None:
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _record(row: Any) -> ApiKeyRecord:
    rec = dict(row._mapping)
    rec.pop("key_hash", None)
    rec["id"] = str(rec["id"])
    return cast(ApiKeyRecord, rec)


_PRIVATE_COLUMNS = frozenset({"key_hash", "callback_salt", "callback_secret_rotated_at"})


def _public_columns() -> list[sa.Column[Any]]:
    return [c for c in api_keys.c if c.name not in _PRIVATE_COLUMNS]


def _touch_due(last_used: datetime | None) -> bool:
    return last_used is None or (datetime.now(UTC) - last_used).total_seconds() >= LAST_USED_EVERY_S


def _filtered(query: Any, status: str | None) -> Any:
    live = sa.or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > sa.func.now())
    if status == "active":
        return query.where(api_keys.c.revoked_at.is_(None), live)
    if status == "expired":
        return query.where(api_keys.c.revoked_at.is_(None), sa.not_(live))
    if status == "revoked":
        return query.where(api_keys.c.revoked_at.is_not(None))
    return query


def _target(key_id: str) -> str:
    return audit.target("key", key_id)


def _key_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(raw))
    except ValueError:
        raise NotFound(f"no API key with id {str(raw)[:64]!r}") from None


# -- the admin API (/v1/keys) ----------------------------------------------------
CREATE_FIELDS = ("name", "scopes", "rate_limit_per_minute", "tokens_per_minute", "expires_at", "expires_in")
UPDATE_FIELDS = ("rate_limit_per_minute", "tokens_per_minute")
LIST_QUERY = ("status", "limit", "offset")
KEY_STATUSES = ("active", "expired", "revoked")


class CreatedKey(ApiKey):
    """``POST /v1/keys``: the new key, with its secret (the only time it is shown), and its callback signing
    secret when callbacks are on (CALLBACK_SIGNING_SECRET set)."""

    key: str
    callback_secret: NotRequired[str]


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
        "status": _status(record),
        "scopes": list(record["scopes"]),
        "rate_limit_per_minute": record["rate_limit_per_minute"],
        "tokens_per_minute": record.get("tokens_per_minute"),
        "created_at": record["created_at"],
        "last_used_at": record.get("last_used_at"),
        "revoked_at": record.get("revoked_at"),
        "expires_at": record.get("expires_at"),
    }


def _status(record: ApiKeyRecord) -> str:
    if record.get("revoked_at"):
        return "revoked"
    expiry = record.get("expires_at")
    return "expired" if expiry is not None and expiry <= datetime.now(UTC) else "active"


class KeyStore:
    """The ``api_keys`` table: creating, finding, listing and revoking keys, and the admin API's pages."""

    def __init__(self, db: Database, callback_master: str = "") -> None:
        self.db = db
        self.callback_master = callback_master  # CALLBACK_SIGNING_SECRET: callback secrets derive from it

    def create_key(
        self,
        name: str,
        scopes: str | Iterable[str],
        rate_limit: int | None = None,
        secret: str | None = None,
        expires_at: datetime | None = None,
        actor: Actor | None = None,
        tokens_per_minute: int | None = None,
    ) -> tuple[ApiKeyRecord, str]:
        """Store a new key; returns (record, plaintext). The plaintext is shown once and never stored.
        Audited as ``key.create`` (its public form: scopes, limits, expiry; never the secret)."""
        scope_list = parse_scopes(scopes)
        _validate(name, rate_limit, secret, tokens_per_minute)
        plaintext = secret or new_secret()
        values = {
            "id": uuid.uuid4(),
            "name": name,
            "key_hash": hash_key(plaintext),
            "prefix": display_prefix(plaintext),
            "scopes": scope_list,
            "rate_limit_per_minute": rate_limit,
            "tokens_per_minute": tokens_per_minute,
            "expires_at": expires_at,
            "callback_salt": new_callback_salt(),
        }
        with conflict_on("a key with this secret already exists", field="secret"), self.db.begin() as conn:
            row = conn.execute(api_keys.insert().values(**values).returning(*_public_columns())).one()
            created = _record(row)
            audit.append(
                conn,
                actor=actor,
                action="key.create",
                target=_target(created["id"]),
                before=None,
                after=to_json(created),
            )
        log.info("api key created: id=%s name=%s scopes=%s", values["id"], name, ",".join(scope_list))
        return created, plaintext

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
        """Keys, oldest first; ``status`` "active", "expired" or "revoked" filters."""
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

    def revoke_key(self, key_id: str, actor: Actor | None = None) -> ApiKeyRecord:
        """Mark a key revoked (idempotent: revoking twice keeps the first time, and audits nothing); NotFound if
        unknown. Audited as ``key.revoke``."""
        kid = _key_id(key_id)
        stmt = (
            api_keys.update()
            .where(api_keys.c.id == kid)
            .values(revoked_at=sa.func.coalesce(api_keys.c.revoked_at, sa.func.now()))
            .returning(*_public_columns())
        )
        with self.db.begin() as conn:
            was = conn.execute(sa.select(*_public_columns()).where(api_keys.c.id == kid).with_for_update()).first()
            if was is None:
                raise NotFound(f"no API key with id {key_id}")
            record = _record(conn.execute(stmt).one())
            if was.revoked_at is None:
                before = to_json(_record(was))
                audit.append(
                    conn,
                    actor=actor,
                    action="key.revoke",
                    target=_target(str(kid)),
                    before=before,
                    after=to_json(record),
                )
        log.info("api key revoked: id=%s", kid)
        return record

    def update_limits(self, key_id: str, changes: Mapping[str, int | None], actor: Actor | None = None) -> ApiKeyRecord:
        """Set a key's ``rate_limit_per_minute`` and/or ``tokens_per_minute`` (None: back to the default), revoked
        and expired keys included; NotFound if unknown. Audited as ``key.update`` (before and after) when
        something changed. Every instance applies it within AUTH_CACHE_TTL_S (its cached principal)."""
        unknown = [name for name in changes if name not in UPDATE_FIELDS]
        if unknown or not changes:
            raise InvalidInput(f"give {' and/or '.join(UPDATE_FIELDS)} to change", field=(unknown or ["body"])[0])
        _validate_limits(changes.get("rate_limit_per_minute"), changes.get("tokens_per_minute"))
        kid = _key_id(key_id)
        with self.db.begin() as conn:
            was = conn.execute(sa.select(*_public_columns()).where(api_keys.c.id == kid).with_for_update()).first()
            if was is None:
                raise NotFound(f"no API key with id {kid}")
            before = _record(was)
            if all(before.get(name) == value for name, value in changes.items()):
                return before
            stmt = api_keys.update().where(api_keys.c.id == kid).values(**changes).returning(*_public_columns())
            record = _record(conn.execute(stmt).one())
            audit.append(
                conn,
                actor=actor,
                action="key.update",
                target=_target(str(kid)),
                before=to_json(before),
                after=to_json(record),
            )
        log.info("api key limits changed: id=%s %s", kid, ", ".join(f"{k}={v}" for k, v in changes.items()))
        return record

    def update_from_body(self, key_id: str, body: object, actor: Actor | None = None) -> ApiKey:
        """PATCH /v1/keys/{id}: ``{"rate_limit_per_minute": int|null, "tokens_per_minute": int|null}`` (either)."""
        fields = v.require_object(body)
        v.reject_unknown(fields, UPDATE_FIELDS)
        changes = {name: fields[name] for name in UPDATE_FIELDS if name in fields}
        _validate_limits(changes.get("rate_limit_per_minute"), changes.get("tokens_per_minute"))
        return to_json(self.update_limits(key_id, cast(dict[str, int | None], changes), actor))

    def callback_secret_of(self, key_id: str) -> str | None:
        """The callback signing secret of key ``key_id`` (revoked or expired included: its requests may still
        call back); None when callbacks are off or no such key."""
        if not self.callback_master:
            return None
        try:
            kid = uuid.UUID(str(key_id))
        except ValueError:
            return None
        with self.db.begin() as conn:
            salt = conn.execute(sa.select(api_keys.c.callback_salt).where(api_keys.c.id == kid)).scalar()
        return derive_callback_secret(self.callback_master, str(kid), salt) if salt is not None else None

    def rotate_callback_secret(self, key_id: str, actor: Actor | None = None) -> CallbackSecret:
        """Draw a new salt for key ``key_id``: its callbacks are signed with the new secret from now on (the old
        one stops verifying at once). NotFound for an unknown key; 409 ``callbacks_off`` when callbacks are off."""
        if not self.callback_master:
            raise _callbacks_off()
        kid = _key_id(key_id)
        salt = new_callback_salt()
        stmt = (
            api_keys.update()
            .where(api_keys.c.id == kid)
            .values(callback_salt=salt, callback_secret_rotated_at=sa.func.now())
            .returning(api_keys.c.callback_secret_rotated_at)
        )
        with self.db.begin() as conn:
            was = conn.execute(
                sa.select(api_keys.c.callback_secret_rotated_at).where(api_keys.c.id == kid).with_for_update()
            ).first()
            if was is None:
                raise NotFound(f"no API key with id {kid}")
            rotated = conn.execute(stmt).scalar_one()
            audit.append(
                conn,
                actor=actor,
                action="key.rotate_callback_secret",
                target=_target(str(kid)),
                before={"callback_secret_rotated_at": was.callback_secret_rotated_at},
                after={"callback_secret_rotated_at": rotated},
            )
        log.info("api key callback secret rotated: id=%s", kid)
        return {
            "id": str(kid),
            "callback_secret": derive_callback_secret(self.callback_master, str(kid), salt),
            "rotated_at": rotated,
        }

    def create_from_body(self, body: object, actor: Actor | None = None) -> CreatedKey:
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
        tokens = fields.get("tokens_per_minute")
        _validate_limits(None, tokens)
        name = fields["name"]
        if not isinstance(name, str):  # as ``create_key`` would answer: a bad scope first, then the name
            parse_scopes(scopes)
            raise InvalidInput(NAME_RULE, field="name")
        expires_at = parse_expiry(fields.get("expires_at"), fields.get("expires_in"))
        record, plaintext = self.create_key(
            name,
            scopes,
            rate_limit=rate,
            expires_at=expires_at,
            actor=actor,
            tokens_per_minute=cast(int | None, tokens),
        )
        created = cast(CreatedKey, {**to_json(record), "key": plaintext})
        secret = self.callback_secret_of(record["id"])
        if secret is not None:
            created["callback_secret"] = secret
        return created

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


# -- callback signing secrets (``shared.batch.callbacks`` signs a key's callbacks with its own) ----------
CALLBACK_SECRET_PREFIX = "kcs_"
_CALLBACK_CONTEXT = b"kinfer callback secret v1\0"


def new_callback_salt() -> str:
    return secrets.token_hex(32)


def derive_callback_secret(master: str, key_id: str, salt: str) -> str:
    """A key's callback signing secret: HMAC-SHA256 under CALLBACK_SIGNING_SECRET of the key's id and its stored
    random salt. Only the salt is in the database, so reading it signs nothing; a rotation draws a new salt."""
    message = _CALLBACK_CONTEXT + key_id.encode() + b"\0" + salt.encode()
    mac = hmac.new(master.encode(), message, hashlib.sha256).digest()
    return CALLBACK_SECRET_PREFIX + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


class CallbackSecret(TypedDict):
    """``POST /v1/keys/{id}/callback-secret``: the key's new callback signing secret (shown this once)."""

    id: str
    callback_secret: str
    rotated_at: datetime


def _callbacks_off() -> Conflict:
    return Conflict(
        "callbacks are off on this installation: CALLBACK_SIGNING_SECRET is not set (an operator sets it), so "
        "keys have no callback signing secret",
        code="callbacks_off",
    )
