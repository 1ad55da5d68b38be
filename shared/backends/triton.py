"""What every Triton call shares: tensor specs and model metadata (``ModelInfo``), channel options,
and the translation of Triton's errors. The one client is ``triton_async.AsyncTriton`` (grpc.aio):
the real-time path calls it on the server's event loop, threads (the batch worker, the probe,
registration checks) through a ``shared.clients.aio.LoopThread``.
BYTES (string) tensors are numpy object arrays of ``bytes``, in Triton's raw form on the wire
(``serialize_bytes``/``deserialize_bytes``).
``translate`` turns a tritonclient or gRPC error into the Kinfer error tree (the
public message names the model, never the backend's address) and
``is_backend_failure`` says whether it should count against the backend's circuit
breaker.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.errors import BackendError, BackendTimeout, InvalidInput, KinferError, ModelError, Unavailable

log = logging.getLogger(__name__)

# gRPC status codes that mean "the caller's request is wrong", not "the backend is broken".
_CALLER_CODES = {"StatusCode.INVALID_ARGUMENT", "StatusCode.OUT_OF_RANGE", "StatusCode.FAILED_PRECONDITION"}

# Default tritonclient channel options plus short reconnect backoff: a backend that comes back is
# used again within ~2 s instead of gRPC's default exponential backoff of up to 120 s.
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.keepalive_time_ms", 2**31 - 1),
    ("grpc.keepalive_timeout_ms", 20000),
    ("grpc.keepalive_permit_without_calls", False),
    ("grpc.http2.max_pings_without_data", 2),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]

NP_DTYPES: dict[str, Any] = {
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "BOOL": np.bool_,
}
# Strings: a BYTES tensor is a numpy object array of ``bytes`` (``shared.inference.codec`` makes it from JSON
# strings); on the wire (gRPC raw contents, the HTTP binary tensor extension) each element, in row-major
# order, is a 4-byte little-endian length and then its bytes (``serialize_bytes``/``deserialize_bytes``).
BYTES = "BYTES"
MAX_STRING_BYTES = 65_536  # the default bound of one string element (setting MAX_STRING_BYTES)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor; ``shape`` excludes the batch dimension of batched models (-1 = any)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def describe(self, batched: bool) -> str:
        dims = ", ".join("n" if d < 0 else str(d) for d in self.shape)
        batch = f" (or a batch [n, {dims}])" if batched else ""
        return f"{self.name!r} {self.datatype} [{dims}]{batch}"


@dataclass(frozen=True)
class ModelInfo:
    """What Kinfer needs to know about a Triton model to validate and batch requests.

    ``max_string_bytes`` bounds each element of a BYTES input (the setting MAX_STRING_BYTES, which
    ``AsyncTriton.model_info`` puts here so that every path validating against this info applies it)."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    labels: tuple[str, ...] = ()
    max_string_bytes: int = MAX_STRING_BYTES
    decoupled: bool = False  # answers as a stream (model_transaction_policy.decoupled): the OpenAI routes only

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    @property
    def rows_first(self) -> bool:
        """Whether a request's first dimension counts rows: a batched model's, and an unbatched one's whose
        every tensor begins with -1 (``max_batch_size`` 0 over a graph with a batch axis), so both take the
        same bodies."""
        if self.batched:
            return True
        tensors = self.inputs + self.outputs
        return bool(tensors) and all(s.shape and s.shape[0] < 0 for s in tensors)

    def row_shape(self, spec: TensorSpec) -> tuple[int, ...]:
        """One row of ``spec`` as callers send it (without the leading -1 of a rows-first unbatched model)."""
        return spec.shape[1:] if self.rows_first and not self.batched else spec.shape

    def expected(self) -> str:
        return "; ".join(
            TensorSpec(s.name, s.datatype, self.row_shape(s)).describe(self.rows_first) for s in self.inputs
        )


