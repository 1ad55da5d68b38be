"""The event relay's wiring, read from the same Knative manifests production applies.

KafkaSink (``eventing.knative.dev/v1alpha1``) names a topic; KafkaSource
(``sources.knative.dev/v1beta1``) subscribes a Service to topics with a
consumer group, ``spec.ordering`` (``ordered``, Knative's default: one event in
flight per partition; ``unordered``: several) and a delivery spec (retry,
backoff, dead-letter sink).
Service names become local URLs through a ``targets`` mapping.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, cast

import yaml

# Statuses Knative's dispatcher retries; a connection error or timeout (None) is retried too.
RETRYABLE_STATUSES = frozenset({404, 408, 409, 429})
DEFAULT_BACKOFF_DELAY_S = 0.5
ORDERINGS = frozenset({"ordered", "unordered"})
_DURATION = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?"
    r"(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


class Ref(TypedDict, total=False):
    """A Knative ``ref`` (a Service, locally)."""

    kind: str
    name: str


class Destination(TypedDict, total=False):
    """A Knative Destination: a ``ref``, a ``uri``, or a ref with a path as ``uri``."""

    ref: Ref
    uri: str


class DeliverySpec(TypedDict, total=False):
    """A Knative ``spec.delivery``."""

    retry: int
    backoffPolicy: str
    backoffDelay: str
    deadLetterSink: Destination
    timeout: str


class Spec(TypedDict, total=False):
    """The ``spec`` of a KafkaSink (``topic``) or a KafkaSource (the rest)."""

    topic: str
    topics: list[str]
    consumerGroup: str
    ordering: str
    initialOffset: str
    sink: Destination
    delivery: DeliverySpec


class Metadata(TypedDict, total=False):
    name: str
    namespace: str


class Manifest(TypedDict, total=False):
    """One YAML document of the manifests, as far as the relay reads it (untrusted: any key may be missing)."""

    apiVersion: str
    kind: str
    metadata: Metadata
    spec: Spec


class WiringError(ValueError):
    """A manifest is malformed or refers to a Service with no local target."""


def parse_iso_duration(text: str) -> float:
    """Seconds of an ISO-8601 duration such as ``PT0.5S``, ``PT1M30S`` or ``P1D``."""
    match = _DURATION.match(str(text).strip())
    if not match or text.strip() in {"P", "PT"} or str(text).strip().endswith("T"):
        raise WiringError(f"not an ISO-8601 duration: {text!r}")
    parts = {k: float(v) for k, v in match.groupdict().items() if v}
    return parts.get("d", 0) * 86400 + parts.get("h", 0) * 3600 + parts.get("m", 0) * 60 + parts.get("s", 0)


def is_retryable(status: int | None) -> bool:
    """Whether Knative would retry a delivery that ended with ``status`` (None = no response)."""
    return status is None or status >= 500 or status in RETRYABLE_STATUSES


@dataclass(frozen=True)
class Delivery:
    """A Knative ``spec.delivery``: retries after the first attempt, backoff, dead-letter URL."""

    retry: int = 0
    backoff_policy: str = "exponential"
    backoff_delay_s: float = DEFAULT_BACKOFF_DELAY_S
    dead_letter: str | None = None
    timeout_s: float | None = None

    def backoff(self, retry_number: int) -> float:
        """Seconds to wait before retry ``retry_number`` (1-based), as Knative computes it."""
        if self.backoff_policy == "linear":
            return self.backoff_delay_s * retry_number
        return float(self.backoff_delay_s * 2**retry_number)

    def schedule(self) -> list[float]:
        """Every backoff of a delivery that fails until its retries run out."""
        return [self.backoff(n) for n in range(1, self.retry + 1)]


@dataclass(frozen=True)
class Subscription:
    """One KafkaSource: deliver ``topics`` to ``sink`` as consumer group ``group``."""

    name: str
    namespace: str
    topics: tuple[str, ...]
    group: str
    sink: str
    delivery: Delivery = field(default_factory=Delivery)
    initial_offset: str = "latest"
    ordering: str = "ordered"


@dataclass(frozen=True)
class Wiring:
    """KafkaSinks by name (-> topic) and KafkaSources."""

    sinks: dict[str, str]
    subscriptions: tuple[Subscription, ...]

    def topics(self) -> list[str]:
        found = set(self.sinks.values())
        for sub in self.subscriptions:
            found.update(sub.topics)
        return sorted(found)


def iter_manifests(directory: str | Path) -> Iterable[tuple[Path, Manifest]]:
    """Every YAML document under ``directory`` (recursively), kustomization files skipped."""
    root = Path(directory)
    if not root.is_dir():
        raise WiringError(f"manifest directory not found: {root}")
    for path in sorted(list(root.rglob("*.yaml")) + list(root.rglob("*.yml"))):
        if path.name in {"kustomization.yaml", "kustomization.yml"}:
            continue
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as exc:
            raise WiringError(f"{path}: not valid YAML: {exc}") from None
        for doc in docs:
            if isinstance(doc, dict):
                yield path, cast(Manifest, doc)


def load_wiring(directory: str | Path, targets: Mapping[str, str]) -> Wiring:
    """Parse the KafkaSinks and KafkaSources under ``directory``; Services resolve via ``targets``."""
    sinks: dict[str, str] = {}
    subs: list[Subscription] = []
    for path, doc in iter_manifests(directory):
        kind, api = doc.get("kind"), str(doc.get("apiVersion", ""))
        if kind == "KafkaSink" and api.startswith("eventing.knative.dev/"):
            sinks[_name(doc, path)] = _require(doc, path, "spec", "topic")
        elif kind == "KafkaSource" and api.startswith("sources.knative.dev/"):
            subs.append(_subscription(doc, path, targets))
    return Wiring(sinks=sinks, subscriptions=tuple(subs))


def _subscription(doc: Manifest, path: Path, targets: Mapping[str, str]) -> Subscription:
    spec = doc.get("spec") or {}
    name = _name(doc, path)
    topics = spec.get("topics")
    if not topics or not isinstance(topics, list):
        raise WiringError(f"{path}: KafkaSource {name} has no spec.topics")
    ordering = str(spec.get("ordering") or "ordered").lower()
    if ordering not in ORDERINGS:
        raise WiringError(f"{path}: KafkaSource {name} spec.ordering must be ordered or unordered, not {ordering!r}")
    return Subscription(
        name=name,
        namespace=(doc.get("metadata") or {}).get("namespace") or "kinfer",
        topics=tuple(str(t) for t in topics),
        group=str(spec.get("consumerGroup") or name),
        sink=_destination(_require(doc, path, "spec", "sink"), targets, f"{path}: {name} spec.sink"),
        delivery=_delivery(spec.get("delivery") or {}, targets, f"{path}: {name} spec.delivery"),
        initial_offset=str(spec.get("initialOffset") or "latest").lower(),
        ordering=ordering,
    )


def _delivery(spec: DeliverySpec, targets: Mapping[str, str], where: str) -> Delivery:
    policy = str(spec.get("backoffPolicy") or "exponential").lower()
    if policy not in {"linear", "exponential"}:
        raise WiringError(f"{where}: backoffPolicy must be linear or exponential, not {policy!r}")
    dead = spec.get("deadLetterSink")
    delay = spec.get("backoffDelay")
    return Delivery(
        retry=int(spec.get("retry") or 0),
        backoff_policy=policy,
        backoff_delay_s=parse_iso_duration(delay) if delay else DEFAULT_BACKOFF_DELAY_S,
        dead_letter=_destination(dead, targets, f"{where}.deadLetterSink") if dead else None,
        timeout_s=parse_iso_duration(spec["timeout"]) if spec.get("timeout") else None,
    )


def _destination(dest: Destination, targets: Mapping[str, str], where: str) -> str:
    """A Knative Destination (ref to a Service, or a uri) as a local URL."""
    ref, uri = dest.get("ref"), dest.get("uri")
    if not ref:
        if not uri:
            raise WiringError(f"{where}: needs ref or uri")
        return str(uri)
    name = ref.get("name")
    if ref.get("kind", "Service") != "Service" or name is None or name not in targets:
        known = ", ".join(sorted(targets)) or "none"
        raise WiringError(f"{where}: no local target for {ref.get('kind')} {name!r} (targets: {known})")
    base = targets[name]
    return base.rstrip("/") + "/" + str(uri).lstrip("/") if uri else base


def _name(doc: Manifest, path: Path) -> str:
    name = (doc.get("metadata") or {}).get("name")
    if not name:
        raise WiringError(f"{path}: {doc.get('kind')} without metadata.name")
    return str(name)


def _require(doc: Manifest, path: Path, *keys: str) -> Any:
    """The value at ``keys`` (a walk through untrusted YAML); WiringError when it is missing or empty."""
    value: Any = doc
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    if not value:
        raise WiringError(f"{path}: {doc.get('kind')} {_name(doc, path)} needs {'.'.join(keys)}")
    return value
