"""Writes on the registry's tables. Every write runs in ``writing``: the models it touches are
invalidated in the cache before its commit (a cache that cannot be told refuses the write) and
again after it (what a reader filled in between goes), so no read after a write is stale.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, TypeVar

import sqlalchemy as sa

from shared import audit
from shared.audit import Actor
from shared.clients.db import conflict_on
from shared.clients.schema import model_aliases, models
from shared.domain import ModelStatus, ModelVersion
from shared.endpoints import backend_id
from shared.endpoints import resolve as resolve_backend
from shared.errors import Conflict, InvalidInput, NotFound, Unavailable
from shared.registry.reads import RegistryReads
from shared.registry.rows import EVENTS_CHANNEL, GEN_KEY, NAMES_KEY, _id_key, _nv_key, _view_key, parse_id, to_json
from shared.registry.rules import (
    ECHOED,
    ModelChanges,
    _without_echoed,
    backend_field,
    validate_create,
    validate_update,
)

Touched = TypeVar("Touched", bound=Mapping[str, object])


@dataclass
class Write:
    """One write transaction on the registry's tables: ``conn`` runs its statements, ``touch`` names each
    model (a row, or ``{"name": ...}`` for its aliases) whose cached copies it changes."""

    conn: Any
    touched: list[tuple[Mapping[str, object], bool]] = field(default_factory=list)

    def touch(self, model: Touched, *, names: bool = False) -> Touched:
        """``names``: the set of model names changed too (a new or deleted version). Returns ``model``."""
        self.touched.append((model, names))
        return model

    def audit(self, actor: Actor | None, action: str, target: str, before: object, after: object) -> None:
        """Append an audit entry (``shared.audit``) in this transaction: it commits, or rolls back, with the change."""
        audit.append(self.conn, actor=actor, action=action, target=target, before=before, after=after)


def duplicate(name: str, version: str) -> str:
    return f"model {name!r} version {version!r} already exists"


def insert(write: Write, row: Mapping[str, object]) -> ModelVersion:
    """INSERT ``row`` in the caller's write."""
    return write.touch(
        to_json(write.conn.execute(sa.insert(models).values(**row).returning(*models.c)).one()), names=True
    )


def version_target(model: Mapping[str, object]) -> str:
    """The audit target of a model version: ``version:<name>/<version>``."""
    return audit.target("version", str(model["name"]), str(model["version"]))


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
            f"{', '.join(repr(a) for a in sorted(aliases))}; before you {action}, point each alias at another "
            f"version (kinfer models promote {name} VERSION --alias ALIAS, or kinfer models split) or delete it "
            f"(kinfer models delete-alias {name} ALIAS)",
            code="version_aliased",
        )


def _drop_shadow(write: Write, actor: Actor | None, name: str, version: str) -> None:
    """Take ``version`` out of every alias's shadow map of ``name`` (one ``shadow.set`` entry per alias)."""
    mirrored = write.conn.execute(
        sa.select(model_aliases.c.alias, model_aliases.c.shadow)
        .where(model_aliases.c.name == name, model_aliases.c.shadow.has_key(version))
        .with_for_update()
    ).all()
    for row in mirrored:
        before = dict(row.shadow)
        after = {v: p for v, p in before.items() if v != version}
        write.conn.execute(
            sa.update(model_aliases)
            .where(model_aliases.c.name == name, model_aliases.c.alias == row.alias)
            .values(shadow=after, updated_at=sa.func.clock_timestamp())
        )
        write.audit(actor, "shadow.set", audit.target("shadow", name, row.alias), before, after)
    if mirrored:
        write.touch({"name": name})


