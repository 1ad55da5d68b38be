"""The text demo models on the real local Triton (nvidia-pytriton's tritonserver), over gRPC.

``text_sentiment`` takes a batch of strings (BYTES); ``tiny_lm`` is decoupled and answers
through a gRPC stream: once for stream=false, one delta per token for stream=true, with the
vLLM backend's tensors.
"""

from __future__ import annotations

import importlib.util
import json
import queue
import threading
from collections.abc import Iterator
from types import ModuleType

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from shared.localstack.triton import TritonServer, default_repository
from tests.conftest import free_port

pytestmark = pytest.mark.integration

REPOSITORY = default_repository()


def load(model: str) -> ModuleType:
    path = REPOSITORY / model / "1" / "model.py"
    spec = importlib.util.spec_from_file_location(f"kinfer_it_{model}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    state = tmp_path_factory.mktemp("triton-text")
    ports = free_port(), free_port(), free_port()
    with TritonServer(REPOSITORY, state, *ports, load_models=("text_sentiment", "tiny_lm")) as triton:
        yield triton


@pytest.fixture(scope="module")
def client(server: TritonServer) -> Iterator[grpcclient.InferenceServerClient]:
    triton = grpcclient.InferenceServerClient(server.grpc_url)
    yield triton
    triton.close()


# --- text_sentiment -------------------------------------------------------------------------


def sentiment(client, texts: list[bytes]) -> tuple[list[str], np.ndarray]:
    tensor = grpcclient.InferInput("text", [len(texts), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=np.object_).reshape(-1, 1))
    result = client.infer("text_sentiment", [tensor])
    label = result.as_numpy("label")
    assert label.shape == (len(texts), 1) and label.dtype == np.object_
    return [v.decode() for v in label[:, 0]], result.as_numpy("probabilities")


def test_sentiment_answers_a_batch_of_strings(client):
    texts = ["a great film", "dull and awful", "The pizza was délicieux and delicious!", "not good at all", ""]
    labels, probabilities = sentiment(client, [t.encode() for t in texts])
    assert labels[:4] == ["positive", "negative", "positive", "negative"]
    assert probabilities.dtype == np.float32 and probabilities.shape == (5, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    module = load("text_sentiment")
    weights = module.load_weights(REPOSITORY / "text_sentiment/1/weights.json")
    expected_labels, expected = module.classify(texts, weights)
    assert labels == expected_labels
    np.testing.assert_allclose(probabilities, expected, rtol=1e-6)


def test_sentiment_concurrent_requests_are_batched_and_answered_each(client, server):
    texts = [b"wonderful", b"horrible", b"highly recommended", b"a boring waste of time"] * 8
    results: list[object] = [None] * len(texts)

    def ask(i: int) -> None:
        own = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            results[i] = sentiment(own, [texts[i]])[0][0]
        finally:
            own.close()

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == ["positive", "negative", "positive", "negative"] * 8


@pytest.mark.parametrize(
    ("text", "reason"),
    [(b"x" * 2001, "at most 2000 bytes"), (b"\xff\xfe bad", "not valid UTF-8")],
)
def test_sentiment_rejects_long_or_invalid_text(client, text, reason):
    with pytest.raises(InferenceServerException, match=reason) as info:
        sentiment(client, [b"fine", text])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_sentiment_config_names_the_classes(client):
    config = client.get_model_config("text_sentiment", as_json=True)["config"]
    assert config["parameters"]["class_names"]["string_value"] == "negative,positive"
    meta = client.get_model_metadata("text_sentiment", as_json=True)
    assert [(t["name"], t["datatype"]) for t in meta["inputs"]] == [("text", "BYTES")]


# --- tiny_lm ----------------------------------------------------------------------------------


def bool_input(name: str, value: bool) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, [1], "BOOL")
    tensor.set_data_from_numpy(np.array([value], dtype=bool))
    return tensor


def generate(
    server: TritonServer,
    prompt: str,
    stream: bool,
    params: dict[str, object] | None = None,
    exclude_input: bool | None = None,
    extras: bool = True,
) -> list[tuple[dict[str, np.ndarray], bool]]:
    """Every response of one request as (outputs, final flag); raises the stream's error."""
    inputs = [grpcclient.InferInput("text_input", [1], "BYTES")]
    inputs[0].set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
    inputs.append(bool_input("stream", stream))
    if params is not None:
        tensor = grpcclient.InferInput("sampling_parameters", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([json.dumps(params).encode()], dtype=np.object_))
        inputs.append(tensor)
    if exclude_input is not None:
        inputs.append(bool_input("exclude_input_in_output", exclude_input))
    if extras:
        inputs += [
            bool_input(n, True) for n in ("return_finish_reason", "return_num_input_tokens", "return_num_output_tokens")
        ]
    answers: queue.Queue[object] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: answers.put(error or result))
    try:
        client.async_stream_infer("tiny_lm", inputs, enable_empty_final_response=True)
        responses = []
        while True:
            item = answers.get(timeout=30)
            if isinstance(item, Exception):
                raise item
            assert isinstance(item, grpcclient.InferResult)
            response = item.get_response()
            final = response.parameters["triton_final_response"].bool_param
            names = [o.name for o in response.outputs]
            responses.append(({n: item.as_numpy(n) for n in names}, final))
            if final:
                return responses
    finally:
        client.stop_stream()
        client.close()


