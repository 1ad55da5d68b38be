"""``GET /v1/batch?q=``: a caller's jobs filtered by a part of the model's name (any case, wildcards literal),
with the status filter and pages, against real PostgreSQL through functions-framework."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from shared.clients.schema import batch_jobs
from shared.domain import ANONYMOUS
from tests.conftest import function_client

pytestmark = pytest.mark.integration


@pytest.fixture
def client(services: Any) -> Any:
    return function_client("batch", "manage_batch_jobs")


@pytest.fixture
def jobs(services: Any) -> Iterator[str]:
    """Five finished jobs of the anonymous caller (auth is off) on three models sharing a random part, and one of
    another caller (written straight to the table: running jobs is not what is tested here)."""
    part = uuid.uuid4().hex[:8]
    rows = [
        (ANONYMOUS, f"iris-{part}", "completed"),
        (ANONYMOUS, f"iris-{part}", "failed"),
        (ANONYMOUS, f"IRIS-{part.upper()}-big", "completed"),
        (ANONYMOUS, f"iris-{part}-big", "cancelled"),
        (ANONYMOUS, f"wine-{part}", "completed"),
        ("someone-else", f"iris-{part}", "completed"),
    ]
    values = [
        {
            "id": uuid.uuid4(),
            "owner": owner,
            "model_name": name,
            "model_version": "1",
            "model_id": uuid.uuid4(),
            "status": status,
            "chunk_size": 1,
            "chunks_total": 1,
        }
        for owner, name, status in rows
    ]
    with services.db.begin() as conn:
        conn.execute(sa.insert(batch_jobs), values)
    yield part
    with services.db.begin() as conn:
        conn.execute(sa.delete(batch_jobs).where(batch_jobs.c.id.in_([v["id"] for v in values])))


def test_q_filters_the_callers_jobs_by_a_part_of_the_model_name(client: Any, jobs: str) -> None:
    def models(query: str) -> list[str]:
        body = client.get(f"/v1/batch?{query}").json()
        assert body["total_count"] == len(body["jobs"]), body
        return sorted(j["model"] for j in body["jobs"])

    assert models(f"q=IRIS-{jobs}") == sorted(
        [f"iris-{jobs}", f"iris-{jobs}", f"IRIS-{jobs.upper()}-big", f"iris-{jobs}-big"]
    ), "any case; another caller's job is never listed"
    assert models(f"q={jobs}-BIG&status=completed") == [f"IRIS-{jobs.upper()}-big"]
    assert models(f"q=wine-{jobs}") == [f"wine-{jobs}"]
    assert models(f"q={jobs[:4]}%25") == [] and models(f"q={jobs[:4]}_{jobs[5:]}") == [], "wildcards are literal"
    first = client.get(f"/v1/batch?q={jobs}&limit=3").json()
    second = client.get(f"/v1/batch?q={jobs}&limit=3&offset=3").json()
    assert (first["total_count"], len(first["jobs"]), len(second["jobs"])) == (5, 3, 2)
    assert not {j["job_id"] for j in first["jobs"]} & {j["job_id"] for j in second["jobs"]}


def test_a_q_over_128_characters_is_400_naming_it(client: Any) -> None:
    resp = client.get("/v1/batch?q=" + "x" * 129)
    assert resp.status_code == 400 and resp.json()["field"] == "q" and resp.json()["request_id"], resp.text
