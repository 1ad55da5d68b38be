"""Inference of batch items (``infer_items``, the batch worker's data plane), synchronous.

Valid items go to Triton in requests of the model's ``max_batch_size`` rows, up to
``IN_FLIGHT`` of them at once per process (Triton and this process overlap their work); a bad item
fails on its own with the reason. The common case, every item one row of a
single-input model, takes a vectorised path (one numpy conversion, no per-item
validation). Backend failures that a retry can cure raise (the chunk is redelivered).
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from shared import telemetry
from shared.backends.triton import NP_DTYPES, ModelInfo
from shared.errors import InvalidInput, KinferError
from shared.inference.codec import Parsed, outputs_json, parse_input, prediction_of
from shared.inference.resolve import backend_label, label, triton_model, triton_version

if TYPE_CHECKING:
    from shared.backends.balancer import Balancer
    from shared.backends.metrics import Recorder
    from shared.backends.triton import TritonPool
    from shared.domain import ModelVersion
    from shared.inference.resolve import Resolver

IN_FLIGHT = 8
T = TypeVar("T")


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


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _in_parallel(calls: list[Callable[[], T]]) -> list[T]:
    """Run ``calls`` in a process-wide pool of IN_FLIGHT threads (Triton requests overlap; chunks served at
    once share the pool, so the requests in flight stay bounded); the first error raises."""
    global _pool
    if len(calls) <= 1:
        return [c() for c in calls]
    if _pool is None:
        with _pool_lock:
            _pool = _pool or ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="batch-infer")
    futures = [_pool.submit(contextvars.copy_context().run, c) for c in calls]
    return [f.result() for f in futures]


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
    """Owns the batch worker's data plane: batch items through the balancer to synchronous Triton clients."""

    def __init__(self, resolver: Resolver, balancer: Balancer, recorder: Recorder, triton: TritonPool) -> None:
        self.resolver = resolver
        self.balancer = balancer
        self.recorder = recorder
        self.triton = triton

    def triton_call(
        self,
        url: str,
        info: ModelInfo,
        arrays: Mapping[str, np.ndarray[Any, Any]],
        rows: int,
        version: str | None = None,
        who: str | None = None,
    ) -> dict[str, np.ndarray[Any, Any]]:
        """Run ``rows`` rows on ``url`` in requests of at most max_batch_size rows (traced)."""
        pool = self.triton
        step = info.max_batch_size if info.batched else rows
        parts = []
        with telemetry.child_span("triton.infer", **{"kinfer.triton_model": info.name, "kinfer.rows": rows}):
            headers = telemetry.outgoing_headers()
            for lo in range(0, rows, step):
                chunk = {k: a[lo : lo + step] for k, a in arrays.items()} if info.batched and rows > step else arrays
                parts.append(pool.infer(url, info, chunk, headers, version, who))
                self.recorder.record_rows(url, min(step, rows - lo))
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def infer_items(self, model: ModelVersion, items: Sequence[object]) -> list[ItemResult]:
        """One ItemResult per item, in order; valid items go in batched Triton requests, several at once.

        Raises Unavailable/CircuitOpen/BackendTimeout (retryable) when Triton cannot be used.
        """
        target = _Target(model, self.resolver.backend_urls(model), triton_version(model))
        tm = triton_model(model)
        info = self.balancer.call(
            target.urls,
            lambda url: self.triton.model_info(url, tm, target.version, backend_label(model, target.urls, url)),
            count=False,
            label=label(model),
        )
        uniform = uniform_rows(info, items)
        if uniform is not None:
            return self._infer_uniform(target, info, uniform)
        results: list[ItemResult | None] = [None] * len(items)
        parsed: dict[int, Parsed] = {}
        for i, item in enumerate(items):
            try:
                parsed[i] = parse_input(info, item)
            except InvalidInput as exc:
                results[i] = ItemResult(None, None, exc.message)
        calls: list[Callable[[], None]] = [
            partial(self._infer_group, target, info, g, parsed, results) for g in _groups(info, parsed)
        ]
        _in_parallel(calls)
        return [r if r is not None else ItemResult(None, None, "not inferred") for r in results]

    def _infer_uniform(self, target: _Target, info: ModelInfo, array: np.ndarray[Any, Any]) -> list[ItemResult]:
        step = info.max_batch_size
        parts = [array[lo : lo + step] for lo in range(0, array.shape[0], step)]

        def run(part: np.ndarray[Any, Any]) -> list[ItemResult]:
            try:
                outputs = self.balancer.call(
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
                    half = len(part) // 2
                    return run(part[:half]) + run(part[half:])
                return [ItemResult(None, None, exc.message)] * len(part)
            predictions = prediction_of(info, outputs, single=False)
            names = list(outputs)
            per_item = [
                dict(zip(names, values, strict=True))
                for values in zip(*(outputs[n].tolist() for n in names), strict=True)
            ]
            return [ItemResult(p, o, None) for p, o in zip(predictions, per_item, strict=True)]

        calls: list[Callable[[], list[ItemResult]]] = [partial(run, p) for p in parts]
        return [r for done in _in_parallel(calls) for r in done]

    def _infer_group(
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
            outputs = self.balancer.call(
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
                half = len(group) // 2
                for part in (group[:half], group[half:]):
                    self._infer_group(target, info, part, parsed, results)
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