def text(outputs: dict[str, np.ndarray], name: str = "text_output") -> str:
    value = outputs[name]
    assert value.shape == (1,) and value.dtype == np.object_
    return str(value[0].decode())


def count(outputs: dict[str, np.ndarray], name: str) -> int:
    value = outputs[name]
    assert value.shape == (1,) and value.dtype == np.uint32
    return int(value[0])


def reference(prompt: str, **sampling: object):
    module = load("tiny_lm")
    model = module.load_model(REPOSITORY / "tiny_lm/1/bigrams.json")
    return module.generate(model, prompt, module.Sampling(**sampling))


def test_tiny_lm_answers_once_without_stream(server):
    responses = generate(server, "Beautiful is", stream=False, params={"max_tokens": 6})
    assert len(responses) == 1 and responses[0][1] is True
    outputs = responses[0][0]
    assert text(outputs) == "Beautiful is better than ugly. Explicit is better"  # prompt + completion by default
    assert text(outputs, "finish_reason") == "length"
    assert count(outputs, "num_input_tokens") == 2 and count(outputs, "num_output_tokens") == 6


def test_tiny_lm_streams_one_delta_per_token(server):
    prompt, max_tokens = "Errors should", 12
    whole = generate(server, prompt, stream=False, params={"max_tokens": max_tokens}, exclude_input=True)
    streamed = generate(server, prompt, stream=True, params={"max_tokens": max_tokens})
    assert len(streamed) == max_tokens and [final for _, final in streamed] == [False] * 11 + [True]
    deltas = [text(outputs) for outputs, _ in streamed]
    assert all(d.startswith(" ") and len(d.split()) == 1 for d in deltas), deltas  # one word with its space each
    assert "".join(deltas) == text(whole[0][0]) == reference(prompt, max_tokens=max_tokens).text
    assert [text(o, "finish_reason") for o, _ in streamed] == ["None"] * 11 + ["length"]  # as vLLM sends them
    assert (
        sum(count(o, "num_output_tokens") for o, _ in streamed) == max_tokens == count(whole[0][0], "num_output_tokens")
    )
    assert {count(o, "num_input_tokens") for o, _ in streamed} == {2}


def test_tiny_lm_stream_without_extras_sends_only_text(server):
    streamed = generate(server, "Now is", stream=True, params={"max_tokens": 3}, extras=False)
    assert [sorted(outputs) for outputs, _ in streamed] == [["text_output"]] * 3


def test_tiny_lm_stop_string_ends_with_stop(server):
    streamed = generate(server, "Beautiful is", stream=True, params={"stop": ["Explicit"], "max_tokens": 50})
    assert "".join(text(o) for o, _ in streamed) == " better than ugly. "
    assert text(streamed[-1][0], "finish_reason") == "stop" and streamed[-1][1] is True
    assert sum(count(o, "num_output_tokens") for o, _ in streamed) == 4  # the token that hit the stop counts


def test_tiny_lm_sampling_is_seeded(server):
    params = {"temperature": 1.0, "top_p": 0.9, "max_tokens": 30}
    first = generate(server, "Errors should", stream=False, params={**params, "seed": 4}, exclude_input=True)
    again = generate(server, "Errors should", stream=False, params={**params, "seed": 4}, exclude_input=True)
    greedy = generate(server, "Errors should", stream=False, params={"max_tokens": 30}, exclude_input=True)
    assert text(first[0][0]) == text(again[0][0]) == reference("Errors should", seed=4, **params).text
    assert text(first[0][0]) != text(greedy[0][0])


@pytest.mark.parametrize(
    ("params", "exclude_input", "reason"),
    [
        ({"max_tokens": 513}, True, "max_tokens must be an integer from 1 to 512"),
        ({"temperature": -1}, True, "temperature must be a number"),
        ({"stop": [""]}, True, "stop holds at most"),
        ({}, False, "When streaming, `exclude_input_in_output` = False is not allowed."),
    ],
)
def test_tiny_lm_rejects_bad_requests(server, params, exclude_input, reason):
    with pytest.raises(InferenceServerException) as info:
        generate(server, "Beautiful", stream=True, params=params, exclude_input=exclude_input)
    assert reason in str(info.value)


def test_tiny_lm_is_decoupled_and_refuses_unary_infer(client):
    config = client.get_model_config("tiny_lm", as_json=True)["config"]
    assert config["model_transaction_policy"]["decoupled"] is True
    prompt = grpcclient.InferInput("text_input", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"Beautiful"], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="decoupled"):
        client.infer("tiny_lm", [prompt])
