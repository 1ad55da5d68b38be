"""Real-time inference: POST /v1/infer (``run_inference``) and the batch API (``infer_items``).

A request resolves its model through the registry (plus a tiny in-process cache,
``MODEL_TTL_S``: a registry write is seen here at most that late): a version, an alias
(a weighted split picks by the caller's route key) or the default. It validates the
input against the model's Triton metadata, and runs on a backend the balancer picks
(circuit breakers, one retry elsewhere on a connection failure), naming the Triton
version the registry version maps to. Rows beyond the model's ``max_batch_size`` go
in several Triton requests. Each answer is counted per model version (``/metrics``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from shared import registry, telemetry
from shared import validation as v
from shared.backends.triton import NP_DTYPES, ModelInfo, normalise_url
from shared.errors import InvalidInput, KinferError
from shared.inference.codec import Parsed, outputs_json, parse_input, prediction_of

if TYPE_CHECKING:
    from shared.services import Services

MODEL_TTL_S = 0.25


@dataclass
class ItemResult:
    """One batch item's answer: prediction and outputs, or the reason it failed."""

    prediction: Any | None
    outputs: dict | None
    error: str | None


# -- model resolution --------------------------------------------------------------------
def resolve(services: Services, name: str, version: str | None = None, route_key: str | None = None) -> dict[str, Any]:
    """``registry.resolve_target`` behind a span and a MODEL_TTL_S in-process cache (hits only),
    then the pick for this caller (sticky per ``route_key`` when an alias splits traffic)."""
    models = services.resolved_models
    key, now = (name, version), time.monotonic()
    hit = models.get(key)
    if hit is not None and hit[0] > now:
        return registry.pick(hit[1], route_key)
    with telemetry.child_span("registry.resolve", **{"kinfer.model": name}):
        target = registry.resolve_target(services, name, version)
    if len(models) > 1024:
        models.clear()
    models[key] = (now + MODEL_TTL_S, target)
    return registry.pick(target, route_key)


def triton_version(model: Mapping[str, Any]) -> str | None:
    """The Triton version a registry version maps to (None: Triton picks, for models Kinfer does not manage)."""
    number = model.get("triton_version")
    return str(number) if number else None


def record(services: Services, model: Mapping[str, Any], outcome: str, started: float) -> None:
    """Count one answer of ``model`` (its registry version) for ``/metrics``."""
    from shared.lifecycle.metrics import record as record_version

    record_version(services.version_recorder, model["name"], model["version"], outcome,
                   time.perf_counter() - started)


def backend_urls(services: Services, model: Mapping[str, Any]) -> list[str]:
    """The model's backends in host:port form (TRITON_URL when it names none)."""
    urls = model.get("backend_urls") or ([model["backend_url"]] if model.get("backend_url") else [])
    return [normalise_url(u) for u in urls] or [normalise_url(services.settings.triton_url)]


def triton_call(services: Services, url: str, info: ModelInfo, arrays: Mapping[str, np.ndarray],
                rows: int, version: str | None = None) -> dict[str, np.ndarray]:
    """Run ``rows`` rows on ``url`` in requests of at most max_batch_size rows (traced)."""
    pool = services.triton
    step = info.max_batch_size if info.batched else rows
    parts = []
    with telemetry.child_span("triton.infer", **{"kinfer.backend": url, "kinfer.triton_model": info.name,
                                                  "kinfer.rows": rows}):
        headers = telemetry.outgoing_headers()
        for lo in range(0, rows, step):
            chunk = {k: a[lo:lo + step] for k, a in arrays.items()} if info.batched and rows > step else arrays
            parts.append(pool.infer(url, info, chunk, headers, version=version))
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


