"""Per-replica readiness: each model agent's heartbeat in Redis, with a TTL.

An agent beats every few seconds: which Triton backend it serves, whether its first full
sync is done, and every (Triton model, version) its Triton has loaded or failed. A replica
that stops beating (scaled down, crashed) drops out after AGENT_HEARTBEAT_TTL_S. Readers ask
"is this version loaded on every live replica of its backends?" before they route to it.

Layout: ``kinfer:agents:<backend>`` is a sorted set of replica ids scored by expiry;
``kinfer:agent:<backend>:<replica>`` holds the replica's last heartbeat (JSON, same TTL).
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, NotRequired, TypedDict, cast

from shared.clients.cache import REDIS_ERRORS
from shared.endpoints import resolve
from shared.errors import Unavailable

if TYPE_CHECKING:
    from shared.clients.cache import Cache
    from shared.domain import ModelVersion
    from shared.settings import Settings

log = logging.getLogger(__name__)


class AgentStatus(TypedDict):
    """What a model agent says of its Triton (its ``/status`` and, with ``at``, its heartbeat)."""

    backend: str
    synced: bool
    triton: str  # "up" | "unreachable"
    loaded: dict[str, list[int]]  # {triton model: loaded versions}
    failed: dict[str, str]  # {"<triton model>/<version>": why its load failed here}
    error: str


class Heartbeat(AgentStatus):
    """A live replica's last heartbeat as read back from Redis."""

    at: float
    replica: str


class ReplicaLoad(TypedDict):
    """One replica in a version's load summary."""

    replica: str
    synced: bool
    loaded: bool
    failed: str | None


class BackendLoad(TypedDict):
    """Per backend in ``GET /v1/models/{id}/status``: live replicas and how many have the version."""

    live: int | None
    loaded: int | None
    replicas: list[ReplicaLoad]
    note: NotRequired[str]


def _set_key(backend: str) -> str:
    return f"kinfer:agents:{backend}"


def _beat_key(backend: str, replica: str) -> str:
    return f"kinfer:agent:{backend}:{replica}"


def has(beat_: AgentStatus, triton_model: str, version: int | None) -> bool:
    loaded = beat_.get("loaded", {}).get(triton_model)
    return loaded is not None and (version is None or version in loaded)


class Replicas:
    """The model agents' readiness heartbeats in Redis: writing, reading and summing them up."""

    def __init__(self, cache: Cache, settings: Settings) -> None:
        self.cache = cache
        self.settings = settings

    def backends_of(self, model: ModelVersion) -> list[str]:
        """The backends that serve a registry row: its backend_urls, else TRITON_URL."""
        own = self.settings.triton_url
        return list(dict.fromkeys(resolve(u, own) for u in model.get("backend_urls") or [own]))

    def beat(self, backend: str, replica: str, status: AgentStatus, ttl: float) -> bool:
        """Record this replica's status for ``ttl`` seconds; False when Redis could not be told."""
        now = time.time()
        try:
            pipe = self.cache.client.pipeline(transaction=False)
            pipe.set(_beat_key(backend, replica), json.dumps(dict(status, at=now)), px=int(ttl * 1000))
            pipe.zadd(_set_key(backend), {replica: now + ttl})
            pipe.zremrangebyscore(_set_key(backend), "-inf", now)
            pipe.pexpire(_set_key(backend), int(ttl * 4000))
            pipe.execute()
            return True
        except REDIS_ERRORS as exc:  # the replica simply looks silent until the next beat
            log.warning("heartbeat not recorded: %s", type(exc).__name__)
            return False

    def forget(self, backend: str, replica: str) -> None:
        try:
            self.cache.client.zrem(_set_key(backend), replica)
            self.cache.client.delete(_beat_key(backend, replica))
        except REDIS_ERRORS:  # best effort at shutdown; the TTL removes it anyway
            pass

    def live(self, backend: str) -> list[Heartbeat]:
        """The heartbeats of the replicas of ``backend`` that beat within their TTL (Unavailable without Redis)."""
        client = self.cache.client
        try:
            replicas = [
                r.decode() if isinstance(r, bytes) else str(r)
                for r in client.zrangebyscore(_set_key(backend), time.time(), "+inf")
            ]
            raw = client.mget([_beat_key(backend, r) for r in replicas]) if replicas else []
        except REDIS_ERRORS as exc:
            raise Unavailable("the replicas' heartbeats (Redis) cannot be read; retry shortly", retry_after=1) from exc
        return [
            cast(Heartbeat, dict(json.loads(value), replica=r)) for r, value in zip(replicas, raw, strict=True) if value
        ]

    def not_ready(self, model: ModelVersion) -> list[str]:
        """Why ``model`` is not loaded on every live, synced replica of its backends ([] when it is)."""
        if model.get("repository_uri") is None:
            return []  # files Kinfer does not manage: their Triton reports no per-version state to us
        tm, number = model["triton_model"], model.get("triton_version")
        missing = []
        for backend in self.backends_of(model):
            for replica in self.live(backend):
                if replica.get("synced") and not has(replica, tm, number):
                    failed = replica.get("failed", {}).get(f"{tm}/{number}")
                    missing.append(
                        f"replica {replica['replica']} of {backend} "
                        + (f"failed to load it: {failed}" if failed else "has not loaded it yet")
                    )
        return missing

    def summary(self, model: ModelVersion) -> dict[str, BackendLoad]:
        """Per backend: live replicas and those that have this version loaded (for GET .../status)."""
        out: dict[str, BackendLoad] = {}
        tm, number = model["triton_model"], model.get("triton_version")
        for backend in self.backends_of(model):
            try:
                beats = self.live(backend)
            except Unavailable:  # redis down: say so rather than fail the read
                out[backend] = {"live": None, "loaded": None, "replicas": [], "note": "heartbeats unavailable"}
                continue
            out[backend] = {
                "live": len(beats),
                "loaded": sum(1 for b in beats if has(b, tm, number)),
                "replicas": [
                    {
                        "replica": b["replica"],
                        "synced": bool(b.get("synced")),
                        "loaded": has(b, tm, number),
                        "failed": b.get("failed", {}).get(f"{tm}/{number}"),
                    }
                    for b in beats
                ],
            }
        return out
