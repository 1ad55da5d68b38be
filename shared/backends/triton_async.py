"""Triton over grpc.aio for the real-time path: the protobuf request built directly, no thread hop.

One channel per (event loop, backend URL): grpc.aio channels belong to the loop that made
them (``shared.clients.aio.PerLoop``). The request is a ``ModelInferRequest`` with raw
little-endian tensor bytes (what ``tritonclient.grpc`` sends, without its per-call
wrapper objects; a BYTES tensor as length-prefixed elements); outputs come back as numpy
views of the raw output bytes (BYTES: object arrays of ``bytes``). Model
metadata and config are cached per (url, model, version) for METADATA_TTL_S, and a
miss is fetched once however many requests are waiting for it. Errors are translated
once, here, by ``triton.translate``. Every Triton inference request counts its rows in
the recorder (``kinfer_backend_request_rows``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from shared.backends.triton import (
    BYTES,
    CHANNEL_ARGS,
    NP_DTYPES,
    ModelInfo,
    error_parts,
    model_info_from,
    serialize_bytes,
    translate,
)
from shared.clients.aio import PerLoop, SingleFlight
from shared.errors import BackendError
from shared.settings import Settings

if TYPE_CHECKING:
    from shared.backends.metrics import Recorder
    from shared.domain import JSONObject


class AsyncTriton:
    """grpc.aio stubs per backend URL (per event loop) and a TTL cache of model metadata."""

    def __init__(self, settings: Settings, recorder: Recorder | None = None) -> None:
        self.settings = settings
        self.recorder = recorder
        self._stubs: PerLoop[dict[str, tuple[Any, Any]]] = PerLoop(dict)
        self._info: dict[tuple[str, str, str], tuple[float, ModelInfo]] = {}
        self._flight = SingleFlight()

    def stub(self, url: str) -> Any:
        stubs = self._stubs.get()
        found = stubs.get(url)
        if found is None:
            import grpc
            from tritonclient.grpc import service_pb2_grpc

            channel = grpc.aio.insecure_channel(url, options=CHANNEL_ARGS)
            found = stubs[url] = (channel, service_pb2_grpc.GRPCInferenceServiceStub(channel))
        return found[1]

    # -- metadata ------------------------------------------------------------------------
    def cached_info(self, url: str, model: str, version: str | None = None) -> ModelInfo | None:
        hit = self._info.get((url, model, version or ""))
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    async def model_info(self, url: str, model: str, version: str | None = None, label: str | None = None) -> ModelInfo:
        """Metadata + config of ``model`` on ``url``, cached for METADATA_TTL_S (one fetch per miss)."""
        found = self.cached_info(url, model, version)
        if found is not None:
            return found

        async def fetch() -> ModelInfo:
            metadata, config = await self._metadata(url, model, version, label)
            info = replace(model_info_from(metadata, config), max_string_bytes=self.settings.max_string_bytes)
            self._info[(url, model, version or "")] = (time.monotonic() + self.settings.metadata_ttl_s, info)
            return info

        return await self._flight.run(("info", url, model, version or ""), fetch)

    async def model_config(
        self, url: str, model: str, version: str | None = None, label: str | None = None
    ) -> JSONObject:
        """Triton's model configuration as JSON (the v2 ``/config`` route)."""
        return cast("JSONObject", (await self._metadata(url, model, version, label))[1].get("config", {}))

    async def _metadata(
        self, url: str, model: str, version: str | None, label: str | None
    ) -> tuple[JSONObject, JSONObject]:
        from google.protobuf.json_format import MessageToDict
        from tritonclient.grpc import service_pb2

        stub, timeout = self.stub(url), self.settings.triton_timeout_s
        try:
            metadata = await stub.ModelMetadata(
                service_pb2.ModelMetadataRequest(name=model, version=version or ""), timeout=timeout
            )
            config = await stub.ModelConfig(
                service_pb2.ModelConfigRequest(name=model, version=version or ""), timeout=timeout
            )
        except Exception as exc:  # grpc.aio.AioRpcError and transport errors: translated once, here
            raise translate(exc, url, model, label) from exc
        return (
            MessageToDict(metadata, preserving_proto_field_name=True),
            MessageToDict(config, preserving_proto_field_name=True),
        )

    async def model_ready(self, url: str, model: str, version: str | None = None, timeout: float = 2.0) -> bool:
        """Triton's readiness of one model (False when the backend cannot say)."""
        from tritonclient.grpc import service_pb2

        try:
            answer = await self.stub(url).ModelReady(
                service_pb2.ModelReadyRequest(name=model, version=version or ""), timeout=timeout
            )
        except Exception:  # unreachable backend: not ready
            return False
        return bool(answer.ready)

    async def server_ready(self, url: str, timeout: float = 1.0) -> bool:
        from tritonclient.grpc import service_pb2

        try:
            return bool((await self.stub(url).ServerReady(service_pb2.ServerReadyRequest(), timeout=timeout)).ready)
        except Exception:  # unreachable backend: not ready
            return False

    async def ready(self, url: str, models: list[str], timeout: float = 2.0) -> tuple[bool, list[str], str]:
        """(server ready, the given models that are not ready, reason): the probe's check (operators' view:
        the reason may name the backend)."""
        from tritonclient.grpc import service_pb2

        stub = self.stub(url)
        try:
            if not (await stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=timeout)).ready:
                return False, list(models), "server not ready"
            missing = [
                m
                for m in models
                if not (await stub.ModelReady(service_pb2.ModelReadyRequest(name=m), timeout=timeout)).ready
            ]
        except Exception as exc:  # grpc.aio errors: the probe reports them as its reason
            status, text = error_parts(exc)
            return False, list(models), f"{status or type(exc).__name__}: {text[:200]}"
        return True, missing, (f"models not ready: {', '.join(missing)}" if missing else "ready")

    async def served_models(self, url: str, timeout: float) -> list[str]:
        """The names in ``url``'s model repository index, after a liveness call; raises the gRPC error
        as is (a registration check reads its text to tell Triton from another protocol)."""
        from tritonclient.grpc import service_pb2

        stub = self.stub(url)
        await stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=timeout)
        index = await stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(), timeout=timeout)
        return [m.name for m in index.models]

    async def server_live(self, url: str, timeout: float) -> bool:
        """Triton's liveness (False when it does not answer in ``timeout``); a call through Knative's
        activator also wakes a backend that scaled to zero."""
        from tritonclient.grpc import service_pb2

        try:
            return bool((await self.stub(url).ServerLive(service_pb2.ServerLiveRequest(), timeout=timeout)).live)
        except Exception:  # not live (yet)
            return False

    def forget(self, url: str) -> None:
        """Drop cached metadata of ``url`` (after a backend failure its models may have changed)."""
        for key in [k for k in self._info if k[0] == url]:
            self._info.pop(key, None)

    # -- inference -----------------------------------------------------------------------
    async def infer(
        self,
        url: str,
        info: ModelInfo,
        arrays: Mapping[str, np.ndarray[Any, Any]],
        headers: Mapping[str, str] | None = None,
        version: str | None = None,
        label: str | None = None,
    ) -> dict[str, np.ndarray[Any, Any]]:
        """One Triton inference request; every output tensor comes back as a numpy array."""
        from tritonclient.grpc import service_pb2

        request = service_pb2.ModelInferRequest(model_name=info.name, model_version=version or "")
        rows = 1
        for spec in info.inputs:
            array = arrays[spec.name]
            tensor = request.inputs.add()
            tensor.name, tensor.datatype = spec.name, spec.datatype
            tensor.shape.extend(array.shape)
            request.raw_input_contents.append(
                serialize_bytes(array) if spec.datatype == BYTES else np.ascontiguousarray(array).tobytes()
            )
            rows = array.shape[0] if info.batched and array.ndim else 1
        for out in info.outputs:
            request.outputs.add().name = out.name
        metadata = tuple(headers.items()) if headers else None
        try:
            response = await self.stub(url).ModelInfer(
                request, metadata=metadata, timeout=self.settings.triton_timeout_s
            )
        except Exception as exc:  # grpc.aio.AioRpcError and transport errors: translated once, here
            raise translate(exc, url, info.name, label) from exc
        if self.recorder is not None:
            self.recorder.record_rows(url, rows)
        return outputs_of(response, label or info.name)

    def close(self) -> None:
        """Forget every channel (each closes with its event loop; Services.close may run off any loop)."""
        self._stubs.drain()


def outputs_of(response: Any, who: str) -> dict[str, np.ndarray[Any, Any]]:
    """The output tensors of a ModelInferResponse as numpy arrays (raw bytes; BYTES decoded)."""
    outputs: dict[str, np.ndarray[Any, Any]] = {}
    raw = response.raw_output_contents
    for i, out in enumerate(response.outputs):
        shape = tuple(out.shape)
        if out.datatype == BYTES:
            from tritonclient.utils import deserialize_bytes_tensor

            outputs[out.name] = deserialize_bytes_tensor(raw[i]).reshape(shape)
            continue
        dtype = NP_DTYPES.get(out.datatype)
        if dtype is None or i >= len(raw):
            raise BackendError(f"{who} answered output {out.name!r} in an unsupported form ({out.datatype})")
        outputs[out.name] = np.frombuffer(raw[i], dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
    return outputs
