"""Triton over gRPC: one client per backend URL, cached model metadata, errors translated once.

``tritonclient.grpc.InferenceServerClient`` is thread-safe, so a process keeps one
per URL (``TritonPool``) and every thread shares it: the batch worker and the probe
use it; the real-time path uses ``triton_async.AsyncTriton`` (grpc.aio). Model
metadata and config are cached per (url, model, version) for METADATA_TTL_S.
``translate`` turns a tritonclient or gRPC error into the Kinfer error tree (the
public message names the model, never the backend's address) and
``is_backend_failure`` says whether it should count against the backend's circuit
breaker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.errors import BackendError, BackendTimeout, InvalidInput, KinferError, ModelError, Unavailable
from shared.settings import Settings

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
    """What Kinfer needs to know about a Triton model to validate and batch requests."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    labels: tuple[str, ...] = ()

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    def expected(self) -> str:
        return "; ".join(s.describe(self.batched) for s in self.inputs)


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
    return ModelInfo(metadata["name"], specs(metadata.get("inputs")), specs(metadata.get("outputs")), max_batch, labels)


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


class TritonPool:
    """gRPC clients per backend URL and a TTL cache of model metadata, shared by all threads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._clients: dict[str, Any] = {}
        self._info: dict[tuple[str, str, str], tuple[float, ModelInfo]] = {}
        self._outputs: dict[ModelInfo, list[Any]] = {}
        self._lock = threading.Lock()

    def client(self, url: str) -> Any:
        found = self._clients.get(url)
        if found is None:
            import tritonclient.grpc as grpcclient

            with self._lock:
                found = self._clients.get(url)
                if found is None:
                    found = grpcclient.InferenceServerClient(url, channel_args=CHANNEL_ARGS)
                    self._clients[url] = found
        return found

    def model_info(self, url: str, model: str, version: str | None = None, label: str | None = None) -> ModelInfo:
        """Metadata + config of ``model`` (``version``: a Triton model version) on ``url``, cached for
        METADATA_TTL_S."""
        key = (url, model, version or "")
        hit = self._info.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        client, timeout = self.client(url), self.settings.triton_timeout_s
        try:
            metadata = client.get_model_metadata(model, version or "", as_json=True, client_timeout=timeout)
            config = client.get_model_config(model, version or "", as_json=True, client_timeout=timeout)
        except Exception as exc:  # tritonclient raises InferenceServerException; translate once here
            raise translate(exc, url, model, label) from exc
        info = model_info_from(metadata, config)
        self._info[key] = (time.monotonic() + self.settings.metadata_ttl_s, info)
        return info

    def infer(
        self,
        url: str,
        info: ModelInfo,
        arrays: Mapping[str, np.ndarray[Any, Any]],
        headers: Mapping[str, str] | None = None,
        version: str | None = None,
        label: str | None = None,
    ) -> dict[str, np.ndarray[Any, Any]]:
        """One Triton inference request (``version``: the Triton model version, "" or None = Triton's
        policy); every output tensor comes back as a numpy array."""
        import tritonclient.grpc as grpcclient

        tensors = []
        for spec in info.inputs:
            array = arrays[spec.name]
            tensor = grpcclient.InferInput(spec.name, list(array.shape), spec.datatype)
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        outputs = self._requested_outputs(info)
        try:
            result = self.client(url).infer(
                info.name,
                tensors,
                model_version=version or "",
                outputs=outputs,
                headers=dict(headers or {}),
                client_timeout=self.settings.triton_timeout_s,
            )
        except Exception as exc:
            raise translate(exc, url, info.name, label) from exc
        return {o.name: result.as_numpy(o.name) for o in info.outputs}

    def _requested_outputs(self, info: ModelInfo) -> list[Any]:
        """InferRequestedOutput objects per model (immutable once built; reused across requests)."""
        found = self._outputs.get(info)
        if found is None:
            import tritonclient.grpc as grpcclient

            found = self._outputs[info] = [grpcclient.InferRequestedOutput(o.name) for o in info.outputs]
        return found

    def ready(self, url: str, models: list[str], timeout: float = 2.0) -> tuple[bool, list[str], str]:
        """(server ready, the given models that are not ready, reason) — the probe's check (operators'
        view: the reason may name the backend)."""
        client = self.client(url)
        try:
            if not client.is_server_ready(client_timeout=timeout):
                return False, list(models), "server not ready"
            missing = [m for m in models if not client.is_model_ready(m, client_timeout=timeout)]
        except Exception as exc:
            status, text = error_parts(exc)
            return False, list(models), f"{status or type(exc).__name__}: {text[:200]}"
        return True, missing, (f"models not ready: {', '.join(missing)}" if missing else "ready")

    def forget(self, url: str) -> None:
        """Drop cached metadata of ``url`` (after a backend failure its models may have changed)."""
        for key in [k for k in self._info if k[0] == url]:
            self._info.pop(key, None)

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            try:
                client.close()
            except Exception:  # closing a broken channel must not fail shutdown
                log.debug("closing a Triton client failed", exc_info=True)
