"""Shadow versions: the data plane mirrors an alias's answered requests to its shadow versions after the answer
is ready, never delays or fails the answer (a shadow that errors or hangs), drops mirrors past the bound, and
the summary shows agreement, the largest numeric difference and latency per pair (fakes for Triton and Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from shared.backends.triton import ModelInfo, TensorSpec
from shared.errors import InvalidInput, ModelError
from shared.inference.dataplane import DataPlane
from shared.lifecycle.aliases import parse_shadow
from shared.lifecycle.shadow import ShadowMirror, ShadowStats, compare
from shared.settings import Settings

INFO = ModelInfo(
    name="iris_tm",
    inputs=(TensorSpec("input", "FP32", (4,)),),
    outputs=(TensorSpec("probabilities", "FP32", (3,)),),
    max_batch_size=4,
    labels=("setosa", "versicolor", "virginica"),
)
PRIMARY = {"name": "iris", "version": "3", "triton_model": "iris_tm", "triton_version": 3, "backend_urls": []}
SHADOW = {**PRIMARY, "version": "4", "triton_version": 4}
BODY = {"model": "iris", "version": "production", "input": {"data": [5.1, 3.5, 1.4, 0.2]}}


class _Hashes:
    """Just enough of a Redis client for the tallies: hashes, and a pipeline (adds, the max script, reads)."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, float]] = {}
        self.client: Any = self

    def available(self) -> bool:
        return True

    def pipeline(self, transaction: bool = False) -> _Pipe:
        return _Pipe(self)

    def hgetall(self, key: str) -> dict[bytes, bytes]:
        return {f.encode(): repr(v).encode() for f, v in self.data.get(key, {}).items()}


class _Pipe:
    def __init__(self, hashes: _Hashes) -> None:
        self.hashes, self.ops = hashes, []

    def hincrby(self, key: str, field: str, value: float) -> None:
        self.ops.append(("add", key, field, value))

    hincrbyfloat = hincrby

    def eval(self, script: str, n: int, key: str, field: str, value: str) -> None:
        self.ops.append(("max", key, field, float(value)))

    def hgetall(self, key: str) -> None:
        self.ops.append(("get", key, "", 0.0))

    def execute(self) -> list[Any]:
        results: list[Any] = []
        for op, key, field, value in self.ops:
            if op == "get":
                results.append(self.hashes.hgetall(key))
                continue
            table = self.hashes.data.setdefault(key, {})
            table[field] = table.get(field, 0) + value if op == "add" else max(value, table.get(field, -1.0))
        return results


class _Resolver:
    def __init__(self, shadows: list[tuple[int, dict[str, Any]]]) -> None:
        self.shadows = shadows
        self.recorded: list[tuple[str, str]] = []

    async def resolve_async(self, name: str, version: str | None, route_key: str | None) -> dict[str, Any]:
        return dict(PRIMARY)

    def shadow_of(self, name: str, version: str | None) -> tuple[str | None, list[tuple[int, dict[str, Any]]]]:
        return ("production" if self.shadows else None), self.shadows

    def backend_urls(self, model: Mapping[str, Any]) -> list[str]:
        return ["triton:8001"]

    def record(self, model: Mapping[str, Any], outcome: str, started: float) -> None:
        self.recorded.append((model["version"], outcome))


class _Balancer:
    async def call_async(self, urls: list[str], attempt: Any, label: str) -> Any:
        return await attempt(urls[0])

    async def wait_ready(self, urls: list[str], deadline: float) -> bool:
        return False


class _Triton:
    def cached_info(self, url: str, tm: str, tv: Any) -> ModelInfo:
        return INFO


class _Coalescer:
    """Version 3 answers versicolor; version 4 answers ``shadow_label`` after ``gate`` opens, or fails."""

    def __init__(self, shadow_label: int = 1, fail: bool = False) -> None:
        self.shadow_label, self.fail = shadow_label, fail
        self.gate: asyncio.Event | None = None
        self.calls: list[str] = []

    async def infer(self, url: str, info: ModelInfo, arrays: Any, headers: Any, version: Any, who: Any) -> Any:
        self.calls.append(str(version))
        out = np.zeros((1, 3), dtype=np.float32)
        if str(version) == "4":
            if self.gate is not None:
                await self.gate.wait()
            if self.fail:
                raise ModelError("the shadow model raised")
            out[0, self.shadow_label] = 0.75
        else:
            out[0, 1] = 1.0
        return {"probabilities": out}


