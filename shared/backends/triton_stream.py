"""Triton's decoupled gRPC stream (``ModelStreamInfer``) for generative models with the tensors of Triton's vLLM
backend: one generation per call, read response by response.

``generation_request`` builds the ``ModelInferRequest``: the prompt as a ``BYTES`` tensor (a little-endian
uint32 length, then the UTF-8 bytes), ``stream``, the sampling parameters as a JSON ``BYTES`` tensor, and
``exclude_input_in_output`` and the ``return_*`` flags when the model declares them; it asks for an empty
final response, so ``triton_final_response`` always marks the end. ``TritonGeneration.open`` starts a
``ModelStreamInfer`` call on ``AsyncTriton``'s channel for the URL (one per event loop and backend), writes the
request, and ``next`` reads one response as a ``Piece`` (decoded straight from the raw output bytes: it runs
once per token), each read bounded by its timeout; after the final one it half-closes. ``cancel`` cancels the
call (a client gone away: Triton sees the request cancelled). Errors are translated by ``triton.translate``,
those a stream reports in ``error_message`` too. A stream lasts at most MAX_STREAM_S.

**Busy is not broken.** A backend runs generations in turn (or in batches of its own size): past that, Triton
queues them, and a queued generation's first response can take longer than the read timeout. ``Traffic``
notes, per backend URL, when this process last received a response of any generation; ``first`` reads a
generation's first response and, when it times out although the same backend answered another of this
process's generations during the wait, raises ``Overloaded`` (503 ``overloaded``, ``Retry-After``) instead
of ``BackendTimeout``: the backend is working through a queue. The circuit breakers never count
``overloaded`` (``shared.backends.breaker.NOT_FAILURES``), so one caller's load cannot open the circuit that
every tenant's requests to that backend share. A first response that times out while the backend answered
nothing of this process's meanwhile stays a ``BackendTimeout`` and counts as before (the balancer's readiness
check then tells a slow backend from a hung one), as do connection failures and errors the backend reports.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from shared import telemetry
from shared.backends.triton import ModelInfo, translate
from shared.errors import BackendError, BackendTimeout, Unavailable

if TYPE_CHECKING:
    from shared.backends.triton_async import AsyncTriton

MAX_STREAM_S = 290.0  # under the infer Knative Service's timeoutSeconds (300), which would cut the answer short
# The vLLM backend's optional inputs, sent (all true) when the model declares them; text_input is required.
OPTIONAL_FLAGS = (
    "exclude_input_in_output",
    "return_finish_reason",
    "return_num_input_tokens",
    "return_num_output_tokens",
)
OVERLOAD_RETRY_S = 2.0  # Retry-After of an overloaded answer: the queue is moving, come back soon


class Overloaded(Unavailable):
    """503 ``overloaded``: a generation's first response did not come in time while its backend was answering
    this process's other generations (queued behind them). Never counted by the circuit breaker."""

    code = "overloaded"


class Traffic:
    """When this process last received a response from each backend (any generation): the sign that a backend
    whose new generation waits is busy rather than broken. One per process; touched on the event loop only."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._heard: dict[str, float] = {}

    def answered(self, url: str) -> None:
        self._heard[url] = self.clock()

    def answered_since(self, url: str, since: float) -> bool:
        return self._heard.get(url, -math.inf) >= since


@dataclass(frozen=True)
class Piece:
    """What one Triton response carried: new text, and on the last one the finish reason and counts."""

    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    final: bool


class StreamError(Exception):
    """An error a Triton stream reported in a response (``error_message``), shaped for ``translate``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.text = message

    def code(self) -> str:
        lowered = self.text.lower()
        return "StatusCode.NOT_FOUND" if "unknown model" in lowered or "not found" in lowered else "StatusCode.INTERNAL"

    def details(self) -> str:
        return self.text


def _strings(raw: bytes) -> list[str]:
    """The elements of a BYTES tensor's raw contents (each a little-endian uint32 length, then the bytes)."""
    found, at = [], 0
    while at + 4 <= len(raw):
        size = int.from_bytes(raw[at : at + 4], "little")
        found.append(raw[at + 4 : at + 4 + size].decode("utf-8", "replace"))
        at += 4 + size
    return found


_WIDTHS = {"UINT32": 4, "INT32": 4, "UINT64": 8, "INT64": 8}


def piece_of(response: Any, who: str) -> Piece:
    """One ModelInferResponse of the stream as a Piece (``triton_final_response`` marks the last). Decoded
    straight from the raw output bytes: this runs once per token."""
    text, reason = "", None
    counts: dict[str, int] = {}
    raw = response.raw_output_contents
    for i, out in enumerate(response.outputs):
        if i >= len(raw):
            raise BackendError(f"{who} answered output {out.name!r} without its contents")
        if out.name in ("text_output", "finish_reason") and out.datatype == "BYTES":
            value = "".join(_strings(raw[i]))
            if out.name == "text_output":
                text = value
            elif value not in ("", "None", "none", "null"):
                reason = value
        elif out.name in ("num_input_tokens", "num_output_tokens") and out.datatype in _WIDTHS:
            width, data = _WIDTHS[out.datatype], raw[i]
            signed = out.datatype.startswith("INT")
            counts[out.name] = sum(
                int.from_bytes(data[at : at + width], "little", signed=signed) for at in range(0, len(data), width)
            )
    params = response.parameters
    final = params["triton_final_response"].bool_param if "triton_final_response" in params else False
    return Piece(text, reason, counts.get("num_input_tokens"), counts.get("num_output_tokens"), final)


