"""Reads through the Redis cache: by id, by name and version, a name's view, the resolution of a
name (a version, an alias or the default) and its pick per caller, lists, health.
"""

from __future__ import annotations

import difflib
import hashlib
import random
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict, TypeVar, cast

import sqlalchemy as sa

from shared import validation as v
from shared.clients.db import contains
from shared.clients.schema import model_aliases, models
from shared.domain import ModelState, ModelStatus, ModelVersion
from shared.errors import NotFound, Unavailable
from shared.registry.rows import (
    GEN_KEY,
    NAMES_KEY,
    SERVABLE,
    _complete,
    _id_key,
    _nv_key,
    _view_key,
    parse_id,
    to_json,
    version_key,
)
from shared.registry.rules import DEFAULT_ALIAS, FRAMEWORKS, NAME, STATES, STATUSES, VERSION

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from shared.clients.cache import Cache
    from shared.clients.db import Database
    from shared.settings import Settings

T = TypeVar("T")


class OtherVersion(TypedDict):
    """A version of a name that is not active: what its errors need to say."""

    status: str
    state: str
    state_reason: str | None


class ModelView(TypedDict):
    """Everything resolution needs about one name (cached as one JSON value): its active rows by
    version, the others' status and state, and its aliases (alias -> {version: weight})."""

    active: dict[str, ModelVersion]
    others: dict[str, OtherVersion]
    aliases: dict[str, dict[str, int]]
    shadows: NotRequired[dict[str, dict[str, int]]]


Choice = tuple[int, ModelVersion]
"""A weight (of 100) and the version it sends traffic to."""


class ResolvedTarget(TypedDict):
    """What serves a name at a version or alias: the alias (None for a version) and its weighted choices."""

    alias: str | None
    choices: list[Choice]
    shadow: NotRequired[list[Choice]]


class ListedAlias(TypedDict):
    """An alias of a listed model's name (``GET /v1/models?include=aliases``), as the alias API answers it."""

    name: str
    alias: str
    versions: dict[str, int]
    previous: dict[str, int] | None
    shadow: NotRequired[dict[str, int]]
    created_at: str
    updated_at: str


class ListedModel(ModelVersion):
    """A model in a page of ``GET /v1/models``; with ``include=aliases``, every alias of its name (the same
    list for each version of a name) and its split."""

    aliases: NotRequired[list[ListedAlias]]


class ModelPage(TypedDict):
    """``GET /v1/models``: a page of models, newest first."""

    models: list[ListedModel]
    total: int
    limit: int
    offset: int


class HealthChecks(TypedDict):
    database: str
    cache: str


class Health(TypedDict):
    """``GET /health`` of the registry's functions."""

    status: str
    service: str
    checks: HealthChecks


def _servable(known: ModelView, name: str, version: str) -> ModelVersion:
    model = known["active"].get(version)
    if model is None:
        other = known["others"].get(version)
        if other is not None:
            raise NotFound(
                f"model {name!r} version {version!r} is {other['status']}, not active", code="version_not_active"
            )
        raise NotFound(f"model {name!r} has no version {version!r} ({_summary(known)})", code="version_not_found")
    state = model["state"]
    if state == ModelState.FAILED:
        raise NotFound(
            f"model {name!r} version {version!r} failed to load: {model['state_reason'] or 'no reason'}",
            code="version_failed",
        )
    if state != SERVABLE:
        what = "awaits its artifact upload" if state == ModelState.AWAITING_UPLOAD else f"is {state}"
        raise Unavailable(
            f"model {name!r} version {version!r} {what}; it serves once every Triton replica has loaded it",
            retry_after=2,
            code="version_not_ready",
        )
    return model.copy()