def _plane(
    coalescer: _Coalescer, percent: int = 100, max_pending: int = 8, flush_s: float = 1.0
) -> tuple[DataPlane, ShadowMirror, _Hashes]:
    cache = _Hashes()
    mirror = ShadowMirror(cache, max_pending=max_pending, timeout_s=5, flush_s=flush_s)  # type: ignore[arg-type]
    plane = DataPlane(
        _Resolver([(percent, dict(SHADOW))]),  # type: ignore[arg-type]
        _Balancer(),  # type: ignore[arg-type]
        _Triton(),  # type: ignore[arg-type]
        lambda: coalescer,  # type: ignore[arg-type,return-value]
        Settings.from_env(environ={}),
        mirror,
    )
    return plane, mirror, cache


async def _drain() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def _pairs(mirror: ShadowMirror, cache: _Hashes) -> list[Any]:
    mirror.close()
    return ShadowStats(cache).pairs("iris", "production")  # type: ignore[arg-type]


def test_compare_says_whether_labels_agree_and_the_largest_numeric_difference() -> None:
    same, diff = compare(("versicolor", {"p": [0.0, 1.0, 0.0]}), ("versicolor", {"p": [0.0, 0.75, 0.25]}))
    assert same is True and diff == pytest.approx(0.25)
    same, diff = compare(("a", {"p": [1, 2], "s": "x"}), ("b", {"p": [1, 2, 3], "s": "x"}))
    assert same is False and diff is None  # shapes differ, text is not numeric: nothing comparable


def test_an_answer_through_the_alias_is_mirrored_and_the_pair_recorded() -> None:
    coalescer = _Coalescer(shadow_label=1)
    plane, mirror, cache = _plane(coalescer)

    async def go() -> dict[str, Any]:
        answer = await plane.run_inference(BODY)
        await _drain()
        return dict(answer)

    answer = asyncio.run(go())
    assert answer["version"] == "3" and answer["prediction"] == "versicolor"
    assert coalescer.calls == ["3", "4"]  # the shadow asked after the primary, never returned
    [pair] = _pairs(mirror, cache)
    assert (pair["primary"], pair["shadow"], pair["mirrored"], pair["agree"]) == ("3", "4", 1, 1)
    assert pair["agreement"] == 1.0 and pair["max_abs_difference"] == pytest.approx(0.25)
    assert pair["shadow_latency_ms"] is not None and pair["primary_latency_ms"] is not None


def test_a_shadow_that_fails_never_fails_the_answer_and_is_counted() -> None:
    coalescer = _Coalescer(fail=True)
    plane, mirror, cache = _plane(coalescer)
    resolver: _Resolver = plane.resolver  # type: ignore[assignment]

    async def go() -> dict[str, Any]:
        answer = await plane.run_inference(BODY)
        await _drain()
        return dict(answer)

    assert asyncio.run(go())["prediction"] == "versicolor"
    assert resolver.recorded == [("3", "ok")]  # the shadow's failure is not the primary version's
    [pair] = _pairs(mirror, cache)
    assert pair["errors"] == 1 and pair["agree"] == 0 and pair["agreement"] is None


def test_a_shadow_that_hangs_does_not_hold_the_answer() -> None:
    coalescer = _Coalescer(shadow_label=0)
    plane, mirror, cache = _plane(coalescer)

    async def go() -> tuple[dict[str, Any], int]:
        coalescer.gate = asyncio.Event()
        answer = await plane.run_inference(BODY)  # returns while the shadow still waits on its gate
        await _drain()
        pending = mirror.pending
        coalescer.gate.set()
        await _drain()
        return dict(answer), pending

    answer, pending = asyncio.run(go())
    assert answer["prediction"] == "versicolor" and pending == 1
    [pair] = _pairs(mirror, cache)
    assert pair["disagree"] == 1 and pair["agreement"] == 0.0 and mirror.pending == 0


