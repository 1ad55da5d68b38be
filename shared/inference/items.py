"""Inference of batch items (``infer_items``, the batch worker's data plane) through the one async Triton
client: the worker's threads hand each sub-batch to a ``LoopThread``, where its requests run concurrently.

Valid items go to Triton in requests of the model's ``max_batch_size`` rows, up to
``IN_FLIGHT`` of them at once per process (Triton and this process overlap their work); a bad item
fails on its own with the reason. The common case, every item one row of a
single-input model, takes a vectorised path (one numpy conversion, no per-item
validation). Backend failures that a retry can cure raise (the chunk is redelivered).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from shared import telemetry
from shared.backends.triton import BYTES, NP_DTYPES, ModelInfo
from shared.clients.aio import PerLoop
from shared.errors import InvalidInput, KinferError
from shared.inference.codec import (
    MAX_ELEMENTS,
    Parsed,
    json_values,
    outputs_json,
    parse_input,
    prediction_of,
    to_strings,
)
from shared.inference.resolve import backend_label, label, triton_model, triton_version

if TYPE_CHECKING:
    from shared.backends.balancer import Balancer
    from shared.backends.triton_async import AsyncTriton
    from shared.clients.aio import LoopThread
    from shared.domain import ModelVersion
    from shared.inference.resolve import Resolver

IN_FLIGHT = 8


@dataclass
class ItemResult:
    """One batch item's answer: prediction and outputs, or the reason it failed."""

    prediction: object
    outputs: dict[str, object] | None
    error: str | None


@dataclass(frozen=True)
class _Target:
    model: ModelVersion
    urls: list[str]
    version: str | None


def uniform_rows(info: ModelInfo, items: Sequence[object]) -> np.ndarray[Any, Any] | None:
    """All items one valid row of a single-input batched model -> one [n, ...] array; else None.

    The common batch case (every line ``{"data": [4 floats]}``) then costs one numpy
    conversion instead of per-item validation; anything unusual takes the general path,
    which reports each bad item on its own.
    """
    if not info.batched or len(info.inputs) != 1 or not items:
        return None
    spec = info.inputs[0]
    dtype = NP_DTYPES.get(spec.datatype)
    if spec.datatype == BYTES and not any(d < 0 for d in spec.shape):
        return _uniform_strings(info, items)
    if dtype is None or spec.datatype == "BOOL" or any(d < 0 for d in spec.shape):
        return None
    rows = []
    for item in items:
        if type(item) is not dict or len(item) != 1:
            return None
        key, value = next(iter(item.items()))
        if key != "data" and key != spec.name:
            return None
        rows.append(value)
    try:
        array = np.array(rows)
    except (ValueError, TypeError):
        return None
    if array.shape != (len(items), *spec.shape) or array.dtype.kind not in "iuf":
        return None
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        return None
    if np.issubdtype(dtype, np.integer) and array.dtype.kind == "f":
        return None
    with np.errstate(over="ignore"):
        cast = array.astype(dtype, copy=False)
    if cast.dtype.kind == "f" and not np.isfinite(cast).all():  # beyond the datatype's range
        return None
    if cast.dtype.kind in "iu" and not (cast == array).all():  # wrapped around
        return None
    return cast


def _uniform_strings(info: ModelInfo, items: Sequence[object]) -> np.ndarray[Any, Any] | None:
    """``uniform_rows`` for a string input: every item one row (for dims [1] also a lone string), every element
    a string within MAX_STRING_BYTES; else None."""
    spec, rows = info.inputs[0], []
    for item in items:
        if type(item) is not dict or len(item) != 1:
            return None
        key, value = next(iter(item.items()))
        if key != "data" and key != spec.name:
            return None
        rows.append(value)
    try:
        array = to_strings(rows, "input", "", len(rows) * max(1, math.prod(spec.shape)), info.max_string_bytes)
    except InvalidInput:
        return None
    if spec.shape == (1,) and array.shape == (len(items),):
        array = array.reshape(-1, 1)  # {"text": "..."}: a lone string is one row
    return array if array.shape == (len(items), *spec.shape) else None


def _groups(info: ModelInfo, parsed: dict[int, Parsed]) -> list[list[int]]:
    """Item indexes packed into requests: same row shape, at most max_batch_size rows (or one item)."""
    if not info.batched:
        return [[i] for i in parsed]
    by_shape: dict[Any, list[int]] = {}
    for i, p in parsed.items():
        by_shape.setdefault(p.shape_key(), []).append(i)
    groups: list[list[int]] = []
    for indexes in by_shape.values():
        current: list[int] = []
        rows = 0
        for i in indexes:
            if current and rows + parsed[i].rows > info.max_batch_size:
                groups.append(current)
                current, rows = [], 0
            current.append(i)
            rows += parsed[i].rows
        groups.append(current)
    return groups


