"""Payload capture with a fake S3 and fake rules: sampling, redaction, the bounded queue (drops counted),
batches partitioned by model/version/date/hour, a failing S3 never raising, the data plane's hook
(answers and failures captured, nothing captured without a rule), and the settings' validation."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
from typing import Any

import pytest

from shared import telemetry
from shared.errors import InvalidInput, ModelError
from shared.inference.capture import REDACTED, Answer, Capture, CaptureRecord, Request, redacted
from shared.inference.capture_rules import CaptureRule, CaptureRules, parse_rule
from shared.settings import Settings
from tests.unit.inference.test_dataplane import _Balancer, _Coalescer, _Resolver, _Triton

ROW = [5.1, 3.5, 1.4, 0.2]


def rule(model: str, percent: float, redact: list[str] | None = None, alias: str | None = None) -> CaptureRule:
    return {
        "model": model,
        "alias": alias,
        "sample_percent": percent,
        "redact": redact or [],
        "updated_by": "t",
        "updated_at": None,
    }


class FakeRules:
    """``CaptureRules``' data-path half over a plain dict."""

    ttl_s = 0.05

    def __init__(self, *rules: CaptureRule) -> None:
        self.rules = {(r["model"], r["alias"] or ""): r for r in rules}
        self.refreshed = 0

    def rule_for(self, model: str, requested: str | None) -> CaptureRule | None:
        return CaptureRules.rule_for(self, model, requested)  # type: ignore[arg-type]

    @property
    def _rules(self) -> dict[tuple[str, str], CaptureRule]:
        return self.rules

    def refresh_if_stale(self) -> None:
        self.refreshed += 1

    def any(self) -> bool:
        return bool(self.rules)


class FakeS3:
    def __init__(self, fail: Exception | None = None) -> None:
        self.objects: dict[str, bytes] = {}
        self.fail = fail
        self.wrote = threading.Event()

    def __call__(self, bucket: str, key: str, data: bytes, content_type: str) -> None:
        if self.fail is not None:
            raise self.fail
        assert bucket == "cap-bucket" and content_type == "application/x-ndjson"
        self.objects[key] = data
        self.wrote.set()

    def records(self) -> list[dict[str, Any]]:
        out = []
        for key, data in self.objects.items():
            text = gzip.decompress(data) if key.endswith(".gz") else data
            out += [json.loads(line) for line in text.splitlines()]
        return out


def capture(rules: FakeRules, s3: FakeS3, draw: float = 0.5, **settings: Any) -> Capture:
    values = {"capture_bucket": "cap-bucket", "capture_flush_s": 3600.0, **settings}
    return Capture(rules, s3, Settings.from_env(environ={}, **values), draw=lambda: draw)  # type: ignore[arg-type]


def record(model: str = "iris", version: str = "3", n: int = 0) -> CaptureRecord:
    return {
        "request_id": f"r{n}",
        "trace_id": None,
        "key_id": "k",
        "model": model,
        "version": version,
        "requested": None,
        "protocol": "v1",
        "outcome": "ok",
        "status": 200,
        "latency_ms": 1.0,
        "timestamp": "2026-01-01T00:00:00+00:00",
        "input": {"features": ROW, "ssn": "123"},
        "redact": ["ssn"],
    }


def counter(name: str, **labels: str) -> float:
    return telemetry.metrics().registry.get_sample_value(name, labels) or 0.0


def test_sampling_follows_the_rule_and_the_alias_rule_wins() -> None:
    rules = FakeRules(rule("iris", 100, ["ssn"]), rule("iris", 0, alias="canary"), rule("half", 30))
    cap = capture(rules, FakeS3(), draw=0.5)
    assert cap.sampled("iris", None) == ["ssn"] and cap.sampled("iris", "production") == ["ssn"]
    assert cap.sampled("iris", "canary") is None  # the alias's own rule: 0 %
    assert cap.sampled("half", None) is None  # draw 0.5 >= 30 %
    assert capture(rules, FakeS3(), draw=0.2).sampled("half", None) == []
    assert cap.sampled("unknown", None) is None
    cap.close()


