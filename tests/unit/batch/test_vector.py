"""The batch worker's vectorised path (``shared.batch.vector``) and the submit path's C-speed passes
(``shared.batch.jobs``): each gives exactly what the per-item code gives, byte for byte, and falls back to
it whenever it cannot be sure. Triton is faked at the async client (the item runner, balancer and loop
thread are the real ones)."""

from __future__ import annotations

import contextlib
import random
import uuid
from collections.abc import Iterable, Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest

from shared import validation
from shared.backends.triton import ModelInfo, TensorSpec
from shared.batch import jobs, results, store, worker
from shared.batch.jobs import bounded_blocks, bounded_lines, inline_chunks, parse_body
from shared.batch.vector import ChunkInference, encode_answers, uniform_chunk
from shared.batch.worker import BatchWorker
from shared.clients import storage
from shared.clients.aio import LoopThread
from shared.errors import BackendTimeout, InvalidInput
from shared.inference.codec import outputs_json, prediction_of
from shared.inference.items import ItemRunner
from shared.settings import Settings

IRIS = ModelInfo(
    "iris",
    (TensorSpec("features", "FP32", (4,)),),
    (TensorSpec("label", "INT64", (1,)), TensorSpec("probabilities", "FP32", (3,))),
    8,
    ("setosa", "versicolor", "virginica"),
)


def _reference(info: ModelInfo, outputs: dict[str, np.ndarray[Any, Any]], first: int) -> bytes:
    """What the per-item path writes for answered rows (``ItemRunner._infer_uniform`` + ``worker._row``)."""
    predictions = prediction_of(info, outputs, single=False)
    names = list(outputs)
    per_item = [
        dict(zip(names, values, strict=True))
        for values in zip(*(outputs_json(info, {n: outputs[n]}, False)[n] for n in names), strict=True)
    ]
    rows = [
        {"index": first + i, "prediction": p, "outputs": o}
        for i, (p, o) in enumerate(zip(predictions, per_item, strict=True))
    ]
    return results.encode_lines(rows)


@pytest.mark.parametrize("rows", [1, 2, 7, 300])
def test_answers_are_encoded_per_array_byte_for_byte_as_per_row(rows: int) -> None:
    rng = np.random.default_rng(rows)
    probabilities = rng.random((rows, 3)).astype(np.float32)
    probabilities[0, 1] = np.nan  # null, as orjson writes it
    iris: dict[str, np.ndarray[Any, Any]] = {
        "label": rng.integers(0, 4, (rows, 1)).astype(np.int64),  # 3 has no class name: its id
        "probabilities": probabilities,
    }
    assert encode_answers(IRIS, iris, 1000) == _reference(IRIS, iris, 1000)
    odd: dict[str, np.ndarray[Any, Any]] = {
        "probabilities": rng.random((rows, 2)).astype(np.float16),
        'cube "%s"': rng.random((rows, 2, 3)),
        "flags": rng.random(rows) > 0.5,
        "small": rng.integers(-5, 5, (rows, 1, 1, 2)).astype(np.int8),
        "tiny": rng.random(rows).astype(np.float32) * 1e-30,
        "words": np.array([f"w{i}".encode() for i in range(rows)], dtype=object).reshape(rows, 1),
    }
    assert encode_answers(IRIS, odd, 0) == _reference(IRIS, odd, 0)
    no_class: dict[str, np.ndarray[Any, Any]] = {
        "values": rng.random((rows, 2)).astype(np.float32)
    }  # the prediction is the first output's row
    assert encode_answers(IRIS, no_class, 5) == _reference(IRIS, no_class, 5)


def _lines(rows: Iterable[object]) -> list[bytes]:
    return [orjson.dumps(r) for r in rows]


