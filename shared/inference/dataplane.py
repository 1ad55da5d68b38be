"""Real-time inference: POST /v1/infer (``run_inference``), on the event loop from end to end.

A request resolves its model (``resolve.resolve_async``: warm models cost a dict
lookup), validates the input against the model's Triton metadata (cached per backend),
bounds it (MAX_INFER_ROWS, MAX_INFER_ELEMENTS: bulk work belongs in batch jobs), and
runs on a backend the balancer picks (circuit breakers from a local view, one retry
elsewhere on a connection failure). A single row goes through the request coalescer
(``shared.backends.coalesce``); more rows than the model's ``max_batch_size`` go in
several Triton requests, all in flight at once. An answer through an alias with shadow versions is
offered to the ``ShadowMirror`` once it is ready (``shared.lifecycle.shadow``: in the background, bounded).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

import numpy as np

from shared import telemetry
from shared import validation as v
from shared.backends.triton import ModelInfo
from shared.errors import InvalidInput, KinferError
from shared.inference.capture import Answer, Request
from shared.inference.codec import Parsed, outputs_json, parse_input, prediction_of, same_inputs
from shared.inference.resolve import backend_label, label, triton_model, triton_version
from shared.inference.waiting import call_waiting

if TYPE_CHECKING:
    from shared.backends.balancer import Balancer
    from shared.backends.coalesce import Coalescer
    from shared.backends.triton_async import AsyncTriton
    from shared.domain import ModelVersion
    from shared.inference.capture import Capture
    from shared.inference.resolve import Resolver
    from shared.lifecycle.shadow import ShadowAnswer, ShadowMirror
    from shared.settings import Settings


_FIELDS = frozenset({"model", "version", "input"})


class InferAnswer(TypedDict):
    """The /v1/infer response body; the handler adds ``request_id`` and ``trace_id``."""

    model: str
    version: str
    prediction: object
    outputs: dict[str, object]
    latency_ms: float
    timestamp: str
    request_id: NotRequired[str]
    trace_id: NotRequired[str]


class DataPlane:
    """Owns POST /v1/infer: resolution, validation, bounds and the Triton calls of the real-time path."""

    def __init__(
        self,
        resolver: Resolver,
        balancer: Balancer,
        triton_async: AsyncTriton,
        coalescer: Callable[[], Coalescer],
        settings: Settings,
        shadow: ShadowMirror | None = None,
        capture: Capture | None = None,
    ) -> None:
        self.shadow = shadow
        self.capture = capture
        self.resolver = resolver
        self.balancer = balancer
        self.triton_async = triton_async
        self.coalescer = coalescer
        self.settings = settings

    def check_rows(self, rows: int, field: str = "input") -> None:
        """400 past MAX_INFER_ROWS, naming the limit and the bulk path."""
        limit = self.settings.max_infer_rows
        if rows > limit:
            raise InvalidInput(
                f"{field} has {rows} rows; one request may carry at most {limit} (MAX_INFER_ROWS); "
                "send bulk work as a batch job (POST /v1/batch)",
                field=field,
            )

    async def infer_arrays(
        self,
        url: str,
        info: ModelInfo,
        arrays: Mapping[str, np.ndarray[Any, Any]],
        rows: int,
        version: str | None = None,
        who: str | None = None,
    ) -> dict[str, np.ndarray[Any, Any]]:
        """Run ``rows`` rows on ``url``: one row through the coalescer, more in requests of at most
        max_batch_size rows sent together (traced when the request is sampled)."""
        step = info.max_batch_size if info.batched else rows
        with telemetry.child_span("triton.infer", **{"kinfer.triton_model": info.name, "kinfer.rows": rows}):
            headers = telemetry.outgoing_headers()
            if rows <= step:
                return await self.coalescer().infer(url, info, arrays, headers, version, who)
            triton = self.triton_async
            parts = await asyncio.gather(
                *(
                    triton.infer(url, info, {k: a[lo : lo + step] for k, a in arrays.items()}, headers, version, who)
                    for lo in range(0, rows, step)
                )
            )
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    async def run_inference(
        self, body: object, route_key: str | None = None, wait_s: float = 0.0, key_id: str | None = None
    ) -> InferAnswer:
        """``answer``, and its capture when the model's capture rule samples it (``key_id``: the caller's key)."""
        capture = self.capture
        if capture is None:
            return await self.answer(body, route_key, wait_s)
        started = time.perf_counter()
        try:
            answer = await self.answer(body, route_key, wait_s)
        except KinferError as exc:
            await self._capture_failure(capture, body, route_key, key_id, started, exc)
            raise
        assert isinstance(body, dict)
        name, requested = body["model"], body.get("version")
        redact = capture.sampled(name, requested)
        if redact is not None:
            request = Request(name, requested, "v1", key_id, started, body["input"], answer["version"])
            capture.record(request, Answer(answer["version"], answer["outputs"], answer["prediction"]), None, redact)
        return answer

    async def _capture_failure(
        self,
        capture: Capture,
        body: object,
        route_key: str | None,
        key_id: str | None,
        started: float,
        exc: KinferError,
    ) -> None:
        """Capture a failed request of a named model, with the version that would have served it (if any)."""
        model = body.get("model") if isinstance(body, dict) else None
        requested = body.get("version") if isinstance(body, dict) else None
        if not isinstance(model, str) or not (requested is None or isinstance(requested, str)):
            return
        redact = capture.sampled(model, requested)
        if redact is None:
            return
        try:
            version = (await self.resolver.resolve_async(model, requested, route_key))["version"]
        except KinferError:
            version = ""
        assert isinstance(body, dict)
        request = Request(model, requested, "v1", key_id, started, body.get("input"), version)
        capture.record(request, None, exc, redact)

    async def answer(self, body: object, route_key: str | None = None, wait_s: float = 0.0) -> InferAnswer:
        """Validate the request, infer, and answer the /v1/infer response body (sans request_id).

        ``version`` may name a version or an alias; ``route_key`` keeps a caller on one side of a split;
        ``wait_s``: how long the caller is held while its backend wakes (``shared.inference.waiting``)."""
        started = time.perf_counter()
        request = v.require_object(body)
        if not request.keys() <= _FIELDS:
            v.reject_unknown(request, _FIELDS)
        if request.get("model") in (None, ""):
            raise InvalidInput("model is required", field="model")
        name = v.string(request["model"], "model", max_len=128)
        version = v.string(request["version"], "version", max_len=32) if request.get("version") is not None else None
        if "input" not in request:
            raise InvalidInput('input is required: {"data": [...]} or {"<tensor>": [...]}', field="input")
        resolver = self.resolver
        model = await resolver.resolve_async(name, version, route_key)
        try:
            info, parsed, outputs = await self._run_model(model, request["input"], wait_s)
        except KinferError as exc:
            resolver.record(model, exc.code, started)
            raise
        resolver.record(model, "ok", started)
        answer: InferAnswer = {
            "model": model["name"],
            "version": model["version"],
            "prediction": prediction_of(info, outputs, parsed.single),
            "outputs": outputs_json(info, outputs, parsed.single),
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            "timestamp": datetime.now(UTC).isoformat(),
        }
        if self.shadow is not None:
            self._mirror(name, version, model, request["input"], answer, info, parsed, outputs)
        return answer

    async def _run_model(
        self, model: ModelVersion, raw_input: object, wait_s: float
    ) -> tuple[ModelInfo, Parsed, dict[str, np.ndarray[Any, Any]]]:
        """Validate ``raw_input`` against ``model`` and infer it on one of its backends."""
        tm, tv, urls = triton_model(model), triton_version(model), self.resolver.backend_urls(model)
        max_elements = self.settings.max_infer_elements

        async def attempt(url: str) -> tuple[ModelInfo, Parsed, dict[str, np.ndarray[Any, Any]]]:
            who = backend_label(model, urls, url)
            info = self.triton_async.cached_info(url, tm, tv) or await self.triton_async.model_info(url, tm, tv, who)
            parsed = parse_input(info, raw_input, max_elements=max_elements)
            self.check_rows(parsed.rows)
            return info, parsed, await self.infer_arrays(url, info, parsed.arrays, parsed.rows, tv, who)

        return await call_waiting(self.balancer, urls, attempt, label(model), wait_s)

    def _mirror(
        self,
        name: str,
        version: str | None,
        model: ModelVersion,
        raw: object,
        answer: InferAnswer,
        info: ModelInfo,
        parsed: Parsed,
        outputs: dict[str, np.ndarray[Any, Any]],
    ) -> None:
        """Offer the answered request to the alias's shadow versions (a dict lookup when it has none). A shadow
        version that takes the primary's tensors runs the arrays already validated; the outputs are compared
        as arrays (never turned into JSON for it)."""
        mirror = self.shadow
        alias, shadows = self.resolver.shadow_of(name, version)
        if mirror is None or alias is None or not shadows:
            return
        primary = (answer["prediction"], outputs)
        for percent, target in shadows:
            if target["version"] == model["version"] or not mirror.wanted(percent):
                continue

            async def run(target: ModelVersion = target) -> ShadowAnswer:
                tm, tv, urls = triton_model(target), triton_version(target), self.resolver.backend_urls(target)

                async def attempt(url: str) -> tuple[ModelInfo, Parsed, dict[str, np.ndarray[Any, Any]]]:
                    who = backend_label(target, urls, url)
                    got = self.triton_async.cached_info(url, tm, tv) or await self.triton_async.model_info(
                        url, tm, tv, who
                    )
                    again = (
                        parsed
                        if same_inputs(info, got)
                        else parse_input(got, raw, max_elements=self.settings.max_infer_elements)
                    )
                    self.check_rows(again.rows)
                    return got, again, await self.infer_arrays(url, got, again.arrays, again.rows, tv, who)

                got, again, shadow_outputs = await call_waiting(self.balancer, urls, attempt, label(target), 0.0)
                return prediction_of(got, shadow_outputs, again.single), shadow_outputs

            pair = (name, alias, model["version"], target["version"])
            mirror.offer(pair, run, primary, answer["latency_ms"] / 1000)
