"""The domain's vocabulary: the states a model version and a batch job go through (``StrEnum``s, so
a member is its string in SQL, JSON and comparisons) and the shapes of the records that cross
module boundaries (``TypedDict``s).

The records are typed dicts on purpose: the registry's rows travel as JSON through the Redis
cache and the in-process resolver cache to every inference, so a dict typed for mypy costs the
hot path nothing, where a dataclass would be built and taken apart on each cache read. mypy
--strict checks every key a module reads or writes against these declarations.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import NotRequired, TypedDict

# The owner of batch jobs and async requests sent without a key (AUTH_REQUIRED off) or by an event.
ANONYMOUS = "anonymous"


def owner_of(principal: object) -> str:
    """The caller's key id, or ANONYMOUS when auth is off."""
    key_id = getattr(principal, "key_id", None)
    return str(key_id) if key_id else ANONYMOUS


JSONObject = dict[str, object]
"""An arbitrary JSON object given by a user (a model's ``metadata``): its keys are not the code's."""


class ModelState(StrEnum):
    """Where a model version is in its lifecycle (``state``)."""

    AWAITING_UPLOAD = "awaiting_upload"
    PENDING = "pending"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class ModelStatus(StrEnum):
    """Whether a model version takes traffic (``status``): set by its owner, unlike ``state``."""

    ACTIVE = "active"
    INACTIVE = "inactive"
    DEPRECATED = "deprecated"


class Device(StrEnum):
    """Where a pushed model's Triton instances run (``triton_config.device``): Triton's KIND_CPU or KIND_GPU."""

    CPU = "cpu"
    GPU = "gpu"


class TritonOptions(TypedDict, total=False):
    """Push options Kinfer writes into the ``config.pbtxt`` it generates for an ONNX file
    (``triton_config`` of ``POST /v1/models``); a key left out keeps the default."""

    max_batch_size: int  # 0: no batch dimension (the tensors' full shapes)
    dynamic_batching: bool
    max_queue_delay_us: int  # dynamic batching's max_queue_delay_microseconds
    instances: int  # instance_group count
    device: str  # a Device value


class JobStatus(StrEnum):
    """A batch job's status; the first two are active, the others final."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ModelVersion(TypedDict):
    """One registered model version as the API answers it (and as the registry caches it)."""

    id: str
    name: str
    version: str
    framework: str
    format: str
    backend_url: str | None
    backend_urls: list[str]
    triton_model: str
    triton_version: int | None
    description: str
    tags: list[str]
    metadata: JSONObject
    status: str  # a ModelStatus value (read back from SQL/JSON as a plain str)
    state: str  # a ModelState value
    state_reason: str | None
    artifact_uri: str | None
    repository_uri: str | None
    artifact_format: str | None
    artifact_sha256: str | None
    artifact_bytes: int | None
    triton_config: TritonOptions | None  # the push options its config.pbtxt was written with
    created_at: str
    updated_at: str
    warnings: NotRequired[list[str]]


class ApiKeyRecord(TypedDict):
    """A row of ``api_keys`` (its hash never leaves the key store's module)."""

    id: str
    name: str
    prefix: str
    scopes: list[str]
    rate_limit_per_minute: int | None
    tokens_per_minute: int | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    expires_at: datetime | None


class ApiKey(TypedDict):
    """The public form of a key: never its secret or hash, only the display prefix."""

    id: str
    name: str
    prefix: str
    status: str
    scopes: list[str]
    rate_limit_per_minute: int | None
    tokens_per_minute: int | None  # None: no token limit
    created_at: datetime  # the JSON encoder writes the ISO form
    last_used_at: datetime | None
    revoked_at: datetime | None
    expires_at: datetime | None


class JobError(TypedDict):
    """One entry of a batch job's error sample: an item's error, or (no ``index``) the job's own."""

    error: str
    index: NotRequired[int]


class ReplayDifference(TypedDict):
    """One replayed item whose answer differs from the captured one: its index in the replay job, the
    captured request's id, and both answers (predictions, or outputs when no prediction was captured)."""

    index: int
    request_id: str | None
    captured: object
    replayed: object


class ReplayComparison(TypedDict):
    """A finished replay job's answers against the captured ones (``shared.batch.replay``): items whose
    prediction is equal or differs, items the candidate failed, the mean absolute difference of numeric
    outputs, and captured requests left out (redacted, binary or failed)."""

    compared: int
    equal: int
    differing: int
    failed: int
    mean_abs_diff: float | None
    skipped: int
    differences: NotRequired[list[ReplayDifference]]  # the first MAX_EXAMPLES differing items


class BatchJob(TypedDict):
    """The status body of a batch job (``GET /v1/batch/{id}``)."""

    id: str
    job_id: str
    status: str
    progress: float
    total: int
    completed: int
    succeeded: int
    failed: int
    result_url: str | None
    errors: list[JobError]
    model: str
    version: str
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    error: NotRequired[str]
    input_url: NotRequired[str]
    comparison: NotRequired[ReplayComparison]
