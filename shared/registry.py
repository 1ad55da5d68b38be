"""The model registry: validated CRUD over the ``models`` table with a Redis read-through cache.

Reads by id, by name/version and "newest active version of a name" go through
the cache; every write bumps the registry generation and drops the affected
keys before and after its commit (a write that cannot reach Redis is refused with
503 and rolled back), and fills are refused when the generation moved while the
reader was at the database, so no read after a write is stale.
"""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from shared import validation as v
from shared.clients.db import conflict_on
from shared.clients.schema import models
from shared.errors import InvalidInput, NotFound, Unavailable

if TYPE_CHECKING:
    from shared.services import Services

FRAMEWORKS = ("pytorch", "tensorflow", "onnx", "scikit-learn", "xgboost", "tensorrt", "python")
FORMATS = ("onnx", "torchscript", "savedmodel", "plan", "pickle", "python")
STATUSES = ("active", "inactive", "deprecated")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
VERSION = re.compile(r"\d{1,9}(?:\.\d{1,9}){0,2}")
TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/=-]{0,63}")
BACKEND_URL = re.compile(r"(?:(?:grpc|http|https)://)?[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})(?::\d{1,5})?/?")
MAX_TAGS, MAX_BACKENDS, MAX_METADATA_BYTES, MAX_DESCRIPTION = 32, 16, 16384, 4096

CREATE_FIELDS = ("name", "version", "framework", "format", "backend_url", "backend_urls", "triton_model",
                 "description", "tags", "metadata", "status")
UPDATE_FIELDS = ("description", "status", "tags", "metadata", "backend_url", "backend_urls", "triton_model")
READ_ONLY = ("id", "created_at", "updated_at")
GEN_KEY = "kinfer:reg:gen"


# -- validation ---------------------------------------------------------------
def _backend_urls(body: dict[str, Any]) -> list[str] | None:
    if "backend_url" in body and "backend_urls" in body:
        raise InvalidInput("give backend_url or backend_urls, not both", field="backend_urls")
    if "backend_url" in body:
        raw = body["backend_url"]
        return [] if raw is None else [v.string(raw, "backend_url", max_len=256, pattern=BACKEND_URL,
                                                hint="expected host:port or grpc://host:port")]
    if "backend_urls" in body:
        raw = body["backend_urls"]
        if not isinstance(raw, list) or len(raw) > MAX_BACKENDS:
            raise InvalidInput(f"backend_urls must be a list of at most {MAX_BACKENDS} URLs", field="backend_urls")
        urls = [v.string(u, "backend_urls", max_len=256, pattern=BACKEND_URL, hint="expected host:port")
                for u in raw]
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
        out["description"] = v.string(body["description"], "description", max_len=MAX_DESCRIPTION,
                                      allow_empty=True)
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


def validate_create(body: Any) -> dict[str, Any]:
    body = v.require_object(body)
    v.reject_unknown(body, CREATE_FIELDS, READ_ONLY)
    for required in ("name", "version", "framework", "format"):
        if body.get(required) in (None, ""):
            raise InvalidInput(f"{required} is required", field=required)
    row = {
        "name": v.string(body["name"], "name", max_len=128, pattern=NAME,
                         hint="start with a letter or digit; then letters, digits, '.', '_' or '-'"),
        "version": v.string(body["version"], "version", max_len=32, pattern=VERSION,
                            hint="expected 1, 1.0 or 1.0.0"),
        "framework": v.choice(body["framework"], "framework", FRAMEWORKS),
        "format": v.choice(body["format"], "format", FORMATS),
    }
    row.update(_mutable_fields(body))
    row.setdefault("triton_model", row["name"])
    return row


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


# -- representation -----------------------------------------------------------
def to_json(row: Any) -> dict[str, Any]:
    m = row._mapping
    urls = list(m["backend_urls"] or [])
    return {
        "id": str(m["id"]), "name": m["name"], "version": m["version"], "framework": m["framework"],
        "format": m["format"], "backend_url": urls[0] if urls else None, "backend_urls": urls,
        "triton_model": m["triton_model"], "description": m["description"], "tags": list(m["tags"]),
        "metadata": dict(m["metadata"]), "status": m["status"],
        "created_at": m["created_at"].isoformat(), "updated_at": m["updated_at"].isoformat(),
    }


def parse_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except (ValueError, AttributeError, TypeError):
        raise NotFound(f"model {raw[:64]!r} not found") from None


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def _id_key(model_id: Any) -> str:
    return f"kinfer:reg:id:{model_id}"


def _nv_key(name: str, version: str) -> str:
    return f"kinfer:reg:nv:{name}:{version}"


def _latest_key(name: str) -> str:
    return f"kinfer:reg:latest:{name}"