class ModelRegistry(RegistryReads):
    """The model registry: its cached reads, its writes (each invalidating the cache) and the backend check."""

    insert = staticmethod(insert)  # ``registry.insert(write, row)``, also reachable as a method

    @contextmanager
    def writing(self) -> Iterator[Write]:
        """A transaction whose touched models are invalidated before its commit and again after it."""
        with self.db.begin() as conn:
            write = Write(conn)
            yield write
            for model, names in write.touched:
                self.invalidate(model, names=names, before_commit=True)
        for model, names in write.touched:
            self.invalidate(model, names=names)

    def create_model(self, body: object, actor: Actor | None = None) -> ModelVersion:
        """Register a version whose files Kinfer does not manage (``shared.lifecycle`` registers artifacts)."""
        row = validate_create(body)
        self.check_backends_allowed(row.get("backend_urls") or [], backend_field(body))
        row["id"] = uuid.uuid4()
        with conflict_on(duplicate(row["name"], row["version"]), field="version"), self.writing() as write:
            model = insert(write, row)
            write.audit(actor, "version.register", version_target(model), None, model)
            return model

    def update_model(self, raw_id: str, body: object, actor: Actor | None = None) -> ModelVersion:
        model_id = parse_id(raw_id)
        if isinstance(body, dict) and not ECHOED.isdisjoint(body):
            body = _without_echoed(body, self.get_model(raw_id))
        values: ModelChanges = validate_update(body)
        if "backend_urls" in values:
            self.check_backends_allowed(values["backend_urls"], backend_field(body))
        values["updated_at"] = sa.func.clock_timestamp()
        with self.writing() as write:
            conn = write.conn
            # FOR UPDATE: an alias move holds the row FOR SHARE; the audit entry needs the row as it was
            current = conn.execute(sa.select(models).where(models.c.id == model_id).with_for_update()).first()
            if current is None:
                raise NotFound(f"model {raw_id} not found")
            if values.get("status", ModelStatus.ACTIVE) != ModelStatus.ACTIVE:
                _refuse_if_aliased(conn, current.name, current.version, f"make it {values['status']}")
            row = conn.execute(
                sa.update(models).where(models.c.id == model_id).values(**values).returning(*models.c)
            ).one()
            model = write.touch(to_json(row))
            write.audit(actor, "version.update", version_target(model), to_json(current), model)
            return model

    def set_state(
        self, model_id: str, state: str, reason: str | None = None, only_from: tuple[str, ...] = ()
    ) -> ModelVersion | None:
        """Move a version's load state (the agents and the artifact path); None when ``only_from`` did not hold."""
        where = [models.c.id == uuid.UUID(model_id)]
        if only_from:
            where.append(models.c.state.in_(only_from))
        with self.writing() as write:
            row = write.conn.execute(
                sa.update(models)
                .where(*where)
                .values(state=state, state_reason=reason, updated_at=sa.func.clock_timestamp())
                .returning(*models.c)
            ).first()
            return None if row is None else write.touch(to_json(row))

    def delete_model(self, raw_id: str, actor: Actor | None = None) -> ModelVersion:
        """Delete a version (409 while an alias points at it); returns what was deleted. A version that aliases
        mirror to stops being their shadow (audited as ``shadow.set``): a version pushed later under the same
        number must not inherit the mirror, nor the old version's figures."""
        model_id = parse_id(raw_id)
        with self.writing() as write:
            conn = write.conn
            current = conn.execute(sa.select(models).where(models.c.id == model_id).with_for_update()).first()
            if current is None:
                raise NotFound(f"model {raw_id} not found")
            _refuse_if_aliased(conn, current.name, current.version, "delete it")
            conn.execute(sa.delete(models).where(models.c.id == model_id))
            model = write.touch(to_json(current), names=True)
            write.audit(actor, "version.delete", version_target(model), model, None)
            _drop_shadow(write, actor, current.name, current.version)
            return model

    def invalidate(self, model: Mapping[str, object], *, names: bool = False, before_commit: bool = False) -> None:
        """Drop the cached copies of ``model`` (and its name's view), bump the generation, announce the name.

        ``writing`` calls this twice for every model a write touches. Before its commit, a failure raises Unavailable
        so the transaction rolls back: a change that cannot be made visible through the cache is
        not made at all (a Redis that stalls would otherwise come back serving the old row
        until its TTL). After the commit, it removes what a reader filled in between.
        """
        name = str(model["name"])
        keys = [_view_key(name)]
        if "id" in model:
            keys.append(_id_key(model["id"]))
        if "version" in model:
            keys.append(_nv_key(name, str(model["version"])))
        if names:
            keys.append(NAMES_KEY)
        told = self.cache.invalidate(GEN_KEY, *keys, announce=(EVENTS_CHANNEL, name))
        if not told and before_commit:
            raise Unavailable(
                "the registry cache (Redis) cannot be reached, so the change could not be made "
                "visible everywhere; nothing was changed, retry shortly",
                retry_after=1,
            )

    def check_backends_allowed(self, urls: list[str], field: str = "backend_url") -> None:
        """Each URL must name this deployment's Triton (TRITON_URL, or ``triton`` with Triton's ports) or
        match BACKEND_ALLOWLIST, before anything contacts it."""
        own = backend_id(self.settings.triton_url)
        patterns = (own, *self.settings.backend_allowlist)
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
