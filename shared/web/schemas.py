"""JSON Schemas of the public API's bodies, for the OpenAPI document (``shared.web.openapi``).

These describe what the handlers accept and answer (``README.md`` shows each by example);
``tests/e2e/test_fuzz.py`` checks every live answer against them. Request schemas say
what a well-formed body looks like (the handlers still validate everything and answer
400 with the field); response schemas leave room for added properties, so that adding a
field to an answer is a compatible change.
"""

from __future__ import annotations

from typing import cast

from shared.domain import JobStatus, ModelState, ModelStatus
from shared.registry import rules
from shared.web.route import QueryParam

Schema = dict[str, object]  # a JSON Schema: arbitrary JSON by nature

_STRING = {"type": "string"}
_NULLABLE_STRING = {"type": ["string", "null"]}
_TIME = {"type": "string", "format": "date-time"}
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
_COUNT = {"type": "integer", "minimum": 0}
_JOB_STATUSES = [s.value for s in JobStatus]

# The registry's own rules (shared.registry.rules), so the documented contract is the enforced one.
MODEL_NAME = {"type": "string", "pattern": f"^{rules.NAME.pattern}$"}
VERSION = {"type": "string", "pattern": f"^{rules.VERSION.pattern}$"}
FRAMEWORK = {"enum": list(rules.FRAMEWORKS)}
FORMAT = {"enum": list(rules.FORMATS)}
MODEL_STATUS = {"enum": [s.value for s in ModelStatus]}
TAG = {"type": "string", "pattern": f"^{rules.TAG.pattern}$"}
BACKEND_URL = {"type": "string", "maxLength": 256, "description": "a Triton gRPC endpoint, host:port"}

_MODEL_WRITABLE: Schema = {
    "description": {"type": "string", "maxLength": 4096},
    "status": MODEL_STATUS,
    "tags": {"type": "array", "items": TAG, "maxItems": 32},
    "metadata": {"type": "object", "description": "free JSON, at most 16 KiB and 8 levels deep"},
    "backend_url": {"type": ["string", "null"], "maxLength": 256},
    "backend_urls": {"type": "array", "items": BACKEND_URL, "maxItems": 16, "uniqueItems": True},
    "triton_model": MODEL_NAME,
}

MODEL_CREATE: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "version", "framework", "format"],
    "properties": {
        "name": MODEL_NAME,
        "version": VERSION,
        "framework": FRAMEWORK,
        "format": FORMAT,
        **_MODEL_WRITABLE,
        "upload": {"const": True, "description": "the file follows: PUT /v1/models/{id}/artifact"},
        "artifact_uri": {"type": "string", "maxLength": 1024, "description": "s3://bucket/key"},
        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "triton_config": {
            "type": "object",
            "additionalProperties": False,
            "description": "push options written into the config.pbtxt Kinfer generates for an ONNX file "
            "(upload or artifact_uri only; left out: the defaults)",
            "properties": {
                "max_batch_size": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": 65536,
                    "description": "0: no batch dimension; default ONNX_MAX_BATCH_SIZE when every tensor's "
                    "first dimension is dynamic",
                },
                "dynamic_batching": {"type": "boolean", "description": "default: on when batched"},
                "max_queue_delay_us": {"type": "integer", "minimum": 0, "maximum": 10_000_000},
                "instances": {"type": "integer", "minimum": 1, "maximum": 64, "description": "instance count"},
                "device": {"enum": ["cpu", "gpu"], "description": "KIND_CPU or KIND_GPU"},
            },
        },
    },
}

MODEL_UPDATE: Schema = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "properties": dict(_MODEL_WRITABLE),
}