def test_a_chunk_of_rows_is_one_array_and_anything_unusual_takes_the_per_item_path() -> None:
    good = _lines({"data": [1.5, 2, 3, 4]} for _ in range(5))
    array = uniform_chunk(IRIS, good)
    assert array is not None and array.shape == (5, 4) and array.dtype == np.float32
    assert uniform_chunk(IRIS, _lines([{"features": [1, 2, 3, 4]}])) is not None  # the tensor's own name
    for bad in (
        [*good[:2], b"not json", *good[2:]],
        [*good[:2], b'{"data":[1,2,3,4]},{"data":[1,2,3,4]}', *good[3:]],  # a line holding two items
        [*good[:4], b'{"data":[9,9,9,9],"data":[1,2,3,4]}'],  # a repeated key
        [*good[:4], b'{"data":[1,2,3]}'],
        [*good[:4], b'{"data":[1,2,3,4],"extra":1}'],
        [*good[:4], b"[1,2,3,4]"],
        [*good[:4], b'{"data":[1,2,3,1e999]}'],
    ):
        assert uniform_chunk(IRIS, bad) is None, bad
    named = ModelInfo("m", (TensorSpec("in:0", "FP32", (2,)),), (TensorSpec("out", "FP32", (1,)),), 8)
    assert uniform_chunk(named, [b'{"in:0":[1,2]}', b'{"in:0":[3,4]}']) is not None  # a ':' in the name itself
    assert uniform_chunk(named, [b'{"in:0":[1,2],"in:0":[5,6]}', b'{"in:0":[3,4]}']) is None


def test_inline_chunks_are_the_items_serialised_one_per_line() -> None:
    items: list[object] = [{"data": [i, i + 0.5]} for i in range(7)]
    tricky: list[object] = [
        {"a": {"b": 1}},
        {"s": "},{"},
        {"data": [1]},
        {"l": [{"x": 1}, {"y": 2}]},
        {},
        {"data": "{"},
        [1, 2],
        3,
        "},{",
    ]
    for inputs in (items, tricky, [*items, *tricky], list(reversed(tricky))):
        for size in (1, 2, 3, 100):
            expected = [
                b"\n".join(orjson.dumps(i) for i in inputs[at : at + size]) + b"\n"
                for at in range(0, len(inputs), size)
            ]
            assert list(inline_chunks(inputs, size)) == expected, (inputs, size)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"m","inputs":[{"data":[1,2]},{"data":[3]}]}',
        b'{"model":"m","inputs":[{"data":[1],"data":[2]}]}',
        b'{"model":"m","model":"n"}',
        b'{"model":"a:b","inputs":[{"k:1":"v:2","k:1":"x"}]}',
        b'{"model":"a\\u003a","inputs":[{"k":1,"k":2}]}',  # an escaped ':' must not hide the repeated key
        b'{"model":"\\u003a","inputs":[{"k":1}]}',
        b'{"model":"\\u003A\\u00e9","inputs":[{"k":1,"k":2}]}',
        b'{"model":"\\u00e9","inputs":[{"k":1,"k":2}],"x":"\\u00e9:"}',
        b"",
        b"   ",
        b"{",
        b'{"a":NaN}',
        b"[" * 300 + b"]" * 300,
    ],
)
def test_a_submit_body_is_as_strict_as_every_other_body(raw: bytes) -> None:
    try:
        expected: object = validation.parse_json(raw, "body")
    except InvalidInput as exc:
        with pytest.raises(InvalidInput) as caught:
            parse_body(raw)
        assert caught.value.message == exc.message and caught.value.field == exc.field
    else:
        assert parse_body(raw) == expected


def test_a_submit_body_may_hold_more_arrays_than_other_bodies_but_not_without_bound() -> None:
    import gc

    from shared.batch.jobs import BODY_MAX_CONTAINERS

    items = validation.MAX_CONTAINERS  # one over the bound of other bodies, counted with the envelope
    raw = b'{"model": "m", "inputs": [' + b",".join([b"[1]"] * items) + b"]}"
    with pytest.raises(InvalidInput, match="holds 300,002 arrays"):
        validation.parse_json(raw)
    assert len(parse_body(raw)["inputs"]) == items  # type: ignore[index]
    flood = b'{"model": "m", "inputs": [' + b",".join([b"[]"] * BODY_MAX_CONTAINERS) + b"]}"
    with pytest.raises(InvalidInput, match=f"holds {BODY_MAX_CONTAINERS + 2:,} arrays and objects"):
        parse_body(flood)
    assert gc.isenabled()


