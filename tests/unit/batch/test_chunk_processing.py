"""The batch worker with fakes at its boundaries (the job store's SQL, S3, the registry, the item runner):
one chunk event becomes result rows in item order with each bad line failed on its own, the chunk is
recorded once, the last chunk finalizes its job, and a cancelled or recorded chunk is skipped. The chunk's
input object, first index and count come from the job row, never from the event: a forged event can name
neither another object nor a job or chunk that does not exist."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from shared.batch import store, worker
from shared.batch.worker import BatchWorker
from shared.errors import InvalidInput, NotFound, Unprocessable
from shared.settings import Settings

JOB = uuid.uuid4()


class _Db:
    @contextlib.contextmanager
    def begin(self) -> Iterator[str]:
        yield "conn"


class _Store:
    """The job store's functions over one in-memory job."""

    def __init__(self, chunks_total: int, status: str = "pending") -> None:
        self.job: dict[str, Any] = {
            "id": JOB,
            "model_id": uuid.uuid4(),
            "status": status,
            "chunks_total": chunks_total,
            "chunk_size": 1,
            "total": chunks_total,
            "chunks_done": 0,
            "succeeded": 0,
            "failed": 0,
        }
        self.recorded: dict[int, Any] = {}
        self.finished: tuple[str, dict[str, Any]] | None = None

    def get_job(self, conn: Any, job_id: uuid.UUID) -> dict[str, Any]:
        if job_id != JOB:
            raise NotFound(f"batch job {job_id} not found")
        return dict(self.job)

    def claim_chunk(self, conn: Any, job_id: uuid.UUID, chunk: int) -> tuple[dict[str, Any], int | None] | None:
        """The job as it was and an attempt when the chunk is claimed now (the worker's one statement)."""
        if job_id != JOB:
            return None
        job = dict(self.job)
        exists = 0 <= chunk < job["chunks_total"] and chunk * job["chunk_size"] < job["total"]
        if job["status"] not in store.ACTIVE or not exists or chunk in self.recorded:
            return job, None
        self.job["status"] = "processing"
        return job, 1

    def job_status(self, conn: Any, job_id: uuid.UUID) -> str:
        return str(self.job["status"])

    def record_chunk(self, conn: Any, job_id: uuid.UUID, chunk: int, status: str, counts: Any) -> Any:
        if chunk in self.recorded or self.job["status"] not in store.ACTIVE:
            return None
        self.recorded[chunk] = (status, counts)
        self.job["chunks_done"] += 1
        self.job["succeeded"] += counts.succeeded
        self.job["failed"] += counts.failed
        return dict(self.job)

    def set_finished(self, conn: Any, job_id: uuid.UUID, status: str, **fields: Any) -> None:
        self.job["status"] = status
        self.finished = (status, fields)