class ItemRunner:
    """Owns the batch worker's data plane: batch items through the balancer to the async Triton client, at most
    ``in_flight`` Triton requests at once per process (every chunk a process serves shares the bound)."""

    def __init__(
        self,
        resolver: Resolver,
        balancer: Balancer,
        triton_async: AsyncTriton,
        loop: LoopThread,
        in_flight: int = IN_FLIGHT,
        max_elements: int = MAX_ELEMENTS,
    ) -> None:
        self.resolver = resolver
        self.balancer = balancer
        self.triton_async = triton_async
        self.loop = loop
        self.max_elements = max_elements  # per item, as per /v1/infer request (MAX_INFER_ELEMENTS)
        self._slots: PerLoop[asyncio.Semaphore] = PerLoop(lambda: asyncio.Semaphore(in_flight))

    def infer_items(self, model: ModelVersion, items: Sequence[object]) -> list[ItemResult]:
        """``infer_items_async`` for a thread (the batch worker's handlers run in the thread pool)."""
        return self.loop.run(self.infer_items_async(model, items))

    async def triton_call(
        self,
        url: str,
        info: ModelInfo,
        arrays: Mapping[str, np.ndarray[Any, Any]],
        rows: int,
        version: str | None = None,
        who: str | None = None,
    ) -> dict[str, np.ndarray[Any, Any]]:
        """Run ``rows`` rows on ``url`` in requests of at most max_batch_size rows, in flight together (traced)."""
        step = info.max_batch_size if info.batched else rows
        slots = self._slots.get()

        async def one(chunk: Mapping[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
            async with slots:
                return await self.triton_async.infer(url, info, chunk, headers, version, who)

        with telemetry.child_span("triton.infer", **{"kinfer.triton_model": info.name, "kinfer.rows": rows}):
            headers = telemetry.outgoing_headers()
            if not info.batched or rows <= step:
                return await one(arrays)
            parts = await asyncio.gather(
                *(one({k: a[lo : lo + step] for k, a in arrays.items()}) for lo in range(0, rows, step))
            )
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    async def infer_items_async(self, model: ModelVersion, items: Sequence[object]) -> list[ItemResult]:
        """One ItemResult per item, in order; valid items go in batched Triton requests, several at once.

        Raises Unavailable/CircuitOpen/BackendTimeout (retryable) when Triton cannot be used.
        """
        target = _Target(model, self.resolver.backend_urls(model), triton_version(model))
        tm = triton_model(model)
        info = await self.balancer.call_async(
            target.urls,
            lambda url: self.triton_async.model_info(url, tm, target.version, backend_label(model, target.urls, url)),
            count=False,
            label=label(model),
        )
        uniform = uniform_rows(info, items)
        if uniform is not None:
            step = info.max_batch_size
            done = await asyncio.gather(
                *(self._infer_uniform(target, info, uniform[lo : lo + step]) for lo in range(0, uniform.shape[0], step))
            )
            return [r for part in done for r in part]
        results: list[ItemResult | None] = [None] * len(items)
        parsed: dict[int, Parsed] = {}
        for i, item in enumerate(items):
            try:
                parsed[i] = parse_input(info, item, max_elements=self.max_elements)
            except InvalidInput as exc:
                results[i] = ItemResult(None, None, exc.message)
        await asyncio.gather(*(self._infer_group(target, info, g, parsed, results) for g in _groups(info, parsed)))
        return [r if r is not None else ItemResult(None, None, "not inferred") for r in results]

    async def _infer_uniform(self, target: _Target, info: ModelInfo, part: np.ndarray[Any, Any]) -> list[ItemResult]:
        try:
            outputs = await self.balancer.call_async(
                target.urls,
                lambda url: self.triton_call(
                    url,
                    info,
                    {info.inputs[0].name: part},
                    len(part),
                    target.version,
                    backend_label(target.model, target.urls, url),
                ),
                label=label(target.model),
            )
        except KinferError as exc:
            if exc.retryable:
                raise
            if len(part) > 1 and exc.status < 500:  # some item's fault: find it, the others still answer
                # one half after the other: sent together, Triton's dynamic batcher may merge them again
                half = len(part) // 2
                first = await self._infer_uniform(target, info, part[:half])
                return first + await self._infer_uniform(target, info, part[half:])
            return [ItemResult(None, None, exc.message)] * len(part)
        predictions = prediction_of(info, outputs, single=False)
        names = list(outputs)
        per_item = [
            dict(zip(names, values, strict=True))
            for values in zip(*(json_values(outputs[n]) for n in names), strict=True)
        ]
        return [ItemResult(p, o, None) for p, o in zip(predictions, per_item, strict=True)]

    async def _infer_group(
        self,
        target: _Target,
        info: ModelInfo,
        group: list[int],
        parsed: dict[int, Parsed],
        results: list[ItemResult | None],
    ) -> None:
        names = [s.name for s in info.inputs]
        arrays = {
            n: np.concatenate([parsed[i].arrays[n] for i in group]) if info.batched else parsed[group[0]].arrays[n]
            for n in names
        }
        rows = sum(parsed[i].rows for i in group)
        try:
            outputs = await self.balancer.call_async(
                target.urls,
                lambda url: self.triton_call(
                    url, info, arrays, rows, target.version, backend_label(target.model, target.urls, url)
                ),
                label=label(target.model),
            )
        except KinferError as exc:
            if exc.retryable:
                raise
            if len(group) > 1 and exc.status < 500:  # some item's fault: find it, the others still answer
                half = len(group) // 2  # one half after the other (see _infer_uniform)
                for part in (group[:half], group[half:]):
                    await self._infer_group(target, info, part, parsed, results)
                return
            for i in group:
                results[i] = ItemResult(None, None, exc.message)
            return
        offset = 0
        for i in group:
            p = parsed[i]
            mine = {k: a[offset : offset + p.rows] for k, a in outputs.items()} if info.batched else outputs
            offset += p.rows
            results[i] = ItemResult(prediction_of(info, mine, p.single), outputs_json(info, mine, p.single), None)
