"""KServe v2 takes as many rows as /v1/infer: past the model's max_batch_size they go to Triton in several
requests, and MAX_INFER_ROWS bounds them (both trial users found v2 refusing row 65 of a 64-row model)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from shared.backends.triton import ModelInfo, TensorSpec
from shared.errors import InvalidInput
from shared.inference.dataplane import DataPlane
from shared.inference.v2 import V2Protocol
from shared.settings import Settings

INFO = ModelInfo("lin", (TensorSpec("x", "FP32", (1,)),), (TensorSpec("y", "FP32", (1,)),), max_batch_size=64)
MODEL = {"name": "lin", "version": "1", "triton_model": "lin", "triton_version": 1, "backend_urls": []}


class _Resolver:
    async def resolve_async(self, name: str, version: str | None, route_key: str | None) -> dict[str, Any]:
        return dict(MODEL)

    def backend_urls(self, model: Any) -> list[str]:
        return ["triton:8001"]

    def shadow_of(self, name: str, version: str | None) -> tuple[None, list[Any]]:
        return None, []

    def record(self, model: Any, outcome: str, started: float) -> None:
        pass


class _Balancer:
    async def call_async(self, urls: list[str], attempt: Any, label: str) -> Any:
        return await attempt(urls[0])


class _Triton:
    """y = 2x, refusing more rows than the model's max_batch_size as Triton does."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def cached_info(self, url: str, tm: str, tv: Any) -> ModelInfo:
        return INFO

    async def infer(self, url: str, info: ModelInfo, arrays: Any, headers: Any, version: Any, who: Any) -> Any:
        rows = arrays["x"].shape[0]
        assert rows <= info.max_batch_size, "Triton refuses a batch over max_batch_size"
        self.batches.append(rows)
        return {"y": arrays["x"] * 2}


def _v2(triton: _Triton) -> V2Protocol:
    settings = Settings.from_env(environ={})
    plane = DataPlane(_Resolver(), _Balancer(), triton, lambda: triton, settings)  # type: ignore[arg-type]
    return V2Protocol(plane, plane.resolver, plane.balancer, triton, settings)  # type: ignore[arg-type]


def _body(rows: int) -> bytes:
    data = [float(i) for i in range(rows)]
    return json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 1], "data": data}]}).encode()


def test_rows_past_max_batch_size_are_sent_in_several_requests() -> None:
    triton = _Triton()
    answer = asyncio.run(
        _v2(triton).infer_v2("lin", None, _body(1024), {"content-type": "application/json"}, None, 0.0, None)
    )
    [out] = answer["outputs"]
    assert out["shape"] == [1024, 1] and out["data"] == [2.0 * i for i in range(1024)]
    assert sorted(triton.batches) == [64] * 16


def test_rows_past_max_infer_rows_are_refused_naming_the_limit() -> None:
    with pytest.raises(InvalidInput, match="MAX_INFER_ROWS") as refused:
        asyncio.run(
            _v2(_Triton()).infer_v2("lin", None, _body(1025), {"content-type": "application/json"}, None, 0.0, None)
        )
    assert refused.value.field == "inputs"
