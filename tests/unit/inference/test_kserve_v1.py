"""KServe v1 ``:predict`` bodies mapped onto /v1/infer inputs, and answers mapped back (a fake data plane)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shared.errors import InvalidInput
from shared.inference import kserve_v1


@pytest.mark.parametrize(
    "body, expected, count",
    [
        ({"instances": [[1, 2], [3, 4]]}, {"data": [[1, 2], [3, 4]]}, 2),
        ({"instances": [[1, 2]]}, {"data": [1, 2]}, 1),
        ({"instances": [{"a": [1], "b": 2}, {"a": [3], "b": 4}]}, {"a": [[1], [3]], "b": [2, 4]}, 2),
        ({"instances": [{"a": [1]}], "parameters": {}}, {"a": [1]}, 1),
    ],
)
def test_instances_become_the_infer_input(body: dict, expected: dict, count: int) -> None:
    assert kserve_v1.infer_input(body) == (expected, count)


@pytest.mark.parametrize(
    "body, field",
    [
        ([], "body"),
        ({}, "instances"),
        ({"instances": {}}, "instances"),
        ({"instances": []}, "instances"),
        ({"instances": [[1], {"a": 1}]}, "instances"),
        ({"instances": [{"a": 1}, {"b": 1}]}, "instances"),
        ({"instances": [[1]], "parameters": 3}, "parameters"),
        ({"instances": [[1]], "inputs": []}, "inputs"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(body: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        kserve_v1.infer_input(body)
    assert err.value.field == field


class _DataPlane:
    def __init__(self, prediction: object = None, error: InvalidInput | None = None) -> None:
        self.prediction, self.error, self.requests = prediction, error, []

    async def run_inference(
        self, body: Any, route_key: str | None, wait_s: float, key_id: str | None = None
    ) -> dict[str, Any]:
        self.requests.append((body, route_key, wait_s))
        if self.error:
            raise self.error
        return {"model": body["model"], "version": "2", "prediction": self.prediction}


def test_predict_answers_one_prediction_per_instance_on_the_infer_path() -> None:
    plane = _DataPlane(prediction=["setosa", "virginica"])
    answer = asyncio.run(
        kserve_v1.predict(plane, "iris", "prod", {"instances": [[1], [2]]}, "k", 3.0, ("rid", "tid"))  # type: ignore[arg-type]
    )
    assert answer == {
        "predictions": ["setosa", "virginica"],
        "model_name": "iris",
        "model_version": "2",
        "request_id": "rid",
        "trace_id": "tid",
    }
    assert plane.requests == [({"model": "iris", "input": {"data": [[1], [2]]}, "version": "prod"}, "k", 3.0)]
    single = asyncio.run(
        kserve_v1.predict(_DataPlane("setosa"), "iris", None, {"instances": [[1]]}, None, 0, ("r", "t"))
    )  # type: ignore[arg-type]
    assert single["predictions"] == ["setosa"]


def test_an_input_error_names_instances() -> None:
    plane = _DataPlane(error=InvalidInput("input.data must hold 4 numbers", field="input.data"))
    with pytest.raises(InvalidInput) as err:
        asyncio.run(kserve_v1.predict(plane, "iris", None, {"instances": [[1]]}, None, 0, ("r", "t")))  # type: ignore[arg-type]
    assert err.value.field == "instances" and err.value.message == "instances must hold 4 numbers"


def test_tensor_names_holding_input_are_not_renamed_in_an_error() -> None:
    message = "input is missing tensor 'text_input'; expected 'text_input' and 'exclude_input_in_output'"
    plane = _DataPlane(error=InvalidInput(message, field="input.text_input"))
    with pytest.raises(InvalidInput) as err:
        asyncio.run(kserve_v1.predict(plane, "lm", None, {"instances": [["a"]]}, None, 0, ("r", "t")))  # type: ignore[arg-type]
    assert err.value.message == (
        "instances is missing tensor 'text_input'; expected 'text_input' and 'exclude_input_in_output'"
    )
