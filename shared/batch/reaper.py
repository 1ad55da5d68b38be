"""No batch job stays active forever: the stall reaper and the reconcile after a restart.

A job progresses whenever a worker claims or records one of its chunks (``batch_jobs.updated_at``).
One that did not for ``BATCH_STALL_TIMEOUT_S`` (longer than the event transport's whole retry
window, so a chunk still being retried is never cut short) lost its chunk events: it is failed
with that reason when anyone reads it (``GET /v1/batch[/{id}]``, ``shared.batch.jobs``).

``reconcile`` runs when the local stack starts (``kinfer up``), when events kept in a private
Redis may be gone: each active job's unrecorded chunks are queued again when their inputs are
still in object storage (the worker records a chunk once, so a chunk that was still queued is
harmless twice), and the job is failed with the reason when they are not.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

from shared.batch import results, store
from shared.clients import storage

if TYPE_CHECKING:
    from shared.services import Services

log = logging.getLogger(__name__)


def reap(services: Services) -> list[str]:
    """Fail every active job that stopped progressing; their ids."""
    with services.db.begin() as conn:
        failed = store.fail_stalled(conn, services.settings.batch_stall_timeout_s)
    return [str(row["id"]) for row in failed]


def reconcile(services: Services) -> dict[str, list[str]]:
    """Re-queue or fail every active job (see the module docstring); ``{"requeued": [...], "failed": [...]}``."""
    from shared.batch.jobs import emit_chunk

    outcome: dict[str, list[str]] = {"requeued": [], "failed": []}
    with services.db.begin() as conn:
        jobs = store.active_jobs(conn)
    for job in jobs:
        with services.db.begin() as conn:
            done = set(store.done_chunks(conn, job["id"]))
        missing = [c for c in range(job["chunks_total"]) if c not in done]
        lost = [c for c in missing if not _input_exists(services, job["id"], c)]
        if lost:
            _fail(
                services,
                job["id"],
                f"the inputs of {len(lost)} chunk(s) were lost while the platform was "
                f"down (chunk {lost[0]} first); submit the job again",
            )
            outcome["failed"].append(str(job["id"]))
            continue
        for chunk in missing:
            emit_chunk(services, job, chunk)
        if missing:
            outcome["requeued"].append(str(job["id"]))
            log.info("batch job %s: %d unfinished chunk(s) queued again", job["id"], len(missing))
    return outcome


def _input_exists(services: Services, job_id: uuid.UUID, chunk: int) -> bool:
    return storage.exists(services.s3, services.settings.s3_input_bucket, results.input_key(job_id, chunk))


def _fail(services: Services, job_id: Any, reason: str) -> None:
    with services.db.begin() as conn:
        store.set_finished(conn, job_id, "failed", error=reason)
    log.warning("batch job %s failed: %s", job_id, reason)