class _Items:
    """Doubles the first feature; an item whose first feature is negative fails alone."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def infer_items(self, model: Any, items: list[Any]) -> list[Any]:
        self.calls.append(len(items))
        out = []
        for item in items:
            first = item["data"][0]
            error = ValueError("model rejected a negative feature") if first < 0 else None
            out.append(SimpleNamespace(error=error, prediction=None if error else first * 2, outputs=None))
        return out


class _Results:
    def __init__(self) -> None:
        self.written: dict[str, bytes] = {}
        self.merged: list[int] = []

    def put_lines(self, bucket: str, key: str, data: bytes) -> None:
        self.written[key] = data

    def merge_chunks(self, job_id: Any, chunks: Any) -> str:
        self.merged = list(chunks)
        return f"batch-results/{job_id}/results.jsonl"


def _event(chunk: int, start: int, count: int) -> Any:
    data = {"job_id": str(JOB), "chunk": chunk, "start": start, "count": count, "bucket": "in", "key": f"c{chunk}"}
    return SimpleNamespace(data=data, get=lambda name: None)


@pytest.fixture
def parts(monkeypatch: pytest.MonkeyPatch) -> Any:
    jobs = _Store(chunks_total=2)
    for name in ("get_job", "claim_chunk", "job_status", "record_chunk", "set_finished"):
        monkeypatch.setattr(store, name, getattr(jobs, name))
    inputs: dict[str, bytes] = {}
    read: list[tuple[str, str]] = []

    def get_bytes(s3: Any, bucket: str, key: str) -> bytes:
        read.append((bucket, key))
        if key.startswith(f"batch-inputs/{JOB}/chunk-"):  # the layout the job row names: c<chunk> here
            return inputs[f"c{int(key.rsplit('-', 1)[1].split('.')[0])}"]
        return inputs[key]

    monkeypatch.setattr(worker.storage, "get_bytes", get_bytes)
    items, results = _Items(), _Results()
    registry = SimpleNamespace(get_model=lambda model_id: {"name": "iris", "version": "1"})
    w = BatchWorker(_Db(), None, registry, results, items, Settings.from_env(environ={}))  # type: ignore[arg-type]
    return SimpleNamespace(worker=w, jobs=jobs, inputs=inputs, items=items, results=results, read=read)


def _rows(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in data.splitlines()]


def test_a_chunk_becomes_rows_in_item_order_and_each_bad_line_fails_alone(parts: Any) -> None:
    parts.jobs.job.update(chunk_size=5, total=25, chunks_total=5)
    parts.inputs["c2"] = b'{"data": [1]}\nnot json\n{"data": [-1]}\n[1, 2]\n{"data": [3]}\n'
    status, body = parts.worker.process_chunk(_event(2, 10, 5))
    assert status == 200 and body["succeeded"] == 2 and body["failed"] == 3
    rows = _rows(next(iter(parts.results.written.values())))
    assert [r["index"] for r in rows] == [10, 11, 12, 13, 14]
    assert rows[0]["prediction"] == 2 and rows[4]["prediction"] == 6
    assert rows[1]["error"] == "the input is not valid JSON"
    assert "negative" in rows[2]["error"] and "JSON object" in rows[3]["error"]
    assert parts.items.calls == [3]  # the good and the model-rejected items, in one call
    assert parts.jobs.finished is None  # one chunk of two


def test_the_last_chunk_merges_and_finishes_the_job_and_a_redelivery_is_skipped(parts: Any) -> None:
    parts.inputs.update({"c0": b'{"data": [1]}\n', "c1": b'{"data": [2]}\n'})
    parts.worker.process_chunk(_event(0, 0, 1))
    status, body = parts.worker.process_chunk(_event(1, 1, 1))
    assert body["job_status"] == "completed" and parts.results.merged == [0, 1]
    assert parts.jobs.finished == ("completed", {"result_key": f"batch-results/{JOB}/results.jsonl"})
    again = parts.worker.process_chunk(_event(1, 1, 1))
    assert again == (200, {"job_id": str(JOB), "chunk": 1, "skipped": "job completed"})


def test_a_cancelled_job_is_skipped_before_any_inference(parts: Any) -> None:
    parts.jobs.job["status"] = "cancelled"
    parts.inputs["c0"] = b'{"data": [1]}\n'
    assert parts.worker.process_chunk(_event(0, 0, 1))[1]["skipped"] == "job cancelled"
    assert parts.items.calls == [] and parts.results.written == {}


def test_an_input_that_disagrees_with_its_job_is_not_retried(parts: Any) -> None:
    parts.jobs.job.update(chunk_size=2, total=2, chunks_total=1)
    parts.inputs["c0"] = b'{"data": [1]}\n'
    with pytest.raises(Unprocessable, match="holds 1 item"):
        parts.worker.process_chunk(_event(0, 0, 2))
    with pytest.raises(InvalidInput):
        parts.worker.process_chunk(SimpleNamespace(data={"job_id": "nope"}, get=lambda name: None))


def test_a_dead_lettered_chunk_fails_its_items_with_the_reason_so_the_job_ends(parts: Any) -> None:
    parts.jobs.job.update(chunk_size=3, total=6, chunks_total=2)
    parts.inputs["c0"] = b'{"data": [1]}\n{"data": [2]}\n{"data": [3]}\n'
    parts.worker.process_chunk(_event(0, 0, 3))
    status, body = parts.worker.fail_chunk(_event(1, 3, 3))
    assert body["failed"] == 3 and body["job_status"] == "completed"
    rows = _rows(parts.results.written[f"batch-results/{JOB}/chunk-00001.jsonl"])
    assert [r["index"] for r in rows] == [3, 4, 5]
    assert all(r["error"].startswith("chunk delivery failed after all retries") for r in rows)


# -- events are not trusted: the job row says what a chunk is --------------------------------------
def _forged(job_id: object, chunk: int, start: int, count: int, key: str) -> Any:
    data = {"job_id": str(job_id), "chunk": chunk, "start": start, "count": count, "bucket": "other", "key": key}
    return SimpleNamespace(data=data, get=lambda name: None)


def test_a_forged_chunk_event_cannot_name_another_object_start_or_count(parts: Any) -> None:
    parts.jobs.job.update(chunk_size=2, total=4, chunks_total=2)
    parts.inputs["c1"] = b'{"data": [1]}\n{"data": [2]}\n'
    parts.inputs["uploads/victim/secret.jsonl"] = b'{"data": [9]}\n' * 5
    status, body = parts.worker.process_chunk(_forged(JOB, 1, 1000, 5, "uploads/victim/secret.jsonl"))
    assert status == 200 and body["succeeded"] == 2
    assert parts.read == [("kinfer-batch-inputs", f"batch-inputs/{JOB}/chunk-00001.jsonl")]
    rows = _rows(parts.results.written[f"batch-results/{JOB}/chunk-00001.jsonl"])
    assert [r["index"] for r in rows] == [2, 3] and [r["prediction"] for r in rows] == [2, 4]


def test_an_event_about_an_unknown_job_or_chunk_is_acked_and_creates_no_work(parts: Any) -> None:
    other = uuid.uuid4()
    status, body = parts.worker.process_chunk(_forged(other, 0, 0, 1, "k"))
    assert (status, body) == (200, {"job_id": str(other), "chunk": 0, "skipped": "unknown batch job"})
    status, body = parts.worker.process_chunk(_forged(JOB, 7, 7, 1, "k"))
    assert (status, body["skipped"]) == (200, "the job has no such chunk")
    assert parts.worker.fail_chunk(_forged(other, 0, 0, 1, "k"))[1]["skipped"] == "unknown batch job"
    assert parts.read == [] and parts.results.written == {} and parts.items.calls == []


def test_a_forged_dead_letter_fails_only_the_items_the_job_row_gives_its_chunk(parts: Any) -> None:
    parts.jobs.job.update(chunk_size=2, total=3, chunks_total=2)
    status, body = parts.worker.fail_chunk(_forged(JOB, 1, 0, 10_000_000, "k"))
    assert status == 200 and body["failed"] == 1
    rows = _rows(parts.results.written[f"batch-results/{JOB}/chunk-00001.jsonl"])
    assert [r["index"] for r in rows] == [2]