def test_mirrors_past_the_bound_are_dropped_and_counted() -> None:
    coalescer = _Coalescer()
    plane, mirror, cache = _plane(coalescer, max_pending=1)

    async def go() -> None:
        coalescer.gate = asyncio.Event()
        for _ in range(3):
            await plane.run_inference(BODY)
        await _drain()
        coalescer.gate.set()
        await _drain()

    asyncio.run(go())
    [pair] = _pairs(mirror, cache)
    assert pair["dropped"] == 2 and pair["agree"] == 1


def test_a_zero_share_mirrors_nothing() -> None:
    coalescer = _Coalescer()
    plane, mirror, cache = _plane(coalescer, percent=0)
    asyncio.run(plane.run_inference(BODY))
    assert coalescer.calls == ["3"] and _pairs(mirror, cache) == []


@pytest.mark.parametrize(
    "body",
    [
        {"shadow": {"4": 0}},
        {"shadow": {"4": 101}},
        {"shadow": {"4": True}},
        {"shadow": {"v4": 10}},
        {"shadow": {"1": 1, "2": 1, "3": 1, "4": 1}},
        {"shadow": [4]},
        {"shadow": {}, "extra": 1},
    ],
)
def test_a_bad_shadow_body_is_400_naming_its_field(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_shadow(body)
    assert caught.value.status == 400 and caught.value.field in ("shadow", "extra")


def test_an_empty_shadow_map_stops_mirroring() -> None:
    assert parse_shadow({"shadow": {}}) == {} and parse_shadow({"shadow": {"4": 10}}) == {"4": 10}


def test_every_mirrors_figures_reach_redis_after_a_quiet_spell_without_a_later_request() -> None:
    coalescer = _Coalescer(shadow_label=0)
    plane, mirror, cache = _plane(coalescer, flush_s=0.05)
    key = "iris|production|3|4"

    async def go() -> float:
        total = 0.0
        for _ in range(3):
            total += (await plane.run_inference(BODY))["latency_ms"] / 1000
            await _drain()
        for _ in range(500):  # the timers armed by the first tallies flush them (off the loop)
            extra = cache.data.get("kinfer:shadow:extra", {})
            if extra.get(f"{key}|primary_s") and cache.data.get("kinfer:shadow:requests", {}).get(f"{key}|disagree"):
                break
            await asyncio.sleep(0.01)
        return total

    total = asyncio.run(go())
    assert cache.data["kinfer:shadow:requests"][f"{key}|disagree"] == 3
    assert cache.data["kinfer:shadow:extra"][f"{key}|primary_s"] == pytest.approx(total)
    assert cache.data["kinfer:shadow:extra"][f"{key}|max_diff"] == pytest.approx(1.0)


def test_a_v2_answer_through_the_alias_is_mirrored_too() -> None:
    """KServe v2 callers get the same shadow as /v1/infer: the shadow runs the same v2 inputs afterwards."""
    import json

    from shared.inference.v2 import V2Protocol

    coalescer = _Coalescer(shadow_label=2)
    plane, mirror, cache = _plane(coalescer)
    v2 = V2Protocol(plane, plane.resolver, plane.balancer, plane.triton_async, Settings.from_env(environ={}))
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}

    async def go() -> dict[str, Any]:
        answer = await v2.infer_v2(
            "iris", "production", json.dumps(body).encode(), {"content-type": "application/json"}, None, 0.0, None
        )
        await _drain()
        return dict(answer)

    answer = asyncio.run(go())
    assert answer["model_version"] == "3" and answer["outputs"][0]["data"] == [0.0, 1.0, 0.0]
    assert coalescer.calls == ["3", "4"]  # mirrored after the answer, never returned
    [pair] = _pairs(mirror, cache)
    assert (pair["primary"], pair["shadow"], pair["mirrored"], pair["agree"]) == ("3", "4", 1, 0)


class _Recording(_Coalescer):
    """``_Coalescer`` that keeps the arrays each version was sent."""

    def __init__(self) -> None:
        super().__init__(shadow_label=1)
        self.sent: dict[str, Any] = {}

    async def infer(self, url: str, info: ModelInfo, arrays: Any, headers: Any, version: Any, who: Any) -> Any:
        self.sent[str(version)] = arrays
        return await super().infer(url, info, arrays, headers, version, who)


