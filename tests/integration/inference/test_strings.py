"""String tensors (BYTES) end to end through the real gateway (``kinfer serve --gateway``, a key) on real
PostgreSQL, Redis, S3 server, event relay and Triton: the demo ``text_sentiment`` model and the test-only
``string_echo`` (tests/fixtures/triton_models: the same bytes back, with their length) answer over
/v1/infer, KServe v1 ``:predict``, v2 JSON and the v2 binary tensor extension (driven by an unchanged
``tritonclient.http``), a batch job and an async request; bounds and non-string elements are 400 naming the
field. MAX_STRING_BYTES is set to 4096 here, to prove the setting reaches the gateway and the worker.
"""

from __future__ import annotations

import base64
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import requests

from shared.localstack.triton import TritonServer, TritonStartError, default_repository
from tests.conftest import ROOT, free_port
from tests.integration.batch.test_batch import Stack, results_of
from tests.integration.servers import serve_gateway

pytestmark = pytest.mark.integration

LIMIT = 4096  # MAX_STRING_BYTES for this module
TEXTS = ["héllo wörld", "日本語のテキスト ✓", "", "emoji 🎉 and a tab\t", "plain"]
REVIEWS = ["a great film", "dull and awful"]


@pytest.fixture(scope="module")
def strings_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """Triton serving ``text_sentiment`` (demo repository) and ``string_echo`` (test fixture) only."""
    repo = tmp_path_factory.mktemp("strings-repo")
    shutil.copytree(default_repository() / "text_sentiment", repo / "text_sentiment")
    shutil.copytree(ROOT / "tests" / "fixtures" / "triton_models" / "string_echo", repo / "string_echo")
    ports = free_port(), free_port(), free_port()
    server = TritonServer(repo, tmp_path_factory.mktemp("strings-triton"), *ports)
    try:
        server.start(timeout=120)
    except TritonStartError as exc:
        pytest.fail(f"Triton could not start: {exc}", pytrace=False)
    yield server
    server.stop()


@dataclass
class Gateway:
    base: str
    key: str
    sentiment: str
    echo: str
    stack: Stack

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> requests.Response:
        return requests.post(self.base + path, json=body, headers={**self.auth, **(headers or {})}, timeout=30)

    def infer(self, model: str, model_input: Any) -> requests.Response:
        return self.post("/v1/infer", {"model": model, "input": model_input})


