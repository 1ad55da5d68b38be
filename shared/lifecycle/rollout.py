"""Automatic rollouts: an alias moved to a candidate version step by step, behind gates (``gates.decide``).

``POST /v1/models/by-name/{name}/aliases/{alias}/rollout`` starts one: the alias must point at one version
(the baseline); it is split at once to the first step, and the rollout's state lives in ``alias_rollouts``
(PostgreSQL). The controller's ``tick`` (the backends function: its PingSource tick and a loop of its own
every ``ROLLOUT_TICK_S``) decides for every running rollout. Invariants a reader must not break: one
decision at a time cluster-wide (a tick runs only while it holds a transaction-scoped PostgreSQL advisory
lock, and rows are locked FOR UPDATE, so replicas that tick together never both act); a step's figures are
the per-version counters since the step began (a snapshot kept in the row, see ``gates``); every change of
state (start, step, promote, rollback, pause, resume, abort) is written to the audit log with the figures it
used. A paused rollout keeps its split and decides nothing; resuming starts a fresh step window.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypedDict

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from shared import audit
from shared.backends.metrics import BUCKETS, read_counters
from shared.clients.schema import alias_rollouts
from shared.errors import Conflict, NotFound
from shared.lifecycle import gates
from shared.lifecycle.metrics import LATENCY_KEY, REQUESTS_KEY, ROWS_KEY
from shared.registry import VERSION

if TYPE_CHECKING:
    from shared.audit import Actor, AuditLog
    from shared.clients.cache import Cache
    from shared.clients.db import Database
    from shared.lifecycle.aliases import Aliases
    from shared.settings import Settings

log = logging.getLogger(__name__)

LOCK_KEY = 0x4B494E46  # pg advisory lock of the rollout leader ("KINF")
RUNNING, PAUSED = "running", "paused"
ACTIVE = (RUNNING, PAUSED)
SYSTEM = "rollout-gate"


class RolloutStatus(TypedDict):
    """``GET .../aliases/{alias}/rollout``: the policy, where it is, its state and the figures it last used."""

    name: str
    alias: str
    baseline: str
    candidate: str
    policy: gates.Policy
    step: int
    percent: int
    state: str
    reason: str
    figures: gates.Figures | None
    step_started_at: str
    created_at: str
    updated_at: str


def _split(baseline: str, candidate: str, percent: int) -> dict[str, int]:
    return {candidate: 100} if percent >= 100 else {baseline: 100 - percent, candidate: percent}


def _to_json(row: Any) -> RolloutStatus:
    policy: gates.Policy = dict(row.policy)  # type: ignore[assignment]
    return {
        "name": row.name,
        "alias": row.alias,
        "baseline": row.baseline,
        "candidate": row.candidate,
        "policy": policy,
        "step": row.step,
        "percent": policy["steps"][row.step],
        "state": row.state,
        "reason": row.reason,
        "figures": row.figures,
        "step_started_at": row.step_started_at.isoformat(),
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }


def counts_of(requests: dict[str, int], latency: dict[str, float], name: str, version: str) -> gates.Counts:
    """One version's counters from the per-version hashes (``lifecycle.metrics``)."""
    prefix = f"{name}|{version}|"
    outcomes = {f[len(prefix) :]: n for f, n in requests.items() if f.startswith(prefix)}
    buckets = [latency.get(f"{prefix}{i}", 0.0) for i in range(len(BUCKETS) + 1)]
    return {"outcomes": outcomes, "buckets": buckets}


