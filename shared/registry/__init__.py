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

from shared.registry.reads import (
    Choice,
    Health,
    ModelPage,
    ModelView,
    OtherVersion,
    RegistryReads,
    ResolvedTarget,
    _servable,
    _summary,
    pick,
)
from shared.registry.rows import EVENTS_CHANNEL, GEN_KEY, SERVABLE, parse_id, to_json, version_key
from shared.registry.rules import (
    ALIAS,
    FRAMEWORKS,
    VERSION,
    ModelChanges,
    NewModel,
    backend_field,
    validate_create,
    validate_update,
)
from shared.registry.store import ModelRegistry, Write, duplicate, insert, version_target

__all__ = [
    "ALIAS",
    "EVENTS_CHANNEL",
    "FRAMEWORKS",
    "GEN_KEY",
    "SERVABLE",
    "VERSION",
    "Choice",
    "Health",
    "ModelChanges",
    "ModelPage",
    "ModelRegistry",
    "ModelView",
    "NewModel",
    "OtherVersion",
    "RegistryReads",
    "ResolvedTarget",
    "Write",
    "_servable",
    "_summary",
    "backend_field",
    "duplicate",
    "insert",
    "parse_id",
    "pick",
    "to_json",
    "validate_create",
    "validate_update",
    "version_key",
    "version_target",
]