@pytest.fixture(scope="module")
def gw(base_settings: Any, strings_triton: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    stack = Stack(base_settings, strings_triton, tmp_path_factory.mktemp("strings-batch"))
    try:
        settings = stack.configure(auth_required=True, max_string_bytes=LIMIT, triton_url=strings_triton.grpc_url)
        services = stack.services()
        names = {}
        for triton_model in ("text_sentiment", "string_echo"):
            names[triton_model] = services.registry.create_model(
                {
                    "name": f"{triton_model.replace('_', '-')}-{stack.uid}",
                    "version": "1",
                    "framework": "python",
                    "format": "python",
                    "backend_url": strings_triton.grpc_url,
                    "triton_model": triton_model,
                }
            )["name"]
        key = services.keys.create_key(f"strings-{stack.uid}", "infer,batch")[1]
        with serve_gateway(free_port(), settings) as base:
            yield Gateway(base, key, names["text_sentiment"], names["string_echo"], stack)
    finally:
        stack.stop()


def direct_labels(triton: TritonServer, texts: list[str]) -> list[str]:
    """What text_sentiment answers straight from Triton (tritonclient.grpc, no Kinfer in between)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        tensor = grpcclient.InferInput("text", [len(texts), 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object))
        labels = client.infer("text_sentiment", [tensor]).as_numpy("label")
    finally:
        client.close()
    return [x.decode() for x in labels.reshape(-1)]


# -- /v1/infer and KServe v1 ---------------------------------------------------------------------------
def test_v1_text_sentiment_answers_a_label_per_string(gw: Gateway, strings_triton: TritonServer) -> None:
    expected = direct_labels(strings_triton, REVIEWS)
    assert expected == ["positive", "negative"]
    r = gw.infer(gw.sentiment, {"text": REVIEWS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["prediction"] == expected
    assert body["outputs"]["label"] == [[label] for label in expected]
    assert all(abs(sum(p) - 1) < 1e-5 for p in body["outputs"]["probabilities"])
    one = gw.infer(gw.sentiment, {"data": REVIEWS[0]})  # a lone string is one row
    assert one.status_code == 200 and one.json()["prediction"] == expected[0]
    predicted = gw.post(f"/v1/models/{gw.sentiment}:predict", {"instances": REVIEWS})
    assert predicted.status_code == 200 and predicted.json()["predictions"] == expected


def test_v1_strings_reach_triton_as_utf8_and_come_back_unchanged(gw: Gateway) -> None:
    r = gw.infer(gw.echo, {"text": TEXTS})
    assert r.status_code == 200, r.text
    outputs = r.json()["outputs"]
    assert outputs["echo"] == [[t] for t in TEXTS]
    assert outputs["length"] == [[len(t.encode())] for t in TEXTS]
    rows = gw.infer(gw.echo, {"text": [[t] for t in TEXTS[:2]]})  # rows of one string, as the shape says
    assert rows.status_code == 200 and rows.json()["outputs"]["echo"] == [[t] for t in TEXTS[:2]]


# -- KServe v2: JSON and the binary tensor extension, with tritonclient.http ----------------------------------
@pytest.fixture
def client(gw: Gateway) -> Iterator[Any]:
    import tritonclient.http as httpclient

    found = httpclient.InferenceServerClient(gw.base.removeprefix("http://"))
    yield found
    found.close()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_v2_strings_with_tritonclient(gw: Gateway, client: Any, strings_triton: TritonServer, binary: bool) -> None:
    import tritonclient.http as httpclient

    meta = client.get_model_metadata(gw.echo, headers=gw.auth)
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1, 1]}]
    tensor = httpclient.InferInput("text", [len(TEXTS), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[t.encode()] for t in TEXTS], dtype=object), binary_data=binary)
    result = client.infer(gw.echo, [tensor], headers=gw.auth)
    assert result.as_numpy("echo").reshape(-1).tolist() == TEXTS
    assert result.as_numpy("length").reshape(-1).tolist() == [len(t.encode()) for t in TEXTS]
    assert "parameters" not in result.get_output("echo")  # text, no base64
    tensor = httpclient.InferInput("text", [2, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[t] for t in REVIEWS], dtype=object), binary_data=binary)
    labels = client.infer(gw.sentiment, [tensor], headers=gw.auth).as_numpy("label").reshape(-1).tolist()
    assert labels == direct_labels(strings_triton, REVIEWS)


def test_v2_binary_bytes_that_are_not_utf8_answer_base64_with_its_marker(gw: Gateway, client: Any) -> None:
    import tritonclient.http as httpclient

    raw = [b"\xff\xfe\x00 not utf-8", b"ok", b""]
    tensor = httpclient.InferInput("text", [3, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[x] for x in raw], dtype=object))
    result = client.infer(gw.echo, [tensor], headers=gw.auth)
    echo = result.get_output("echo")
    assert echo["parameters"] == {"content_type": "base64"} and echo["shape"] == [3, 1]
    assert [base64.b64decode(x) for x in echo["data"]] == raw
    assert result.as_numpy("length").reshape(-1).tolist() == [len(x) for x in raw]


def _binary_body(header: dict[str, Any], data: bytes) -> tuple[bytes, dict[str, str]]:
    import json

    head = json.dumps(header).encode()
    return head + data, {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}


def test_bounds_and_non_strings_are_400_naming_the_field(gw: Gateway) -> None:
    cases = [
        ({"text": [5]}, "input.text", "input.text[0] is a number, not a string"),
        ({"text": ["ok", None]}, "input.text", "input.text[1] is null, not a string"),
        ({"text": [["a"], ["b", "c"]]}, "input.text", "ragged"),
        ({"text": ["x" * (LIMIT + 1)]}, "input.text", f"at most {LIMIT} bytes (MAX_STRING_BYTES)"),
        ({"text": ["é" * (LIMIT // 2 + 1)]}, "input.text", f"is {LIMIT + 2} bytes long (UTF-8)"),
    ]
    for model_input, field, phrase in cases:
        r = gw.infer(gw.echo, model_input)
        assert r.status_code == 400 and r.json()["field"] == field and phrase in r.json()["error"], (
            model_input,
            r.text,
        )
    assert gw.infer(gw.echo, {"text": ["x" * LIMIT]}).status_code == 200  # the bound itself is allowed
    predicted = gw.post(f"/v1/models/{gw.echo}:predict", {"instances": [1, 2]})
    assert predicted.status_code == 400 and predicted.json()["field"] == "instances"
    infer = f"/v2/models/{gw.echo}/infer"
    v2_json = gw.post(infer, {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2, 1], "data": ["a", 2]}]})
    assert v2_json.status_code == 400 and v2_json.json()["field"] == "inputs.text", v2_json.text
    typed = gw.post(infer, {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]})
    assert typed.status_code == 400 and "expected datatype BYTES" in typed.json()["error"]
    tensor = {"name": "text", "datatype": "BYTES", "shape": [1, 1]}
    for data, phrase in [
        ((3).to_bytes(4, "little") + b"ab", "says 3 bytes but only 2 follow"),
        (b"\x01\x00", "truncated length"),
        ((1).to_bytes(4, "little") + b"a" + (1).to_bytes(4, "little") + b"b", "more than the 1 element"),
        ((LIMIT + 1).to_bytes(4, "little") + b"y" * (LIMIT + 1), "(MAX_STRING_BYTES)"),
    ]:
        body, headers = _binary_body({"inputs": [{**tensor, "parameters": {"binary_data_size": len(data)}}]}, data)
        r = requests.post(gw.base + infer, data=body, headers={**gw.auth, **headers}, timeout=30)
        assert r.status_code == 400 and r.json()["field"] == "inputs.text" and phrase in r.json()["error"], r.text


# -- batch jobs and async requests ---------------------------------------------------------------------------
def test_a_batch_job_of_strings_answers_each_line(gw: Gateway) -> None:
    inputs: list[object] = [
        {"text": REVIEWS[0]},
        {"text": [REVIEWS[1]]},
        {"data": "héllo"},
        {"text": [5]},
        {"text": "x" * (LIMIT + 1)},
    ]
    r = gw.post("/v1/batch", {"model": gw.sentiment, "inputs": inputs})
    assert r.status_code == 202, r.text
    done = _wait_job(gw, r.json()["job_id"])
    assert (done["status"], done["succeeded"], done["failed"]) == ("completed", 3, 2), done
    lines = results_of(done["result_url"])
    assert [line.get("prediction") for line in lines[:2]] == ["positive", "negative"]
    assert lines[0]["outputs"]["label"] == ["positive"] and len(lines[0]["outputs"]["probabilities"]) == 2
    assert lines[2]["prediction"] in ("positive", "negative")
    assert "not a string" in lines[3]["error"] and "(MAX_STRING_BYTES)" in lines[4]["error"]
    # the vectorised path (every line one string of a single-input model) and the general one agree
    echo = gw.post("/v1/batch", {"model": gw.echo, "inputs": [{"text": t} for t in TEXTS]})
    assert echo.status_code == 202, echo.text
    lines = results_of(_wait_job(gw, echo.json()["job_id"])["result_url"])
    assert [line["outputs"]["echo"] for line in lines] == [[t] for t in TEXTS]
    assert [line["prediction"] for line in lines] == [[t] for t in TEXTS]


def _wait_job(gw: Gateway, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = requests.get(f"{gw.base}/v1/batch/{job_id}", headers=gw.auth, timeout=10).json()
        if body["status"] in ("completed", "failed", "cancelled"):
            return dict(body)
        time.sleep(0.1)
    raise AssertionError(f"batch job {job_id} still {body['status']} after {timeout}s")


def test_an_async_request_of_strings_gives_the_synchronous_answer(gw: Gateway) -> None:
    sync = gw.infer(gw.echo, {"text": TEXTS}).json()
    r = gw.post("/v1/infer", {"model": gw.echo, "input": {"text": TEXTS}}, headers={"Prefer": "respond-async"})
    assert r.status_code == 202, r.text
    request_id = r.json()["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = requests.get(f"{gw.base}/v1/requests/{request_id}", headers=gw.auth, timeout=10).json()
        if body["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.1)
    assert body["status"] == "succeeded", body
    assert body["result"]["outputs"] == sync["outputs"] and body["result"]["prediction"] == sync["prediction"]
    v2 = gw.post(
        f"/v2/models/{gw.echo}/infer",
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2, 1], "data": TEXTS[:2]}]},
        headers={"Prefer": "respond-async"},
    )
    assert v2.status_code == 202, v2.text
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = requests.get(f"{gw.base}/v1/requests/{v2.json()['id']}", headers=gw.auth, timeout=10).json()
        if body["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.1)
    assert body["status"] == "succeeded", body
    assert body["result"]["outputs"][0]["data"] == TEXTS[:2]
