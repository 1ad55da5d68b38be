"""The KServe Open Inference Protocol v2 over HTTP: inference, model metadata/readiness/config,
server metadata.

Inference accepts the JSON form and the binary tensor extension that ``tritonclient.http``
sends by default (``Inference-Header-Content-Length``: a JSON header, then raw tensors in
input order). Answers are always JSON (tritonclient reads both).

``BYTES`` (string) tensors: in JSON ``data`` holds strings; in binary each element is a 4-byte
little-endian length and then its bytes (any bytes, UTF-8 or not), as Triton's binary data
extension has it; every element is at most MAX_STRING_BYTES long. A BYTES output answers the
text of its elements when all are valid UTF-8, else every element in base64 with
``"parameters": {"content_type": "base64"}`` (the marker KServe's MLServer uses).

The model name is the registry name; a version is the registry version. Every malformed
field is a 400 naming it; non-finite numbers (in JSON or in binary tensors) and values
beyond the datatype's range are refused.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict, cast

import numpy as np

from shared import validation as v
from shared.backends.triton import BYTES, NP_DTYPES, ModelInfo, TensorSpec, deserialize_bytes
from shared.errors import InvalidInput, KinferError, Unavailable, UnsupportedMediaType
from shared.inference.capture import Answer, Request
from shared.inference.codec import (
    cast_numbers,
    check_finite,
    check_strings,
    dims_match,
    flat_texts,
    prediction_of,
    refuse_streaming,
    same_inputs,
    to_strings,
    too_many_elements,
)
from shared.inference.resolve import backend_label, label, triton_model, triton_version
from shared.inference.waiting import call_waiting

if TYPE_CHECKING:
    from shared.backends.balancer import Balancer
    from shared.backends.triton_async import AsyncTriton
    from shared.domain import ModelVersion
    from shared.inference.dataplane import DataPlane
    from shared.inference.resolve import Resolver
    from shared.lifecycle.shadow import ShadowAnswer
    from shared.settings import Settings

HEADER_LENGTH = "Inference-Header-Content-Length"
SERVER_NAME = "kinfer"
EXTENSIONS = ["binary_tensor_data", "model_configuration"]
_JSON_TYPES = ("application/json", "application/x-www-form-urlencoded")
JSONObject = v.JSONObject
Sent = tuple[dict[str, np.ndarray[Any, Any]], int]  # the validated input arrays and their rows


class ServerMetadata(TypedDict):
    """GET /v2."""

    name: str
    version: str
    extensions: list[str]


class InputTensor(TypedDict):
    """One of a request's ``inputs`` once ``parse_request`` checked its name and parameters; the rest is
    checked against the model's metadata (``v2_arrays``)."""

    name: str
    datatype: NotRequired[object]
    shape: NotRequired[object]
    data: NotRequired[object]
    parameters: NotRequired[JSONObject | None]


class TensorMetadata(TypedDict):
    name: str
    datatype: str
    shape: list[int]


class OutputTensor(TypedDict):
    name: str
    datatype: str
    shape: list[int]
    data: list[object]
    parameters: NotRequired[JSONObject]


class InferResponse(TypedDict):
    """The v2 inference response (always JSON)."""

    model_name: str
    model_version: str
    id: object
    outputs: list[OutputTensor]


class ModelMetadata(TypedDict):
    """GET /v2/models/{name}[/versions/{v}]."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelReady(TypedDict):
    """GET /v2/models/{name}[/versions/{v}]/ready when ready."""

    name: str
    versions: list[str]
    ready: bool


@lru_cache(maxsize=1)
def server_metadata() -> ServerMetadata:
    """GET /v2: the server metadata response."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("kinfer")
    except PackageNotFoundError:
        ours = "unknown"
    return {"name": SERVER_NAME, "version": ours, "extensions": list(EXTENSIONS)}


