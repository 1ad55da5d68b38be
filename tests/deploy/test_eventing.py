"""Eventing semantics of knative/ (issue 10, majors 4 and 5, minor retry budget).

- A KafkaSource's delivery order is ``spec.ordering`` (default ``ordered``: one event in
  flight per partition); the ``kafka.eventing.knative.dev/delivery.order`` annotation is
  read from Triggers only.
- A KafkaSink with ``numPartitions``/``replicationFactor`` owns its topic: it only creates
  a missing one, deletes it with the sink, and the fields are immutable. Topics are sized
  by their Strimzi KafkaTopic (knative/strimzi) only.
- Deliveries that need Triton retry for longer than a Triton cold start may take: the
  bound is Triton's ``serving.knative.dev/progress-deadline`` (how long Knative waits for
  a revision to become ready), and Knative's dispatcher waits ``backoffDelay * n``
  (linear) or ``backoffDelay * 2^n`` (exponential) before retry n.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from shared.localstack.relay.wiring import parse_iso_duration
from tests.deploy.support import (
    KNATIVE,
    OVERLAYS,
    TF,
    Doc,
    annotations,
    knative_release,
    ksvcs,
    of_kind,
    parse,
    render,
    render_with_component,
    typed,
)

TRIGGER_ONLY_ANNOTATION = "kafka.eventing.knative.dev/delivery.order"
OWNERSHIP_FIELDS = {"numPartitions", "replicationFactor"}
# KafkaSources whose subscriber calls Triton, and the ordering each needs.
TRITON_BOUND = {"batch-worker-source"}
ORDERING = {"batch-worker-source": "unordered", "batch-intake-source": "ordered"}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Doc]]:
    found = {name: render(KNATIVE / "overlays" / name) for name in OVERLAYS}
    found["prod+triton-warm"] = render_with_component(tmp_path_factory.mktemp("warm"), "prod", "triton-warm")
    return found


def test_every_kafka_source_sets_its_ordering(rendered: dict[str, list[Doc]]) -> None:
    for overlay, docs in rendered.items():
        sources = of_kind(docs, "KafkaSource", "sources.knative.dev")
        assert set(sources) == set(ORDERING), overlay
        for name, source in sources.items():
            assert source["spec"].get("ordering") == ORDERING[name], (
                f"{overlay}: KafkaSource {name} needs spec.ordering: {ORDERING[name]} (the default is ordered)"
            )
            assert TRIGGER_ONLY_ANNOTATION not in source["metadata"].get("annotations", {}), (
                f"{overlay}: {name}: {TRIGGER_ONLY_ANNOTATION} is read from Triggers only"
            )


def test_no_kafka_sink_owns_its_topic(rendered: dict[str, list[Doc]]) -> None:
    for overlay, docs in rendered.items():
        for name, sink in of_kind(docs, "KafkaSink", "eventing.knative.dev").items():
            owned = OWNERSHIP_FIELDS & set(sink["spec"])
            assert not owned, f"{overlay}: KafkaSink {name} sets {sorted(owned)}: size the topic in Strimzi only"


def test_every_topic_is_a_strimzi_kafka_topic_sized_by_terraform(rendered: dict[str, list[Doc]]) -> None:
    topics = {t["spec"]["topicName"]: t for t in of_kind(render(KNATIVE / "strimzi"), "KafkaTopic").values()}
    for overlay, docs in rendered.items():
        used = {s["spec"]["topic"] for s in of_kind(docs, "KafkaSink").values()}
        used |= {t for s in of_kind(docs, "KafkaSource").values() for t in s["spec"]["topics"]}
        assert used <= set(topics), f"{overlay}: topics without a KafkaTopic: {sorted(used - set(topics))}"
    overlay = typed(parse(TF / "modules" / "kafka")["data"], "kustomization_overlay")["strimzi"]
    chunk_patch = [p for p in overlay["patches"] if "kinfer-batch-chunks" in str(p.get("target"))]
    assert chunk_patch and "var.chunk_partitions" in chunk_patch[0]["patch"], "partitions come from terraform"


def backoffs(delivery: dict[str, Any]) -> list[float]:
    """Knative's wait before each retry (eventing-kafka-broker's dispatcher: retry n counts from 1)."""
    delay = parse_iso_duration(delivery["backoffDelay"])
    linear = delivery.get("backoffPolicy", "exponential") == "linear"
    return [delay * n if linear else delay * 2**n for n in range(1, int(delivery.get("retry", 0)) + 1)]


def cold_start_bound_s(docs: list[Doc]) -> float:
    deadline = annotations(ksvcs(docs)["triton"])["serving.knative.dev/progress-deadline"]
    match = re.fullmatch(r"(\d+)(s|m|h)", deadline)
    assert match, f"progress-deadline {deadline}"
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]


def test_triton_bound_deliveries_retry_longer_than_a_cold_start(rendered: dict[str, list[Doc]]) -> None:
    for overlay, docs in rendered.items():
        bound = cold_start_bound_s(docs)
        assert bound >= 15 * 60, f"{overlay}: a GPU cold start (node, image, models) takes minutes"
        sources = of_kind(docs, "KafkaSource")
        for name in TRITON_BOUND:
            delivery = sources[name]["spec"]["delivery"]
            budget = sum(backoffs(delivery))
            assert budget > bound, (
                f"{overlay}: {name} gives up after {budget:.0f}s of backoff, before a Triton "
                f"cold start may end ({bound:.0f}s, progress-deadline)"
            )
            assert max(backoffs(delivery)) <= 600, f"{overlay}: {name}: a chunk should not idle >10m once Triton is up"
            assert delivery.get("deadLetterSink"), f"{overlay}: {name} needs a dead-letter sink"


def test_backoff_formula_matches_the_relay() -> None:
    """The local relay delivers with the same schedule the test assumes for Knative."""
    from shared.localstack.relay.wiring import Delivery

    for policy in ("linear", "exponential"):
        spec = {"retry": 4, "backoffPolicy": policy, "backoffDelay": "PT2S"}
        assert backoffs(spec) == Delivery(retry=4, backoff_policy=policy, backoff_delay_s=2.0).schedule()


def test_the_chunk_consumers_can_keep_every_worker_busy(rendered: dict[str, list[Doc]]) -> None:
    """An unordered KafkaSource consumer stops polling at ``max.poll.records`` events in flight
    (knative-extensions/eventing-kafka-broker, data-plane/config/source/100-config-kafka-source-data-plane.yaml:
    50 at knative-v1.16.0 and at the pinned release, whose fixture holds it), and ``spec.consumers`` defaults
    to 1: without consumers, 50 chunks at most are in flight however many workers run. Consumers beyond the
    topic's partitions would sit idle."""
    config = (knative_release("eventing_kafka") / "eventing-kafka-source.yaml").read_text()
    per_consumer = int(re.search(r"^\s*max\.poll\.records=(\d+)$", config, re.M).group(1))  # type: ignore[union-attr]
    partitions = {"dev": 12, "prod": 24, "prod+triton-warm": 24}  # terraform/main.tf chunk_partitions
    for overlay, docs in rendered.items():
        source = of_kind(docs, "KafkaSource")["batch-worker-source"]["spec"]
        worker = ksvcs(docs)["batch-worker"]["spec"]["template"]
        capacity = int(annotations({"spec": {"template": worker}})["autoscaling.knative.dev/max-scale"]) * int(
            worker["spec"]["containerConcurrency"]
        )
        consumers = source.get("consumers", 1)
        assert consumers * per_consumer >= capacity, f"{overlay}: {consumers} x {per_consumer} < {capacity}"
        assert consumers <= partitions[overlay], f"{overlay}: more consumers than partitions"
    terraform = (TF / "main.tf").read_text()
    assert 'coalesce(var.kafka_chunk_partitions, var.overlay == "prod" ? 24 : 12)' in terraform