class Rollouts:
    """Starts, shows, pauses, resumes and aborts rollouts; ``tick`` is the leader's decision loop."""

    def __init__(self, db: Database, cache: Cache, aliases: Aliases, audit_log: AuditLog, settings: Settings) -> None:
        self.db = db
        self.cache = cache
        self.aliases = aliases
        self.audit_log = audit_log
        self.settings = settings
        self._ticking = False
        self._stop = threading.Event()
        self._lock = threading.Lock()

    # -- figures ---------------------------------------------------------------------------------------
    def _counters(self) -> tuple[dict[str, int], dict[str, float]]:
        requests, latency, _ = read_counters(self.cache.client, REQUESTS_KEY, LATENCY_KEY, ROWS_KEY)
        return requests, latency

    def _snapshot(self, name: str, baseline: str, candidate: str) -> dict[str, gates.Counts]:
        requests, latency = self._counters()
        return {v: counts_of(requests, latency, name, v) for v in (baseline, candidate)}

    # -- the API ---------------------------------------------------------------------------------------
    def start(self, name: str, alias: str, body: object, actor: Actor | None = None) -> RolloutStatus:
        """Split ``alias`` between its one version and the candidate at the first step; 409 when it points at
        several versions, already at the candidate, or has a rollout running."""
        policy = gates.parse_policy(body, VERSION)
        with self.db.begin() as conn:
            # Two starts at once on an alias that never had a rollout find no row to lock: this lock makes the
            # second wait for the first, then see its rollout (409).
            key = sa.literal(f"alias_rollouts:{name}/{alias}")
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(key))))
            found = self._row(conn, name, alias, lock=True)
            if found is not None and found.state in ACTIVE:
                raise Conflict(
                    f"alias {alias!r} of model {name!r} has a rollout {found.state} (to version "
                    f"{found.candidate!r}); abort it first",
                    code="rollout_active",
                )
            return self._start(conn, name, alias, policy, actor)

    def _start(self, conn: Any, name: str, alias: str, policy: gates.Policy, actor: Actor | None) -> RolloutStatus:
        current = self.aliases.get_alias(name, alias)
        if len(current["versions"]) != 1:
            raise Conflict(
                f"alias {alias!r} of model {name!r} is split ({current['versions']}); a rollout starts from an "
                "alias that points at one version",
                code="alias_split",
            )
        baseline = next(iter(current["versions"]))
        if baseline == policy["candidate"]:
            raise Conflict(f"alias {alias!r} already points at version {baseline!r}", code="already_there")
        first = _split(baseline, policy["candidate"], policy["steps"][0])
        self.aliases.set_split(name, alias, first, actor, check="candidate")
        values = {
            "baseline": baseline,
            "candidate": policy["candidate"],
            "policy": policy,
            "step": 0,
            "state": RUNNING,
            "reason": f"started at {policy['steps'][0]} %",
            "snapshot": self._snapshot(name, baseline, policy["candidate"]),
            "figures": None,
            "step_started_at": sa.func.clock_timestamp(),
            "created_by": actor.key_name[:128] if actor else "",
            "created_at": sa.func.clock_timestamp(),
            "updated_at": sa.func.clock_timestamp(),
        }
        row = conn.execute(
            pg_insert(alias_rollouts)
            .values(name=name, alias=alias, **values)
            .on_conflict_do_update(index_elements=["name", "alias"], set_=values)
            .returning(*alias_rollouts.c)
        ).one()
        self._audit(conn, actor, "rollout.start", row, before=current["versions"], after=_to_json(row))
        return _to_json(row)

    def status(self, name: str, alias: str) -> RolloutStatus:
        with self.db.read() as conn:
            row = self._row(conn, name, alias)
        if row is None:
            raise NotFound(f"alias {alias[:64]!r} of model {name[:128]!r} has no rollout", code="rollout_not_found")
        return _to_json(row)

    def pause(self, name: str, alias: str, actor: Actor | None = None) -> RolloutStatus:
        return self._set_state(name, alias, RUNNING, PAUSED, "rollout.pause", actor)

    def resume(self, name: str, alias: str, actor: Actor | None = None) -> RolloutStatus:
        return self._set_state(name, alias, PAUSED, RUNNING, "rollout.resume", actor)

    def abort(self, name: str, alias: str, actor: Actor | None = None) -> RolloutStatus:
        """Stop the rollout and send every request back to the baseline."""
        with self.db.begin() as conn:
            row = self._active(conn, name, alias)
            self.aliases.set_split(name, alias, {row.baseline: 100}, actor)
            after = self._update(conn, row, state="aborted", reason="aborted: the alias is back on the baseline")
            self._audit(conn, actor, "rollout.abort", row, before=_to_json(row), after=after)
            return after

    def _set_state(self, name: str, alias: str, old: str, new: str, action: str, actor: Actor | None) -> RolloutStatus:
        with self.db.begin() as conn:
            row = self._active(conn, name, alias)
            if row.state != old:
                raise Conflict(f"the rollout of alias {alias!r} is {row.state}, not {old}", code="rollout_" + row.state)
            changes: dict[str, object] = {"state": new, "reason": f"{new} by {actor.key_name if actor else 'an admin'}"}
            if new == RUNNING:  # a fresh window: what happened while paused is not this step's
                changes["snapshot"] = self._snapshot(name, row.baseline, row.candidate)
                changes["step_started_at"] = sa.func.clock_timestamp()
            after = self._update(conn, row, **changes)
            self._audit(conn, actor, action, row, before=_to_json(row), after=after)
            return after

    def _row(self, conn: Any, name: str, alias: str, lock: bool = False) -> Any:
        query = sa.select(alias_rollouts).where(alias_rollouts.c.name == name, alias_rollouts.c.alias == alias)
        return conn.execute(query.with_for_update() if lock else query).first()

    def _active(self, conn: Any, name: str, alias: str) -> Any:
        row = self._row(conn, name, alias, lock=True)
        if row is None:
            raise NotFound(f"alias {alias[:64]!r} of model {name[:128]!r} has no rollout", code="rollout_not_found")
        if row.state not in ACTIVE:
            raise Conflict(f"the rollout of alias {alias!r} has ended ({row.state})", code="rollout_ended")
        return row

    def _update(self, conn: Any, row: Any, **changes: object) -> RolloutStatus:
        updated = conn.execute(
            sa.update(alias_rollouts)
            .where(alias_rollouts.c.name == row.name, alias_rollouts.c.alias == row.alias)
            .values(**changes, updated_at=sa.func.clock_timestamp())
            .returning(*alias_rollouts.c)
        ).one()
        return _to_json(updated)

    def _audit(self, conn: Any, actor: Actor | None, action: str, row: Any, before: object, after: object) -> None:
        who = actor or audit.Actor.system(SYSTEM)
        target = audit.target("rollout", row.name, row.alias)
        self.audit_log.record(conn, actor=who, action=action, target=target, before=before, after=after)

    # -- the controller --------------------------------------------------------------------------------
    def tick(self) -> list[RolloutStatus]:
        """Decide once for every running rollout, if this process is the leader; the rollouts it changed."""
        changed: list[RolloutStatus] = []
        with self.db.begin() as conn:
            if not conn.execute(sa.select(sa.func.pg_try_advisory_xact_lock(LOCK_KEY))).scalar():
                return changed  # another replica decides now
            rows = conn.execute(
                sa.select(alias_rollouts, sa.func.clock_timestamp().label("now"))
                .where(alias_rollouts.c.state == RUNNING)
                .with_for_update(of=alias_rollouts)
            ).all()
            if not rows:
                return changed
            requests, latency = self._counters()
            for row in rows:
                done = self._check_alias(conn, row) or self._decide(conn, row, requests, latency)
                if done is not None:
                    changed.append(done)
        return changed

    def _check_alias(self, conn: Any, row: Any) -> RolloutStatus | None:
        """End a rollout whose alias was moved or deleted by hand (the controller never overrides a person)."""
        policy: gates.Policy = dict(row.policy)  # type: ignore[assignment]
        expected = _split(row.baseline, row.candidate, policy["steps"][row.step])
        try:
            found: dict[str, int] | None = self.aliases.get_alias(row.name, row.alias)["versions"]
        except NotFound:
            found = None
        if found == expected:
            return None
        reason = f"aborted: the alias was {'deleted' if found is None else f'moved to {found}'} outside the rollout"
        after = self._update(conn, row, state="aborted", reason=reason)
        self._audit(conn, None, "rollout.abort", row, before=_to_json(row), after=after)
        return after

    def _decide(self, conn: Any, row: Any, requests: dict[str, int], latency: dict[str, float]) -> RolloutStatus | None:
        policy: gates.Policy = dict(row.policy)  # type: ignore[assignment]
        now = {v: counts_of(requests, latency, row.name, v) for v in (row.baseline, row.candidate)}
        then = row.snapshot or {}
        elapsed = (row.now - row.step_started_at).total_seconds()
        found = gates.figures(
            gates.window(now[row.baseline], then.get(row.baseline)),
            gates.window(now[row.candidate], then.get(row.candidate)),
            elapsed,
        )
        decision = gates.decide(policy, row.step, found)
        if decision["action"] == "hold":
            self._update(conn, row, figures=found, reason=decision["reason"])
            return None
        step, state, split = row.step, RUNNING, {row.baseline: 100}
        if decision["action"] == "step":
            step = row.step + 1
            split = _split(row.baseline, row.candidate, policy["steps"][step])
        elif decision["action"] == "promote":
            step, state, split = len(policy["steps"]) - 1, "promoted", {row.candidate: 100}
        else:
            state = "rolled_back"
        try:
            self.aliases.set_split(row.name, row.alias, split, audit.Actor.system(SYSTEM))
        except Conflict as exc:  # e.g. a replica has not loaded the candidate yet: decide again next tick
            self._update(conn, row, figures=found, reason=f"waiting: {exc}")
            return None
        after = self._update(
            conn,
            row,
            step=step,
            state=state,
            reason=decision["reason"],
            figures=found,
            snapshot=now,
            step_started_at=sa.func.clock_timestamp(),
        )
        before = {"split": _split(row.baseline, row.candidate, policy["steps"][row.step]), "step": row.step}
        self._audit(
            conn,
            None,
            f"rollout.{decision['action']}",
            row,
            before=before,
            after={"split": split, "step": step, "state": state, "reason": decision["reason"], "figures": found},
        )
        log.info("rollout %s/%s: %s (%s)", row.name, row.alias, decision["action"], decision["reason"])
        return after

    def ensure_ticking(self) -> None:
        """Start this process's decision loop (a daemon thread, every ``ROLLOUT_TICK_S``) once."""
        with self._lock:
            if self._ticking:
                return
            self._ticking = True
        threading.Thread(target=self._loop, name="rollout-gate", daemon=True).start()

    def tick_safely(self) -> int:
        """``tick``, its failure logged and never raised (the probe tick and the loop outlive an outage)."""
        try:
            return len(self.tick())
        except Exception as exc:
            log.warning("rollout tick failed at %s: %s", datetime.now(UTC).isoformat(), type(exc).__name__)
            return 0

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.rollout_tick_s):
            self.tick_safely()

    def close(self) -> None:
        """Stop this process's decision loop (``Services.close``): no tick runs after its database is closed."""
        self._stop.set()