# -- operations ---------------------------------------------------------------
def _cached(services: Services, key: str, load: Any) -> dict[str, Any]:
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
    return _cached(services, _id_key(model_id),
                   lambda: _fetch_one(services, models.c.id == model_id, f"model {raw_id} not found"))


def get_model_by_name(services: Services, name: str, version: str) -> dict[str, Any]:
    if not NAME.fullmatch(name) or not VERSION.fullmatch(version):
        raise NotFound(f"model {name[:64]!r} version {version[:32]!r} not found")
    where = sa.and_(models.c.name == name, models.c.version == version)
    return _cached(services, _nv_key(name, version),
                   lambda: _fetch_one(services, where, f"model {name!r} version {version!r} not found"))


def resolve_model(services: Services, name: str, version: str | None = None) -> dict[str, Any]:
    """The model to serve: ``name`` at ``version``, or its newest active version; 404 if not active."""
    if version is not None:
        model = get_model_by_name(services, name, version)
        if model["status"] != "active":
            raise NotFound(f"model {name!r} version {version!r} is {model['status']}, not active")
        return model
    if not NAME.fullmatch(name):
        raise NotFound(f"model {name[:64]!r} not found")
    return _cached(services, _latest_key(name), lambda: _newest_active(services, name))


def _newest_active(services: Services, name: str) -> dict[str, Any]:
    with services.db.read() as conn:
        rows = conn.execute(sa.select(models).where(models.c.name == name, models.c.status == "active")).all()
    if not rows:
        raise NotFound(f"model {name!r} has no active version")
    return to_json(max(rows, key=lambda r: version_key(r.version)))


def create_model(services: Services, body: Any) -> dict[str, Any]:
    row = validate_create(body)
    row["id"] = uuid.uuid4()
    with conflict_on(f"model {row['name']!r} version {row['version']!r} already exists", field="version"):
        with services.db.begin() as conn:
            model = to_json(conn.execute(sa.insert(models).values(**row).returning(*models.c)).one())
            _invalidate(services, model, before_commit=True)
    _invalidate(services, model)
    return model


def update_model(services: Services, raw_id: str, body: Any) -> dict[str, Any]:
    model_id = parse_id(raw_id)
    values = validate_update(body)
    values["updated_at"] = sa.func.clock_timestamp()
    with services.db.begin() as conn:
        row = conn.execute(sa.update(models).where(models.c.id == model_id).values(**values)
                           .returning(*models.c)).first()
        if row is None:
            raise NotFound(f"model {raw_id} not found")
        model = to_json(row)
        _invalidate(services, model, before_commit=True)
    _invalidate(services, model)
    return model


def delete_model(services: Services, raw_id: str) -> None:
    model_id = parse_id(raw_id)
    with services.db.begin() as conn:
        row = conn.execute(sa.delete(models).where(models.c.id == model_id)
                           .returning(models.c.id, models.c.name, models.c.version)).first()
        if row is None:
            raise NotFound(f"model {raw_id} not found")
        model = {"id": str(row.id), "name": row.name, "version": row.version}
        _invalidate(services, model, before_commit=True)
    _invalidate(services, model)


def _invalidate(services: Services, model: dict[str, Any], *, before_commit: bool = False) -> None:
    """Drop the cached copies of ``model`` and bump the generation.

    Every write calls this twice. Before its commit, a failure raises Unavailable so the
    transaction rolls back: a change that cannot be made visible through the cache is
    not made at all (a Redis that stalls would otherwise come back serving the old row
    until its TTL). After the commit, it removes what a reader filled in between.
    """
    told = services.cache.invalidate(GEN_KEY, _id_key(model["id"]), _nv_key(model["name"], model["version"]),
                                     _latest_key(model["name"]))
    if not told and before_commit:
        raise Unavailable("the registry cache (Redis) cannot be reached, so the change could not be made "
                          "visible everywhere; nothing was changed, retry shortly", retry_after=1)


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
    if args.get("tag"):
        conditions.append(models.c.tags.contains([v.string(args["tag"], "tag", max_len=64)]))
    query = sa.select(models).where(*conditions)
    with services.db.begin() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one()
        rows = conn.execute(query.order_by(models.c.created_at.desc(), models.c.id.desc())
                            .limit(limit).offset(offset)).all()
    return {"models": [to_json(r) for r in rows], "total": total, "limit": limit, "offset": offset}


def health(services: Services) -> tuple[int, dict[str, Any]]:
    """503 when PostgreSQL is unreachable; "degraded" when only Redis is."""
    db_ok = services.db.ping()
    cache_ok = services.cache.ping()
    status = "healthy" if db_ok and cache_ok else ("degraded" if db_ok else "unhealthy")
    body = {"status": status, "service": services.settings.service_name,
            "checks": {"database": "ok" if db_ok else "unreachable", "cache": "ok" if cache_ok else "unreachable"}}
    return (200 if db_ok else 503), body