def split_body(raw: bytes, headers: Mapping[str, str]) -> tuple[JSONObject, bytes]:
    """(JSON inference request, trailing binary tensor data)."""
    header_length = headers.get(HEADER_LENGTH)
    _check_content_type(headers, binary=header_length is not None)
    n = len(raw)
    if header_length is not None:
        if not header_length.isascii() or not header_length.isdigit():
            raise InvalidInput(f"{HEADER_LENGTH} must be an integer", field=HEADER_LENGTH)
        n = int(header_length)
        if not 0 < n <= len(raw):
            raise InvalidInput(f"{HEADER_LENGTH} is outside the body", field=HEADER_LENGTH)
    request = v.parse_json(raw[:n] if n < len(raw) else raw, "body")
    return v.require_object(request, "body"), raw[n:]


def _check_content_type(headers: Mapping[str, str], binary: bool) -> None:
    encoding = (headers.get("content-encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding[:40]!r} is not supported; send the body uncompressed", field="Content-Encoding"
        )
    content_type = headers.get("content-type")
    if not content_type:
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media in _JSON_TYPES or media.endswith("+json") or (binary and media == "application/octet-stream"):
        return
    raise UnsupportedMediaType(
        f"Content-Type {media[:100]!r} is not supported here; send application/json "
        f"(or application/octet-stream with {HEADER_LENGTH})",
        field="Content-Type",
    )


def _object(value: object, field: str) -> JSONObject:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{field} must be a JSON object", field=field)
    return value


def _name(value: object, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{field} must be a non-empty string", field=field)
    return value


def parse_request(request: Mapping[str, object]) -> tuple[list[InputTensor], list[str] | None]:
    """The request's input tensors and requested output names (None = all), shapes of fields checked."""
    _object(request.get("parameters"), "parameters")
    if "id" in request and not isinstance(request["id"], str):
        raise InvalidInput("id must be a string", field="id")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("inputs must be a non-empty list of tensors", field="inputs")
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, dict):
            raise InvalidInput(f"inputs[{i}] must be a JSON object", field="inputs")
        _name(tensor.get("name"), f"inputs[{i}].name")
        _object(tensor.get("parameters"), f"inputs[{i}].parameters")
    outputs = request.get("outputs")
    tensors = cast("list[InputTensor]", inputs)
    if outputs is None:
        return tensors, None
    if not isinstance(outputs, list):
        raise InvalidInput("outputs must be a list", field="outputs")
    names = []
    for i, out in enumerate(outputs):
        if not isinstance(out, dict):
            raise InvalidInput(f"outputs[{i}] must be a JSON object", field="outputs")
        names.append(_name(out.get("name"), f"outputs[{i}].name"))
        _object(out.get("parameters"), f"outputs[{i}].parameters")
    return tensors, names


def _requested(info: ModelInfo, asked: list[str] | None) -> set[str]:
    names = {s.name for s in info.outputs}
    if asked is None:
        return names
    unknown = [a for a in asked if a not in names]
    if unknown:
        raise InvalidInput(
            f"unknown output {unknown[0]!r}; model {info.name!r} has {', '.join(sorted(names))}", field="outputs"
        )
    return set(asked)


def v2_arrays(
    info: ModelInfo, inputs: list[InputTensor], binary: bytes, max_elements: int
) -> tuple[dict[str, np.ndarray[Any, Any]], int]:
    """Validate v2 input tensors (names, datatype, full shape, values) against the metadata."""
    refuse_streaming(info)
    specs = {s.name: s for s in info.inputs}
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    offset, left = 0, max_elements
    for tensor in inputs:
        if tensor["name"] not in specs:
            raise InvalidInput(
                f"each input needs a name among {', '.join(specs)}; expected {info.expected()}", field="inputs"
            )
        spec = specs[tensor["name"]]
        array, offset = _one(info, spec, tensor, binary, offset, left)
        left -= array.size
        arrays[spec.name] = array
    missing = [n for n in specs if n not in arrays]
    if missing:
        raise InvalidInput(f"input {missing[0]!r} is missing; expected {info.expected()}", field="inputs")
    rows = {a.shape[0] for a in arrays.values()} if info.batched else {1}
    if len(rows) != 1:
        raise InvalidInput("every input needs the same batch size", field="inputs")
    return arrays, rows.pop()


def _one(
    info: ModelInfo, spec: TensorSpec, tensor: InputTensor, binary: bytes, offset: int, max_elements: int
) -> tuple[np.ndarray[Any, Any], int]:
    field = f"inputs.{spec.name}"
    declared = ((-1,) if info.batched else ()) + spec.shape
    expected = f"expected datatype {spec.datatype} and shape {list(declared)}"
    shape = tensor.get("shape")
    if tensor.get("datatype") != spec.datatype:
        raise InvalidInput(f"{field} has datatype {str(tensor.get('datatype'))[:32]!r}; {expected}", field=field)
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        or not dims_match(tuple(shape), declared)
    ):  # rows past the model's max_batch_size are sent in several requests (MAX_INFER_ROWS bounds them)
        shown = shape if isinstance(shape, list) and len(shape) <= 8 else "malformed"
        raise InvalidInput(
            f"{field} has shape {shown}; {expected}",
            field=field,
        )
    size = math.prod(shape)
    if size > max_elements:
        raise too_many_elements(field, size, max_elements)
    if spec.datatype == BYTES:
        return _strings(info, tensor, binary, offset, shape, field, expected, max_elements)
    dtype = NP_DTYPES.get(spec.datatype)
    if dtype is None:
        raise InvalidInput(f"{field}: datatype {spec.datatype} is not supported", field=field)
    nbytes = _binary_size(tensor, field)
    if nbytes is not None:
        chunk = binary[offset : offset + nbytes]
        if len(chunk) != nbytes or nbytes != size * np.dtype(dtype).itemsize:
            raise InvalidInput(f"{field} binary data has {len(chunk)} bytes; {expected}", field=field)
        array = np.frombuffer(chunk, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
        return check_finite(array, field, expected), offset + nbytes
    data = tensor.get("data")
    values: np.ndarray[Any, Any] | None = None
    if isinstance(data, list):
        try:
            values = np.array(data)
        except (ValueError, TypeError):
            values = None
    if values is None or values.size != size:
        raise InvalidInput(f"{field} data must hold {size} numbers; {expected}", field=field)
    return cast_numbers(values, dtype, spec.datatype, field, expected).reshape(shape), offset


def _binary_size(tensor: InputTensor, field: str) -> int | None:
    """``parameters.binary_data_size`` of a tensor sent in binary; None for one sent as JSON."""
    nbytes = (tensor.get("parameters") or {}).get("binary_data_size")
    if nbytes is not None and (not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes < 0):
        raise InvalidInput(
            f"{field}: parameters.binary_data_size must be a non-negative integer",
            field=f"{field}.parameters.binary_data_size",
        )
    return nbytes


def _strings(
    info: ModelInfo,
    tensor: InputTensor,
    binary: bytes,
    offset: int,
    shape: list[int],
    field: str,
    expected: str,
    max_elements: int,
) -> tuple[np.ndarray[Any, Any], int]:
    """A BYTES input: JSON strings in ``data``, or length-prefixed elements in the binary data."""
    size = math.prod(shape)
    nbytes = _binary_size(tensor, field)
    if nbytes is None:
        data = tensor.get("data")
        if not isinstance(data, list):
            raise InvalidInput(f"{field} data must hold {size} strings; {expected}", field=field)
        array = to_strings(data, field, expected, max_elements, info.max_string_bytes) if data else None
        if array is None or array.size != size:
            raise InvalidInput(f"{field} data must hold {size} strings; {expected}", field=field)
        return array.reshape(shape), offset
    chunk = binary[offset : offset + nbytes]
    if len(chunk) != nbytes:
        raise InvalidInput(
            f"{field} binary data has {len(chunk)} bytes; parameters.binary_data_size says {nbytes}", field=field
        )
    try:
        items = deserialize_bytes(chunk, size)
    except ValueError as exc:
        raise InvalidInput(
            f"{field} binary data {exc} (each element: a 4-byte little-endian length, then its bytes); {expected}",
            field=field,
        ) from None
    check_strings(items, field, info.max_string_bytes)
    array = np.empty(size, dtype=object)
    array[:] = items
    return array.reshape(shape), offset + nbytes


def _output(spec: TensorSpec, array: np.ndarray[Any, Any]) -> OutputTensor:
    """One output tensor of the answer (BYTES: text, else base64 with its marker)."""
    tensor: OutputTensor = {"name": spec.name, "datatype": spec.datatype, "shape": list(array.shape), "data": []}
    if spec.datatype == BYTES or array.dtype.kind in "OSU":
        texts, encoded = flat_texts(array)
        tensor["data"] = list(texts)
        if encoded:
            tensor["parameters"] = {"content_type": "base64"}
    else:
        tensor["data"] = array.reshape(-1).tolist()
    return tensor


class V2Protocol:
    """Owns the KServe v2 model endpoints: inference, metadata, readiness and configuration."""

    def __init__(
        self,
        dataplane: DataPlane,
        resolver: Resolver,
        balancer: Balancer,
        triton_async: AsyncTriton,
        settings: Settings,
    ) -> None:
        self.dataplane = dataplane
        self.resolver = resolver
        self.balancer = balancer
        self.triton_async = triton_async
        self.settings = settings

    async def infer_v2(
        self,
        name: str,
        version: str | None,
        raw: bytes,
        headers: Mapping[str, str],
        route_key: str | None = None,
        wait_s: float = 0.0,
        key_id: str | None = None,
    ) -> InferResponse:
        """Run one v2 inference request; the v2 response body (``model_version``: the version that answered).

        The version segment may name a registry version or an alias. A request its model's capture rule
        samples is captured with its answer or its error (``key_id``: the caller's key)."""
        started = time.perf_counter()
        capture = self.dataplane.capture
        redact = None if capture is None else capture.sampled(name, version)
        if capture is None or redact is None:
            return await self._infer(name, version, *split_body(raw, headers), route_key, wait_s, started)
        request: JSONObject | None = None
        try:
            request, binary = split_body(raw, headers)
            answer = await self._infer(name, version, request, binary, route_key, wait_s, started)
        except KinferError as exc:
            inputs = request.get("inputs") if request is not None else None
            capture.record(Request(name, version, "v2", key_id, started, inputs), None, exc, redact)
            raise
        served = Answer(answer["model_version"], answer["outputs"])
        capture.record(Request(name, version, "v2", key_id, started, request["inputs"]), served, None, redact)
        return answer

    async def _infer(
        self,
        name: str,
        version: str | None,
        request: JSONObject,
        binary: bytes,
        route_key: str | None,
        wait_s: float,
        started: float,
    ) -> InferResponse:
        inputs, asked = parse_request(request)
        resolver, dataplane = self.resolver, self.dataplane
        model = await resolver.resolve_async(name, version, route_key)
        tm, tv, urls = triton_model(model), triton_version(model), resolver.backend_urls(model)

        async def attempt(url: str) -> tuple[ModelInfo, Sent, dict[str, np.ndarray[Any, Any]]]:
            who = backend_label(model, urls, url)
            info = self.triton_async.cached_info(url, tm, tv) or await self.triton_async.model_info(url, tm, tv, who)
            arrays, rows = v2_arrays(info, inputs, binary, self.settings.max_infer_elements)
            dataplane.check_rows(rows, "inputs")
            return info, (arrays, rows), await dataplane.infer_arrays(url, info, arrays, rows, tv, who)

        try:
            info, sent, outputs = await call_waiting(self.balancer, urls, attempt, label(model), wait_s)
        except KinferError as exc:
            resolver.record(model, exc.code, started)
            raise
        resolver.record(model, "ok", started)
        if dataplane.shadow is not None:
            self._mirror(name, version, model, info, outputs, inputs, binary, sent, started)
        wanted = _requested(info, asked)
        return {
            "model_name": model["name"],
            "model_version": model["version"],
            "id": request.get("id", ""),
            "outputs": [_output(s, outputs[s.name]) for s in info.outputs if s.name in wanted],
        }

    def _mirror(
        self,
        name: str,
        version: str | None,
        model: ModelVersion,
        info: ModelInfo,
        outputs: dict[str, np.ndarray[Any, Any]],
        inputs: list[InputTensor],
        binary: bytes,
        sent: Sent,
        started: float,
    ) -> None:
        """Offer the answered request to the alias's shadow versions, as /v1/infer does (a dict lookup when the
        alias has none); the shadow version runs the same v2 inputs after the answer is sent (the arrays already
        validated, when it takes the primary's tensors), and the outputs are compared as arrays."""
        mirror = self.dataplane.shadow
        alias, shadows = self.resolver.shadow_of(name, version)
        if mirror is None or alias is None or not shadows:
            return
        primary: ShadowAnswer | None = None
        for percent, target in shadows:
            if target["version"] == model["version"] or not mirror.wanted(percent):
                continue
            if primary is None:
                primary = (prediction_of(info, outputs, False), outputs)

            async def run(target: ModelVersion = target) -> ShadowAnswer:
                tm, tv, urls = triton_model(target), triton_version(target), self.resolver.backend_urls(target)

                async def attempt(url: str) -> tuple[ModelInfo, dict[str, np.ndarray[Any, Any]]]:
                    who = backend_label(target, urls, url)
                    shadow_info = self.triton_async.cached_info(url, tm, tv) or await self.triton_async.model_info(
                        url, tm, tv, who
                    )
                    if same_inputs(info, shadow_info):
                        arrays, rows = sent
                    else:
                        arrays, rows = v2_arrays(shadow_info, inputs, binary, self.settings.max_infer_elements)
                    return shadow_info, await self.dataplane.infer_arrays(url, shadow_info, arrays, rows, tv, who)

                shadow_info, got = await call_waiting(self.balancer, urls, attempt, label(target), 0.0)
                return prediction_of(shadow_info, got, False), got

            pair = (name, alias, model["version"], target["version"])
            mirror.offer(pair, run, primary, time.perf_counter() - started)

    # -- metadata, readiness, configuration ------------------------------------------------------
    async def model_metadata_v2(self, name: str, version: str | None) -> ModelMetadata:
        """GET /v2/models/{name}[/versions/{v}]: the v2 model metadata response. ``versions`` lists every
        active version of the name; inputs and outputs are those of the version that ``version`` (or the
        default) resolves to. With a version segment, ``versions`` is that version alone."""
        model, info = await self._model_info(name, version)
        lead = [-1] if info.batched else []
        versions = [model["version"]] if version is not None else await self.resolver.active_versions(model["name"])
        return {
            "name": model["name"],
            "versions": versions,
            "platform": "kinfer",
            "inputs": [{"name": s.name, "datatype": s.datatype, "shape": lead + list(s.shape)} for s in info.inputs],
            "outputs": [{"name": s.name, "datatype": s.datatype, "shape": lead + list(s.shape)} for s in info.outputs],
        }

    async def _model_info(self, name: str, version: str | None) -> tuple[ModelVersion, ModelInfo]:
        model = await self.resolver.resolve_async(name, version)
        tm, tv, urls = triton_model(model), triton_version(model), self.resolver.backend_urls(model)
        info = await self.balancer.call_async(
            urls,
            lambda url: self.triton_async.model_info(url, tm, tv, backend_label(model, urls, url)),
            count=False,
            label=label(model),
        )
        return model, info

    async def model_ready_v2(self, name: str, version: str | None) -> ModelReady:
        """GET /v2/models/{name}[/versions/{v}]/ready: 200 when a backend has the model ready, else 503."""
        model = await self.resolver.resolve_async(name, version)
        tm, tv = triton_model(model), triton_version(model)
        for backend in await self.balancer.snapshot_async(self.resolver.backend_urls(model)):
            if self.balancer.breakers.allows(backend.circuit) and await self.triton_async.model_ready(
                backend.url, tm, tv
            ):
                return {"name": model["name"], "versions": [model["version"]], "ready": True}
        raise Unavailable(f"{label(model)} is not ready on any of its Triton backends", retry_after=1)

    async def model_config_v2(self, name: str, version: str | None) -> JSONObject:
        """GET /v2/models/{name}[/versions/{v}]/config: Triton's model configuration, under the registry name."""
        model = await self.resolver.resolve_async(name, version)
        tm, tv, urls = triton_model(model), triton_version(model), self.resolver.backend_urls(model)
        config = await self.balancer.call_async(
            urls,
            lambda url: self.triton_async.model_config(url, tm, tv, backend_label(model, urls, url)),
            count=False,
            label=label(model),
        )
        return {**config, "name": model["name"]}