def _old_bounded_lines(chunks: Iterable[bytes], max_line: int, max_total: int) -> Iterator[bytes]:
    """The line-at-a-time reader ``bounded_blocks`` replaced (the reference for what it must give)."""
    pending: list[bytes] = []
    pending_len = total = 0
    number = 1
    for chunk in chunks:
        total += len(chunk)
        if total > max_total:
            raise InvalidInput("total", field="input_url")
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            if pending_len + end - start > max_line:
                raise jobs._line_too_long(number, max_line)
            line = b"".join((*pending, chunk[start:end])) if pending else chunk[start:end]
            pending, pending_len, start = [], 0, end + 1
            number += 1
            if line := line.strip():
                yield line
        if start < len(chunk):
            pending.append(chunk[start:])
            pending_len += len(chunk) - start
            if pending_len > max_line:
                raise jobs._line_too_long(number, max_line)
    if pending and (line := b"".join(pending).strip()):
        yield line


def _outcome(read: Iterator[bytes]) -> tuple[list[bytes], str | None]:
    got: list[bytes] = []
    try:
        for line in read:
            got.append(line)
    except InvalidInput as exc:
        return got, exc.message
    return got, None


def test_reading_lines_a_piece_at_a_time_gives_what_reading_them_one_by_one_gave() -> None:
    rng = random.Random(7)
    pieces = [b"", b"\n", b"\n\n", b" ", b"\t", b"\r\n", b'{"data":[1,2]}', b"x" * 30, b"  y ", b"\x0b", b"z"]
    for _ in range(3000):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        cuts = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, rng.randint(0, 6))))
        chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        max_line = rng.choice([8, 20, 40, 1000])
        assert _outcome(bounded_lines(chunks, max_line, 10**6)) == _outcome(
            _old_bounded_lines(chunks, max_line, 10**6)
        ), (chunks, max_line)
    blocks = list(bounded_blocks([b'{"a":1}\n{"b":2}\n{"c":3}\n{"d"', b":4}\n"], 100, 10**6))
    assert blocks == [[b'{"a":1}', b'{"b":2}', b'{"c":3}'], [b'{"d":4}']]  # a list per piece read
    assert list(jobs.block_chunks(blocks, 2)) == [(b'{"a":1}\n{"b":2}\n', 2), (b'{"c":3}\n{"d":4}\n', 2)]


# -- the worker over the real item runner, Triton faked at the async client -------------------------------
class _Triton:
    """Doubles the features; answers 400 for a request holding a negative feature (that item's fault), and
    times out (retryable) for a feature of 666."""

    def __init__(self) -> None:
        self.requests: list[int] = []

    async def model_info(self, url: str, model: str, version: str | None = None, label: str | None = None) -> Any:
        return IRIS

    async def infer(self, url: str, info: Any, arrays: Any, *rest: Any) -> dict[str, np.ndarray[Any, Any]]:
        features = arrays["features"]
        self.requests.append(len(features))
        if (features == 666).any():
            raise BackendTimeout("model 'iris' did not answer in time")
        if (features < 0).any():
            raise InvalidInput("model 'iris' refused a negative feature")
        label = (features[:, :1] % 3).astype(np.int64)
        return {"label": label, "probabilities": np.repeat(features[:, :1] / 10, 3, axis=1).astype(np.float32)}


class _Balancer:
    async def call_async(self, urls: list[str], attempt: Any, count: bool = True, label: str | None = None) -> Any:
        return await attempt(urls[0])


class _Db:
    @contextlib.contextmanager
    def begin(self) -> Iterator[str]:
        yield "conn"


