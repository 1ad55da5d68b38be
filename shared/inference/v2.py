"""KServe Open Inference Protocol v2 over HTTP: POST /v2/models/{name}[/versions/{v}]/infer.

Accepts the JSON form and the binary tensor extension that ``tritonclient.http``
sends by default (``Inference-Header-Content-Length``: a JSON header, then raw
tensors in input order). Answers are always JSON (tritonclient reads both). The
model name is the registry name; a version is the registry version.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from shared import validation as v
from shared.backends.triton import NP_DTYPES, ModelInfo, TensorSpec
from shared.errors import InvalidInput, KinferError
from shared.inference.codec import cast_numbers, dims_match
from shared.inference.dataplane import backend_urls, record, resolve, triton_call, triton_version

if TYPE_CHECKING:
    from shared.services import Services

HEADER_LENGTH = "Inference-Header-Content-Length"



def split_body(raw: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """(JSON inference request, trailing binary tensor data)."""
    n = len(raw)
    if header_length:
        try:
            n = int(header_length)
        except ValueError:
            raise InvalidInput(f"{HEADER_LENGTH} must be an integer", field=HEADER_LENGTH) from None
        if not 0 < n <= len(raw):
            raise InvalidInput(f"{HEADER_LENGTH} is outside the body", field=HEADER_LENGTH)
    try:
        request = json.loads(raw[:n], parse_constant=_reject)
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise InvalidInput("the inference request is not valid JSON", field="body") from None
    return v.require_object(request, "body"), raw[n:]


def _reject(token: str) -> Any:
    raise ValueError(token)


def infer_v2(services: Services, name: str, version: str | None, raw: bytes, headers: Mapping[str, str],
             route_key: str | None = None) -> dict:
    """Run one v2 inference request; the v2 response body (``model_version``: the version that answered).

    The version segment may name a registry version or an alias."""
    started = time.perf_counter()
    request, binary = split_body(raw, headers.get(HEADER_LENGTH))
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("inputs must be a non-empty list of tensors", field="inputs")
    model = resolve(services, name, version, route_key)
    tm, tv = model.get("triton_model") or model["name"], triton_version(model)

    def attempt(url: str) -> tuple[ModelInfo, dict[str, np.ndarray]]:
        info = services.triton.model_info(url, tm)
        arrays, rows = v2_arrays(info, inputs, binary)
        return info, triton_call(services, url, info, arrays, rows, tv)

    try:
        info, outputs = services.balancer.call(backend_urls(services, model), attempt)
    except KinferError as exc:
        record(services, model, exc.code, started)
        raise
    record(services, model, "ok", started)
    wanted = _requested(info, request.get("outputs"))
    return {"model_name": model["name"], "model_version": model["version"], "id": str(request.get("id", "")),
            "outputs": [{"name": s.name, "datatype": s.datatype, "shape": list(outputs[s.name].shape),
                         "data": outputs[s.name].reshape(-1).tolist()} for s in info.outputs if s.name in wanted]}


def _requested(info: ModelInfo, raw: Any) -> set[str]:
    names = {s.name for s in info.outputs}
    if raw is None:
        return names
    if not isinstance(raw, list):
        raise InvalidInput("outputs must be a list", field="outputs")
    asked = [o.get("name") if isinstance(o, dict) else None for o in raw]
    unknown = [a for a in asked if a not in names]
    if unknown:
        raise InvalidInput(f"unknown output {unknown[0]!r}; model {info.name!r} has "
                           f"{', '.join(sorted(names))}", field="outputs")
    return {str(a) for a in asked}


def v2_arrays(info: ModelInfo, inputs: list[Any], binary: bytes) -> tuple[dict[str, np.ndarray], int]:
    """Validate v2 input tensors (names, datatype, full shape) against the metadata."""
    specs = {s.name: s for s in info.inputs}
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in inputs:
        if not isinstance(tensor, dict) or tensor.get("name") not in specs:
            raise InvalidInput(f"each input needs a name among {', '.join(specs)}; expected {info.expected()}",
                               field="inputs")
        spec = specs[tensor["name"]]
        array, offset = _one(info, spec, tensor, binary, offset)
        arrays[spec.name] = array
    missing = [n for n in specs if n not in arrays]
    if missing:
        raise InvalidInput(f"input {missing[0]!r} is missing; expected {info.expected()}", field="inputs")
    rows = {a.shape[0] for a in arrays.values()} if info.batched else {1}
    if len(rows) != 1:
        raise InvalidInput("every input needs the same batch size", field="inputs")
    return arrays, rows.pop()


def _one(info: ModelInfo, spec: TensorSpec, tensor: dict, binary: bytes, offset: int) -> tuple[np.ndarray, int]:
    field = f"inputs.{spec.name}"
    declared = ((-1,) if info.batched else ()) + spec.shape
    expected = f"expected datatype {spec.datatype} and shape {list(declared)}"
    shape = tensor.get("shape")
    if tensor.get("datatype") != spec.datatype:
        raise InvalidInput(f"{field} has datatype {tensor.get('datatype')!r}; {expected}", field=field)
    if (not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
            or not dims_match(tuple(shape), declared)
            or (info.batched and shape[0] > info.max_batch_size)):
        raise InvalidInput(f"{field} has shape {shape}; {expected} (batch at most {info.max_batch_size})"
                           if info.batched else f"{field} has shape {shape}; {expected}", field=field)
    size = math.prod(shape)
    dtype = NP_DTYPES.get(spec.datatype)
    if dtype is None:
        raise InvalidInput(f"{field}: datatype {spec.datatype} is not supported", field=field)
    nbytes = (tensor.get("parameters") or {}).get("binary_data_size")
    if nbytes is not None:
        chunk = binary[offset:offset + int(nbytes)]
        if len(chunk) != int(nbytes) or int(nbytes) != size * np.dtype(dtype).itemsize:
            raise InvalidInput(f"{field} binary data has {len(chunk)} bytes; {expected}", field=field)
        return np.frombuffer(chunk, dtype=dtype).reshape(shape), offset + int(nbytes)
    data = tensor.get("data")
    try:
        array = np.array(data) if isinstance(data, list) else None
    except (ValueError, TypeError):
        array = None
    if array is None or array.size != size:
        raise InvalidInput(f"{field} data must hold {size} numbers; {expected}", field=field)
    return cast_numbers(array, dtype, spec.datatype, field, expected).reshape(shape), offset


def model_metadata_v2(services: Services, name: str, version: str | None) -> dict:
    """GET /v2/models/{name}[/versions/{v}]: the v2 model metadata response."""
    model = resolve(services, name, version)
    tm = model.get("triton_model") or model["name"]
    info = services.balancer.call(backend_urls(services, model),
                                   lambda url: services.triton.model_info(url, tm), count=False)
    lead = [-1] if info.batched else []
    return {"name": model["name"], "versions": [model["version"]], "platform": "kinfer",
            "inputs": [{"name": s.name, "datatype": s.datatype, "shape": lead + list(s.shape)} for s in info.inputs],
            "outputs": [{"name": s.name, "datatype": s.datatype, "shape": lead + list(s.shape)}
                        for s in info.outputs]}