def generation_request(
    info: ModelInfo, version: str | None, prompt: str, sampling: Mapping[str, object], stream: bool, ident: str
) -> Any:
    """The ModelInferRequest of one generation: the prompt as a BYTES tensor, the sampling parameters as
    JSON, and each optional flag the model declares; an empty final response marks the end."""
    from tritonclient.grpc import service_pb2
    from tritonclient.utils import serialize_byte_tensor

    declared = {spec.name for spec in info.inputs}
    shape = [1, 1] if info.batched else [1]
    request = service_pb2.ModelInferRequest(model_name=info.name, model_version=version or "", id=ident)

    def add(name: str, datatype: str, raw: bytes) -> None:
        tensor = request.inputs.add()
        tensor.name, tensor.datatype = name, datatype
        tensor.shape.extend(shape)
        request.raw_input_contents.append(raw)

    def text(value: str) -> bytes:
        return bytes(serialize_byte_tensor(np.array([value.encode("utf-8")], dtype=np.object_)).item())

    add("text_input", "BYTES", text(prompt))
    if "stream" in declared:
        add("stream", "BOOL", np.array([stream], dtype=np.bool_).tobytes())
    if "sampling_parameters" in declared and sampling:
        add("sampling_parameters", "BYTES", text(orjson.dumps(sampling).decode()))
    for flag in OPTIONAL_FLAGS:
        if flag in declared:
            add(flag, "BOOL", np.array([True], dtype=np.bool_).tobytes())
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    return request


class TritonGeneration:
    """One ModelStreamInfer call carrying one request, read response by response (``next``)."""

    def __init__(
        self, call: Any, url: str, model: str, who: str, read_timeout_s: float, traffic: Traffic | None = None
    ) -> None:
        self.call = call
        self.url = url
        self.model = model
        self.who = who
        self.read_timeout_s = read_timeout_s
        self.traffic = traffic
        self.done = False

    @classmethod
    async def open(
        cls,
        triton: AsyncTriton,
        url: str,
        request: Any,
        who: str,
        read_timeout_s: float,
        traffic: Traffic | None = None,
    ) -> TritonGeneration:
        headers = telemetry.outgoing_headers()
        call = triton.stub(url).ModelStreamInfer(
            metadata=tuple(headers.items()) if headers else None, timeout=MAX_STREAM_S
        )
        generation = cls(call, url, request.model_name, who, read_timeout_s, traffic)
        try:
            await call.write(request)
        except Exception as exc:  # grpc.aio errors: translated once, here
            generation.cancel()
            raise translate(exc, url, request.model_name, who) from exc
        return generation

    async def first(self) -> Piece:
        """The first response: ``next``, except that a timeout while the backend answered another of this
        process's generations during the wait is ``Overloaded`` (queued, not broken; see the module)."""
        began = self.traffic.clock() if self.traffic is not None else 0.0
        try:
            return await self.next()
        except BackendTimeout:
            if self.traffic is None or not self.traffic.answered_since(self.url, began):
                raise
            raise Overloaded(
                f"the Triton backend of {self.who} is busy with other generations and did not start this one "
                f"within {self.read_timeout_s:g}s; retry shortly",
                retry_after=OVERLOAD_RETRY_S,
            ) from None

    async def next(self) -> Piece:
        """The next response; BackendTimeout past the read timeout, the translated error of a failed one."""
        import grpc

        try:
            async with asyncio.timeout(self.read_timeout_s):  # no task per read, unlike wait_for
                response = await self.call.read()
        except TimeoutError:
            self.cancel()
            raise BackendTimeout(f"the Triton backend of {self.who} did not answer in time") from None
        except Exception as exc:  # grpc.aio.AioRpcError and transport errors
            self.cancel()
            raise translate(exc, self.url, self.model, self.who) from exc
        if response is grpc.aio.EOF:
            self.done = True
            raise BackendError(f"the Triton backend of {self.who} ended the stream before its last response")
        if self.traffic is not None:
            self.traffic.answered(self.url)
        if response.error_message:
            self.cancel()
            raise translate(StreamError(response.error_message), self.url, self.model, self.who)
        piece = piece_of(response.infer_response, self.who)
        if piece.final:
            self.done = True
            try:
                await self.call.done_writing()
            except Exception:  # noqa: BLE001 - the answer is complete; closing our side is a courtesy
                self.call.cancel()
        return piece

    def cancel(self) -> None:
        """Cancel the call (the client went away, or a failure): Triton sees the request cancelled."""
        if not self.done:
            self.done = True
            self.call.cancel()