MODEL: Schema = {
    "type": "object",
    "required": [
        "id",
        "name",
        "version",
        "framework",
        "format",
        "backend_url",
        "backend_urls",
        "triton_model",
        "description",
        "tags",
        "metadata",
        "status",
        "created_at",
        "updated_at",
    ],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "name": _STRING,
        "version": _STRING,
        "framework": _STRING,
        "format": _STRING,
        "backend_url": _NULLABLE_STRING,
        "backend_urls": {"type": "array", "items": _STRING},
        "triton_model": _STRING,
        "description": _NULLABLE_STRING,
        "tags": {"type": "array", "items": _STRING},
        "metadata": {"type": "object"},
        "status": _STRING,
        "triton_version": {"type": ["integer", "null"]},
        "triton_config": {"type": ["object", "null"], "description": "the push options of its config"},
        "created_at": _TIME,
        "updated_at": _TIME,
    },
}

_SPLIT: Schema = {
    "type": "object",
    "additionalProperties": {"type": "integer", "minimum": 1, "maximum": 100},
    "description": "version -> percentage of traffic (adds up to 100)",
}

ALIAS_TARGET: Schema = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "maxProperties": 2,
    "properties": {
        "version": VERSION,
        "versions": _SPLIT,
        "allow_signature_change": {
            "type": "boolean",
            "default": False,
            "description": "move even to versions whose inputs or outputs differ from the alias's (else 409)",
        },
    },
}

ALIAS: Schema = {
    "type": "object",
    "required": ["name", "alias", "versions"],
    "properties": {"name": _STRING, "alias": _STRING, "versions": _SPLIT},
}

ALIAS_LIST: Schema = {
    "type": "object",
    "required": ["name", "aliases"],
    "properties": {"name": _STRING, "aliases": {"type": "array", "items": ALIAS}},
}

VERSION_STATUS: Schema = {
    "type": "object",
    "required": ["id", "name", "version", "state"],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "name": _STRING,
        "version": _STRING,
        "status": _STRING,
        "state": _STRING,
        "state_reason": _NULLABLE_STRING,
        "triton_model": _STRING,
        "triton_version": {"type": ["integer", "null"]},
        "backends": {"type": "object"},
    },
}

_LISTED_MODEL: Schema = {
    **MODEL,
    "properties": {
        **cast(Schema, MODEL["properties"]),
        "aliases": {
            "type": "array",
            "items": ALIAS,
            "description": "with include=aliases: every alias of the model's name and its split "
            "(the same list for each version of a name), read in one query for the whole page",
        },
    },
}

MODEL_LIST: Schema = {
    "type": "object",
    "required": ["models", "total", "limit", "offset"],
    "properties": {
        "models": {"type": "array", "items": _LISTED_MODEL},
        "total": {**_COUNT, "description": "the models matching the filters, on every page"},
        "limit": _COUNT,
        "offset": _COUNT,
    },
}

HEALTH: Schema = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"enum": ["healthy", "degraded", "unhealthy"]},
        "service": _STRING,
        "checks": {"type": "object", "additionalProperties": _STRING},
    },
}

_TENSOR_VALUES = {
    "type": "array",
    "description": "numbers (strings for a BYTES tensor), nested as the tensor's shape (or a batch of rows)",
}

INFER_REQUEST: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["model", "input"],
    "properties": {
        "model": {"type": "string", "minLength": 1, "maxLength": 128},
        "version": {"type": ["string", "null"], "maxLength": 32},
        "input": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": _TENSOR_VALUES,
            "description": '{"data": [...]} for a one-input model, or {"<tensor>": [...], ...}',
        },
    },
}

INFER_RESPONSE: Schema = {
    "type": "object",
    "required": ["model", "version", "prediction", "outputs", "latency_ms", "timestamp", "request_id"],
    "properties": {
        "model": _STRING,
        "version": _STRING,
        "prediction": {},
        "outputs": {"type": "object"},
        "latency_ms": {"type": "number", "minimum": 0},
        "timestamp": _TIME,
        "request_id": _STRING,
        "trace_id": _STRING,
    },
}