# -- POST /v1/infer ----------------------------------------------------------------------
def run_inference(services: Services, body: Any, route_key: str | None = None) -> dict[str, Any]:
    """Validate the request, infer, and answer the /v1/infer response body (sans request_id).

    ``version`` may name a version or an alias; ``route_key`` keeps a caller on one side of a split."""
    started = time.perf_counter()
    body = v.require_object(body)
    v.reject_unknown(body, ("model", "version", "input"))
    if body.get("model") in (None, ""):
        raise InvalidInput("model is required", field="model")
    name = v.string(body["model"], "model", max_len=128)
    version = v.string(body["version"], "version", max_len=32) if body.get("version") is not None else None
    if "input" not in body:
        raise InvalidInput("input is required: {\"data\": [...]} or {\"<tensor>\": [...]}", field="input")
    model = resolve(services, name, version, route_key)
    tm, tv = model.get("triton_model") or model["name"], triton_version(model)

    def attempt(url: str) -> tuple[ModelInfo, Parsed, dict[str, np.ndarray]]:
        info = services.triton.model_info(url, tm)
        parsed = parse_input(info, body["input"])
        return info, parsed, triton_call(services, url, info, parsed.arrays, parsed.rows, tv)

    try:
        info, parsed, outputs = services.balancer.call(backend_urls(services, model), attempt)
    except KinferError as exc:
        record(services, model, exc.code, started)
        raise
    record(services, model, "ok", started)
    return {"model": model["name"], "version": model["version"],
            "prediction": prediction_of(info, outputs, parsed.single),
            "outputs": outputs_json(info, outputs, parsed.single),
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            "timestamp": datetime.now(UTC).isoformat()}


# -- batch ----------------------------------------------------------------------------------
def infer_items(services: Services, model: dict, items: list[Any]) -> list[ItemResult]:
    """One ItemResult per item, in order; valid items go in batched Triton requests.

    Raises Unavailable/CircuitOpen/BackendTimeout (retryable) when Triton cannot be used.
    """
    urls, tm = backend_urls(services, model), model.get("triton_model") or model["name"]
    info = services.balancer.call(urls, lambda url: services.triton.model_info(url, tm), count=False)
    tv = triton_version(model)
    uniform = uniform_rows(info, items)
    if uniform is not None:
        return _infer_uniform(services, urls, info, uniform, tv)
    results: list[ItemResult | None] = [None] * len(items)
    parsed: dict[int, Parsed] = {}
    for i, item in enumerate(items):
        try:
            parsed[i] = parse_input(info, item)
        except InvalidInput as exc:
            results[i] = ItemResult(None, None, exc.message)
    for group in _groups(info, parsed):
        _infer_group(services, urls, info, group, parsed, results, tv)
    return [r if r is not None else ItemResult(None, None, "not inferred") for r in results]


def uniform_rows(info: ModelInfo, items: list[Any]) -> np.ndarray | None:
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
    return array.astype(dtype, copy=False)


def _infer_uniform(services: Services, urls: list[str], info: ModelInfo, array: np.ndarray,
                   tv: str | None = None) -> list[ItemResult]:
    results: list[ItemResult] = []
    for lo in range(0, array.shape[0], info.max_batch_size):
        part = array[lo:lo + info.max_batch_size]

        def run(url: str, part: np.ndarray = part) -> dict[str, np.ndarray]:
            return triton_call(services, url, info, {info.inputs[0].name: part}, len(part), tv)

        try:
            outputs = services.balancer.call(urls, run)
        except KinferError as exc:
            if exc.retryable:
                raise
            results.extend(ItemResult(None, None, exc.message) for _ in range(len(part)))
            continue
        predictions = prediction_of(info, outputs, single=False)
        lists = {name: a.tolist() for name, a in outputs.items()}
        results.extend(ItemResult(predictions[j], {name: values[j] for name, values in lists.items()}, None)
                       for j in range(len(part)))
    return results


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


def _infer_group(services: Services, urls: list[str], info: ModelInfo, group: list[int],
                 parsed: dict[int, Parsed], results: list[ItemResult | None], tv: str | None = None) -> None:
    names = [s.name for s in info.inputs]
    arrays = {n: np.concatenate([parsed[i].arrays[n] for i in group]) if info.batched else parsed[group[0]].arrays[n]
              for n in names}
    rows = sum(parsed[i].rows for i in group)
    try:
        outputs = services.balancer.call(urls, lambda url: triton_call(services, url, info, arrays, rows, tv))
    except KinferError as exc:
        if exc.retryable:
            raise
        for i in group:
            results[i] = ItemResult(None, None, exc.message)
        return
    offset = 0
    for i in group:
        p = parsed[i]
        mine = {k: a[offset:offset + p.rows] for k, a in outputs.items()} if info.batched else outputs
        offset += p.rows
        results[i] = ItemResult(prediction_of(info, mine, p.single), outputs_json(info, mine, p.single), None)
