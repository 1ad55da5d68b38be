"""Replay's pure parts: the capture window, which captured records can be replayed (v1 inputs as they
were, v2 tensors reshaped, redacted ones not), and the comparison of a candidate's answers."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from shared.batch.replay import compare, expected_of, parse_window, replay_input
from shared.errors import InvalidInput
from shared.inference.capture import REDACTED


def test_v1_inputs_replay_as_captured_and_redacted_ones_not() -> None:
    assert replay_input({"protocol": "v1", "input": {"data": [1, 2]}}) == {"data": [1, 2]}
    assert replay_input({"protocol": "v1", "input": {"data": REDACTED}}) is None
    assert replay_input({"protocol": "v1", "input": None}) is None


def test_v2_tensors_become_named_inputs_in_their_shape() -> None:
    record = {"protocol": "v2", "input": [{"name": "x", "shape": [2, 2], "data": [1, 2, 3, 4]}]}
    assert replay_input(record) == {"x": [[1, 2], [3, 4]]}
    assert replay_input({"protocol": "v2", "input": [{"name": "x", "shape": [1], "data": REDACTED}]}) is None
    assert replay_input({"protocol": "v2", "input": [{"name": "x", "parameters": {"binary_data_size": 4}}]}) is None
    outputs = [{"name": "p", "shape": [1, 2], "data": [0.5, 0.5]}]
    assert expected_of({"outputs": outputs, "request_id": "r-9", "timestamp": "t"}) == {
        "prediction": None,
        "outputs": {"p": [[0.5, 0.5]]},
        "request_id": "r-9",
        "timestamp": "t",
    }


def test_comparison_counts_equal_differing_failed_and_the_mean_absolute_difference() -> None:
    expected: list[dict[str, Any]] = [
        {"prediction": "a", "outputs": {"p": [0.9, 0.1]}},
        {"prediction": "a", "outputs": {"p": [0.6, 0.4]}, "request_id": "r-1"},
        {"prediction": None, "outputs": {"p": [[1.0, 0.0]]}},
        {"prediction": "b", "outputs": {"p": [0.1, 0.9]}},
    ]
    got = [
        {"index": 0, "prediction": "a", "outputs": {"p": [0.8, 0.2]}},
        {"index": 1, "prediction": "b", "outputs": {"p": [0.4, 0.6]}},
        {"index": 2, "prediction": ["x"], "outputs": {"p": [[1.0, 0.0]]}},
        {"index": 3, "error": "boom"},
    ]
    result = compare(expected, got, skipped=2)
    mad = result.pop("mean_abs_diff")  # type: ignore[misc]
    assert result.pop("differences") == [{"index": 1, "request_id": "r-1", "captured": "a", "replayed": "b"}]  # type: ignore[misc]
    assert result == {"compared": 3, "equal": 2, "differing": 1, "failed": 1, "skipped": 2}
    assert mad == pytest.approx((0.1 + 0.1 + 0.2 + 0.2 + 0 + 0) / 6)


@pytest.mark.parametrize(
    "window,field",
    [
        ("m", "from_capture"),
        ({"model": "m", "until": "2026-01-01T00:00:00Z"}, "from_capture.since"),
        ({"model": "m", "since": "noon", "until": "2026-01-01T00:00:00Z"}, "from_capture.since"),
        (
            {"model": "bad name!", "since": "2026-01-01T00:00:00Z", "until": "2026-01-02T00:00:00Z"},
            "from_capture.model",
        ),
        ({"model": "m", "since": "2026-01-01T00:00:00Z", "until": "2026-01-02T00:00:00Z", "x": 1}, "x"),
    ],
)
def test_a_bad_window_is_400_naming_its_field(window: object, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_window(window)
    assert caught.value.field == field


def test_a_window_without_a_zone_is_utc() -> None:
    window = {"model": "m", "version": "2", "since": "2026-01-01T10:00", "until": "2026-01-01T11:00Z"}
    model, version, since, until = parse_window(window)
    assert (model, version, since.utcoffset(), (until - since).total_seconds()) == ("m", "2", timedelta(0), 3600.0)