def _alias_target(known: ModelView, name: str, alias: str) -> ResolvedTarget:
    choices = [
        (int(weight), _servable(known, name, version))
        for version, weight in sorted(known["aliases"][alias].items(), key=lambda kv: version_key(kv[0]))
    ]
    shadow = [
        (int(percent), known["active"][version])
        for version, percent in sorted(known.get("shadows", {}).get(alias, {}).items())
        if version in known["active"] and known["active"][version]["state"] == SERVABLE
    ]  # a shadow version that cannot serve is skipped, never an error of the primary
    return {"alias": alias, "choices": choices, "shadow": shadow} if shadow else {"alias": alias, "choices": choices}


def pick(target: ResolvedTarget, route_key: str | None) -> ModelVersion:
    """The version that serves this caller: sticky per ``route_key`` (random without one)."""
    choices = target["choices"]
    if len(choices) == 1:
        return choices[0][1].copy()
    total = sum(weight for weight, _ in choices)
    if route_key is None:
        point = random.randrange(total)
    else:
        digest = hashlib.sha256(f"{target['alias']}|{route_key}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") % total
    for weight, model in choices:
        if point < weight:
            return model.copy()
        point -= weight
    return choices[-1][1].copy()


def _summary(known: ModelView) -> str:
    parts = [f"{ver} {'active' if m['state'] == SERVABLE else m['state']}" for ver, m in known["active"].items()]
    parts += [f"{ver} {o['status']}" for ver, o in known["others"].items()]
    parts.sort(key=lambda p: version_key(p.split()[0]))
    text = "versions: " + ", ".join(parts[:20]) + (", ..." if len(parts) > 20 else "")
    if known["aliases"]:
        text += "; aliases: " + ", ".join(sorted(known["aliases"]))
    return text


# The fuzzy match costs about 20 us a name: past this many, only names that begin like the unknown one
# are compared (a typo rarely changes the first letters), so it costs the same with 100 or 10,000 models.
MAX_SUGGEST_CANDIDATES = 300


def suggestion(name: str, names: list[str]) -> str:
    """ "; did you mean ...?" from the registered ``names`` (bounded work), or where to list them."""
    lowered = name.lower()
    pool = names
    for prefix in (1, 2):  # narrow by the first letter, then the first two, while there are too many
        if len(pool) > MAX_SUGGEST_CANDIDATES:
            pool = [n for n in pool if n[:prefix].lower() == lowered[:prefix]]
    pool = pool[:MAX_SUGGEST_CANDIDATES]
    close = difflib.get_close_matches(name, pool, n=3, cutoff=0.6)
    close += [n for n in names if (lowered in n.lower() or n.lower() in lowered) and n not in close]
    return (
        f"; did you mean {' or '.join(repr(n) for n in close[:3])}?"
        if close
        else "; list the registered models with GET /v1/models"
    )


INCLUDES = ("aliases",)
MAX_QUERY = 128


def _list_filters(args: Mapping[str, str]) -> list[Any]:
    """The WHERE conditions of ``GET /v1/models`` (bound parameters; ``q``'s wildcards escaped)."""
    conditions: list[Any] = []
    if args.get("q"):
        q = v.string(args["q"], "q", max_len=MAX_QUERY)
        conditions.append(contains(models.c.name, q))
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
    return conditions


def _aliases_of(conn: Connection, names: list[str]) -> dict[str, list[ListedAlias]]:
    """Every alias of ``names``, by name and then alias, in one query."""
    if not names:
        return {}
    query = (
        sa.select(model_aliases)
        .where(model_aliases.c.name.in_(names))
        .order_by(model_aliases.c.name, model_aliases.c.alias)
    )
    found: dict[str, list[ListedAlias]] = {}
    for row in conn.execute(query).all():
        found.setdefault(row.name, []).append(
            {
                "name": row.name,
                "alias": row.alias,
                "versions": dict(row.versions),
                "previous": dict(row.previous) if row.previous else None,
                "shadow": dict(row.shadow or {}),
                "created_at": row.created_at.isoformat(),
                "updated_at": row.updated_at.isoformat(),
            }
        )
    return found


