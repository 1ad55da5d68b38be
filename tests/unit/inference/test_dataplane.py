"""The real-time data plane with fakes for its collaborators (resolver, balancer, Triton, coalescer):
what ``run_inference`` validates, which path a request takes (one row through the coalescer, more rows
split at max_batch_size), the answer it builds and the outcome it records."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from shared.backends.triton import ModelInfo, TensorSpec
from shared.errors import InvalidInput, KinferError, ModelError
from shared.inference.dataplane import DataPlane
from shared.settings import Settings

INFO = ModelInfo(
    name="iris_tm",
    inputs=(TensorSpec("input", "FP32", (4,)),),
    outputs=(TensorSpec("probabilities", "FP32", (3,)),),
    max_batch_size=2,
    labels=("setosa", "versicolor", "virginica"),
)
MODEL = {"name": "iris", "version": "3", "triton_model": "iris_tm", "triton_version": 1, "backend_urls": []}


class _Resolver:
    def __init__(self) -> None:
        self.asked: list[tuple[str, str | None, str | None]] = []
        self.recorded: list[str] = []

    async def resolve_async(self, name: str, version: str | None, route_key: str | None) -> dict[str, Any]:
        self.asked.append((name, version, route_key))
        return dict(MODEL)

    def backend_urls(self, model: Mapping[str, Any]) -> list[str]:
        return ["triton:8001"]

    def record(self, model: Mapping[str, Any], outcome: str, started: float) -> None:
        self.recorded.append(outcome)


class _Balancer:
    async def call_async(self, urls: list[str], attempt: Any, label: str) -> Any:
        return await attempt(urls[0])

    async def wait_ready(self, urls: list[str], deadline: float) -> bool:
        return False


def _answer(arrays: Mapping[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
    rows = next(iter(arrays.values())).shape[0]
    out = np.zeros((rows, 3), dtype=np.float32)
    out[:, 1] = 1.0  # always "versicolor"
    return {"probabilities": out}


class _Triton:
    def __init__(self, fail: Exception | None = None) -> None:
        self.requests: list[int] = []
        self.fail = fail

    def cached_info(self, url: str, tm: str, tv: int | None) -> ModelInfo:
        return INFO

    async def model_info(self, url: str, tm: str, tv: int | None, who: str | None = None) -> ModelInfo:
        return INFO

    async def infer(self, url: str, info: ModelInfo, arrays: Any, headers: Any, version: Any, who: Any) -> Any:
        if self.fail is not None:
            raise self.fail
        self.requests.append(next(iter(arrays.values())).shape[0])
        return _answer(arrays)


class _Coalescer:
    def __init__(self) -> None:
        self.rows = 0

    async def infer(self, url: str, info: ModelInfo, arrays: Any, headers: Any, version: Any, who: Any) -> Any:
        self.rows += 1
        return _answer(arrays)


def _plane(triton: _Triton | None = None, **settings: Any) -> tuple[DataPlane, _Resolver, _Triton, _Coalescer]:
    resolver, triton, coalescer = _Resolver(), triton or _Triton(), _Coalescer()
    plane = DataPlane(
        resolver,  # type: ignore[arg-type]
        _Balancer(),  # type: ignore[arg-type]
        triton,  # type: ignore[arg-type]
        lambda: coalescer,  # type: ignore[arg-type,return-value]
        Settings.from_env(environ={}, **settings),
    )
    return plane, resolver, triton, coalescer


def _run(plane: DataPlane, body: Any, route_key: str | None = None) -> dict[str, Any]:
    return asyncio.run(plane.run_inference(body, route_key))  # type: ignore[arg-type]


def test_one_row_goes_through_the_coalescer_and_is_answered_with_its_label() -> None:
    plane, resolver, triton, coalescer = _plane()
    answer = _run(plane, {"model": "iris", "version": "production", "input": {"data": [5.1, 3.5, 1.4, 0.2]}}, "k1")
    assert resolver.asked == [("iris", "production", "k1")]
    assert coalescer.rows == 1 and triton.requests == []
    assert answer["model"] == "iris" and answer["version"] == "3"
    assert answer["prediction"] == "versicolor"
    assert answer["outputs"]["probabilities"] == [0.0, 1.0, 0.0]
    assert resolver.recorded == ["ok"]


def test_rows_beyond_max_batch_size_leave_in_several_requests_and_come_back_in_order() -> None:
    plane, _, triton, coalescer = _plane()
    rows = [[float(i), 0.0, 0.0, 0.0] for i in range(5)]
    answer = _run(plane, {"model": "iris", "input": {"data": rows}})
    assert sorted(triton.requests) == [1, 2, 2] and coalescer.rows == 0
    assert answer["prediction"] == ["versicolor"] * 5


@pytest.mark.parametrize(
    "body,field",
    [
        ({"input": [[1, 2, 3, 4]]}, "model"),
        ({"model": "iris"}, "input"),
        ({"model": "iris", "input": [[1, 2, 3, 4]], "extra": 1}, "extra"),
        ({"model": "x" * 200, "input": [[1, 2, 3, 4]]}, "model"),
        ({"model": "iris", "input": {"data": [[1, 2, 3]]}}, "input"),
    ],
)
def test_a_bad_body_is_400_naming_its_field_before_any_triton_call(body: dict[str, Any], field: str) -> None:
    plane, _, triton, coalescer = _plane()
    with pytest.raises(InvalidInput) as caught:
        _run(plane, body)
    assert caught.value.status == 400 and field in (caught.value.field or caught.value.message)
    assert triton.requests == [] and coalescer.rows == 0


def test_more_rows_than_max_infer_rows_point_to_batch_jobs() -> None:
    plane, _, triton, _ = _plane(max_infer_rows=3)
    with pytest.raises(InvalidInput, match="MAX_INFER_ROWS") as caught:
        _run(plane, {"model": "iris", "input": {"data": [[1.0, 2.0, 3.0, 4.0]] * 4}})
    assert "POST /v1/batch" in caught.value.message and triton.requests == []


def test_a_failure_is_recorded_with_its_code_and_raised() -> None:
    plane, resolver, _, _ = _plane(_Triton(fail=ModelError("model iris failed on this input")))
    with pytest.raises(KinferError) as caught:
        _run(plane, {"model": "iris", "input": {"data": [[1.0, 2.0, 3.0, 4.0]] * 3}})
    assert resolver.recorded == [caught.value.code]
