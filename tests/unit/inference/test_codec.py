"""Input validation, answers and error translation against the demo models' metadata (no services)."""

from __future__ import annotations

import numpy as np
import pytest

from shared.backends.triton import is_backend_failure, is_connection_failure, model_info_from, translate
from shared.errors import BackendError, BackendTimeout, InvalidInput, ModelError, Unavailable
from shared.inference.codec import outputs_json, parse_input, prediction_of

IRIS = model_info_from(
    {
        "name": "iris_classifier",
        "inputs": [{"name": "features", "datatype": "FP32", "shape": ["-1", "4"]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": ["-1", "1"]},
            {"name": "probabilities", "datatype": "FP32", "shape": ["-1", "3"]},
        ],
    },
    {"config": {"max_batch_size": 64, "parameters": {"class_names": {"string_value": "setosa,versicolor,virginica"}}}},
)
VECTOR = model_info_from(
    {
        "name": "vector_scorer",
        "inputs": [{"name": "values", "datatype": "FP32", "shape": ["-1"]}],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": ["-1"]},
            {"name": "stats", "datatype": "FP32", "shape": ["4"]},
            {"name": "argmax", "datatype": "INT64", "shape": ["1"]},
        ],
    },
    {"config": {"max_batch_size": 0}},
)


def test_metadata_drops_the_batch_dim_and_reads_labels():
    assert IRIS.inputs[0].shape == (4,) and IRIS.batched and IRIS.labels == ("setosa", "versicolor", "virginica")
    assert VECTOR.inputs[0].shape == (-1,) and not VECTOR.batched and VECTOR.labels == ()


def test_single_row_batch_and_tensor_name_forms():
    one = parse_input(IRIS, {"data": [1, 2, 3, 4]})
    assert one.single and one.rows == 1 and one.arrays["features"].shape == (1, 4)
    assert one.arrays["features"].dtype == np.float32
    many = parse_input(IRIS, {"features": [[1, 2, 3, 4]] * 3})
    assert not many.single and many.rows == 3
    vec = parse_input(VECTOR, {"values": [1.5] * 7})
    assert vec.arrays["values"].shape == (7,) and vec.single


@pytest.mark.parametrize(
    "raw, phrase",
    [
        (None, "missing or empty"),
        ({}, "missing or empty"),
        ([1, 2], "missing or empty"),
        ({"data": []}, "non-empty list"),
        ({"data": 3}, "non-empty list"),
        ({"data": [1, 2, 3]}, "has shape [3]"),
        ({"data": [[[1, 2, 3, 4]]]}, "has shape [1, 1, 4]"),
        ({"data": [[1, 2], [1, 2, 3, 4]]}, "ragged"),
        ({"data": ["1", 2, 3, 4]}, "only numbers"),
        ({"data": [float("nan"), 2, 3, 4]}, "NaN"),
        ({"features": [1, 2, 3, 4], "extra": [1]}, "unknown tensor 'extra'"),
    ],
)
def test_rejections_say_what_was_expected(raw, phrase):
    with pytest.raises(InvalidInput) as err:
        parse_input(IRIS, raw)
    assert phrase in err.value.message and "'features' FP32 [4]" in err.value.message


def test_dynamic_dims_need_at_least_one_element_and_exact_rank():
    with pytest.raises(InvalidInput, match=r"values' FP32 \[n\]"):
        parse_input(VECTOR, {"data": [[1, 2], [3, 4]]})


def test_element_count_is_bounded_and_names_the_limit_and_the_bulk_path():
    with pytest.raises(InvalidInput, match="at most 10 .MAX_INFER_ELEMENTS.; send bulk work as a batch job"):
        parse_input(VECTOR, {"data": [1.0] * 11}, max_elements=10)
    assert parse_input(VECTOR, {"data": [1.0] * 10}, max_elements=10).arrays["values"].size == 10


@pytest.mark.parametrize(
    "values, phrase",
    [
        ([1e39, 1, 2, 3], "beyond the FP32 range"),
        ([-1e39, 1, 2, 3], "beyond the FP32 range"),
        ([1e308 * 10, 1, 2, 3], "NaN or infinity"),
    ],
)
def test_values_beyond_the_datatype_are_refused(values, phrase):
    with pytest.raises(InvalidInput, match=phrase) as err:
        parse_input(IRIS, {"data": values})
    assert err.value.field == "input.features"


def test_integers_out_of_range_are_refused():
    from shared.inference.codec import cast_numbers

    with pytest.raises(InvalidInput, match=r"outside the UINT8 range \[0, 255\]"):
        cast_numbers(np.array([1, 256]), np.uint8, "UINT8", "f", "e")
    with pytest.raises(InvalidInput, match="outside the INT8 range"):
        cast_numbers(np.array([-129.0]), np.int8, "INT8", "f", "e")
    assert cast_numbers(np.array([255.0]), np.uint8, "UINT8", "f", "e").tolist() == [255]


