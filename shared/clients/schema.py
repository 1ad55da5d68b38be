"""Every table Kinfer keeps (SQLAlchemy Core), in one metadata that Alembic's ``env.py`` sees.

Migrations (``shared/clients/migrations``) create and change them; code queries them.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

metadata = sa.MetaData()

models = sa.Table(
    "models",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("framework", sa.String(32), nullable=False),
    sa.Column("format", sa.String(32), nullable=False),
    sa.Column("backend_urls", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    sa.Column("triton_model", sa.String(128), nullable=False),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("tags", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    sa.Column("metadata", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("status", sa.String(16), nullable=False, server_default="active"),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    # The model lifecycle (0004): the Triton version this registry version maps to (None: Triton's
    # own choice, for models Kinfer does not manage), where its artifact came from and lives, and
    # its load state (awaiting_upload -> pending -> loading -> ready, or failed with a reason).
    sa.Column("triton_version", sa.Integer, nullable=True),
    sa.Column("state", sa.String(16), nullable=False, server_default="ready"),
    sa.Column("state_reason", sa.Text, nullable=True),
    sa.Column("artifact_uri", sa.Text, nullable=True),
    sa.Column("repository_uri", sa.Text, nullable=True),
    sa.Column("artifact_format", sa.String(16), nullable=True),
    sa.Column("artifact_sha256", sa.String(64), nullable=True),
    sa.Column("artifact_bytes", sa.BigInteger, nullable=True),
    # The push options (0007) Kinfer writes into the config.pbtxt it generates for the version's ONNX file
    # (max_batch_size, dynamic batching, instances, device); None: the defaults.
    sa.Column("triton_config", JSONB, nullable=True),
    sa.UniqueConstraint("name", "version", name="uq_models_name_version"),
)

# One row per Triton model whose versions Kinfer manages: the registry name that owns it, the
# last Triton version handed out (never reused), the config.pbtxt every version in it shares and the
# sha256 of its other model-level files (labels.txt, ...). A name's versions whose configs differ
# live in different Triton models (``<triton_model>.v<version>``), each with its own row.
triton_models = sa.Table(
    "triton_models",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("owner", sa.String(128), nullable=False),
    sa.Column("last_version", sa.Integer, nullable=False),
    sa.Column("config", sa.Text, nullable=True),
    sa.Column("files", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

# Named pointers to versions of a model: {"3": 90, "4": 10} (weights in percent, summing to 100),
# and the value before the last move (rollback).
model_aliases = sa.Table(
    "model_aliases",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("alias", sa.String(64), primary_key=True),
    sa.Column("versions", JSONB, nullable=False),
    sa.Column("previous", JSONB, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    # Shadow versions (0011): {version: percent} of the alias's answered requests mirrored to them.
    sa.Column("shadow", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
)

# Automatic rollouts (0011, ``shared.lifecycle.rollout``): one per alias; the policy, the step it is at, the
# per-version counters its step is measured from (``snapshot``), the last figures it decided on, its state.
alias_rollouts = sa.Table(
    "alias_rollouts",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("alias", sa.String(64), primary_key=True),
    sa.Column("baseline", sa.String(32), nullable=False),
    sa.Column("candidate", sa.String(32), nullable=False),
    sa.Column("policy", JSONB, nullable=False),
    sa.Column("step", sa.Integer, nullable=False, server_default="0"),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    sa.Column("snapshot", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("figures", JSONB, nullable=True),
    sa.Column("step_started_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("created_by", sa.String(128), nullable=False, server_default=""),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Index("ix_alias_rollouts_state", "state"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("scopes", JSONB, nullable=False),
    sa.Column("rate_limit_per_minute", sa.Integer, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
    # 0006: the random input of the key's callback signing secret (derived under CALLBACK_SIGNING_SECRET,
    # never stored: shared.access.keys); a rotation draws a new one.
    sa.Column(
        "callback_salt",
        sa.String(64),
        nullable=False,
        server_default=sa.text(
            "replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', '')"
        ),
    ),
    sa.Column("callback_secret_rotated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),  # 0008; NULL: never
    sa.Column("tokens_per_minute", sa.Integer, nullable=True),  # 0012; NULL: no token limit
    sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
)

batch_jobs = sa.Table(
    "batch_jobs",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("owner", sa.String(128), nullable=False),
    sa.Column("model_name", sa.String(128), nullable=False),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("model_id", sa.Uuid, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
    sa.Column("total", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("completed", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("succeeded", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("failed", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("chunk_size", sa.Integer, nullable=False),
    sa.Column("chunks_total", sa.Integer, nullable=False),
    sa.Column("chunks_done", sa.Integer, nullable=False, server_default="0"),
    sa.Column("errors", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("result_key", sa.Text, nullable=True),
    sa.Column("input_url", sa.Text, nullable=True),
    sa.Column("intake_key", sa.String(512), nullable=True, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

batch_chunks = sa.Table(
    "batch_chunks",
    metadata,
    sa.Column("job_id", sa.Uuid, sa.ForeignKey("batch_jobs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("chunk", sa.Integer, primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("processed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("succeeded", sa.Integer, nullable=False, server_default="0"),
    sa.Column("failed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

# Async inference requests (``Prefer: respond-async``, 0005): the request as accepted (``body``: the JSON
# body, its version pinned), its status (queued -> running -> succeeded | failed), the answer a synchronous
# call would have given (``result``) or its error body (``error``), and the optional signed callback.
infer_requests = sa.Table(
    "infer_requests",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("owner", sa.String(128), nullable=False),
    sa.Column("protocol", sa.String(8), nullable=False),
    sa.Column("model_name", sa.String(128), nullable=False),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("route_key", sa.String(256), nullable=True),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, server_default="queued"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("http_status", sa.Integer, nullable=True),
    sa.Column("result", JSONB, nullable=True),
    sa.Column("error", JSONB, nullable=True),
    sa.Column("request_id", sa.String(128), nullable=False),
    sa.Column("trace_id", sa.String(64), nullable=False, server_default=""),
    sa.Column("callback_url", sa.Text, nullable=True),
    sa.Column("callback_status", sa.String(16), nullable=True),
    sa.Column("callback_attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("callback_error", sa.Text, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("callback_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_infer_requests_expires_at", "expires_at"),
)

# The append-only audit log (0009, ``shared.audit``): one row per admin action or platform decision; code
# only inserts and selects (no UPDATE or DELETE path). ``id`` orders entries and is the paging cursor.
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("actor_key_id", sa.String(36), nullable=True),
    sa.Column("actor_name", sa.String(128), nullable=False),
    sa.Column("action", sa.String(128), nullable=False),
    sa.Column("target", sa.String(512), nullable=False),
    sa.Column("model", sa.String(128), nullable=True),
    sa.Column("before", JSONB, nullable=True),
    sa.Column("after", JSONB, nullable=True),
    sa.Column("request_id", sa.String(128), nullable=True),
    sa.Column("trace_id", sa.String(64), nullable=True),
    sa.Index("ix_audit_log_at", "at"),
    sa.Index("ix_audit_log_model_id", "model", "id"),
    sa.Index("ix_audit_log_target_id", "target", "id"),
    sa.Index("ix_audit_log_actor_id", "actor_key_id", "id"),
)

# Payload capture settings (0010, ``shared.inference.capture_rules``): per model name, or per model name and
# the alias (or version) a caller names (``alias`` '' : every request of the model).
capture_settings = sa.Table(
    "capture_settings",
    metadata,
    sa.Column("model_name", sa.String(128), primary_key=True),
    sa.Column("alias", sa.String(64), primary_key=True, server_default=""),
    sa.Column("sample_percent", sa.Float, nullable=False),
    sa.Column("redact", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    sa.Column("updated_by", sa.String(128), nullable=False, server_default=""),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint("sample_percent >= 0 AND sample_percent <= 100", name="ck_capture_settings_percent"),
)

# Token usage (0012, ``shared.access.tokens``): prompt and completion tokens (and answered requests) per API
# key (``anonymous`` with AUTH_REQUIRED off), model and hour, added to in batches (INSERT ... ON CONFLICT).
token_usage = sa.Table(
    "token_usage",
    metadata,
    sa.Column("key_id", sa.String(36), primary_key=True),
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("hour", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("prompt_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("completion_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("requests", sa.BigInteger, nullable=False, server_default="0"),
    sa.Index("ix_token_usage_hour", "hour"),
)
