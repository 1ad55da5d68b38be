"""The model registry: validated CRUD over the ``models`` table with a Redis read-through cache.

Reads by id, by name/version and the resolution of a name (a version, an alias or the
default) go through the cache; every write bumps the registry generation and drops the
affected keys before and after its commit (a write that cannot reach Redis is refused with
503 and rolled back), and fills are refused when the generation moved while the reader was
at the database, so no read after a write is stale. Every write also announces the model's
name on ``EVENTS_CHANNEL`` (the model agents reconcile on it at once instead of at their
next poll).

Resolution reads one cached *view* per name (its rows and aliases): ``version`` may be a
registry version or an alias; none means alias ``production`` if it exists, else the newest
active version that is ready. An alias may split traffic between versions by weight; the
pick is a hash of the caller's route key, so a caller keeps its version.
"""

from __future__ import annotations

import difflib
import hashlib
import random
import re
import uuid
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from shared import validation as v
from shared.clients.db import conflict_on
from shared.clients.schema import model_aliases, models
from shared.endpoints import backend_id
from shared.endpoints import resolve as resolve_backend
from shared.errors import Conflict, InvalidInput, NotFound, Unavailable

if TYPE_CHECKING:
    from shared.services import Services

FRAMEWORKS = ("pytorch", "tensorflow", "onnx", "scikit-learn", "xgboost", "tensorrt", "python")
FORMATS = ("onnx", "torchscript", "savedmodel", "plan", "pickle", "python")
STATUSES = ("active", "inactive", "deprecated")
STATES = ("awaiting_upload", "pending", "loading", "ready", "failed")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
VERSION = re.compile(r"\d{1,9}(?:\.\d{1,9}){0,2}")
ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")  # starts with a letter: never mistaken for a version
TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/=-]{0,63}")
BACKEND_URL = re.compile(r"(?:(?:grpc|http|https)://)?[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})(?::\d{1,5})?/?")
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
MAX_TAGS, MAX_BACKENDS, MAX_METADATA_BYTES, MAX_DESCRIPTION = 32, 16, 16384, 4096
DEFAULT_ALIAS = "production"

CREATE_FIELDS = (
    "name",
    "version",
    "framework",
    "format",
    "backend_url",
    "backend_urls",
    "triton_model",
    "triton_version",
    "description",
    "tags",
    "metadata",
    "status",
)
UPDATE_FIELDS = ("description", "status", "tags", "metadata", "backend_url", "backend_urls", "triton_model")
READ_ONLY = (
    "id",
    "created_at",
    "updated_at",
    "state",
    "state_reason",
    "repository_uri",
    "artifact_format",
    "artifact_sha256",
    "artifact_bytes",
)
GEN_KEY = "kinfer:reg:gen"
NAMES_KEY = "kinfer:reg:names"
EVENTS_CHANNEL = "kinfer:reg:events"
SERVABLE = "ready"


# -- validation ---------------------------------------------------------------
def _backend_urls(body: dict[str, Any]) -> list[str] | None:
    if "backend_url" in body and "backend_urls" in body:
        raise InvalidInput("give backend_url or backend_urls, not both", field="backend_urls")
    if "backend_url" in body:
        raw = body["backend_url"]
        return (
            []
            if raw is None
            else [
                v.string(
                    raw,
                    "backend_url",
                    max_len=256,
                    pattern=BACKEND_URL,
                    hint="expected host:port, grpc://host:port or http://host:port",
                )
            ]
        )
    if "backend_urls" in body:
        raw = body["backend_urls"]
        if not isinstance(raw, list) or len(raw) > MAX_BACKENDS:
            raise InvalidInput(f"backend_urls must be a list of at most {MAX_BACKENDS} URLs", field="backend_urls")
        urls = [
            v.string(
                u,
                "backend_urls",
                max_len=256,
                pattern=BACKEND_URL,
                hint="expected host:port, grpc://host:port or http://host:port",
            )
            for u in raw
        ]
        if len(set(urls)) != len(urls):
            raise InvalidInput("backend_urls has duplicates", field="backend_urls")
        return urls
    return None


