"""The Python client (``shared.client.Client``) against the real local servers: the gateway (served by
uvicorn in this process) over PostgreSQL, Redis, the S3 server, the event relay, the batch worker and
Triton. Real-time and async inference, a batch job to its results, the registry, a push, and the CLI's
one error class for every failure."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.client import ApiError, Client
from tests.conftest import free_port
from tests.integration.batch.test_batch import IRIS, Stack, iris_inputs, stack  # noqa: F401 (fixture)
from tests.lifecycle_support import linear_onnx

pytestmark = pytest.mark.integration


class Gateway:
    """``kinfer serve --gateway``'s app under uvicorn in a thread of this process (it sees ``Stack.configure``)."""

    def __init__(self) -> None:
        import uvicorn

        from shared.cli.serve import gateway_app

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(gateway_app(), host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def kinfer(stack: Stack) -> Iterator[Client]:  # noqa: F811
    stack.configure(auth_required=True, model_repository_uri=f"s3://models-{stack.uid}/repo")
    services = stack.services()
    _, key = services.keys.create_key(f"client-{stack.uid}", "infer,batch,admin")
    gateway = Gateway()
    yield Client(gateway.url, key, timeout=30)
    gateway.stop()


def test_infer_answers_the_typed_v1_body(kinfer: Client, stack: Stack) -> None:  # noqa: F811
    answer = kinfer.infer(stack.model, IRIS[0])
    assert answer["prediction"] == "setosa" and answer["model"] == stack.model and answer["version"] == "1"
    assert answer["request_id"] and answer["trace_id"] is not None
    rows = kinfer.infer(stack.model, inputs={"features": IRIS[:2]}, version="1")
    assert rows["prediction"] == ["setosa", "virginica"]


def test_failures_are_the_cli_error_with_status_code_field_and_request_id(kinfer: Client, stack: Stack) -> None:  # noqa: F811
    with pytest.raises(ApiError) as bad:
        kinfer.infer(stack.model, [1.0, 2.0])
    assert (bad.value.status, bad.value.code) == (400, "invalid_input")
    assert bad.value.field.startswith("input") and bad.value.request_id and bad.value.message
    with pytest.raises(ApiError) as unknown:
        kinfer.infer(f"nope-{uuid.uuid4().hex[:6]}", IRIS[0])
    assert unknown.value.status == 404 and unknown.value.request_id
    with pytest.raises(ApiError) as refused:
        Client(kinfer._http.base_url, "kf_not_a_key_at_all").infer(stack.model, IRIS[0])
    assert (refused.value.status, refused.value.code) == (401, "unauthorized") and refused.value.hint
    with pytest.raises(ApiError) as gone:
        Client(f"http://127.0.0.1:{free_port()}", "k", timeout=2).models.list()
    assert gone.value.status is None and gone.value.code == "unreachable"


def test_infer_async_then_wait_request(kinfer: Client, stack: Stack) -> None:  # noqa: F811
    accepted = kinfer.infer_async(stack.model, IRIS[1])
    assert accepted["status"] == "queued" and accepted["location"].endswith(accepted["id"])
    done = kinfer.wait_request(accepted["id"], timeout=60)
    assert done["status"] == "succeeded" and done["result"]["prediction"] == "virginica"


def test_batch_submit_wait_and_results(kinfer: Client, stack: Stack) -> None:  # noqa: F811
    job = kinfer.batch.submit(stack.model, iris_inputs(3) + [{}])
    assert job["status"] == "pending" and job["total"] == 4
    done = kinfer.batch.wait(job["job_id"], timeout=120, interval=0.1)
    assert done["status"] == "completed" and (done["succeeded"], done["failed"]) == (3, 1)
    rows = kinfer.batch.results(job["job_id"])
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert [r.get("prediction") for r in rows[:3]] == ["setosa", "virginica", "versicolor"] and "error" in rows[3]
    with pytest.raises(ApiError) as missing:
        kinfer.batch.status(str(uuid.uuid4()))
    assert missing.value.status == 404


def test_models_list_show_and_push(kinfer: Client, stack: Stack, tmp_path: Path) -> None:  # noqa: F811
    page = kinfer.models.list(name=stack.model)
    assert page["total"] == 1 and page["models"][0]["name"] == stack.model
    assert kinfer.models.show(stack.model, "1")["version"] == "1"
    file = tmp_path / "linear.onnx"
    file.write_bytes(linear_onnx(2.0))
    name = f"client-linear-{stack.uid}"
    pushed = kinfer.models.push(file, name, "1", wait=False)  # no model agent here: it stays pending
    assert pushed["name"] == name and pushed["state"] == "pending" and pushed["artifact_format"] == "onnx"
    assert kinfer.models.show(name, "1")["id"] == pushed["id"]
    with pytest.raises(ApiError) as nothing:
        kinfer.models.push(tmp_path / "missing.onnx", name, "2")
    assert nothing.value.field == "file" and nothing.value.code == "invalid_input"