def test_a_flush_writes_jsonl_per_model_version_and_hour_with_inputs_redacted() -> None:
    s3 = FakeS3()
    cap = capture(FakeRules(), s3)
    for n in range(3):
        assert cap.offer(record(n=n))
    assert cap.offer(record("iris", "4", 9))
    assert cap.flush() == 4 and cap.pending() == 0
    keys = sorted(s3.objects)
    assert len(keys) == 2
    assert all(k.startswith(("capture/iris/3/", "capture/iris/4/")) and k.endswith(".jsonl") for k in keys)
    assert len(keys[0].split("/")) == 6  # capture/model/version/YYYY-MM-DD/HH/uuid.jsonl
    rows = s3.records()
    assert sorted(r["request_id"] for r in rows) == ["r0", "r1", "r2", "r9"]
    assert all(r["input"] == {"features": ROW, "ssn": REDACTED} and "redact" not in r for r in rows)


def test_gzip_objects_hold_the_same_lines() -> None:
    s3 = FakeS3()
    cap = capture(FakeRules(), s3, capture_gzip=True)
    cap.offer(record())
    cap.flush()
    [key] = s3.objects
    assert key.endswith(".jsonl.gz") and s3.records()[0]["input"]["ssn"] == REDACTED


def test_a_full_queue_drops_and_counts_by_records_and_by_bytes() -> None:
    before = counter("kinfer_capture_dropped_total", reason="queue_full")
    cap = capture(FakeRules(), FakeS3(), capture_queue_max=2, capture_queue_max_bytes=4096)
    assert cap.offer(record()) and cap.offer(record())
    assert not cap.offer(record())  # three records > CAPTURE_QUEUE_MAX
    cap.flush()
    big = record()
    big["input"] = {"features": [ROW] * 400}  # about 7 KiB serialised: beyond CAPTURE_QUEUE_MAX_BYTES
    assert not cap.offer(big)
    assert counter("kinfer_capture_dropped_total", reason="queue_full") == before + 2
    assert cap.pending() == 0


def test_s3_down_drops_the_batch_counted_and_never_raises() -> None:
    before = counter("kinfer_capture_dropped_total", reason="write_failed")
    written = counter("kinfer_capture_written_total")
    cap = capture(FakeRules(), FakeS3(fail=ConnectionError("S3 is down")))
    for n in range(3):
        cap.offer(record(n=n))
    assert cap.flush() == 0
    assert counter("kinfer_capture_dropped_total", reason="write_failed") == before + 3
    assert counter("kinfer_capture_written_total") == written


def test_the_writer_thread_flushes_a_full_batch_and_close_flushes_the_rest() -> None:
    s3 = FakeS3()
    rules = FakeRules(rule("iris", 100))
    cap = capture(rules, s3, capture_batch_max=2)
    assert cap.sampled("iris", None) == []  # starts the writer
    cap.offer(record(n=1))
    cap.offer(record(n=2))  # a full batch wakes the writer
    assert s3.wrote.wait(30)
    cap.offer(record(n=3))
    cap.close()
    assert sorted(r["request_id"] for r in s3.records()) == ["r1", "r2", "r3"] and rules.refreshed >= 1


def test_redaction_of_v1_inputs_and_v2_tensors() -> None:
    assert redacted({"a": 1, "b": 2}, ["b"]) == {"a": 1, "b": REDACTED}
    tensors = [{"name": "a", "data": [1]}, {"name": "b", "data": [2], "shape": [1]}]
    assert redacted(tensors, ["b"]) == [{"name": "a", "data": [1]}, {"name": "b", "data": REDACTED, "shape": [1]}]
    assert redacted({"a": 1}, []) == {"a": 1}