ASYNC_ACCEPTED_DESCRIPTION = (
    "queued (Prefer: respond-async): poll Location (GET /v1/requests/{id}); an optional Kinfer-Callback-URL "
    "header names an https receiver of the outcome, signed with Kinfer-Signature"
)
_REQUEST_STATUS = {"enum": ["queued", "running", "succeeded", "failed"]}

INFER_ACCEPTED: Schema = {
    "type": "object",
    "required": ["id", "status", "model", "version", "created_at", "expires_at", "location"],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "status": {"const": "queued"},
        "model": _STRING,
        "version": _STRING,
        "created_at": _TIME,
        "expires_at": _TIME,
        "location": {"type": "string", "description": "/v1/requests/{id}, as in the Location header"},
        "callback_url": _STRING,
    },
}

INFER_REQUEST_STATUS: Schema = {
    "type": "object",
    "required": ["id", "status", "protocol", "model", "version", "attempts", "created_at", "expires_at"],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "status": _REQUEST_STATUS,
        "protocol": {"enum": ["v1", "v2"]},
        "model": _STRING,
        "version": _STRING,
        "attempts": _COUNT,
        "created_at": _TIME,
        "started_at": _NULLABLE_TIME,
        "finished_at": _NULLABLE_TIME,
        "expires_at": _TIME,
        "key_id": {"type": "string", "description": "the API key that sent it (a callback receiver checks it)"},
        "http_status": {"type": "integer", "description": "the status the synchronous call would have answered"},
        "result": {"type": "object", "description": "succeeded: exactly the body of the synchronous answer"},
        "error": {"type": "object", "description": "failed: the error body of the synchronous answer"},
        "callback": {
            "type": "object",
            "properties": {
                "url": _STRING,
                "status": {"enum": ["pending", "queued", "delivered", "failed", None]},
                "attempts": _COUNT,
                "error": _NULLABLE_STRING,
                "at": _NULLABLE_TIME,
            },
        },
    },
}

INFER_REQUEST_MATCHES: Schema = {
    "type": "object",
    "required": ["prefix", "requests", "more"],
    "properties": {
        "prefix": _STRING,
        "requests": {
            "type": "array",
            "description": "the caller's own live requests whose id starts with prefix, newest first (at most 10)",
            "items": {
                "type": "object",
                "required": ["id", "status", "model", "version", "created_at"],
                "properties": {
                    "id": {"type": "string", "format": "uuid"},
                    "status": _REQUEST_STATUS,
                    "model": _STRING,
                    "version": _STRING,
                    "created_at": _TIME,
                },
            },
        },
        "more": {"type": "boolean", "description": "more requests start with prefix: give more of the id"},
    },
}

_V2_TENSOR = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": _STRING,
        "datatype": _STRING,
        "shape": {"type": "array", "items": {"type": "integer"}},
        "data": {"type": "array"},
        "parameters": {"type": "object"},
    },
}

V1_PREDICT_REQUEST: Schema = {
    "type": "object",
    "required": ["instances"],
    "properties": {
        "instances": {
            "type": "array",
            "minItems": 1,
            "description": "rows (lists or numbers), or objects with a value per input tensor",
        },
        "parameters": {"type": "object"},
    },
    "additionalProperties": False,
}

V1_PREDICT_RESPONSE: Schema = {
    "type": "object",
    "required": ["predictions", "model_name", "model_version"],
    "properties": {
        "predictions": {"type": "array", "description": "one per instance"},
        "model_name": _STRING,
        "model_version": _STRING,
        "request_id": _STRING,
        "trace_id": _STRING,
    },
}

V2_INFER_REQUEST: Schema = {
    "type": "object",
    "required": ["inputs"],
    "description": "KServe Open Inference Protocol v2; binary tensors follow the JSON with "
    "Inference-Header-Content-Length",
    "properties": {
        "id": _STRING,
        "parameters": {"type": "object"},
        "inputs": {"type": "array", "minItems": 1, "items": _V2_TENSOR},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": _STRING, "parameters": {"type": "object"}},
            },
        },
    },
}

