"""KServe's v1 protocol: ``POST /v1/models/{name}[/versions/{version}]:predict``, on the data path of
``POST /v1/infer`` (the same resolution, aliases, versions, limits and Triton calls of ``DataPlane``).

``{"instances": [...]}`` becomes the ``input`` of a /v1/infer request: a list of rows is ``{"data":
rows}``, a list of objects (one per row, a value per input tensor) becomes one list per tensor. One
instance is sent as a single row, so a model without a batch dimension takes one instance per request
(unless its every tensor begins with -1: ``ModelInfo.rows_first``, it then takes rows as a batched one does).
The answer is ``{"predictions": [...]}``, one per instance (the ``prediction`` of /v1/infer: a class
name or id, or the first output's row), with the model, the version that answered and the request and
trace ids beside it. Errors keep Kinfer's error body, whose ``error`` sentence is KServe v1's error
shape; a field at fault in the instances is named ``instances``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, TypedDict

from shared import validation as v
from shared.errors import InvalidInput

if TYPE_CHECKING:
    from shared.domain import JSONObject
    from shared.inference.dataplane import DataPlane

FIELDS = ("instances", "parameters")
MAX_INSTANCES = 100_000  # MAX_INFER_ELEMENTS and the body limit bound the request well before this


class PredictAnswer(TypedDict):
    """The v1 ``:predict`` answer."""

    predictions: list[object]
    model_name: str
    model_version: str
    request_id: str
    trace_id: str


def infer_input(body: object) -> tuple[object, int]:
    """The /v1/infer ``input`` for a v1 body, and how many instances it holds."""
    request = v.require_object(body)
    v.reject_unknown(request, FIELDS)
    instances = request.get("instances")
    if not isinstance(instances, list) or not instances:
        raise InvalidInput('instances is required: a non-empty list, {"instances": [[...], ...]}', field="instances")
    if len(instances) > MAX_INSTANCES:
        raise InvalidInput(f"instances may hold at most {MAX_INSTANCES} rows", field="instances")
    if request.get("parameters") is not None and not isinstance(request["parameters"], dict):
        raise InvalidInput("parameters must be an object", field="parameters")
    named = [isinstance(i, dict) for i in instances]
    if any(named) and not all(named):
        raise InvalidInput("instances must be all rows (lists or numbers) or all objects of tensors", field="instances")
    if len(instances) == 1:
        return (instances[0] if named[0] else {"data": instances[0]}), 1
    if not named[0]:
        return {"data": instances}, len(instances)
    names = list(instances[0])
    if any(list(i) != names for i in instances):
        raise InvalidInput("every instance must name the same tensors, in the same order", field="instances")
    return {name: [i[name] for i in instances] for name in names}, len(instances)


async def predict(
    dataplane: DataPlane,
    name: str,
    version: str | None,
    body: object,
    route_key: str | None,
    wait_s: float,
    ids: tuple[str, str],
    key_id: str | None = None,
) -> PredictAnswer:
    """Run one v1 ``:predict`` request through ``dataplane``; ``ids`` are the request and trace ids,
    ``key_id`` the caller's key (for payload capture)."""
    model_input, count = infer_input(body)
    request: JSONObject = {"model": name, "input": model_input}
    if version is not None:
        request["version"] = version
    try:
        answer = await dataplane.run_inference(request, route_key, wait_s, key_id)
    except InvalidInput as exc:
        if exc.field is None or not exc.field.startswith("input"):
            raise
        # the /v1/infer field is named as v1 callers know it; tensor names holding "input" stay as they are
        message = re.sub(r"(?<![\w'])input(\.data)?(?![\w'])", "instances", exc.message)
        raise InvalidInput(message, field="instances") from None
    prediction = answer["prediction"]
    predictions = prediction if count > 1 and isinstance(prediction, list) else [prediction]
    return {
        "predictions": predictions,
        "model_name": answer["model"],
        "model_version": answer["version"],
        "request_id": ids[0],
        "trace_id": ids[1],
    }