def test_the_data_shorthand_is_the_single_input_and_is_redacted_whenever_a_field_is() -> None:
    """``{"data": ...}`` (and KServe v1 instances, which become it) names no tensor: a rule redacting the model's
    one input wrote it in clear when the caller used the shorthand."""
    assert redacted({"data": [[1, 2]]}, ["x"]) == {"data": REDACTED}
    assert redacted({"data": [[1, 2]]}, []) == {"data": [[1, 2]]}
    assert redacted({"data": [1], "x": [2]}, ["x"]) == {"data": [1], "x": REDACTED}  # a model whose tensor is "data"


def test_record_keeps_outcome_status_version_and_outputs() -> None:
    cap = capture(FakeRules(), s3 := FakeS3())
    request = Request("iris", "production", "v1", "key-1", 0.0, {"data": ROW}, "3")
    cap.record(request, Answer("3", {"label": [1]}, "versicolor"), None, [])
    cap.record(Request("iris", None, "v2", None, 0.0, None), None, ModelError("boom"), [])
    cap.flush()
    ok, failed = sorted(s3.records(), key=lambda r: r["protocol"])
    assert (ok["outcome"], ok["status"], ok["version"], ok["requested"], ok["key_id"]) == (
        "ok",
        200,
        "3",
        "production",
        "key-1",
    )
    assert ok["outputs"] == {"label": [1]} and ok["prediction"] == "versicolor"
    assert (failed["outcome"], failed["status"], failed["version"]) == ("model_error", 422, "_")
    assert "outputs" not in failed


# -- the data plane's hook ---------------------------------------------------------------------------------
def plane(cap: Capture, triton: _Triton | None = None) -> Any:
    from shared.inference.dataplane import DataPlane

    coalescer = _Coalescer()
    return DataPlane(
        _Resolver(),  # type: ignore[arg-type]
        _Balancer(),  # type: ignore[arg-type]
        triton or _Triton(),  # type: ignore[arg-type]
        lambda: coalescer,  # type: ignore[arg-type,return-value]
        Settings.from_env(environ={}),
        capture=cap,
    )


def test_the_data_plane_captures_answers_and_failures_of_sampled_models_only() -> None:
    s3 = FakeS3()
    cap = capture(FakeRules(rule("iris", 100, ["data"])), s3)
    body = {"model": "iris", "version": "production", "input": {"data": ROW}}
    answer = asyncio.run(plane(cap).run_inference(body, "rk", 0.0, "key-9"))
    asyncio.run(plane(cap).run_inference({"model": "other", "input": {"data": ROW}}))
    rows = {**body, "input": {"data": [ROW, ROW, ROW]}}  # beyond max_batch_size: straight to Triton
    with pytest.raises(ModelError):
        asyncio.run(plane(cap, _Triton(fail=ModelError("bad model"))).run_inference(rows, None, 0.0, "key-9"))
    with pytest.raises(InvalidInput):
        asyncio.run(plane(cap).run_inference({"model": "iris", "input": {"data": [1.0]}}))
    cap.flush()
    rows = sorted(s3.records(), key=lambda r: r["timestamp"])
    assert [r["outcome"] for r in rows] == ["ok", "model_error", "invalid_input"]
    assert all(r["model"] == "iris" and r["version"] == "3" and r["input"] == {"data": REDACTED} for r in rows)
    assert rows[0]["prediction"] == answer["prediction"] and rows[0]["key_id"] == rows[1]["key_id"] == "key-9"
    assert rows[0]["outputs"] == answer["outputs"] and rows[2]["status"] == 400


@pytest.mark.parametrize(
    "body,field",
    [
        ({}, "sample_percent"),
        ({"sample_percent": 101}, "sample_percent"),
        ({"sample_percent": True}, "sample_percent"),
        ({"sample_percent": 5, "redact": "ssn"}, "redact"),
        ({"sample_percent": 5, "redact": [1]}, "redact[0]"),
        ({"sample_percent": 5, "alias": "no such!"}, "alias"),
        ({"sample_percent": 5, "other": 1}, "other"),
    ],
)
def test_a_bad_setting_is_400_naming_its_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_rule(body)
    assert caught.value.field == field