V2_INFER_RESPONSE: Schema = {
    "type": "object",
    "required": ["model_name", "outputs"],
    "properties": {
        "model_name": _STRING,
        "model_version": _STRING,
        "id": _STRING,
        "parameters": {"type": "object"},
        "outputs": {"type": "array", "items": _V2_TENSOR},
    },
}

V2_METADATA: Schema = {
    "type": "object",
    "required": ["name", "versions", "platform", "inputs", "outputs"],
    "properties": {
        "name": _STRING,
        "versions": {"type": "array", "items": _STRING},
        "platform": _STRING,
        "inputs": {"type": "array", "items": _V2_TENSOR},
        "outputs": {"type": "array", "items": _V2_TENSOR},
    },
}

BATCH_SUBMIT: Schema = {
    "type": "object",
    "additionalProperties": False,
    "description": "exactly one of inputs, input_url or from_capture (model required with inputs or input_url)",
    "properties": {
        "model": {"type": "string", "minLength": 1, "maxLength": 128},
        "from_capture": {
            "type": "object",
            "additionalProperties": False,
            "required": ["model", "since", "until"],
            "description": "replay captured requests of this window on `version` (admin keys only); the "
            "finished job's status carries `comparison` with the captured answers",
            "properties": {
                "model": {"type": "string", "maxLength": 128},
                "version": {"type": "string", "maxLength": 32, "description": "the captured version (default all)"},
                "since": {"type": "string", "format": "date-time"},
                "until": {"type": "string", "format": "date-time"},
            },
        },
        "version": {"type": ["string", "null"], "maxLength": 32},
        "inputs": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "object"},
            "description": 'one input per item, like {"data": [...]}; bad items fail one by one',
        },
        "input_url": {
            "type": "string",
            "maxLength": 1024,
            "description": "s3://<input bucket>/uploads/<your key id>/...: an object under the prefix "
            "that POST /v1/batch/uploads grants",
        },
    },
}

BATCH_ACCEPTED: Schema = {
    "type": "object",
    "required": ["job_id", "status", "total"],
    "properties": {"job_id": {"type": "string", "format": "uuid"}, "status": _STRING, "total": _COUNT},
}

BATCH_JOB: Schema = {
    "type": "object",
    "required": [
        "job_id",
        "status",
        "progress",
        "total",
        "completed",
        "succeeded",
        "failed",
        "result_url",
        "errors",
        "model",
        "version",
        "created_at",
        "started_at",
        "finished_at",
    ],
    "properties": {
        "job_id": {"type": "string", "format": "uuid"},
        "status": {"enum": _JOB_STATUSES},
        "progress": {"type": "number", "minimum": 0, "maximum": 1},
        "total": _COUNT,
        "completed": _COUNT,
        "succeeded": _COUNT,
        "failed": _COUNT,
        "result_url": {
            "type": ["string", "null"],
            "description": "presigned GET of the results (JSON Lines), once finished and while the object exists",
        },
        "errors": {"type": "array", "items": {"type": "object"}},
        "model": _STRING,
        "version": _STRING,
        "created_at": _TIME,
        "started_at": _NULLABLE_TIME,
        "finished_at": _NULLABLE_TIME,
        "error": _STRING,
        "input_url": _STRING,
        "comparison": {
            "type": "object",
            "description": "a finished replay job (from_capture): its answers against the captured ones",
            "properties": {
                "compared": _COUNT,
                "equal": _COUNT,
                "differing": _COUNT,
                "failed": _COUNT,
                "mean_abs_diff": {"type": ["number", "null"]},
                "skipped": _COUNT,
                "differences": {
                    "type": "array",
                    "description": "the first 20 differing items: index, the captured request's id, both answers",
                    "items": {
                        "type": "object",
                        "properties": {
                            "index": _COUNT,
                            "request_id": {"type": ["string", "null"]},
                            "captured": {},
                            "replayed": {},
                        },
                    },
                },
            },
        },
    },
}

