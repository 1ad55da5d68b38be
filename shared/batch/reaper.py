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
from shared.domain import JobStatus

if TYPE_CHECKING:
    from shared.batch.jobs import BatchJobs
    from shared.clients.db import Database
    from shared.settings import Settings

log = logging.getLogger(__name__)


class Reaper:
    """Owns ending the batch jobs that stopped progressing, and their reconcile after a restart."""

    def __init__(self, db: Database, s3: Any, jobs: BatchJobs, settings: Settings) -> None:
        self.db = db
        self.s3 = s3
        self.jobs = jobs
        self.settings = settings

    def reap(self) -> list[str]:
        """Fail every active job that stopped progressing; their ids."""
        with self.db.begin() as conn:
            failed = store.fail_stalled(conn, self.settings.batch_stall_timeout_s)
        return [str(row["id"]) for row in failed]

    def reconcile(self) -> dict[str, list[str]]:
        """Re-queue or fail every active job (see the module docstring); ``{"requeued": [...], "failed": [...]}``."""
        outcome: dict[str, list[str]] = {"requeued": [], "failed": []}
        with self.db.begin() as conn:
            jobs = store.active_jobs(conn)
        for job in jobs:
            with self.db.begin() as conn:
                done = set(store.done_chunks(conn, job["id"]))
            missing = [c for c in range(job["chunks_total"]) if c not in done]
            lost = [c for c in missing if not self._input_exists(job["id"], c)]
            if lost:
                self._fail(
                    job["id"],
                    f"the inputs of {len(lost)} chunk(s) were lost while the platform was "
                    f"down (chunk {lost[0]} first); submit the job again",
                )
                outcome["failed"].append(str(job["id"]))
                continue
            for chunk in missing:
                self.jobs.emit_chunk(job, chunk)
            if missing:
                outcome["requeued"].append(str(job["id"]))
                log.info("batch job %s: %d unfinished chunk(s) queued again", job["id"], len(missing))
        return outcome

    def _input_exists(self, job_id: uuid.UUID, chunk: int) -> bool:
        return storage.exists(self.s3, self.settings.s3_input_bucket, results.input_key(job_id, chunk))

    def _fail(self, job_id: uuid.UUID, reason: str) -> None:
        with self.db.begin() as conn:
            store.set_finished(conn, job_id, JobStatus.FAILED, error=reason)
        log.warning("batch job %s failed: %s", job_id, reason)
