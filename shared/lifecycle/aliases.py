"""Aliases: named pointers to one version or to weighted versions of a model (canary splits).

``PUT /v1/models/by-name/{name}/aliases/{alias}`` takes ``{"version": "3"}`` or
``{"versions": {"3": 90, "4": 10}}`` (integer percentages summing to 100). A move is refused
with 409 unless every target version is active, ``ready``, and loaded on every live replica
of its backends (the agents' heartbeats), so an alias never routes to a version that cannot
answer: promotion costs no downtime. The value before the move is kept, and rollback moves
the alias back to it (after the same checks). Versions an alias points at cannot be deleted
or deactivated (409), so the agents keep them loaded.

A version may change the model's inputs and outputs (each config is its own, ``install``), but an
alias's callers must not be switched to another signature unasked: a move is refused with 409
``signature_mismatch`` (naming the difference: tensor names, datatypes, shapes) when a target version's
signature differs from the versions the alias points at, or from the other versions of a split, unless
the body says ``"allow_signature_change": true``. A rollback returns to a target the alias had, unchecked.
Versions whose files Kinfer does not manage have no known signature and are not compared.

``PUT .../aliases/{alias}/shadow`` takes ``{"shadow": {"4": 10}}``: that share of the alias's answered
requests is mirrored to each shadow version (``shared.lifecycle.shadow``), never answered from it; a shadow
version must be servable like a target, and ``{"shadow": {}}`` stops mirroring.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypedDict, cast

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from shared import audit, registry
from shared import validation as v
from shared.clients.schema import model_aliases, models, triton_models
from shared.domain import ModelState, ModelStatus
from shared.errors import Conflict, InvalidInput, NotFound
from shared.lifecycle import tritonconfig

if TYPE_CHECKING:
    from shared.audit import Actor
    from shared.clients.db import Database
    from shared.lifecycle.replicas import Replicas
    from shared.registry import ModelRegistry

MAX_SPLIT = 10
ALLOW_CHANGE = "allow_signature_change"


class Alias(TypedDict):
    """An alias as the API answers it: its target ({version: weight}) and the one before its last move."""

    name: str
    alias: str
    versions: dict[str, int]
    previous: dict[str, int] | None
    shadow: dict[str, int]
    created_at: str
    updated_at: str


class AliasList(TypedDict):
    """``GET /v1/models/by-name/{name}/aliases``."""

    name: str
    aliases: list[Alias]


def parse_target(body: object) -> dict[str, int]:
    """``{"version": "3"}`` -> ``{"3": 100}``; ``{"versions": {"3": 90, "4": 10}}`` as given (checked)."""
    body = v.require_object(body)
    v.reject_unknown(body, ("version", "versions", ALLOW_CHANGE))
    if ("version" in body) == ("versions" in body):
        raise InvalidInput('give "version": "3" or "versions": {"3": 90, "4": 10}', field="versions")
    if "version" in body:
        return {_version(body["version"], "version"): 100}
    raw = body["versions"]
    if not isinstance(raw, dict) or not 1 <= len(raw) <= MAX_SPLIT:
        raise InvalidInput(f"versions must map 1 to {MAX_SPLIT} versions to weights", field="versions")
    split = {}
    for version, weight in raw.items():
        _version(version, "versions")
        if not isinstance(weight, int) or isinstance(weight, bool) or not 1 <= weight <= 100:
            raise InvalidInput(
                f"the weight of version {version!r} must be an integer percentage from 1 to 100", field="versions"
            )
        split[version] = weight
    if sum(split.values()) != 100:
        raise InvalidInput(f"weights must add up to 100 (these add up to {sum(split.values())})", field="versions")
    return split


def parse_shadow(body: object) -> dict[str, int]:
    """``{"shadow": {"4": 10}}``: at most MAX_SHADOWS versions, each mirrored 1 to 100 % ({} stops)."""
    from shared.lifecycle.shadow import MAX_SHADOWS

    body = v.require_object(body)
    v.reject_unknown(body, ("shadow", ALLOW_CHANGE))
    raw = body.get("shadow")
    if not isinstance(raw, dict) or len(raw) > MAX_SHADOWS:
        raise InvalidInput(
            f'shadow must map at most {MAX_SHADOWS} versions to a percent, e.g. {{"shadow": {{"4": 10}}}}',
            field="shadow",
        )
    shadow = {}
    for version, percent in raw.items():
        _version(version, "shadow")
        if not isinstance(percent, int) or isinstance(percent, bool) or not 1 <= percent <= 100:
            raise InvalidInput(
                f"the percent of shadow version {version!r} must be an integer from 1 to 100", field="shadow"
            )
        shadow[version] = percent
    return shadow


def _version(raw: object, field: str) -> str:
    return v.string(raw, field, max_len=32, pattern=registry.VERSION, hint="expected a version such as 1 or 1.0")


def _alias(raw: str) -> str:
    return v.string(
        raw,
        "alias",
        max_len=64,
        pattern=registry.ALIAS,
        hint="start with a letter; then letters, digits, '_' or '-' (so it never looks like a version)",
    )


def to_json(name: str, row: Any) -> Alias:
    m = row._mapping
    return {
        "name": name,
        "alias": m["alias"],
        "versions": dict(m["versions"]),
        "previous": dict(m["previous"]) if m["previous"] else None,
        "shadow": dict(m.get("shadow") or {}),
        "created_at": m["created_at"].isoformat(),
        "updated_at": m["updated_at"].isoformat(),
    }


class Aliases:
    """Named, weighted pointers to versions: reading, moving (checked servable), rolling back, deleting."""

    def __init__(self, registry: ModelRegistry, replicas: Replicas, db: Database) -> None:
        self.registry = registry
        self.replicas = replicas
        self.db = db

    def get_alias(self, name: str, alias: str) -> Alias:
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(model_aliases).where(model_aliases.c.name == name, model_aliases.c.alias == alias)
            ).first()
        if row is None:
            raise NotFound(f"model {name[:128]!r} has no alias {alias[:64]!r}", code="alias_not_found")
        return to_json(name, row)

    def list_aliases(self, name: str) -> AliasList:
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(model_aliases).where(model_aliases.c.name == name).order_by(model_aliases.c.alias)
            ).all()
        if not rows:  # none, or no such model: 404 for a name never registered (with the close ones)
            self.registry.require_model(name)
        return {"name": name, "aliases": [to_json(name, r) for r in rows]}

    def put_alias(self, name: str, alias: str, body: object, actor: Actor | None = None) -> Alias:
        """Point ``alias`` at the versions of ``body``: 409 unless each is ready on every live replica.
        Audited as ``alias.move`` (one version) or ``alias.split`` (weighted versions)."""
        alias = _alias(alias)
        body = v.require_object(body)
        target = parse_target(body)
        allow = body.get(ALLOW_CHANGE, False)
        if not isinstance(allow, bool):
            raise InvalidInput(f"{ALLOW_CHANGE} must be true or false", field=ALLOW_CHANGE)
        field = "version" if "version" in body else "versions"
        action = "alias.split" if len(target) > 1 else "alias.move"
        return self._move(name, alias, lambda current: target, action, actor, None if allow else field)

    def rollback(self, name: str, alias: str, actor: Actor | None = None) -> Alias:
        """Move ``alias`` back to where it pointed before its last move."""

        def previous(current: Any) -> dict[str, int]:
            if current is None:
                raise NotFound(f"model {name!r} has no alias {alias!r}", code="alias_not_found")
            if not current.previous:
                raise Conflict(
                    f"alias {alias!r} of model {name!r} has not been moved yet: nothing to roll back to",
                    code="no_previous_target",
                )
            return dict(current.previous)

        return self._move(name, _alias(alias), previous, "alias.rollback", actor)

    def _move(
        self,
        name: str,
        alias: str,
        target_of: Callable[[Any], dict[str, int]],
        action: str,
        actor: Actor | None,
        signatures: str | None = None,
    ) -> Alias:
        """Move ``alias`` to ``target_of(current row)``; ``signatures``: the body field to blame when a target
        version's signature differs (None: not compared). A move audits ``action``; a move to where the alias
        already points changes nothing and audits nothing."""
        with self.registry.writing() as write:
            conn = write.conn
            current = conn.execute(
                sa.select(model_aliases)
                .where(model_aliases.c.name == name, model_aliases.c.alias == alias)
                .with_for_update()
            ).first()
            target = target_of(current)
            self._check_servable(conn, name, target)
            if signatures is not None:
                before = dict(current.versions) if current is not None else {}
                _check_signatures(conn, name, alias, target, before, signatures)
            previous = dict(current.versions) if current is not None else None
            if previous == target:
                return to_json(name, current)
            row = conn.execute(
                pg_insert(model_aliases)
                .values(name=name, alias=alias, versions=target, previous=previous)
                .on_conflict_do_update(
                    index_elements=["name", "alias"],
                    set_={"versions": target, "previous": previous, "updated_at": sa.func.clock_timestamp()},
                )
                .returning(*model_aliases.c)
            ).one()
            write.touch({"name": name})
            moved = to_json(name, row)
            was = to_json(name, current) if current is not None else None
            write.audit(actor, action, audit.target("alias", name, alias), was, moved)
            return moved

    def _check_servable(self, conn: Any, name: str, target: dict[str, int]) -> None:
        # FOR SHARE: a delete or a deactivation of these versions (FOR UPDATE) waits for this move, then sees
        # the alias and is refused; one that got there first makes this move find the version gone or inactive.
        query = sa.select(models).where(models.c.name == name, models.c.version.in_(list(target)))
        rows = {r.version: r for r in conn.execute(query.with_for_update(read=True))}
        if not rows and not conn.execute(sa.select(models.c.id).where(models.c.name == name).limit(1)).first():
            raise NotFound(f"model {name[:128]!r} not found")
        for version in target:
            row = rows.get(version)
            if row is None:
                raise NotFound(f"model {name!r} has no version {version!r}", code="version_not_found")
            if row.status != ModelStatus.ACTIVE:
                raise Conflict(
                    f"model {name!r} version {version!r} is {row.status}; only active versions can serve",
                    code="version_not_active",
                )
            if row.state != registry.SERVABLE:
                reason = f": {row.state_reason}" if row.state == ModelState.FAILED and row.state_reason else ""
                raise Conflict(
                    f"model {name!r} version {version!r} is {row.state}{reason}; an alias only moves to "
                    "versions that are ready (kinfer models show shows the load state)",
                    code="version_not_ready",
                )
            missing = self.replicas.not_ready(registry.to_json(row))
            if missing:
                raise Conflict(
                    f"model {name!r} version {version!r} is not loaded everywhere yet: "
                    f"{'; '.join(missing[:3])}; retry in a few seconds",
                    code="version_not_ready",
                )

    def set_split(
        self, name: str, alias: str, target: dict[str, int], actor: Actor | None = None, check: str | None = None
    ) -> Alias:
        """Move ``alias`` to ``target`` as given (an automatic rollout's step); ``check``: the field to blame when
        a version's signature differs (None: not compared)."""
        action = "alias.split" if len(target) > 1 else "alias.move"
        return self._move(name, _alias(alias), lambda current: target, action, actor, check)

    def set_shadow(self, name: str, alias: str, body: object, actor: Actor | None = None) -> Alias:
        """Mirror a share of ``alias``'s requests to the versions of ``body`` (409 unless each is servable and
        none is one the alias answers from)."""
        alias = _alias(alias)
        shadow = parse_shadow(body)
        allow = cast(dict[str, object], body).get(ALLOW_CHANGE, False)
        if not isinstance(allow, bool):
            raise InvalidInput(f"{ALLOW_CHANGE} must be true or false", field=ALLOW_CHANGE)
        with self.registry.writing() as write:
            conn = write.conn
            current = conn.execute(
                sa.select(model_aliases)
                .where(model_aliases.c.name == name, model_aliases.c.alias == alias)
                .with_for_update()
            ).first()
            if current is None:
                raise NotFound(f"model {name[:128]!r} has no alias {alias!r}", code="alias_not_found")
            both = sorted(set(shadow) & set(current.versions))
            if both:
                raise Conflict(
                    f"alias {alias!r} already answers from version {both[0]!r}; a shadow version is one it does "
                    "not answer from",
                    code="shadow_is_target",
                    field="shadow",
                )
            self._check_servable(conn, name, shadow)
            if not allow:  # a shadow that cannot take the alias's inputs would fail every mirrored request
                _check_signatures(conn, name, alias, dict(shadow), dict(current.versions), "shadow")
            row = conn.execute(
                sa.update(model_aliases)
                .where(model_aliases.c.name == name, model_aliases.c.alias == alias)
                .values(shadow=shadow, updated_at=sa.func.clock_timestamp())
                .returning(*model_aliases.c)
            ).one()
            write.touch({"name": name})
            after = to_json(name, row)
            write.audit(actor, "shadow.set", audit.target("shadow", name, alias), dict(current.shadow), after["shadow"])
            return after

    def delete_alias(self, name: str, alias: str, actor: Actor | None = None) -> None:
        with self.registry.writing() as write:
            conn = write.conn
            gone = conn.execute(
                sa.delete(model_aliases)
                .where(model_aliases.c.name == name, model_aliases.c.alias == alias)
                .returning(*model_aliases.c)
            ).first()
            if gone is None:
                raise NotFound(f"model {name[:128]!r} has no alias {alias[:64]!r}", code="alias_not_found")
            write.touch({"name": name})
            write.audit(actor, "alias.delete", audit.target("alias", name, alias), to_json(name, gone), None)


def _check_signatures(
    conn: Any, name: str, alias: str, target: dict[str, int], current: dict[str, int], field: str
) -> None:
    """409 ``signature_mismatch`` when a target version's inputs or outputs differ from the current target's,
    or from another target version's (a split)."""
    versions = list(dict.fromkeys([*target, *current]))
    rows = conn.execute(
        sa.select(models.c.version, triton_models.c.config)
        .select_from(models.join(triton_models, models.c.triton_model == triton_models.c.name))
        .where(models.c.name == name, models.c.version.in_(versions), models.c.repository_uri.is_not(None))
    ).all()
    configs = {r.version: r.config for r in rows if r.config is not None}
    known = [t for t in target if t in configs]
    pairs = [(c, t, True) for t in known for c in current if c in configs and c != t]
    pairs += [(known[0], t, False) for t in known[1:]]
    for first, second, moved in pairs:
        diff = tritonconfig.difference(configs[first], configs[second], f"version {first}", f"version {second}")
        if not diff:
            continue
        where = (
            f"alias {alias!r} of model {name!r} answers from version {first!r}, and version {second!r} has other "
            "inputs or outputs"
            if moved
            else f"a split of alias {alias!r} between versions {first!r} and {second!r} of model {name!r} mixes "
            "two signatures"
        )
        raise Conflict(
            f"{where}: {diff}; its callers would get answers of another shape. Send {ALLOW_CHANGE}: true "
            "(kinfer models promote/split --allow-signature-change) to move it anyway",
            code="signature_mismatch",
            field=field,
        )