def test_prediction_uses_labels_then_ids():
    outputs = {"label": np.array([[2], [0]]), "probabilities": np.array([[0, 0, 1], [1, 0, 0]], np.float32)}
    assert prediction_of(IRIS, outputs, single=False) == ["virginica", "setosa"]
    first = {k: v[:1] for k, v in outputs.items()}
    assert prediction_of(IRIS, first, single=True) == "virginica"
    assert outputs_json(IRIS, first, single=True) == {"label": [2], "probabilities": [0.0, 0.0, 1.0]}
    scored = {"probabilities": np.array([0.1, 0.9], np.float32), "argmax": np.array([1])}
    assert prediction_of(VECTOR, scored, single=True) == 1


def linear(max_batch_size: int) -> object:
    """y = kx pushed batched (dims [1] behind Triton's batch dim) or with max_batch_size 0 (dims [-1, 1])."""
    shape = ["-1", "1"]
    tensors = {"inputs": [{"name": "x", "datatype": "FP32", "shape": shape}]}
    tensors["outputs"] = [{"name": "y", "datatype": "FP32", "shape": shape}]
    return model_info_from({"name": "lin", **tensors}, {"config": {"max_batch_size": max_batch_size}})


@pytest.mark.parametrize("raw", [{"data": [4]}, {"x": [4]}, {"data": [[4], [5]]}, {"x": [[4], [5], [6]]}])
def test_an_unbatched_version_with_a_leading_minus_one_takes_the_bodies_of_its_batched_predecessor(raw):
    batched, unbatched = linear(64), linear(0)
    assert unbatched.rows_first and not unbatched.batched and not VECTOR.rows_first
    one, other = parse_input(batched, raw), parse_input(unbatched, raw)
    assert (other.single, other.rows) == (one.single, one.rows)
    assert other.arrays["x"].shape == one.arrays["x"].shape  # [1, 1] for one row: the leading dim added
    outputs = {"y": one.arrays["x"] * 2}
    assert outputs_json(unbatched, outputs, other.single) == outputs_json(batched, outputs, one.single)
    assert prediction_of(unbatched, outputs, other.single) == prediction_of(batched, outputs, one.single)


def test_an_unbatched_leading_minus_one_model_says_it_takes_rows():
    with pytest.raises(InvalidInput) as bad:
        parse_input(linear(0), {"data": [1, 2]})
    assert bad.value.message == "input.x has shape [2]; expected 'x' FP32 [1] (or a batch [n, 1])"
    assert linear(0).expected() == linear(64).expected()


class FakeTritonError(Exception):
    def __init__(self, status: str, msg: str) -> None:
        self._status, self._msg = status, msg

    def status(self) -> str:
        return self._status

    def message(self) -> str:
        return self._msg


@pytest.mark.parametrize(
    "status, kind, counts",
    [
        ("StatusCode.INVALID_ARGUMENT", InvalidInput, False),
        ("StatusCode.UNAVAILABLE", Unavailable, True),
        ("StatusCode.DEADLINE_EXCEEDED", BackendTimeout, True),
        ("StatusCode.INTERNAL", ModelError, False),  # the model raised on this input: not the backend's fault
        ("StatusCode.NOT_FOUND", BackendError, True),
    ],
)
def test_translate_classifies_backend_failures(status, kind, counts):
    err = translate(FakeTritonError(status, "boom"), "h:1", "m")
    assert type(err) is kind and is_backend_failure(err) is counts
    assert is_connection_failure(err) is (status in ("StatusCode.UNAVAILABLE", "StatusCode.NOT_FOUND"))


def test_backend_id_is_host_port_in_lower_case():
    from shared.endpoints import backend_id

    assert backend_id("grpc://Triton-1:8001/") == "triton-1:8001" == backend_id(" triton-1:8001 ")


@pytest.mark.parametrize("value", [[70000], [-65536], [2**40]])
def test_integers_beyond_a_float_datatype_are_refused_not_turned_into_infinity(value):
    from shared.backends.triton import TensorSpec
    from shared.inference.codec import to_array

    with pytest.raises(InvalidInput) as err:
        to_array(value, TensorSpec("x", "FP16", (-1,)), "input", "expected FP16")
    assert "FP16 range" in err.value.message and err.value.field == "input"
    assert to_array([65504, -3], TensorSpec("x", "FP16", (-1,)), "input", "e").tolist() == [65504.0, -3.0]


def test_a_streaming_model_is_refused_on_the_single_answer_paths_with_the_routes_that_serve_it() -> None:
    """A decoupled (generative) model has no single answer: /v1/infer, v2 and batch items say where to go."""
    from shared.inference.v2 import v2_arrays

    metadata = {
        "name": "tiny_lm",
        "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": ["1"]}],
        "outputs": [{"name": "text_output", "datatype": "BYTES", "shape": ["-1"]}],
    }
    config = {"config": {"max_batch_size": 0, "model_transaction_policy": {"decoupled": True}}}
    info = model_info_from(metadata, config)
    assert info.decoupled
    assert not model_info_from(metadata, {"config": {"max_batch_size": 0}}).decoupled
    with pytest.raises(InvalidInput) as v1:
        parse_input(info, {"text_input": ["hello"]})
    assert v1.value.field == "model" and "/v1/chat/completions" in v1.value.message
    with pytest.raises(InvalidInput) as v2:
        v2_arrays(info, [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["hello"]}], b"", 100)
    assert v2.value.field == "model"