def test_a_good_setting_is_normalised() -> None:
    assert parse_rule({"sample_percent": 12.5, "redact": ["b", "a", "b"], "alias": "canary"}) == (
        12.5,
        ["a", "b"],
        "canary",
    )


def test_a_record_that_cannot_be_serialised_is_dropped_and_counted_never_raised() -> None:
    before = counter("kinfer_capture_dropped_total", reason="unserialisable")
    cap = capture(FakeRules(), FakeS3())
    bad = record()
    bad["input"] = {"features": [2**70]}  # valid JSON, beyond what a record can hold
    assert not cap.offer(bad) and cap.pending() == 0
    assert counter("kinfer_capture_dropped_total", reason="unserialisable") == before + 1


def test_timestamps_are_iso_8601_utc_with_microseconds_across_second_boundaries() -> None:
    from datetime import UTC, datetime

    from shared.inference.capture import _timestamp

    for now in (1_700_000_000.0, 1_700_000_000.999999, 1_700_000_001.5, 1_700_000_000.25, 1_800_000_059.000001):
        text = _timestamp(now)
        parsed = datetime.fromisoformat(text)
        assert parsed.tzinfo == UTC and text.endswith("+00:00")
        assert abs(parsed.timestamp() - now) < 2e-6, (now, text)


def test_s3_objects_connect_once_and_the_writer_warms_them_once_a_capture_setting_exists() -> None:
    from shared.inference.capture import S3Objects

    made: list[int] = []

    def connect() -> object:
        made.append(1)
        return object()

    objects = S3Objects(connect)
    objects.warm()
    objects.warm()
    assert made == [1]

    class Warmed:
        warmed = threading.Event()

        def warm(self) -> None:
            self.warmed.set()

        def __call__(self, bucket: str, key: str, data: bytes, content_type: str) -> None:
            pass

    idle = Warmed()
    capture = Capture(FakeRules(), idle, Settings.from_env(environ={}))  # type: ignore[arg-type]
    capture.sampled("m", None)  # the first request starts the writer; with no capture setting, no S3 client
    assert not idle.warmed.wait(0.3), "the writer readied S3 with nothing to capture"
    capture.close()

    put = Warmed()
    capture = Capture(FakeRules(rule("m", 100)), put, Settings.from_env(environ={}))  # type: ignore[arg-type]
    capture.sampled("m", None)
    assert put.warmed.wait(5), "the writer did not build its S3 client before a batch was due"
    capture.close()


def test_close_writes_what_is_queued_then_closes_the_writer_process() -> None:
    events: list[str] = []

    class Closing:
        def __call__(self, bucket: str, key: str, data: bytes, content_type: str) -> None:
            events.append(f"put {key.split('/')[1]}")

        def close(self) -> None:
            events.append("close")

    capture = Capture(FakeRules(), Closing(), Settings.from_env(environ={}))  # type: ignore[arg-type]
    capture.offer(record())
    capture.close()
    assert events == ["put iris", "close"]


def test_records_queued_during_a_flush_wait_for_the_next_one_instead_of_becoming_tiny_objects() -> None:
    """Under load records keep arriving while a batch is written; a flush that chased them wrote an object per
    handful of records (458 objects for 16,000 requests, a few records each)."""
    puts: list[int] = []
    cap: Capture

    def put(bucket: str, key: str, data: bytes, content_type: str) -> None:
        puts.append(data.count(b"\n"))
        for n in range(3):  # requests answered while this object was being written
            cap.offer(record(n=n))

    cap = Capture(FakeRules(), put, Settings.from_env(environ={}, capture_batch_max=4))  # type: ignore[arg-type]
    for n in range(10):
        cap.offer(record(n=n))
    assert cap.flush() == 10
    assert puts == [4, 4, 2] and cap.pending() == 9
    assert cap.flush() == 9
    assert puts[3:] == [4, 4, 1]