BATCH_LIST: Schema = {
    "type": "object",
    "required": ["jobs", "total", "limit", "offset"],
    "properties": {"jobs": {"type": "array", "items": BATCH_JOB}, "total": _COUNT, "limit": _COUNT, "offset": _COUNT},
}

BATCH_CANCELLED: Schema = {
    "type": "object",
    "required": ["job_id", "status"],
    "properties": {"job_id": {"type": "string", "format": "uuid"}, "status": {"const": "cancelled"}},
}

UPLOAD_REQUEST: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["size"],
    "properties": {
        "filename": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"},
        "size": {"type": "integer", "minimum": 1, "description": "the file's length in bytes (signed into the URL)"},
    },
}

UPLOAD_GRANT: Schema = {
    "type": "object",
    "required": ["input_url", "upload_url", "method", "headers", "expires_in", "prefix"],
    "properties": {
        "input_url": _STRING,
        "upload_url": _STRING,
        "method": {"const": "PUT"},
        "headers": {"type": "object", "additionalProperties": _STRING},
        "expires_in": _COUNT,
        "prefix": _STRING,
    },
}

BACKENDS_HEALTH: Schema = {
    "type": "object",
    "required": ["status", "backends"],
    "properties": {
        "status": {"enum": ["healthy", "degraded", "unhealthy"]},
        "service": _STRING,
        "backends": {"type": "array", "items": {"type": "object"}},
    },
}

PROBE_RESULT: Schema = {
    "type": "object",
    "required": ["event_id", "probed", "healthy", "backends"],
    "properties": {
        "event_id": _STRING,
        "probed": _COUNT,
        "healthy": _COUNT,
        "backends": {"type": "array", "items": {"type": "object"}},
    },
}


_NULLABLE_NUMBER = {"type": ["number", "null"]}
BACKENDS_OVERVIEW: Schema = {
    "type": "object",
    "required": ["window_s", "backends"],
    "properties": {
        "window_s": {
            "type": ["number", "null"],
            "description": "how far back rate and p50 look (seconds actually covered); null until two snapshots exist",
        },
        "backends": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["url", "circuit", "failures", "healthy", "last_probe", "p50_ms", "requests_per_s"],
                "properties": {
                    "url": {
                        "type": "string",
                        "description": "host:port for admin keys; for other keys an opaque, stable name (backend-...)",
                    },
                    "circuit": {"enum": ["closed", "open", "half-open"]},
                    "failures": _COUNT,
                    "healthy": {"type": ["boolean", "null"], "description": "last probe; null when never probed"},
                    "last_probe": _NULLABLE_TIME,
                    "probe_ms": _NULLABLE_NUMBER,
                    "reason": _NULLABLE_STRING,
                    "state": {
                        "enum": ["serving", "waking", "idle-stopped", "stopping", None],
                        "description": "a backend that scales to zero (the local activator): waking while it "
                        "starts and holds requests; null for other backends",
                    },
                    "state_since": {**_NULLABLE_TIME, "description": "when it entered that state"},
                    "wake_estimate_s": {
                        **_NULLABLE_NUMBER,
                        "description": "how long its last wake took: the estimate while it wakes "
                        "(null before the first)",
                    },
                    "models": {"type": "array", "items": _STRING},
                    "p50_ms": {**_NULLABLE_NUMBER, "description": "median Triton request latency over the window"},
                    "requests_per_s": {**_NULLABLE_NUMBER, "description": "Triton requests per second over the window"},
                    "requests": {
                        "type": "object",
                        "additionalProperties": _COUNT,
                        "description": "requests by outcome since the counters began",
                    },
                },
            },
        },
    },
}