class RegistryReads:
    """The registry's reads: through the Redis cache from PostgreSQL, and the uncached reads of the loops."""

    def __init__(self, db: Database, cache: Cache, settings: Settings) -> None:
        self.db = db
        self.cache = cache
        self.settings = settings

    def _cached(self, key: str, load: Callable[[], T]) -> T:
        """Read-through: the cached JSON, or ``load()`` stored unless a write raced it."""
        value, gen = self.cache.lookup(key, GEN_KEY)
        if value is not None:
            return cast(T, value)  # the JSON ``load`` stored: the same shape
        value = load()
        self.cache.fill(key, GEN_KEY, value, gen)
        return value

    def _fetch_one(self, where: Any, missing: str, code: str | None = None) -> ModelVersion:
        with self.db.read() as conn:
            row = conn.execute(sa.select(models).where(where)).first()
        if row is None:
            raise NotFound(missing, code=code)
        return to_json(row)

    def get_model(self, raw_id: str) -> ModelVersion:
        model_id = parse_id(raw_id)
        return _complete(
            self._cached(
                _id_key(model_id),
                lambda: self._fetch_one(models.c.id == model_id, f"model {raw_id} not found"),
            )
        )

    def get_model_by_name(self, name: str, version: str) -> ModelVersion:
        if not NAME.fullmatch(name) or not VERSION.fullmatch(version):
            raise NotFound(f"model {name[:64]!r} version {version[:32]!r} not found", code="version_not_found")
        where = sa.and_(models.c.name == name, models.c.version == version)
        return _complete(
            self._cached(
                _nv_key(name, version),
                lambda: self._fetch_one(where, f"model {name!r} version {version!r} not found", "version_not_found"),
            )
        )

    def view(self, name: str) -> ModelView:
        """Everything resolution needs about ``name``: its active rows, the others' states, its aliases."""
        return self._cached(_view_key(name), lambda: self._load_view(name)).copy()

    def _load_view(self, name: str) -> ModelView:
        with self.db.read() as conn:
            rows = conn.execute(sa.select(models).where(models.c.name == name)).all()
            aliases = conn.execute(
                sa.select(model_aliases.c.alias, model_aliases.c.versions, model_aliases.c.shadow).where(
                    model_aliases.c.name == name
                )
            ).all()
        active = {r.version: to_json(r) for r in rows if r.status == ModelStatus.ACTIVE}
        others: dict[str, OtherVersion] = {
            r.version: {"status": r.status, "state": r.state, "state_reason": r.state_reason}
            for r in rows
            if r.status != ModelStatus.ACTIVE
        }
        return {
            "active": active,
            "others": others,
            "aliases": {a.alias: dict(a.versions) for a in aliases},
            "shadows": {a.alias: dict(a.shadow) for a in aliases if a.shadow},
        }

    def resolve_target(self, name: str, version: str | None = None) -> ResolvedTarget:
        """What serves ``name`` at ``version`` (a version, an alias, or None): ``{"alias", "choices"}``,
        choices being ``[weight, model]`` pairs. Errors say what exists and what to do."""
        known = self.require_model(name)
        if version is None:
            if DEFAULT_ALIAS in known["aliases"]:
                return _alias_target(known, name, DEFAULT_ALIAS)
            servable = [m for m in known["active"].values() if m["state"] == SERVABLE]
            if not servable:
                raise NotFound(
                    f"model {name!r} has no active version ready to serve ({_summary(known)})",
                    code="no_active_version",
                )
            return {"alias": None, "choices": [(100, max(servable, key=lambda m: version_key(m["version"])))]}
        if VERSION.fullmatch(version):
            return {"alias": None, "choices": [(100, _servable(known, name, version))]}
        if version in known["aliases"]:
            return _alias_target(known, name, version)
        raise NotFound(
            f"model {name!r} has no version or alias {version[:32]!r} ({_summary(known)})", code="version_not_found"
        )

    def resolve_model(self, name: str, version: str | None = None, route_key: str | None = None) -> ModelVersion:
        """The model row that serves this request (see ``resolve_target`` and ``pick``)."""
        return pick(self.resolve_target(name, version), route_key)

    def require_model(self, name: str) -> ModelView:
        """``name``'s view; 404 saying which registered names come close when it has no version at all."""
        if not NAME.fullmatch(name):
            raise NotFound(f"model {name[:64]!r} not found")
        known = self.view(name)
        if not known["active"] and not known["others"]:
            raise NotFound(self._unknown_model_message(name))
        return known

    def _unknown_model_message(self, name: str) -> str:
        names = self._cached(NAMES_KEY, self._all_names)
        return f"model {name!r} not found{suggestion(name, names)}"

    def _all_names(self) -> list[str]:
        with self.db.read() as conn:
            return [r[0] for r in conn.execute(sa.select(models.c.name).distinct().limit(10_000))]

    def list_models(self, args: Mapping[str, str]) -> ModelPage:
        """A page of versions, newest first, filtered by ``q`` (a substring of the name, any case), ``name``,
        ``framework``, ``status``, ``state`` and ``tag``; ``include=aliases`` adds each name's aliases, read for
        the whole page in one query."""
        limit = v.integer(args.get("limit"), "limit", default=50, lo=1, hi=500)
        offset = v.integer(args.get("offset"), "offset", default=0, lo=0, hi=10_000_000)
        include = v.choice(args["include"], "include", INCLUDES) if args.get("include") else None
        query = sa.select(models).where(*_list_filters(args))
        with self.db.begin() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one()
            rows = conn.execute(
                query.order_by(models.c.created_at.desc(), models.c.id.desc()).limit(limit).offset(offset)
            ).all()
            page = [cast(ListedModel, to_json(r)) for r in rows]
            if include == "aliases":
                aliases = _aliases_of(conn, sorted({m["name"] for m in page}))
                for m in page:
                    m["aliases"] = aliases.get(m["name"], [])
        return {"models": page, "total": total, "limit": limit, "offset": offset}

    def health(self) -> tuple[int, Health]:
        """503 when PostgreSQL is unreachable; "degraded" when only Redis is."""
        db_ok = self.db.ping()
        cache_ok = self.cache.ping()
        status = "healthy" if db_ok and cache_ok else ("degraded" if db_ok else "unhealthy")
        body: Health = {
            "status": status,
            "service": self.settings.service_name,
            "checks": {"database": "ok" if db_ok else "unreachable", "cache": "ok" if cache_ok else "unreachable"},
        }
        return (200 if db_ok else 503), body

    # -- uncached reads for the platform's own loops (the model agent, the backends probe) ----------------------
    def versions_in_states(
        self, states: tuple[str, ...], *, active: bool = False, managed: bool = False
    ) -> list[ModelVersion]:
        """Every version in one of ``states`` (``active``: only status active; ``managed``: only versions whose
        files Kinfer manages), straight from PostgreSQL: the agents must see a write at once."""
        query = sa.select(models).where(models.c.state.in_(states))
        if active:
            query = query.where(models.c.status == ModelStatus.ACTIVE)
        if managed:
            query = query.where(models.c.repository_uri.is_not(None))
        with self.db.read() as conn:
            return [to_json(row) for row in conn.execute(query).all()]

    def active_backends(self) -> list[tuple[list[str], str]]:
        """(backend_urls, Triton model) of every active version, straight from PostgreSQL."""
        query = sa.select(models.c.backend_urls, models.c.triton_model, models.c.name).where(
            models.c.status == ModelStatus.ACTIVE
        )
        with self.db.read() as conn:
            return [(list(urls or []), triton_model or name) for urls, triton_model, name in conn.execute(query).all()]