@pytest.fixture
def setup(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    job_id = uuid.uuid4()
    job: dict[str, Any] = {"id": job_id, "model_id": uuid.uuid4(), "status": "processing", "chunks_total": 5}
    job.update(chunk_size=20, total=100, chunks_done=0)
    monkeypatch.setattr(store, "claim_chunk", lambda conn, j, chunk: (dict(job), 1))
    monkeypatch.setattr(store, "job_status", lambda conn, j: "processing")
    monkeypatch.setattr(store, "record_chunk", lambda conn, j, chunk, status, counts: {**job, "chunks_done": 1})
    inputs: dict[str, bytes] = {}
    monkeypatch.setattr(storage, "get_bytes", lambda s3, bucket, key: inputs[key])
    written: dict[str, bytes] = {}
    answers = SimpleNamespace(put_lines=lambda bucket, key, data: written.__setitem__(key, data))
    triton, loop = _Triton(), LoopThread("test-vector")
    resolver = SimpleNamespace(backend_urls=lambda model: ["triton:8001"])
    runner = ItemRunner(resolver, _Balancer(), triton, loop)  # type: ignore[arg-type]
    registry = SimpleNamespace(get_model=lambda model_id: {"name": "iris", "version": "1"})
    settings = Settings.from_env(environ={})
    w = BatchWorker(_Db(), None, registry, answers, runner, settings)  # type: ignore[arg-type]
    yield SimpleNamespace(worker=w, job=job, inputs=inputs, written=written, triton=triton, settings=settings)


def _run_chunk(s: Any, lines: list[bytes], *, vector: bool) -> tuple[dict[str, Any], bytes]:
    key = results.input_key(s.job["id"], 2)
    s.inputs[key] = b"\n".join(lines) + b"\n"
    s.worker.vector = ChunkInference.over(s.worker.items, worker.MAX_ERROR_LEN) if vector else None
    event = SimpleNamespace(
        data={
            "job_id": str(s.job["id"]),
            "chunk": 2,
            "start": 40,
            "count": 20,
            "bucket": s.settings.s3_input_bucket,
            "key": key,
        },
        get=lambda name: None,
    )
    status, body = s.worker.process_chunk(event)
    assert status == 200
    return body, s.written[results.chunk_result_key(s.job["id"], 2)]


def test_the_vectorised_chunk_writes_what_the_per_item_path_writes(setup: Any) -> None:
    lines = _lines({"data": [i, 1.5, 2, 3]} for i in range(20))
    lines[5] = _lines([{"data": [-1, 1, 1, 1]}])[0]  # the model refuses it: it alone fails
    lines[13] = _lines([{"data": [-2, 1, 1, 1]}])[0]
    body, vectorised = _run_chunk(setup, lines, vector=True)
    assert body["succeeded"] == 18 and body["failed"] == 2
    sent = sorted(setup.triton.requests, reverse=True)
    assert sent[:3] == [8, 8, 4] and max(sent[3:]) == 4  # max_batch_size rows per request, then halves of the refused
    setup.triton.requests.clear()
    per_item_body, per_item = _run_chunk(setup, lines, vector=False)
    assert vectorised == per_item and body == per_item_body
    rows = [orjson.loads(line) for line in vectorised.splitlines()]
    assert [r["index"] for r in rows] == list(range(40, 60))
    assert "negative" in rows[5]["error"] and "negative" in rows[13]["error"] and "error" not in rows[6]


def test_a_chunk_that_is_not_uniform_takes_the_per_item_path_and_a_retryable_failure_raises(setup: Any) -> None:
    lines = _lines({"data": [i, 1, 1, 1]} for i in range(20))
    lines[3] = b"not json"
    body, written = _run_chunk(setup, lines, vector=True)
    assert body["failed"] == 1 and orjson.loads(written.splitlines()[3])["error"] == "the input is not valid JSON"
    lines[3] = _lines([{"data": [666, 1, 1, 1]}])[0]
    with pytest.raises(BackendTimeout):
        _run_chunk(setup, lines, vector=True)