WHOAMI: Schema = {
    "type": "object",
    "required": ["id", "name", "scopes"],
    "properties": {
        "id": _NULLABLE_STRING,
        "name": _STRING,
        "scopes": {"type": "array", "items": {"enum": ["infer", "batch", "admin"]}},
        "rate_limit_per_minute": {"type": ["integer", "null"]},
        "tokens_per_minute": {"type": ["integer", "null"], "description": "prompt + completion tokens; null: none"},
        "expires_at": {"type": ["string", "null"], "format": "date-time"},
    },
}

# Key limits (PATCH /v1/keys/{id}) and token usage (GET /v1/usage, ``shared.access.tokens``)
_LIMIT = {"type": ["integer", "null"], "minimum": 1}
KEY_LIMITS: Schema = {
    "type": "object",
    "minProperties": 1,
    "additionalProperties": False,
    "properties": {
        "rate_limit_per_minute": {**_LIMIT, "maximum": 10_000_000, "description": "requests; null: the default"},
        "tokens_per_minute": {**_LIMIT, "maximum": 100_000_000, "description": "prompt + completion; null: none"},
    },
}
_TOKENS = {"type": "integer", "minimum": 0}
_USAGE_AMOUNTS = {
    "prompt_tokens": _TOKENS,
    "completion_tokens": _TOKENS,
    "total_tokens": _TOKENS,
    "requests": {**_TOKENS, "description": "answered requests"},
}
USAGE_FILTERS = (
    QueryParam(
        "key_id",
        {"type": "string", "maxLength": 64},
        "a key id, `self` or `anonymous`; admin keys only for another key's",
    ),
    QueryParam("model", {"type": "string", "maxLength": 128}, "one model (registry name or alias as called)"),
    QueryParam("since", {"type": "string", "format": "date-time"}, "ISO 8601; default: 24 hours before until"),
    QueryParam("until", {"type": "string", "format": "date-time"}, "ISO 8601; default: now"),
    QueryParam("by", {"enum": ["model", "hour"], "default": "model"}, "rows per key and model, or per hour too"),
    QueryParam(
        "limit", {"type": "integer", "minimum": 1, "maximum": 10_000, "default": 1000}, "at most this many rows"
    ),
)
USAGE_REPORT: Schema = {
    "type": "object",
    "required": ["since", "until", "by", "usage", "totals", "limit", "truncated"],
    "properties": {
        "since": {"type": "string", "format": "date-time"},
        "until": {"type": "string", "format": "date-time"},
        "by": {"enum": ["model", "hour"]},
        "key_id": _NULLABLE_STRING,
        "model": _NULLABLE_STRING,
        "usage": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key_id", "model", "prompt_tokens", "completion_tokens", "total_tokens", "requests"],
                "properties": {
                    "key_id": _STRING,
                    "model": _STRING,
                    "hour": {"type": "string", "format": "date-time", "description": "by=hour: the hour's start"},
                    **_USAGE_AMOUNTS,
                },
            },
        },
        "totals": {"type": "object", "properties": _USAGE_AMOUNTS},
        "limit": {"type": "integer"},
        "truncated": {"type": "boolean", "description": "more rows than limit: totals still count them all"},
    },
}


HEALTH_ANSWERS = {
    200: ("healthy, or degraded (Redis unreachable)", HEALTH),
    503: ("unhealthy: a required dependency is unreachable", HEALTH),
}

