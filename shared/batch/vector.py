"""Vectorised chunk inference for the batch worker: the common chunk as arrays, not as rows.

A chunk whose every line is one row of a single-input batched model (e.g. every line ``{"data": [4 floats]}``,
or one string per line for a string model) is parsed in one pass (orjson over the joined lines, one numpy
array by ``uniform_rows``), sent to Triton in requests of the model's ``max_batch_size`` rows, several in
flight at once (the ``ItemRunner``'s per-process bound, through the balancer and the async client on the
``LoopThread``), and its answers are encoded per array: each output tensor is serialised once and split into
its rows, and every result line is formatted from those pieces (``encode_answers``), byte for byte the line
``shared.batch.results.encode_lines`` writes for the same row.

Anything else (a line that is not a strict JSON object, an item of another shape, several inputs...) makes
``prepare`` answer None, and the worker takes the per-item path, which reports each bad item on its own. A
Triton request that fails for its items' sake (a 4xx) is split in halves, one after the other, until the
item at fault answers alone, as the per-item path does; failures a retry can cure raise (the chunk is
redelivered).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from shared.batch.results import ChunkLines, encode_value, error_line
from shared.batch.store import ERROR_SAMPLE
from shared.errors import KinferError
from shared.inference.codec import outputs_json, prediction_of
from shared.inference.items import ItemRunner, uniform_rows
from shared.inference.resolve import backend_label, label, triton_model, triton_version
from shared.validation import has_duplicate_keys

if TYPE_CHECKING:
    from shared.backends.triton import ModelInfo
    from shared.domain import JobError, ModelVersion

Arrays = dict[str, np.ndarray[Any, Any]]


@dataclass(frozen=True)
class Prepared:
    """A chunk ready for ``ChunkInference.infer``: its rows as one array, and where they go."""

    model: ModelVersion
    urls: list[str]
    version: str | None
    info: ModelInfo
    rows: np.ndarray[Any, Any]


@dataclass
class _Segment:
    """Consecutive rows of a chunk: their outputs, or the reason they failed."""

    start: int
    count: int
    outputs: Arrays | None = None
    error: str | None = None


def uniform_chunk(info: ModelInfo, lines: Sequence[bytes]) -> np.ndarray[Any, Any] | None:
    """Every line one strict JSON object holding one row of the model's single input -> a [n, ...] array;
    None otherwise (the per-item path then reports what is wrong with which line).

    One orjson pass over the joined lines. Which line gave which item is certain when every line starts an
    object and the text holds no other ``{``; else, as the per-item path does, from the item count. A
    repeated key is ruled out by counting ``:`` (one per line: one key per item), and otherwise checked
    as the per-item path does (``has_duplicate_keys``).
    """
    joined = b"[" + b",".join(lines) + b"]"
    try:
        items = orjson.loads(joined)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(items, list) or len(items) != len(lines):
        return None
    array = uniform_rows(info, items)
    if array is None:
        return None
    if joined.count(b":") != len(lines) and has_duplicate_keys(joined, items):
        return None
    return array


class ChunkInference:
    """Owns the vectorised path of the batch worker over an ``ItemRunner`` (its balancer, async Triton client,
    loop thread and in-flight bound)."""

    def __init__(self, items: ItemRunner, max_error_len: int) -> None:
        self.items = items
        self.max_error_len = max_error_len

    @classmethod
    def over(cls, items: object, max_error_len: int) -> ChunkInference | None:
        """The vectorised path over ``items`` when it is the real item runner (a test double is not)."""
        return cls(items, max_error_len) if isinstance(items, ItemRunner) else None

    def prepare(self, model: ModelVersion, lines: Sequence[bytes]) -> Prepared | None:
        """The chunk as one array when it takes the vectorised path; None for the per-item path. The lines
        are parsed in the calling thread (the loop thread only talks to Triton)."""
        runner = self.items
        urls, version = runner.resolver.backend_urls(model), triton_version(model)
        info = runner.loop.run(self._info(model, urls, version))
        rows = uniform_chunk(info, lines)
        return None if rows is None else Prepared(model, urls, version, info, rows)

    async def _info(self, model: ModelVersion, urls: list[str], version: str | None) -> ModelInfo:
        runner, name = self.items, triton_model(model)
        return await runner.balancer.call_async(
            urls,
            lambda url: runner.triton_async.model_info(url, name, version, backend_label(model, urls, url)),
            count=False,
            label=label(model),
        )

    def infer(self, prepared: Prepared, start: int, stop: int, first_index: int) -> ChunkLines:
        """Rows ``start:stop`` of a prepared chunk, inferred and encoded (the first is item ``first_index``)."""
        segments = self.items.loop.run(self._infer(prepared, prepared.rows[start:stop]))
        return self._encode(prepared.info, segments, first_index)

    async def _infer(self, prepared: Prepared, rows: np.ndarray[Any, Any]) -> list[_Segment]:
        step = prepared.info.max_batch_size
        parts = await asyncio.gather(
            *(self._part(prepared, lo, rows[lo : lo + step]) for lo in range(0, rows.shape[0], step))
        )
        return [segment for part in parts for segment in part]

    async def _part(self, prepared: Prepared, start: int, part: np.ndarray[Any, Any]) -> list[_Segment]:
        runner, info, model, urls = self.items, prepared.info, prepared.model, prepared.urls
        try:
            outputs = await runner.balancer.call_async(
                urls,
                lambda url: runner.triton_call(
                    url, info, {info.inputs[0].name: part}, len(part), prepared.version, backend_label(model, urls, url)
                ),
                label=label(model),
            )
        except KinferError as exc:
            if exc.retryable:
                raise
            if len(part) > 1 and exc.status < 500:  # some item's fault: find it, the others still answer
                # one half after the other: sent together, Triton's dynamic batcher may merge them again
                half = len(part) // 2
                first = await self._part(prepared, start, part[:half])
                return first + await self._part(prepared, start + half, part[half:])
            return [_Segment(start, len(part), error=str(exc.message)[: self.max_error_len])]
        return [_Segment(start, len(part), outputs=outputs)]

    def _encode(self, info: ModelInfo, segments: list[_Segment], first_index: int) -> ChunkLines:
        """The result lines of ``segments`` in order; runs of answered rows are encoded as one array each."""
        pieces: list[bytes] = []
        failed = 0
        errors: list[JobError] = []
        run: list[_Segment] = []

        def flush() -> None:
            if run:
                outputs = run[0].outputs if len(run) == 1 else _concatenate([s.outputs for s in run])
                pieces.append(encode_answers(info, outputs or {}, first_index + run[0].start))
                run.clear()

        for segment in segments:
            if segment.error is None:
                run.append(segment)
                continue
            flush()
            failed += segment.count
            for index in range(first_index + segment.start, first_index + segment.start + segment.count):
                pieces.append(error_line(index, segment.error))
                if len(errors) < ERROR_SAMPLE:
                    errors.append({"index": index, "error": segment.error})
        flush()
        total = sum(s.count for s in segments)
        return ChunkLines(b"".join(pieces), total - failed, failed, errors)


def _concatenate(parts: list[Arrays | None]) -> Arrays:
    present = [p for p in parts if p is not None]
    return {name: np.concatenate([p[name] for p in present]) for name in present[0]}


def encode_answers(info: ModelInfo, outputs: Mapping[str, np.ndarray[Any, Any]], first_index: int) -> bytes:
    """The result lines ``{"index", "prediction", "outputs"}`` of answered rows (every output has them first),
    numbered from ``first_index``: each tensor serialised once and split into rows, each line formatted from
    the pieces. The bytes ``results.encode_lines`` writes for the same rows."""
    names = list(outputs)
    rows = next(iter(outputs.values())).shape[0] if names else 0
    predictions = prediction_of(info, outputs, single=False) if names else [None] * rows
    columns = [row_values(info, name, outputs[name]) for name in names]
    keys = b",".join(orjson.dumps(name).replace(b"%", b"%%") + b":%b" for name in names)
    template = b'{"index":%d,"prediction":%b,"outputs":{' + keys + b"}}\n"
    indexes = range(first_index, first_index + rows)
    return b"".join([template % row for row in zip(indexes, each_json(predictions), *columns, strict=True)])


def row_values(info: ModelInfo, name: str, array: np.ndarray[Any, Any]) -> list[bytes]:
    """The JSON text of each row of an output tensor: for numbers, the whole tensor serialised once and split at
    its row boundaries (rows of a rectangular array of numbers hold no brackets of their own); else each row's
    JSON value (``outputs_json``) on its own."""
    if array.dtype.kind in "biuf" and array.ndim >= 1 and array.size:
        text = orjson.dumps(array.tolist())
        depth = array.ndim - 1
        if not depth:
            return text[1:-1].split(b",")
        opened, closed = b"[" * depth, b"]" * depth
        inner = text[1 + depth : -1 - depth]
        return [opened + row + closed for row in inner.split(closed + b"," + opened)]
    values = outputs_json(info, {name: array}, single=False)[name]
    return each_json(values if isinstance(values, list) else [values])


def each_json(values: Sequence[object]) -> list[bytes]:
    """The JSON text of each value; strings and integers (class names and ids) are encoded once each."""
    if set(map(type, values)) <= {str, int}:
        table = {value: encode_value(value) for value in set(values)}
        return [table[value] for value in values]
    return [encode_value(value) for value in values]