def _tags(raw: Any) -> list[str]:
    if not isinstance(raw, list) or len(raw) > MAX_TAGS:
        raise InvalidInput(f"tags must be a list of at most {MAX_TAGS} strings", field="tags")
    tags = [v.string(t, "tags", max_len=64, pattern=TAG, hint="letters, digits and . _ : / = -") for t in raw]
    return list(dict.fromkeys(tags))


def _mutable_fields(body: dict[str, Any]) -> dict[str, Any]:
    """Validate the fields both create and update accept; return the column values given."""
    out: dict[str, Any] = {}
    if "description" in body:
        out["description"] = v.string(body["description"], "description", max_len=MAX_DESCRIPTION, allow_empty=True)
    if "status" in body:
        out["status"] = v.choice(body["status"], "status", STATUSES)
    if "tags" in body:
        out["tags"] = _tags(body["tags"])
    if "metadata" in body:
        out["metadata"] = v.json_object(body["metadata"], "metadata", max_bytes=MAX_METADATA_BYTES)
    if "triton_model" in body:
        out["triton_model"] = v.string(body["triton_model"], "triton_model", max_len=128, pattern=NAME)
    urls = _backend_urls(body)
    if urls is not None:
        out["backend_urls"] = urls
    return out


def validate_create(body: Any, extra_fields: tuple[str, ...] = ()) -> dict[str, Any]:
    """The column values of a new row (``extra_fields``: body fields a caller above handles itself)."""
    body = v.require_object(body)
    v.reject_unknown(body, CREATE_FIELDS + extra_fields, READ_ONLY)
    for required in ("name", "version", "framework", "format"):
        if body.get(required) in (None, ""):
            raise InvalidInput(f"{required} is required", field=required)
    row: dict[str, Any] = {
        "name": v.string(
            body["name"],
            "name",
            max_len=128,
            pattern=NAME,
            hint="start with a letter or digit; then letters, digits, '.', '_' or '-'",
        ),
        "version": v.string(body["version"], "version", max_len=32, pattern=VERSION, hint="expected 1, 1.0 or 1.0.0"),
        "framework": v.choice(body["framework"], "framework", FRAMEWORKS),
        "format": v.choice(body["format"], "format", FORMATS),
    }
    row.update(_mutable_fields(body))
    if body.get("triton_version") is not None:
        raw = body["triton_version"]
        if not isinstance(raw, int) or isinstance(raw, bool) or not 1 <= raw <= 2**31 - 1:
            raise InvalidInput(
                "triton_version must be a positive integer (the Triton version this registry version maps to)",
                field="triton_version",
            )
        row["triton_version"] = raw
    row.setdefault("triton_model", row["name"])
    return row


# Fields of the representation (GET) that an update cannot change: a PUT of the object a client read,
# with its changes, is accepted when these still hold their current values. In such an object (its
# "id" is the model's) the fields the server keeps moving may be stale, and are ignored.
ECHOED = frozenset(("name", "version", "framework", "format", "triton_version", "artifact_uri", "warnings", *READ_ONLY))
DRIFTING = frozenset(("updated_at", "state", "state_reason", "warnings"))