_PAGE = (
    QueryParam("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}, "page size"),
    QueryParam("offset", {"type": "integer", "minimum": 0, "maximum": 10_000_000, "default": 0}, "skip"),
)
MODEL_FILTERS = (
    QueryParam("q", {"type": "string", "maxLength": 128}, "a part of the name, any case"),
    QueryParam("name", MODEL_NAME, "exact name"),
    QueryParam("framework", FRAMEWORK),
    QueryParam("status", MODEL_STATUS),
    QueryParam("state", {"enum": [s.value for s in ModelState]}, "load state"),
    QueryParam("tag", TAG, "models carrying this tag"),
    QueryParam("include", {"enum": ["aliases"]}, "aliases: add each model's aliases (one request per page)"),
    *_PAGE,
)
BATCH_FILTERS = (
    QueryParam("q", {"type": "string", "maxLength": 128}, "a part of the model's name, any case"),
    QueryParam("status", {"enum": _JOB_STATUSES}),
    *_PAGE,
)

# Shadow versions and automatic rollouts (``shared.lifecycle.shadow``, ``shared.lifecycle.rollout``)
_PERCENTS: Schema = {"type": "object", "additionalProperties": {"type": "integer", "minimum": 1, "maximum": 100}}
SHADOW_SET: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["shadow"],
    "properties": {"shadow": {**_PERCENTS, "maxProperties": 3, "description": "{version: percent}; {} stops"}},
}
SHADOW_SUMMARY: Schema = {
    "type": "object",
    "required": ["name", "alias", "shadow", "pairs"],
    "properties": {
        "name": _STRING,
        "alias": _STRING,
        "shadow": _PERCENTS,
        "pairs": {
            "type": "array",
            "items": {
                "type": "object",
                "description": "per (primary, shadow) pair: mirrored, agree, disagree, errors, dropped, agreement, "
                "max_abs_difference, shadow_latency_ms, primary_latency_ms",
            },
        },
    },
}
ROLLOUT_START: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["candidate"],
    "properties": {
        "candidate": VERSION,
        "steps": {
            "type": "array",
            "items": {"type": "integer", "minimum": 1, "maximum": 100},
            "default": [10, 50, 100],
        },
        "min_requests": {"type": "integer", "minimum": 1, "default": 100},
        "min_step_s": {"type": "number", "minimum": 0, "default": 60},
        "max_error_rate": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.01},
        "max_p99_ratio": {"type": "number", "minimum": 1, "default": 1.5},
    },
}
ROLLOUT: Schema = {
    "type": "object",
    "required": ["name", "alias", "baseline", "candidate", "policy", "step", "percent", "state"],
    "properties": {
        "name": _STRING,
        "alias": _STRING,
        "baseline": _STRING,
        "candidate": _STRING,
        "policy": {"type": "object"},
        "step": {"type": "integer"},
        "percent": {"type": "integer"},
        "state": {"enum": ["running", "paused", "promoted", "rolled_back", "aborted"]},
        "reason": _STRING,
        "figures": {"type": ["object", "null"], "description": "the figures of the last decision"},
    },
}

