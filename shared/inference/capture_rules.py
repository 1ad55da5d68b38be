"""Capture settings: which requests of a registered model are captured, and which input fields are redacted.

A rule belongs to a model name (``alias`` ''), or to a model name and the alias (or version) a caller
names in its request; the narrower rule wins. Rules live in PostgreSQL (``capture_settings``); the data
path reads them from an in-process copy of the whole (small) table, so a lookup is a dict access. The
copy is reloaded by the capture writer thread every CAPTURE_RULES_TTL_S, and at once in the process that
changed a rule; a failed reload keeps the last copy. Every change is audit-logged in its transaction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypedDict

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from shared import validation as v
from shared.audit import target
from shared.clients.schema import capture_settings as table
from shared.errors import InvalidInput, KinferError, NotFound
from shared.registry.rules import ALIAS, NAME, VERSION

if TYPE_CHECKING:
    from shared.audit import Actor, AuditLog
    from shared.clients.db import Database
    from shared.registry.reads import RegistryReads

log = logging.getLogger(__name__)

FIELDS = ("sample_percent", "redact", "alias")
MAX_REDACT = 64
MAX_FIELD = 128


class CaptureRule(TypedDict):
    """One capture setting as the API shows it."""

    model: str
    alias: str | None
    sample_percent: float
    redact: list[str]
    updated_by: str
    updated_at: str | None


class CapturePage(TypedDict):
    settings: list[CaptureRule]


def check_alias(raw: object, field: str = "alias") -> str:
    """'' (every request of the model) or an alias or version name."""
    if raw is None or raw == "":
        return ""
    value = v.string(raw, field, max_len=64)
    if not (ALIAS.fullmatch(value) or VERSION.fullmatch(value)):
        raise InvalidInput(f"{field} {value[:64]!r} is neither an alias nor a version", field=field)
    return value


def check_name(raw: str) -> str:
    return v.string(raw, "name", max_len=128, pattern=NAME, hint="letters, digits, '.', '_' and '-'")


def parse_rule(body: object) -> tuple[float, list[str] | None, str]:
    """(sample_percent, redact, alias) of a PUT body (redact None: absent, the current list stays); 400 naming
    the field otherwise."""
    request = v.require_object(body)
    v.reject_unknown(request, FIELDS)
    if "sample_percent" not in request:
        raise InvalidInput("sample_percent is required (0-100)", field="sample_percent")
    percent = request["sample_percent"]
    if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 <= percent <= 100:
        raise InvalidInput("sample_percent must be a number from 0 to 100", field="sample_percent")
    if "redact" not in request:
        return float(percent), None, check_alias(request.get("alias"))
    redact = request["redact"]
    if not isinstance(redact, list) or len(redact) > MAX_REDACT:
        raise InvalidInput(f"redact must be a list of at most {MAX_REDACT} input field names", field="redact")
    fields = [v.string(f, f"redact[{i}]", max_len=MAX_FIELD) for i, f in enumerate(redact)]
    return float(percent), sorted(set(fields)), check_alias(request.get("alias"))


def _rule(row: Any) -> CaptureRule:
    at: datetime | None = row.updated_at
    return {
        "model": row.model_name,
        "alias": row.alias or None,
        "sample_percent": row.sample_percent,
        "redact": list(row.redact),
        "updated_by": row.updated_by,
        "updated_at": at.isoformat() if at is not None else None,
    }


class CaptureRules:
    """The capture settings: CRUD in PostgreSQL, and the cached copy the data path reads."""

    def __init__(self, db: Database, audit: AuditLog, ttl_s: float, registry: RegistryReads) -> None:
        self.db = db
        self.audit = audit
        self.registry = registry
        self.ttl_s = ttl_s
        self._rules: dict[tuple[str, str], CaptureRule] = {}
        self._loaded_at = float("-inf")
        self._loading = threading.Lock()

    # -- the data path -------------------------------------------------------------------
    def rule_for(self, model: str, requested: str | None) -> CaptureRule | None:
        """The rule for a request of ``model`` naming ``requested`` (an alias or version, None: none named)."""
        rules = self._rules
        if not rules:
            return None
        if requested:
            found = rules.get((model, requested))
            if found is not None:
                return found
        return rules.get((model, ""))

    def any(self) -> bool:
        """Whether any model or alias has a capture setting (the last copy loaded)."""
        return bool(self._rules)

    def refresh_if_stale(self) -> None:
        if time.monotonic() - self._loaded_at >= self.ttl_s:
            self.refresh()

    def refresh(self) -> None:
        """Reload the whole table (the last copy stays when PostgreSQL does not answer)."""
        with self._loading:
            try:
                with self.db.read() as conn:
                    rows = conn.execute(sa.select(table)).all()
            except KinferError as exc:
                log.warning("capture settings not reloaded: %s", exc.message)
                return
            self._rules = {(r.model_name, r.alias): _rule(r) for r in rows}
            self._loaded_at = time.monotonic()

    # -- the API -------------------------------------------------------------------------
    def put(self, name: str, body: object, actor: Actor) -> CaptureRule:
        """Create or replace a rule (audit-logged as ``capture.set``); without ``redact`` an existing rule keeps its
        list (a new sampling rate must never turn redaction off by omission: ``"redact": []`` clears it)."""
        name = check_name(name)
        percent, redact, alias = parse_rule(body)
        view = self.registry.view(name)
        if not view["active"] and not view["others"]:  # a typo would capture nothing, silently
            raise NotFound(f"no model named {name!r} (kinfer models list shows them)")
        if alias and alias not in view["aliases"] and alias not in view["active"] and alias not in view["others"]:
            raise NotFound(
                f"model {name!r} has no alias or version {alias!r} (kinfer models aliases {name} and "
                f"kinfer models versions {name} list them)",
                field="alias",
            )
        with self.db.begin() as conn:
            before = self._read(conn, name, alias)
            if redact is None:
                redact = before["redact"] if before is not None else []
            values = {"sample_percent": percent, "redact": redact, "updated_by": actor.key_name[:128]}
            stmt = insert(table).values(model_name=name, alias=alias, **values)
            stmt = stmt.on_conflict_do_update(
                index_elements=[table.c.model_name, table.c.alias], set_={**values, "updated_at": sa.func.now()}
            )
            conn.execute(stmt)
            after = self._read(conn, name, alias)
            self.audit.record(
                conn, actor=actor, action="capture.set", target=_target(name, alias), before=before, after=after
            )
        self.refresh()
        assert after is not None
        return after

    def get(self, name: str, alias: object = None) -> CaptureRule:
        name, key = check_name(name), check_alias(alias)
        with self.db.read() as conn:
            found = self._read(conn, name, key)
        if found is None:
            raise NotFound(_missing(name, key))
        return found

    def delete(self, name: str, alias: object, actor: Actor) -> None:
        """Remove a rule (capture stops; audit-logged as ``capture.delete``); 404 when there is none."""
        name, key = check_name(name), check_alias(alias)
        with self.db.begin() as conn:
            before = self._read(conn, name, key)
            if before is None:
                raise NotFound(_missing(name, key))
            conn.execute(table.delete().where(table.c.model_name == name, table.c.alias == key))
            self.audit.record(
                conn, actor=actor, action="capture.delete", target=_target(name, key), before=before, after=None
            )
        self.refresh()

    def list_rules(self, args: Mapping[str, str]) -> CapturePage:
        """Every rule (``?model=`` narrows to one model), by model then alias."""
        query = sa.select(table).order_by(table.c.model_name, table.c.alias)
        if args.get("model"):
            query = query.where(table.c.model_name == check_name(args["model"]))
        with self.db.read() as conn:
            return {"settings": [_rule(r) for r in conn.execute(query.limit(1000)).all()]}

    @staticmethod
    def _read(conn: Any, name: str, alias: str) -> CaptureRule | None:
        row = conn.execute(sa.select(table).where(table.c.model_name == name, table.c.alias == alias)).first()
        return None if row is None else _rule(row)


def _target(name: str, alias: str) -> str:
    return target("capture", name, alias) if alias else target("capture", name)


def _missing(name: str, alias: str) -> str:
    where = f"model {name!r}" + (f" alias {alias!r}" if alias else "")
    return f"no capture setting for {where} (kinfer capture set)"