def model_info_from(metadata: Mapping[str, Any], config: Mapping[str, Any]) -> ModelInfo:
    """Build ModelInfo from Triton's JSON model metadata and model config."""
    config = config.get("config", config)
    max_batch = int(config.get("max_batch_size", 0) or 0)
    skip = 1 if max_batch > 0 else 0

    def specs(items: Any) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(t["name"], t["datatype"], tuple(int(d) for d in t.get("shape", []))[skip:]) for t in items or []
        )

    params = config.get("parameters") or {}
    raw_labels = (params.get("class_names") or params.get("labels") or {}).get("string_value", "")
    labels = tuple(x.strip() for x in raw_labels.split(",") if x.strip())
    decoupled = bool((config.get("model_transaction_policy") or {}).get("decoupled", False))
    return ModelInfo(
        metadata["name"],
        specs(metadata.get("inputs")),
        specs(metadata.get("outputs")),
        max_batch,
        labels,
        decoupled=decoupled,
    )


def serialize_bytes(array: np.ndarray[Any, Any]) -> bytes:
    """A BYTES tensor in Triton's raw form: per element (row-major) a 4-byte little-endian length, then the bytes
    (``str`` elements as UTF-8)."""
    parts: list[bytes] = []
    for item in array.reshape(-1).tolist():
        data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(len(data).to_bytes(4, "little"))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes(raw: bytes | memoryview, count: int) -> list[bytes]:
    """The ``count`` elements of a BYTES tensor in Triton's raw form; ValueError saying what is wrong when
    ``raw`` holds another number of elements or a length runs past its end."""
    view, offset, end = memoryview(raw), 0, len(raw)
    items: list[bytes] = []
    while offset < end:
        if len(items) == count:
            raise ValueError(f"holds more than the {count} element(s) its shape says")
        if offset + 4 > end:
            raise ValueError(f"element {len(items)} has a truncated length (4-byte little-endian)")
        size = int.from_bytes(view[offset : offset + 4], "little")
        offset += 4
        if offset + size > end:
            raise ValueError(f"element {len(items)} says {size} bytes but only {end - offset} follow")
        items.append(bytes(view[offset : offset + size]))
        offset += size
    if len(items) != count:
        raise ValueError(f"holds {len(items)} element(s); its shape says {count}")
    return items


def error_parts(exc: BaseException) -> tuple[str, str]:
    """(gRPC status like ``StatusCode.UNAVAILABLE``, text) of a tritonclient or grpc.aio error."""
    if hasattr(exc, "code") and callable(exc.code) and hasattr(exc, "details"):  # grpc.aio.AioRpcError
        return str(exc.code() or ""), str(exc.details() or "")
    status = str(exc.status() or "") if hasattr(exc, "status") and callable(exc.status) else ""
    text = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    return status, str(text or "")


def translate(exc: BaseException, url: str, model: str, label: str | None = None) -> KinferError:
    """One Triton error -> the Kinfer error tree.

    The public message names the backend by its registry identity (``label``, e.g.
    ``model 'iris' version '1'``), never by host:port, and never carries Triton's or gRPC's
    text: those go to the log here, once.
    """
    status, text = error_parts(exc)
    who = label or f"Triton model {model!r}"
    caller = status in _CALLER_CODES
    log.log(
        logging.INFO if caller else logging.WARNING,
        "Triton %s model %s: %s %s",
        url,
        model,
        status or type(exc).__name__,
        text[:500],
    )
    if caller:
        return InvalidInput(f"{who} rejected the input: the tensors do not match what the model accepts", field="input")
    if status == "StatusCode.INTERNAL":  # the server answered: the model (or its backend) failed on this input
        return ModelError(f"{who} failed on this input (the model raised an error); check the input values")
    if status == "StatusCode.DEADLINE_EXCEEDED" or "Deadline Exceeded" in text:
        return BackendTimeout(f"the Triton backend of {who} did not answer in time")
    if status == "StatusCode.NOT_FOUND" or "unknown model" in text:
        return BackendError(f"{who} is not loaded on its Triton backend", code="model_not_loaded")
    if status in ("StatusCode.UNAVAILABLE", "") or "failed to connect" in text.lower():
        return Unavailable(f"the Triton backend of {who} is unavailable", retry_after=1)
    return BackendError(f"the Triton backend of {who} failed")


def is_backend_failure(err: KinferError) -> bool:
    """Backend failures count against the circuit breaker; caller errors (4xx, a model that failed on
    one caller's input included) never do: one tenant's bad input must not open it for every tenant."""
    return err.status >= 500


def is_connection_failure(err: KinferError) -> bool:
    """Failures worth one retry on another backend (nothing reached the model)."""
    return type(err) is Unavailable or err.code == "model_not_loaded"