# -- OpenAI-compatible routes (shared.inference.openai) -----------------------------------------------------
_OPENAI_MODEL = {
    "type": "string",
    "minLength": 1,
    "maxLength": 193,
    "description": "a registry name, name:alias or name:version",
}
_OPENAI_SAMPLING: Schema = {
    "max_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": 512},
    "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
    "top_p": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1},
    "stop": {
        "oneOf": [
            {"type": "string", "minLength": 1, "maxLength": 64},
            {"type": "array", "maxItems": 4, "items": {"type": "string", "minLength": 1, "maxLength": 64}},
            {"type": "null"},
        ]
    },
    "seed": {"type": ["integer", "null"], "minimum": 0, "maximum": 2**63 - 1},
    "stream": {"type": ["boolean", "null"], "description": "true: server-sent events (text/event-stream)"},
    "stream_options": {"type": ["object", "null"], "properties": {"include_usage": {"type": "boolean"}}},
    "user": {"type": "string", "maxLength": 256},
}
OPENAI_CHAT_REQUEST: Schema = {
    "type": "object",
    "required": ["model", "messages"],
    "description": "OpenAI's chat completion request; other OpenAI fields are ignored (n, echo, logprobs, tools: 400)",
    "properties": {
        "model": _OPENAI_MODEL,
        "messages": {
            "type": "array",
            "minItems": 1,
            "maxItems": 64,
            "items": {
                "type": "object",
                "required": ["role", "content"],
                "properties": {
                    "role": {"enum": ["system", "developer", "user", "assistant"]},
                    "content": {
                        "oneOf": [
                            {"type": "string"},
                            {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["type", "text"],
                                    "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
                                },
                            },
                        ]
                    },
                },
            },
        },
        "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": 512},
        **_OPENAI_SAMPLING,
    },
}
OPENAI_COMPLETION_REQUEST: Schema = {
    "type": "object",
    "required": ["model", "prompt"],
    "description": "OpenAI's (legacy) completion request; other OpenAI fields are ignored (n, echo, logprobs: 400)",
    "properties": {
        "model": _OPENAI_MODEL,
        "prompt": {"oneOf": [{"type": "string"}, {"type": "array", "minItems": 1, "maxItems": 1, "items": _STRING}]},
        **_OPENAI_SAMPLING,
    },
}
_OPENAI_USAGE = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {"prompt_tokens": _COUNT, "completion_tokens": _COUNT, "total_tokens": _COUNT},
}
_OPENAI_FINISH = {"enum": ["stop", "length"]}
OPENAI_CHAT_COMPLETION: Schema = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices", "usage"],
    "description": "stream: true answers text/event-stream instead: data: <chat.completion.chunk> per token, "
    "then data: [DONE]",
    "properties": {
        "id": _STRING,
        "object": {"const": "chat.completion"},
        "created": {"type": "integer"},
        "model": {"type": "string", "description": "name:version, the version that answered"},
        "system_fingerprint": _STRING,
        "choices": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "message", "finish_reason"],
                "properties": {
                    "index": {"type": "integer"},
                    "message": {
                        "type": "object",
                        "required": ["role", "content"],
                        "properties": {"role": {"const": "assistant"}, "content": _STRING},
                    },
                    "finish_reason": _OPENAI_FINISH,
                },
            },
        },
        "usage": _OPENAI_USAGE,
    },
}
OPENAI_TEXT_COMPLETION: Schema = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices", "usage"],
    "description": "stream: true answers text/event-stream instead: data: <text_completion chunk> per token, "
    "then data: [DONE]",
    "properties": {
        "id": _STRING,
        "object": {"const": "text_completion"},
        "created": {"type": "integer"},
        "model": {"type": "string", "description": "name:version, the version that answered"},
        "system_fingerprint": _STRING,
        "choices": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "text", "finish_reason"],
                "properties": {"index": {"type": "integer"}, "text": _STRING, "finish_reason": _OPENAI_FINISH},
            },
        },
        "usage": _OPENAI_USAGE,
    },
}
OPENAI_MODEL: Schema = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by"],
    "properties": {
        "id": {"type": "string", "description": "a registry name, or name:alias"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": _STRING,
    },
}
OPENAI_MODEL_LIST: Schema = {
    "type": "object",
    "required": ["object", "data"],
    "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": OPENAI_MODEL}},
}
OPENAI_ERROR: Schema = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": _STRING,
                "type": {
                    "type": "string",
                    "description": "invalid_request_error, authentication_error, permission_error, tokens or "
                    "requests (429), server_error",
                },
                "param": _NULLABLE_STRING,
                "code": _NULLABLE_STRING,
            },
        }
    },
}
OPENAI_ERRORS = {
    status: (f"{description} (OpenAI's error shape)", OPENAI_ERROR)
    for status, description in (
        (400, "bad input (param names the field; code context_length_exceeded for a long prompt)"),
        (401, "no or unknown API key"),
        (403, "the key lacks the infer scope"),
        (404, "unknown model (code model_not_found) or route"),
        (405, "method not allowed"),
        (413, "body too large"),
        (415, "not JSON"),
        (422, "the model failed on this input"),
        (429, "request or token rate limit (type requests or tokens; Retry-After)"),
        (500, "unexpected error"),
        (502, "the backend failed"),
        (503, "the backend is unavailable (Retry-After)"),
        (504, "the backend did not answer in time"),
    )
}