def _without_echoed(body: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """``body`` less the fields that merely repeat ``current`` (a changed one is still refused, naming it)."""
    echo = body.get("id") == current["id"]
    repeated = {k for k, v in body.items() if k in ECHOED and (current.get(k, k) == v or (echo and k in DRIFTING))}
    kept = {k: v for k, v in body.items() if k not in repeated}
    urls = kept.get("backend_urls")
    if "backend_url" in kept and isinstance(urls, list):  # both, as GET shows them: backend_urls is the truth
        if kept["backend_url"] == (urls[0] if urls else None):
            del kept["backend_url"]
    return kept


def validate_update(body: Any) -> dict[str, Any]:
    body = v.require_object(body)
    for fixed in ("name", "version", "framework", "format"):
        if fixed in body:
            raise InvalidInput(f"{fixed} cannot be changed; register a new version instead", field=fixed)
    v.reject_unknown(body, UPDATE_FIELDS, READ_ONLY)
    values = _mutable_fields(body)
    if not values:
        raise InvalidInput(f"nothing to update; give one of: {', '.join(UPDATE_FIELDS)}", field="body")
    return values


def check_backends_allowed(services: Services, urls: list[str], field: str = "backend_url") -> None:
    """Each URL must name this deployment's Triton (TRITON_URL, or ``triton`` with Triton's ports) or
    match BACKEND_ALLOWLIST, before anything contacts it."""
    own = backend_id(services.settings.triton_url)
    patterns = (own, *services.settings.backend_allowlist)
    seen: dict[str, str] = {}
    for url in urls:
        target = resolve_backend(url, own)
        if target in seen:
            raise InvalidInput(
                f"{field} names one backend twice: {seen[target]!r} and {url!r} are both {target}", field=field
            )
        seen[target] = url
        if not any(fnmatchcase(target, p.lower()) for p in patterns):
            raise InvalidInput(
                f"{field} {backend_id(url)!r} is not an allowed Triton backend; allowed: "
                f"{', '.join(dict.fromkeys(patterns))} (BACKEND_ALLOWLIST), and triton:8001 (or "
                "triton:8000) for this deployment's own Triton",
                field=field,
                code="backend_not_allowed",
            )


def backend_field(body: Any) -> str:
    """The body field that named the backends (for errors)."""
    return "backend_urls" if isinstance(body, dict) and "backend_urls" in body else "backend_url"


# -- representation -----------------------------------------------------------
def to_json(row: Any) -> dict[str, Any]:
    m = row._mapping
    urls = list(m["backend_urls"] or [])
    return {
        "id": str(m["id"]),
        "name": m["name"],
        "version": m["version"],
        "framework": m["framework"],
        "format": m["format"],
        "backend_url": urls[0] if urls else None,
        "backend_urls": urls,
        "triton_model": m["triton_model"],
        "triton_version": m["triton_version"],
        "description": m["description"],
        "tags": list(m["tags"]),
        "metadata": dict(m["metadata"]),
        "status": m["status"],
        "state": m["state"],
        "state_reason": m["state_reason"],
        "artifact_uri": m["artifact_uri"],
        "repository_uri": m["repository_uri"],
        "artifact_format": m["artifact_format"],
        "artifact_sha256": m["artifact_sha256"],
        "artifact_bytes": m["artifact_bytes"],
        "created_at": m["created_at"].isoformat(),
        "updated_at": m["updated_at"].isoformat(),
    }


# Fields added by the lifecycle (migration 0004). A copy cached by an older revision lacks them; it
# reads as what such a row is: a ready version Kinfer does not manage.
_LIFECYCLE_DEFAULTS = {
    "triton_version": None,
    "state": "ready",
    "state_reason": None,
    "artifact_uri": None,
    "repository_uri": None,
    "artifact_format": None,
    "artifact_sha256": None,
    "artifact_bytes": None,
}


def _complete(model: dict[str, Any]) -> dict[str, Any]:
    return {**_LIFECYCLE_DEFAULTS, **model}


def parse_id(raw: str) -> uuid.UUID:
    """A model id in canonical form (8-4-4-4-12 hex); anything else is an unknown model (404)."""
    if not isinstance(raw, str) or not UUID.fullmatch(raw):
        raise NotFound(f"model {str(raw)[:64]!r} not found")
    return uuid.UUID(raw)


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def _id_key(model_id: Any) -> str:
    return f"kinfer:reg:id:{model_id}"


def _nv_key(name: str, version: str) -> str:
    return f"kinfer:reg:nv:{name}:{version}"


def _view_key(name: str) -> str:
    return f"kinfer:reg:view:{name}"


# -- reads ----------------------------------------------------------------------
def _cached(services: Services, key: str, load: Any) -> Any:
    """Read-through: the cached JSON, or ``load()`` stored unless a write raced it."""
    value, gen = services.cache.lookup(key, GEN_KEY)
    if value is not None:
        return value
    value = load()
    services.cache.fill(key, GEN_KEY, value, gen)
    return value


def _fetch_one(services: Services, where: Any, missing: str) -> dict[str, Any]:
    with services.db.read() as conn:
        row = conn.execute(sa.select(models).where(where)).first()
    if row is None:
        raise NotFound(missing)
    return to_json(row)


def get_model(services: Services, raw_id: str) -> dict[str, Any]:
    model_id = parse_id(raw_id)
    return _complete(
        _cached(
            services,
            _id_key(model_id),
            lambda: _fetch_one(services, models.c.id == model_id, f"model {raw_id} not found"),
        )
    )


def get_model_by_name(services: Services, name: str, version: str) -> dict[str, Any]:
    if not NAME.fullmatch(name) or not VERSION.fullmatch(version):
        raise NotFound(f"model {name[:64]!r} version {version[:32]!r} not found", code="version_not_found")
    where = sa.and_(models.c.name == name, models.c.version == version)
    return _complete(
        _cached(
            services,
            _nv_key(name, version),
            lambda: _fetch_one(services, where, f"model {name!r} version {version!r} not found"),
        )
    )


def view(services: Services, name: str) -> dict[str, Any]:
    """Everything resolution needs about ``name``: its active rows, the others' states, its aliases."""
    return dict(_cached(services, _view_key(name), lambda: _load_view(services, name)))


def _load_view(services: Services, name: str) -> dict[str, Any]:
    with services.db.read() as conn:
        rows = conn.execute(sa.select(models).where(models.c.name == name)).all()
        aliases = conn.execute(
            sa.select(model_aliases.c.alias, model_aliases.c.versions).where(model_aliases.c.name == name)
        ).all()
    active = {r.version: to_json(r) for r in rows if r.status == "active"}
    others = {
        r.version: {"status": r.status, "state": r.state, "state_reason": r.state_reason}
        for r in rows
        if r.status != "active"
    }
    return {"active": active, "others": others, "aliases": {a.alias: dict(a.versions) for a in aliases}}


def resolve_target(services: Services, name: str, version: str | None = None) -> dict[str, Any]:
    """What serves ``name`` at ``version`` (a version, an alias, or None): ``{"alias", "choices"}``,
    choices being ``[weight, model]`` pairs. Errors say what exists and what to do."""
    if not NAME.fullmatch(name):
        raise NotFound(f"model {name[:64]!r} not found")
    known = view(services, name)
    if not known["active"] and not known["others"]:
        raise NotFound(_unknown_model_message(services, name))
    if version is None:
        if DEFAULT_ALIAS in known["aliases"]:
            return _alias_target(known, name, DEFAULT_ALIAS)
        servable = [m for m in known["active"].values() if m["state"] == SERVABLE]
        if not servable:
            raise NotFound(
                f"model {name!r} has no active version ready to serve ({_summary(known)})", code="no_active_version"
            )
        return {"alias": None, "choices": [[100, max(servable, key=lambda m: version_key(m["version"]))]]}
    if VERSION.fullmatch(version):
        return {"alias": None, "choices": [[100, _servable(known, name, version)]]}
    if version in known["aliases"]:
        return _alias_target(known, name, version)
    raise NotFound(
        f"model {name!r} has no version or alias {version[:32]!r} ({_summary(known)})", code="version_not_found"
    )


def _servable(known: dict[str, Any], name: str, version: str) -> dict[str, Any]:
    model = known["active"].get(version)
    if model is None:
        other = known["others"].get(version)
        if other is not None:
            raise NotFound(
                f"model {name!r} version {version!r} is {other['status']}, not active", code="version_not_active"
            )
        raise NotFound(f"model {name!r} has no version {version!r} ({_summary(known)})", code="version_not_found")
    state = model["state"]
    if state == "failed":
        raise NotFound(
            f"model {name!r} version {version!r} failed to load: {model['state_reason'] or 'no reason'}",
            code="version_failed",
        )
    if state != SERVABLE:
        what = "awaits its artifact upload" if state == "awaiting_upload" else f"is {state}"
        raise Unavailable(
            f"model {name!r} version {version!r} {what}; it serves once every Triton replica has loaded it",
            retry_after=2,
            code="version_not_ready",
        )
    return dict(model)


def _alias_target(known: dict[str, Any], name: str, alias: str) -> dict[str, Any]:
    choices = [
        [int(weight), _servable(known, name, version)]
        for version, weight in sorted(known["aliases"][alias].items(), key=lambda kv: version_key(kv[0]))
    ]
    return {"alias": alias, "choices": choices}


def pick(target: dict[str, Any], route_key: str | None) -> dict[str, Any]:
    """The version that serves this caller: sticky per ``route_key`` (random without one)."""
    choices = target["choices"]
    if len(choices) == 1:
        return dict(choices[0][1])
    total = sum(weight for weight, _ in choices)
    if route_key is None:
        point = random.randrange(total)
    else:
        digest = hashlib.sha256(f"{target['alias']}|{route_key}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") % total
    for weight, model in choices:
        if point < weight:
            return dict(model)
        point -= weight
    return dict(choices[-1][1])


def resolve_model(
    services: Services, name: str, version: str | None = None, route_key: str | None = None
) -> dict[str, Any]:
    """The model row that serves this request (see ``resolve_target`` and ``pick``)."""
    return pick(resolve_target(services, name, version), route_key)


def _summary(known: dict[str, Any]) -> str:
    parts = [f"{ver} {'active' if m['state'] == SERVABLE else m['state']}" for ver, m in known["active"].items()]
    parts += [f"{ver} {o['status']}" for ver, o in known["others"].items()]
    parts.sort(key=lambda p: version_key(p.split()[0]))
    text = "versions: " + ", ".join(parts[:20]) + (", ..." if len(parts) > 20 else "")
    if known["aliases"]:
        text += "; aliases: " + ", ".join(sorted(known["aliases"]))
    return text


def _unknown_model_message(services: Services, name: str) -> str:
    names = _cached(services, NAMES_KEY, lambda: _all_names(services))
    lowered = name.lower()
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    close += [n for n in names if (lowered in n.lower() or n.lower() in lowered) and n not in close]
    hint = (
        f"; did you mean {' or '.join(repr(n) for n in close[:3])}?"
        if close
        else "; list the registered models with GET /v1/models"
    )
    return f"model {name!r} not found{hint}"


def _all_names(services: Services) -> list[str]:
    with services.db.read() as conn:
        return [r[0] for r in conn.execute(sa.select(models.c.name).distinct().limit(10_000))]


def list_models(services: Services, args: Any) -> dict[str, Any]:
    limit = v.integer(args.get("limit"), "limit", default=50, lo=1, hi=500)
    offset = v.integer(args.get("offset"), "offset", default=0, lo=0, hi=10_000_000)
    conditions = []
    if args.get("name"):
        conditions.append(models.c.name == v.string(args["name"], "name", max_len=128))
    if args.get("framework"):
        conditions.append(models.c.framework == v.choice(args["framework"], "framework", FRAMEWORKS))
    if args.get("status"):
        conditions.append(models.c.status == v.choice(args["status"], "status", STATUSES))
    if args.get("state"):
        conditions.append(models.c.state == v.choice(args["state"], "state", STATES))
    if args.get("tag"):
        conditions.append(models.c.tags.contains([v.string(args["tag"], "tag", max_len=64)]))
    query = sa.select(models).where(*conditions)
    with services.db.begin() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one()
        rows = conn.execute(
            query.order_by(models.c.created_at.desc(), models.c.id.desc()).limit(limit).offset(offset)
        ).all()
    return {"models": [to_json(r) for r in rows], "total": total, "limit": limit, "offset": offset}


# -- writes ---------------------------------------------------------------------
def create_model(services: Services, body: Any) -> dict[str, Any]:
    """Register a version whose files Kinfer does not manage (``shared.lifecycle`` registers artifacts)."""
    row = validate_create(body)
    check_backends_allowed(services, row.get("backend_urls") or [], backend_field(body))
    row["id"] = uuid.uuid4()
    with conflict_on(duplicate(row["name"], row["version"]), field="version"):
        with services.db.begin() as conn:
            model = insert(services, conn, row)
    invalidate(services, model, names=True)
    return model


def duplicate(name: str, version: str) -> str:
    return f"model {name!r} version {version!r} already exists"


def insert(services: Services, conn: Any, row: dict[str, Any]) -> dict[str, Any]:
    """INSERT ``row`` in the caller's transaction, announced before the commit (see ``invalidate``)."""
    model = to_json(conn.execute(sa.insert(models).values(**row).returning(*models.c)).one())
    invalidate(services, model, names=True, before_commit=True)
    return model


def update_model(services: Services, raw_id: str, body: Any) -> dict[str, Any]:
    model_id = parse_id(raw_id)
    if isinstance(body, dict) and not ECHOED.isdisjoint(body):
        body = _without_echoed(body, get_model(services, raw_id))
    values = validate_update(body)
    if "backend_urls" in values:
        check_backends_allowed(services, values["backend_urls"], backend_field(body))
    values["updated_at"] = sa.func.clock_timestamp()
    with services.db.begin() as conn:
        if values.get("status", "active") != "active":
            current = conn.execute(sa.select(models.c.name, models.c.version).where(models.c.id == model_id)).first()
            if current is not None:
                _refuse_if_aliased(conn, current.name, current.version, f"make it {values['status']}")
        row = conn.execute(
            sa.update(models).where(models.c.id == model_id).values(**values).returning(*models.c)
        ).first()
        if row is None:
            raise NotFound(f"model {raw_id} not found")
        model = to_json(row)
        invalidate(services, model, before_commit=True)
    invalidate(services, model)
    return model


def set_state(
    services: Services, model_id: str, state: str, reason: str | None = None, only_from: tuple[str, ...] = ()
) -> dict[str, Any] | None:
    """Move a version's load state (the agents and the artifact path); None when ``only_from`` did not hold."""
    where = [models.c.id == uuid.UUID(model_id)]
    if only_from:
        where.append(models.c.state.in_(only_from))
    with services.db.begin() as conn:
        row = conn.execute(
            sa.update(models)
            .where(*where)
            .values(state=state, state_reason=reason, updated_at=sa.func.clock_timestamp())
            .returning(*models.c)
        ).first()
        if row is None:
            return None
        model = to_json(row)
        invalidate(services, model, before_commit=True)
    invalidate(services, model)
    return model


def delete_model(services: Services, raw_id: str) -> dict[str, Any]:
    """Delete a version (409 while an alias points at it); returns what was deleted."""
    model_id = parse_id(raw_id)
    with services.db.begin() as conn:
        current = conn.execute(sa.select(models).where(models.c.id == model_id).with_for_update()).first()
        if current is None:
            raise NotFound(f"model {raw_id} not found")
        _refuse_if_aliased(conn, current.name, current.version, "delete it")
        conn.execute(sa.delete(models).where(models.c.id == model_id))
        model = to_json(current)
        invalidate(services, model, names=True, before_commit=True)
    invalidate(services, model, names=True)
    return model


def _refuse_if_aliased(conn: Any, name: str, version: str, action: str) -> None:
    aliases = [
        r.alias
        for r in conn.execute(
            sa.select(model_aliases.c.alias).where(
                model_aliases.c.name == name, model_aliases.c.versions.has_key(version)
            )
        )
    ]
    if aliases:
        raise Conflict(
            f"model {name!r} version {version!r} is served through alias "
            f"{', '.join(repr(a) for a in sorted(aliases))}; move the alias to another version "
            f"(kinfer models promote) before you {action}",
            code="version_aliased",
        )


def invalidate(services: Services, model: dict[str, Any], *, names: bool = False, before_commit: bool = False) -> None:
    """Drop the cached copies of ``model`` (and its name's view), bump the generation, announce the name.

    Every write calls this twice. Before its commit, a failure raises Unavailable so the
    transaction rolls back: a change that cannot be made visible through the cache is
    not made at all (a Redis that stalls would otherwise come back serving the old row
    until its TTL). After the commit, it removes what a reader filled in between.
    """
    keys = [_view_key(model["name"])]
    if "id" in model:
        keys.append(_id_key(model["id"]))
    if "version" in model:
        keys.append(_nv_key(model["name"], model["version"]))
    if names:
        keys.append(NAMES_KEY)
    told = services.cache.invalidate(GEN_KEY, *keys, announce=(EVENTS_CHANNEL, model["name"]))
    if not told and before_commit:
        raise Unavailable(
            "the registry cache (Redis) cannot be reached, so the change could not be made "
            "visible everywhere; nothing was changed, retry shortly",
            retry_after=1,
        )


def health(services: Services) -> tuple[int, dict[str, Any]]:
    """503 when PostgreSQL is unreachable; "degraded" when only Redis is."""
    db_ok = services.db.ping()
    cache_ok = services.cache.ping()
    status = "healthy" if db_ok and cache_ok else ("degraded" if db_ok else "unhealthy")
    body = {
        "status": status,
        "service": services.settings.service_name,
        "checks": {"database": "ok" if db_ok else "unreachable", "cache": "ok" if cache_ok else "unreachable"},
    }
    return (200 if db_ok else 503), body
