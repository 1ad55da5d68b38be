"""String tensors (BYTES) without services: JSON strings to tensors and back, Triton's length-prefixed wire
form (checked against tritonclient's own), the v2 JSON and binary forms, batch items, the gRPC request
AsyncTriton builds (a fake stub), and every refusal naming its field."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from typing import Any

import numpy as np
import pytest
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from shared.backends.triton import MAX_STRING_BYTES, ModelInfo, TensorSpec, deserialize_bytes, serialize_bytes
from shared.errors import InvalidInput
from shared.inference.codec import flat_texts, json_values, outputs_json, parse_input, prediction_of, text_of
from shared.inference.items import uniform_rows
from shared.inference.v2 import parse_request, split_body, v2_arrays

SENTIMENT = ModelInfo(
    "text_sentiment",
    (TensorSpec("text", "BYTES", (1,)),),
    (TensorSpec("label", "BYTES", (1,)), TensorSpec("probabilities", "FP32", (2,))),
    64,
    ("negative", "positive"),
)
PAIRS = ModelInfo("pairs", (TensorSpec("pair", "BYTES", (2,)), TensorSpec("weight", "FP32", (1,))), (), 8)
UNBATCHED = ModelInfo("tokens", (TensorSpec("tokens", "BYTES", (-1,)),), (TensorSpec("ids", "INT64", (4,)),), 0)
TEXTS = ["héllo wörld", "日本語 ✓", "", "emoji 🎉"]


def strings(array: np.ndarray[Any, Any]) -> list[Any]:
    return json_values(array)  # type: ignore[no-any-return]


# -- JSON in ---------------------------------------------------------------------------------------------
def test_a_flat_list_is_one_string_per_row_and_a_lone_string_one_row() -> None:
    rows = parse_input(SENTIMENT, {"text": TEXTS})
    assert (rows.rows, rows.single, rows.arrays["text"].shape) == (4, False, (4, 1))
    assert rows.arrays["text"].dtype == object and rows.arrays["text"][1, 0] == "日本語 ✓".encode()
    for one in ({"text": ["a"]}, {"data": "a"}, {"text": "a"}):
        parsed = parse_input(SENTIMENT, one)
        assert (parsed.rows, parsed.single, parsed.arrays["text"].tolist()) == (1, True, [[b"a"]])
    nested = parse_input(SENTIMENT, {"text": [["a"], ["b"]]})
    assert (nested.rows, nested.single) == (2, False)
    batch_of_one = parse_input(SENTIMENT, {"text": [["a"]]})
    assert (batch_of_one.rows, batch_of_one.single) == (1, False)


def test_other_shapes_keep_the_numeric_rules() -> None:
    two = parse_input(PAIRS, {"pair": ["q", "d"], "weight": [1.0]})
    assert two.single and two.arrays["pair"].shape == (1, 2)
    many = parse_input(PAIRS, {"pair": [["q", "d"], ["q2", "d2"]], "weight": [[1.0], [0.5]]})
    assert many.rows == 2 and many.arrays["pair"].tolist() == [[b"q", b"d"], [b"q2", b"d2"]]
    with pytest.raises(InvalidInput, match=r"input.pair has shape \[3\]"):
        parse_input(PAIRS, {"pair": ["a", "b", "c"], "weight": [1.0]})
    tokens = parse_input(UNBATCHED, {"data": ["a", "b", "c"]})
    assert tokens.single and tokens.arrays["tokens"].shape == (3,)


@pytest.mark.parametrize(
    "value, phrase",
    [
        ([5], "input.text[0] is a number, not a string: a BYTES tensor holds strings"),
        (["a", True], "input.text[1] is a boolean, not a string"),
        (["a", None], "input.text[1] is null"),
        ([["a"], [{"k": 1}]], "input.text[1][0] is an object"),
        ([["a"], ["b", "c"]], "ragged"),
        ([["a"], "b"], "ragged"),
        ([], "non-empty list of strings"),
        ([[]], "is empty"),
        (7, "non-empty list of strings"),
        (None, "non-empty list of strings"),
        (["x" * (MAX_STRING_BYTES + 1)], f"input.text[0] is {MAX_STRING_BYTES + 1} bytes long"),
        (["ok", "é" * (MAX_STRING_BYTES // 2 + 1)], "input.text[1] is 65538 bytes long (UTF-8)"),
        (["\ud800"], "input.text[0] is not valid Unicode"),
    ],
)
def test_refusals_name_the_field_and_the_element(value: object, phrase: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_input(SENTIMENT, {"text": value})
    assert caught.value.field == "input.text" and phrase in caught.value.message, caught.value.message


def test_the_string_bound_is_the_models_info_setting_and_counts_bytes() -> None:
    assert parse_input(SENTIMENT, {"text": ["x" * MAX_STRING_BYTES]}).rows == 1
    small = dataclasses.replace(SENTIMENT, max_string_bytes=4)
    assert parse_input(small, {"text": ["abcd", "éé"]}).rows == 2
    with pytest.raises(InvalidInput, match=r"input.text\[0\] is 6 bytes long .* at most 4 bytes \(MAX_STRING_BYTES\)"):
        parse_input(small, {"text": ["ééé"]})


def test_element_count_is_bounded_like_numbers() -> None:
    with pytest.raises(InvalidInput, match="has 11 elements; one request may carry at most 10"):
        parse_input(SENTIMENT, {"text": ["a"] * 11}, max_elements=10)
    with pytest.raises(InvalidInput, match="has 12 elements"):
        parse_input(SENTIMENT, {"text": [["a"]] * 12}, max_elements=10)
    assert parse_input(SENTIMENT, {"text": ["a"] * 10}, max_elements=10).rows == 10


# -- answers -------------------------------------------------------------------------------------------------
def sentiment_outputs(labels: list[bytes]) -> dict[str, np.ndarray[Any, Any]]:
    return {
        "label": np.array([[x] for x in labels], dtype=object),
        "probabilities": np.full((len(labels), 2), 0.5, dtype=np.float32),
    }


def test_string_outputs_answer_text_and_a_string_label_is_the_prediction() -> None:
    outputs = sentiment_outputs([b"positive", b"negative"])
    assert prediction_of(SENTIMENT, outputs, single=False) == ["positive", "negative"]
    assert outputs_json(SENTIMENT, outputs, single=False)["label"] == [["positive"], ["negative"]]
    one = {k: v[:1] for k, v in outputs.items()}
    assert prediction_of(SENTIMENT, one, single=True) == "positive"
    assert outputs_json(SENTIMENT, one, single=True) == {"label": ["positive"], "probabilities": [0.5, 0.5]}
    json.dumps(outputs_json(SENTIMENT, outputs, single=False))  # JSON-ready: no bytes left


def test_bytes_that_are_not_utf8_answer_base64_with_a_marker() -> None:
    raw = b"\xff\x00binary"
    assert text_of(raw) == {"base64": base64.b64encode(raw).decode()} and text_of("é".encode()) == "é"
    outputs = sentiment_outputs([b"positive", raw])
    assert prediction_of(SENTIMENT, outputs, single=False) == ["positive", {"base64": "/wBiaW5hcnk="}]
    assert strings(np.array([[b"a", raw]], dtype=object)) == [["a", {"base64": "/wBiaW5hcnk="}]]
    assert flat_texts(np.array([[b"a"], [b"b"]], dtype=object)) == (["a", "b"], False)
    assert flat_texts(np.array([[b"a"], [raw]], dtype=object)) == (["YQ==", "/wBiaW5hcnk="], True)


def test_json_values_keep_the_shape() -> None:
    array = np.array([b"a", b"b", b"c", b"d", b"e", b"f"], dtype=object).reshape(3, 1, 2)
    assert strings(array) == [[["a", "b"]], [["c", "d"]], [["e", "f"]]]
    assert strings(np.array(b"x", dtype=object)) == "x"
    assert strings(np.empty((0, 1), dtype=object)) == []
    assert strings(np.array([1.5, 2.5], dtype=np.float32)) == [1.5, 2.5]


# -- Triton's wire form ----------------------------------------------------------------------------------
def test_wire_form_matches_tritonclient_both_ways() -> None:
    array = np.array([[t.encode()] for t in TEXTS] + [[b"\xff\x00"]], dtype=object)
    ours = serialize_bytes(array)
    assert ours == serialize_byte_tensor(array).item()
    assert deserialize_bytes(ours, array.size) == array.reshape(-1).tolist()
    assert deserialize_bytes_tensor(ours).tolist() == array.reshape(-1).tolist()
    assert serialize_bytes(np.array(["é"], dtype=object)) == b"\x02\x00\x00\x00\xc3\xa9"  # str: as UTF-8


@pytest.mark.parametrize(
    "raw, count, phrase",
    [
        (b"\x01\x00", 1, "element 0 has a truncated length"),
        (b"\x05\x00\x00\x00abc", 1, "element 0 says 5 bytes but only 3 follow"),
        (b"\x01\x00\x00\x00a\x01\x00\x00\x00b", 1, "more than the 1 element"),
        (b"\x01\x00\x00\x00a", 2, "holds 1 element(s); its shape says 2"),
        (b"", 1, "holds 0 element(s)"),
    ],
)
def test_malformed_wire_form_says_what_is_wrong(raw: bytes, count: int, phrase: str) -> None:
    with pytest.raises(ValueError) as caught:
        deserialize_bytes(raw, count)
    assert phrase in str(caught.value)


# -- KServe v2 ---------------------------------------------------------------------------------------------
def v2(tensors: list[dict[str, Any]], binary: bytes = b"", info: ModelInfo = SENTIMENT) -> np.ndarray[Any, Any]:
    if binary:
        head = json.dumps({"inputs": tensors}).encode()
        request, data = split_body(head + binary, {"Inference-Header-Content-Length": str(len(head))})
    else:
        request, data = split_body(json.dumps({"inputs": tensors}).encode(), {})
    inputs, _ = parse_request(request)
    return v2_arrays(info, inputs, data, 1000)[0]["text"]


def test_v2_json_and_binary_give_the_same_tensor() -> None:
    shape = [len(TEXTS), 1]
    from_json = v2([{"name": "text", "datatype": "BYTES", "shape": shape, "data": TEXTS}])
    wire = serialize_bytes(np.array(TEXTS, dtype=object))
    tensor = {"name": "text", "datatype": "BYTES", "shape": shape, "parameters": {"binary_data_size": len(wire)}}
    from_binary = v2([tensor], wire)
    assert from_json.shape == from_binary.shape == (4, 1) and from_json.tolist() == from_binary.tolist()
    nested = v2([{"name": "text", "datatype": "BYTES", "shape": [2, 1], "data": [["a"], ["b"]]}])
    assert nested.tolist() == [[b"a"], [b"b"]]
    raw = v2([{**tensor, "shape": [1, 1], "parameters": {"binary_data_size": 6}}], b"\x02\x00\x00\x00\xff\x00")
    assert raw.tolist() == [[b"\xff\x00"]]  # binary elements need not be UTF-8


@pytest.mark.parametrize(
    "tensor, binary, phrase",
    [
        ({"data": ["a", 1]}, b"", "inputs.text[1] is a number, not a string"),
        ({"data": ["a"]}, b"", "data must hold 2 strings"),
        ({"data": "ab"}, b"", "data must hold 2 strings"),
        ({"data": []}, b"", "data must hold 2 strings"),
        ({"data": ["a", "x" * (MAX_STRING_BYTES + 1)]}, b"", "(MAX_STRING_BYTES)"),
        ({"parameters": {"binary_data_size": 10}}, b"\x01\x00\x00\x00a", "binary data has 5 bytes"),
        ({"parameters": {"binary_data_size": 5}}, b"\x01\x00\x00\x00a", "holds 1 element(s); its shape says 2"),
        ({"parameters": {"binary_data_size": -1}}, b"x", "non-negative integer"),
        (
            {"parameters": {"binary_data_size": 4 + MAX_STRING_BYTES + 1 + 5}},
            (MAX_STRING_BYTES + 1).to_bytes(4, "little") + b"y" * (MAX_STRING_BYTES + 1) + b"\x01\x00\x00\x00b",
            "element 0 is 65537 bytes long",
        ),
    ],
)
def test_v2_refusals_name_the_input(tensor: dict[str, Any], binary: bytes, phrase: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        v2([{"name": "text", "datatype": "BYTES", "shape": [2, 1], **tensor}], binary)
    assert caught.value.field.startswith("inputs.text") and phrase in caught.value.message, caught.value.message


def test_v2_answer_is_text_or_base64_with_its_marker() -> None:
    from shared.inference.v2 import _output

    spec = TensorSpec("label", "BYTES", (1,))
    assert _output(spec, np.array([[b"positive"]], dtype=object)) == {
        "name": "label",
        "datatype": "BYTES",
        "shape": [1, 1],
        "data": ["positive"],
    }
    encoded = _output(spec, np.array([[b"\xff"], [b"ok"]], dtype=object))
    assert encoded["parameters"] == {"content_type": "base64"} and encoded["data"] == ["/w==", "b2s="]


# -- batch items ---------------------------------------------------------------------------------------------
def test_uniform_string_items_become_one_array() -> None:
    for items in (
        [{"text": "a great film"}, {"data": "dull"}, {"text": "é"}],
        [{"text": ["a great film"]}, {"data": ["dull"]}, {"text": ["é"]}],
    ):
        array = uniform_rows(SENTIMENT, items)
        assert array is not None and array.shape == (3, 1)
        assert array.tolist() == [[b"a great film"], [b"dull"], ["é".encode()]]


@pytest.mark.parametrize(
    "items",
    [
        [{"text": "a"}, {"text": 5}],
        [{"text": "a"}, {"text": ["b"]}],
        [{"text": "a"}, {"text": ["a", "b"]}],
        [{"text": "a"}, {"text": "x" * (MAX_STRING_BYTES + 1)}],
        [{"text": "a"}, {"text": [["a"]]}],
        [{"text": "a", "extra": 1}],
    ],
)
def test_unusual_string_items_take_the_general_path(items: list[Any]) -> None:
    assert uniform_rows(SENTIMENT, items) is None


# -- the gRPC request ----------------------------------------------------------------------------------------
class FakeStub:
    """Triton's gRPC service as far as AsyncTriton uses it: echoes a BYTES input back as output ``echo``."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    async def ModelMetadata(self, request: Any, timeout: float) -> Any:  # noqa: N802
        from tritonclient.grpc import service_pb2

        answer = service_pb2.ModelMetadataResponse(name=request.name)
        answer.inputs.add(name="text", datatype="BYTES", shape=[-1, 1])
        answer.outputs.add(name="echo", datatype="BYTES", shape=[-1, 1])
        return answer

    async def ModelConfig(self, request: Any, timeout: float) -> Any:  # noqa: N802
        from tritonclient.grpc import service_pb2

        return service_pb2.ModelConfigResponse(config={"name": request.name, "max_batch_size": 8})

    async def ModelInfer(self, request: Any, metadata: Any, timeout: float) -> Any:  # noqa: N802
        from tritonclient.grpc import service_pb2

        self.requests.append(request)
        answer = service_pb2.ModelInferResponse(model_name=request.model_name)
        answer.outputs.add(name="echo", datatype="BYTES", shape=list(request.inputs[0].shape))
        answer.raw_output_contents.append(request.raw_input_contents[0])
        return answer


def test_async_triton_sends_strings_length_prefixed_and_reads_them_back() -> None:
    from shared.backends.triton_async import AsyncTriton
    from shared.settings import Settings

    settings = Settings.from_env(environ={}, max_string_bytes=123)
    triton = AsyncTriton(settings)
    stub = FakeStub()
    triton.stub = lambda url: stub  # type: ignore[method-assign]

    async def run() -> tuple[ModelInfo, dict[str, np.ndarray[Any, Any]]]:
        info = await triton.model_info("triton:8001", "echo")
        parsed = parse_input(info, {"text": TEXTS})
        return info, await triton.infer("triton:8001", info, parsed.arrays)

    info, outputs = asyncio.run(run())
    assert info.max_string_bytes == 123 and info.inputs == (TensorSpec("text", "BYTES", (1,)),)
    sent = stub.requests[0]
    assert sent.inputs[0].datatype == "BYTES" and list(sent.inputs[0].shape) == [4, 1]
    assert sent.raw_input_contents[0] == serialize_bytes(np.array(TEXTS, dtype=object))
    assert outputs["echo"].shape == (4, 1) and strings(outputs["echo"]) == [[t] for t in TEXTS]
