"""The relay's reading of Knative manifests, its backoff schedule and its retry classification."""

from __future__ import annotations

import pytest

from shared.localstack.relay.delivery import Dispatcher
from shared.localstack.relay.server import DEFAULT_MANIFESTS, parse_targets
from shared.localstack.relay.wiring import (
    Delivery,
    Subscription,
    WiringError,
    is_retryable,
    load_wiring,
    parse_iso_duration,
)
from tests.conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "knative" / "relay"
TARGETS = {
    "batch-worker": "http://127.0.0.1:8086/",
    "batch-deadletter": "http://127.0.0.1:8087/",
    "batch-intake": "http://127.0.0.1:8085/",
    "backends": "http://127.0.0.1:8081/",
}


@pytest.mark.parametrize(
    "text,seconds",
    [("PT0.5S", 0.5), ("PT0.05S", 0.05), ("PT1M30S", 90.0), ("PT2H", 7200.0), ("P1D", 86400.0), ("P1DT1S", 86401.0)],
)
def test_iso_durations(text, seconds):
    assert parse_iso_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "P", "PT", "0.5", "PT1", "PTS", "1S", "PT-1S"])
def test_bad_iso_durations_are_refused(text):
    with pytest.raises(WiringError, match="ISO-8601"):
        parse_iso_duration(text)


def test_exponential_and_linear_backoff_schedules():
    assert Delivery(retry=5, backoff_delay_s=0.5).schedule() == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert Delivery(retry=3, backoff_policy="linear", backoff_delay_s=0.2).schedule() == pytest.approx([0.2, 0.4, 0.6])
    assert Delivery(retry=0).schedule() == []


@pytest.mark.parametrize("status", [None, 404, 408, 409, 429, 500, 502, 503, 504])
def test_statuses_knative_retries(status):
    assert is_retryable(status)


@pytest.mark.parametrize("status", [400, 401, 403, 405, 410, 413, 422])
def test_statuses_knative_does_not_retry(status):
    assert not is_retryable(status)


def test_fixture_manifests_give_sinks_sources_and_delivery():
    wiring = load_wiring(FIXTURES, TARGETS)
    assert wiring.sinks == {"batch-chunks": "test.batch.chunks", "batch-requests": "test.batch.requests"}
    worker, intake = sorted(wiring.subscriptions, key=lambda s: s.name, reverse=True)
    assert (worker.name, worker.group, worker.topics) == (
        "batch-worker-source",
        "test-batch-worker",
        ("test.batch.chunks",),
    )
    assert worker.sink == "http://127.0.0.1:8086/" and worker.namespace == "kinfer-test"
    assert worker.delivery == Delivery(
        retry=3, backoff_policy="exponential", backoff_delay_s=0.05, dead_letter="http://127.0.0.1:8087/"
    )
    assert intake.sink == "http://127.0.0.1:8085/events"  # ref plus uri path
    assert intake.delivery.dead_letter is None and intake.delivery.backoff_policy == "linear"
    assert intake.delivery.timeout_s == 5.0 and intake.initial_offset == "earliest"
    assert (worker.ordering, intake.ordering) == ("unordered", "ordered")  # Knative's default is ordered
    assert wiring.topics() == ["test.batch.chunks", "test.batch.requests"]


def test_missing_target_is_named(tmp_path):
    with pytest.raises(WiringError, match="batch-deadletter"):
        load_wiring(FIXTURES, {k: v for k, v in TARGETS.items() if k != "batch-deadletter"})


def test_malformed_manifests_are_refused(tmp_path):
    (tmp_path / "a.yaml").write_text(
        "apiVersion: sources.knative.dev/v1beta1\nkind: KafkaSource\n"
        "metadata: {name: s}\nspec: {sink: {uri: 'http://x/'}}\n"
    )
    with pytest.raises(WiringError, match="spec.topics"):
        load_wiring(tmp_path, TARGETS)
    (tmp_path / "a.yaml").write_text("kind: [unclosed\n")
    with pytest.raises(WiringError, match="not valid YAML"):
        load_wiring(tmp_path, TARGETS)
    with pytest.raises(WiringError, match="not found"):
        load_wiring(tmp_path / "missing", TARGETS)


def test_bad_backoff_policy_is_refused(tmp_path):
    (tmp_path / "s.yaml").write_text(
        "apiVersion: sources.knative.dev/v1beta1\nkind: KafkaSource\nmetadata: {name: s}\n"
        "spec: {topics: [t], sink: {uri: 'http://x/'}, delivery: {backoffPolicy: random}}\n"
    )
    with pytest.raises(WiringError, match="backoffPolicy"):
        load_wiring(tmp_path, TARGETS)


def test_bad_ordering_is_refused(tmp_path):
    (tmp_path / "s.yaml").write_text(
        "apiVersion: sources.knative.dev/v1beta1\nkind: KafkaSource\nmetadata: {name: s}\n"
        "spec: {topics: [t], ordering: parallel, sink: {uri: 'http://x/'}}\n"
    )
    with pytest.raises(WiringError, match="spec.ordering"):
        load_wiring(tmp_path, TARGETS)


@pytest.mark.parametrize("ordering,in_flight", [("unordered", 8), ("ordered", 1)])
def test_ordering_sets_how_many_deliveries_are_in_flight(ordering, in_flight):
    sub = Subscription(name="s", namespace="kinfer", topics=("t",), group="g", sink="http://x/", ordering=ordering)
    dispatcher = Dispatcher(None, sub, key_prefix="p:", consumer="c", session=None, workers=8)
    assert dispatcher.workers == in_flight


def test_parse_targets():
    assert parse_targets(["batch-worker=http://127.0.0.1:8086/"]) == {"batch-worker": "http://127.0.0.1:8086/"}
    with pytest.raises(ValueError, match="NAME=http"):
        parse_targets(["batch-worker:8086"])


def test_real_knative_base_follows_the_functions_table():
    """The repository's own manifests (knative/base) wire the relay as functions_table.md says."""
    wiring = load_wiring(DEFAULT_MANIFESTS, TARGETS)
    assert wiring.sinks.get("batch-chunks") == "kinfer.batch.chunks"
    subs = {s.name: s for s in wiring.subscriptions}
    worker = subs["batch-worker-source"]
    assert worker.topics == ("kinfer.batch.chunks",) and worker.group == "kinfer-batch-worker"
    assert worker.sink == TARGETS["batch-worker"]
    assert worker.delivery == Delivery(
        retry=10, backoff_policy="linear", backoff_delay_s=30.0, dead_letter=TARGETS["batch-deadletter"]
    )
    assert worker.ordering == "unordered" and subs["batch-intake-source"].ordering == "ordered"
    intake = subs["batch-intake-source"]
    assert intake.topics == ("kinfer.batch.requests",) and intake.sink == TARGETS["batch-intake"]
    assert intake.delivery.retry == 3 and intake.delivery.backoff_delay_s == 0.5
    assert intake.delivery.backoff_policy == "exponential"