class _TwoSignatures(_Triton):
    """Version 4 names its input ``x``: the primary's validated arrays do not fit it."""

    def cached_info(self, url: str, tm: str, tv: Any) -> ModelInfo:
        if str(tv) == "4":
            return ModelInfo(INFO.name, (TensorSpec("x", "FP32", (4,)),), INFO.outputs, 4, INFO.labels)
        return INFO


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_a_shadow_with_the_primarys_signature_runs_the_arrays_already_validated(protocol: str) -> None:
    import json

    from shared.inference.v2 import V2Protocol

    coalescer = _Recording()
    plane, mirror, cache = _plane(coalescer)
    v2 = V2Protocol(plane, plane.resolver, plane.balancer, plane.triton_async, Settings.from_env(environ={}))
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}

    async def go() -> None:
        if protocol == "v1":
            await plane.run_inference(BODY)
        else:
            raw = json.dumps(body).encode()
            await v2.infer_v2("iris", "production", raw, {"content-type": "application/json"}, None, 0.0, None)
        await _drain()

    asyncio.run(go())
    assert coalescer.sent["4"]["input"] is coalescer.sent["3"]["input"]  # not parsed a second time
    [pair] = _pairs(mirror, cache)
    assert pair["agree"] == 1 and pair["max_abs_difference"] == pytest.approx(0.25)


def test_a_shadow_with_another_signature_validates_the_request_for_itself() -> None:
    coalescer = _Recording()
    plane, mirror, cache = _plane(coalescer)
    plane.triton_async = _TwoSignatures()  # type: ignore[assignment]

    async def go() -> None:
        await plane.run_inference(BODY)  # {"data": [...]}: the single input, whatever its name
        await _drain()

    asyncio.run(go())
    assert list(coalescer.sent["3"]) == ["input"] and list(coalescer.sent["4"]) == ["x"]
    np.testing.assert_array_equal(coalescer.sent["4"]["x"], coalescer.sent["3"]["input"])
    [pair] = _pairs(mirror, cache)
    assert (pair["mirrored"], pair["agree"], pair["errors"]) == (1, 1, 0)


def test_compare_reads_arrays_and_sets_aside_a_batch_dimension_one_side_lacks() -> None:
    batched = np.array([[0.0, 1.0, 0.0]], dtype=np.float32)
    same, diff = compare(("b", {"p": batched}), ("b", {"p": np.array([0.0, 0.5, 0.0], dtype=np.float32)}))
    assert same is True and diff == pytest.approx(0.5)
    same, diff = compare(("b", {"p": batched}), ("b", {"p": np.zeros((2, 3), dtype=np.float32)}))
    assert diff is None  # six values against three: not the same outputs


def test_compare_leaves_outputs_of_other_shapes_alone() -> None:
    same, diff = compare(("b", {"p": np.zeros((3, 2))}), ("b", {"p": np.ones((2, 3))}))
    assert diff is None  # a transposed output is not the same values in another layout


def test_arrays_are_reused_only_for_the_same_signature_and_batching() -> None:
    from dataclasses import replace

    from shared.inference.codec import same_inputs

    assert same_inputs(INFO, INFO) and same_inputs(INFO, replace(INFO, labels=()))  # labels do not matter
    assert not same_inputs(INFO, replace(INFO, max_batch_size=2))  # its own batch bound applies
    assert not same_inputs(INFO, replace(INFO, max_batch_size=0))  # unbatched: no batch dimension
    assert not same_inputs(INFO, replace(INFO, decoupled=True))  # a streaming model: the OpenAI routes only
    assert not same_inputs(INFO, replace(INFO, inputs=(TensorSpec("input", "FP64", (4,)),)))


def test_a_comparison_that_raises_is_counted_as_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import shared.lifecycle.shadow as shadow

    def broken(primary: Any, answer: Any) -> Any:
        raise OverflowError("int too large to convert to float")

    monkeypatch.setattr(shadow, "compare", broken)
    plane, mirror, cache = _plane(_Coalescer())

    async def go() -> None:
        await plane.run_inference(BODY)
        await _drain()

    asyncio.run(go())
    [pair] = _pairs(mirror, cache)
    assert (pair["mirrored"], pair["errors"], pair["agree"]) == (1, 1, 0)
